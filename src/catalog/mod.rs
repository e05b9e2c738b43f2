//! The catalog: which commands exist and which image profile provides each.
//!
//! TOML files (`[image.NAME]`, `[command.NAME]`) are parsed and validated in
//! [`load`], gathered into a [`Catalog`], and turned into an immutable
//! [`Snapshot`] that FUSE callbacks and exec requests read without locks or I/O.

pub mod archive;
pub mod import;
mod load;
mod model;
mod store;

pub use load::{catalog_files, load_dirs, parse_file, CatalogError, Unreadable};
pub use model::{
    capability, capability_mask, code_loading_variable, is_cdi_name, validate_name, validate_path, version_order, ArchivePackage, ArchiveSpec, Catalog,
    CommandName, CommandSpec, FetchPolicy, Gpus, ImageSpec, KeepAlive, Limits, Network, PidMode, RunAs,
};
pub use store::{ImageUse, Invocation, PastCall, Store};

use std::collections::BTreeMap;
use std::sync::Arc;

/// A command ready to run: its entry and its image.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub command: CommandSpec,
    pub image: Arc<ImageSpec>,
}

/// What the mount serves, resolved once per catalog load.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every listed name: `jq`, and `jq@1.6`, `jq@1.7` for versioned images.
    pub commands: BTreeMap<String, Resolved>,
    pub images: BTreeMap<String, Arc<ImageSpec>>,
    /// A bare name that versioned images provide → their versions, in
    /// order, and which one the bare name runs by default.
    pub versions: BTreeMap<String, Versions>,
    /// `[archive.debian]` and its indexes: every name the catalog does not
    /// map, resolved in the archive.
    pub archive: Option<Arc<archive::Archive>>,
}

/// The versions of one bare command name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// Oldest first ([`model::version_order`]).
    pub all: Vec<String>,
    /// What the bare name runs where no pin says otherwise: the image
    /// marked `default = true`, else the highest version.
    pub default: String,
}

impl Snapshot {
    pub fn new(catalog: &Catalog) -> Snapshot {
        let images: BTreeMap<String, Arc<ImageSpec>> =
            catalog.images.iter().map(|(k, v)| (k.clone(), Arc::new(v.clone()))).collect();
        let mut commands: BTreeMap<String, Resolved> = catalog
            .commands
            .iter()
            .filter_map(|(name, cmd)| {
                let image = images.get(&cmd.image)?.clone();
                Some((name.clone(), Resolved { command: cmd.clone(), image }))
            })
            .collect();
        let mut versions: BTreeMap<String, Versions> = BTreeMap::new();
        for (key, r) in &commands {
            if let (Some((base, v)), Some(_)) = (key.split_once('@'), &r.image.version) {
                let e = versions.entry(base.to_string()).or_insert(Versions { all: vec![], default: String::new() });
                e.all.push(v.to_string());
                if r.image.default_version && e.default.is_empty() {
                    e.default = v.to_string();
                }
            }
        }
        for (base, vs) in versions.iter_mut() {
            vs.all.sort_by(|a, b| model::version_order(a, b));
            if vs.default.is_empty() {
                vs.default = vs.all.last().cloned().unwrap_or_default();
            }
            // An unversioned entry of the bare name stays what it runs.
            if !commands.contains_key(base) {
                let chosen = commands[&format!("{base}@{}", vs.default)].clone();
                commands.insert(base.clone(), chosen);
            }
        }
        Snapshot { commands, images, versions, archive: None }
    }

    /// The snapshot with the archive's commands behind the catalog's.
    pub fn with_archive(self, archive: Option<archive::Archive>) -> Snapshot {
        Snapshot { archive: archive.map(Arc::new), ..self }
    }

    /// What `command` runs: the catalog's entry, else the archive's.
    pub fn get(&self, command: &str) -> Option<Resolved> {
        self.commands.get(command).cloned().or_else(|| self.archive.as_ref()?.resolve(command))
    }

    /// Every name the mount lists: the catalog's, then the archive's
    /// (listing on) that the catalog does not have.
    pub fn listed(&self) -> impl Iterator<Item = &str> {
        let archive = self.archive.iter().flat_map(|a| a.listed()).filter(|n| !self.commands.contains_key(*n));
        self.commands.keys().map(String::as_str).chain(archive)
    }

    /// Whether a lookup of a name the mount does not list finds a command
    /// (an archive's `NAME@SUITE`, or any of its names with listing off).
    pub fn knows(&self, command: &str) -> bool {
        self.commands.contains_key(command) || self.archive.as_ref().is_some_and(|a| a.knows(command))
    }
}
