//! Arbitrary catalog files: parsed or rejected with file:line errors,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = odfs::catalog::parse_file(std::path::Path::new("/nonexistent/fuzz.toml"), text);
    }
});
