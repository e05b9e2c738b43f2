//! Daemon settings: where things live and how long idle containers stay.

use std::path::PathBuf;

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
    /// What tools see of the host beyond the default view (`--share`,
    /// `--hide`, the config file's `[view]`).
    pub view: crate::view::ViewSettings,
    /// Keep-alive policy of images whose catalog entry says `auto`.
    pub policy: crate::policy::Policy,
    pub engine: crate::backend::engine::Engine,
}

/// The config file (`/etc/odfs/odfs.toml`); every table is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub engine: crate::backend::engine::EngineSettings,
    #[serde(default)]
    pub view: crate::view::ViewSettings,
}

/// Where `odfs mount` and `odfs doctor` look for the config file.
pub const DEFAULT_CONFIG: &str = "/etc/odfs/odfs.toml";

impl FileConfig {
    /// Read `path`; the default file may be absent, a named one may not.
    pub fn load(path: Option<&std::path::Path>) -> Result<FileConfig, String> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
            Err(e) => return Err(format!("cannot read the config file {}: {e}", path.display())),
        };
        toml::from_str(&text).map_err(|e| format!("config file {}: {}", path.display(), e.message()))
    }
}

/// The engine for this invocation: `--engine`, the config file, the
/// environment, the local sockets (see [`crate::backend::engine::Engine::resolve`]).
pub fn engine(cli: Option<&str>, config: Option<&std::path::Path>) -> Result<crate::backend::engine::Engine, String> {
    let file = FileConfig::load(config)?;
    crate::backend::engine::Engine::resolve(cli, &file.engine, &crate::backend::engine::EngineEnv::from_process(), |p| p.exists())
}

/// The host view's settings: the config file's `[view]`, with `--share`
/// and `--hide` added.
pub fn view(share: &[PathBuf], hide: &[PathBuf], config: Option<&std::path::Path>) -> Result<crate::view::ViewSettings, String> {
    let mut v = FileConfig::load(config)?.view;
    v.share.extend(share.iter().cloned());
    v.hide.extend(hide.iter().cloned());
    if let Some(p) = v.share.iter().chain(&v.hide).find(|p| !p.is_absolute()) {
        return Err(format!("view path {} is not absolute (name it from /)", p.display()));
    }
    Ok(v)
}

/// Default locations of the helper binaries: next to the running `odfs`
/// (a symlink to it is resolved), as installed in `/usr/local/lib/odfs`.
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/odfs").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_names_the_engine_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odfs.toml");
        std::fs::write(&path, "[engine]\nhost = \"tcp://build1:2376\"\ntls_verify = true\ncert_path = \"/etc/odfs/certs\"\n").unwrap();
        let c = FileConfig::load(Some(&path)).unwrap();
        assert_eq!(c.engine.host.as_deref(), Some("tcp://build1:2376"));
        assert!(c.engine.tls_verify);
        std::fs::write(&path, "[view]\nshare = [\"/etc/ssl/certs\"]\nhide = [\"/data\"]\n").unwrap();
        let c = FileConfig::load(Some(&path)).unwrap();
        assert_eq!((c.view.share, c.view.hide), (vec![PathBuf::from("/etc/ssl/certs")], vec![PathBuf::from("/data")]));
        std::fs::write(&path, "[engine]\nhots = \"x\"\n").unwrap();
        let e = FileConfig::load(Some(&path)).unwrap_err();
        assert!(e.contains("odfs.toml") && e.contains("hots"), "{e}");
        assert!(FileConfig::load(Some(&dir.path().join("absent.toml"))).is_err(), "a named file must exist");
    }
}
