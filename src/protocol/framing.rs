//! Length-prefixed frames over a unix stream socket, with fds (SCM_RIGHTS)
//! attached to the first byte of a frame.
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

impl From<nix::Error> for FrameError {
    fn from(e: nix::Error) -> Self {
        FrameError::Io(std::io::Error::from(e))
    }
}

/// Write `body` as one frame; `fds` ride along with its first byte.
pub fn write_frame(sock: &UnixStream, body: &[u8], fds: &[RawFd]) -> Result<(), FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    if fds.len() > MAX_FDS {
        return Err(FrameError::TooManyFds);
    }
    let len = (body.len() as u32).to_le_bytes();
    let mut sent = 0usize;
    let total = len.len() + body.len();
    while sent < total {
        let (head, rest): (&[u8], &[u8]) = if sent < len.len() {
            (&len[sent..], body)
        } else {
            (&body[sent - len.len()..], &[])
        };
        let iov = [IoSlice::new(head), IoSlice::new(rest)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() { &rights } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A frame's body and the fds that came with it.
pub type Frame = (Vec<u8>, Vec<OwnedFd>);

/// Read one frame; `Ok(None)` on EOF before its first byte.
pub fn read_frame(sock: &UnixStream) -> Result<Option<Frame>, FrameError> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    if !read_exact(sock, &mut len, &mut fds)? {
        return Ok(None);
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    if !read_exact(sock, &mut body, &mut fds)? {
        return Err(FrameError::Truncated);
    }
    Ok(Some((body, fds)))
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

/// Fill `buf` exactly, collecting any fds. Reads never go past `buf`, so a
/// following frame and its fds stay in the socket. Returns false on EOF before
/// the first byte.
fn read_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<bool, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_some(sock.as_raw_fd(), &mut buf[got..], fds)?;
        // Each recvmsg may bring up to MAX_FDS: a frame in many pieces must
        // not bring more in all.
        if fds.len() > MAX_FDS {
            return Err(FrameError::TooManyFds);
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(FrameError::Truncated);
        }
        got += n;
    }
    Ok(true)
}
