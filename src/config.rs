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
    /// What idle containers may hold (`[idle]`).
    pub idle: crate::policy::cache::IdleConfig,
    /// Where the man pages and completions are served (`--share-dir`;
    /// default: `share` beside a mountpoint named `bin`).
    pub share_dir: Option<PathBuf>,
    /// What `odfs gc` (and the daemon's hourly run) keeps (`[gc]`).
    pub gc: GcSettings,
}

/// The config file (`/etc/odfs/odfs.toml`); every table is optional.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub engine: crate::backend::engine::EngineSettings,
    #[serde(default)]
    pub view: crate::view::ViewSettings,
    #[serde(default)]
    pub idle: IdleSettings,
    #[serde(default)]
    pub gc: GcFile,
}

/// `[gc]` as written: durations and sizes as text.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcFile {
    /// Remove an image unused this long ("30d").
    pub image_max_age: Option<String>,
    /// Keep the images odfs manages under this ("20GiB").
    pub image_budget: Option<String>,
    /// Free space the engine's data root should keep ("5GiB", or "10%").
    pub min_free: Option<String>,
    /// Run every this long in the daemon ("1h"; "0s": only on `odfs gc`).
    pub every: Option<String>,
}

/// How much of the disk free space must stay, at least.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    /// A share of the file system's size.
    Share(f64),
}

impl MinFree {
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(b) => b,
            MinFree::Share(s) => (total as f64 * s) as u64,
        }
    }
}

/// `[gc]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GcSettings {
    /// Seconds an image may go unused (default 30 days).
    pub max_age_s: u64,
    /// Bytes the managed images may hold together (default: no budget).
    pub budget: Option<u64>,
    pub min_free: MinFree,
    /// Seconds between the daemon's own runs (0: never).
    pub every_s: u64,
}

impl Default for GcSettings {
    fn default() -> GcSettings {
        GcSettings { max_age_s: 30 * 86_400, budget: None, min_free: MinFree::Share(0.10), every_s: 3600 }
    }
}

/// A size as the config file and flags write it ("20GiB", "512m").
pub fn parse_bytes(what: &str, text: &str) -> Result<u64, String> {
    parse_size::Config::new().with_binary().parse_size(text.trim()).map_err(|e| format!("{what} {text:?}: {e} (a size like 20GiB or 512m)"))
}

/// A duration as the config file and flags write it ("30d", "0s").
pub fn parse_secs(what: &str, text: &str) -> Result<u64, String> {
    humantime::parse_duration(text.trim()).map(|d| d.as_secs()).map_err(|e| format!("{what} {text:?}: {e} (a duration like 30d or 12h)"))
}

impl GcFile {
    pub fn resolve(&self) -> Result<GcSettings, String> {
        let d = GcSettings::default();
        let min_free = match self.min_free.as_deref().map(str::trim) {
            None => d.min_free,
            Some(p) if p.ends_with('%') => {
                let share: f64 = p.trim_end_matches('%').trim().parse().map_err(|_| format!("[gc] min_free {p:?} is not a percentage like 10%"))?;
                if !(0.0..=90.0).contains(&share) {
                    return Err(format!("[gc] min_free {p:?} must be between 0% and 90%"));
                }
                MinFree::Share(share / 100.0)
            }
            Some(b) => MinFree::Bytes(parse_bytes("[gc] min_free", b)?),
        };
        Ok(GcSettings {
            max_age_s: self.image_max_age.as_deref().map(|a| parse_secs("[gc] image_max_age", a)).transpose()?.unwrap_or(d.max_age_s),
            budget: self.image_budget.as_deref().map(|b| parse_bytes("[gc] image_budget", b)).transpose()?,
            min_free,
            every_s: self.every.as_deref().map(|e| parse_secs("[gc] every", e)).transpose()?.unwrap_or(d.every_s),
        })
    }
}

/// The gc settings of the config file.
pub fn gc(config: Option<&std::path::Path>) -> Result<GcSettings, String> {
    FileConfig::load(config)?.gc.resolve()
}

/// `[idle]`: what idle containers may hold (see `policy::cache`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleSettings {
    /// At most this many idle containers.
    pub max_idle: Option<usize>,
    /// At most this much memory in idle containers ("512m", "1GiB"; "0"
    /// for no memory limit). Default: the smaller of 512 MiB and 5% of RAM.
    pub memory: Option<String>,
    /// Remove an idle container after this anyway ("2h"). Default: never
    /// by the clock alone.
    pub max_age: Option<String>,
    /// Read memory pressure from this file (PSI format) instead of
    /// `/proc/pressure/memory` and `MemAvailable`.
    pub pressure_file: Option<PathBuf>,
    /// `some avg10` percentage from which idle containers are shed (10).
    pub pressure_avg10: Option<f64>,
}

impl IdleSettings {
    /// The daemon's idle settings; `mem_total` in bytes sets the default budget.
    pub fn resolve(&self, mem_total: u64) -> Result<crate::policy::cache::IdleConfig, String> {
        let memory = match self.memory.as_deref().map(str::trim) {
            None => Some(crate::policy::cache::default_memory(mem_total)),
            Some(m) => Some(
                parse_size::Config::new()
                    .with_binary()
                    .parse_size(m)
                    .map_err(|e| format!("[idle] memory {m:?}: {e} (a size like 512m or 1GiB)"))?,
            )
            // Any spelling of 0: no memory limit.
            .filter(|&b| b > 0),
        };
        let max_age = match &self.max_age {
            None => None,
            Some(a) => Some(
                crate::policy::humantime_secs(a).filter(|s| *s > 0.0).ok_or_else(|| format!("[idle] max_age {a:?} is not a duration like 2h"))?,
            ),
        };
        Ok(crate::policy::cache::IdleConfig {
            budget: crate::policy::cache::Budget { max_idle: self.max_idle, memory },
            max_age,
            pressure_file: self.pressure_file.clone(),
            pressure_avg10: self.pressure_avg10.unwrap_or(crate::policy::cache::PRESSURE_AVG10),
        })
    }
}

/// The machine's RAM in bytes (`MemTotal`), or 0.
pub fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()).map_or(0, |kb| kb * 1024)
}

/// `MemAvailable` and `MemTotal` in bytes.
pub fn mem_available() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()).map(|kb| kb * 1024)
    };
    Some((field("MemAvailable:")?, field("MemTotal:")?))
}

/// The idle settings of the config file.
pub fn idle(config: Option<&std::path::Path>) -> Result<crate::policy::cache::IdleConfig, String> {
    FileConfig::load(config)?.idle.resolve(mem_total())
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

    #[test]
    fn gc_settings_take_durations_sizes_and_shares() {
        let g = GcFile { image_max_age: Some("7d".into()), image_budget: Some("20GiB".into()), min_free: Some("15%".into()), every: None };
        let g = g.resolve().unwrap();
        assert_eq!((g.max_age_s, g.budget, g.every_s), (7 * 86_400, Some(20 << 30), 3600));
        assert_eq!(g.min_free.bytes(1000), 150);
        assert_eq!(GcFile::default().resolve().unwrap(), GcSettings::default());
        assert_eq!(GcFile { min_free: Some("2g".into()), ..Default::default() }.resolve().unwrap().min_free, MinFree::Bytes(2 << 30));
        for bad in [GcFile { image_max_age: Some("soon".into()), ..Default::default() }, GcFile { min_free: Some("95%".into()), ..Default::default() }] {
            assert!(bad.resolve().is_err());
        }
    }
}
