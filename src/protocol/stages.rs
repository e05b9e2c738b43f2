//! Stage stamps of one call (see `odfs_wire::stages`, re-exported here), and
//! the clock they are taken on.

pub use odfs_wire::stages::*;

/// Now on `CLOCK_MONOTONIC`, in ns.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_moves_forward() {
        let a = super::now_ns();
        assert!(a > 0 && a <= super::now_ns());
    }
}
