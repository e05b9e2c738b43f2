//! The control socket's edge: who the peer is, fixed when it connects
//! ([`Peer`]); how many connections
//! one user may have whose request is still being read; and the request
//! itself, read without a thread per connection under one deadline counted
//! from accept. A frame that fits the socket buffer is taken only once it
//! is there whole, so its fds stay queued in the socket, charged to the
//! sender, while a slow client dawdles.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;

use crate::protocol::{recv_some, FrameError, MAX_FRAME};

/// A request must be complete within this long after its connection is accepted.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Connections of one user (root excepted) whose request is still being read.
pub const READING_PER_UID: usize = 16;
/// Connections of everyone whose request is still being read.
pub const READING_TOTAL: usize = 512;
/// Frames up to this size are taken only once they are in the socket whole.
const WHOLE_FRAME: usize = 64 << 10;

pub use crate::protocol::peer::{peer, Peer};

/// Places for connections whose request is being read: so many per user
/// (root excepted) and so many in all.
pub struct Gate {
    per_uid: usize,
    total: usize,
    counts: Mutex<(usize, HashMap<u32, usize>)>,
}

/// Requests of one user (root excepted) being served at once, from accept
/// to the answer (a cold start or a pull may take long), and of everyone.
pub const IN_FLIGHT_PER_UID: usize = 256;
const IN_FLIGHT_TOTAL: usize = 4096;

/// Requests over [`WHOLE_FRAME`] of one user read at once: their fds are
/// held while the rest arrives.
pub const LARGE_PER_UID: usize = 2;
const LARGE_TOTAL: usize = 32;

/// The callers' fds the daemon holds at once, at most: half its open-files
/// limit, the other half its own (connections, containers' agents, the
/// history, the engine). Each user (root excepted) a quarter of that, at
/// most [`FDS_PER_UID_MOST`]: four users at their bound fit, and no user's
/// flood reaches the daemon's own fds or another user's calls.
pub fn fds_total(nofile: u64) -> usize {
    (nofile / 2).min(1 << 20) as usize
}

/// See [`fds_total`].
pub fn fds_per_uid(total: usize) -> usize {
    (total / 4).min(FDS_PER_UID_MOST)
}

/// The most callers' fds one user's calls may have the daemon hold.
const FDS_PER_UID_MOST: usize = 4096;

/// A place held in the [`Gate`] (`n` of them), given back on drop.
pub struct Ticket {
    gate: Arc<Gate>,
    uid: u32,
    n: usize,
}

impl Gate {
    pub fn new(per_uid: usize, total: usize) -> Arc<Gate> {
        Arc::new(Gate { per_uid, total, counts: Mutex::default() })
    }

    /// The places for requests being read.
    pub fn reading() -> Arc<Gate> {
        Gate::new(READING_PER_UID, READING_TOTAL)
    }

    /// The places for requests being served (see [`IN_FLIGHT_PER_UID`]).
    pub fn in_flight() -> Arc<Gate> {
        Gate::new(IN_FLIGHT_PER_UID, IN_FLIGHT_TOTAL)
    }

    /// The places for large requests being read (see [`LARGE_PER_UID`]).
    pub fn large() -> Arc<Gate> {
        Gate::new(LARGE_PER_UID, LARGE_TOTAL)
    }

    /// The places for the callers' fds the daemon holds (see [`fds_total`]).
    pub fn fds(nofile: u64) -> Arc<Gate> {
        let total = fds_total(nofile);
        Gate::new(fds_per_uid(total), total)
    }

    /// A place for a connection of `uid`, unless that user (or everyone) has
    /// as many as allowed.
    pub fn enter(self: &Arc<Self>, uid: u32) -> Option<Ticket> {
        self.enter_n(uid, 1)
    }

    /// `n` places for `uid` at once, unless that would take that user (or
    /// everyone) past the bound.
    pub fn enter_n(self: &Arc<Self>, uid: u32, n: usize) -> Option<Ticket> {
        let mut c = self.counts.lock().unwrap();
        let mine = c.1.get(&uid).copied().unwrap_or(0);
        if c.0 + n > self.total || (uid != 0 && mine + n > self.per_uid) {
            return None;
        }
        c.0 += n;
        c.1.insert(uid, mine + n);
        Some(Ticket { gate: self.clone(), uid, n })
    }

    /// Places of `uid` taken now.
    pub fn taken(&self, uid: u32) -> usize {
        self.counts.lock().unwrap().1.get(&uid).copied().unwrap_or(0)
    }

    /// The bound of one user.
    pub fn per_uid(&self) -> usize {
        self.per_uid
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock().unwrap();
        c.0 -= self.n;
        if let Some(n) = c.1.get_mut(&self.uid) {
            *n -= self.n;
            if *n == 0 {
                c.1.remove(&self.uid);
            }
        }
    }
}

/// Peek at up to `buf.len()` bytes without taking them (nor their fds).
fn peek(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes; no control
    // buffer, so attached fds stay queued.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Bytes queued in the socket.
fn queued(fd: RawFd) -> std::io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Forget the readiness already seen: the next [`closed`] waits for new
/// bytes or the end. Done before looking, so nothing arriving in between
/// is missed (readiness is edge-triggered).
fn forget(stream: &tokio::net::UnixStream) {
    let _ = stream.try_io(Interest::READABLE, || Err::<(), _>(std::io::ErrorKind::WouldBlock.into()));
}

/// Wait for new bytes or the end; true when the peer is done writing.
async fn closed(stream: &tokio::net::UnixStream) -> std::io::Result<bool> {
    Ok(stream.ready(Interest::READABLE).await?.is_read_closed())
}

/// Read one frame of a peer of `uid`: `Ok(None)` when the peer closes
/// before its first byte. A frame over [`WHOLE_FRAME`] needs a place in
/// `large`.
pub async fn read_frame(stream: &tokio::net::UnixStream, uid: u32, large: &Arc<Gate>) -> Result<Option<crate::protocol::Frame>, FrameError> {
    let fd = stream.as_raw_fd();
    let mut len = [0u8; 4];
    loop {
        forget(stream);
        match peek(fd, &mut len) {
            Ok(0) => return Ok(None),
            Ok(4) => break,
            Ok(_) => {
                if closed(stream).await? && peek(fd, &mut len)? < 4 {
                    return Err(FrameError::Truncated);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                closed(stream).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    let _large = if n + 4 > WHOLE_FRAME {
        let ticket = large.enter(uid).ok_or_else(|| {
            FrameError::Io(std::io::Error::other(format!("more than {LARGE_PER_UID} requests over {WHOLE_FRAME} bytes of one user at once")))
        })?;
        Some(ticket)
    } else {
        loop {
            forget(stream);
            if queued(fd)? >= n + 4 {
                break;
            }
            if closed(stream).await? && queued(fd)? < n + 4 {
                return Err(FrameError::Truncated);
            }
        }
        None
    };
    let mut fds = Vec::new();
    read_exact(stream, &mut len, &mut fds).await?;
    let mut body = vec![0u8; n];
    read_exact(stream, &mut body, &mut fds).await?;
    Ok(Some((body, fds)))
}

async fn read_exact(stream: &tokio::net::UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<(), FrameError> {
    let fd = stream.as_raw_fd();
    let mut got = 0;
    while got < buf.len() {
        forget(stream);
        match recv_some(fd, &mut buf[got..], fds) {
            Ok(_) if fds.len() > crate::protocol::MAX_FDS => return Err(FrameError::TooManyFds),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stream.ready(Interest::READABLE).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_read_from_the_kernel_with_a_live_pidfd() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = peer(a.as_raw_fd()).unwrap();
        assert_eq!((p.pid, p.uid, p.gid), (std::process::id() as i32, nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()));
        let groups: Vec<u32> = nix::unistd::getgroups().unwrap().into_iter().map(|g| g.as_raw()).collect();
        assert_eq!(p.groups, groups);
        assert!(p.alive());
    }

    #[test]
    fn the_gate_bounds_each_user_and_everyone() {
        let gate = Gate::reading();
        let mine: Vec<Ticket> = (0..READING_PER_UID).map(|_| gate.enter(1000).unwrap()).collect();
        assert!(gate.enter(1000).is_none(), "one user past the bound");
        let other = gate.enter(1001).expect("another user still gets in");
        drop(mine);
        assert!(gate.enter(1000).is_some(), "places come back");
        drop(other);
        let root: Vec<Ticket> = (0..READING_TOTAL).map(|_| gate.enter(0).unwrap()).collect();
        assert!(gate.enter(1002).is_none(), "everyone past the total");
        drop(root);
        // Weighted: a user's fds, within its bound and everyone's.
        let fds = Gate::fds(20_000);
        assert_eq!((fds.per_uid(), fds_total(20_000)), (2_500, 10_000));
        let a = fds.enter_n(1000, 2_000).unwrap();
        assert!(fds.enter_n(1000, 501).is_none(), "one user past its bound");
        let b = fds.enter_n(1000, 500).unwrap();
        assert_eq!(fds.taken(1000), 2_500);
        drop((a, b));
        assert_eq!(fds.taken(1000), 0);
        let others: Vec<Ticket> = (1..=4).map(|u| fds.enter_n(u, 2_500).unwrap()).collect();
        assert!(fds.enter_n(0, 1).is_none(), "root too, past everyone's");
        drop(others);
        assert_eq!(fds_per_uid(fds_total(1_048_576)), 4096);
    }

    #[tokio::test]
    async fn a_frame_is_taken_only_whole_and_its_fds_with_it() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let b = tokio::net::UnixStream::from_std(b).unwrap();
        let body = b"hello frame".to_vec();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        let file = std::fs::File::open("/dev/null").unwrap();
        // The header and the fd first, the rest later: nothing is taken yet.
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(&frame[..6])],
            &[nix::sys::socket::ControlMessage::ScmRights(&[file.as_raw_fd()])],
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        let large = Gate::large();
        let reader = tokio::spawn(async move { read_frame(&b, 1000, &large).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished());
        std::io::Write::write_all(&mut &a, &frame[6..]).unwrap();
        let (got, fds) = reader.await.unwrap().unwrap().unwrap();
        assert_eq!((got, fds.len()), (body, 1));
        // A frame cut short by its writer is an error, not a wait.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let b = tokio::net::UnixStream::from_std(b).unwrap();
        std::io::Write::write_all(&mut &a, &frame[..6]).unwrap();
        drop(a);
        assert!(matches!(read_frame(&b, 1000, &Gate::large()).await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn a_frame_in_many_pieces_brings_no_more_fds_than_one() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let b = tokio::net::UnixStream::from_std(b).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let fds = vec![file.as_raw_fd(); 200];
        let mut frame = 40u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&[0u8; 40]);
        let writer = std::thread::spawn(move || {
            // Four pieces of 200 fds each, in one small frame.
            for piece in frame.chunks(11) {
                let rights = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                let _ = nix::sys::socket::sendmsg::<()>(a.as_raw_fd(), &[std::io::IoSlice::new(piece)], &rights, nix::sys::socket::MsgFlags::empty(), None);
            }
            a
        });
        let _a = writer.join().unwrap();
        assert!(matches!(read_frame(&b, 1000, &Gate::large()).await, Err(FrameError::TooManyFds)));
    }
}
