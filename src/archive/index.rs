//! The command index of one suite in memory and on disk: commands sorted by
//! name (binary search for a lookup, in order for a listing), each with
//! its providers ranked by the rule, and the packages they name.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::alternatives::Alternative;
use super::contents::{Commands, Dir};
use super::packages::Package;
use super::provider;

/// The layout of the stored form; an index of another layout is fetched
/// again rather than misread.
const FORMAT: u32 = 2;

/// Where an index came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The suite's code name as asked for (`bookworm`).
    pub suite: String,
    /// The Release file's `Suite` (`oldstable`), `Codename` and `Date`.
    pub release_suite: String,
    pub codename: String,
    pub release_date: String,
    /// The architecture whose Contents and Packages were read (with `all`).
    pub architecture: String,
    pub mirror: String,
    /// When it was fetched (Unix seconds).
    pub fetched_s: u64,
}

/// A package that ships a command, and where it puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    /// Its place in the index's packages.
    pub package: u32,
    pub dir: Dir,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub name: String,
    /// Best first by the rule: the first is the one installed.
    pub providers: Vec<Provider>,
    /// For a name that update-alternatives makes: the command of the
    /// providers it points to (`nc.openbsd` for `nc`).
    pub via: Option<String>,
}

/// A command as a caller's lookup needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub name: &'a str,
    pub package: &'a Package,
    /// The file to run in the image (a bare name: found on its PATH).
    pub path: String,
    pub via: Option<&'a str>,
    /// The other packages that ship it, best first.
    pub others: Vec<&'a Package>,
}

/// What a build kept and left, for the fetch's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Names under a command directory in the Contents files.
    pub contents_names: usize,
    /// Of those, names none of whose packages the Packages files have.
    pub uninstallable: usize,
    /// Names with more than one installable provider.
    pub several_providers: usize,
    /// Names added by the alternatives table.
    pub alternatives: usize,
    pub packages_read: usize,
    /// Packages the index keeps (those that provide a command).
    pub packages_kept: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    format: u32,
    pub meta: Meta,
    /// Sorted by name, each name once.
    commands: Vec<Command>,
    /// Sorted by name.
    packages: Vec<Package>,
}

impl Index {
    /// The index of the commands in `commands` (one suite's Contents), with
    /// `packages` (its Packages) and the names `alternatives` make.
    pub fn build(meta: Meta, commands: Commands, packages: HashMap<String, Package>, alternatives: &[Alternative]) -> (Index, BuildStats) {
        let mut stats = BuildStats { contents_names: commands.providers.len(), packages_read: packages.len(), ..Default::default() };
        // Name → ranked (package name, dir), before packages get numbers.
        let mut ranked: BTreeMap<String, Vec<(&str, Dir)>> = BTreeMap::new();
        for (name, shipped) in &commands.providers {
            let order = provider::rank(name, shipped.iter().map(|(p, _)| p.as_str()), &packages);
            if order.is_empty() {
                stats.uninstallable += 1;
                continue;
            }
            stats.several_providers += usize::from(order.len() > 1);
            let dir_of = |p: &str| shipped.iter().find(|(s, _)| s == p).map_or(Dir::OnPath, |(_, d)| *d);
            ranked.insert(name.clone(), order.into_iter().map(|p| (p.name.as_str(), dir_of(&p.name))).collect());
        }
        let mut via: HashMap<String, String> = HashMap::new();
        for alt in alternatives {
            if ranked.contains_key(&alt.name) {
                // A package ships the name itself: the file wins.
                continue;
            }
            // Every target's providers, ranked again by the rule as
            // providers of the alternative's own name.
            let mut shipped: Vec<(&str, &String)> = Vec::new();
            for target in &alt.targets {
                for (p, _) in ranked.get(target).map(Vec::as_slice).unwrap_or_default() {
                    if !shipped.iter().any(|(q, _)| q == p) {
                        shipped.push((p, target));
                    }
                }
            }
            let order = provider::rank(&alt.name, shipped.iter().map(|(p, _)| *p), &packages);
            let Some(first) = order.first() else { continue };
            let target = shipped.iter().find(|(p, _)| *p == first.name).map(|(_, t)| (*t).clone()).unwrap_or_default();
            via.insert(alt.name.clone(), target);
            ranked.insert(alt.name.clone(), order.into_iter().map(|p| (p.name.as_str(), alt.dir)).collect());
            stats.alternatives += 1;
        }
        let mut kept: Vec<&str> = ranked.values().flatten().map(|(p, _)| *p).collect();
        kept.sort_unstable();
        kept.dedup();
        stats.packages_kept = kept.len();
        let number: HashMap<&str, u32> = kept.iter().enumerate().map(|(i, p)| (*p, i as u32)).collect();
        let commands = ranked
            .iter()
            .map(|(name, providers)| Command {
                name: name.clone(),
                providers: providers.iter().map(|(p, dir)| Provider { package: number[p], dir: *dir }).collect(),
                via: via.get(name).cloned(),
            })
            .collect();
        let packages = kept.iter().map(|p| packages[*p].clone()).collect();
        (Index { format: FORMAT, meta, commands, packages }, stats)
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// A command by name (O(log n)).
    pub fn get(&self, name: &str) -> Option<&Command> {
        self.commands.binary_search_by(|c| c.name.as_str().cmp(name)).ok().map(|i| &self.commands[i])
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.commands.iter().map(|c| c.name.as_str())
    }

    /// The names after `name`, in order: a listing taken up where it stopped.
    pub fn names_after<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        let start = self.commands.partition_point(|c| c.name.as_str() <= name);
        self.commands[start..].iter().map(|c| c.name.as_str())
    }

    /// A package the index keeps, by name (O(log n)).
    pub fn package(&self, name: &str) -> Option<&Package> {
        self.packages.binary_search_by(|p| p.name.as_str().cmp(name)).ok().map(|i| &self.packages[i])
    }

    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    /// What a lookup of `name` answers: the package to install and the file
    /// to run.
    pub fn resolve(&self, name: &str) -> Option<Resolved<'_>> {
        let command = self.get(name)?;
        let (first, rest) = command.providers.split_first()?;
        Some(Resolved {
            name: &command.name,
            package: &self.packages[first.package as usize],
            path: first.dir.path(&command.name),
            via: command.via.as_deref(),
            others: rest.iter().map(|p| &self.packages[p.package as usize]).collect(),
        })
    }

    /// Apply an admin's choices (command → package). A package that ships
    /// the command moves first; one that does not, but is in the index,
    /// becomes its only provider, found on the image's PATH (a name the
    /// Contents files do not show, or another implementation's); a package
    /// the index does not know is refused. Returns one line per refusal.
    pub fn apply_overrides(&mut self, overrides: &BTreeMap<String, String>) -> Vec<String> {
        let mut refused = Vec::new();
        for (name, package) in overrides {
            let Ok(number) = self.packages.binary_search_by(|p| p.name.as_str().cmp(package)) else {
                refused.push(format!(
                    "{name}: package {package} ships no command in {} (or is not in it); the override is ignored",
                    self.meta.suite
                ));
                continue;
            };
            let number = number as u32;
            match self.commands.binary_search_by(|c| c.name.as_str().cmp(name)) {
                Ok(i) => {
                    let command = &mut self.commands[i];
                    match command.providers.iter().position(|p| p.package == number) {
                        Some(at) => {
                            let chosen = command.providers.remove(at);
                            command.providers.insert(0, chosen);
                        }
                        None => command.providers = vec![Provider { package: number, dir: Dir::OnPath }],
                    }
                    command.via = None;
                }
                Err(i) => self.commands.insert(
                    i,
                    Command { name: name.clone(), providers: vec![Provider { package: number, dir: Dir::OnPath }], via: None },
                ),
            }
        }
        refused
    }

    /// The file an index of `suite` is kept in, under `dir`.
    pub fn file(dir: &Path, suite: &str) -> PathBuf {
        dir.join(format!("{suite}.index"))
    }

    /// Store it in `dir` (written whole, then renamed over the old one, so a
    /// reader sees either).
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let bytes = postcard::to_stdvec(self).map_err(std::io::Error::other)?;
        let path = Index::file(dir, &self.meta.suite);
        let tmp = path.with_extension("index.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// Load a stored index; an error for a file of another layout.
    pub fn load(path: &Path) -> std::io::Result<Index> {
        let bytes = std::fs::read(path)?;
        let index: Index = postcard::from_bytes(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        if index.format != FORMAT {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: index layout {} (this odfs reads {FORMAT}): fetch it again", path.display(), index.format),
            ));
        }
        // A file that decodes may still be damaged: lookups index and
        // search by these, and must not panic on it.
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {what}: fetch it again", path.display()));
        if !index.commands.windows(2).all(|w| w[0].name < w[1].name) {
            return Err(bad("commands out of order"));
        }
        if !index.packages.windows(2).all(|w| w[0].name < w[1].name) {
            return Err(bad("packages out of order"));
        }
        let known = index.packages.len();
        if index.commands.iter().flat_map(|c| &c.providers).any(|p| p.package as usize >= known) {
            return Err(bad("a command names a package the index does not hold"));
        }
        Ok(index)
    }
}

/// The indexes of several suites: a bare name looks in the default suite,
/// `NAME@SUITE` in that suite's.
#[derive(Debug, Default)]
pub struct Indexes {
    pub default_suite: String,
    by_suite: BTreeMap<String, Index>,
}

impl Indexes {
    pub fn new(default_suite: &str) -> Indexes {
        Indexes { default_suite: default_suite.to_string(), by_suite: BTreeMap::new() }
    }

    pub fn insert(&mut self, index: Index) {
        self.by_suite.insert(index.meta.suite.clone(), index);
    }

    pub fn suite(&self, suite: &str) -> Option<&Index> {
        self.by_suite.get(suite)
    }

    pub fn suites(&self) -> impl Iterator<Item = &Index> {
        self.by_suite.values()
    }

    /// Load every stored index in `dir` (`*.index`); the ones that cannot
    /// be read are returned with why.
    pub fn load_dir(dir: &Path, default_suite: &str) -> (Indexes, Vec<String>) {
        let mut indexes = Indexes::new(default_suite);
        let mut problems = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else { return (indexes, problems) };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "index") {
                match Index::load(&path) {
                    Ok(index) => indexes.insert(index),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        (indexes, problems)
    }

    /// The suite a name asks for and the command name in it: `htop@trixie`
    /// is trixie's `htop` when a trixie index is loaded; otherwise the whole
    /// name is a command of the default suite (Debian has `date@`).
    pub fn split<'a>(&self, name: &'a str) -> (&'a str, Option<&'a str>) {
        match name.rsplit_once('@') {
            Some((command, suite)) if !command.is_empty() && self.by_suite.contains_key(suite) => (command, Some(suite)),
            _ => (name, None),
        }
    }

    pub fn resolve(&self, name: &str) -> Option<(&Index, Resolved<'_>)> {
        let (command, suite) = self.split(name);
        let index = self.by_suite.get(suite.unwrap_or(&self.default_suite))?;
        Some((index, index.resolve(command)?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::packages::{Packages, Priority};
    use super::*;

    const CONTENTS: &str = "\
usr/bin/htop                      utils/htop
bin/ping                          net/inetutils-ping,net/iputils-ping
usr/games/cowsay                  games/cowsay
bin/nc.openbsd                    net/netcat-openbsd
bin/nc.traditional                net/netcat-traditional
usr/bin/vim.tiny                  editors/vim-tiny
usr/bin/vim.basic                 editors/vim
usr/bin/ghost                     utils/not-in-packages
usr/share/doc/htop/README         utils/htop
";

    const PACKAGES: &str = "\
Package: htop
Version: 3.2.2-2
Installed-Size: 404
Priority: optional
Section: utils
Description: interactive processes viewer

Package: inetutils-ping
Version: 2:2.4-2
Installed-Size: 120
Priority: optional

Package: iputils-ping
Version: 3:20221126-1
Installed-Size: 120
Priority: important

Package: cowsay
Version: 3.03+dfsg2-8
Installed-Size: 90
Priority: optional

Package: netcat-openbsd
Version: 1.219-1
Installed-Size: 109
Priority: important

Package: netcat-traditional
Version: 1.10-47
Installed-Size: 105
Priority: optional

Package: vim-tiny
Version: 2:9.0.1378-2
Installed-Size: 1751
Priority: important

Package: vim
Version: 2:9.0.1378-2
Installed-Size: 3857
Priority: optional

Package: unrelated
Version: 1
Priority: optional
";

    fn alternatives() -> Vec<Alternative> {
        vec![
            Alternative { name: "nc".into(), dir: Dir::Bin, targets: vec!["nc.openbsd".into(), "nc.traditional".into()] },
            Alternative { name: "vi".into(), dir: Dir::UsrBin, targets: vec!["vim.basic".into(), "vim.tiny".into()] },
            // A package ships `htop` itself: the table does not replace it.
            Alternative { name: "htop".into(), dir: Dir::UsrBin, targets: vec!["vim.tiny".into()] },
            Alternative { name: "absent".into(), dir: Dir::UsrBin, targets: vec!["nowhere".into()] },
        ]
    }

    fn sample() -> (Index, BuildStats) {
        let mut c = Commands::default();
        c.read(CONTENTS.as_bytes()).unwrap();
        let mut p = Packages::default();
        p.read(PACKAGES.as_bytes()).unwrap();
        let meta = Meta { suite: "bookworm".into(), ..Default::default() };
        Index::build(meta, c, p.finish(), &alternatives())
    }

    #[test]
    fn a_build_keeps_installable_commands_sorted_with_their_ranked_providers() {
        let (index, stats) = sample();
        let names: Vec<&str> = index.names().collect();
        assert_eq!(names, ["cowsay", "htop", "nc", "nc.openbsd", "nc.traditional", "ping", "vi", "vim.basic", "vim.tiny"]);
        assert_eq!(
            stats,
            BuildStats { contents_names: 8, uninstallable: 1, several_providers: 1, alternatives: 2, packages_read: 9, packages_kept: 8 }
        );
        let ping = index.resolve("ping").unwrap();
        assert_eq!((ping.package.name.as_str(), ping.path.as_str()), ("iputils-ping", "/bin/ping"));
        assert_eq!(ping.others.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["inetutils-ping"]);
        let cowsay = index.resolve("cowsay").unwrap();
        assert_eq!(cowsay.path, "/usr/games/cowsay");
        assert_eq!(index.resolve("htop").unwrap().via, None);
        assert!(index.resolve("ghost").is_none() && index.resolve("absent").is_none() && index.package("unrelated").is_none());
        assert_eq!(index.package("htop").unwrap().synopsis, "interactive processes viewer");
    }

    #[test]
    fn alternatives_resolve_through_their_targets_providers_by_the_same_rule() {
        let (index, _) = sample();
        let nc = index.resolve("nc").unwrap();
        assert_eq!((nc.package.name.as_str(), nc.path.as_str(), nc.via), ("netcat-openbsd", "/bin/nc", Some("nc.openbsd")));
        assert_eq!(nc.others.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["netcat-traditional"]);
        // vim-tiny is important, vim optional, whatever the table's order.
        let vi = index.resolve("vi").unwrap();
        assert_eq!((vi.package.name.as_str(), vi.via), ("vim-tiny", Some("vim.tiny")));
        assert_eq!(vi.others.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["vim"]);
    }

    #[test]
    fn listings_go_in_order_and_take_up_where_they_stopped() {
        let (index, _) = sample();
        assert_eq!(index.names_after("nc.traditional").collect::<Vec<_>>(), ["ping", "vi", "vim.basic", "vim.tiny"]);
        assert_eq!(index.names_after("").count(), index.len());
        assert_eq!(index.names_after("zzz").count(), 0);
        assert_eq!(index.names_after("o").next(), Some("ping"));
    }

    #[test]
    fn overrides_reorder_replace_add_or_are_refused() {
        let (mut index, _) = sample();
        let overrides: BTreeMap<String, String> = [
            ("ping", "inetutils-ping"),
            ("vi", "vim-tiny"),
            ("cowsay", "htop"),
            ("editor", "vim-tiny"),
            ("htop", "no-such-package"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let refused = index.apply_overrides(&overrides);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].starts_with("htop: package no-such-package ships no command in bookworm"), "{refused:?}");
        let ping = index.resolve("ping").unwrap();
        assert_eq!((ping.package.name.as_str(), ping.others[0].name.as_str()), ("inetutils-ping", "iputils-ping"));
        let vi = index.resolve("vi").unwrap();
        assert_eq!((vi.package.name.as_str(), vi.path.as_str(), vi.via), ("vim-tiny", "/usr/bin/vi", None));
        assert_eq!(vi.others[0].name, "vim");
        let cowsay = index.resolve("cowsay").unwrap();
        assert_eq!((cowsay.package.name.as_str(), cowsay.path.as_str()), ("htop", "cowsay"));
        assert_eq!(index.resolve("editor").unwrap().package.name, "vim-tiny");
        assert!(index.names().collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(index.resolve("htop").unwrap().package.name, "htop");
    }

    #[test]
    fn an_index_round_trips_through_its_file_and_other_layouts_are_refused() {
        let (index, _) = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = index.save(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("bookworm.index"));
        assert_eq!(Index::load(&path).unwrap(), index);
        let mut old = index.clone();
        old.format = FORMAT + 1;
        std::fs::write(&path, postcard::to_stdvec(&old).unwrap()).unwrap();
        let e = Index::load(&path).unwrap_err();
        assert!(e.to_string().contains("fetch it again"), "{e}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(Index::load(&path).is_err());
        // Decodes, but a lookup would index past the packages: refused.
        let mut damaged = index.clone();
        damaged.commands[0].providers[0].package = damaged.packages.len() as u32;
        std::fs::write(&path, postcard::to_stdvec(&damaged).unwrap()).unwrap();
        let e = Index::load(&path).unwrap_err();
        assert!(e.to_string().contains("a command names a package the index does not hold"), "{e}");
        let mut unsorted = index.clone();
        unsorted.packages.reverse();
        std::fs::write(&path, postcard::to_stdvec(&unsorted).unwrap()).unwrap();
        assert!(Index::load(&path).unwrap_err().to_string().contains("packages out of order"));
    }

    #[test]
    fn suites_are_asked_for_by_a_suffix_that_names_a_loaded_one() {
        let (bookworm, _) = sample();
        let mut trixie = bookworm.clone();
        trixie.meta.suite = "trixie".into();
        trixie.packages.iter_mut().for_each(|p| p.version = "trixie's".into());
        let dir = tempfile::tempdir().unwrap();
        bookworm.save(dir.path()).unwrap();
        trixie.save(dir.path()).unwrap();
        std::fs::write(dir.path().join("broken.index"), b"x").unwrap();
        let (indexes, problems) = Indexes::load_dir(dir.path(), "bookworm");
        assert_eq!(problems.len(), 1);
        assert_eq!(indexes.suites().count(), 2);
        assert_eq!(indexes.split("htop@trixie"), ("htop", Some("trixie")));
        assert_eq!(indexes.split("date@"), ("date@", None));
        assert_eq!(indexes.split("who@sid"), ("who@sid", None));
        assert_eq!(indexes.split("@trixie"), ("@trixie", None));
        let (index, htop) = indexes.resolve("htop@trixie").unwrap();
        assert_eq!((index.meta.suite.as_str(), htop.package.version.as_str()), ("trixie", "trixie's"));
        assert_eq!(indexes.resolve("htop").unwrap().1.package.version, "3.2.2-2");
        assert!(indexes.resolve("htop@sid").is_none());
        assert_eq!(Priority::Important, indexes.resolve("nc").unwrap().1.package.priority);
    }
}
