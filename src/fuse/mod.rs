//! fuser glue: translates kernel requests into [`crate::fs::ShimFs`] calls
//! and mounts the session. Every answer comes from memory.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};

use tracing::instrument;

use crate::fs::{Attr, FsError, Kind, ShimFs};

/// How long the kernel may cache names and attributes. Misses are cached
/// too, so PATH searches for native commands (`ls`, `git`…) cost one lookup
/// per interval instead of one per exec.
const TTL: Duration = Duration::from_secs(10);

pub struct FuseFs(pub Arc<ShimFs>);

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
}

// Each operation is a span (its request id, the caller's pid): what is
// logged while serving it says which request it was about.
impl Filesystem for FuseFs {
    #[instrument(level = "debug", skip_all, fields(req = req.unique().0, pid = req.pid(), parent = parent.0, name = ?name))]
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        use std::os::unix::ffi::OsStrExt;
        match self.0.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &attr(&a), Generation(0)),
            Err(FsError::NotFound) => {
                // Inode 0 is a negative entry: the kernel caches the miss.
                let mut none = attr(&self.0.getattr(crate::fs::ROOT_INO).expect("root exists"));
                none.ino = INodeNo(0);
                reply.entry(&TTL, &none, Generation(0))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(req = req.unique().0, pid = req.pid(), ino = ino.0))]
    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(req = req.unique().0, pid = req.pid(), ino = ino.0))]
    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.0.open(ino.0, write) {
            // The text never changes while mounted: let the page cache keep it.
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(req = req.unique().0, pid = req.pid(), ino = ino.0, offset, size))]
    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(errno(e)),
        }
    }

    #[instrument(level = "debug", skip_all, fields(req = req.unique().0, pid = req.pid(), ino = ino.0, name = ?name))]
    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        use std::os::unix::ffi::OsStrExt;
        reply_xattr(self.0.getxattr(ino.0, name.as_bytes()), size, reply)
    }

    #[instrument(level = "debug", skip_all, fields(req = req.unique().0, pid = req.pid(), ino = ino.0))]
    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.0.listxattr(ino.0), size, reply)
    }

    #[instrument(level = "debug", skip_all, fields(req = req.unique().0, pid = req.pid(), ino = ino.0, offset))]
    fn readdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.0.readdir(ino.0, offset) {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate() {
                    let kind = if kind == Kind::Dir { FileType::Directory } else { FileType::RegularFile };
                    if reply.add(INodeNo(ino), offset + i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// Answer an xattr request: the size when asked for it (size 0), ERANGE
/// when the caller's buffer is too small, else the bytes.
fn reply_xattr(value: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

/// Mount read-only, `nosuid,nodev`, readable and executable by every user.
pub fn mount(fs: Arc<ShimFs>, mountpoint: &Path) -> std::io::Result<fuser::BackgroundSession> {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::Exec,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
        MountOption::FSName("odfs".into()),
        MountOption::Subtype("odfs".into()),
    ];
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(2);
    fuser::spawn_mount(FuseFs(fs), mountpoint, &cfg)
}

/// Whether `/proc/self/mountinfo` shows a FUSE mount at exactly this path.
fn is_fuse_mountpoint(mountpoint: &Path) -> bool {
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
