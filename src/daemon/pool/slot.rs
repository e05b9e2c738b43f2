//! A profile's place in the pool, [`Slot`]: its container's state behind
//! one lock, its calls, the execs on their way in, what its container
//! holds and what its agent last said; found by profile, and forgotten
//! once the catalog dropped it and nothing is left.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::state::{Container, State};
use super::{Pool, Seen};
use crate::backend::ContainerBackend;
use crate::catalog::ImageSpec;
use crate::daemon::link::Link;
use crate::policy::Plan;

/// Calls remembered per profile.
pub(super) const HISTORY: usize = 500;

/// What the engine keeps beside each running container, outside its
/// cgroup, when it cannot be measured (a remote engine, before the first
/// status): containerd's shim process, 12 MiB of proportional set with
/// Docker 20.10 on the reference machine. Measured, it is less per
/// container with many running, as the shims share their code pages.
pub(super) const ENGINE_OVERHEAD: u64 = 12 << 20;

/// A profile's history and what the policy decided for its idle period.
#[derive(Debug, Default)]
pub(super) struct Life {
    pub(super) calls: std::collections::VecDeque<Seen>,
    /// The last call's end is not known yet (the agent reports it idle).
    pub(super) open: bool,
    pub(super) plan: Option<Plan>,
}

/// A failed pull (or build) of the slot's image: callers get its message
/// until `retry_at`, and each failure in a row waits longer.
#[derive(Debug, Clone)]
pub(super) struct PullFailure {
    pub(super) retry_at: std::time::Instant,
    pub(super) message: String,
    pub(super) attempts: u32,
}

/// One image profile's container.
/// [`Slot::owner`] before any call.
pub const NO_OWNER: u32 = u32::MAX;
/// [`Slot::owner`] of a container two users called.
pub const SHARED: u32 = u32::MAX - 1;

pub struct Slot {
    pub image: Arc<ImageSpec>,
    pub name: String,
    pub(super) key: String,
    pub(super) state: tokio::sync::Mutex<State>,
    pub(super) life: Mutex<Life>,
    /// The last failed pull: until when not to try again, why, how often.
    pub(super) pull_failure: Mutex<Option<PullFailure>>,
    /// Exec requests between "container ready" and "tool started": the agent
    /// does not count them yet, so the reaper must not remove the container.
    pub(super) pending: AtomicU32,
    /// The fetch of its image (pull or build) as it goes, for every caller
    /// that waits on it.
    pub(super) progress: crate::backend::ProgressTx,
    /// The way to its container's agent.
    pub(super) link: Link,
    /// What its container's cgroup held at the last status (bytes; 0
    /// unknown).
    pub(super) memory: AtomicU64,
    /// What the engine's process beside it held then (0: not measured).
    pub(super) beside: AtomicU64,
    /// The reaper saw it idle (warm or frozen, no tool) on its last tick.
    pub(super) idle: AtomicBool,
    /// Whose calls keep it (the idle budget's share per user): the one uid
    /// that called it, [`NO_OWNER`] before any call, [`SHARED`] once two
    /// users did (a container others use is no one's to be charged for).
    pub(super) owner: std::sync::atomic::AtomicU32,
    /// The image id its containers should run, once `odfs update` moved
    /// its reference: a container of another one is replaced when it is
    /// next idle (its running tools finish where they are).
    pub(super) wanted: Mutex<Option<Arc<str>>>,
    /// When each stage of its container's last start ended: what a call
    /// that waited on a start made ahead of it (on a shim's open) reports.
    pub(super) brought: Mutex<crate::protocol::stages::UpStamps>,
    /// The container thawed ahead of a call (on its shim's open), and
    /// when, until a call comes: that call counts as served paused, and the
    /// reaper leaves it running for a moment.
    pub(super) thawed_ahead: Mutex<Option<(String, std::time::Instant)>>,
}

impl Slot {
    /// `uid` called it: its owner if no one else ever did.
    pub(super) fn called_by(&self, uid: u32) {
        use std::sync::atomic::Ordering::SeqCst;
        let _ = self.owner.fetch_update(SeqCst, SeqCst, |o| match o {
            NO_OWNER => Some(uid),
            o if o == uid || o == SHARED => None,
            _ => Some(SHARED),
        });
    }

    /// The uid whose share of the idle budget it counts in, if one.
    pub(super) fn owner(&self) -> Option<u32> {
        Some(self.owner.load(std::sync::atomic::Ordering::SeqCst)).filter(|&o| o != NO_OWNER && o != SHARED)
    }

    /// Its container runs an image its reference no longer names.
    pub(super) fn outdated(&self, c: &Container) -> Option<Arc<str>> {
        self.wanted.lock().unwrap().clone().filter(|w| !c.image.is_empty() && **w != *c.image)
    }

    /// What its container holds, as the idle budget counts it: its cgroup
    /// and the engine's process beside it.
    pub(super) fn held(&self) -> u64 {
        let beside = match self.beside.load(Ordering::Relaxed) {
            0 => ENGINE_OVERHEAD,
            b => b,
        };
        self.memory.load(Ordering::Relaxed) + beside
    }
}

impl<B: ContainerBackend> Pool<B> {
    pub(super) fn slot(&self, image: &Arc<ImageSpec>) -> Arc<Slot> {
        let key = self.profile_key(image);
        self.slots
            .entry(key.clone())
            .or_insert_with(|| {
                let name = format!("odfs-{}-{}-{}", self.cfg.mount_id, image.name, &key[..8]);
                Arc::new(Slot {
                    image: image.clone(),
                    link: Link::new(self.backend.exec_path(), &self.cfg.run_dir, &name),
                    memory: AtomicU64::new(0),
                    beside: AtomicU64::new(0),
                    idle: AtomicBool::new(false),
                    owner: std::sync::atomic::AtomicU32::new(NO_OWNER),
                    wanted: Mutex::new(None),
                    brought: Mutex::default(),
                    thawed_ahead: Mutex::new(None),
                    name,
                    key,
                    state: tokio::sync::Mutex::new(State::Absent),
                    life: Mutex::new(Life::default()),
                    pending: AtomicU32::new(0),
                    pull_failure: Mutex::new(None),
                    progress: tokio::sync::watch::Sender::new(None),
                })
            })
            .clone()
    }

    /// A profile the catalog dropped, once no container is left: gone from
    /// the pool (and `odfs status`). Not while anyone else holds the slot
    /// (a call on its way in): the map and this tick's list are its only
    /// holders, counted under the map's lock, which [`Pool::slot`] clones
    /// under too.
    pub(super) fn forget(&self, slot: &Arc<Slot>) {
        self.slots.remove_if(&slot.key, |_, s| Arc::ptr_eq(s, slot) && Arc::strong_count(s) == 2);
    }

    /// The agent's (running tools, idle ms), or why it does not answer.
    /// Tool ends it reports go to the store.
    pub(super) async fn agent_status(&self, slot: &Slot, c: &Container) -> std::io::Result<(u32, u64)> {
        let s = slot.link.status(&c.token).await?;
        if s.memory > 0 {
            slot.memory.store(s.memory, Ordering::Relaxed);
        }
        if s.beside > 0 {
            slot.beside.store(s.beside, Ordering::Relaxed);
        }
        if let Some(store) = &self.store {
            for f in s.finished {
                store.finish(&slot.name, f.pid, f.status, f.run_ms);
            }
        }
        Ok((s.running, s.idle_ms))
    }
}
