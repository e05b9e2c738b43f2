//! `odfs pull` and `odfs update`: fetch the images of some commands (all
//! when empty), a line each, with progress frames to the client as a call
//! would get. Update fetches again and says what changed: a reference
//! pinned by digest never moves; a recipe is built again only when its
//! files or base images changed; `check` reports without fetching.

use std::future::Future;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::{failed, require_root, Answer};
use crate::backend::outbound::{Reference, Source};
use crate::backend::{ContainerBackend, ImageInfo, LABEL_RECIPE};
use crate::catalog::ImageSpec;
use crate::daemon::call::{Caller, PoolError};
use crate::daemon::pool::short_id;
use crate::daemon::Daemon;
use crate::protocol::{Failure, Response};

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn pull(&self, caller: &Caller, commands: &[String], client: &UnixStream) -> Answer {
        self.each_image(caller, "pull", commands, |image| async move {
            match self.with_progress(client, &image, self.pool.pull(&image)).await {
                Ok(true) => Ok("fetched".to_string()),
                Ok(false) => Ok("present".to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    pub(in crate::daemon) async fn update(&self, caller: &Caller, commands: &[String], check: bool, client: &UnixStream) -> Answer {
        self.each_image(caller, "update", commands, |image| async move { self.update_one(&image, check, client).await }).await
    }

    /// `one` on each image of `commands` in turn, a line each: one that
    /// fails does not keep the rest from their turn, and fails the request.
    async fn each_image<F: Future<Output = Result<String, String>>>(
        &self,
        caller: &Caller,
        what: &str,
        commands: &[String],
        one: impl Fn(Arc<ImageSpec>) -> F,
    ) -> Answer {
        require_root(caller, what)?;
        let mut lines = Vec::new();
        let mut failed_any = false;
        for image in self.images_of(commands)? {
            let line = one(image.clone()).await.unwrap_or_else(|e| {
                failed_any = true;
                e
            });
            lines.push(format!("{}: {line}", image.reference));
        }
        if failed_any {
            Err(failed(lines.join("\n")))
        } else {
            Ok(Response::Done(lines.join("\n")))
        }
    }

    /// The images of these commands (every image when empty), one per reference.
    fn images_of(&self, commands: &[String]) -> Result<Vec<Arc<ImageSpec>>, Failure> {
        let snapshot = self.snapshot();
        let mut images: Vec<Arc<ImageSpec>> = if commands.is_empty() {
            snapshot.images.values().cloned().collect()
        } else {
            let mut v = Vec::new();
            for c in commands {
                match snapshot.get(c) {
                    Some(r) => v.push(r.image.clone()),
                    None => return Err(failed(format!("{c} is not in the catalog (odfs ls lists what is)"))),
                }
            }
            v
        };
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        images.dedup_by(|a, b| a.reference == b.reference);
        Ok(images)
    }

    async fn update_one(&self, image: &Arc<ImageSpec>, check: bool, client: &UnixStream) -> Result<String, String> {
        if let Some(pkg) = &image.package {
            return Ok(format!("Debian package {} {}: its image is that version's; odfs update --archive builds newer ones", pkg.name, pkg.version));
        }
        let backend = self.pool.backend();
        let r = &image.reference;
        let before = backend.image_info(r).await.map_err(|e| e.to_string())?;
        if Reference::parse(r).pinned() {
            return Ok(format!("pinned by digest: stays{}", before.map_or(String::new(), |b| format!(" at {}", short_id(&b.id)))));
        }
        // A recipe decides when the image was built from it, when there is
        // no image yet, and always when its name is Docker Hub's (never
        // pulled: see `Source`); an image that came from the registry its
        // reference names is pulled, and built from its recipe when the
        // pull fails (an image made offline, as fetch does).
        let stamped = before.as_ref().is_none_or(|b| b.labels.contains_key(LABEL_RECIPE));
        let pulls = Source::of(r, image.build.as_deref()).pulls();
        let mut rebuild = false;
        if image.build.is_some() && (stamped || !pulls) {
            match self.by_recipe(image, before.as_ref(), check).await? {
                Some(line) => return Ok(line),
                None => rebuild = true,
            }
        }
        if check {
            let digest = match backend.registry_digest(r).await {
                Ok(d) => d,
                Err(e) => match self.by_recipe(image, before.as_ref(), true).await? {
                    Some(line) if image.build.is_some() => return Ok(format!("{line} (its registry does not answer: {e})")),
                    _ => {
                        return Err(format!(
                            "cannot ask its registry without pulling ({e}): the engine may lack the distribution API (Podman's does); run odfs update without --check"
                        ))
                    }
                },
            };
            let here = before.as_ref().is_some_and(|b| b.digests.iter().any(|d| d.ends_with(&format!("@{digest}"))));
            return Ok(if here {
                format!("up to date ({digest})")
            } else {
                format!("an update is available: {digest} (here: {})", before.map_or("nothing".into(), |b| short_id(&b.id).to_string()))
            });
        }
        match self.with_progress(client, image, self.pool.refetch(image, rebuild)).await {
            Ok(()) => {}
            Err(PoolError::Backend(crate::backend::BackendError::ImageMissing { reason, .. })) if image.build.is_some() => {
                tracing::info!(image = r.as_str(), "cannot pull ({reason}); its recipe decides");
                if let Some(line) = self.by_recipe(image, before.as_ref(), false).await? {
                    return Ok(line);
                }
                self.with_progress(client, image, self.pool.refetch(image, true)).await.map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(e.to_string()),
        }
        let after = backend.image_info(r).await.map_err(|e| e.to_string())?.ok_or("gone right after its fetch")?;
        let Some(before) = before else { return Ok(format!("fetched: {}", short_id(&after.id))) };
        if before.id == after.id {
            return Ok(format!("up to date at {}", short_id(&after.id)));
        }
        // The old image stays odfs's to remove once nothing holds it.
        self.store.image_seen(&before.id, r);
        let moving = self.pool.retarget(r, &after.id).await;
        let mut line = format!("updated {} → {}", short_id(&before.id), short_id(&after.id));
        if !image.version_command.is_empty() {
            let mount = self.pool.mount_id();
            let version = |id: String| async move {
                backend.version_of(&id, &image.version_command, mount).await.unwrap_or_else(|e| format!("(no version: {e})"))
            };
            line += &format!(" ({} → {})", version(before.id.clone()).await, version(after.id.clone()).await);
        }
        if moving > 0 {
            line += &format!("; {moving} container(s) with tools running move to it when they end");
        }
        Ok(line)
    }

    /// Whether an image's recipe needs building: `Some(line)` when not (it
    /// is as built) or when only checking; `None` when it must be built.
    async fn by_recipe(&self, image: &ImageSpec, before: Option<&ImageInfo>, check: bool) -> Result<Option<String>, String> {
        let Some(recipe) = &image.build else { return Ok(None) };
        let stamp = self.pool.backend().recipe_stamp(recipe).await.map_err(|e| format!("cannot read the recipe {}: {e}", recipe.display()))?;
        match before {
            Some(b) if b.labels.get(LABEL_RECIPE) == Some(&stamp) => {
                Ok(Some(format!("up to date at {} (its recipe and base images are as built)", short_id(&b.id))))
            }
            Some(b) if check && !b.labels.contains_key(LABEL_RECIPE) => {
                Ok(Some(format!("would be built again from its recipe {} (this image was not built by odfs)", recipe.display())))
            }
            _ if check => Ok(Some(format!("would be built again: its recipe {} or a base image changed", recipe.display()))),
            _ => Ok(None),
        }
    }
}
