//! The container pool: one container per image profile, started once no
//! matter how many callers arrive together (single flight), reused while
//! warm, paused and removed as its keep-alive plan says, adopted after a
//! restart. How a container is reached is its profile's
//! [`Link`](super::link::Link); its states and their changes are
//! [`state`]. Here: the pool, its profiles and what it tells; a profile's
//! place is `slot`, a call's way in `serve`, the images `images`, the
//! lifecycle and idle budget `reaper`, what passes between two runs
//! `handover`.

mod handover;
mod images;
mod packages;
mod reaper;
mod serve;
mod slot;
mod state;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::call::PoolError;
use super::facts::Facts;
use super::link::{Reach, Setup};
use crate::backend::ContainerBackend;
use crate::catalog::ImageSpec;
use crate::policy::{self, Call, Costs, Plan, Policy, Secs};
use crate::protocol::{ContainerPhase, ContainerStatus, PROTOCOL_VERSION};
use crate::view::View;
pub use super::link::InnerCalls;
pub use handover::Handed;
pub use images::short_id;
use slot::Slot;
use state::{transition, State};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Distinguishes this mount's containers from other mounts' on one engine.
    pub mount_id: String,
    /// Parent of the per-container run dirs (root-only).
    pub run_dir: PathBuf,
    pub agent: PathBuf,
    /// How the admin narrows or extends the host view.
    pub view: crate::view::ViewSettings,
    /// Policy for images whose `keep_alive` is `auto`.
    pub policy: Policy,
    pub costs: Costs,
    /// What idle containers may hold, and when memory is short.
    pub idle: policy::cache::IdleConfig,
    /// What tools need to run this mount's tools themselves.
    pub inner: InnerCalls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Warm,
    Paused,
    Cold,
    /// Cold, and the image had to be fetched first (pulled, or built from
    /// its recipe).
    Pulled,
}

impl Served {
    const ALL: [Served; 4] = [Served::Warm, Served::Paused, Served::Cold, Served::Pulled];

    pub fn as_str(self) -> &'static str {
        match self {
            Served::Warm => "warm",
            Served::Paused => "paused",
            Served::Cold => "cold",
            Served::Pulled => "pulled",
        }
    }

    /// The one whose [`Served::as_str`] is `name`; `None` for a name it
    /// never gives (another version's, or a damaged row): the caller says
    /// what such a call counts as.
    pub fn parse(name: &str) -> Option<Served> {
        Served::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// A call as the pool saw it, for the policies and `odfs stats`.
#[derive(Debug, Clone)]
pub struct Seen {
    pub command: String,
    pub served: Served,
    pub call: Call,
}

pub struct Pool<B> {
    backend: Arc<B>,
    /// Where tool ends are recorded (none in logic tests).
    store: Option<crate::catalog::Store>,
    cfg: PoolConfig,
    slots: DashMap<String, Arc<Slot>>,
    /// Origin of the policies' clock.
    epoch: Instant,
    /// The agent as a tar, for engines it is copied into.
    archive: std::sync::OnceLock<bytes::Bytes>,
    /// The host's top-level directories and the images' facts.
    facts: Facts,
    /// The idle containers' priorities within the idle budget.
    cache: Mutex<policy::cache::Cache<String>>,
    /// When memory pressure last shed a container.
    last_shed: Mutex<Option<Instant>>,
    /// The profiles the catalog names now (`None`: not told yet, all are).
    listed: Mutex<Option<(std::collections::HashSet<String>, bool)>>,
    /// The archive packages' builds.
    builds: packages::Builds,
}

impl<B: ContainerBackend> Pool<B> {
    pub fn new(backend: Arc<B>, cfg: PoolConfig, store: Option<crate::catalog::Store>) -> Pool<B> {
        Pool {
            backend,
            store,
            cfg,
            slots: DashMap::new(),
            epoch: Instant::now(),
            archive: Default::default(),
            facts: Facts::default(),
            cache: Mutex::default(),
            last_shed: Mutex::new(None),
            listed: Mutex::new(None),
            builds: Default::default(),
        }
    }

    /// The catalog now names these images, and serves the archive's (whose
    /// images are made per package) or not: a profile of any other keeps
    /// no idle container (the next reaper round removes it) and is never
    /// pre-warmed; its running tools finish where they are.
    pub fn catalog_is<'a>(&self, images: impl Iterator<Item = &'a ImageSpec>, archive: bool) {
        let keys = images.map(|i| self.profile_key(i)).collect();
        *self.listed.lock().unwrap() = Some((keys, archive));
    }

    /// Whether the catalog no longer names the slot's profile.
    fn dropped(&self, slot: &Slot) -> bool {
        let listed = self.listed.lock().unwrap();
        listed.as_ref().is_some_and(|(keys, archive)| !keys.contains(&slot.key) && !(*archive && slot.image.package.is_some()))
    }

    /// What the profiles' links need to set up containers.
    fn setup(&self) -> Setup<'_, B> {
        Setup {
            backend: &*self.backend,
            facts: &self.facts,
            agent: &self.cfg.agent,
            view: &self.cfg.view,
            inner: &self.cfg.inner,
            mount_id: &self.cfg.mount_id,
            archive: &self.archive,
        }
    }

    pub fn mount_id(&self) -> &str {
        &self.cfg.mount_id
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Seconds on the policies' clock.
    pub fn now(&self) -> Secs {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Everything that makes two containers interchangeable.
    pub fn profile_key(&self, image: &ImageSpec) -> String {
        let mut h = Sha256::new();
        let mut caps = image.cap_add.clone();
        caps.sort();
        let user = image.user.as_str();
        // The host's top-level directories are part of the view: when one
        // appears or goes, new calls get a container that has it.
        let text = format!(
            "v{PROTOCOL_VERSION}\0{}\0{}\0{user}\0{}\0{}\0{:?}\0{:?}\0{:?}\0{:?}\0{}\0{:?}\0{:?}",
            image.reference,
            image.network.as_str(),
            caps.join(","),
            self.host_top().join(":"),
            self.cfg.view,
            image.limits,
            image.remote_dirs,
            image.scratch,
            image.gui,
            image.devices,
            image.gpus
        );
        h.update(text.as_bytes());
        h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    /// Where this engine's tools run, which shapes a call's request.
    pub fn reach(&self) -> Reach {
        Reach::of(self.backend.exec_path())
    }

    /// The paths tools run other tools through.
    pub fn inner(&self) -> &InnerCalls {
        &self.cfg.inner
    }

    /// The host's top-level directories, read again only when `/` changed.
    pub fn host_top(&self) -> Arc<Vec<String>> {
        self.facts.host_top()
    }

    /// What a profile's tools see of the host, for `odfs show`: its
    /// container's view, else the one a container would get now (asking
    /// the image, when it is here, what it fills).
    pub async fn view_of(&self, image: &Arc<ImageSpec>) -> Result<Arc<View>, PoolError> {
        let slot = self.slot(image);
        if let Some(c) = slot.state.lock().await.container() {
            return Ok(c.view.clone());
        }
        Ok(Arc::new(slot.link.plan_view(&self.setup(), image).await?))
    }

    /// Every profile's image the pool has seen (the catalog's, and those it
    /// no longer names whose containers may remain).
    pub fn profiles(&self) -> Vec<Arc<ImageSpec>> {
        self.slots.iter().map(|s| s.image.clone()).collect()
    }

    pub async fn status(&self) -> Vec<ContainerStatus> {
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        let now = self.now();
        let mut out = Vec::new();
        for slot in slots {
            let state = slot.state.lock().await.clone();
            let (shown, running, idle_ms) = match &state {
                State::Absent => (ContainerPhase::Absent, 0, 0),
                State::Created { .. } => (ContainerPhase::Created, 0, 0),
                State::Paused { .. } => {
                    // Idle since its last call ended (or it was warmed).
                    let end = slot.life.lock().unwrap().calls.back().map(|s| s.call.end());
                    (ContainerPhase::Paused, 0, end.map_or(0, |e| ((now - e).max(0.0) * 1000.0) as u64))
                }
                State::Warm { c, .. } => match self.agent_status(&slot, c).await {
                    Ok((r, i)) => (ContainerPhase::Warm, r, i),
                    Err(_) => (ContainerPhase::Unreachable, 0, 0),
                },
            };
            let plan = slot.life.lock().unwrap().plan.clone();
            out.push(ContainerStatus {
                image: slot.image.name.clone(),
                container: slot.name.clone(),
                state: shown,
                running_tools: running,
                idle_ms,
                next: state::next_action(plan.as_ref(), shown, running, now),
                exec_path: slot.link.path(),
                // One made ahead holds no memory: it has no process.
                memory: if matches!(shown, ContainerPhase::Absent | ContainerPhase::Created) { 0 } else { slot.held() },
            });
        }
        out
    }

    /// The idle budget and what idle containers hold of it, in a line.
    pub fn budget_line(&self, containers: &[ContainerStatus]) -> String {
        let idle: Vec<&ContainerStatus> = containers.iter().filter(|c| c.running_tools == 0 && matches!(c.state, ContainerPhase::Warm | ContainerPhase::Paused)).collect();
        let held: u64 = idle.iter().map(|c| c.memory).sum();
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
        let b = &self.cfg.idle.budget;
        let count = b.max_idle.map_or(format!("{} idle containers", idle.len()), |m| format!("{} of at most {m} idle containers", idle.len()));
        let memory = b.memory.map_or(format!("{} held", mib(held)), |m| format!("{} of {} held", mib(held), mib(m)));
        let age = self.cfg.idle.max_age.map_or("no age limit".to_string(), |a| format!("removed after {} idle", policy::format_secs(a)));
        format!("{count}, {memory}; {age}")
    }

    /// Remove an image's container now (`odfs stop`). One running tools is
    /// left alone unless `force`. Returns whether there was one.
    pub async fn stop(&self, image: &ImageSpec, force: bool) -> Result<bool, PoolError> {
        let Some(slot) = self.slots.get(&self.profile_key(image)).map(|s| s.value().clone()) else { return Ok(false) };
        let mut state = slot.state.lock().await;
        let c = match state.clone() {
            State::Absent => return Ok(false),
            State::Paused { c } | State::Created { c, .. } => c,
            State::Warm { c, .. } => {
                if let Ok((running, _)) = self.agent_status(&slot, &c).await {
                    if running > 0 && !force {
                        return Err(PoolError::Busy { running, image: image.name.clone() });
                    }
                }
                c
            }
        };
        self.backend.remove(&c.id).await?;
        transition(&slot.name, &mut state, State::Absent, if force { "stopped by odfs stop --force" } else { "stopped by odfs stop" });
        slot.life.lock().unwrap().plan = None;
        Ok(true)
    }

    /// Executables on an image's PATH (see `ContainerBackend::executables`).
    pub async fn executables(&self, reference: &str) -> Result<Vec<String>, PoolError> {
        Ok(self.backend.executables(reference, &self.cfg.mount_id).await?)
    }

    pub async fn local_images(&self) -> Result<Vec<String>, PoolError> {
        Ok(self.backend.local_images().await?)
    }

    /// The state of an image's container, without waiting (FUSE threads ask):
    /// `starting` while someone holds its lock to start or change it.
    pub fn shown(&self, image: &ImageSpec) -> ContainerPhase {
        let Some(slot) = self.slots.get(&self.profile_key(image)).map(|s| s.value().clone()) else { return ContainerPhase::Absent };
        let shown = match slot.state.try_lock() {
            Ok(s) => state::shown(&s),
            Err(_) => ContainerPhase::Starting,
        };
        shown
    }

    /// Every remembered call, by profile image, for `odfs stats`.
    pub fn history(&self) -> Vec<(String, Vec<Seen>, Option<Plan>)> {
        self.slots
            .iter()
            .map(|s| {
                let life = s.life.lock().unwrap();
                (s.image.name.clone(), life.calls.iter().cloned().collect(), life.plan.clone())
            })
            .collect()
    }
}
