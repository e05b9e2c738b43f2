//! Length-prefixed frames over a unix stream socket, with fds (SCM_RIGHTS)
//! attached to the first byte of a frame: `odfs_wire::frame`'s framing,
//! through nix.
//!
//! Blocking on purpose: the launcher and the agent have no async runtime, and
//! the daemon calls these from its blocking pool.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::cmsg_space;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use odfs_wire::{MAX_FDS, MAX_FRAME};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("cannot encode message: {0}")]
    Encode(String),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("too many fds attached to one frame")]
    TooManyFds,
}

impl From<odfs_wire::frame::Error<FrameError>> for FrameError {
    fn from(e: odfs_wire::frame::Error<FrameError>) -> Self {
        match e {
            odfs_wire::frame::Error::Io(e) => e,
            odfs_wire::frame::Error::TooLarge(n) => FrameError::TooLarge(n),
            odfs_wire::frame::Error::Truncated => FrameError::Truncated,
            odfs_wire::frame::Error::TooManyFds => FrameError::TooManyFds,
        }
    }
}

impl From<nix::Error> for FrameError {
    fn from(e: nix::Error) -> Self {
        FrameError::Io(std::io::Error::from(e))
    }
}

/// Write `body` as one frame; `fds` ride along with its first byte.
pub fn write_frame(sock: &UnixStream, body: &[u8], fds: &[RawFd]) -> Result<(), FrameError> {
    odfs_wire::frame::write(body, fds.len(), |head, rest, first| {
        let iov = [IoSlice::new(head), IoSlice::new(rest)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if first && !fds.is_empty() { &rights } else { &[] };
        loop {
            match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(nix::Error::EINTR) => continue,
                sent => return sent.map_err(FrameError::from),
            }
        }
    })
    .map_err(FrameError::from)
}

/// A frame's body and the fds that came with it.
pub type Frame = (Vec<u8>, Vec<OwnedFd>);

/// Read one frame; `Ok(None)` on EOF before its first byte.
pub fn read_frame(sock: &UnixStream) -> Result<Option<Frame>, FrameError> {
    let mut fds = Vec::new();
    let body = odfs_wire::frame::read(|buf| Ok((recv_some(sock.as_raw_fd(), buf, &mut fds)?, fds.len())))?;
    Ok(body.map(|b| (b, fds)))
}

/// One `recvmsg` into `buf`, collecting any fds: the bytes read (0 at EOF).
/// A non-blocking socket with nothing to read gives `Io(WouldBlock)`.
pub fn recv_some(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, FrameError> {
    loop {
        let mut space = cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in our table for us;
                // nothing else owns them.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(FrameError::TooManyFds);
        }
        return Ok(msg.bytes);
    }
}
