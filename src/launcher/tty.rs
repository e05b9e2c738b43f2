//! The launcher's terminal side of pty mode: describe the caller's terminal,
//! switch it to raw mode while the tool runs in the foreground, copy bytes
//! between it and the pty master, pass window size changes on, and put the
//! terminal back exactly as it was.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::protocol::TtyRequest;

pub fn isatty(fd: RawFd) -> bool {
    // SAFETY: isatty only queries the fd.
    unsafe { libc::isatty(fd) == 1 }
}

pub fn winsize(fd: RawFd) -> Option<libc::winsize> {
    // SAFETY: TIOCGWINSZ fills the struct.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) == 0).then_some(ws)
    }
}

fn termios(fd: RawFd) -> Option<libc::termios> {
    // SAFETY: tcgetattr fills the struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then_some(t)
    }
}

/// Whether the launcher's process group owns the terminal. A background job
/// must not change or read it (the kernel would stop it with SIGTTOU/SIGTTIN).
fn in_foreground(fd: RawFd) -> bool {
    // SAFETY: plain queries.
    unsafe { libc::tcgetpgrp(fd) == libc::getpgrp() }
}

/// The pty request for the caller's terminal fds (`targets`); `term` is one of them.
pub fn request(term: RawFd, targets: Vec<i32>) -> TtyRequest {
    let ws = winsize(term).unwrap_or(libc::winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 });
    let termios = termios(term)
        .map(|t| {
            // SAFETY: viewing a plain C struct as bytes.
            unsafe { std::slice::from_raw_parts((&t as *const libc::termios).cast::<u8>(), std::mem::size_of::<libc::termios>()) }
                .to_vec()
        })
        .unwrap_or_default();
    TtyRequest { targets, rows: ws.ws_row, cols: ws.ws_col, xpixel: ws.ws_xpixel, ypixel: ws.ws_ypixel, termios }
}

/// The caller's terminal and the tool's pty master, while the tool runs.
pub struct Bridge {
    /// The caller's terminal (read for input, written with the tool's output).
    term: RawFd,
    pub master: OwnedFd,
    /// Settings to restore; `None` when the terminal was not switched.
    saved: Option<libc::termios>,
}

impl Bridge {
    pub fn new(term: RawFd, master: OwnedFd) -> Bridge {
        let mut b = Bridge { term, master, saved: None };
        b.enter();
        b
    }

    /// Raw mode, if we own the terminal: keys go to the tool's pty, whose own
    /// line discipline turns Ctrl-C and Ctrl-Z into signals for the tool.
    pub fn enter(&mut self) {
        if self.saved.is_some() || !in_foreground(self.term) {
            return;
        }
        let Some(orig) = termios(self.term) else { return };
        let mut raw = orig;
        // SAFETY: cfmakeraw edits the local copy; tcsetattr applies it.
        unsafe {
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(self.term, libc::TCSADRAIN, &raw) == 0 {
                self.saved = Some(orig);
            }
        }
        self.sync_size();
    }

    /// Back to the settings the caller had.
    pub fn leave(&mut self) {
        if let Some(orig) = self.saved.take() {
            // SAFETY: restoring the saved settings.
            unsafe { libc::tcsetattr(self.term, libc::TCSADRAIN, &orig) };
        }
    }

    /// Whether terminal input should be read and passed to the tool now.
    pub fn reading_input(&self) -> bool {
        self.saved.is_some()
    }

    pub fn term(&self) -> RawFd {
        self.term
    }

    /// Give the pty the terminal's size; the kernel tells the tool (SIGWINCH).
    /// Returns the size given.
    pub fn sync_size(&self) -> Option<libc::winsize> {
        let ws = winsize(self.term)?;
        // SAFETY: TIOCSWINSZ reads the struct.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        Some(ws)
    }

    /// Copy what is readable on `from` to `to`. Returns false at end of input
    /// (EOF, or EIO: every holder of the pty slave closed it).
    pub fn pump(from: RawFd, to: RawFd) -> bool {
        let mut buf = [0u8; 65536];
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            return e == Some(libc::EINTR) || e == Some(libc::EAGAIN);
        }
        if n == 0 {
            return false;
        }
        write_all(to, &buf[..n as usize]);
        true
    }

    /// After the tool ended: pass on everything it wrote. Its last writes may
    /// still be on their way through the pty, so wait for the end of the
    /// stream (EIO once all slave holders are gone), within `limit`.
    pub fn drain(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd { fd: self.master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: polling one fd we own.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if n <= 0 || !Self::pump(self.master.as_raw_fd(), self.term) {
                return;
            }
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.leave();
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: writing from a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}
