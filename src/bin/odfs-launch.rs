//! `odfs-launch`: the interpreter named in every shim's `#!` line (see `odfs::launcher`).
//!
//! `no_main` on purpose: Rust's runtime start-up would reopen closed stdio fds
//! on /dev/null and ignore SIGPIPE, and the tool must see the caller's fds
//! and signal state exactly as they were.
#![no_main]

#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    odfs::launcher::main(std::env::args_os().collect())
}
