//! The lifecycle: the reaper's step for each profile as its plan says
//! (freeze, remove, unload before a pre-warm, pre-warm), the plans, and
//! the idle budget that removes the least valuable idle containers when
//! they hold too much or memory is short.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot::{Slot, ENGINE_OVERHEAD};
use super::state::{transition, State};
use super::Pool;
use crate::backend::ContainerBackend;
use crate::catalog::{ImageSpec, KeepAlive};
use crate::daemon::call::PoolError;
use crate::policy::{self, Action, Call, Phase, Plan, Policy, Secs};

/// Containers made ahead of a call at most, on one mount.
const MADE_AHEAD: usize = 32;
/// How long a container made ahead waits for a call.
const CREATED_KEEP: Duration = Duration::from_secs(3600);
/// How long a container thawed on its shim's open is left running for the
/// call that opened it.
const THAW_GRACE: Duration = Duration::from_secs(2);

/// At most one idle container shed per this while memory is short.
const SHED_EVERY: Duration = Duration::from_secs(3);

impl<B: ContainerBackend> Pool<B> {
    /// The policy for an image: its catalog `keep_alive`, or the daemon's.
    pub fn policy_for(&self, image: &ImageSpec) -> Policy {
        match image.keep_alive {
            KeepAlive::Auto => self.cfg.policy,
            KeepAlive::Fixed(d) => Policy::Fixed(d.as_secs_f64()),
        }
    }

    /// One step of the lifecycle for every profile, as its plan says:
    /// freeze, remove, unload before a pre-warm, pre-warm. A container with
    /// a tool running, or an exec on its way in, is never touched.
    pub async fn reap(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        for slot in &slots {
            slot.idle.store(false, Ordering::SeqCst);
            if slot.pending.load(Ordering::SeqCst) > 0 {
                continue;
            }
            let Ok(mut state) = slot.state.try_lock() else { continue };
            if let Err(e) = self.step(slot, &mut state).await {
                tracing::warn!(container = slot.name, "lifecycle step failed: {e}");
            }
            // Removed by its own plan this tick: no longer idle.
            if *state == State::Absent {
                slot.idle.store(false, Ordering::SeqCst);
                if self.dropped(slot) {
                    drop(state);
                    self.forget(slot);
                }
            }
        }
        self.keep_within_budget(&slots).await;
    }

    async fn step(&self, slot: &Slot, state: &mut State) -> Result<(), PoolError> {
        let now = self.now();
        if let Some(c) = state.container().cloned() {
            if let Some(wanted) = slot.outdated(&c) {
                let idle = matches!(state, State::Paused { .. } | State::Created { .. }) || self.agent_status(slot, &c).await.is_ok_and(|(running, _)| running == 0);
                if idle && slot.pending.load(Ordering::SeqCst) == 0 {
                    self.retire(slot, state, &c, &wanted).await;
                    return Ok(());
                }
            }
        }
        // Only a warm container's agent answers; one that does not is gone.
        let (running, idle_ms) = match state.clone() {
            State::Warm { c, .. } => match self.agent_status(slot, &c).await {
                Ok(s) => s,
                Err(_) => {
                    self.backend.remove(&c.id).await?;
                    transition(&slot.name, state, State::Absent, "agent unreachable; container removed");
                    return Ok(());
                }
            },
            State::Paused { .. } | State::Absent => (0, 0),
            // Made ahead: kept while its profile is in the catalog, for
            // at most CREATED_KEEP.
            State::Created { c, since, .. } => {
                if self.dropped(slot) || since.elapsed() >= CREATED_KEEP {
                    self.backend.remove(&c.id).await?;
                    let why = if self.dropped(slot) { "its image left the catalog" } else { "not called since it was made" };
                    transition(&slot.name, state, State::Absent, &format!("made ahead: removed ({why})"));
                    return Ok(());
                }
                (0, 0)
            }
        };
        // An exec on its way in counts as a running tool.
        let phase = super::state::phase(state, running.saturating_add(slot.pending.load(Ordering::SeqCst)));
        let plan = match phase {
            Phase::Busy => None,
            Phase::Idle => {
                slot.idle.store(true, Ordering::SeqCst);
                Some(self.idle_plan(slot, now - idle_ms as f64 / 1000.0))
            }
            Phase::Paused => {
                slot.idle.store(true, Ordering::SeqCst);
                // Taken over frozen, its plan stayed with the daemon that
                // made it: a new one counts its idle time from now.
                let kept = slot.life.lock().unwrap().plan.clone();
                kept.or_else(|| Some(self.idle_plan(slot, now)))
            }
            Phase::Absent => slot.life.lock().unwrap().plan.clone(),
        };
        let reason = plan.as_ref().map_or("no plan", |p| p.reason.as_str());
        let action = match policy::decide(phase, plan.as_ref(), now) {
            // Nothing of a profile the catalog dropped is kept idle or brought back.
            _ if self.dropped(slot) && matches!(phase, Phase::Idle | Phase::Paused) => Action::Remove,
            Action::Prewarm if self.dropped(slot) => Action::Nothing,
            action => action,
        };
        let reason = if self.dropped(slot) { "its image left the catalog" } else { reason };
        match (action, state.clone()) {
            // Thawed on its shim's open just now: its call is on the way.
            (Action::Pause, State::Warm { c, .. }) if slot.thawed_ahead.lock().unwrap().as_ref().is_some_and(|(id, at)| *id == c.id && at.elapsed() < THAW_GRACE) => {}
            (Action::Pause, State::Warm { c, .. }) => {
                self.backend.pause(&c.id).await?;
                *slot.thawed_ahead.lock().unwrap() = None;
                transition(&slot.name, state, State::Paused { c }, &format!("idle: paused ({reason})"));
            }
            (Action::Remove, State::Warm { c, .. } | State::Paused { c }) => {
                self.backend.remove(&c.id).await?;
                transition(&slot.name, state, State::Absent, &format!("idle: removed ({reason})"));
                if !self.dropped(slot) {
                    self.make_ahead(slot, state).await;
                }
            }
            (Action::Prewarm, State::Absent | State::Created { .. }) => {
                // The periodic predictor expects its call now: a container
                // it brings back is not the next to evict.
                self.cache.lock().unwrap().expected(&slot.key, 1.0 - policy::cache::COVERED);
                let c = self.bring(slot, state).await?.c;
                transition(&slot.name, state, State::Warm { c, since: Instant::now(), fetched: false }, &format!("pre-warmed before the next expected call ({reason})"));
                if let Some(p) = slot.life.lock().unwrap().plan.as_mut() {
                    p.prewarm_at = None;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Make the slot's next container ahead, not started, once its keep-alive
    /// removed the last: its next call then only starts it (the view, the
    /// engine's create: a seventh of a cold call). It holds no memory,
    /// only a few kilobytes of the engine's disk; at most [`MADE_AHEAD`]
    /// at a time, never by fetching an image, and only for a profile with
    /// calls in its history.
    async fn make_ahead(&self, slot: &Slot, state: &mut State) {
        let made: usize = self.slots.iter().filter(|s| s.state.try_lock().is_ok_and(|st| matches!(*st, State::Created { .. }))).count();
        if made >= MADE_AHEAD || slot.life.lock().unwrap().calls.is_empty() {
            return;
        }
        if !matches!(self.backend.image_info(&slot.image.reference).await, Ok(Some(_))) {
            return;
        }
        match self.make_container(slot, true).await {
            Ok(m) => transition(&slot.name, state, State::Created { c: m.c, spec: m.spec, since: Instant::now() }, "made ahead of its next call"),
            Err(e) => tracing::debug!(container = slot.name, "cannot make a container ahead: {e}"),
        }
    }

    /// The plan for an idle container whose last tool ended at `end`: made
    /// when a call has just finished (or none exists yet), kept otherwise.
    fn idle_plan(&self, slot: &Slot, end: Secs) -> Plan {
        let mut life = slot.life.lock().unwrap();
        if life.open {
            life.open = false;
            if let Some(last) = life.calls.back_mut() {
                last.call.run = (end - last.call.at - last.call.setup).max(0.0);
            }
            life.plan = None;
        }
        if life.plan.is_none() {
            let calls: Vec<Call> = life.calls.iter().map(|s| s.call.clone()).collect();
            let pause_after = slot.image.pause_after.map(|d| d.as_secs_f64());
            let policy = self.policy_for(&slot.image);
            let mut plan = policy::plan_with(policy, pause_after, &calls, end, &self.cfg.costs);
            // Under a budget `auto` keeps it until the budget needs room.
            if self.cfg.idle.budget.limits() && policy == Policy::Auto {
                policy::cache::unbounded(&mut plan, end, self.cfg.idle.max_age, pause_after);
            }
            life.plan = Some(plan);
        }
        life.plan.clone().expect("set above")
    }

    /// The idle containers the reaper saw on this tick, as the budget sees
    /// them: what their cgroup holds, and the engine's process beside each
    /// (outside the cgroup; see [`ENGINE_OVERHEAD`]); what the predictors
    /// expect of each one's next call.
    fn idle_now(&self, slots: &[Arc<Slot>]) -> Vec<policy::cache::Idle<String>> {
        let now = self.now();
        slots.iter().filter(|s| s.idle.load(Ordering::SeqCst)).map(|s| self.as_idle(s, now)).collect()
    }

    fn as_idle(&self, slot: &Slot, now: Secs) -> policy::cache::Idle<String> {
        let prewarm_in = slot.life.lock().unwrap().plan.as_ref().and_then(|p| p.prewarm_at).map(|t| t - now);
        policy::cache::Idle {
            key: slot.key.clone(),
            memory: slot.held(),
            expect: policy::cache::expectation(prewarm_in, self.cfg.costs.cold),
            owner: slot.owner(),
        }
    }

    /// The sequence predictor expects a call of `image`'s tool with
    /// probability `p`: weigh that in its container's value, and say whether
    /// a prediction may start it within the idle budget
    /// (`policy::cache::Cache::admits`).
    pub fn expected(&self, image: &ImageSpec, p: f64) -> bool {
        let key = self.profile_key(image);
        self.cache.lock().unwrap().expected(&key, p);
        if !self.cfg.idle.budget.limits() {
            return true;
        }
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        let idle = self.idle_now(&slots);
        let memory = self.slots.get(&key).map_or(ENGINE_OVERHEAD, |s| s.held());
        self.cache.lock().unwrap().admits(&policy::cache::Idle::new(key, memory), &idle, &self.cfg.idle.budget)
    }

    /// Remove idle containers, least valuable first, until the rest fit the
    /// idle budget, and one more per tick while memory is short. A container
    /// with a tool running, or one on its way in, is never touched: each is
    /// checked again under its lock before it goes.
    async fn keep_within_budget(&self, slots: &[Arc<Slot>]) {
        // Pressure averages over 10 s (PSI avg10): one container is shed per
        // SHED_EVERY while it lasts, not one per tick of a lagging average.
        let pressure = self.memory_pressure() && self.last_shed.lock().unwrap().is_none_or(|t| t.elapsed() >= SHED_EVERY);
        if !self.cfg.idle.budget.limits() && !pressure {
            return;
        }
        self.cache.lock().unwrap().retain(|k| slots.iter().any(|s| &s.key == k));
        let idle = self.idle_now(slots);
        let victims = self.cache.lock().unwrap().victims(&idle, &self.cfg.idle.budget, usize::from(pressure));
        if pressure && !victims.is_empty() {
            *self.last_shed.lock().unwrap() = Some(Instant::now());
        }
        for key in victims {
            let Some(slot) = slots.iter().find(|s| s.key == key) else { continue };
            let Ok(mut state) = slot.state.try_lock() else { continue };
            if slot.pending.load(Ordering::SeqCst) > 0 {
                continue;
            }
            let c = match state.clone() {
                State::Paused { c } => c,
                State::Warm { c, .. } => match self.agent_status(slot, &c).await {
                    Ok((0, _)) if slot.pending.load(Ordering::SeqCst) == 0 => c,
                    _ => continue,
                },
                // Made ahead, it holds no memory to give back.
                State::Absent | State::Created { .. } => continue,
            };
            // Under pressure alone a warm container is frozen first (its
            // pages can be reclaimed, its CPU is given back); frozen and
            // still least valuable, it goes on a later tick.
            let within_budget = !self.over_budget(&idle);
            if pressure && within_budget && matches!(*state, State::Warm { .. }) {
                match self.backend.pause(&c.id).await {
                    Ok(()) => {
                        *slot.thawed_ahead.lock().unwrap() = None;
                        transition(&slot.name, &mut state, State::Paused { c }, "memory pressure: paused, the least valuable idle");
                    }
                    Err(e) => tracing::warn!(container = slot.name, "could not pause an idle container: {e}"),
                }
                continue;
            }
            let why = if pressure && within_budget {
                format!("memory pressure: removed, the least valuable of {} idle", idle.len())
            } else {
                format!("idle budget: removed, the least valuable of {} idle", idle.len())
            };
            match self.backend.remove(&c.id).await {
                Ok(()) => {
                    slot.idle.store(false, Ordering::SeqCst);
                    if let Some(i) = idle.iter().find(|i| i.key == key) {
                        self.cache.lock().unwrap().evicted(i);
                    }
                    let mut life = slot.life.lock().unwrap();
                    life.plan = policy::cache::after_eviction(life.plan.take(), self.now());
                    drop(life);
                    transition(&slot.name, &mut state, State::Absent, &why);
                }
                Err(e) => tracing::warn!(container = slot.name, "could not remove an idle container: {e}"),
            }
        }
    }

    /// Whether `idle` holds more than the budget allows.
    fn over_budget(&self, idle: &[policy::cache::Idle<String>]) -> bool {
        let b = &self.cfg.idle.budget;
        b.max_idle.is_some_and(|m| idle.len() > m) || b.memory.is_some_and(|m| idle.iter().map(|i| i.memory).sum::<u64>() > m)
    }

    /// Whether the machine is short of memory: the configured pressure file,
    /// or the kernel's PSI and `MemAvailable` under 5% of the RAM.
    fn memory_pressure(&self) -> bool {
        let cfg = &self.cfg.idle;
        let file = cfg.pressure_file.clone().unwrap_or_else(|| PathBuf::from("/proc/pressure/memory"));
        match std::fs::read_to_string(&file) {
            Ok(t) => policy::cache::under_pressure(&t, cfg.pressure_avg10),
            // Without PSI (an older kernel, or it is off): MemAvailable.
            Err(_) if cfg.pressure_file.is_none() => crate::config::mem_available().is_some_and(|(avail, total)| avail < total / 20),
            Err(e) => {
                tracing::warn!(file = %file.display(), "cannot read the memory pressure file: {e}");
                false
            }
        }
    }
}
