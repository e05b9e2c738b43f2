//! Daemon settings: where things live and how long idle containers stay.

use std::path::PathBuf;

/// Host directories shared with every container at the same path, so the
/// caller's cwd and relative paths work inside.
pub const DEFAULT_SHARED: [&str; 7] = ["/home", "/tmp", "/var/tmp", "/root", "/srv", "/mnt", "/media"];

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub mountpoint: PathBuf,
    pub catalogs: Vec<PathBuf>,
    /// Database directory (`odfs.db`).
    pub state_dir: PathBuf,
    /// Runtime directory: per-container agent sockets.
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    pub launcher: PathBuf,
    pub agent: PathBuf,
    pub shared: Vec<PathBuf>,
    /// Keep-alive policy of images whose catalog entry says `auto`.
    pub policy: crate::policy::Policy,
}

/// Default locations of the helper binaries: next to the running `odfs`
/// (a symlink to it is resolved), as installed in `/usr/local/lib/odfs`.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/odfs").join(name))
}
