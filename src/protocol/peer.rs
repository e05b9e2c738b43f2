//! Who is at the other end of a unix socket, as the kernel saw it when it
//! connected (`SO_PEERCRED`, `SO_PEERGROUPS`, `SO_PEERPIDFD`), and whether
//! that process is still the one behind the pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The peer as the kernel saw it when it connected.
#[derive(Debug)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The peer process itself, so a pid read now cannot be another's later.
    pub pidfd: Option<OwnedFd>,
}

fn getsockopt_raw(fd: RawFd, opt: libc::c_int, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, buf.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// `SO_PEERPIDFD` (Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;

/// Who is at the other end of `fd`.
pub fn peer(fd: RawFd) -> std::io::Result<Peer> {
    let mut cred = [0u8; std::mem::size_of::<libc::ucred>()];
    getsockopt_raw(fd, libc::SO_PEERCRED, &mut cred)?;
    // SAFETY: the kernel filled a `struct ucred`.
    let cred: libc::ucred = unsafe { std::ptr::read_unaligned(cred.as_ptr().cast()) };
    // At most NGROUPS_MAX (65536) groups.
    let mut buf = vec![0u8; 4 * 256];
    let groups = loop {
        match getsockopt_raw(fd, libc::SO_PEERGROUPS, &mut buf) {
            Ok(n) => break buf[..n].chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < 4 * 65536 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    };
    let mut raw = [0u8; 4];
    let pidfd = match getsockopt_raw(fd, SO_PEERPIDFD, &mut raw) {
        // SAFETY: a new pidfd the kernel installed for us.
        Ok(4) => Some(unsafe { OwnedFd::from_raw_fd(i32::from_ne_bytes(raw)) }),
        // The peer is gone already (ESRCH), or anything else: no pidfd, and
        // the caller counts as gone.
        Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EINVAL)) => None,
        Ok(_) => None,
        // An older kernel: the pid as it is now, still far earlier than the request.
        Err(_) => pidfd_open(cred.pid),
    };
    Ok(Peer { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups, pidfd })
}

/// The process behind a file-system request, with the file-system uid and
/// gid the kernel gave for it. Its supplementary groups are read from
/// `/proc/PID/status` and kept only if that status is still the
/// requester's: the same file-system ids, and the process still there
/// after the read (a pid is not reused while its process exists).
/// Otherwise it has none, which can only deny it what its groups allow.
pub fn requester(pid: u32, uid: u32, gid: u32) -> Peer {
    let pid = i32::try_from(pid).unwrap_or(0);
    let pidfd = (pid > 0).then(|| pidfd_open(pid)).flatten();
    let groups = pidfd.as_ref().and_then(|fd| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ids = |name: &str| -> Option<Vec<u32>> {
            let line = status.lines().find_map(|l| l.strip_prefix(name))?;
            line.split_whitespace().map(|x| x.parse().ok()).collect()
        };
        // Uid: and Gid: hold real, effective, saved and file-system ids.
        let same = ids("Uid:")?.get(3) == Some(&uid) && ids("Gid:")?.get(3) == Some(&gid);
        let groups = ids("Groups:")?;
        (same && running(fd)).then_some(groups)
    });
    Peer { pid, uid, gid, groups: groups.unwrap_or_default(), pidfd }
}

impl Peer {
    /// Whether the peer process still exists: what was read from
    /// `/proc/PID` before this said true was the peer's own, since a pid is
    /// not reused while its process (or its zombie) is there.
    pub fn alive(&self) -> bool {
        self.pidfd.as_ref().is_some_and(running)
    }
}

/// A pidfd of process `pid`, which stays that process's even after its pid
/// is reused.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: a new fd of ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind a pidfd has not exited. A pidfd turns
/// readable at exit; polling it needs no permission over the process
/// (signal 0 would need CAP_KILL).
pub fn running(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) == 0 }
}


/// The session id of a process (`/proc/PID/stat`, field 6): calls from one
/// shell session form the sequences prediction learns; a tool's session is
/// what the agent ends when its launcher is gone.
pub fn session_of(pid: i32) -> Option<i32> {
    stat_field(pid, 3)
}

/// The parent of a process (`/proc/PID/stat`, field 4).
pub fn parent_of(pid: i32) -> Option<i32> {
    stat_field(pid, 1)
}

/// Field `n` after the command in `/proc/PID/stat` (0: the state).
fn stat_field(pid: i32, n: usize) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command (which may hold anything): state ppid pgrp session …
    stat.rsplit_once(')')?.1.split_whitespace().nth(n)?.parse().ok()
}
