//! The catalog: which commands exist and which image profile provides each.
//!
//! TOML files (`[image.NAME]`, `[command.NAME]`) are parsed and validated in
//! [`load`], gathered into a [`Catalog`], and turned into an immutable
//! [`Snapshot`] that FUSE callbacks and exec requests read without locks or I/O.

pub mod import;
mod load;
mod model;
mod store;

pub use load::{load_dirs, parse_file, CatalogError};
pub use model::{capability, capability_mask, code_loading_variable, validate_name, validate_path, Catalog, CommandName, CommandSpec, ImageSpec, KeepAlive, Limits, Network, PidMode, RunAs};
pub use store::{Invocation, PastCall, Store};

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
    pub commands: BTreeMap<String, Resolved>,
    pub images: BTreeMap<String, Arc<ImageSpec>>,
}

impl Snapshot {
    pub fn new(catalog: &Catalog) -> Snapshot {
        let images: BTreeMap<String, Arc<ImageSpec>> =
            catalog.images.iter().map(|(k, v)| (k.clone(), Arc::new(v.clone()))).collect();
        let commands = catalog
            .commands
            .iter()
            .filter_map(|(name, cmd)| {
                let image = images.get(&cmd.image)?.clone();
                Some((name.clone(), Resolved { command: cmd.clone(), image }))
            })
            .collect();
        Snapshot { commands, images }
    }

    pub fn get(&self, command: &str) -> Option<&Resolved> {
        self.commands.get(command)
    }
}
