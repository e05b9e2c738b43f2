//! The container pool: one container per image profile, started once no
//! matter how many callers arrive together (single flight), reused while
//! warm, removed when idle past its keep-alive, adopted after a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::agent_client;
use crate::backend::{
    Bind, ContainerBackend, ContainerSpec, ExecPath, ImageFacts, LABEL_IMAGE, LABEL_MANAGED, LABEL_MOUNT, LABEL_PROFILE, LABEL_TOKEN, LABEL_VIEW,
};
use crate::view::{RealFs, View};
use crate::catalog::{ImageSpec, KeepAlive, RunAs};
use crate::policy::{self, Action, Call, Costs, Phase, Plan, Policy, Secs};
use crate::protocol::{ContainerStatus, PROTOCOL_VERSION};

/// Where the agent lives inside every container.
pub const AGENT_IN_CONTAINER: &str = "/.odfs/odfs-agent";
const RUN_IN_CONTAINER: &str = "/.odfs/run";
/// The agent's socket inside every container.
pub const SOCKET_IN_CONTAINER: &str = "/.odfs/run/agent.sock";
/// How long a new container's agent may take to answer.
const AGENT_START_LIMIT: Duration = Duration::from_secs(20);

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
    /// What tools need to run this mount's tools themselves.
    pub inner: InnerCalls,
}

/// The host paths a call from inside a container goes through, each at the
/// same path there: the shims, the launcher their `#!` line names, and the
/// control socket it names.
#[derive(Debug, Clone, Default)]
pub struct InnerCalls {
    pub mountpoint: PathBuf,
    pub launcher: PathBuf,
    pub socket: PathBuf,
}


#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error("{0}")]
    Start(String),
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
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Warm => "warm",
            Served::Paused => "paused",
            Served::Cold => "cold",
            Served::Pulled => "pulled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Absent,
    /// Running since `since`; `fetched` if its image was pulled or built
    /// to start it.
    Warm { id: String, since: Instant, fetched: bool },
    /// Frozen by the engine (cgroup freezer): no CPU, resumes in milliseconds.
    Paused { id: String },
}

/// A call as the pool saw it, for the policies and `odfs stats`.
#[derive(Debug, Clone)]
pub struct Seen {
    pub command: String,
    pub served: Served,
    pub call: Call,
}

/// A profile's history and what the policy decided for its idle period.
#[derive(Debug, Default)]
struct Life {
    calls: std::collections::VecDeque<Seen>,
    /// The last call's end is not known yet (the agent reports it idle).
    open: bool,
    plan: Option<Plan>,
}

#[derive(Debug, Clone)]
struct PullFailure {
    retry_at: Instant,
    message: String,
    attempts: u32,
}

/// Wait after a failed pull: 5 s, doubling per failure, at most 5 min.
fn pull_backoff(attempts: u32) -> Duration {
    Duration::from_secs(5u64 << attempts.clamp(1, 7).saturating_sub(1)).min(Duration::from_secs(300))
}

/// A fresh agent token: 128 random bits, hex.
fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Calls remembered per profile.
const HISTORY: usize = 500;

/// One image profile's container.
pub struct Slot {
    pub image: Arc<ImageSpec>,
    pub name: String,
    key: String,
    state: tokio::sync::Mutex<State>,
    life: Mutex<Life>,
    /// The last failed pull: until when not to try again, why, how often.
    pull_failure: Mutex<Option<PullFailure>>,
    /// Exec requests between "container ready" and "tool started": the agent
    /// does not count them yet, so the reaper must not remove the container.
    pending: AtomicU32,
    /// The fetch of its image (pull or build) as it goes, for every caller
    /// that waits on it.
    progress: crate::backend::ProgressTx,
    /// Its container's agent token (see [`crate::agent::TOKEN_ENV`]).
    token: Mutex<String>,
    /// Calls relayed to a remote engine, counted by the daemon: the agent
    /// there cannot be asked cheaply, and every call passes through here.
    relayed: Mutex<Relayed>,
    /// What its container's tools see of the host.
    view: Mutex<Arc<View>>,
}

#[derive(Debug)]
struct Relayed {
    running: u32,
    idle_since: Instant,
    finished: Vec<crate::protocol::Finished>,
}

impl Default for Relayed {
    fn default() -> Relayed {
        Relayed { running: 0, idle_since: Instant::now(), finished: Vec::new() }
    }
}

/// One relayed call in flight: counts as a running tool until dropped.
pub struct RelayedCall {
    slot: Arc<Slot>,
    pid: i32,
    started: Instant,
    status: Option<i32>,
}

impl RelayedCall {
    /// The tool ended with this status (exit code, or 128 + signal).
    pub fn finish(&mut self, status: i32) {
        self.status = Some(status);
    }
}

impl Drop for RelayedCall {
    fn drop(&mut self) {
        let mut r = self.slot.relayed.lock().unwrap();
        r.running -= 1;
        if r.running == 0 {
            r.idle_since = Instant::now();
        }
        let run_ms = self.started.elapsed().as_millis() as u64;
        // A call cut off (daemon stopping, stream lost) counts as killed.
        let status = self.status.unwrap_or(128 + libc::SIGKILL);
        if r.finished.len() < 1000 {
            r.finished.push(crate::protocol::Finished { pid: self.pid, status, run_ms });
        }
    }
}

impl Slot {
    pub fn socket(&self, run_dir: &Path) -> PathBuf {
        run_dir.join(&self.name).join("agent.sock")
    }
}

/// A container ready for one exec. Dropping it ends the request's claim.
pub struct Ready {
    pub socket: PathBuf,
    /// The agent's token, for the spawn request.
    pub token: String,
    /// The container's name (invocations record it).
    pub container: String,
    pub served: Served,
    pub id: String,
    pub exec_path: ExecPath,
    /// What the container's tools see of the host.
    pub view: Arc<View>,
    slot: Arc<Slot>,
}

impl Ready {
    /// A relayed call of pid `pid` (in the container) has started.
    pub fn relayed_call(&self, pid: i32) -> RelayedCall {
        self.slot.relayed.lock().unwrap().running += 1;
        RelayedCall { slot: self.slot.clone(), pid, started: Instant::now(), status: None }
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.slot.pending.fetch_sub(1, Ordering::SeqCst);
    }
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
    /// The host's top-level directories, and the mtime of `/` they were read at.
    host_top: Mutex<(Option<std::time::SystemTime>, Arc<Vec<String>>)>,
    /// [`ImageFacts`] by image reference.
    facts: Mutex<HashMap<String, Arc<ImageFacts>>>,
}

/// The host's name, for containers that do not share its network.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
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
            host_top: Mutex::new((None, Arc::new(vec![]))),
            facts: Mutex::new(HashMap::new()),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn exec_path(&self) -> ExecPath {
        self.backend.exec_path()
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
        let user = match image.user {
            RunAs::Caller => "caller",
            RunAs::Root => "root",
        };
        // The host's top-level directories are part of the view: when one
        // appears or goes, new calls get a container that has it.
        let text = format!(
            "v{PROTOCOL_VERSION}\0{}\0{}\0{user}\0{}\0{}\0{:?}\0{:?}\0{:?}\0{:?}",
            image.reference,
            image.network.as_str(),
            caps.join(","),
            self.host_top().join(":"),
            self.cfg.view,
            image.limits,
            image.remote_dirs,
            image.scratch
        );
        h.update(text.as_bytes());
        h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    fn slot(&self, image: &Arc<ImageSpec>) -> Arc<Slot> {
        let key = self.profile_key(image);
        self.slots
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    image: image.clone(),
                    name: format!("odfs-{}-{}-{}", self.cfg.mount_id, image.name, &key[..8]),
                    key,
                    state: tokio::sync::Mutex::new(State::Absent),
                    life: Mutex::new(Life::default()),
                    pending: AtomicU32::new(0),
                    pull_failure: Mutex::new(None),
                    progress: tokio::sync::watch::Sender::new(None),
                    token: Mutex::new(String::new()),
                    relayed: Mutex::new(Relayed::default()),
                    view: Mutex::new(Arc::new(View::default())),
                })
            })
            .clone()
    }

    /// Learn from calls of an earlier run (oldest first): each profile's
    /// history, so its plan is the one it had before a restart. Times are
    /// moved from the wall clock onto the pool's clock.
    pub fn seed(&self, past: &[(Arc<ImageSpec>, crate::catalog::PastCall)], wall_now_ms: i64) {
        let now = self.now();
        for (image, p) in past {
            let served = match p.served.as_str() {
                "warm" => Served::Warm,
                "paused" => Served::Paused,
                "pulled" => Served::Pulled,
                _ => Served::Cold,
            };
            let at = now - (wall_now_ms - p.started_ms) as f64 / 1000.0;
            let call = Call { at, setup: p.setup_us as f64 / 1e6, run: p.run_ms.unwrap_or(0) as f64 / 1000.0 };
            let slot = self.slot(image);
            let mut life = slot.life.lock().unwrap();
            if life.calls.len() >= HISTORY {
                life.calls.pop_front();
            }
            life.calls.push_back(Seen { command: p.command.clone(), served, call });
        }
    }

    /// A running container for this image for a call of `command`: resumed
    /// if paused, started if absent. Concurrent callers of one profile wait
    /// for the same start.
    pub async fn ensure(&self, image: &Arc<ImageSpec>, command: &str) -> Result<Ready, PoolError> {
        let arrived = Instant::now();
        let at = self.now();
        let slot = self.slot(image);
        let mut state = slot.state.lock().await;
        slot.pending.fetch_add(1, Ordering::SeqCst);
        let result = self.bring_up(&slot, &mut state, arrived).await;
        let (id, served) = match result {
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
        drop(life);
        let token = slot.token.lock().unwrap().clone();
        let view = slot.view.lock().unwrap().clone();
        Ok(Ready {
            socket: slot.socket(&self.cfg.run_dir),
            token,
            container: slot.name.clone(),
            served,
            id,
            exec_path: self.backend.exec_path(),
            view,
            slot: slot.clone(),
        })
    }

    /// Make the slot's container run; returns its id and how it was found.
    async fn bring_up(&self, slot: &Slot, state: &mut State, arrived: Instant) -> Result<(String, Served), PoolError> {
        let served = |fetched| if fetched { Served::Pulled } else { Served::Cold };
        match state.clone() {
            State::Warm { id, since, fetched } => {
                // Started while this call waited (prewarm on open): the caller
                // paid for a start, if only part of it.
                Ok((id, if since > arrived { served(fetched) } else { Served::Warm }))
            }
            State::Paused { id } => match self.backend.unpause(&id).await {
                Ok(()) => {
                    *state = State::Warm { id: id.clone(), since: arrived, fetched: false };
                    Ok((id, Served::Paused))
                }
                Err(e) => {
                    tracing::warn!(container = slot.name, "cannot resume ({e}); replacing the container");
                    let _ = self.backend.remove(&id).await;
                    *state = State::Absent;
                    let (id, fetched) = self.create(slot).await?;
                    *state = State::Warm { id: id.clone(), since: Instant::now(), fetched };
                    Ok((id, served(fetched)))
                }
            },
            State::Absent => {
                let (id, fetched) = self.create(slot).await?;
                *state = State::Warm { id: id.clone(), since: Instant::now(), fetched };
                Ok((id, served(fetched)))
            }
        }
    }

    /// Start the slot's container; returns its id and whether the image was
    /// fetched. An image that just failed to pull (or build) is not tried
    /// again on every call (or shim open): callers get the same error until
    /// the backoff ends.
    async fn create(&self, slot: &Slot) -> Result<(String, bool), PoolError> {
        if let Some(f) = slot.pull_failure.lock().unwrap().clone() {
            let now = Instant::now();
            if now < f.retry_at {
                let wait = (f.retry_at - now).as_secs() + 1;
                return Err(PoolError::Start(format!("{} (next attempt in {wait}s)", f.message)));
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

    /// Warm a profile ahead of a call that is probably coming, without
    /// counting a call. `plan` (for predictions) bounds what a wrong guess
    /// costs; `None` lets the policy decide once it is idle.
    pub async fn warm_up(&self, image: &Arc<ImageSpec>, plan: Option<Plan>) -> Result<(), PoolError> {
        let slot = self.slot(image);
        // Every exec opens its shim: the warm path must not wait on the lock.
        if let Ok(state) = slot.state.try_lock() {
            if !matches!(*state, State::Absent) {
                return Ok(());
            }
        }
        let mut state = slot.state.lock().await;
        if !matches!(*state, State::Absent) {
            return Ok(());
        }
        let (id, fetched) = self.create(&slot).await?;
        *state = State::Warm { id, since: Instant::now(), fetched };
        // Without a plan of its own, the policy decides afresh once it is
        // idle (an old plan may have expired already).
        slot.life.lock().unwrap().plan = plan;
        Ok(())
    }

    /// The container behind `ready` stopped answering: forget and remove it
    /// so the next `ensure` starts a fresh one.
    pub async fn discard(&self, ready: &Ready) {
        let mut state = ready.slot.state.lock().await;
        if matches!(&*state, State::Warm { id, .. } if *id == ready.id) {
            tracing::warn!(container = ready.slot.name, "agent unreachable; replacing the container");
            let _ = self.backend.remove(&ready.id).await;
            *state = State::Absent;
        }
    }

    async fn start_container(&self, slot: &Slot) -> Result<(String, bool), PoolError> {
        let image = &slot.image;
        let pulled = self.fetch(image, &slot.progress).await?;
        let token = new_token().map_err(|e| PoolError::Start(format!("cannot make an agent token: {e}")))?;
        let labels = HashMap::from([
            (LABEL_TOKEN.to_string(), token.clone()),
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_MOUNT.to_string(), self.cfg.mount_id.clone()),
            (LABEL_PROFILE.to_string(), slot.key.clone()),
            (LABEL_IMAGE.to_string(), image.name.clone()),
        ]);
        let mut spec = ContainerSpec {
            name: slot.name.clone(),
            image: image.reference.clone(),
            entrypoint: vec![AGENT_IN_CONTAINER.into(), "--socket".into(), SOCKET_IN_CONTAINER.into()],
            labels,
            network: image.network.as_str().to_string(),
            cap_add: image.container_caps(),
            binds: vec![],
            env: vec![format!("{}={token}", crate::agent::TOKEN_ENV)],
            limits: image.limits,
            preload: None,
            read_only_root: false,
            tmpfs: vec![],
            hostname: None,
            host_namespaces: false,
        };
        let view = match self.backend.exec_path() {
            ExecPath::Fd => {
                let run = self.cfg.run_dir.join(&slot.name);
                make_private_dir(&run).map_err(|e| PoolError::Start(format!("cannot create {}: {e}", run.display())))?;
                let _ = std::fs::remove_file(run.join("agent.sock"));
                let host_top = self.host_top();
                // Fetched just now, so here (or gone again: nothing to keep).
                let facts = self.image_facts(image, &host_top).await?.unwrap_or_default();
                let view = View::plan(&host_top, &facts.filled, &self.cfg.view, &RealFs);
                // The caller's identity reaches the image without writing it:
                // generated account files, bound over the image's.
                let (passwd, group) = super::accounts::seed(&run, &facts)
                    .map_err(|e| PoolError::Start(format!("cannot write the account files in {}: {e}", run.display())))?;
                spec.binds = vec![
                    Bind::plain(self.cfg.agent.clone(), AGENT_IN_CONTAINER, true),
                    Bind::plain(run, RUN_IN_CONTAINER, false),
                    Bind::plain(passwd, "/etc/passwd", true),
                    Bind::plain(group, "/etc/group", true),
                ];
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                for p in &view.host {
                    if crate::view::HOST_READ_ONLY.iter().any(|f| p.as_path() == Path::new(f)) {
                        spec.binds.push(Bind::plain(p.clone(), p.clone(), true));
                        continue;
                    }
                    let follow_host = crate::view::follows_host(&mountinfo, p);
                    if !follow_host {
                        tracing::warn!(
                            path = %p.display(),
                            "the host mount holding this path is private: its submounts and later mounts stay out of containers (make it shared: mount --make-rshared /)"
                        );
                    }
                    spec.binds.push(Bind { source: p.clone(), target: p.clone(), read_only: false, follow_host });
                }
                spec.read_only_root = true;
                spec.tmpfs = vec!["/run".into()];
                // A scratch directory the host view already binds is the host's.
                spec.tmpfs.extend(image.scratch.iter().filter(|p| !view.sees_host(p) && p.as_path() != Path::new("/run")).cloned());
                // The host's processes, IPC and name; else at least its name
                // (on the host's network the engine gives it itself).
                spec.host_namespaces = image.host_namespaces() && !crate::view::proc_hides_pids(&mountinfo);
                if !spec.host_namespaces && image.network != crate::catalog::Network::Host {
                    spec.hostname = host_name();
                }
                // A tool runs the mount's tools as its caller does: through
                // the shims on its PATH, the launcher and the socket.
                let inner = &self.cfg.inner;
                if !inner.mountpoint.as_os_str().is_empty() {
                    spec.entrypoint.extend(["--path-tail".to_string(), inner.mountpoint.display().to_string()]);
                    if !view.sees_host(&inner.mountpoint) {
                        spec.binds.push(Bind { source: inner.mountpoint.clone(), target: inner.mountpoint.clone(), read_only: true, follow_host: true });
                    }
                    for file in [&inner.launcher, &inner.socket] {
                        if !view.sees_host(file) {
                            spec.binds.push(Bind::plain(file.clone(), file.clone(), file == &inner.launcher));
                        }
                    }
                }
                view
            }
            ExecPath::Relay => {
                // Host files do not exist there: the agent is copied in, its
                // socket stays inside, and the relay reaches it from inside.
                spec.preload = Some(self.agent_archive().map_err(|e| PoolError::Start(format!("cannot read the agent {}: {e}", self.cfg.agent.display())))?);
                spec.entrypoint.push("--allow-local-peers".into());
                spec.binds = image.remote_dirs.iter().map(|p| Bind::plain(p.clone(), p.clone(), false)).collect();
                View { host: image.remote_dirs.clone(), filled: vec![] }
            }
        };
        spec.labels.insert(LABEL_VIEW.to_string(), view.to_label());
        let started = Instant::now();
        let id = self.backend.start(&spec).await?;
        *slot.token.lock().unwrap() = token.clone();
        *slot.view.lock().unwrap() = Arc::new(view);
        // A new container has been idle since now (the relayed count; the
        // agent's own starts at zero too).
        slot.relayed.lock().unwrap().idle_since = Instant::now();
        if self.probe(slot, &id, AGENT_START_LIMIT).await.is_err() {
            let _ = self.backend.remove(&id).await;
            return Err(PoolError::Start(format!(
                "the odfs agent did not come up in a container of image {} within {}s (its output: docker logs {})",
                image.reference,
                AGENT_START_LIMIT.as_secs(),
                slot.name
            )));
        }
        tracing::info!(container = slot.name, image = image.reference, ms = started.elapsed().as_millis() as u64, "container started");
        Ok((id, pulled))
    }

    /// The paths tools run other tools through.
    pub fn inner(&self) -> &InnerCalls {
        &self.cfg.inner
    }

    /// The host's top-level directories, read again only when `/` changed.
    pub fn host_top(&self) -> Arc<Vec<String>> {
        let mtime = std::fs::metadata("/").and_then(|m| m.modified()).ok();
        let mut cached = self.host_top.lock().unwrap();
        if cached.0.is_none() || cached.0 != mtime {
            *cached = (mtime, Arc::new(crate::view::host_top_level(Path::new("/"))));
        }
        cached.1.clone()
    }

    /// What an image fills of the host's top-level directories, and its
    /// account files: asked once per image id (a never-started container
    /// is read), then kept.
    /// `None` when the image is not here.
    async fn image_facts(&self, image: &ImageSpec, host_top: &[String]) -> Result<Option<Arc<ImageFacts>>, PoolError> {
        let asked = crate::view::candidates(host_top, &self.cfg.view);
        let Some(id) = self.backend.image_id(&image.reference).await? else { return Ok(None) };
        if let Some(f) = self.facts.lock().unwrap().get(&image.reference) {
            if f.id == id && asked.iter().all(|d| f.asked.contains(d)) {
                return Ok(Some(f.clone()));
            }
        }
        let facts = Arc::new(ImageFacts { id, ..self.backend.image_facts(&image.reference, &asked, &self.cfg.mount_id).await? });
        self.facts.lock().unwrap().insert(image.reference.clone(), facts.clone());
        Ok(Some(facts))
    }

    /// What a profile's tools see of the host, for `odfs show`: its
    /// container's view, else the one a container would get now (asking
    /// the image, when it is here, what it fills).
    pub async fn view_of(&self, image: &Arc<ImageSpec>) -> Result<Arc<View>, PoolError> {
        let slot = self.slot(image);
        if !matches!(*slot.state.lock().await, State::Absent) {
            return Ok(slot.view.lock().unwrap().clone());
        }
        if self.backend.exec_path() == ExecPath::Relay {
            return Ok(Arc::new(View { host: image.remote_dirs.clone(), filled: vec![] }));
        }
        let host_top = self.host_top();
        let filled = self.image_facts(image, &host_top).await?.map(|f| f.filled.clone()).unwrap_or_default();
        Ok(Arc::new(View::plan(&host_top, &filled, &self.cfg.view, &RealFs)))
    }

    /// The agent binary as a tar for `/`: `.odfs/odfs-agent` and an empty,
    /// root-only `.odfs/run` for its socket. Made once.
    fn agent_archive(&self) -> std::io::Result<bytes::Bytes> {
        if let Some(t) = self.archive.get() {
            return Ok(t.clone());
        }
        let agent = std::fs::read(&self.cfg.agent)?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, mode: u32, data: &[u8], kind: tar::EntryType| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            tar.append_data(&mut h, path, data)
        };
        add(".odfs/", 0o755, &[], tar::EntryType::Directory)?;
        add(".odfs/run/", 0o700, &[], tar::EntryType::Directory)?;
        add(".odfs/odfs-agent", 0o755, &agent, tar::EntryType::Regular)?;
        let bytes = bytes::Bytes::from(tar.into_inner()?);
        Ok(self.archive.get_or_init(|| bytes).clone())
    }

    /// Ask a container's agent directly how it is, waiting up to `limit`
    /// for it to answer: over its socket, or through a relay exec.
    async fn probe(&self, slot: &Slot, id: &str, limit: Duration) -> std::io::Result<agent_client::AgentStatus> {
        let token = slot.token.lock().unwrap().clone();
        match self.backend.exec_path() {
            ExecPath::Fd => {
                let socket = slot.socket(&self.cfg.run_dir);
                tokio::task::spawn_blocking(move || agent_client::wait_ready(&socket, &token, limit)).await.map_err(std::io::Error::other)?
            }
            ExecPath::Relay => tokio::time::timeout(limit + Duration::from_secs(5), super::remote::status(&*self.backend, id, token))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer through the engine"))?,
        }
    }

    /// The agent's (running tools, idle ms), or why it does not answer.
    /// Tool ends it reports go to the store.
    async fn agent_status(&self, slot: &Slot) -> std::io::Result<(u32, u64)> {
        let s = match self.backend.exec_path() {
            ExecPath::Fd => {
                let socket = slot.socket(&self.cfg.run_dir);
                let token = slot.token.lock().unwrap().clone();
                tokio::task::spawn_blocking(move || agent_client::status(&socket, &token)).await.map_err(std::io::Error::other)??
            }
            ExecPath::Relay => {
                let mut r = slot.relayed.lock().unwrap();
                let idle_ms = if r.running == 0 { r.idle_since.elapsed().as_millis() as u64 } else { 0 };
                agent_client::AgentStatus { running: r.running, idle_ms, finished: std::mem::take(&mut r.finished) }
            }
        };
        if let Some(store) = &self.store {
            for f in s.finished {
                store.finish(&slot.name, f.pid, f.status, f.run_ms);
            }
        }
        Ok((s.running, s.idle_ms))
    }

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
        for slot in slots {
            if slot.pending.load(Ordering::SeqCst) > 0 {
                continue;
            }
            let Ok(mut state) = slot.state.try_lock() else { continue };
            if let Err(e) = self.step(&slot, &mut state).await {
                tracing::warn!(container = slot.name, "lifecycle step failed: {e}");
            }
        }
    }

    async fn step(&self, slot: &Slot, state: &mut State) -> Result<(), PoolError> {
        let now = self.now();
        let (phase, plan) = match state.clone() {
            State::Warm { id, .. } => {
                let (running, idle_ms) = match self.agent_status(slot).await {
                    Ok(s) => s,
                    Err(_) => {
                        tracing::warn!(container = slot.name, "agent unreachable; removing the container");
                        self.backend.remove(&id).await?;
                        *state = State::Absent;
                        return Ok(());
                    }
                };
                if running > 0 || slot.pending.load(Ordering::SeqCst) > 0 {
                    (Phase::Busy, None)
                } else {
                    (Phase::Idle, Some(self.idle_plan(slot, now - idle_ms as f64 / 1000.0)))
                }
            }
            State::Paused { .. } => (Phase::Paused, slot.life.lock().unwrap().plan.clone()),
            State::Absent => (Phase::Absent, slot.life.lock().unwrap().plan.clone()),
        };
        let reason = plan.as_ref().map_or("no plan", |p| p.reason.as_str());
        match (policy::decide(phase, plan.as_ref(), now), state.clone()) {
            (Action::Pause, State::Warm { id, .. }) => {
                tracing::info!(container = slot.name, reason, "pausing idle container");
                self.backend.pause(&id).await?;
                *state = State::Paused { id };
            }
            (Action::Remove, State::Warm { id, .. } | State::Paused { id }) => {
                tracing::info!(container = slot.name, reason, "removing idle container");
                self.backend.remove(&id).await?;
                *state = State::Absent;
            }
            (Action::Prewarm, State::Absent) => {
                tracing::info!(container = slot.name, reason, "pre-warming before the next expected call");
                let (id, _) = self.create(slot).await?;
                *state = State::Warm { id, since: Instant::now(), fetched: false };
                if let Some(p) = slot.life.lock().unwrap().plan.as_mut() {
                    p.prewarm_at = None;
                }
            }
            _ => {}
        }
        Ok(())
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
            let mut plan = policy::plan(self.policy_for(&slot.image), &calls, end, &self.cfg.costs);
            // The catalog's pause_after overrides the policy's pause tier.
            if let Some(pa) = slot.image.pause_after {
                plan.pause_at = Some(end + pa.as_secs_f64()).filter(|&t| t < plan.remove_at);
            }
            life.plan = Some(plan);
        }
        life.plan.clone().expect("set above")
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
                *slot.token.lock().unwrap() = found.token.clone();
                *slot.view.lock().unwrap() = Arc::new(View::from_label(&found.view));
                if *state == State::Absent && found.name == slot.name && self.probe(&slot, &found.id, Duration::ZERO).await.is_ok() {
                    tracing::info!(container = found.name, "adopted");
                    slot.relayed.lock().unwrap().idle_since = Instant::now();
                    *state = State::Warm { id: found.id, since: Instant::now(), fetched: false };
                    continue;
                }
            }
            tracing::info!(container = found.name, "removing a stale container");
            self.backend.remove(&found.id).await?;
        }
        Ok(())
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
            let id = match state.clone() {
                State::Absent => continue,
                State::Paused { id } => {
                    let _ = self.backend.remove(&id).await;
                    *state = State::Absent;
                    continue;
                }
                State::Warm { id, .. } => id,
            };
            if let Ok((running, _)) = self.agent_status(&slot).await {
                if running > 0 {
                    tracing::info!(container = slot.name, running, "tools still running; leaving the container for the next start");
                    continue;
                }
            }
            if let Err(e) = self.backend.remove(&id).await {
                tracing::warn!(container = slot.name, "cannot remove: {e}");
            }
            *state = State::Absent;
        }
    }

    pub async fn status(&self) -> Vec<ContainerStatus> {
        let slots: Vec<Arc<Slot>> = self.slots.iter().map(|s| s.value().clone()).collect();
        let now = self.now();
        let mut out = Vec::new();
        for slot in slots {
            let state = slot.state.lock().await.clone();
            let (state, running, idle_ms) = match state {
                State::Absent => ("absent", 0, 0),
                State::Paused { .. } => {
                    // Idle since its last call ended (or it was warmed).
                    let end = slot.life.lock().unwrap().calls.back().map(|s| s.call.end());
                    ("paused", 0, end.map_or(0, |e| ((now - e).max(0.0) * 1000.0) as u64))
                }
                State::Warm { .. } => match self.agent_status(&slot).await {
                    Ok((r, i)) => ("warm", r, i),
                    Err(_) => ("unreachable", 0, 0),
                },
            };
            let plan = slot.life.lock().unwrap().plan.clone();
            let next = match (&plan, state, running) {
                (_, _, r) if r > 0 => "busy: kept while tools run".to_string(),
                (None, "absent", _) => "none: starts on the next call".to_string(),
                (None, _, _) => "planned once the current call ends".to_string(),
                (Some(p), st, _) => next_action(p, st, now),
            };
            out.push(ContainerStatus {
                image: slot.image.name.clone(),
                container: slot.name.clone(),
                state: state.into(),
                running_tools: running,
                idle_ms,
                next,
                exec_path: self.exec_path().as_str().to_string(),
            });
        }
        out
    }

    /// Remove an image's container now (`odfs stop`). One running tools is
    /// left alone unless `force`. Returns whether there was one.
    pub async fn stop(&self, image: &ImageSpec, force: bool) -> Result<bool, PoolError> {
        let Some(slot) = self.slots.get(&self.profile_key(image)).map(|s| s.value().clone()) else { return Ok(false) };
        let mut state = slot.state.lock().await;
        let id = match state.clone() {
            State::Absent => return Ok(false),
            State::Paused { id } => id,
            State::Warm { id, .. } => {
                if let Ok((running, _)) = self.agent_status(&slot).await {
                    if running > 0 && !force {
                        return Err(PoolError::Start(format!(
                            "{running} tool(s) still run in the container of image {} (wait, or stop with --force to kill them)",
                            image.name
                        )));
                    }
                }
                id
            }
        };
        self.backend.remove(&id).await?;
        *state = State::Absent;
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

    /// Make sure an image is present: pulled if it is not, built from its
    /// recipe if it cannot be pulled. True if it had to be fetched.
    async fn fetch(&self, image: &ImageSpec, progress: &crate::backend::ProgressTx) -> Result<bool, PoolError> {
        match (self.backend.ensure_image(&image.reference, progress).await, &image.build) {
            (Err(crate::backend::BackendError::ImageMissing { reason, .. }), Some(recipe)) => {
                tracing::info!(image = image.reference, "cannot pull ({reason}); building it from its recipe");
                self.backend.build_image(&image.reference, recipe, progress).await?;
                Ok(true)
            }
            (result, _) => Ok(result?),
        }
    }

    /// `odfs pull`: fetch an image now, with progress on its profile's
    /// channel as when a call fetches it.
    pub async fn pull(&self, image: &Arc<ImageSpec>) -> Result<bool, PoolError> {
        let slot = self.slot(image);
        self.fetch(image, &slot.progress).await
    }

    /// Follow the fetches of an image's profile (see [`Slot::progress`]).
    pub fn progress(&self, image: &Arc<ImageSpec>) -> tokio::sync::watch::Receiver<Option<crate::protocol::ImageProgress>> {
        self.slot(image).progress.subscribe()
    }

    /// The state of an image's container, without waiting (FUSE threads ask):
    /// `starting` while someone holds its lock to start or change it.
    pub fn state_name(&self, image: &ImageSpec) -> &'static str {
        let Some(slot) = self.slots.get(&self.profile_key(image)).map(|s| s.value().clone()) else { return "absent" };
        let name = match slot.state.try_lock() {
            Ok(s) => match *s {
                State::Absent => "absent",
                State::Warm { .. } => "warm",
                State::Paused { .. } => "paused",
            },
            Err(_) => "starting",
        };
        name
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

/// "pause in 25s (idle p5 …)" for `odfs status`.
fn next_action(p: &Plan, state: &str, now: Secs) -> String {
    let inn = |t: Secs| format!("{:.0}s", (t - now).max(0.0));
    let step = match state {
        "absent" => match p.prewarm_at {
            Some(t) if t < p.remove_at => format!("pre-warm in {}", inn(t)),
            _ => "none: starts on the next call".into(),
        },
        "paused" => format!("remove in {}", inn(p.remove_at)),
        _ => match p.pause_at {
            Some(t) if t < p.remove_at && t > now => format!("pause in {}", inn(t)),
            _ => format!("remove in {}", inn(p.remove_at)),
        },
    };
    format!("{step} ({})", p.reason)
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::Fake;
    use crate::catalog::Network;

    fn image(name: &str, keep: KeepAlive) -> Arc<ImageSpec> {
        Arc::new(ImageSpec {
            name: name.into(),
            reference: format!("test/{name}"),
            network: Network::None,
            user: RunAs::Caller,
            cap_add: vec![],
            keep_alive: keep,
            pause_after: None,
            allow_groups: vec![],
            limits: Default::default(),
            build: None,
            remote_dirs: vec![],
            scratch: vec![],
            pid: None,
            origin: "t.toml:1".into(),
        })
    }

    fn pool(fake: Arc<Fake>, dir: &Path) -> Arc<Pool<Fake>> {
        Arc::new(Pool::new(
            fake,
            PoolConfig {
                mount_id: "m1".into(),
                run_dir: dir.to_path_buf(),
                agent: "/bin/true".into(),
                view: Default::default(),
                policy: Policy::Auto,
                costs: Costs::default(),
                inner: Default::default(),
            },
            None,
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_calls_start_one_container() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake { start_delay: Duration::from_millis(50), ..Default::default() });
        let pool = pool(fake.clone(), dir.path());
        let img = image("busybox", KeepAlive::Auto);
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let (pool, img) = (pool.clone(), img.clone());
                tokio::spawn(async move { pool.ensure(&img, "sh").await.map(|r| r.served) })
            })
            .collect();
        let mut cold = 0;
        for c in calls {
            if c.await.unwrap().unwrap() == Served::Cold {
                cold += 1;
            }
        }
        // Every caller waited for the one start, so each counts as cold.
        assert_eq!((fake.starts.load(Ordering::SeqCst), cold), (1, 50));
        assert_eq!(pool.ensure(&img, "sh").await.unwrap().served, Served::Warm);
        let spec = &fake.live.lock().unwrap()[0].0;
        assert_eq!(spec.labels[LABEL_MOUNT], "m1");
        assert!(spec.binds.iter().any(|b| b.target == Path::new("/tmp")));
    }

    #[tokio::test]
    async fn reaper_spares_busy_and_claimed_containers_and_removes_idle_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let pool = pool(fake.clone(), dir.path());
        let img = image("b", KeepAlive::Fixed(Duration::ZERO));
        let claim = pool.ensure(&img, "sh").await.unwrap();
        pool.reap().await;
        assert!(fake.removed.lock().unwrap().is_empty(), "removed while an exec was on its way in");
        drop(claim);
        fake.running.store(1, Ordering::SeqCst);
        pool.reap().await;
        assert!(fake.removed.lock().unwrap().is_empty(), "removed while a tool ran");
        fake.running.store(0, Ordering::SeqCst);
        pool.reap().await;
        assert_eq!(*fake.removed.lock().unwrap(), ["fake-0"]);
        assert_eq!(pool.ensure(&img, "sh").await.unwrap().served, Served::Cold);
    }

    #[tokio::test]
    async fn the_pause_tier_freezes_idle_containers_and_calls_resume_them() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let pool = pool(fake.clone(), dir.path());
        let img = image("b", KeepAlive::Auto);
        let now = pool.now();
        let plan = Plan { prewarm_at: None, pause_at: Some(now), remove_at: now + 3600.0, reason: "test".into() };
        pool.warm_up(&img, Some(plan)).await.unwrap();
        fake.running.store(1, Ordering::SeqCst);
        pool.reap().await;
        assert!(fake.paused.lock().unwrap().is_empty(), "paused while a tool ran");
        fake.running.store(0, Ordering::SeqCst);
        pool.reap().await;
        assert_eq!(*fake.paused.lock().unwrap(), ["fake-0"]);
        assert_eq!(pool.status().await[0].state, "paused");
        let call = pool.ensure(&img, "sh").await.unwrap();
        assert_eq!(call.served, Served::Paused);
        assert!(fake.paused.lock().unwrap().is_empty(), "not resumed");
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn pull_backoff_doubles_from_5s_up_to_5min() {
        let secs: Vec<u64> = (1..=9).map(|a| pull_backoff(a).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[tokio::test]
    async fn restart_adopts_current_profiles_and_removes_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let (a, b) = (image("a", KeepAlive::Auto), image("b", KeepAlive::Auto));
        let first = pool(fake.clone(), dir.path());
        drop(first.ensure(&a, "x").await.unwrap());
        drop(first.ensure(&b, "y").await.unwrap());
        // The next daemon's catalog no longer has image b.
        let second = pool(fake.clone(), dir.path());
        second.adopt(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(*fake.removed.lock().unwrap(), ["fake-1"]);
        assert_eq!(second.ensure(&a, "x").await.unwrap().served, Served::Warm);
        assert_eq!(fake.starts.load(Ordering::SeqCst), 2);
    }
}
