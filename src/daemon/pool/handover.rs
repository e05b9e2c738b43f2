//! What one run of the daemon leaves the next: the containers it hands
//! over on `odfs restart` (export, import), those a new run finds and
//! adopts or removes, those it leaves running at shutdown, and the calls a
//! new run learns its plans from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot::{Slot, HISTORY};
use super::state::{transition, Container, State};
use super::{Pool, Seen, Served};
use crate::backend::ContainerBackend;
use crate::catalog::ImageSpec;
use crate::daemon::call::PoolError;
use crate::policy::Call;
use crate::view::View;

/// A container as one daemon hands it to the next (`odfs restart`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handed {
    pub profile: String,
    pub name: String,
    pub id: String,
    pub token: String,
    pub view: String,
    pub image: String,
    pub paused: bool,
    pub wanted: Option<String>,
}

impl<B: ContainerBackend> Pool<B> {
    /// Learn from calls of an earlier run (oldest first): each profile's
    /// history, so its plan is the one it had before a restart. Times are
    /// moved from the wall clock onto the pool's clock.
    pub fn seed(&self, past: &[(Arc<ImageSpec>, crate::catalog::PastCall)], wall_now_ms: i64) {
        let now = self.now();
        for (image, p) in past {
            // A call served in a way this version does not know is left out
            // rather than guessed: counted as cold it would pass for a cold
            // start in `odfs stats` and in the cold-start cost the plans
            // weigh. The history is a head start only; calls refill it.
            let Some(served) = Served::parse(&p.served) else {
                tracing::debug!(command = p.command, served = p.served, "past call served in an unknown way: left out of the history");
                continue;
            };
            let at = now - (wall_now_ms - p.started_ms) as f64 / 1000.0;
            let call = Call { at, setup: p.setup_us as f64 / 1e6, run: p.run_ms.unwrap_or(0) as f64 / 1000.0 };
            let slot = self.slot(image);
            // The budget's priorities survive a restart too.
            self.cache.lock().unwrap().called(&slot.key, self.cfg.costs.cold);
            let mut life = slot.life.lock().unwrap();
            if life.calls.len() >= HISTORY {
                life.calls.pop_front();
            }
            life.calls.push_back(Seen { command: p.command.clone(), served, call });
        }
    }

    /// Take over this mount's containers left by an earlier daemon: keep the
    /// ones whose profile is still in the catalog and whose agent answers,
    /// remove the rest. No orphans, no duplicates.
    pub async fn adopt(&self, images: &[Arc<ImageSpec>]) -> Result<(), PoolError> {
        let by_key: HashMap<String, &Arc<ImageSpec>> = images.iter().map(|i| (self.profile_key(i), i)).collect();
        for found in self.backend.list(&self.cfg.mount_id).await? {
            if let (true, false, Some(image)) = (found.running, found.paused, by_key.get(&found.profile)) {
                let slot = self.slot(image);
                let mut state = slot.state.lock().await;
                // Handed over by the daemon this one took the mount from.
                if state.container().is_some_and(|c| c.id == found.id) {
                    continue;
                }
                if *state == State::Absent
                    && found.name == slot.name
                    && slot.link.probe(&*self.backend, &found.id, &found.token, Duration::ZERO).await.is_ok()
                {
                    slot.link.started();
                    // Updated while no daemon ran: it moves when next idle.
                    if let Ok(Some(now)) = self.backend.image_info(&image.reference).await {
                        *slot.wanted.lock().unwrap() = Some(now.id.into());
                    }
                    if let Some(store) = &self.store {
                        store.image_seen(&found.image_id, &image.reference);
                    }
                    let c = Container { id: found.id, token: found.token, view: Arc::new(View::from_label(&found.view)), image: found.image_id.into() };
                    transition(&slot.name, &mut state, State::Warm { c, since: Instant::now(), fetched: false }, "adopted from an earlier run");
                    continue;
                }
            }
            tracing::info!(container = found.name, "removing a stale container");
            self.backend.remove(&found.id).await?;
        }
        Ok(())
    }

    /// Every container this pool holds, for a successor that takes the mount
    /// over (`takeover`). Called once nothing else runs: no request, no
    /// reaper step.
    pub async fn export(&self) -> Vec<Handed> {
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        let mut out = Vec::new();
        for slot in slots {
            let state = slot.state.lock().await;
            // One made ahead is not handed over: the successor removes it
            // with what no profile wants, and makes its own.
            let (Some(c), false) = (state.container(), matches!(*state, State::Created { .. })) else { continue };
            out.push(Handed {
                profile: slot.key.clone(),
                name: slot.name.clone(),
                id: c.id.clone(),
                token: c.token.clone(),
                view: c.view.to_label(),
                image: c.image.to_string(),
                paused: matches!(*state, State::Paused { .. }),
                wanted: slot.wanted.lock().unwrap().as_ref().map(|w| w.to_string()),
            });
        }
        out
    }

    /// Take the containers a predecessor handed over, without asking the
    /// engine: those whose profile this catalog still has (the same key,
    /// hence the same agent protocol). Returns how many; the rest are left
    /// to [`Pool::adopt`], which removes what no profile wants.
    pub async fn import(&self, images: &[Arc<ImageSpec>], handed: Vec<Handed>) -> usize {
        let by_key: HashMap<String, &Arc<ImageSpec>> = images.iter().map(|i| (self.profile_key(i), i)).collect();
        let mut taken = 0;
        for h in handed {
            let Some(image) = by_key.get(&h.profile) else { continue };
            let slot = self.slot(image);
            if slot.name != h.name {
                continue;
            }
            let mut state = slot.state.lock().await;
            if *state != State::Absent {
                continue;
            }
            slot.link.started();
            *slot.wanted.lock().unwrap() = h.wanted.map(Into::into);
            let c = Container { id: h.id, token: h.token, view: Arc::new(View::from_label(&h.view)), image: h.image.into() };
            let to = if h.paused { State::Paused { c } } else { State::Warm { c, since: Instant::now(), fetched: false } };
            transition(&slot.name, &mut state, to, "taken over from the previous daemon");
            taken += 1;
        }
        taken
    }

    /// At shutdown: remove idle containers; leave busy ones running (their
    /// tools finish, and the next daemon adopts them).
    pub async fn shutdown(&self) {
        // Never-started scratch containers (scans, image facts) still under
        // way when the daemon stops: nothing will remove them later but the
        // next start, which may never come.
        if let Ok(found) = self.backend.list(&self.cfg.mount_id).await {
            for c in found.iter().filter(|c| c.profile.is_empty()) {
                let _ = self.backend.remove(&c.id).await;
            }
        }
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        for slot in slots {
            let mut state = slot.state.lock().await;
            let c = match state.clone() {
                State::Absent => continue,
                State::Paused { c } | State::Created { c, .. } => {
                    let _ = self.backend.remove(&c.id).await;
                    transition(&slot.name, &mut state, State::Absent, "daemon stopping: removed");
                    continue;
                }
                State::Warm { c, .. } => c,
            };
            if let Ok((running, _)) = self.agent_status(&slot, &c).await {
                if running > 0 {
                    tracing::info!(container = slot.name, running, "tools still running; leaving the container for the next start");
                    continue;
                }
            }
            if let Err(e) = self.backend.remove(&c.id).await {
                tracing::warn!(container = slot.name, "cannot remove: {e}");
            }
            transition(&slot.name, &mut state, State::Absent, "daemon stopping: removed");
        }
    }
}
