//! The launcher's side of odfs's framing (`odfs::protocol`'s, byte for
//! byte): a u32 little-endian length, the postcard body of an `odfs_wire`
//! message, and fds (SCM_RIGHTS) on the first byte of a frame.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::size_of;

use odfs_wire::MAX_FDS;
use serde::{Deserialize, Serialize};

use crate::sys::{self, Errno, Fd, Iovec, Msghdr, EINTR};

pub enum Error {
    Frame(odfs_wire::frame::Error<Errno>),
    Encode,
    Decode,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Frame(e) => e.fmt(f),
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
    let mut control = vec![0u64; space(fds.len()).div_ceil(8)];
    if !fds.is_empty() && fds.len() <= MAX_FDS {
        let c = control.as_mut_ptr().cast::<u8>();
        // SAFETY: the buffer holds a header and the fds (CMSG_SPACE).
        unsafe {
            c.cast::<Cmsghdr>().write(Cmsghdr { len: HEADER + fds.len() * 4, level: sys::SOL_SOCKET, ty: sys::SCM_RIGHTS });
            core::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), c.add(HEADER), fds.len() * 4);
        }
    }
    odfs_wire::frame::write(&body, fds.len(), |head, rest, first| {
        let iov = [Iovec { base: head.as_ptr(), len: head.len() }, Iovec { base: rest.as_ptr(), len: rest.len() }];
        let with_fds = first && !fds.is_empty();
        let msg = Msghdr {
            name: core::ptr::null_mut(),
            namelen: 0,
            iov: iov.as_ptr(),
            iovlen: 2,
            control: if with_fds { control.as_mut_ptr().cast() } else { core::ptr::null_mut() },
            controllen: if with_fds { space(fds.len()) } else { 0 },
            flags: 0,
        };
        loop {
            match sys::sendmsg(sock, &msg, sys::MSG_NOSIGNAL) {
                Err(Errno(EINTR)) => {}
                sent => return sent,
            }
        }
    })
    .map_err(Error::Frame)
}

/// Receive one message and the fds that came with it; `Ok(None)` on a
/// clean end of the connection.
pub fn recv<T: for<'a> Deserialize<'a>>(sock: i32) -> Result<Option<(T, Vec<Fd>)>, Error> {
    let mut fds = Vec::new();
    let body = odfs_wire::frame::read(|buf| {
        let (n, complete) = recv_some(sock, buf, &mut fds)?;
        // Fds lost to a full control buffer were too many for one frame.
        Ok((n, if complete { fds.len() } else { MAX_FDS + 1 }))
    })
    .map_err(Error::Frame)?;
    let Some(body) = body else { return Ok(None) };
    let msg = odfs_wire::decode(&body).map_err(|_| Error::Decode)?;
    Ok(Some((msg, fds)))
}

/// One `recvmsg` into `buf`, keeping the fds that came with it: the bytes
/// read, and false if some fds did not fit (more than [`MAX_FDS`]).
fn recv_some(sock: i32, buf: &mut [u8], fds: &mut Vec<Fd>) -> Result<(usize, bool), Errno> {
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
            Err(e) => return Err(e),
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
        return Ok((n, msg.flags & sys::MSG_CTRUNC == 0));
    }
}
