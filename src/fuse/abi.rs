//! The kernel's FUSE messages that a read-only shim directory meets, decoded
//! from and encoded into the bytes of `/dev/fuse` (`linux/fuse.h`, 7.x).
//! Pure: no fd is touched here, so every layout is unit-tested.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The protocol this side speaks; the kernel answers with the lower minor.
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR: u32 = 38;

/// Big enough for any request this filesystem can meet (a `setxattr` value
/// of 64 KiB is the largest); the kernel wants at least 8 KiB.
pub const READ_BUFFER: usize = 128 * 1024 + 4096;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
}

/// Init flags asked for: reads in parallel, lookups in one directory in
/// parallel, and the second flags word (where the kernel says it can
/// re-send).
const ASYNC_READ: u64 = 1 << 0;
const PARALLEL_DIROPS: u64 = 1 << 18;
const INIT_EXT: u64 = 1 << 30;
/// The kernel can re-send requests a dead server had read (Linux 6.9, 7.40).
pub const HAS_RESEND: u64 = 1 << 39;

/// `FOPEN_KEEP_CACHE`: the page cache keeps a file's data across opens.
pub const KEEP_CACHE: u32 = 1 << 1;

pub mod notify {
    pub const INVAL_INODE: i32 = 2;
    pub const INVAL_ENTRY: i32 = 3;
    pub const RESEND: i32 = 7;
}

/// What the kernel's INIT said, and what was agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Init {
    pub major: u32,
    pub minor: u32,
    /// The kernel's capability flags, both words.
    pub flags: u64,
}

impl Init {
    /// Whether `FUSE_NOTIFY_RESEND` is there: a server that takes over a
    /// connection can have the kernel send again what a dead one had read.
    pub fn can_resend(&self) -> bool {
        self.flags & HAS_RESEND != 0
    }
}

/// A request's fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A decoded request: the operations this filesystem answers, the rest by
/// opcode (answered ENOSYS, or EROFS by the kernel before they come).
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Init { major: u32, minor: u32, max_readahead: u32, flags: u64 },
    Lookup { name: &'a [u8] },
    Getattr,
    Open { flags: u32 },
    Read { offset: u64, size: u32 },
    Readdir { offset: u64, size: u32 },
    Getxattr { size: u32, name: &'a [u8] },
    Listxattr { size: u32 },
    Statfs,
    /// Opendir: a handle of 0, as for files.
    Opendir,
    /// Release, releasedir, flush: nothing to free.
    Release,
    /// Forget, batch forget, interrupt: no answer at all (every answer here
    /// is immediate, so nothing is left to interrupt).
    NoReply,
    Destroy,
    Other(u32),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: Header,
    pub op: Op<'a>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// A NUL-terminated name.
fn cstr(b: &[u8]) -> Option<&[u8]> {
    Some(&b[..b.iter().position(|&c| c == 0)?])
}

/// Decode one request as read from `/dev/fuse` (one read, one request).
pub fn parse(buf: &[u8]) -> Option<Request<'_>> {
    let len = u32_at(buf, 0)? as usize;
    if len < IN_HEADER || len > buf.len() {
        return None;
    }
    let buf = &buf[..len];
    let header = Header {
        opcode: u32_at(buf, 4)?,
        unique: u64_at(buf, 8)?,
        nodeid: u64_at(buf, 16)?,
        uid: u32_at(buf, 24)?,
        gid: u32_at(buf, 28)?,
        pid: u32_at(buf, 32)?,
    };
    let body = &buf[IN_HEADER..];
    let op = match header.opcode {
        op::INIT => {
            let flags = u32_at(body, 12)? as u64;
            // The second word counts only when the kernel says it sent one.
            let flags2 = if flags & INIT_EXT != 0 { u32_at(body, 16).unwrap_or(0) as u64 } else { 0 };
            Op::Init { major: u32_at(body, 0)?, minor: u32_at(body, 4)?, max_readahead: u32_at(body, 8)?, flags: flags | flags2 << 32 }
        }
        op::LOOKUP => Op::Lookup { name: cstr(body)? },
        op::GETATTR => Op::Getattr,
        op::OPEN => Op::Open { flags: u32_at(body, 0)? },
        op::READ => Op::Read { offset: u64_at(body, 8)?, size: u32_at(body, 16)? },
        op::READDIR => Op::Readdir { offset: u64_at(body, 8)?, size: u32_at(body, 16)? },
        op::GETXATTR => Op::Getxattr { size: u32_at(body, 0)?, name: cstr(body.get(8..)?)? },
        op::LISTXATTR => Op::Listxattr { size: u32_at(body, 0)? },
        op::STATFS => Op::Statfs,
        op::OPENDIR => Op::Opendir,
        op::RELEASE | op::RELEASEDIR | op::FLUSH => Op::Release,
        op::FORGET | op::BATCH_FORGET | op::INTERRUPT => Op::NoReply,
        op::DESTROY => Op::Destroy,
        other => Op::Other(other),
    };
    Some(Request { header, op })
}

/// A reply: the out header followed by the payload, written in one write.
pub struct Reply(pub Vec<u8>);

impl Reply {
    fn new(unique: u64, error: i32, payload_len: usize) -> Reply {
        let mut v = Vec::with_capacity(OUT_HEADER + payload_len);
        v.extend_from_slice(&((OUT_HEADER + payload_len) as u32).to_ne_bytes());
        v.extend_from_slice(&error.to_ne_bytes());
        v.extend_from_slice(&unique.to_ne_bytes());
        Reply(v)
    }

    /// The payload written: set the length in the header.
    fn done(mut self) -> Reply {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub fn error(unique: u64, errno: i32) -> Reply {
        Reply::new(unique, -errno, 0)
    }

    pub fn empty(unique: u64) -> Reply {
        Reply::new(unique, 0, 0)
    }

    pub fn data(unique: u64, data: &[u8]) -> Reply {
        let mut r = Reply::new(unique, 0, data.len());
        r.0.extend_from_slice(data);
        r
    }

    pub fn init(unique: u64, kernel: &Init, max_readahead: u32) -> Reply {
        let want = (ASYNC_READ | PARALLEL_DIROPS | INIT_EXT) & kernel.flags;
        let mut r = Reply::new(unique, 0, 64);
        for v in [KERNEL_VERSION, KERNEL_MINOR, max_readahead, want as u32] {
            r.0.extend_from_slice(&v.to_ne_bytes());
        }
        r.0.extend_from_slice(&16u16.to_ne_bytes()); // max_background
        r.0.extend_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
        r.0.extend_from_slice(&(128 * 1024u32).to_ne_bytes()); // max_write
        r.0.extend_from_slice(&1u32.to_ne_bytes()); // time_gran (ns)
        r.0.extend_from_slice(&0u16.to_ne_bytes()); // max_pages
        r.0.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
        r.0.extend_from_slice(&((want >> 32) as u32).to_ne_bytes());
        r.0.extend_from_slice(&[0; 28]);
        r.done()
    }

    pub fn entry(unique: u64, attr: &Attr, ttl: Duration) -> Reply {
        let mut r = Reply::new(unique, 0, 128);
        r.0.extend_from_slice(&attr.ino.to_ne_bytes());
        r.0.extend_from_slice(&0u64.to_ne_bytes()); // generation
        for _ in 0..2 {
            r.0.extend_from_slice(&ttl.as_secs().to_ne_bytes());
        }
        for _ in 0..2 {
            r.0.extend_from_slice(&ttl.subsec_nanos().to_ne_bytes());
        }
        attr.encode(&mut r.0);
        r.done()
    }

    pub fn attr(unique: u64, attr: &Attr, ttl: Duration) -> Reply {
        let mut r = Reply::new(unique, 0, 104);
        r.0.extend_from_slice(&ttl.as_secs().to_ne_bytes());
        r.0.extend_from_slice(&ttl.subsec_nanos().to_ne_bytes());
        r.0.extend_from_slice(&0u32.to_ne_bytes());
        attr.encode(&mut r.0);
        r.done()
    }

    pub fn opened(unique: u64, open_flags: u32) -> Reply {
        let mut r = Reply::new(unique, 0, 16);
        r.0.extend_from_slice(&0u64.to_ne_bytes());
        r.0.extend_from_slice(&open_flags.to_ne_bytes());
        r.0.extend_from_slice(&0u32.to_ne_bytes());
        r.done()
    }

    /// An xattr's size (a caller asking with size 0).
    pub fn xattr_size(unique: u64, size: u32) -> Reply {
        let mut r = Reply::new(unique, 0, 8);
        r.0.extend_from_slice(&size.to_ne_bytes());
        r.0.extend_from_slice(&0u32.to_ne_bytes());
        r.done()
    }

    pub fn statfs(unique: u64, files: u64) -> Reply {
        let mut r = Reply::new(unique, 0, 80);
        for v in [0u64, 0, 0, files, 0] {
            r.0.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [4096u32, 255, 4096, 0] {
            r.0.extend_from_slice(&v.to_ne_bytes());
        }
        r.0.extend_from_slice(&[0; 24]);
        r.done()
    }

    /// Directory entries from `offset`, as many as fit in `size` bytes. Each
    /// entry's offset is the index of the next one.
    pub fn dir<'a>(unique: u64, size: u32, entries: impl IntoIterator<Item = (u64, u64, bool, &'a [u8])>) -> Reply {
        let mut r = Reply::new(unique, 0, size as usize);
        for (ino, next, is_dir, name) in entries {
            let len = (24 + name.len()).next_multiple_of(8);
            if r.0.len() - OUT_HEADER + len > size as usize {
                break;
            }
            r.0.extend_from_slice(&ino.to_ne_bytes());
            r.0.extend_from_slice(&next.to_ne_bytes());
            r.0.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            r.0.extend_from_slice(&(if is_dir { libc::DT_DIR } else { libc::DT_REG } as u32).to_ne_bytes());
            r.0.extend_from_slice(name);
            r.0.resize(r.0.len() + len - 24 - name.len(), 0);
        }
        r.done()
    }
}

/// A notification: an out header with unique 0 and the code as its error.
fn notification(code: i32, payload: &[&[u8]]) -> Vec<u8> {
    let mut r = Reply::new(0, code, payload.iter().map(|p| p.len()).sum());
    for p in payload {
        r.0.extend_from_slice(p);
    }
    r.done().0
}

/// Drop the kernel's cached entry `name` of directory `parent` (a negative
/// one included).
pub fn inval_entry(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut head = parent.to_ne_bytes().to_vec();
    head.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    head.extend_from_slice(&0u32.to_ne_bytes());
    notification(notify::INVAL_ENTRY, &[&head, name, &[0]])
}

/// Drop the kernel's cached attributes and data of an inode (a directory:
/// its listing).
pub fn inval_inode(ino: u64) -> Vec<u8> {
    let mut body = ino.to_ne_bytes().to_vec();
    body.extend_from_slice(&0i64.to_ne_bytes());
    body.extend_from_slice(&0i64.to_ne_bytes());
    notification(notify::INVAL_INODE, &[&body])
}

/// Ask the kernel to send again every request read and not answered.
pub fn resend() -> Vec<u8> {
    notification(notify::RESEND, &[])
}

/// An inode's attributes, as the shim directory has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub mtime: SystemTime,
    pub dir: bool,
    pub perm: u16,
}

impl Attr {
    /// `struct fuse_attr`: owned by root, times all the mtime.
    fn encode(&self, out: &mut Vec<u8>) {
        let t = self.mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mode = if self.dir { libc::S_IFDIR } else { libc::S_IFREG } | u32::from(self.perm);
        for v in [self.ino, self.size, self.size.div_ceil(512), t.as_secs(), t.as_secs(), t.as_secs()] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        let nlink = if self.dir { 2 } else { 1 };
        for v in [t.subsec_nanos(), t.subsec_nanos(), t.subsec_nanos(), mode, nlink, 0, 0, 0, 4096, 0] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((IN_HEADER + body.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&opcode.to_ne_bytes());
        v.extend_from_slice(&unique.to_ne_bytes());
        v.extend_from_slice(&nodeid.to_ne_bytes());
        for x in [1000u32, 1000, 42, 0] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn requests_decode_with_their_arguments() {
        let r = request(op::LOOKUP, 7, 1, b"jq\0");
        let got = parse(&r).unwrap();
        assert_eq!(got.header, Header { opcode: op::LOOKUP, unique: 7, nodeid: 1, uid: 1000, gid: 1000, pid: 42 });
        assert_eq!(got.op, Op::Lookup { name: b"jq" });

        let mut read = vec![0u8; 40];
        read[8..16].copy_from_slice(&4096u64.to_ne_bytes());
        read[16..20].copy_from_slice(&512u32.to_ne_bytes());
        assert_eq!(parse(&request(op::READ, 8, 5, &read)).unwrap().op, Op::Read { offset: 4096, size: 512 });
        assert_eq!(parse(&request(op::READDIR, 8, 1, &read)).unwrap().op, Op::Readdir { offset: 4096, size: 512 });

        let mut gx = 0u32.to_ne_bytes().to_vec();
        gx.extend_from_slice(&[0; 4]);
        gx.extend_from_slice(b"user.odfs.image\0");
        assert_eq!(parse(&request(op::GETXATTR, 9, 5, &gx)).unwrap().op, Op::Getxattr { size: 0, name: b"user.odfs.image" });
        assert_eq!(parse(&request(99, 1, 1, &[])).unwrap().op, Op::Other(99));
    }

    #[test]
    fn init_reads_both_flag_words_only_when_the_kernel_sent_two() {
        let mut body = vec![0u8; 64];
        for (i, v) in [7u32, 41, 131072, (INIT_EXT | ASYNC_READ) as u32, (HAS_RESEND >> 32) as u32].into_iter().enumerate() {
            body[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        let Op::Init { minor, flags, .. } = parse(&request(op::INIT, 1, 0, &body)).unwrap().op else { panic!() };
        assert_eq!(minor, 41);
        assert!(Init { major: 7, minor, flags }.can_resend());
        body[12..16].copy_from_slice(&(ASYNC_READ as u32).to_ne_bytes());
        let Op::Init { flags, .. } = parse(&request(op::INIT, 1, 0, &body)).unwrap().op else { panic!() };
        assert_eq!(flags, ASYNC_READ);

        let reply = Reply::init(1, &Init { major: 7, minor: 41, flags: ASYNC_READ | INIT_EXT | HAS_RESEND }, 4096).0;
        assert_eq!(reply.len(), OUT_HEADER + 64);
        assert_eq!(u32_at(&reply, 0), Some(80));
        assert_eq!(u32_at(&reply, 16 + 12), Some((ASYNC_READ | INIT_EXT) as u32), "only what both sides have");
    }

    #[test]
    fn truncated_or_lying_requests_are_refused() {
        let r = request(op::LOOKUP, 7, 1, b"jq\0");
        assert!(parse(&r[..20]).is_none());
        assert!(parse(&request(op::LOOKUP, 7, 1, b"no-nul")).is_none());
        let mut long = r.clone();
        long[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&long).is_none());
        assert!(parse(&request(op::READ, 1, 1, &[0; 8])).is_none());
    }

    #[test]
    fn replies_have_the_kernel_layouts() {
        let a = Attr { ino: 5, size: 100, mtime: UNIX_EPOCH + Duration::new(10, 3), dir: false, perm: 0o755 };
        let e = Reply::entry(3, &a, Duration::from_secs(10)).0;
        assert_eq!(e.len(), OUT_HEADER + 128);
        assert_eq!(u64_at(&e, 8), Some(3));
        assert_eq!(u64_at(&e, 16), Some(5));
        // fuse_attr starts at 40 of entry_out; mode is at 60 inside it.
        assert_eq!(u32_at(&e, 16 + 40 + 60), Some(libc::S_IFREG | 0o755));
        assert_eq!(u64_at(&e, 16 + 40 + 16), Some(1), "blocks");
        let g = Reply::attr(4, &Attr { dir: true, ..a }, Duration::ZERO).0;
        assert_eq!(g.len(), OUT_HEADER + 104);
        assert_eq!(u32_at(&g, 16 + 16 + 60), Some(libc::S_IFDIR | 0o755));
        assert_eq!(Reply::error(9, libc::ENOENT).0, [16u32.to_ne_bytes(), (-libc::ENOENT).to_ne_bytes()].concat().into_iter().chain(9u64.to_ne_bytes()).collect::<Vec<_>>());
        assert_eq!(Reply::statfs(1, 3).0.len(), OUT_HEADER + 80);
    }

    #[test]
    fn a_listing_stops_at_the_callers_buffer_and_aligns_each_entry() {
        let names: Vec<(u64, u64, bool, &[u8])> = vec![(1, 1, true, b"."), (2, 2, false, b"jq"), (3, 3, false, b"ripgrep")];
        let all = Reply::dir(1, 4096, names.clone()).0;
        assert_eq!(all.len(), OUT_HEADER + 32 + 32 + 32);
        assert_eq!(u32_at(&all, 16 + 32 + 16), Some(2), "namelen of jq");
        let two = Reply::dir(1, 64, names).0;
        assert_eq!(two.len(), OUT_HEADER + 64);
    }

    #[test]
    fn notifications_carry_their_code_and_no_unique() {
        let n = inval_entry(1, b"jq");
        assert_eq!(u32_at(&n, 0), Some(n.len() as u32));
        assert_eq!(u32_at(&n, 4), Some(notify::INVAL_ENTRY as u32));
        assert_eq!(u64_at(&n, 8), Some(0));
        assert_eq!(&n[n.len() - 3..], b"jq\0");
        assert_eq!(inval_inode(1).len(), OUT_HEADER + 24);
        assert_eq!(resend(), [16u32.to_ne_bytes(), 7i32.to_ne_bytes()].concat().into_iter().chain(0u64.to_ne_bytes()).collect::<Vec<_>>());
    }
}
