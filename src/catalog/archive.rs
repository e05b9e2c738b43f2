//! The archive as the catalog serves it: `[archive.debian]` over the stored
//! suite indexes, each command resolved to an image of its package (named,
//! never built here: [`recipe`] is what the pool builds on a first call).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::model::{ArchivePackage, ArchiveSpec, CommandName, CommandSpec, ImageSpec};
use super::Resolved;
use crate::archive::{Index, Indexes};

/// Where the stored indexes and the package recipes live, under the state
/// directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("archive")
}

/// The daemon fetches an index again once it is this old.
pub const REFRESH_AFTER_S: u64 = 86_400;

/// An index older than this is said to be stale (`odfs status`, `odfs
/// doctor`); the daemon refreshes it daily.
pub const STALE_AFTER_S: u64 = 2 * 86_400;

/// `[archive.debian]` with the indexes of its suites.
#[derive(Debug)]
pub struct Archive {
    pub spec: ArchiveSpec,
    pub indexes: Indexes,
    dir: PathBuf,
    /// What is missing or refused, one line each (a suite without an
    /// index, an override the index cannot follow).
    pub problems: Vec<String>,
    /// Each package's image, made once per snapshot.
    images: Mutex<HashMap<(String, String), Arc<ImageSpec>>>,
}

impl Archive {
    /// Read the stored indexes of the spec's suites (no network) and apply
    /// its overrides.
    pub fn load(spec: ArchiveSpec, state_dir: &Path) -> Archive {
        let dir = dir(state_dir);
        let mut indexes = Indexes::new(&spec.suites[0]);
        let mut problems = Vec::new();
        for suite in &spec.suites {
            let file = Index::file(&dir, suite);
            match Index::load(&file) {
                Ok(mut index) => {
                    // Names found on packages' PATH, then the admin's choices.
                    let found = found(&found_file(&dir, suite), &index);
                    index.apply_overrides(&found);
                    problems.extend(index.apply_overrides(&spec.packages).into_iter().map(|p| format!("archive debian: {p}")));
                    indexes.insert(index);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    problems.push(format!("archive debian: no index of {suite} yet: root's `odfs update --archive` fetches it (the network)"))
                }
                Err(e) => problems.push(format!("archive debian: cannot read {}: {e}; root's `odfs update --archive` fetches it again", file.display())),
            }
        }
        Archive { spec, indexes, dir, problems, images: Mutex::default() }
    }

    /// `odfs status`'s and `odfs doctor`'s lines on the indexes at `now_s`
    /// (Unix seconds): fine (`Some(true)`), missing (`Some(false)`), stale
    /// (`None`).
    pub fn health(&self, now_s: u64) -> Vec<(Option<bool>, String)> {
        let mut lines: Vec<(Option<bool>, String)> = Vec::new();
        for index in self.indexes.suites() {
            let m = &index.meta;
            let age_h = now_s.saturating_sub(m.fetched_s) / 3600;
            let listed = if self.spec.list && m.suite == self.indexes.default_suite { "listed" } else { "found by name" };
            let unsigned = if self.spec.trusted.contains(&m.suite) { ", its signatures not checked (trusted)" } else { "" };
            let what = format!(
                "archive index of {}: {} commands ({listed}), Release of {}, fetched {age_h} h ago from {}{unsigned}; fetch = \"{}\"",
                m.suite,
                index.len(),
                m.release_date,
                m.mirror,
                self.spec.fetch.as_str()
            );
            if now_s.saturating_sub(m.fetched_s) > STALE_AFTER_S {
                lines.push((None, format!("{what}: stale (the daemon refreshes it daily; root's odfs update --archive does now)")));
            } else {
                lines.push((Some(true), what));
            }
        }
        lines.extend(self.problems.iter().map(|p| (Some(false).filter(|_| p.contains("no index") || p.contains("cannot read")).or(None), p.clone())));
        lines
    }

    /// The names the mount lists: the default suite's, when listing is on
    /// (names a directory cannot hold are left out).
    pub fn listed(&self) -> impl Iterator<Item = &str> {
        let index = self.indexes.suite(&self.indexes.default_suite).filter(|_| self.spec.list);
        index.into_iter().flat_map(|i| i.names()).filter(|n| super::validate_name(n).is_ok())
    }

    /// Whether a lookup of `name` finds a command (listed or not).
    pub fn knows(&self, name: &str) -> bool {
        super::validate_name(name).is_ok() && self.indexes.resolve(name).is_some_and(|(_, r)| debian_package(r.package))
    }

    /// The command `name` (`htop`, `jq@trixie`) runs: the package's image
    /// and the file the index says it ships.
    pub fn resolve(&self, name: &str) -> Option<Resolved> {
        let (index, found) = self.indexes.resolve(name)?;
        if !debian_package(found.package) {
            return None;
        }
        let command = CommandName::new(found.name).ok()?;
        let suite = &index.meta.suite;
        let image = self.image(suite, found.package);
        // A name update-alternatives makes is a link the package's
        // postinst puts on PATH; any other, the file itself.
        let path = (found.via.is_none() && found.path.starts_with('/')).then_some(found.path);
        let command = CommandSpec {
            name: command,
            image: image.name.clone(),
            path,
            args: vec![],
            env: vec![],
            origin: format!("archive debian ({suite})"),
        };
        Some(Resolved { command, image })
    }

    /// What `odfs show` says of an archive command: its package, version,
    /// suite and the other providers, one line each.
    pub fn describe(&self, name: &str) -> Option<Vec<String>> {
        let (index, found) = self.indexes.resolve(name)?;
        let (p, meta) = (found.package, &index.meta);
        let mut lines = vec![format!(
            "Debian package {} {} of {} ({}, Release of {}), section {}, {} kB installed: {}",
            p.name, p.version, meta.suite, meta.mirror, meta.release_date, p.section, p.installed_size, p.synopsis
        )];
        if let Some(via) = found.via {
            lines.push(format!("{} is a link update-alternatives makes, to {via}", found.name));
        }
        if self.spec.packages.contains_key(found.name) {
            lines.push("chosen by the catalog's [archive.debian] packages".into());
        }
        if !found.others.is_empty() {
            let others: Vec<String> = found.others.iter().map(|o| format!("{} {}", o.name, o.version)).collect();
            lines.push(format!("also provided by: {} (pick one with [archive.debian] packages = {{ {} = \"NAME\" }})", others.join(", "), found.name));
        }
        Some(lines)
    }

    /// The commands each package of `suite` is the provider of (the first
    /// by the rule), by package name.
    pub fn commands_by_package(&self, suite: &str) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        let Some(index) = self.indexes.suite(suite) else { return out };
        for name in index.names() {
            if let Some(r) = index.resolve(name) {
                out.entry(r.package.name.clone()).or_default().push(name.to_string());
            }
        }
        out
    }

    /// The package of `suite` an image name holds (its encoded name and
    /// version tag, [`parse_reference`]), if the index has that version now.
    pub fn image_of_tag(&self, suite: &str, package: &str, tag: &str) -> Option<(String, Arc<ImageSpec>)> {
        let p = self.indexes.suite(suite)?.packages().iter().find(|p| encode(&p.name) == package && encode(&p.version) == tag)?;
        Some((p.name.clone(), self.image(suite, p)))
    }

    /// The image of `package` of `suite` as the index has it now.
    pub fn package_image(&self, suite: &str, package: &str) -> Option<Arc<ImageSpec>> {
        Some(self.image(suite, self.indexes.suite(suite)?.package(package)?))
    }

    fn image(&self, suite: &str, package: &crate::archive::packages::Package) -> Arc<ImageSpec> {
        let key = (suite.to_string(), package.name.clone());
        let mut images = self.images.lock().unwrap();
        images
            .entry(key)
            .or_insert_with(|| {
                let pkg = ArchivePackage {
                    suite: suite.to_string(),
                    name: package.name.clone(),
                    version: package.version.clone(),
                    size_kib: package.installed_size,
                    download: package.size,
                    base: base_reference(suite, &self.source(suite).line(), self.indexes.suite(suite).map_or("", |i| &i.meta.release_date)),
                    source: self.source(suite).line(),
                };
                Arc::new(ImageSpec {
                    name: format!("{suite}.{}", encode(&package.name)),
                    reference: reference(&pkg),
                    build: Some(self.dir.join("recipes").join(suite).join(encode(&package.name))),
                    package: Some(pkg),
                    ..self.spec.image.clone()
                })
            })
            .clone()
    }

    /// Where `suite` comes from: its own mirror or the section's, its
    /// signatures checked unless the catalog says it has none.
    pub fn source(&self, suite: &str) -> crate::archive::source::Source {
        crate::archive::source::Source {
            mirror: self.spec.mirrors.get(suite).unwrap_or(&self.spec.mirror).clone(),
            trusted: self.spec.trusted.iter().any(|t| t == suite),
            ..crate::archive::source::Source::new(suite)
        }
    }
}

/// Whether a package's name and version are as Debian allows them (they
/// reach a recipe's text): `[a-z0-9][a-z0-9+.-]*`, `[0-9A-Za-z.+~:-]+`.
fn debian_package(p: &crate::archive::packages::Package) -> bool {
    let name_ok = p.name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let version_ok = p.version.starts_with(|c: char| c.is_ascii_alphanumeric()) && p.version.chars().all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
    name_ok && version_ok
}

/// Where the commands found on packages' PATH are kept (`name package`
/// lines, [`crate::daemon`] appends them after a build).
pub fn found_file(dir: &Path, suite: &str) -> PathBuf {
    dir.join(format!("{suite}.found"))
}

/// The names `file` keeps that `index` lacks, each with its package (one
/// the index has). Lines it cannot read are passed over.
fn found(file: &Path, index: &Index) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, package)| super::validate_name(name).is_ok() && index.get(name).is_none() && index.package(package).is_some())
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect()
}

/// A package name or version as an image reference may hold it: `+`, `~`
/// and `:` (which Debian allows) spelled `_p`, `_t`, `_e` (which it
/// does not), so two names never meet.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '+' => out.push_str("_p"),
            '~' => out.push_str("_t"),
            ':' => out.push_str("_e"),
            c => out.push(c),
        }
    }
    out
}

/// The image of one version of one package.
pub fn reference(pkg: &ArchivePackage) -> String {
    format!("odfs-archive/{}/{}:{}", pkg.suite, encode(&pkg.name), encode(&pkg.version))
}

/// The suite, package (as [`encode`]d) and version tag of an archive
/// image's name (Podman's `localhost/` prefix allowed).
pub fn parse_reference(name: &str) -> Option<(&str, &str, &str)> {
    let rest = name.strip_prefix("localhost/").unwrap_or(name).strip_prefix("odfs-archive/")?;
    let (suite, rest) = rest.split_once('/')?;
    let (package, tag) = rest.split_once(':')?;
    Some((suite, package, tag))
}

/// The base image of a suite: the suite's lists as of its Release (a new
/// Release, a new base, so a package's version and the lists agree).
pub fn base_reference(suite: &str, source: &str, release_date: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{source}\n{release_date}").as_bytes());
    let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("odfs-archive/base:{suite}-{tag}")
}

/// The Dockerfile of a suite's base: `from` (the suite's slim image, or
/// another Debian one) with the archive (its apt `source` line) as its only
/// source, and its lists.
///
/// The base's own name is in the step, so the engine's build cache never
/// gives an older Release's lists to a new base.
pub fn base_recipe_text(from: &str, source: &str, base: &str) -> String {
    format!(
        "FROM {from}\n\
         RUN : '{base}' \\\n \
         && rm -f /etc/apt/sources.list.d/* \\\n \
         && echo '{source}' > /etc/apt/sources.list \\\n \
         && apt-get update\n"
    )
}

/// The Dockerfile of a package's image: its base, and the package with
/// what it depends on (not what it recommends). The version installed must
/// be the one the index named: the image's tag says it. apt keeps its
/// package cache in memory: written, it would put 39 MB into every
/// package's layer and a fifth of a second into its build.
pub fn recipe(pkg: &ArchivePackage) -> String {
    format!(
        "FROM {base}\n\
         RUN DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -o Dir::Cache::pkgcache= {name} \\\n \
         && got=$(dpkg-query -W -f '${{Version}}' {name}) \\\n \
         && {{ [ \"$got\" = '{version}' ] || {{ echo \"E: the archive now has {name} $got, not {version} as this machine's index says (root's odfs update --archive brings the index along)\" >&2; exit 1; }}; }} \\\n \
         && rm -rf /var/cache/apt/archives/*.deb\n",
        base = pkg.base,
        name = pkg.name,
        version = pkg.version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_hold_every_debian_name_and_version_apart() {
        let pkg = ArchivePackage {
            suite: "bookworm".into(),
            name: "g++".into(),
            version: "4:12.2.0-3~bpo1+b2".into(),
            size_kib: 1,
            download: 1,
            base: "odfs-archive/base:bookworm-x".into(),
            source: "deb http://deb.debian.org/debian bookworm main".into(),
        };
        assert_eq!(reference(&pkg), "odfs-archive/bookworm/g_p_p:4_e12.2.0-3_tbpo1_pb2");
        assert_eq!(parse_reference(&format!("localhost/{}", reference(&pkg))), Some(("bookworm", "g_p_p", "4_e12.2.0-3_tbpo1_pb2")));
        assert_eq!(parse_reference("odfs-archive/base:bookworm-1"), None);
        assert_ne!(encode("a+b"), encode("a-b"));
        assert_ne!(base_reference("bookworm", "m", "d1"), base_reference("bookworm", "m", "d2"));
        let r = recipe(&pkg);
        assert!(r.starts_with("FROM odfs-archive/base:bookworm-x\n"), "{r}");
        assert!(r.contains("--no-install-recommends -o Dir::Cache::pkgcache= g++") && r.contains("'4:12.2.0-3~bpo1+b2'"), "{r}");
    }
}
