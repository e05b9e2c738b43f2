//! The launcher's system calls (x86_64 Linux), made directly: no libc, so
//! no start-up code runs before `main` and nothing touches errno, signals
//! or fds behind the launcher's back. Each wrapper returns the kernel's
//! result, a negative errno becoming [`Errno`].

use core::arch::asm;

/// A failed system call's error number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

pub const EINTR: i32 = 4;
pub const EAGAIN: i32 = 11;

impl core::fmt::Display for Errno {
    /// The C library's wording for the errors a launcher meets, so its lines
    /// read as every other program's.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self.0 {
            1 => "Operation not permitted",
            2 => "No such file or directory",
            4 => "Interrupted system call",
            9 => "Bad file descriptor",
            11 => "Resource temporarily unavailable",
            12 => "Cannot allocate memory",
            13 => "Permission denied",
            20 => "Not a directory",
            22 => "Invalid argument",
            23 => "Too many open files in system",
            24 => "Too many open files",
            32 => "Broken pipe",
            36 => "File name too long",
            40 => "Too many levels of symbolic links",
            88 => "Socket operation on non-socket",
            90 => "Message too long",
            104 => "Connection reset by peer",
            105 => "No buffer space available",
            110 => "Connection timed out",
            111 => "Connection refused",
            _ => return write!(f, "error {}", self.0),
        };
        write!(f, "{text} (os error {})", self.0)
    }
}

pub type Result<T> = core::result::Result<T, Errno>;

fn check(ret: isize) -> Result<usize> {
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// # Safety
/// The arguments must be valid for system call `n`.
#[inline]
pub unsafe fn syscall6(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, g: usize) -> isize {
    let ret: isize;
    asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c,
         in("r10") d, in("r8") e, in("r9") g, lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

macro_rules! sys {
    ($n:expr $(, $a:expr)*) => {{
        let v = [$($a as usize,)* 0usize, 0, 0, 0, 0, 0];
        // SAFETY: the callers below pass what each system call expects.
        check(unsafe { syscall6($n, v[0], v[1], v[2], v[3], v[4], v[5]) })
    }};
}

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_POLL: usize = 7;
const SYS_MMAP: usize = 9;
const SYS_RT_SIGACTION: usize = 13;
const SYS_RT_SIGPROCMASK: usize = 14;
pub const SYS_RT_SIGRETURN: usize = 15;
const SYS_IOCTL: usize = 16;
const SYS_GETPID: usize = 39;
const SYS_SOCKET: usize = 41;
const SYS_CONNECT: usize = 42;
const SYS_SOCKETPAIR: usize = 53;
const SYS_SENDMSG: usize = 46;
const SYS_RECVMSG: usize = 47;
const SYS_FCNTL: usize = 72;
const SYS_GETPGRP: usize = 111;
const SYS_SETRLIMIT: usize = 160;
const SYS_GETDENTS64: usize = 217;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_EXIT_GROUP: usize = 231;
const SYS_KILL: usize = 62;
const SYS_OPENAT: usize = 257;
const SYS_READLINKAT: usize = 267;
const SYS_PIPE2: usize = 293;

pub const AT_FDCWD: i32 = -100;
pub const O_RDONLY: i32 = 0;
pub const O_WRONLY: i32 = 1;
pub const O_RDWR: i32 = 2;
pub const O_CREAT: i32 = 0o100;
pub const O_APPEND: i32 = 0o2000;
pub const O_NONBLOCK: i32 = 0o4000;
pub const O_DIRECTORY: i32 = 0o200000;
pub const O_CLOEXEC: i32 = 0o2000000;
pub const F_GETFD: i32 = 1;

pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize> {
    sys!(SYS_READ, fd, buf.as_mut_ptr(), buf.len())
}

pub fn write(fd: i32, buf: &[u8]) -> Result<usize> {
    sys!(SYS_WRITE, fd, buf.as_ptr(), buf.len())
}

/// Write all of `data`, retrying after signals; gives up on any other error
/// (a closed stderr must not keep the launcher from ending as the tool did).
pub fn write_all(fd: i32, mut data: &[u8]) {
    while !data.is_empty() {
        match write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno(EINTR)) => {}
            Err(_) => return,
        }
    }
}

pub fn close(fd: i32) {
    let _ = sys!(SYS_CLOSE, fd);
}

/// `path` must end in a NUL byte.
pub fn open(path: &[u8], flags: i32, mode: u32) -> Result<i32> {
    debug_assert_eq!(path.last(), Some(&0));
    sys!(SYS_OPENAT, AT_FDCWD as isize, path.as_ptr(), flags, mode).map(|fd| fd as i32)
}

/// `path` must end in a NUL byte.
pub fn readlink(path: &[u8], buf: &mut [u8]) -> Result<usize> {
    sys!(SYS_READLINKAT, AT_FDCWD as isize, path.as_ptr(), buf.as_mut_ptr(), buf.len())
}

pub fn getdents64(fd: i32, buf: &mut [u8]) -> Result<usize> {
    sys!(SYS_GETDENTS64, fd, buf.as_mut_ptr(), buf.len())
}

pub fn fcntl(fd: i32, cmd: i32) -> Result<usize> {
    sys!(SYS_FCNTL, fd, cmd)
}

/// # Safety
/// `arg` must point to what `request` reads or writes.
pub unsafe fn ioctl<T>(fd: i32, request: u32, arg: *mut T) -> Result<usize> {
    sys!(SYS_IOCTL, fd, request, arg)
}

pub fn pipe2(flags: i32) -> Result<[i32; 2]> {
    let mut p = [0i32; 2];
    sys!(SYS_PIPE2, p.as_mut_ptr(), flags)?;
    Ok(p)
}

pub const AF_UNIX: i32 = 1;
pub const SOCK_STREAM: i32 = 1;
pub const SOCK_CLOEXEC: i32 = O_CLOEXEC;

pub fn socket(domain: i32, ty: i32) -> Result<i32> {
    sys!(SYS_SOCKET, domain, ty, 0).map(|fd| fd as i32)
}

pub fn socketpair(domain: i32, ty: i32) -> Result<[i32; 2]> {
    let mut p = [0i32; 2];
    sys!(SYS_SOCKETPAIR, domain, ty, 0, p.as_mut_ptr())?;
    Ok(p)
}

/// `struct sockaddr_un`.
#[repr(C)]
pub struct SockaddrUn {
    pub family: u16,
    pub path: [u8; 108],
}

pub fn connect(fd: i32, addr: &SockaddrUn, len: usize) -> Result<usize> {
    sys!(SYS_CONNECT, fd, addr as *const SockaddrUn, len)
}

/// `struct iovec`.
#[repr(C)]
pub struct Iovec {
    pub base: *const u8,
    pub len: usize,
}

/// `struct msghdr`.
#[repr(C)]
pub struct Msghdr {
    pub name: *mut u8,
    pub namelen: u32,
    pub iov: *const Iovec,
    pub iovlen: usize,
    pub control: *mut u8,
    pub controllen: usize,
    pub flags: i32,
}

pub const MSG_NOSIGNAL: i32 = 0x4000;
pub const MSG_CTRUNC: i32 = 0x8;
pub const MSG_CMSG_CLOEXEC: i32 = 0x4000_0000;
pub const SOL_SOCKET: i32 = 1;
pub const SCM_RIGHTS: i32 = 1;

pub fn sendmsg(fd: i32, msg: &Msghdr, flags: i32) -> Result<usize> {
    sys!(SYS_SENDMSG, fd, msg as *const Msghdr, flags)
}

pub fn recvmsg(fd: i32, msg: &mut Msghdr, flags: i32) -> Result<usize> {
    sys!(SYS_RECVMSG, fd, msg as *mut Msghdr, flags)
}

/// `struct pollfd`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pollfd {
    pub fd: i32,
    pub events: i16,
    pub revents: i16,
}

pub const POLLIN: i16 = 1;

pub fn poll(fds: &mut [Pollfd], timeout_ms: i32) -> Result<usize> {
    sys!(SYS_POLL, fds.as_mut_ptr(), fds.len(), timeout_ms as isize)
}

pub const PROT_READ: usize = 1;
pub const PROT_WRITE: usize = 2;
pub const MAP_PRIVATE: usize = 2;
pub const MAP_ANONYMOUS: usize = 0x20;

/// Fresh zeroed anonymous memory, or `None`.
pub fn mmap(len: usize) -> Option<*mut u8> {
    let p = sys!(SYS_MMAP, 0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1isize, 0).ok()?;
    Some(p as *mut u8)
}

/// The kernel's `struct sigaction` (not libc's: the mask is 8 bytes, and the
/// restorer is ours).
#[repr(C)]
pub struct Sigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

pub const SA_RESTART: u64 = 0x1000_0000;
pub const SA_RESTORER: u64 = 0x0400_0000;
pub const SIG_DFL: usize = 0;
pub const SIG_UNBLOCK: i32 = 1;

extern "C" {
    /// Returns from a signal handler (`rt_sigreturn`): see main.rs.
    fn odfs_restore_rt();
}

pub const SIG_IGN: usize = 1;

/// Install `handler` (or `SIG_DFL`, `SIG_IGN`) for `sig`, with `SA_RESTART`.
pub fn set_handler(sig: i32, handler: usize) {
    let sa = Sigaction { handler, flags: SA_RESTART | SA_RESTORER, restorer: odfs_restore_rt as *const () as usize, mask: 0 };
    let _ = sys!(SYS_RT_SIGACTION, sig, &sa as *const Sigaction, 0, 8);
}

/// The action for `sig` now.
pub fn action(sig: i32) -> Sigaction {
    let mut old = Sigaction { handler: SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    let _ = sys!(SYS_RT_SIGACTION, sig, 0, &mut old as *mut Sigaction, 8);
    old
}

/// Put back an action [`action`] returned.
pub fn restore(sig: i32, old: &Sigaction) {
    let _ = sys!(SYS_RT_SIGACTION, sig, old as *const Sigaction, 0, 8);
}

/// Whether the caller left `sig` ignored.
pub fn ignored(sig: i32) -> bool {
    action(sig).handler == SIG_IGN
}

pub fn unblock(sig: i32) {
    if !(1..=64).contains(&sig) {
        return;
    }
    let set: u64 = 1 << (sig - 1);
    let _ = sys!(SYS_RT_SIGPROCMASK, SIG_UNBLOCK, &set as *const u64, 0, 8);
}

pub fn kill_self(sig: i32) {
    if let Ok(pid) = sys!(SYS_GETPID) {
        let _ = sys!(SYS_KILL, pid, sig);
    }
}

pub fn getpgrp() -> i32 {
    sys!(SYS_GETPGRP).map_or(-1, |p| p as i32)
}

pub const RLIMIT_CORE: i32 = 4;

pub fn set_rlimit_zero(resource: i32) {
    let zero = [0u64; 2];
    let _ = sys!(SYS_SETRLIMIT, resource, zero.as_ptr());
}

/// `CLOCK_MONOTONIC` in ns: the clock of the stage stamps (odfs_wire::stages).
pub fn now_ns() -> u64 {
    let mut ts = [0i64; 2];
    let _ = sys!(SYS_CLOCK_GETTIME, 1, ts.as_mut_ptr());
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

pub fn exit(code: i32) -> ! {
    loop {
        let _ = sys!(SYS_EXIT_GROUP, code);
    }
}

/// An fd the launcher owns, closed when dropped.
pub struct Fd(pub i32);

impl Drop for Fd {
    fn drop(&mut self) {
        close(self.0);
    }
}
