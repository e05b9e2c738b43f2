//! One FUSE connection (`/dev/fuse` fd): mounting it, its INIT handshake,
//! the threads that serve it, and stopping them *between* requests so the
//! connection can be handed to another process (a takeover, systemd's fd
//! store) with nothing read and left unanswered.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::abi::{self, Init, Op, Reply, Request};

/// What answers requests (the shim directory's translation). Every answer
/// is immediate: no request waits on another or on the engine.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request<'_>) -> Option<Reply>;
}

/// Mount a read-only, `nosuid,nodev` FUSE file system at `mountpoint`,
/// readable by every user, and answer the kernel's INIT on it.
pub fn mount(mountpoint: &Path) -> io::Result<(OwnedFd, Init)> {
    use nix::fcntl::{open, OFlag};
    use nix::mount::MsFlags;
    let fd = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    // SAFETY: open returned a new fd that nothing else owns.
    let fd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let options = format!("fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions", fd.as_raw_fd());
    nix::mount::mount(
        Some("odfs"),
        mountpoint,
        Some("fuse.odfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        Some(options.as_str()),
    )?;
    match handshake(fd.as_fd()) {
        Ok(init) => Ok((fd, init)),
        Err(e) => {
            let _ = unmount(mountpoint);
            Err(e)
        }
    }
}

/// Detach the mount (lazily: a process with its cwd inside keeps it until
/// it leaves, as for any file system).
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Read the kernel's INIT and agree on the protocol.
fn handshake(fd: BorrowedFd<'_>) -> io::Result<Init> {
    let mut buf = vec![0u8; abi::READ_BUFFER];
    loop {
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let req = abi::parse(&buf[..n]).ok_or_else(|| io::Error::other("a malformed FUSE request before INIT"))?;
        let Op::Init { major, minor, max_readahead, flags } = req.op else {
            let _ = write(fd, &Reply::error(req.header.unique, libc::EIO).0);
            return Err(io::Error::other("a FUSE request came before INIT"));
        };
        if major > abi::KERNEL_VERSION {
            // A newer major: say ours, the kernel sends INIT again.
            write(fd, &Reply::init(req.header.unique, &Init { major, minor, flags: 0 }, 0).0)?;
            continue;
        }
        if major < abi::KERNEL_VERSION || minor < 12 {
            let _ = write(fd, &Reply::error(req.header.unique, libc::EPROTO).0);
            return Err(io::Error::other(format!("FUSE protocol {major}.{minor} is too old")));
        }
        let init = Init { major, minor, flags };
        write(fd, &Reply::init(req.header.unique, &init, max_readahead).0)?;
        return Ok(init);
    }
}

/// One whole message to the kernel. A reply to a request that was
/// interrupted meanwhile gets ENOENT, which is not an error here.
fn write(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    match nix::unistd::write(fd, msg) {
        Ok(_) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends notifications on a connection, from any thread.
#[derive(Clone)]
pub struct Notifier(Arc<OwnedFd>);

impl Notifier {
    pub fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        write(self.0.as_fd(), &abi::inval_entry(parent, name))
    }

    pub fn inval_inode(&self, ino: u64) -> io::Result<()> {
        write(self.0.as_fd(), &abi::inval_inode(ino))
    }

    /// Have the kernel send again the requests a dead server had read and
    /// not answered (Linux ≥ 6.9); on an older kernel this fails and those
    /// callers wait until the connection goes.
    pub fn resend(&self) -> io::Result<()> {
        write(self.0.as_fd(), &abi::resend())
    }
}

/// Why serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Paused between requests: the connection is intact.
    Paused,
    /// The file system was unmounted (ENODEV) or the kernel said DESTROY.
    Gone,
}

/// The threads serving a connection.
pub struct Server {
    fd: Arc<OwnedFd>,
    /// Readable once serving should pause (an eventfd, never read).
    pause: OwnedFd,
    workers: Vec<JoinHandle<io::Result<End>>>,
}

impl Server {
    /// Serve `fd` (already past INIT) with `threads` workers.
    pub fn start(fd: OwnedFd, handler: Arc<dyn Handler>, threads: usize) -> io::Result<Server> {
        // Workers poll, then read without blocking: two woken for one
        // request must not leave one asleep in read(2) when a pause comes.
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        let fd = Arc::new(fd);
        let pause = nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)?;
        let pause: OwnedFd = pause.into();
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (fd, handler, pause) = (fd.clone(), handler.clone(), pause.try_clone()?);
            workers.push(std::thread::Builder::new().name(format!("fuse-{i}")).spawn(move || serve(&fd, &*handler, &pause))?);
        }
        Ok(Server { fd, pause, workers })
    }

    pub fn notifier(&self) -> Notifier {
        Notifier(self.fd.clone())
    }

    /// The connection's fd, for a successor (a duplicate: this one stays
    /// valid until the server is dropped).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Stop every worker after the request it is answering, and wait for
    /// them. Whatever the kernel queued meanwhile stays queued, for whoever
    /// serves the connection next.
    pub fn pause(mut self) -> io::Result<(OwnedFd, End)> {
        nix::unistd::write(self.pause.as_fd(), &1u64.to_ne_bytes())?;
        let mut end = End::Paused;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Ok(End::Gone)) => end = End::Gone,
                Ok(Ok(End::Paused)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a FUSE worker panicked")),
            }
        }
        let fd = self.fd.try_clone()?;
        Ok((fd, end))
    }
}

fn serve(fd: &OwnedFd, handler: &dyn Handler, pause: &OwnedFd) -> io::Result<End> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; abi::READ_BUFFER];
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN), PollFd::new(pause.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        // A pause wins over a waiting request: it stays for the successor.
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(End::Paused);
        }
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            // Another worker took it, or the caller gave up meanwhile.
            Err(nix::Error::EAGAIN | nix::Error::EINTR | nix::Error::ENOENT) => continue,
            Err(nix::Error::ENODEV) => return Ok(End::Gone),
            Err(e) => return Err(e.into()),
        };
        let Some(req) = abi::parse(&buf[..n]) else {
            tracing::warn!(bytes = n, "a malformed FUSE request (ignored)");
            continue;
        };
        if req.op == Op::Destroy {
            write(fd.as_fd(), &Reply::empty(req.header.unique).0)?;
            return Ok(End::Gone);
        }
        if let Some(reply) = handler.handle(&req) {
            if let Err(e) = write(fd.as_fd(), &reply.0) {
                tracing::warn!(opcode = req.header.opcode, "cannot answer a FUSE request: {e}");
            }
        }
    }
}
