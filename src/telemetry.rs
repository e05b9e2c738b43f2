//! Logging: `tracing` to stderr (journald captures it under systemd);
//! `ODFS_LOG` sets the filter, e.g. `ODFS_LOG=odfs=debug`.

use std::io::IsTerminal;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ODFS_LOG").unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal: a log file or the journal
    // gets plain `key=value` text that grep finds.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
