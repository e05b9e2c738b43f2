//! The FUSE side of the shim directory: kernel requests translated into
//! [`crate::fs::ShimFs`] calls (every answer from memory), the mount, and
//! a dead mount's clean-up. `abi` decodes and encodes the kernel's
//! messages; `session` owns the connection and the threads serving it.

pub mod abi;
pub mod session;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::instrument;

use self::abi::{Op, Reply, Request};
use crate::fs::{Attr, FsError, Kind, ShimFs};

pub use session::{End, Notifier, Server};

/// How long the kernel may cache names and attributes. Misses are cached
/// too, so PATH searches for native commands (`ls`, `git`…) cost one lookup
/// per interval instead of one per exec.
const TTL: Duration = Duration::from_secs(10);

/// Threads reading the connection: one answers while the other reads.
const THREADS: usize = 2;

pub struct FuseFs(pub Arc<ShimFs>);

fn attr(a: &Attr) -> abi::Attr {
    abi::Attr { ino: a.ino, size: a.size, mtime: a.mtime, dir: a.kind == Kind::Dir, perm: a.perm }
}

impl session::Handler for FuseFs {
    // Each operation is a span (its request id, the caller's pid): what is
    // logged while serving it says which request it was about.
    #[instrument(level = "debug", skip_all, fields(req = req.header.unique, pid = req.header.pid, op = req.header.opcode, ino = req.header.nodeid))]
    fn handle(&self, req: &Request<'_>) -> Option<Reply> {
        let (unique, ino) = (req.header.unique, req.header.nodeid);
        let fail = |e: FsError| Reply::error(unique, e.errno());
        Some(match req.op {
            Op::Lookup { name } => match self.0.lookup(ino, name) {
                Ok(a) => Reply::entry(unique, &attr(&a), TTL),
                Err(FsError::NotFound) => {
                    // Inode 0 is a negative entry: the kernel caches the miss.
                    let mut none = attr(&self.0.getattr(crate::fs::ROOT_INO).expect("root exists"));
                    none.ino = 0;
                    Reply::entry(unique, &none, TTL)
                }
                Err(e) => fail(e),
            },
            Op::Getattr => self.0.getattr(ino).map_or_else(fail, |a| Reply::attr(unique, &attr(&a), TTL)),
            Op::Open { flags } => {
                let write = flags as i32 & libc::O_ACCMODE != libc::O_RDONLY || flags as i32 & libc::O_TRUNC != 0;
                // The text never changes while mounted: let the page cache keep it.
                let by = crate::fs::Requester { uid: req.header.uid, gid: req.header.gid, pid: req.header.pid };
                self.0.open(ino, write, by).map_or_else(fail, |()| Reply::opened(unique, abi::KEEP_CACHE))
            }
            Op::Read { offset, size } => self.0.read(ino, offset, size).map_or_else(fail, |d| Reply::data(unique, d)),
            // A dirent takes at least 32 bytes: no more can fit the reply.
            Op::Readdir { offset, size } => match self.0.readdir(ino, offset, size as usize / 32 + 1) {
                Ok(entries) => Reply::dir(
                    unique,
                    size,
                    entries.iter().enumerate().map(|(i, (ino, kind, name))| (*ino, offset + i as u64 + 1, *kind == Kind::Dir, name.as_bytes())),
                ),
                Err(e) => fail(e),
            },
            Op::Getxattr { size, name } => xattr_reply(unique, self.0.getxattr(ino, name), size),
            Op::Listxattr { size } => xattr_reply(unique, self.0.listxattr(ino), size),
            Op::Statfs => Reply::statfs(unique, self.0.getattr(crate::fs::ROOT_INO).map_or(0, |a| a.size)),
            Op::Opendir => Reply::opened(unique, 0),
            Op::Release => Reply::empty(unique),
            Op::NoReply | Op::Destroy => return None,
            Op::Init { .. } => Reply::error(unique, libc::EPROTO),
            Op::Other(_) => Reply::error(unique, libc::ENOSYS),
        })
    }
}

/// Answer an xattr request: the size when asked for it (size 0), ERANGE
/// when the caller's buffer is too small, else the bytes.
fn xattr_reply(unique: u64, value: Result<Vec<u8>, FsError>, size: u32) -> Reply {
    match value {
        Ok(v) if size == 0 => Reply::xattr_size(unique, v.len() as u32),
        Ok(v) if v.len() > size as usize => Reply::error(unique, libc::ERANGE),
        Ok(v) => Reply::data(unique, &v),
        Err(e) => Reply::error(unique, e.errno()),
    }
}

/// Mount read-only, `nosuid,nodev`, readable and executable by every user,
/// and serve it. The connection's fd is the whole mount: whoever holds it
/// (a successor, systemd's fd store) can serve it on.
pub fn mount(fs: Arc<ShimFs>, mountpoint: &Path) -> std::io::Result<(Server, abi::Init)> {
    let (fd, init) = session::mount(mountpoint)?;
    Ok((Server::start(fd, Arc::new(FuseFs(fs)), THREADS)?, init))
}

/// Serve a connection another process mounted and set up (past its INIT).
pub fn resume(fs: Arc<ShimFs>, fd: std::os::fd::OwnedFd) -> std::io::Result<Server> {
    Server::start(fd, Arc::new(FuseFs(fs)), THREADS)
}

/// Whether `/proc/self/mountinfo` shows a FUSE mount at exactly this path.
pub fn is_fuse_mountpoint(mountpoint: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mountpoint.to_string_lossy();
    info.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (left, right) = (halves.next().unwrap_or(""), halves.next().unwrap_or(""));
        // Field 5 is the mount point, with blanks escaped as octal.
        let point = left.split(' ').nth(4).unwrap_or("").replace("\\040", " ");
        point == want && right.starts_with("fuse")
    })
}

/// A mount left by a crashed daemon answers ENOTCONN; detach it so a fresh
/// one can take its place. Returns whether one was cleared. A mount that a
/// live process still serves is an error: two daemons must not stack.
/// `statfs` is used because FUSE never answers it from the kernel's caches
/// (a plain `stat` can succeed on a dead mount for the attribute TTL).
pub fn clear_stale_mount(mountpoint: &Path) -> std::io::Result<bool> {
    if !is_fuse_mountpoint(mountpoint) {
        return Ok(false);
    }
    match nix::sys::statfs::statfs(mountpoint) {
        Err(nix::Error::ENOTCONN) | Err(nix::Error::ECONNABORTED) => {
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
            Ok(true)
        }
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is already a FUSE mount served by a live process (unmount it or stop its daemon first)",
            mountpoint.display()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The kernel's id of the FUSE connection behind a mount (its device minor),
/// as listed in `/sys/fs/fuse/connections`.
pub fn connection_id(mountpoint: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(mountpoint).ok().map(|m| nix::sys::stat::minor(m.dev()))
}

/// Abort a FUSE connection that outlived its unmount (something still holds
/// a copy of the mount, e.g. a recursive bind into a container), so nothing
/// hangs on it. Needs fusectl mounted; a no-op when the connection is gone.
pub fn abort_connection(id: u64) {
    let abort = Path::new("/sys/fs/fuse/connections").join(id.to_string()).join("abort");
    if abort.exists() && std::fs::write(&abort, "1").is_ok() {
        tracing::warn!(connection = id, "aborted a FUSE connection that outlived its unmount");
    }
}
