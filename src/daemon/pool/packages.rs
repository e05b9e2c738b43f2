//! The images of archive packages: the suite's base (its apt lists) made
//! once, then one image per package on it, at most a few builds at once
//! on the machine whoever asks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::Pool;
use crate::backend::{BackendError, ContainerBackend, ProgressTx};
use crate::catalog::{archive, ArchivePackage, ImageSpec};
use crate::daemon::call::PoolError;

/// Package builds the machine runs at once: each is apt downloading and
/// unpacking, bound by the network and the disk more than the CPU.
pub const BUILDS_AT_ONCE: usize = 2;

/// What the package builds share.
pub struct Builds {
    at_once: tokio::sync::Semaphore,
    /// One base build per base image at a time; the others wait for it.
    bases: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Package images seen on the engine since the daemon started.
    present: Mutex<std::collections::HashSet<String>>,
}

impl Default for Builds {
    fn default() -> Builds {
        Builds { at_once: tokio::sync::Semaphore::new(BUILDS_AT_ONCE), bases: Mutex::default(), present: Mutex::default() }
    }
}

impl Builds {
    /// Whether a package's image was seen on the engine (a prewarm of one
    /// that was not asks nothing of the engine).
    pub fn present(&self, reference: &str) -> bool {
        self.present.lock().unwrap().contains(reference)
    }

    fn seen(&self, reference: &str) {
        self.present.lock().unwrap().insert(reference.to_string());
    }

    /// A package's image seen before is no longer on the engine.
    pub fn gone(&self, reference: &str) {
        self.present.lock().unwrap().remove(reference);
    }
}

impl<B: ContainerBackend> Pool<B> {
    /// Make the image of an archive package if it is missing: true if it
    /// was built.
    pub(super) async fn fetch_package(&self, image: &ImageSpec, pkg: &ArchivePackage, progress: &ProgressTx) -> Result<bool, PoolError> {
        if self.backend.image_id(&image.reference).await?.is_some() {
            self.builds.seen(&image.reference);
            return Ok(false);
        }
        let recipe = image.build.as_deref().expect("an archive image has its recipe's place");
        let _turn = self.builds.at_once.acquire().await.expect("never closed");
        // Another call may have built it while this one waited its turn.
        if self.backend.image_id(&image.reference).await?.is_some() {
            self.builds.seen(&image.reference);
            return Ok(false);
        }
        let base_recipe = recipe.parent().unwrap_or(recipe).join("_base");
        self.package_base(pkg, &base_recipe, progress).await?;
        write_recipe(recipe, &archive::recipe(pkg)).await?;
        tracing::info!(image = image.reference, package = pkg.name, version = pkg.version, "building the image of an archive package");
        self.backend.build_image(&image.reference, recipe, progress).await?;
        self.builds.seen(&image.reference);
        Ok(true)
    }

    /// The suite's base, built from the suite's slim image (or bookworm's,
    /// which apt then takes to the suite) when missing.
    async fn package_base(&self, pkg: &ArchivePackage, recipe: &Path, progress: &ProgressTx) -> Result<(), PoolError> {
        let lock = self.builds.bases.lock().unwrap().entry(pkg.base.clone()).or_default().clone();
        let _only = lock.lock().await;
        if self.backend.image_id(&pkg.base).await?.is_some() {
            return Ok(());
        }
        let own = format!("debian:{}-slim", pkg.suite);
        let mut from = None;
        for candidate in [own.as_str(), "debian:bookworm-slim"] {
            if self.backend.image_id(candidate).await?.is_some() || self.backend.ensure_image(candidate, progress).await.is_ok() {
                from = Some(candidate);
                break;
            }
        }
        let from = from.ok_or_else(|| BackendError::ImageMissing {
            reference: own.clone(),
            reason: format!("neither {own} nor debian:bookworm-slim is on this machine or can be pulled (make one offline with scripts/build-base)"),
        })?;
        write_recipe(recipe, &archive::base_recipe_text(from, &pkg.source, &pkg.base)).await?;
        tracing::info!(image = pkg.base, from, "building the archive's base image (its apt lists)");
        self.backend.build_image(&pkg.base, recipe, progress).await?;
        if let (Some(store), Ok(Some(i))) = (&self.store, self.backend.image_info(&pkg.base).await) {
            store.image_seen(&i.id, &pkg.base);
        }
        Ok(())
    }
}

/// Write a recipe's Dockerfile (the directory made as needed).
async fn write_recipe(dir: &Path, dockerfile: &str) -> Result<(), PoolError> {
    let failed = |e: std::io::Error| BackendError::BuildFailed { reference: String::new(), recipe: dir.display().to_string(), reason: format!("cannot write the recipe: {e}") };
    tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    tokio::fs::write(dir.join("Dockerfile"), dockerfile).await.map_err(failed)?;
    Ok(())
}
