//! The framing of every odfs connection, apart from how bytes move: a u32
//! little-endian length, then the body; fds (SCM_RIGHTS) ride with the
//! first byte. The I/O is the caller's: `odfs::protocol` (nix) and the
//! launcher (raw system calls) pass their own `send` and `recv`.

use alloc::vec;
use alloc::vec::Vec;

use crate::{MAX_FDS, MAX_FRAME};

/// Why a frame could not be written or read.
#[derive(Debug)]
pub enum Error<E> {
    /// The connection's own error.
    Io(E),
    TooLarge(usize),
    Truncated,
    TooManyFds,
}

impl<E: core::fmt::Display> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection error: {e}"),
            Error::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit"),
            Error::Truncated => f.write_str("connection closed in the middle of a frame"),
            Error::TooManyFds => f.write_str("too many fds attached to one frame"),
        }
    }
}

/// Write `body` as one frame carrying `fds` fds. `send(head, rest, first)`
/// sends what it can of `head` then `rest` (attaching the fds when `first`)
/// and returns how many bytes went; it retries interrupted calls itself.
pub fn write<E>(body: &[u8], fds: usize, mut send: impl FnMut(&[u8], &[u8], bool) -> Result<usize, E>) -> Result<(), Error<E>> {
    if body.len() > MAX_FRAME {
        return Err(Error::TooLarge(body.len()));
    }
    if fds > MAX_FDS {
        return Err(Error::TooManyFds);
    }
    let len = (body.len() as u32).to_le_bytes();
    let total = len.len() + body.len();
    let mut sent = 0usize;
    while sent < total {
        let (head, rest): (&[u8], &[u8]) = if sent < len.len() { (&len[sent..], body) } else { (&body[sent - len.len()..], &[]) };
        sent += send(head, rest, sent == 0).map_err(Error::Io)?;
    }
    Ok(())
}

/// Read one frame's body; `Ok(None)` at the end of the connection before
/// its first byte. `recv(buf)` reads some bytes into `buf` (0 at the end),
/// keeps the fds that came with them, and returns the bytes read and the
/// fds kept so far. Reads never go past the frame, so the next frame and
/// its fds stay in the socket, and a frame in many pieces may not bring
/// more than [`MAX_FDS`] in all.
pub fn read<E>(mut recv: impl FnMut(&mut [u8]) -> Result<(usize, usize), E>) -> Result<Option<Vec<u8>>, Error<E>> {
    let mut len = [0u8; 4];
    if !read_exact(&mut recv, &mut len)? {
        return Ok(None);
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(Error::TooLarge(n));
    }
    let mut body = vec![0u8; n];
    if !read_exact(&mut recv, &mut body)? {
        return Err(Error::Truncated);
    }
    Ok(Some(body))
}

/// Fill `buf` exactly; false at the end before its first byte.
fn read_exact<E>(recv: &mut impl FnMut(&mut [u8]) -> Result<(usize, usize), E>, buf: &mut [u8]) -> Result<bool, Error<E>> {
    let mut got = 0;
    while got < buf.len() {
        let (n, fds) = recv(&mut buf[got..]).map_err(Error::Io)?;
        if fds > MAX_FDS {
            return Err(Error::TooManyFds);
        }
        if n == 0 {
            return if got == 0 { Ok(false) } else { Err(Error::Truncated) };
        }
        got += n;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection of scripted pieces: (bytes, fds with them).
    fn reader(pieces: Vec<(Vec<u8>, usize)>) -> impl FnMut(&mut [u8]) -> Result<(usize, usize), ()> {
        let mut pieces = pieces.into_iter();
        let mut pending: Vec<u8> = Vec::new();
        let mut fds = 0;
        move |buf| {
            if pending.is_empty() {
                if let Some((b, f)) = pieces.next() {
                    pending = b;
                    fds += f;
                }
            }
            let n = pending.len().min(buf.len());
            buf[..n].copy_from_slice(&pending[..n]);
            pending.drain(..n);
            Ok((n, fds))
        }
    }

    #[test]
    fn a_frame_written_in_pieces_reads_back_and_stops_at_its_end() {
        let mut wire = Vec::new();
        write(b"hello", 1, |head, rest, _| {
            // One byte at a time: the worst a socket can do.
            let b = if head.is_empty() { rest[0] } else { head[0] };
            wire.push(b);
            Ok::<_, ()>(1)
        })
        .unwrap();
        wire.extend_from_slice(&[9, 9]);
        let mut r = reader(wire.iter().map(|&b| (vec![b], 0)).collect());
        assert_eq!(read(&mut r).unwrap().unwrap(), b"hello");
        assert!(matches!(read(&mut r), Err(Error::Truncated)));
    }

    #[test]
    fn limits_hold_on_both_sides() {
        let big = vec![0u8; MAX_FRAME + 1];
        assert!(matches!(write(&big, 0, |_, _, _| Ok::<_, ()>(1)), Err(Error::TooLarge(_))));
        assert!(matches!(write(b"x", MAX_FDS + 1, |_, _, _| Ok::<_, ()>(1)), Err(Error::TooManyFds)));
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        assert!(matches!(read(reader(vec![(huge, 0)])), Err(Error::TooLarge(_))));
        let frame = [1u32.to_le_bytes().to_vec(), vec![7]].concat();
        assert!(matches!(read(reader(vec![(frame[..2].to_vec(), 200), (frame[2..].to_vec(), 60)])), Err(Error::TooManyFds)));
        assert_eq!(read(reader(vec![])).unwrap(), None);
    }
}
