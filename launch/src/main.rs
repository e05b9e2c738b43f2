//! `odfs-launch`: the interpreter named in every shim's `#!` line, run on
//! every call. No std and no libc: the process starts at our own `_start`,
//! so nothing runs before the call (glibc's start-up alone took longer
//! than the rest of the launcher), no fd is reopened and no signal's
//! disposition changes: the tool sees the caller's fds and signal state
//! exactly as they were. See `call` for what it does.
#![no_std]
#![no_main]

extern crate alloc;

mod call;
mod frame;
mod sys;
mod tty;

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

// The kernel starts the process here with the stack pointer at argc, then
// argv, a NULL, the environment and a NULL; the ABI wants it 16-byte
// aligned at a call. `odfs_restore_rt` ends every signal handler (the
// kernel's sa_restorer).
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    ".globl odfs_restore_rt",
    "odfs_restore_rt:",
    "mov eax, {sigreturn}",
    "syscall",
    "ud2",
    entry = sym entry,
    sigreturn = const sys::SYS_RT_SIGRETURN,
);

/// # Safety
/// Called once, from `_start`, with the kernel's initial stack.
unsafe extern "C" fn entry(stack: *const usize) -> ! {
    let argc = *stack;
    let argv = stack.add(1).cast::<*const u8>();
    let envp = argv.add(argc + 1);
    let args: alloc::vec::Vec<&[u8]> = (0..argc).map(|i| c_bytes(*argv.add(i))).collect();
    let mut env = alloc::vec::Vec::new();
    let mut e = envp;
    while !(*e).is_null() {
        env.push(c_bytes(*e));
        e = e.add(1);
    }
    call::main(&args, &env)
}

/// The bytes of a NUL-terminated string the kernel put on the stack.
unsafe fn c_bytes<'a>(p: *const u8) -> &'a [u8] {
    core::slice::from_raw_parts(p, strlen(p))
}

// What compiled code calls without a C library to provide it. In assembly:
// a loop in Rust could be compiled back into a call to itself. Forward
// `rep movsb` and `rep stosb` are the fast copies of current x86_64 CPUs.
core::arch::global_asm!(
    ".globl memcpy",
    "memcpy:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "rep movsb",
    "ret",
    ".globl memmove",
    "memmove:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "cmp rdi, rsi",
    "jbe 2f",
    // Destination above the source: copy backwards, from the last byte.
    "lea rsi, [rsi + rdx - 1]",
    "lea rdi, [rdi + rdx - 1]",
    "std",
    "rep movsb",
    "cld",
    "ret",
    "2:",
    "rep movsb",
    "ret",
    ".globl memset",
    "memset:",
    "mov r8, rdi",
    "mov eax, esi",
    "mov rcx, rdx",
    "rep stosb",
    "mov rax, r8",
    "ret",
);

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        let (x, y) = (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i)));
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

#[no_mangle]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    while core::ptr::read_volatile(s.add(n)) != 0 {
        n += 1;
    }
    n
}

/// Named by the unwind tables and landing pads of the precompiled `core`
/// and `alloc`; never reached, since a panic here aborts (the `launch`
/// profile).
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    sys::exit(odfs_wire::EXIT_ODFS_ERROR)
}

/// A line on the stack: the panic handler must not allocate (the panic
/// may be an allocation failing). Longer text is cut.
struct Line {
    bytes: [u8; 512],
    len: usize,
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    tty::restore_on_panic();
    let mut line = Line { bytes: [0; 512], len: 0 };
    let _ = write!(line, "odfs-launch: internal error ({info}); please report it");
    let end = line.len.min(line.bytes.len() - 1);
    line.bytes[end] = b'\n';
    sys::write_all(2, &line.bytes[..=end]);
    sys::exit(odfs_wire::EXIT_ODFS_ERROR)
}

/// A bump allocator on anonymous memory: the launcher lives for one call
/// and allocates little (the request, a few frames), so memory is taken
/// in 256 KiB chunks and only the latest allocation is ever given back or
/// grown in place.
struct Bump;

static NEXT: AtomicUsize = AtomicUsize::new(0);
static END: AtomicUsize = AtomicUsize::new(0);
const CHUNK: usize = 256 << 10;

unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align();
        let mut start = (NEXT.load(Ordering::Relaxed) + align - 1) & !(align - 1);
        if start == 0 || start + layout.size() > END.load(Ordering::Relaxed) {
            let len = (layout.size() + align).max(CHUNK).next_multiple_of(4096);
            let Some(p) = sys::mmap(len) else { return core::ptr::null_mut() };
            start = (p as usize + align - 1) & !(align - 1);
            END.store(p as usize + len, Ordering::Relaxed);
        }
        NEXT.store(start + layout.size(), Ordering::Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if p as usize + layout.size() == NEXT.load(Ordering::Relaxed) {
            NEXT.store(p as usize, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let next = NEXT.load(Ordering::Relaxed);
        if p as usize + layout.size() == next && p as usize + new_size <= END.load(Ordering::Relaxed) {
            NEXT.store(p as usize + new_size, Ordering::Relaxed);
            return p;
        }
        let q = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !q.is_null() {
            core::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Bump = Bump;
