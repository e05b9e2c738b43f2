//! Bringing a profile's container up for a call: single flight under the
//! slot's lock (concurrent first calls wait for one start), resumed if
//! paused, started if absent; warmed ahead of a call; and the tool started
//! in it through the profile's link.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot::{Slot, HISTORY};
use super::state::{transition, Container, State};
use super::{Pool, Seen, Served};
use crate::backend::{ContainerBackend, ContainerSpec, DeviceAsk, LABEL_IMAGE, LABEL_MANAGED, LABEL_MOUNT, LABEL_PROFILE, LABEL_TOKEN, LABEL_VIEW};
use crate::catalog::ImageSpec;
use crate::daemon::call::{CallError, PoolError, StartError, Started};
use crate::daemon::link::{Launch, Target, AGENT_IN_CONTAINER, SOCKET_IN_CONTAINER};
use crate::policy::{Call, Plan, Secs};
use crate::protocol::stages::{now_ns, UpStamps};
use crate::protocol::ImageProgress;

/// How long a new container's agent may take to answer.
const AGENT_START_LIMIT: Duration = Duration::from_secs(20);

/// A fresh agent token: 128 random bits, hex.
fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A container brought up: it, whether its image was fetched (pulled or
/// built) for it, and when each stage of its start ended.
pub(super) struct Brought {
    pub c: Container,
    pub fetched: bool,
    pub up: UpStamps,
}

/// A container made of a profile, not started: it, what it was made of,
/// whether its image was fetched for it, its stamps so far.
pub(super) struct Made {
    pub c: Container,
    pub spec: Arc<crate::backend::ContainerSpec>,
    pub fetched: bool,
    pub up: UpStamps,
}

/// A container ready for one exec. Dropping it ends the request's claim.
pub(super) struct Ready {
    pub target: Target,
    pub served: Served,
    /// The id of the image its container runs.
    pub image: Arc<str>,
    slot: Arc<Slot>,
    /// How its container came up for this call.
    pub up: UpStamps,
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.slot.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<B: ContainerBackend> Pool<B> {
    /// Start a tool for a call of `command` in the container of `image`'s
    /// profile (resumed if paused, started if absent, one start for all
    /// who wait), while `shown` follows a fetch of its image
    /// ([`Pool::with_progress`]). Returns the tool, how its container was
    /// found and the id of the image it runs.
    pub async fn run(&self, image: &Arc<ImageSpec>, command: &str, launch: Launch, shown: impl Fn(ImageProgress)) -> Result<(Started, Served, Arc<str>), CallError> {
        // A container that vanished under us (removed by hand, crashed) is
        // replaced once, transparently.
        let mut replaced = false;
        loop {
            let ready = self.with_progress(image, &shown, self.ensure(image, command)).await?;
            ready.slot.called_by(launch.caller_uid);
            let mut launch = launch.clone();
            launch.spawn.token = ready.target.token.clone();
            match self.start(&ready, launch).await {
                Ok(started) => return Ok((Started { up: ready.up, ..started }, ready.served, ready.image.clone())),
                Err(StartError::Refused(r)) => return Err(r),
                Err(StartError::Unreachable(e)) if !replaced => {
                    tracing::warn!(image = image.name, "agent unreachable ({e}); replacing its container");
                    self.discard(&ready).await;
                    replaced = true;
                }
                Err(StartError::Unreachable(cause)) => return Err(CallError::AgentGone { image: image.name.clone(), cause }),
            }
        }
    }

    /// A running container for this image for a call of `command`: resumed
    /// if paused, started if absent. Concurrent callers of one profile wait
    /// for the same start.
    pub(super) async fn ensure(&self, image: &Arc<ImageSpec>, command: &str) -> Result<Ready, PoolError> {
        let arrived = Instant::now();
        let at = self.now();
        let slot = self.slot(image);
        tracing::Span::current().record("container", slot.name.as_str());
        let mut state = slot.state.lock().await;
        slot.pending.fetch_add(1, Ordering::SeqCst);
        let pool = now_ns();
        let result = self.bring_up(&slot, &mut state, arrived).await;
        let (c, served, up) = match result {
            Ok(x) => x,
            Err(e) => {
                slot.pending.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        let setup = arrived.elapsed().as_secs_f64();
        let mut life = slot.life.lock().unwrap();
        if life.calls.len() >= HISTORY {
            life.calls.pop_front();
        }
        life.calls.push_back(Seen { command: command.to_string(), served, call: Call { at, setup, run: 0.0 } });
        life.open = true;
        life.plan = None;
        // What a cold start of this profile costs: its own measured ones.
        let colds: Vec<Secs> = life.calls.iter().filter(|s| s.served == Served::Cold).map(|s| s.call.setup).collect();
        let cold = if colds.is_empty() { self.cfg.costs.cold } else { colds.iter().sum::<Secs>() / colds.len() as Secs };
        drop(life);
        slot.idle.store(false, Ordering::SeqCst);
        self.cache.lock().unwrap().called(&slot.key, cold);
        let target = Target { id: c.id, name: slot.name.clone(), token: c.token, view: c.view };
        // A start made ahead (on the shim's open) keeps its own pool stamp.
        let up = UpStamps { pool: if up.pool == 0 { pool } else { up.pool }, ..up };
        Ok(Ready { target, served, image: c.image, slot: slot.clone(), up })
    }

    /// Start a tool in the container `ready` holds.
    async fn start(&self, ready: &Ready, launch: Launch) -> Result<Started, StartError> {
        ready.slot.link.start(&*self.backend, &ready.target, launch).await
    }

    /// Make the slot's container run; returns it, how it was found and
    /// when each stage of bringing it up ended.
    async fn bring_up(&self, slot: &Slot, state: &mut State, arrived: Instant) -> Result<(Container, Served, UpStamps), PoolError> {
        let served = |fetched| if fetched { Served::Pulled } else { Served::Cold };
        // An update moved the image: an idle container of the old one makes
        // way now (this call is the only one on its way in), a busy one
        // serves on until it is idle, so no call sees a mix.
        if let Some(c) = state.container().cloned() {
            if let Some(wanted) = slot.outdated(&c) {
                let idle = matches!(state, State::Paused { .. } | State::Created { .. })
                    || (self.agent_status(slot, &c).await.is_ok_and(|(running, _)| running == 0) && slot.pending.load(Ordering::SeqCst) == 1);
                if idle {
                    self.retire(slot, state, &c, &wanted).await;
                }
            }
        }
        match state.clone() {
            State::Warm { c, since, fetched } => {
                if slot.thawed_ahead.lock().unwrap().take().is_some_and(|(id, _)| id == c.id) {
                    // Thawed on its shim's open, for this call most likely.
                    Ok((c, Served::Paused, *slot.brought.lock().unwrap()))
                } else if since > arrived {
                    // Started while this call waited (prewarm on open): the
                    // caller paid for a start, if only part of it.
                    Ok((c, served(fetched), *slot.brought.lock().unwrap()))
                } else {
                    Ok((c, Served::Warm, UpStamps::default()))
                }
            }
            State::Paused { c } => match self.backend.unpause(&c.id).await {
                Ok(()) => {
                    let up = UpStamps { thawed: now_ns(), ..Default::default() };
                    transition(&slot.name, state, State::Warm { c: c.clone(), since: arrived, fetched: false }, "resumed for a call");
                    Ok((c, Served::Paused, up))
                }
                Err(e) => {
                    let _ = self.backend.remove(&c.id).await;
                    transition(&slot.name, state, State::Absent, &format!("cannot resume ({e}); replacing the container"));
                    self.start_for_call(slot, state).await
                }
            },
            State::Absent | State::Created { .. } => self.start_for_call(slot, state).await,
        }
    }

    /// Start the slot's container for the call that waits for it.
    async fn start_for_call(&self, slot: &Slot, state: &mut State) -> Result<(Container, Served, UpStamps), PoolError> {
        let Brought { c, fetched, up } = self.bring(slot, state).await?;
        transition(&slot.name, state, State::Warm { c: c.clone(), since: Instant::now(), fetched }, "started for a call");
        Ok((c, if fetched { Served::Pulled } else { Served::Cold }, up))
    }

    /// Warm a profile ahead of a call that is probably coming, without
    /// counting a call. `plan` (for predictions) bounds what a wrong guess
    /// costs; `None` lets the policy decide once it is idle.
    pub async fn warm_up(&self, image: &Arc<ImageSpec>, plan: Option<Plan>) -> Result<(), PoolError> {
        // An archive package comes with a call (which may ask first), never
        // ahead of one; and a shim opened costs the engine nothing unless
        // its package is known to be here (`ls -l`, `cat *` of the mount).
        if image.package.is_some() && !self.builds.present(&image.reference) {
            return Ok(());
        }
        // Seen here once, and perhaps removed since (`odfs gc`): a look
        // for these few only.
        if image.package.is_some() && self.backend.image_id(&image.reference).await?.is_none() {
            self.builds.gone(&image.reference);
            return Ok(());
        }
        let slot = self.slot(image);
        // Every exec opens its shim: the warm path must not wait on the lock.
        if let Ok(state) = slot.state.try_lock() {
            if matches!(*state, State::Warm { .. }) {
                return Ok(());
            }
        }
        let mut state = slot.state.lock().await;
        let pool = now_ns();
        let why = if plan.is_some() { "for a predicted call" } else { "for a shim opened" };
        match state.clone() {
            State::Warm { .. } => return Ok(()),
            // A prediction leaves a frozen container to its own plan.
            State::Paused { .. } if plan.is_some() => return Ok(()),
            // Thawed now, on its shim's open, while the caller's launcher
            // starts: the call then finds it running. A thaw that fails is
            // left to the call, which replaces the container.
            State::Paused { c } => {
                if self.backend.unpause(&c.id).await.is_err() {
                    return Ok(());
                }
                *slot.brought.lock().unwrap() = UpStamps { pool, thawed: now_ns(), ..Default::default() };
                *slot.thawed_ahead.lock().unwrap() = Some((c.id.clone(), Instant::now()));
                transition(&slot.name, &mut state, State::Warm { c, since: Instant::now(), fetched: false }, "resumed for a shim opened");
                return Ok(());
            }
            State::Absent | State::Created { .. } => {
                let Brought { c, fetched, up } = self.bring(&slot, &mut state).await?;
                *slot.brought.lock().unwrap() = UpStamps { pool, ..up };
                transition(&slot.name, &mut state, State::Warm { c, since: Instant::now(), fetched }, &format!("pre-warmed {why}"));
            }
        }
        // Without a plan of its own, the policy decides afresh once it is
        // idle (an old plan may have expired already).
        slot.life.lock().unwrap().plan = plan;
        Ok(())
    }

    /// The container behind `ready` stopped answering: forget and remove it
    /// so the next `ensure` starts a fresh one.
    async fn discard(&self, ready: &Ready) {
        let mut state = ready.slot.state.lock().await;
        if matches!(&*state, State::Warm { c, .. } if c.id == ready.target.id) {
            let _ = self.backend.remove(&ready.target.id).await;
            transition(&ready.slot.name, &mut state, State::Absent, "agent unreachable; replacing the container");
        }
    }

    /// Start the slot's container: make it, then launch it.
    pub(super) async fn start_container(&self, slot: &Slot) -> Result<Brought, PoolError> {
        let made = self.make_container(slot, false).await?;
        self.launch(slot, made).await
    }

    /// Make the slot's container, not started: fetch its image if it must,
    /// prepare its view, create it.
    /// `ahead`: made ahead of any call, labelled so (gc leaves it alone).
    pub(super) async fn make_container(&self, slot: &Slot, ahead: bool) -> Result<Made, PoolError> {
        let image = &slot.image;
        let pulled = self.fetch(image, &slot.progress).await?;
        // The container is made of the image's id, not its name: an update
        // that moves the name meanwhile cannot give it another image.
        let image_id: Arc<str> = match self.backend.image_info(&image.reference).await? {
            Some(i) if !i.id.is_empty() => i.id.into(),
            _ => image.reference.as_str().into(),
        };
        *slot.wanted.lock().unwrap() = Some(image_id.clone());
        let token = new_token().map_err(|e| PoolError::setup("make an agent token", e))?;
        let mut labels = HashMap::from([
            (LABEL_TOKEN.to_string(), token.clone()),
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_MOUNT.to_string(), self.cfg.mount_id.clone()),
            (LABEL_PROFILE.to_string(), slot.key.clone()),
            (LABEL_IMAGE.to_string(), image.name.clone()),
        ]);
        if ahead {
            labels.insert(crate::backend::LABEL_AHEAD.to_string(), "true".to_string());
        }
        let mut spec = ContainerSpec {
            name: slot.name.clone(),
            image: image_id.to_string(),
            entrypoint: vec![AGENT_IN_CONTAINER.into(), "--socket".into(), SOCKET_IN_CONTAINER.into()],
            labels,
            network: image.network.as_str().to_string(),
            cap_add: image.container_caps(),
            binds: vec![],
            env: vec![format!("{}={token}", crate::protocol::TOKEN_ENV)],
            loopback_only: false,
            limits: image.limits,
            preload: None,
            read_only_root: false,
            tmpfs: vec![],
            hostname: None,
            host_namespaces: false,
            devices: image.devices.iter().filter(|d| !crate::catalog::is_cdi_name(d)).cloned().collect(),
            device_requests: image
                .devices
                .iter()
                .filter(|d| crate::catalog::is_cdi_name(d))
                .map(|d| DeviceAsk::Cdi(d.clone()))
                .chain(image.gpus.clone().map(DeviceAsk::Gpus))
                .collect(),
        };
        let view = slot.link.prepare(&self.setup(), image, &mut spec).await?;
        spec.labels.insert(LABEL_VIEW.to_string(), view.to_label());
        let mut up = UpStamps { prepared: now_ns(), ..Default::default() };
        let id = self.backend.create(&spec).await?;
        up.created = now_ns();
        let c = Container { id, token, view: Arc::new(view), image: image_id };
        Ok(Made { c, spec: Arc::new(spec), fetched: pulled, up })
    }

    /// Start a container made of the slot's profile and wait for its agent.
    pub(super) async fn launch(&self, slot: &Slot, made: Made) -> Result<Brought, PoolError> {
        let Made { mut c, spec, fetched, mut up } = made;
        let image = &slot.image;
        c.id = self.backend.start(&c.id, &spec).await?;
        up.launched = now_ns();
        slot.link.started();
        if slot.link.probe(&*self.backend, &c.id, &c.token, AGENT_START_LIMIT).await.is_err() {
            let _ = self.backend.remove(&c.id).await;
            return Err(PoolError::AgentSilent { image: image.reference.clone(), limit_s: AGENT_START_LIMIT.as_secs(), container: slot.name.clone() });
        }
        up.ready = now_ns();
        tracing::debug!(container = slot.name, image = image.reference, ms = (up.ready - up.prepared) / 1_000_000, "agent answers");
        if let Some(store) = &self.store {
            store.image_seen(&c.image, &image.reference);
        }
        Ok(Brought { c, fetched, up })
    }

    /// Bring the slot's container up from `state`, absent or made ahead:
    /// one made ahead is started (and, if it cannot be, made again).
    pub(super) async fn bring(&self, slot: &Slot, state: &mut State) -> Result<Brought, PoolError> {
        if let State::Created { c, .. } = state.clone() {
            // Made of an image an update has moved since: made again. (A
            // host whose top-level directories changed is another profile,
            // hence another slot: this one's container waits out its hour.)
            if slot.outdated(&c).is_some() {
                let _ = self.backend.remove(&c.id).await;
                transition(&slot.name, state, State::Absent, "made ahead of an image updated since; making another");
            }
        }
        if let State::Created { c, spec, .. } = state.clone() {
            let t = now_ns();
            let made = Made { c: c.clone(), spec, fetched: false, up: UpStamps { prepared: t, created: t, ..Default::default() } };
            match self.launch(slot, made).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    let _ = self.backend.remove(&c.id).await;
                    transition(&slot.name, state, State::Absent, &format!("cannot start the container made ahead ({e}); making another"));
                }
            }
        }
        self.create(slot).await
    }
}
