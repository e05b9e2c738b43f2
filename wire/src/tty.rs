//! The caller's terminal settings as the launcher reads them (the kernel's
//! `struct termios`, from `TCGETS`) and as they travel in a [`TtyRequest`]
//! (glibc's `struct termios`, which the agent gives `tcsetattr`), and raw
//! mode as `cfmakeraw` makes it. Layouts of x86_64 and aarch64 Linux.
//!
//! [`TtyRequest`]: crate::TtyRequest

/// Size of the kernel's `struct termios`: four flag words, the line
/// discipline and 19 control characters.
pub const KERNEL_TERMIOS: usize = 36;
/// Size of glibc's: 32 control characters, then input and output speeds.
pub const LIBC_TERMIOS: usize = 60;
const KERNEL_NCCS: usize = 19;
const LIBC_NCCS: usize = 32;

pub type KernelTermios = [u8; KERNEL_TERMIOS];

fn word(t: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]])
}

/// Flag word `i` becomes `f(word)`.
fn update(t: &mut [u8], i: usize, f: impl FnOnce(u32) -> u32) {
    let v = f(word(t, i));
    t[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
}

/// What glibc's `tcgetattr` makes of the kernel's settings: the same flags
/// and characters, the characters the kernel lacks disabled (0), and both
/// speeds taken from the baud bits of `c_cflag`.
pub fn libc_termios(k: &KernelTermios) -> [u8; LIBC_TERMIOS] {
    const CBAUD_CBAUDEX: u32 = 0o010017;
    let mut out = [0u8; LIBC_TERMIOS];
    out[..17].copy_from_slice(&k[..17]);
    out[17..17 + KERNEL_NCCS].copy_from_slice(&k[17..17 + KERNEL_NCCS]);
    let speed = word(k, 2) & CBAUD_CBAUDEX;
    let speeds = 17 + LIBC_NCCS + 3;
    out[speeds..speeds + 4].copy_from_slice(&speed.to_ne_bytes());
    out[speeds + 4..speeds + 8].copy_from_slice(&speed.to_ne_bytes());
    out
}

/// Raw mode, as `cfmakeraw` sets it: no input or output processing, no
/// echo, no line editing, no signals from keys, 8-bit characters, a read
/// returns after one byte.
pub fn make_raw(t: &mut KernelTermios) {
    const IGNBRK: u32 = 0o1;
    const BRKINT: u32 = 0o2;
    const PARMRK: u32 = 0o10;
    const ISTRIP: u32 = 0o40;
    const INLCR: u32 = 0o100;
    const IGNCR: u32 = 0o200;
    const ICRNL: u32 = 0o400;
    const IXON: u32 = 0o2000;
    const OPOST: u32 = 0o1;
    const ISIG: u32 = 0o1;
    const ICANON: u32 = 0o2;
    const ECHO: u32 = 0o10;
    const ECHONL: u32 = 0o100;
    const IEXTEN: u32 = 0o100000;
    const CSIZE: u32 = 0o60;
    const PARENB: u32 = 0o400;
    const CS8: u32 = 0o60;
    const VTIME: usize = 5;
    const VMIN: usize = 6;
    update(t, 0, |w| w & !(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON));
    update(t, 1, |w| w & !OPOST);
    update(t, 2, |w| (w & !(CSIZE | PARENB)) | CS8);
    update(t, 3, |w| w & !(ECHO | ECHONL | ICANON | ISIG | IEXTEN));
    t[17 + VMIN] = 1;
    t[17 + VTIME] = 0;
}
