//! A pty pair whose fds are close-on-exec from birth, for the agent (a
//! tool's terminal) and the daemon (a relayed call's local terminal).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A new pty: (master, slave). Both fds carry `O_CLOEXEC` from the syscall
/// that makes them (`posix_openpt`, `TIOCGPTPEER`), never set afterwards:
/// another thread may fork and exec at any moment, and what it starts must
/// never inherit a terminal of someone else's call.
pub fn open() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain syscalls; every fd returned is owned right away.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if m < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(m);
        if libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if s < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((master, OwnedFd::from_raw_fd(s)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn both_ends_are_close_on_exec_and_connected() {
        let (master, slave) = super::open().unwrap();
        for fd in [&master, &slave] {
            // SAFETY: F_GETFD on an fd we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        // SAFETY: isatty on an fd we own.
        assert_eq!(unsafe { libc::isatty(slave.as_raw_fd()) }, 1);
    }
}
