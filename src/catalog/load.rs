//! Reading catalog TOML files: every error carries `file:line`, a bad file is
//! skipped as a whole, and the good files keep serving. A directory or file
//! that cannot be read at all fails the whole load ([`Unreadable`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::model::{
    validate_name, validate_path, ArchiveSpec, Catalog, CommandName, CommandSpec, FetchPolicy, ImageSpec, KeepAlive, Limits, Network, PidMode, RunAs,
};

/// One problem in one catalog file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// A catalog directory or file that could not be read (out of file
/// descriptors, an I/O error, no permission): unlike a bad file, it says
/// nothing of what it holds, so a catalog loaded without it would silently
/// lose its commands. Whoever loads keeps what it served before.
#[derive(Debug)]
pub struct Unreadable {
    pub path: PathBuf,
    pub directory: bool,
    pub error: std::io::Error,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.directory { "directory" } else { "file" };
        write!(f, "cannot read catalog {what} {}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for Unreadable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The `*.toml` files of one catalog directory, by name.
pub fn catalog_files(dir: &Path) -> Result<Vec<PathBuf>, Unreadable> {
    let unreadable = |error| Unreadable { path: dir.to_path_buf(), directory: true, error };
    let mut files = Vec::new();
    // An entry that fails to come is as bad as the directory failing: the
    // listing would be missing files.
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().is_some_and(|x| x == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    image: BTreeMap<String, Spanned<RawImage>>,
    #[serde(default)]
    command: BTreeMap<String, Spanned<RawCommand>>,
    #[serde(default)]
    archive: BTreeMap<String, Spanned<RawArchive>>,
}

/// `[archive.debian]`: the archive's own keys, then the image keys that
/// apply to every package's image.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArchive {
    #[serde(default = "bookworm")]
    suites: Vec<String>,
    #[serde(default = "debian_mirror")]
    mirror: String,
    /// Suite → its own archive, over `mirror`.
    #[serde(default)]
    mirrors: BTreeMap<String, String>,
    /// Suites whose archive has no signing key (a local repository).
    #[serde(default)]
    trusted: Vec<String>,
    #[serde(default)]
    fetch: FetchPolicy,
    #[serde(default = "yes")]
    list: bool,
    /// Command → package, over the provider rule.
    #[serde(default)]
    packages: BTreeMap<String, String>,
    #[serde(default = "twenty")]
    new_packages_per_hour: u32,
    #[serde(default)]
    network: Network,
    #[serde(default = "auto")]
    keep_alive: String,
    pause_after: Option<String>,
    #[serde(default)]
    allow_groups: Vec<String>,
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<u64>,
    #[serde(default = "yes")]
    completions: bool,
}

fn bookworm() -> Vec<String> {
    vec!["bookworm".into()]
}

fn debian_mirror() -> String {
    crate::archive::source::Source::new("bookworm").mirror
}

fn twenty() -> u32 {
    20
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    network: Network,
    #[serde(default)]
    user: RunAs,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default = "auto")]
    keep_alive: String,
    pause_after: Option<String>,
    #[serde(default)]
    allow_groups: Vec<String>,
    /// A directory with a Dockerfile, relative to this file's directory.
    build: Option<String>,
    /// Directories that exist at the same paths on a remote engine's host.
    #[serde(default)]
    remote_dirs: Vec<String>,
    /// Directories of the image it writes at run time: empty tmpfs mounts.
    #[serde(default)]
    scratch: Vec<String>,
    /// Whose processes its tools see: "host" (the default) or "private".
    pid: Option<PidMode>,
    memory: Option<String>,
    cpus: Option<f64>,
    pids: Option<u64>,
    /// Its commands' version: listed as NAME@VERSION too.
    version: Option<String>,
    /// Its version is the bare names' default.
    #[serde(default)]
    default: bool,
    /// Serve its shell completions (scripts users' shells run on the host).
    #[serde(default = "yes")]
    completions: bool,
    /// A graphical image: its tools get the caller's display and sound.
    #[serde(default)]
    gui: bool,
    /// Host device nodes (or CDI names) passed to its containers.
    #[serde(default)]
    devices: Vec<String>,
    /// GPUs asked of the engine: "all", a count, or a list of ids.
    gpus: Option<toml::Value>,
    /// A command line printing its tools' version (`odfs update` shows it).
    #[serde(default)]
    version_command: Vec<String>,
    #[serde(default)]
    commands: Vec<String>,
}

fn auto() -> String {
    "auto".into()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    image: String,
    path: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Parse and check one file on its own. Any error rejects the whole file, so
/// a half-understood file never serves.
pub fn parse_file(file: &Path, text: &str) -> Result<Catalog, Vec<CatalogError>> {
    let err = |line: usize, message: String| CatalogError { file: file.to_path_buf(), line, message };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        vec![err(line, e.message().trim().to_string())]
    })?;
    let mut errors = Vec::new();
    let mut catalog = Catalog::default();
    // This file's images' versions: its commands of a versioned image are
    // that version's.
    let mut versions: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (name, spanned) in raw.image {
        let line = line_of(text, spanned.span().start);
        let origin = format!("{}:{line}", file.display());
        let mut img = spanned.into_inner();
        let commands = std::mem::take(&mut img.commands);
        let version = img.version.clone();
        let mut said = Vec::new();
        let spec = image_spec(&name, img, file, origin.clone(), &mut said);
        errors.extend(said.into_iter().map(|m| err(line, m)));
        let Some(spec) = spec else { continue };
        for cmd in &commands {
            match CommandName::new(cmd) {
                Ok(cname) => {
                    catalog.commands.insert(
                        super::model::versioned(cmd, version.as_deref()),
                        CommandSpec { name: cname, image: name.clone(), path: None, args: vec![], env: vec![], origin: origin.clone() },
                    );
                }
                Err(e) => errors.push(err(line, format!("image {name}: command {e}"))),
            }
        }
        versions.insert(name.clone(), version);
        catalog.images.insert(name, spec);
    }
    for (name, spanned) in raw.command {
        let line = line_of(text, spanned.span().start);
        let mut said = Vec::new();
        let entry = command_spec(&name, spanned.into_inner(), &versions, format!("{}:{line}", file.display()), &mut said);
        errors.extend(said.into_iter().map(|m| err(line, m)));
        if let Some((key, spec)) = entry {
            catalog.commands.insert(key, spec);
        }
    }
    for (name, spanned) in raw.archive {
        let line = line_of(text, spanned.span().start);
        let mut said = Vec::new();
        catalog.archive = archive_spec(&name, spanned.into_inner(), file, format!("{}:{line}", file.display()), &mut said);
        errors.extend(said.into_iter().map(|m| err(line, m)));
    }
    if errors.is_empty() {
        Ok(catalog)
    } else {
        Err(errors)
    }
}

/// One `[image.NAME]` section checked, its problems said in `errors`;
/// `None` when it cannot even be read as an image.
fn image_spec(name: &str, img: RawImage, file: &Path, origin: String, errors: &mut Vec<String>) -> Option<ImageSpec> {
    if let Err(e) = validate_name(name) {
        errors.push(format!("image {e}"));
        return None;
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        errors.push(format!("image name {name:?} may only hold letters, digits, '-', '_' and '.'"));
        return None;
    }
    let mut said = |e: String| errors.push(format!("image {name}: {e}"));
    if img.reference.trim().is_empty() {
        said("`ref` is empty".into());
    }
    let keep_alive = KeepAlive::parse(&img.keep_alive).map_err(|e| said(e.to_string())).ok()?;
    let pause_after = match img.pause_after.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            said(format!("pause_after is not a duration like \"30s\": {e}"));
            return None;
        }
    };
    let limits = Limits::parse(img.memory.as_deref(), img.cpus, img.pids).map_err(|e| said(e.to_string())).ok()?;
    // The recipe is checked now, so a typo shows at load, not at the
    // first call on a machine without the image.
    let build = img.build.as_deref().map(|b| file.parent().unwrap_or(Path::new(".")).join(b));
    if let Some(dir) = &build {
        if !dir.join("Dockerfile").is_file() {
            said(format!("build recipe {} has no Dockerfile", dir.display()));
        }
    }
    let mut absolute = |key: &str, dirs: &[String]| -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in dirs {
            if dir.starts_with('/') && dir != "/" && !dir.split('/').any(|c| c == "..") {
                out.push(PathBuf::from(dir));
            } else {
                said(format!("{key} entry {dir:?} is not an absolute path below /"));
            }
        }
        out
    };
    let remote_dirs = absolute("remote_dirs", &img.remote_dirs);
    let scratch = absolute("scratch", &img.scratch);
    check_privileges(&img, &mut said);
    if let Some(v) = &img.version {
        if let Err(e) = super::model::validate_version(v) {
            said(e.to_string());
        }
    } else if img.default {
        said("default = true needs a version (the default of which versions?)".into());
    }
    for dev in &img.devices {
        if let Err(e) = super::model::validate_device(dev) {
            said(e.to_string());
        }
    }
    let gpus = img.gpus.as_ref().map(super::model::Gpus::parse).transpose().map_err(|e| said(e.to_string())).ok()?;
    Some(ImageSpec {
        name: name.to_string(),
        reference: img.reference,
        network: img.network,
        user: img.user,
        cap_add: img.cap_add,
        keep_alive,
        pause_after,
        allow_groups: img.allow_groups,
        limits,
        build,
        remote_dirs,
        scratch,
        pid: img.pid,
        version: img.version,
        default_version: img.default,
        completions: img.completions,
        gui: img.gui,
        devices: img.devices,
        gpus,
        version_command: img.version_command,
        origin,
        package: None,
    })
}

/// The `[archive.NAME]` section checked (only `debian` is known), its
/// problems said in `errors`.
fn archive_spec(name: &str, raw: RawArchive, file: &Path, origin: String, errors: &mut Vec<String>) -> Option<ArchiveSpec> {
    if name != "debian" {
        errors.push(format!("archive {name:?} is not known (the one archive is [archive.debian])"));
        return None;
    }
    let before = errors.len();
    if raw.suites.is_empty() {
        errors.push("archive debian: suites is empty (name at least one, like [\"bookworm\"])".into());
    }
    for suite in raw.suites.iter().filter(|s| s.chars().any(|c| c.is_ascii_uppercase())) {
        errors.push(format!("archive debian: suite {suite:?} must be lower case, as Debian names its suites"));
    }
    for suite in &raw.suites {
        let mirror = raw.mirrors.get(suite).unwrap_or(&raw.mirror).clone();
        let source = crate::archive::source::Source { mirror, ..crate::archive::source::Source::new(suite) };
        if let Err(e) = source.validate() {
            errors.push(format!("archive debian: {e}"));
        }
    }
    for suite in raw.mirrors.keys().chain(&raw.trusted).filter(|s| !raw.suites.contains(s)) {
        errors.push(format!("archive debian: {suite:?} in mirrors or trusted is not one of the suites"));
    }
    // Unsigned is for a repository of the site's own, never Debian's.
    for suite in raw.trusted.iter().filter(|s| !raw.mirrors.contains_key(*s)) {
        errors.push(format!("archive debian: trusted suite {suite:?} has no mirrors entry of its own: only a local repository without a signing key may be trusted, never the archive's mirror"));
    }
    // Credentials in a URL would be shown to every user (odfs status).
    for mirror in raw.mirrors.values().chain(std::iter::once(&raw.mirror)).filter(|m| m.contains('@')) {
        errors.push(format!("archive debian: mirror {mirror:?} holds credentials: put them in apt's auth.conf of the base image instead"));
    }
    for (command, package) in &raw.packages {
        let package_ok = !package.is_empty() && package.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if validate_name(command).is_err() || !package_ok {
            errors.push(format!("archive debian: packages entry {command:?} = {package:?} is not a command name and a Debian package name"));
        }
    }
    // The image keys are an image's: checked as one.
    let image = RawImage {
        reference: "odfs-archive".into(),
        network: raw.network,
        user: RunAs::Caller,
        cap_add: vec![],
        keep_alive: raw.keep_alive,
        pause_after: raw.pause_after,
        allow_groups: raw.allow_groups,
        build: None,
        remote_dirs: vec![],
        scratch: vec![],
        pid: None,
        memory: raw.memory,
        cpus: raw.cpus,
        pids: raw.pids,
        version: None,
        default: false,
        completions: raw.completions,
        gui: false,
        devices: vec![],
        gpus: None,
        version_command: vec![],
        commands: vec![],
    };
    let mut said = Vec::new();
    let image = image_spec("archive", image, file, origin.clone(), &mut said);
    errors.extend(said.into_iter().map(|m| m.replacen("image archive", "archive debian", 1)));
    let image = image.filter(|_| errors.len() == before)?;
    Some(ArchiveSpec {
        suites: raw.suites,
        mirror: raw.mirror,
        mirrors: raw.mirrors,
        trusted: raw.trusted,
        fetch: raw.fetch,
        list: raw.list,
        packages: raw.packages,
        new_per_hour: raw.new_packages_per_hour,
        image,
        origin,
    })
}

/// What an image may give its callers beyond their own privileges: only
/// what the catalog says, and never what reaches other users.
fn check_privileges(img: &RawImage, said: &mut impl FnMut(String)) {
    for cap in &img.cap_add {
        if super::model::capability(cap).is_none() {
            said(format!("capability {cap:?} is not a Linux capability name like NET_RAW"));
        }
    }
    if img.user == RunAs::Root && img.allow_groups.is_empty() {
        said("user = \"root\" gives every caller root in its container (and as root in every host directory it sees): name the groups that may have it in allow_groups, or grant capabilities with cap_add to tools that run as the caller".into());
    }
    if img.pid == Some(PidMode::Host) && !super::model::shares_host_namespaces(img.user, &img.cap_add) {
        said("pid = \"host\" with user = \"root\" or a capability other than NET_RAW, NET_ADMIN, NET_BIND_SERVICE, NET_BROADCAST would let its tools act on other users' processes on the host: remove pid (such images get namespaces of their own)".into());
    }
}

/// One `[command.NAME]` section checked, its problems said in `errors`:
/// the name it is listed under and what it runs. `versions`: this file's
/// images' versions (an image of another file is checked once all are
/// loaded).
fn command_spec(name: &str, cmd: RawCommand, versions: &BTreeMap<String, Option<String>>, origin: String, errors: &mut Vec<String>) -> Option<(String, CommandSpec)> {
    // `[command."jq@1.6"]` names its version; `[command.jq]` of an
    // image of this file with a version is that version's.
    let (base, named) = match name.split_once('@') {
        Some((b, v)) => (b.to_string(), Some(v.to_string())),
        None => (name.to_string(), None),
    };
    let cname = match CommandName::new(&base) {
        Ok(n) => n,
        Err(e) => {
            errors.push(format!("command {e}"));
            return None;
        }
    };
    let key = match (named, versions.get(&cmd.image)) {
        (Some(v), Some(image_v)) if image_v.as_deref() != Some(v.as_str()) => {
            errors.push(format!("command {name}: image {} is not version {v}", cmd.image));
            return None;
        }
        (Some(_), _) => name.to_string(),
        (None, v) => super::model::versioned(&base, v.cloned().flatten().as_deref()),
    };
    if let Some(Err(e)) = cmd.path.as_deref().map(validate_path) {
        errors.push(format!("command {name}: {e}"));
    }
    for var in &cmd.env {
        if var.is_empty() || var.contains('=') {
            errors.push(format!("command {name}: env entry {var:?} must be a variable name"));
        } else if super::model::code_loading_variable(var) {
            errors.push(format!("command {name}: env entry {var} makes the loader or an interpreter run other code and is never passed"));
        }
    }
    Some((key, CommandSpec { name: cname, image: cmd.image, path: cmd.path, args: cmd.args, env: cmd.env, origin }))
}

/// Load every `*.toml` file of every directory, in directory order then file
/// name order. Later definitions of an image or command already defined are
/// reported and ignored; commands whose image is unknown are reported and left
/// out. A directory or file that cannot be read is an error of the whole load.
pub fn load_dirs(dirs: &[PathBuf]) -> Result<(Catalog, Vec<CatalogError>), Unreadable> {
    let mut catalog = Catalog::default();
    let mut errors = Vec::new();
    for dir in dirs {
        for file in catalog_files(dir)? {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                // What the file is, not whether it can be read: gone since
                // the listing (removed), a directory, or not UTF-8. Skipped
                // like a file with a bad line.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory | std::io::ErrorKind::InvalidData) => {
                    errors.push(CatalogError { file, line: 0, message: format!("cannot read: {e}") });
                    continue;
                }
                Err(error) => return Err(Unreadable { path: file, directory: false, error }),
            };
            match parse_file(&file, &text) {
                Ok(part) => merge(&mut catalog, part, &mut errors),
                Err(mut errs) => errors.append(&mut errs),
            }
        }
    }
    let unknown: Vec<String> =
        catalog.commands.iter().filter(|(_, c)| !catalog.images.contains_key(&c.image)).map(|(n, _)| n.clone()).collect();
    for name in unknown {
        let cmd = catalog.commands.remove(&name).expect("listed above");
        errors.push(located(&cmd.origin, format!("command {name}: unknown image {:?}", cmd.image)));
    }
    // `NAME@V` only for an image of version V.
    let wrong: Vec<String> = catalog
        .commands
        .iter()
        .filter(|(key, c)| key.split_once('@').is_some_and(|(_, v)| catalog.images[&c.image].version.as_deref() != Some(v)))
        .map(|(n, _)| n.clone())
        .collect();
    for name in wrong {
        let cmd = catalog.commands.remove(&name).expect("listed above");
        errors.push(located(&cmd.origin, format!("command {name}: image {} is not that version", cmd.image)));
    }
    Ok((catalog, errors))
}

fn located(origin: &str, message: String) -> CatalogError {
    let (file, line) = origin.rsplit_once(':').unwrap_or((origin, "0"));
    CatalogError { file: PathBuf::from(file), line: line.parse().unwrap_or(0), message }
}

fn merge(into: &mut Catalog, part: Catalog, errors: &mut Vec<CatalogError>) {
    match (&into.archive, part.archive) {
        (Some(first), Some(again)) => errors.push(located(&again.origin, format!("archive debian is already defined at {}; ignored", first.origin))),
        (None, again) => into.archive = again,
        (Some(_), None) => {}
    }
    for (name, img) in part.images {
        if let Some(first) = into.images.get(&name) {
            errors.push(located(&img.origin, format!("image {name} is already defined at {}; ignored", first.origin)));
        } else {
            into.images.insert(name, img);
        }
    }
    for (name, cmd) in part.commands {
        if let Some(first) = into.commands.get(&name) {
            // An explicit [command.X] refines the same file's `commands = [..]` shorthand.
            if first.origin.rsplit_once(':').map(|x| x.0) == cmd.origin.rsplit_once(':').map(|x| x.0) {
                into.commands.insert(name, cmd);
            } else {
                errors.push(located(&cmd.origin, format!("command {name} is already defined at {}; ignored", first.origin)));
            }
        } else {
            into.commands.insert(name, cmd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[image.busybox]
ref = "odfs-test/busybox:latest"
network = "none"
keep_alive = "45s"
commands = ["sh", "cat", "ls"]

[command.jq]
image = "busybox"
path = "/usr/bin/jq"
env = ["JQ_COLORS"]
"#;

    #[test]
    fn root_needs_allow_groups_and_code_loading_variables_never_pass() {
        let root = "[image.r]\nref = \"x\"\nuser = \"root\"\ncommands = [\"sh\"]\n";
        let errors = parse_file(Path::new("r.toml"), root).unwrap_err();
        assert!(errors.iter().any(|e| e.to_string().contains("allow_groups")), "{errors:?}");
        assert!(parse_file(Path::new("r.toml"), &format!("{root}allow_groups = [\"wheel\"]\n")).is_ok());
        for var in ["GCONV_PATH", "GLIBC_TUNABLES", "BASH_ENV", "LD_PRELOAD", "PYTHONPATH", "BASH_FUNC_x%%"] {
            let text = format!("[image.b]\nref = \"x\"\n[command.c]\nimage = \"b\"\nenv = [\"{var}\"]\n");
            assert!(parse_file(Path::new("e.toml"), &text).is_err(), "{var} accepted");
        }
        let caps = "[image.c]\nref = \"x\"\ncap_add = [\"NET_RAW\", \"CAP_NET_ADMIN\"]\n";
        assert_eq!(parse_file(Path::new("c.toml"), caps).unwrap().images["c"].tool_caps(1000), 0x3000);
        assert!(parse_file(Path::new("c.toml"), &caps.replace("NET_RAW", "NET_RAWR")).is_err());
    }

    #[test]
    fn a_good_file_gives_images_and_commands() {
        let c = parse_file(Path::new("a.toml"), GOOD).unwrap();
        let img = &c.images["busybox"];
        assert_eq!(img.network, Network::None);
        assert_eq!(img.user, RunAs::Caller);
        assert_eq!(img.origin, "a.toml:2");
        assert_eq!(c.commands.keys().collect::<Vec<_>>(), ["cat", "jq", "ls", "sh"]);
        assert_eq!(c.commands["jq"].program(), "/usr/bin/jq");
        assert_eq!(c.commands["sh"].program(), "sh");
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "[image.x]\nref = \"a\"\nnetwork = \"wifi\"\n";
        let errs = parse_file(Path::new("/c/bad.toml"), text).unwrap_err();
        assert_eq!(errs[0].line, 3, "{}", errs[0]);
        assert!(errs[0].to_string().starts_with("/c/bad.toml:3: "), "{}", errs[0]);

        let errs = parse_file(Path::new("b.toml"), "[command.jq]\nimage = \"x\"\nflavour = 1\n").unwrap_err();
        assert!(errs[0].message.contains("flavour"), "{}", errs[0]);

        let errs = parse_file(Path::new("c.toml"), "\n\n[command.\"a/b\"]\nimage = \"x\"\n").unwrap_err();
        assert_eq!(errs[0].line, 3);
        assert!(errs[0].message.contains("'/'"), "{}", errs[0]);

        let errs = parse_file(Path::new("d.toml"), "[image.x]\nref = \"a\"\nkeep_alive = \"soon\"\n").unwrap_err();
        assert!(errs[0].message.contains("keep_alive"), "{}", errs[0]);
    }

    #[test]
    fn a_bad_file_is_skipped_and_the_rest_serves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-good.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b-bad.toml"), "[image.y]\nref = 1\ncommands = [\"vi\"]\n").unwrap();
        std::fs::write(dir.path().join("c-orphan.toml"), "[command.zz]\nimage = \"nope\"\n").unwrap();
        std::fs::write(dir.path().join("d-dup.toml"), "[command.cat]\nimage = \"busybox\"\n").unwrap();
        let (cat, errs) = load_dirs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(cat.commands.keys().collect::<Vec<_>>(), ["cat", "jq", "ls", "sh"]);
        assert_eq!(cat.commands["cat"].origin, format!("{}:2", dir.path().join("a-good.toml").display()));
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:#?}");
        assert!(text[0].contains("b-bad.toml:2"), "{text:#?}");
        assert!(text.iter().any(|t| t.contains("d-dup.toml:1") && t.contains("already defined")), "{text:#?}");
        assert!(text.iter().any(|t| t.contains("c-orphan.toml:1") && t.contains("unknown image")), "{text:#?}");
    }

    #[test]
    fn a_source_that_cannot_be_read_fails_the_whole_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-good.toml"), GOOD).unwrap();
        // A file whose every read fails with EIO, as a failing disk's does
        // (root reads whatever its mode says, so a mode would not do).
        std::os::unix::fs::symlink("/proc/self/mem", dir.path().join("b-broken.toml")).unwrap();
        let e = load_dirs(&[dir.path().to_path_buf()]).unwrap_err();
        assert_eq!((e.path.as_path(), e.directory), (dir.path().join("b-broken.toml").as_path(), false));
        assert_eq!(e.error.raw_os_error(), Some(libc::EIO), "{e}");
        assert!(e.to_string().starts_with(&format!("cannot read catalog file {}: ", dir.path().join("b-broken.toml").display())), "{e}");
        // So does a directory that is not there, even after a good one.
        std::fs::remove_file(dir.path().join("b-broken.toml")).unwrap();
        let gone = dir.path().join("gone");
        let e = load_dirs(&[dir.path().to_path_buf(), gone.clone()]).unwrap_err();
        assert_eq!((e.path, e.directory, e.error.kind()), (gone, true, std::io::ErrorKind::NotFound));
        // What a file is, rather than whether it can be read, skips that file.
        std::fs::create_dir(dir.path().join("c-dir.toml")).unwrap();
        std::fs::write(dir.path().join("d-latin1.toml"), b"# caf\xe9\n").unwrap();
        let (cat, errs) = load_dirs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(cat.commands.len(), 4, "{errs:?}");
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn versioned_images_list_name_at_version_and_the_bare_name_runs_the_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), "[image.jq16]\nref = \"jq:1.6\"\nversion = \"1.6\"\ncommands = [\"jq\"]\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "[image.jq17]\nref = \"jq:1.7\"\nversion = \"1.7\"\n[command.jq]\nimage = \"jq17\"\npath = \"/usr/bin/jq\"\n").unwrap();
        std::fs::write(dir.path().join("c.toml"), "[command.\"jq@1.6\"]\nimage = \"jq17\"\n").unwrap();
        let (cat, errs) = load_dirs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(cat.commands.keys().collect::<Vec<_>>(), ["jq@1.6", "jq@1.7"], "{errs:?}");
        // The tool still sees itself as jq, and runs as the image has it.
        assert_eq!((cat.commands["jq@1.6"].program(), cat.commands["jq@1.6"].argv0()), ("jq", "jq"));
        assert_eq!(cat.commands["jq@1.7"].program(), "/usr/bin/jq");
        assert!(errs.iter().any(|e| e.to_string().contains("c.toml:1") && e.message.contains("already defined")), "{errs:?}");
        let snap = super::super::Snapshot::new(&cat);
        assert_eq!(snap.commands["jq"].image.name, "jq17");
        assert_eq!(snap.versions["jq"], super::super::Versions { all: vec!["1.6".into(), "1.7".into()], default: "1.7".into() });
        // default = true wins over the highest version.
        std::fs::write(dir.path().join("a.toml"), "[image.jq16]\nref = \"jq:1.6\"\nversion = \"1.6\"\ndefault = true\ncommands = [\"jq\"]\n").unwrap();
        let (cat, _) = load_dirs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(super::super::Snapshot::new(&cat).commands["jq"].image.name, "jq16");
        // A version that names another image's, or none, is refused.
        let errs = parse_file(Path::new("d.toml"), "[image.x]\nref = \"x\"\nversion = \"2\"\n[command.\"x@3\"]\nimage = \"x\"\n").unwrap_err();
        assert!(errs[0].message.contains("not version 3"), "{errs:?}");
        assert!(parse_file(Path::new("e.toml"), "[image.x]\nref = \"x\"\ndefault = true\n").unwrap_err()[0].message.contains("needs a version"));
        assert!(parse_file(Path::new("f.toml"), "[image.x]\nref = \"x\"\nversion = \"1 2\"\n").is_err());
    }
}
