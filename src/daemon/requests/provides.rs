//! `odfs provides` and the command-not-found hint: which images have a
//! command on their PATH, from the index of images' executables.

use super::{failed, Answer};
use crate::backend::ContainerBackend;
use crate::daemon::call::{Caller, PoolError};
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn provides(&self, caller: &Caller, command: &str) -> Answer {
        let images = self.pool.local_images().await.map_err(|e| failed(e.to_string()))?;
        // Forget images that are gone; scan the new ones, for root only:
        // each scan exports a whole image, as `odfs scan` does.
        self.index.retain(|k, _| images.contains(k));
        if caller.uid == 0 {
            for image in images {
                if let Err(e) = self.indexed_executables(&image).await {
                    tracing::debug!(image, "cannot scan: {e}");
                }
            }
        }
        let mut lines = self.providers(command, caller);
        // The archive's package, on this machine or not.
        if let Some(described) = self.snapshot().archive.as_ref().and_then(|a| a.describe(command)) {
            lines.extend(described.into_iter().map(|l| format!("archive: {l}")));
        }
        if lines.is_empty() {
            Err(failed(format!("no image on this machine has {command} on its PATH")))
        } else {
            Ok(Response::Done(lines.join("\n")))
        }
    }

    /// `provides` from the index alone: never waits on the engine.
    pub(in crate::daemon) fn hint(&self, caller: &Caller, command: &str) -> Answer {
        let snapshot = self.snapshot();
        // The versions the catalog offers of this name (or of `NAME@V`'s).
        let base = command.split_once('@').map_or(command, |(b, _)| b);
        let versions = snapshot.versions.get(base).map(|v| format!("versions {base} {}", v.all.join(" ")));
        if let Some(e) = snapshot.get(command) {
            // An archive command: its package, whether or not the mount lists it.
            let first = match &e.image.package {
                Some(p) => format!("archive {} {} {}", p.name, p.version, p.suite),
                None => format!("catalog {} {}", e.image.reference, e.command.program()),
            };
            let lines: Vec<String> = std::iter::once(first).chain(versions).collect();
            return Ok(Response::Done(lines.join("\n")));
        }
        if let Some(v) = versions {
            return Ok(Response::Done(v));
        }
        let lines = self.providers(command, caller);
        if lines.is_empty() {
            Err(failed(format!("no indexed image has {command}")))
        } else {
            Ok(Response::Done(lines.join("\n")))
        }
    }

    /// Executables of an image, from the index or scanned (and indexed).
    pub(in crate::daemon) async fn indexed_executables(&self, image: &str) -> Result<Vec<String>, PoolError> {
        if let Some(paths) = self.index.get(image) {
            return Ok(paths.clone());
        }
        let paths = self.pool.executables(image).await?;
        self.index.insert(image.to_string(), paths.clone());
        Ok(paths)
    }

    /// The indexed images that have `command` on their PATH, as `IMAGE PATH`
    /// lines. For any user but root, only images the catalog names: the
    /// machine's other images may be someone's own.
    fn providers(&self, command: &str, caller: &Caller) -> Vec<String> {
        let listed: std::collections::HashSet<String> = self.snapshot().commands.values().map(|e| e.image.reference.clone()).collect();
        let mut lines: Vec<String> = self
            .index
            .iter()
            .filter(|e| caller.uid == 0 || listed.contains(e.key()))
            .flat_map(|e| {
                let image = e.key().clone();
                e.value().iter().filter(|p| p.rsplit('/').next() == Some(command)).map(move |p| format!("{image} {p}")).collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        lines
    }
}
