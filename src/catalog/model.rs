//! Catalog entries and the rules they must satisfy.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A validated command name: a single path component a shell can exec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandName(String);

impl CommandName {
    pub fn new(name: &str) -> Result<CommandName, String> {
        validate_name(name)?;
        Ok(CommandName(name.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A command's `path`: absolute, or a bare name searched on the image's
/// PATH (an alias such as `python-venv` running `python -m venv`).
pub fn validate_path(p: &str) -> Result<(), String> {
    if p.starts_with('/') || (!p.contains('/') && validate_name(p).is_ok()) {
        Ok(())
    } else {
        Err(format!("path {p:?} must be absolute or a bare name to search on the image's PATH"))
    }
}

/// Names become directory entries: no `/`, no NUL, not `.` or `..`, at most
/// 255 bytes (NAME_MAX), and nothing invisible or shell-hostile.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > 255 {
        let start: String = name.chars().take(16).collect();
        return Err(format!("name {start:?}… is longer than 255 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("name {name:?} is reserved"));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || c.is_control() || c.is_whitespace()) {
        return Err(format!("name {name:?} contains {c:?}, which a command name cannot hold"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    None,
    Bridge,
    #[default]
    Host,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Bridge => "bridge",
            Network::Host => "host",
        }
    }
}

/// Whose processes (and System V IPC, and host name) a tool sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PidMode {
    /// The host's: `ps`, `kill`, `strace -p` act on the caller's machine.
    Host,
    /// The container's own: its tools see only each other.
    Private,
}

/// Capabilities a tool may hold and still share the host's pid, IPC and
/// UTS namespaces: the network ones, which reach no process, no IPC
/// object, no file and no uid. Any other (KILL, SYS_PTRACE, SETUID,
/// DAC_OVERRIDE, IPC_OWNER, SYS_ADMIN…) would let a tool act on other
/// users' processes there, or read their environments.
const HOST_SAFE_CAPS: [&str; 4] = ["NET_RAW", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST"];

/// Whether tools that run as `user` with `cap_add` may share the host's
/// namespaces (and get a caller stamp for calls of their own): they run as
/// the caller and hold at most [`HOST_SAFE_CAPS`].
pub fn shares_host_namespaces(user: RunAs, cap_add: &[String]) -> bool {
    user == RunAs::Caller && capability_mask(cap_add) & !capability_mask(&HOST_SAFE_CAPS.map(String::from)) == 0
}

/// Whom a tool runs as inside its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunAs {
    /// The caller's own uid, gid and groups (files they create are theirs).
    #[default]
    Caller,
    Root,
}

impl RunAs {
    /// The catalog's spelling (`user = "caller"`), as serde reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunAs::Caller => "caller",
            RunAs::Root => "root",
        }
    }
}

/// How long an idle container stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Chosen by odfs from the command's history.
    Auto,
    Fixed(Duration),
}

impl KeepAlive {
    pub fn parse(s: &str) -> Result<KeepAlive, String> {
        if s == "auto" {
            return Ok(KeepAlive::Auto);
        }
        humantime::parse_duration(s)
            .map(KeepAlive::Fixed)
            .map_err(|e| format!("keep_alive {s:?} is neither \"auto\" nor a duration like \"45s\" or \"10m\": {e}"))
    }
}

/// What one container of an image may use (cgroup limits); `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Bytes of memory, swap included: beyond it the kernel's OOM killer
    /// ends a process of the container.
    pub memory: Option<u64>,
    /// CPUs, in billionths (Docker's NanoCpus).
    pub nano_cpus: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

/// The smallest limits a container can work with: the engine refuses less
/// than 6 MiB, and the agent and a tool need a few processes.
const MIN_MEMORY: u64 = 6 << 20;
const MIN_PIDS: u64 = 8;

impl Limits {
    pub fn parse(memory: Option<&str>, cpus: Option<f64>, pids: Option<u64>) -> Result<Limits, String> {
        let memory = match memory {
            None => None,
            Some(m) => {
                let bytes = parse_size::Config::new()
                    .with_binary()
                    .parse_size(m)
                    .map_err(|e| format!("memory {m:?} is not a size like \"512m\" or \"2g\": {e}"))?;
                if bytes < MIN_MEMORY {
                    return Err(format!("memory {m:?} is below the engine's minimum of 6m"));
                }
                Some(bytes)
            }
        };
        let nano_cpus = match cpus {
            None => None,
            Some(c) if c.is_finite() && c >= 0.01 => Some((c * 1e9).round() as u64),
            Some(c) => return Err(format!("cpus {c} must be a number of CPUs of at least 0.01, like 1.5")),
        };
        if let Some(p) = pids.filter(|&p| p < MIN_PIDS) {
            return Err(format!("pids {p} is below {MIN_PIDS} (the agent and a tool need a few processes)"));
        }
        Ok(Limits { memory, nano_cpus, pids })
    }
}

/// The kernel's number of a capability named as the engine names it
/// (`NET_RAW`, or `CAP_NET_RAW`).
pub fn capability(name: &str) -> Option<u8> {
    let full = if name.starts_with("CAP_") { name.to_string() } else { format!("CAP_{name}") };
    full.parse::<caps::Capability>().ok().map(|c| c.index())
}

/// A set of capabilities as the kernel's bit mask.
pub fn capability_mask(names: &[String]) -> u64 {
    names.iter().filter_map(|n| capability(n)).fold(0, |m, c| m | 1u64 << c)
}

/// Variables that make the dynamic loader, libc or an interpreter load or
/// run other code: never passed to a tool, whatever a catalog entry says
/// (a tool may hold capabilities its caller lacks).
pub fn code_loading_variable(name: &str) -> bool {
    const NAMES: [&str; 24] = [
        "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "MALLOC_CHECK_", "BASH_ENV", "ENV", "SHELLOPTS",
        "BASHOPTS", "PS4", "PERL5LIB", "PERL5OPT", "PERLLIB", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "RUBYLIB", "RUBYOPT",
        "NODE_OPTIONS", "NODE_PATH", "LUA_PATH", "LUA_INIT",
    ];
    name.starts_with("LD_") || name.starts_with("MALLOC_") || name.starts_with("BASH_FUNC_") || name.starts_with("LUA_") || NAMES.contains(&name)
}

/// What a root tool holds besides its image's `cap_add` (a root caller's
/// tool, or any tool of a `user = "root"` image): the engine's default set
/// for a root process in a container. The agent needs a part of it
/// (SETUID, SETGID, CHOWN, KILL, SETPCAP) to start tools as their callers.
pub const ROOT_CAPS: [&str; 14] = [
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT",
    "KILL", "AUDIT_WRITE",
];

impl ImageSpec {
    /// The capabilities (as a mask) a tool of this image holds when `uid`
    /// calls it: its `cap_add`, and when it runs as root the root set too.
    /// A caller's tool holds nothing else, whatever its programs' setuid
    /// bits or file capabilities say.
    pub fn tool_caps(&self, uid: u32) -> u64 {
        let granted = capability_mask(&self.cap_add);
        if self.user == RunAs::Root || uid == 0 {
            granted | capability_mask(&ROOT_CAPS.map(String::from))
        } else {
            granted
        }
    }

    /// Whether its containers join the host's pid, IPC and UTS namespaces:
    /// by default when [`shares_host_namespaces`] (a root tool there could
    /// signal every root process of the machine).
    pub fn host_namespaces(&self) -> bool {
        self.pid != Some(PidMode::Private) && self.shares_host_namespaces()
    }

    /// [`shares_host_namespaces`] for its `user` and `cap_add`.
    pub fn shares_host_namespaces(&self) -> bool {
        shares_host_namespaces(self.user, &self.cap_add)
    }

    /// The capabilities its container holds, by name without `CAP_`: the
    /// root set and `cap_add`; every other one is dropped.
    pub fn container_caps(&self) -> Vec<String> {
        let mut caps: Vec<String> = ROOT_CAPS.iter().map(|c| c.to_string()).collect();
        caps.extend(self.cap_add.iter().map(|c| c.trim_start_matches("CAP_").to_string()));
        caps.sort();
        caps.dedup();
        caps
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub name: String,
    pub reference: String,
    pub network: Network,
    pub user: RunAs,
    pub cap_add: Vec<String>,
    pub keep_alive: KeepAlive,
    /// Freeze the container when idle this long (before its keep-alive ends).
    pub pause_after: Option<Duration>,
    pub allow_groups: Vec<String>,
    pub limits: Limits,
    /// Recipe (a directory with a Dockerfile) to build `reference` from when
    /// it is missing and cannot be pulled.
    pub build: Option<PathBuf>,
    /// On a remote engine: directories of the remote host, at the same paths
    /// as here (a shared or synced tree), mounted into the container; a
    /// caller whose cwd is under one runs there, others in `/`.
    pub remote_dirs: Vec<PathBuf>,
    /// Directories the image writes at run time (its root is read-only):
    /// an empty tmpfs each, gone with the container.
    pub scratch: Vec<PathBuf>,
    /// `pid = "host"|"private"`; unset: [`ImageSpec::host_namespaces`] decides.
    pub pid: Option<PidMode>,
    /// The version of its commands (`version = "1.7"`): they are listed as
    /// `NAME@1.7`, and the bare `NAME` is the catalog's default version.
    pub version: Option<String>,
    /// `default = true`: its version is the bare name's, whatever the others.
    pub default_version: bool,
    /// Its shell completions are served beside the mount (`completions =
    /// false`: its man pages only).
    pub completions: bool,
    /// `gui = true`: its tools get the caller's display and sound (the
    /// variables naming them and their sockets); other images' tools get
    /// neither.
    pub gui: bool,
    /// Host device nodes passed to its containers at the same path (access
    /// decided by their modes and the caller's groups, as natively), or CDI
    /// names (`vendor.com/class=name`) the engine resolves.
    pub devices: Vec<String>,
    /// GPUs asked of the engine's device-request API.
    pub gpus: Option<Gpus>,
    /// What prints its tools' version (`["jq", "--version"]`), run by
    /// `odfs update` in the old and the new image.
    pub version_command: Vec<String>,
    /// `file:line` where it was defined.
    pub origin: String,
    /// For an image of the archive: the package it installs.
    pub package: Option<ArchivePackage>,
}

/// The Debian package an archive image installs (`[archive.debian]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArchivePackage {
    pub suite: String,
    pub name: String,
    /// As the suite's index had it when the image was named.
    pub version: String,
    /// Installed-Size, in KiB.
    pub size_kib: u64,
    /// Bytes of its `.deb`.
    pub download: u64,
    /// The suite's base image, with its apt lists, the package's is built on.
    pub base: String,
    /// The base's only apt source: the line of the suite's archive.
    pub source: String,
}

/// Whether the first call of an archive package not on this machine
/// fetches it (`fetch = "ask" | "auto" | "never"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FetchPolicy {
    /// Ask on the caller's terminal; without one, fetch.
    #[default]
    Ask,
    Auto,
    /// Only what root fetched (`odfs fetch`) runs.
    Never,
}

impl FetchPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchPolicy::Ask => "ask",
            FetchPolicy::Auto => "auto",
            FetchPolicy::Never => "never",
        }
    }
}

/// `[archive.debian]`: every command of Debian's suites, served on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSpec {
    /// The first is the default; the others' commands are `NAME@SUITE`.
    pub suites: Vec<String>,
    /// The archive's URL (`http://deb.debian.org/debian`).
    pub mirror: String,
    /// A suite's own archive, over `mirror` (a site's repository).
    pub mirrors: BTreeMap<String, String>,
    /// Suites taken without checking signatures: local repositories
    /// without a signing key.
    pub trusted: Vec<String>,
    pub fetch: FetchPolicy,
    /// List the default suite's commands in the mount (`list = false`:
    /// lookups still resolve them).
    pub list: bool,
    /// Command → package: an admin's choice over the provider rule.
    pub packages: BTreeMap<String, String>,
    /// Packages one user (root aside) may bring to the machine per hour.
    pub new_per_hour: u32,
    /// What every archive image is: network, keep_alive, limits,
    /// allow_groups; its name, reference and recipe are the package's.
    pub image: ImageSpec,
    /// `file:line` where it was defined.
    pub origin: String,
}

/// GPUs an image asks for (`gpus = "all"`, `gpus = 2`, `gpus = ["0", "GPU-3a…"]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Gpus {
    All,
    Count(u32),
    Ids(Vec<String>),
}

impl Gpus {
    pub fn parse(v: &toml::Value) -> Result<Gpus, String> {
        let bad = || format!("gpus = {v} is neither \"all\", a count like 1, nor a list of GPU ids like [\"0\", \"1\"]");
        match v {
            toml::Value::String(s) if s == "all" => Ok(Gpus::All),
            toml::Value::Integer(n) if *n >= 1 && *n <= 1024 => Ok(Gpus::Count(*n as u32)),
            toml::Value::Array(ids) if !ids.is_empty() => ids
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c)) => Ok(s.clone()),
                    toml::Value::Integer(n) if *n >= 0 => Ok(n.to_string()),
                    _ => Err(bad()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Gpus::Ids),
            _ => Err(bad()),
        }
    }

    /// As the catalog spells it, for messages.
    pub fn describe(&self) -> String {
        match self {
            Gpus::All => "gpus = \"all\"".into(),
            Gpus::Count(n) => format!("gpus = {n}"),
            Gpus::Ids(ids) => format!("gpus = {ids:?}"),
        }
    }
}

/// Whether a `devices` entry names a CDI device (`nvidia.com/gpu=all`)
/// rather than a host node.
pub fn is_cdi_name(dev: &str) -> bool {
    !dev.starts_with('/') && dev.contains('=') && dev.split_once('=').is_some_and(|(kind, _)| kind.contains('/'))
}

/// A `devices` entry: a node under `/dev` named from `/`, or a CDI name.
pub fn validate_device(dev: &str) -> Result<(), String> {
    let node = dev.starts_with("/dev/") && !dev.split('/').any(|c| c == ".." || c == ".") && !dev.contains(':') && dev.len() > 5;
    if node || (is_cdi_name(dev) && !dev.chars().any(|c| c.is_whitespace() || c == ':')) {
        Ok(())
    } else {
        Err(format!("devices entry {dev:?} is neither a device under /dev (like \"/dev/kvm\") nor a CDI name (like \"nvidia.com/gpu=all\")"))
    }
}

/// A version as the catalog may name it: `1.7`, `3.11.4`, `2024-01`,
/// `1.0+git`: what can follow `@` in a file name and a shell word.
pub fn validate_version(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c)) {
        return Err(format!("version {v:?} may only hold letters, digits, '.', '_', '+' and '-' (at most 64)"));
    }
    Ok(())
}

/// The name a command of an image with `version` is listed under.
pub fn versioned(command: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{command}@{v}"),
        None => command.to_string(),
    }
}

/// Versions in their natural order: numbers compared as numbers
/// (`1.10` after `1.9`), anything else as text.
pub fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<String> { s.split(['.', '-', '_', '+']).map(String::from).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub name: CommandName,
    pub image: String,
    /// Absolute path in the image; `None`: first match on the image's PATH.
    pub path: Option<String>,
    /// Fixed leading arguments (busybox-style multiplexers).
    pub args: Vec<String>,
    /// Extra host environment variables passed through to the tool.
    pub env: Vec<String>,
    pub origin: String,
}

impl CommandSpec {
    /// What the agent executes: the path, or the name to look up on PATH.
    pub fn program(&self) -> &str {
        self.path.as_deref().unwrap_or(self.name.as_str())
    }

    /// argv[0] of the tool: the basename of `path` when one is given, so
    /// multiplexers (`path = "/bin/busybox"`, `args = ["tr"]`) see their own
    /// name; otherwise the command name.
    pub fn argv0(&self) -> &str {
        match &self.path {
            Some(p) => p.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(self.name.as_str()),
            None => self.name.as_str(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub images: BTreeMap<String, ImageSpec>,
    pub commands: BTreeMap<String, CommandSpec>,
    pub archive: Option<ArchiveSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_directory_entries_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b", "a b", "tab\t", &"x".repeat(256)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["jq", "python3.11", "g++", "7z", "x".repeat(255).as_str(), "clang-format"] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn versions_sort_by_their_numbers() {
        let mut v = vec!["1.10", "1.9", "1.7.1", "1.7", "2"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, ["1.7", "1.7.1", "1.9", "1.10", "2"]);
        assert!(validate_version("1.7").is_ok() && validate_version("2024-01+git").is_ok());
        for bad in ["", "1 7", "1/7", "a@b", &"9".repeat(65)] {
            assert!(validate_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keep_alive_parses_auto_and_durations() {
        assert_eq!(KeepAlive::parse("auto"), Ok(KeepAlive::Auto));
        assert_eq!(KeepAlive::parse("45s"), Ok(KeepAlive::Fixed(Duration::from_secs(45))));
        assert_eq!(KeepAlive::parse("0s"), Ok(KeepAlive::Fixed(Duration::ZERO)));
        assert_eq!(KeepAlive::parse("10m"), Ok(KeepAlive::Fixed(Duration::from_secs(600))));
        assert!(KeepAlive::parse("forever").is_err());
    }

    #[test]
    fn hostile_names_are_refused_without_panicking() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b", "tab\tname", "new\nline", "\u{7f}del"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(4096)).unwrap_err().contains("longer than 255 bytes"));
        // Multi-byte characters across the cut of the message.
        assert!(validate_name(&"é".repeat(200)).unwrap_err().contains("longer than 255 bytes"));
        assert!(validate_name(&"é".repeat(127)).is_ok());
    }

    #[test]
    fn limits_take_engine_style_sizes_and_refuse_what_cannot_work() {
        let l = Limits::parse(Some("512m"), Some(1.5), Some(64)).unwrap();
        assert_eq!(l, Limits { memory: Some(512 << 20), nano_cpus: Some(1_500_000_000), pids: Some(64) });
        assert_eq!(Limits::parse(Some("2g"), None, None).unwrap().memory, Some(2 << 30));
        assert_eq!(Limits::parse(None, None, None).unwrap(), Limits::default());
        assert!(Limits::parse(Some("1m"), None, None).unwrap_err().contains("minimum"));
        assert!(Limits::parse(Some("lots"), None, None).is_err());
        assert!(Limits::parse(None, Some(0.0), None).is_err());
        assert!(Limits::parse(None, Some(f64::NAN), None).is_err());
        assert!(Limits::parse(None, None, Some(2)).is_err());
    }
}
