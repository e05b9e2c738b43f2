//! Links the launcher as a static executable with its own `_start` and no
//! C library: glibc's start-up alone costs a warm call more than the rest of
//! the launcher (see docs/performance.md).
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
