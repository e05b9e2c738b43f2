//! Logging: `tracing` to stderr (journald captures it under systemd);
//! `ODFS_LOG` sets the filter, e.g. `ODFS_LOG=odfs=debug`.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ODFS_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
