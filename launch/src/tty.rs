//! The launcher's terminal side of pty mode: describe the caller's terminal,
//! switch it to raw mode while the tool runs in the foreground, copy bytes
//! between it and the pty master, pass window size changes on, and put the
//! terminal back exactly as it was.

use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, Ordering};

use odfs_wire::tty::{KernelTermios, KERNEL_TERMIOS};
use odfs_wire::TtyRequest;

use crate::sys::{self, Errno, Fd, Pollfd, POLLIN};

const TCGETS: u32 = 0x5401;
/// `tcsetattr(TCSADRAIN)`.
const TCSETSW: u32 = 0x5403;
const TIOCGPGRP: u32 = 0x540F;
const TIOCGWINSZ: u32 = 0x5413;
const TIOCSWINSZ: u32 = 0x5414;

/// `struct winsize`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

fn termios(fd: i32) -> Option<KernelTermios> {
    let mut t = [0u8; KERNEL_TERMIOS];
    // SAFETY: TCGETS fills the kernel's termios, which is this size.
    unsafe { sys::ioctl(fd, TCGETS, t.as_mut_ptr()) }.ok().map(|_| t)
}

pub fn isatty(fd: i32) -> bool {
    termios(fd).is_some()
}

pub fn winsize(fd: i32) -> Option<Winsize> {
    let mut ws = Winsize::default();
    // SAFETY: TIOCGWINSZ fills the struct.
    unsafe { sys::ioctl(fd, TIOCGWINSZ, &mut ws) }.ok().map(|_| ws)
}

/// Whether the launcher's process group owns the terminal. A background job
/// must not change or read it (the kernel would stop it with SIGTTOU/SIGTTIN).
pub fn in_foreground(fd: i32) -> bool {
    let mut pgrp: i32 = 0;
    // SAFETY: TIOCGPGRP writes one pid.
    unsafe { sys::ioctl(fd, TIOCGPGRP, &mut pgrp) }.is_ok() && pgrp == sys::getpgrp()
}

/// Whether `fd` is open for writing (not `O_RDONLY`).
pub fn writable(fd: i32) -> bool {
    const F_GETFL: i32 = 3;
    sys::fcntl(fd, F_GETFL).is_ok_and(|flags| flags & 0b11 != 0)
}

/// The pty request for the caller's terminal fds (`targets`); `term` is one of them.
pub fn request(term: i32, targets: Vec<i32>) -> TtyRequest {
    let ws = winsize(term).unwrap_or(Winsize { rows: 24, cols: 80, xpixel: 0, ypixel: 0 });
    let termios = termios(term).map(|t| odfs_wire::tty::libc_termios(&t).to_vec()).unwrap_or_default();
    TtyRequest { targets, rows: ws.rows, cols: ws.cols, xpixel: ws.xpixel, ypixel: ws.ypixel, termios }
}

/// The settings to put back if the launcher panics while the terminal is
/// raw (a panic aborts: no destructor runs). Written only while `fd` is -1;
/// the launcher has one thread.
struct Saved {
    fd: AtomicI32,
    termios: UnsafeCell<KernelTermios>,
}

// SAFETY: one thread; see above.
unsafe impl Sync for Saved {}

static SAVED: Saved = Saved { fd: AtomicI32::new(-1), termios: UnsafeCell::new([0; KERNEL_TERMIOS]) };

/// Put the caller's terminal back as it was, if it is raw.
pub fn restore_on_panic() {
    let fd = SAVED.fd.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: TCSETSW reads the settings saved when raw mode began.
        let _ = unsafe { sys::ioctl(fd, TCSETSW, SAVED.termios.get()) };
    }
}

/// The caller's terminal and the tool's pty master, while the tool runs.
pub struct Bridge {
    /// The caller's terminal, as its stdin (read for input, set raw).
    pub term: i32,
    /// The same terminal as a fd open for writing, for the tool's output
    /// (a stdin opened read-only, as `xargs -o` opens /dev/tty, takes none).
    pub out: i32,
    pub master: Fd,
    /// Settings to restore; `None` when the terminal was not switched.
    saved: Option<KernelTermios>,
}

impl Bridge {
    pub fn new(term: i32, out: i32, master: Fd) -> Bridge {
        let mut b = Bridge { term, out, master, saved: None };
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
        odfs_wire::tty::make_raw(&mut raw);
        // SAFETY: TCSETSW reads the kernel's termios.
        // SAFETY: no raw mode is on record (fd -1): nothing reads it.
        unsafe { *SAVED.termios.get() = orig };
        if unsafe { sys::ioctl(self.term, TCSETSW, raw.as_mut_ptr()) }.is_ok() {
            self.saved = Some(orig);
            SAVED.fd.store(self.term, Ordering::Relaxed);
        }
        self.sync_size();
    }

    /// Back to the settings the caller had.
    pub fn leave(&mut self) {
        if let Some(mut orig) = self.saved.take() {
            SAVED.fd.store(-1, Ordering::Relaxed);
            // SAFETY: TCSETSW reads the saved termios.
            let _ = unsafe { sys::ioctl(self.term, TCSETSW, orig.as_mut_ptr()) };
        }
    }

    /// Whether terminal input should be read and passed to the tool now.
    pub fn reading_input(&self) -> bool {
        self.saved.is_some()
    }

    /// Give the pty the terminal's size; the kernel tells the tool (SIGWINCH).
    /// Returns the size given.
    pub fn sync_size(&self) -> Option<Winsize> {
        let mut ws = winsize(self.term)?;
        // SAFETY: TIOCSWINSZ reads the struct.
        let _ = unsafe { sys::ioctl(self.master.0, TIOCSWINSZ, &mut ws) };
        Some(ws)
    }

    /// Copy what is readable on `from` to `to`. Returns false at end of input
    /// (EOF, or EIO: every holder of the pty slave closed it).
    pub fn pump(from: i32, to: i32) -> bool {
        let mut buf = [0u8; 65536];
        match sys::read(from, &mut buf) {
            Ok(0) => false,
            Ok(n) => {
                sys::write_all(to, &buf[..n]);
                true
            }
            Err(Errno(e)) => e == sys::EINTR || e == sys::EAGAIN,
        }
    }

    /// After the tool ended: pass on everything it wrote. Its last writes may
    /// still be on their way through the pty, so wait for the end of the
    /// stream (EIO once all slave holders are gone), within `limit_ms`.
    pub fn drain(&self, limit_ms: u64) {
        let deadline = sys::now_ns() + limit_ms * 1_000_000;
        loop {
            let left = deadline.saturating_sub(sys::now_ns()) / 1_000_000;
            let mut pfd = [Pollfd { fd: self.master.0, events: POLLIN, revents: 0 }];
            match sys::poll(&mut pfd, left as i32) {
                Ok(n) if n > 0 => {}
                _ => return,
            }
            if !Self::pump(self.master.0, self.out) {
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
