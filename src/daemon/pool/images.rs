//! The images containers run: fetched on first use as their source says
//! (pulled, or built from a recipe), with progress on the profile's
//! channel for everyone who waits, a failed fetch not tried again until
//! its backoff ends, and profiles moved onto a new image by `odfs update`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot::{PullFailure, Slot};
use super::state::{transition, Container, State};
use super::Pool;
use crate::backend::outbound::Source;
use crate::backend::ContainerBackend;
use crate::catalog::ImageSpec;
use crate::daemon::call::PoolError;
use crate::protocol::ImageProgress;

/// How often a waiting client hears of a fetch's progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Wait after a failed pull: 5 s, doubling per failure, at most 5 min.
pub(super) fn pull_backoff(attempts: u32) -> Duration {
    Duration::from_secs(5u64 << attempts.clamp(1, 7).saturating_sub(1)).min(Duration::from_secs(300))
}

/// An image id as people read it: the first 12 hex digits.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

impl<B: ContainerBackend> Pool<B> {
    /// Start the slot's container; returns its id and whether the image was
    /// fetched. An image that just failed to pull (or build) is not tried
    /// again on every call (or shim open): callers get the same error until
    /// the backoff ends.
    pub(super) async fn create(&self, slot: &Slot) -> Result<super::serve::Brought, PoolError> {
        if let Some(f) = slot.pull_failure.lock().unwrap().clone() {
            let now = Instant::now();
            if now < f.retry_at {
                return Err(PoolError::Backoff { message: f.message, wait_s: (f.retry_at - now).as_secs() + 1 });
            }
        }
        match self.start_container(slot).await {
            Err(PoolError::Backend(
                e @ (crate::backend::BackendError::ImageMissing { .. } | crate::backend::BackendError::BuildFailed { .. }),
            )) => {
                let mut failure = slot.pull_failure.lock().unwrap();
                let attempts = failure.as_ref().map_or(0, |f| f.attempts) + 1;
                *failure = Some(PullFailure { retry_at: Instant::now() + pull_backoff(attempts), message: e.to_string(), attempts });
                Err(PoolError::Backend(e))
            }
            other => {
                if other.is_ok() {
                    *slot.pull_failure.lock().unwrap() = None;
                }
                other
            }
        }
    }

    /// The failed fetch of `image` whose backoff has not ended, if any: what
    /// a call of it would be answered now.
    pub fn backoff(&self, image: &ImageSpec) -> Option<PoolError> {
        let slot = self.slots.get(&self.profile_key(image))?.value().clone();
        let f = slot.pull_failure.lock().unwrap().clone()?;
        let now = Instant::now();
        (now < f.retry_at).then(|| PoolError::Backoff { message: f.message, wait_s: (f.retry_at - now).as_secs() + 1 })
    }

    /// Make sure an image is present, fetched as its [`Source`] says: pulled;
    /// or built from its recipe, after a pull from the registry its
    /// reference names, if it names one. True if it had to be fetched.
    pub(super) async fn fetch(&self, image: &ImageSpec, progress: &crate::backend::ProgressTx) -> Result<bool, PoolError> {
        let fetched = match Source::of(&image.reference, image.build.as_deref()) {
            _ if image.package.is_some() => self.fetch_package(image, image.package.as_ref().expect("matched"), progress).await?,
            Source::Pull => self.backend.ensure_image(&image.reference, progress).await?,
            Source::Recipe { recipe, pull_first: true } => match self.backend.ensure_image(&image.reference, progress).await {
                Err(crate::backend::BackendError::ImageMissing { reason, .. }) => {
                    tracing::info!(image = image.reference, "cannot pull ({reason}); building it from its recipe");
                    self.backend.build_image(&image.reference, recipe, progress).await?;
                    true
                }
                result => result?,
            },
            Source::Recipe { recipe, pull_first: false } => {
                if self.backend.image_id(&image.reference).await?.is_some() {
                    false
                } else {
                    tracing::info!(image = image.reference, "image missing; building it from its recipe (a name of Docker Hub's with a recipe is never pulled)");
                    self.backend.build_image(&image.reference, recipe, progress).await?;
                    true
                }
            }
        };
        // What odfs fetched is odfs's to remove one day (`odfs gc`).
        if let (true, Some(store)) = (fetched, &self.store) {
            if let Ok(Some(i)) = self.backend.image_info(&image.reference).await {
                store.image_seen(&i.id, &image.reference);
            }
        }
        Ok(fetched)
    }

    /// `odfs pull`: fetch an image now, with progress on its profile's
    /// channel as when a call fetches it.
    pub async fn pull(&self, image: &Arc<ImageSpec>) -> Result<bool, PoolError> {
        let slot = self.slot(image);
        self.fetch(image, &slot.progress).await
    }

    /// `odfs update`: pull an image's reference again, or build its recipe
    /// again (always, for an image its [`Source`] never pulls), with
    /// progress on its profile's channel.
    pub async fn refetch(&self, image: &Arc<ImageSpec>, rebuild: bool) -> Result<(), PoolError> {
        let slot = self.slot(image);
        match Source::of(&image.reference, image.build.as_deref()) {
            // Its version is its name: a newer one is another image
            // (`odfs update --archive`).
            _ if image.package.is_some() => {
                self.fetch(image, &slot.progress).await?;
            }
            Source::Recipe { recipe, pull_first } if rebuild || !pull_first => {
                self.backend.build_image(&image.reference, recipe, &slot.progress).await?
            }
            _ => self.backend.pull(&image.reference, &slot.progress).await?,
        }
        // A fetch that failed before need not wait out its backoff now.
        *slot.pull_failure.lock().unwrap() = None;
        Ok(())
    }

    /// The image ids this mount's containers run now.
    pub fn images_in_use(&self) -> Vec<Arc<str>> {
        let used = |st: &State| if matches!(st, State::Created { .. }) { None } else { st.container().map(|c| c.image.clone()) };
        self.slots.iter().filter_map(|s| s.state.try_lock().ok().and_then(|st| used(&st))).collect()
    }

    /// Remove the containers made ahead of image `id`, which gc removes.
    pub async fn unmake(&self, id: &str) {
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        for slot in slots {
            // One being started now is no longer made ahead.
            let Ok(mut state) = slot.state.try_lock() else { continue };
            if let State::Created { c, .. } = state.clone() {
                if &*c.image == id && self.backend.remove(&c.id).await.is_ok() {
                    transition(&slot.name, &mut state, State::Absent, "made ahead: removed with its image (gc)");
                }
            }
        }
    }

    /// Follow the fetches of an image's profile (see [`Slot::progress`]).
    fn progress(&self, image: &Arc<ImageSpec>) -> tokio::sync::watch::Receiver<Option<ImageProgress>> {
        self.slot(image).progress.subscribe()
    }

    /// Run `work`, which may fetch `image`, while every change in that
    /// fetch's progress goes to `shown`: at most ten a second, and never
    /// without the one that says it is done. A fetch already under way (a
    /// prewarm's, another caller's) is shown from where it is.
    pub async fn with_progress<T>(&self, image: &Arc<ImageSpec>, shown: impl Fn(ImageProgress), work: impl Future<Output = T>) -> T {
        let mut rx = self.progress(image);
        if rx.borrow().as_ref().is_some_and(|p| !p.done) {
            rx.mark_changed();
        }
        let mut last_sent: Option<Instant> = None;
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => {
                    if rx.has_changed().unwrap_or(false) {
                        if let Some(p) = rx.borrow_and_update().clone().filter(|p| p.done) {
                            shown(p);
                        }
                    }
                    return out;
                }
                Ok(()) = rx.changed() => {
                    let Some(p) = rx.borrow_and_update().clone() else { continue };
                    if p.done || last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                        last_sent = Some(Instant::now());
                        shown(p);
                    }
                }
            }
        }
    }

    /// Remove a container of an image its profile's reference moved off.
    pub(super) async fn retire(&self, slot: &Slot, state: &mut State, c: &Container, wanted: &str) {
        match self.backend.remove(&c.id).await {
            Ok(()) => transition(&slot.name, state, State::Absent, &format!("image updated: {} → {}; the next call starts on the new one", short_id(&c.image), short_id(wanted))),
            Err(e) => tracing::warn!(container = slot.name, "cannot remove a container of an outdated image: {e}"),
        }
    }

    /// Profiles of `reference` move to image `id`: each container of
    /// another image goes when it is next idle (see [`Slot::wanted`]).
    /// Returns how many of those still run tools.
    pub async fn retarget(&self, reference: &str, id: &str) -> usize {
        let slots: Vec<Arc<Slot>> = self.slots.iter().filter(|s| s.image.reference == reference).map(|s| s.value().clone()).collect();
        let mut busy = 0;
        for slot in slots {
            // Under the state lock: a start under way (which sets the id it
            // made its container of) finishes first.
            let state = slot.state.lock().await;
            *slot.wanted.lock().unwrap() = Some(id.into());
            let c = state.container().cloned();
            drop(state);
            if let Some(c) = c.filter(|c| slot.outdated(c).is_some()) {
                busy += self.agent_status(&slot, &c).await.is_ok_and(|(running, _)| running > 0) as usize;
            }
        }
        busy
    }
}
