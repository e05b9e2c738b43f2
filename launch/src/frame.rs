//! The launcher's side of odfs's framing (`odfs::protocol`'s, byte for
//! byte): a u32 little-endian length, the postcard body of an `odfs_wire`
//! message, and fds (SCM_RIGHTS) on the first byte of a frame.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::size_of;

use odfs_wire::{MAX_FDS, MAX_FRAME};
use serde::{Deserialize, Serialize};

use crate::sys::{self, Errno, Fd, Iovec, Msghdr, EINTR};

pub enum Error {
    Sys(Errno),
    TooLarge(usize),
    Truncated,
    TooManyFds,
    Encode,
    Decode,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Sys(e) => write!(f, "connection error: {e}"),
            Error::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"),
            Error::Truncated => f.write_str("connection closed in the middle of a frame"),
            Error::TooManyFds => f.write_str("too many fds attached to one frame"),
            Error::Encode => f.write_str("cannot encode message"),
            Error::Decode => f.write_str("malformed message"),
        }
    }
}

/// `struct cmsghdr`, followed by its data.
#[repr(C)]
struct Cmsghdr {
    len: usize,
    level: i32,
    ty: i32,
}

const HEADER: usize = size_of::<Cmsghdr>();

/// Room for `n` fds in a control message (`CMSG_SPACE`).
const fn space(n: usize) -> usize {
    HEADER + (n * 4).div_ceil(8) * 8
}

/// Send `msg` as one frame with `fds`.
pub fn send<T: Serialize>(sock: i32, msg: &T, fds: &[i32]) -> Result<(), Error> {
    let body = odfs_wire::encode(msg).map_err(|_| Error::Encode)?;
    if body.len() > MAX_FRAME {
        return Err(Error::TooLarge(body.len()));
    }
    if fds.len() > MAX_FDS {
        return Err(Error::TooManyFds);
    }
    let len = (body.len() as u32).to_le_bytes();
    let mut control = vec![0u64; space(fds.len()).div_ceil(8)];
    if !fds.is_empty() {
        let c = control.as_mut_ptr().cast::<u8>();
        // SAFETY: the buffer holds a header and the fds (CMSG_SPACE).
        unsafe {
            c.cast::<Cmsghdr>().write(Cmsghdr { len: HEADER + fds.len() * 4, level: sys::SOL_SOCKET, ty: sys::SCM_RIGHTS });
            core::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), c.add(HEADER), fds.len() * 4);
        }
    }
    let total = len.len() + body.len();
    let mut sent = 0usize;
    while sent < total {
        let (head, rest): (&[u8], &[u8]) = if sent < len.len() { (&len[sent..], &body) } else { (&body[sent - len.len()..], &[]) };
        let iov = [Iovec { base: head.as_ptr(), len: head.len() }, Iovec { base: rest.as_ptr(), len: rest.len() }];
        let with_fds = sent == 0 && !fds.is_empty();
        let msg = Msghdr {
            name: core::ptr::null_mut(),
            namelen: 0,
            iov: iov.as_ptr(),
            iovlen: 2,
            control: if with_fds { control.as_mut_ptr().cast() } else { core::ptr::null_mut() },
            controllen: if with_fds { space(fds.len()) } else { 0 },
            flags: 0,
        };
        match sys::sendmsg(sock, &msg, sys::MSG_NOSIGNAL) {
            Ok(n) => sent += n,
            Err(Errno(EINTR)) => {}
            Err(e) => return Err(Error::Sys(e)),
        }
    }
    Ok(())
}

/// Receive one message and the fds that came with it; `Ok(None)` on a
/// clean end of the connection.
pub fn recv<T: for<'a> Deserialize<'a>>(sock: i32) -> Result<Option<(T, Vec<Fd>)>, Error> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    if !read_exact(sock, &mut len, &mut fds)? {
        return Ok(None);
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(Error::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    if !read_exact(sock, &mut body, &mut fds)? {
        return Err(Error::Truncated);
    }
    let msg = odfs_wire::decode(&body).map_err(|_| Error::Decode)?;
    Ok(Some((msg, fds)))
}

/// Fill `buf` exactly, collecting fds; reads never go past `buf`, so the
/// next frame and its fds stay in the socket. False at EOF before a byte.
fn read_exact(sock: i32, buf: &mut [u8], fds: &mut Vec<Fd>) -> Result<bool, Error> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_some(sock, &mut buf[got..], fds)?;
        if fds.len() > MAX_FDS {
            return Err(Error::TooManyFds);
        }
        if n == 0 {
            return if got == 0 { Ok(false) } else { Err(Error::Truncated) };
        }
        got += n;
    }
    Ok(true)
}

fn recv_some(sock: i32, buf: &mut [u8], fds: &mut Vec<Fd>) -> Result<usize, Error> {
    let mut control = [0u64; space(MAX_FDS).div_ceil(8)];
    loop {
        let iov = [Iovec { base: buf.as_mut_ptr(), len: buf.len() }];
        let mut msg = Msghdr {
            name: core::ptr::null_mut(),
            namelen: 0,
            iov: iov.as_ptr(),
            iovlen: 1,
            control: control.as_mut_ptr().cast(),
            controllen: space(MAX_FDS),
            flags: 0,
        };
        let n = match sys::recvmsg(sock, &mut msg, sys::MSG_CMSG_CLOEXEC) {
            Ok(n) => n,
            Err(Errno(EINTR)) => continue,
            Err(e) => return Err(Error::Sys(e)),
        };
        // Every control message (CMSG_FIRSTHDR / CMSG_NXTHDR).
        let base = control.as_ptr().cast::<u8>();
        let mut at = 0usize;
        while at + HEADER <= msg.controllen {
            // SAFETY: within the control bytes the kernel filled.
            let h = unsafe { base.add(at).cast::<Cmsghdr>().read() };
            if h.len < HEADER || at + h.len > msg.controllen {
                break;
            }
            if h.level == sys::SOL_SOCKET && h.ty == sys::SCM_RIGHTS {
                for k in 0..(h.len - HEADER) / 4 {
                    // SAFETY: an fd the kernel installed for us, read unaligned.
                    let fd = unsafe { base.add(at + HEADER + 4 * k).cast::<i32>().read_unaligned() };
                    fds.push(Fd(fd));
                }
            }
            at += h.len.div_ceil(8) * 8;
        }
        if msg.flags & sys::MSG_CTRUNC != 0 {
            return Err(Error::TooManyFds);
        }
        return Ok(n);
    }
}
