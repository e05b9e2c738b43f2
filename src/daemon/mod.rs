//! The daemon behind `odfs mount`: control socket, FUSE mount, container
//! pool and its reaper, from start-up to a clean shutdown.

mod admin;
mod accounts;
mod agent_client;
mod calls;
mod listener;
mod exec;
pub mod pool;
mod remote;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use crate::backend::docker::Docker;
use crate::backend::ContainerBackend;
use crate::catalog::{self, Snapshot, Store};
use crate::config::DaemonConfig;
use crate::fs::ShimFs;
use crate::protocol::{self, Request, Response, EXIT_ODFS_ERROR};
use exec::Caller;
use pool::{Pool, PoolConfig};

pub struct Daemon<B> {
    pool: Pool<B>,
    /// The catalog file `odfs add`/`odfs rm` manage (in the last catalog dir).
    cli_catalog: Option<PathBuf>,
    /// Command sequences within sessions, for prefetch.
    transitions: std::sync::Mutex<crate::policy::predict::Transitions>,
    snapshot: RwLock<Arc<Snapshot>>,
    store: Store,
    /// Executables on the PATH of each local image (by reference), for
    /// `odfs provides` and the command-not-found hint.
    index: dashmap::DashMap<String, Vec<String>>,
    /// (uid, image, cwd) already told their cwd is not on the remote engine.
    remote_notices: std::sync::Mutex<std::collections::HashSet<(u32, String, PathBuf)>>,
    /// Signs the caller into each tool's environment ([`calls`]).
    stamps: calls::Stamps,
}

/// What is left of a keep-alive window, as `odfs stats` says it: `2m left`,
/// `45s left` (whole seconds, never negative).
fn time_left(secs: f64) -> String {
    format!("{} left", crate::policy::format_secs(secs.max(0.0).round()))
}

impl<B: ContainerBackend> Daemon<B> {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap().clone()
    }

    /// Figures per command from the pool's history.
    fn stats(&self) -> Vec<crate::protocol::CommandStats> {
        use crate::policy::{epsilon, Call};
        let mut out = Vec::new();
        for (image, seen, plan) in self.pool.history() {
            let mut commands: Vec<&str> = seen.iter().map(|s| s.command.as_str()).collect();
            commands.sort();
            commands.dedup();
            for cmd in commands {
                let mine: Vec<_> = seen.iter().filter(|s| s.command == cmd).collect();
                let calls: Vec<Call> = mine.iter().map(|s| s.call.clone()).collect();
                let count = |w: pool::Served| mine.iter().filter(|s| s.served == w).count() as u32;
                let e = epsilon(&calls);
                let window = match &plan {
                    Some(p) => format!("{} ({})", time_left(p.remove_at - self.pool.now()), p.reason),
                    None => "decided when the container goes idle".into(),
                };
                out.push(crate::protocol::CommandStats {
                    command: cmd.to_string(),
                    image: image.clone(),
                    calls: mine.len() as u32,
                    warm: count(pool::Served::Warm),
                    paused: count(pool::Served::Paused),
                    cold: count(pool::Served::Cold) + count(pool::Served::Pulled),
                    mtbc: e.map(|e| e.mtbc),
                    mtts: e.map(|e| e.mtts).or_else(|| calls.first().map(|c| c.setup)),
                    mtte: e.map(|e| e.mtte).or_else(|| calls.first().map(|c| c.run)),
                    epsilon: e.map(|e| e.epsilon),
                    window,
                });
            }
        }
        out.sort_by(|a, b| a.command.cmp(&b.command));
        out
    }

    /// Send an admin answer from the blocking pool.
    fn answer(&self, conn: UnixStream, r: Response) {
        tokio::task::spawn_blocking(move || protocol::send(&conn, &r, &[]));
    }

    /// One control connection: the peer fixed now, the request read within
    /// [`listener::REQUEST_DEADLINE`] while the peer holds one of its
    /// user's few places for requests being read.
    async fn handle(self: Arc<Self>, stream: tokio::net::UnixStream, admitted: Admitted, large: Arc<listener::Gate>) {
        let Admitted { peer, inside, serving: _serving, reading: ticket } = admitted;
        let msg = match tokio::time::timeout(listener::REQUEST_DEADLINE, listener::read_frame(&stream, peer.uid, &large)).await {
            Ok(m) => m,
            Err(_) => return tracing::debug!(uid = peer.uid, "dropped a request not complete within {:?}", listener::REQUEST_DEADLINE),
        };
        drop(ticket);
        // Only an exec request carries fds worth keeping.
        let msg = msg.and_then(|f| {
            f.map(|(body, fds)| protocol::decode::<Request>(&body).map(|r| {
                let fds = if matches!(r, Request::Exec(_)) { fds } else { vec![] };
                (r, fds)
            }))
            .transpose()
        });
        let Ok(conn) = stream.into_std() else { return };
        if conn.set_nonblocking(false).is_err() {
            return;
        }
        let caller: Caller = Arc::new(peer);
        // Inside a container a process may only ask for a tool, under its
        // tool's stamp ([`calls`]): never manage odfs.
        if inside && !matches!(msg, Ok(Some((Request::Exec(_), _)))) {
            REFUSALS.note(caller.uid, "refused a request from inside a container");
            return self.answer(conn, Response::Error { message: calls::INSIDE_UNSTAMPED.into(), exit_code: EXIT_ODFS_ERROR });
        }
        match msg {
            Ok(Some((Request::Exec(req), fds))) => self.exec(conn, req, fds, caller, inside).await,
            Ok(Some((Request::Status, _))) => {
                let containers = self.pool.status().await;
                let engine = self.pool.backend().engine_info().await;
                self.answer(conn, Response::Status { engine, containers });
            }
            Ok(Some((Request::Stats, _))) => self.answer(conn, Response::Stats(self.stats())),
            Ok(Some((Request::List, _))) => self.answer(conn, Response::Commands(self.list())),
            Ok(Some((Request::Add { command, image, path }, _))) => {
                let r = self.add(&caller, &command, &image, path.as_deref());
                self.answer(conn, r)
            }
            Ok(Some((Request::Remove { command }, _))) => {
                let r = self.remove(&caller, &command);
                self.answer(conn, r)
            }
            Ok(Some((Request::Stop { command, force }, _))) => {
                let r = self.stop(&caller, command.as_deref(), force).await;
                self.answer(conn, r)
            }
            Ok(Some((Request::Prewarm { command }, _))) => {
                let r = self.prewarm(&command, &conn).await;
                self.answer(conn, r)
            }
            Ok(Some((Request::Scan { image, add }, _))) => {
                let r = self.scan(&caller, &image, add).await;
                self.answer(conn, r)
            }
            Ok(Some((Request::Provides { command }, _))) => {
                let r = self.provides(&command).await;
                self.answer(conn, r)
            }
            Ok(Some((Request::Hint { command }, _))) => {
                let r = self.hint(&command);
                self.answer(conn, r)
            }
            Ok(Some((Request::View { command }, _))) => {
                let r = self.view(&command).await;
                self.answer(conn, r)
            }
            Ok(Some((Request::Pull { commands }, _))) => {
                let r = self.pull(&caller, &commands, &conn).await;
                self.answer(conn, r)
            }
            Ok(None) => {}
            Err(e) => REFUSALS.note(caller.uid, &format!("refused a bad request: {e}")),
        }
    }
}

/// Whether a peer runs in the daemon's user namespace (the host's): in
/// another, uids mean other users, and one namespace's many uids would take
/// many users' places. Valid only if the peer is still alive afterwards.
fn in_our_user_namespace(pid: i32) -> bool {
    static OURS: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let ours = OURS.get_or_init(|| namespace("self", "user"));
    pid > 0 && ours.is_some() && namespace(&pid.to_string(), "user") == *ours
}

/// Whether a peer runs inside a container: in another mount namespace than
/// the daemon, in a cgroup named by a container id (64 hex digits: Docker's
/// `/docker/ID`, `docker-ID.scope`, Podman's `libpod-ID.scope`); what cannot
/// be read counts as inside. A service with a private /tmp is not inside.
/// Valid only if the peer is still alive afterwards.
fn in_a_container(pid: i32) -> bool {
    static OURS: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let ours = OURS.get_or_init(|| namespace("self", "mnt"));
    if ours.is_some() && namespace(&pid.to_string(), "mnt") == *ours {
        return false;
    }
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return true };
    cgroups.split(|c: char| !c.is_ascii_hexdigit()).any(|run| run.len() == 64)
}

/// Places of root inside containers are counted as this one user's (root
/// on the host has none): a root tool must not take everyone's.
const ROOT_INSIDE_PLACES: u32 = u32::MAX - 1;

/// A process's namespace of a kind, as `/proc/PID/ns/KIND` names it.
fn namespace(pid: &str, kind: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()
}

/// A connection let in: its peer, whether it is inside a container, and
/// its places.
struct Admitted {
    peer: listener::Peer,
    inside: bool,
    serving: listener::Ticket,
    reading: listener::Ticket,
}

/// Decide at once, in the accept loop, whether a connection may be served,
/// so that a flood of connections costs a few syscalls each and holds no
/// fd past this: the peer's credentials, its user namespace (whose many
/// uids must not take many users' places), whether it runs inside a
/// container (decided here, while it is certainly alive), then its user's
/// places. A refused peer gets one line if its socket has room.
fn admit(stream: &tokio::net::UnixStream, gates: &Gates) -> Option<Admitted> {
    let peer = match listener::peer(std::os::fd::AsRawFd::as_raw_fd(stream)) {
        Ok(p) => p,
        Err(e) => {
            REFUSALS.note(u32::MAX, &format!("refused a connection: no peer credentials: {e}"));
            return None;
        }
    };
    let refuse = |message: String| {
        REFUSALS.note(peer.uid, &format!("refused a connection: {message}"));
        if let Ok(frame) = protocol::frame(&Response::Error { message, exit_code: EXIT_ODFS_ERROR }) {
            // Straight to the socket, never waiting (tokio's try_write
            // would give up on a socket it has not seen writable yet).
            // SAFETY: sends from a buffer we own on a socket we own.
            unsafe {
                libc::send(std::os::fd::AsRawFd::as_raw_fd(stream), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
        }
        None
    };
    let same_users = in_our_user_namespace(peer.pid);
    let inside = in_a_container(peer.pid);
    if !same_users || !peer.alive() {
        return refuse("requests from another user namespace are refused (run odfs tools as a user of the host)".into());
    }
    let places = if inside && peer.uid == 0 { ROOT_INSIDE_PLACES } else { peer.uid };
    let (Some(serving), Some(reading)) = (gates.in_flight.enter(places), gates.reading.enter(places)) else {
        return refuse(format!(
            "too many requests of uid {} at once (at most {} being read, {} being served); try again",
            peer.uid,
            listener::READING_PER_UID,
            listener::IN_FLIGHT_PER_UID
        ));
    };
    Some(Admitted { peer, inside, serving, reading })
}

/// A warning that a flood could repeat without end: written at most every
/// 10 s, with how often it came meanwhile; the rest go to debug.
struct Throttled {
    /// When the last line was written, and notes since.
    since: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttled {
    const fn new() -> Throttled {
        Throttled { since: std::sync::Mutex::new((None, 0)) }
    }

    fn note(&self, uid: u32, why: &str) {
        let mut s = self.since.lock().unwrap();
        s.1 += 1;
        if s.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(uid, times = s.1, "{why} (times since the last such line)");
            *s = (Some(std::time::Instant::now()), 0);
        } else {
            tracing::debug!(uid, "{why}");
        }
    }
}

/// Refused connections and bad requests.
static REFUSALS: Throttled = Throttled::new();
/// Failed accepts (out of fds, most likely).
static ACCEPT_ERRORS: Throttled = Throttled::new();

/// The control socket's places (see [`listener`]).
struct Gates {
    in_flight: Arc<listener::Gate>,
    reading: Arc<listener::Gate>,
    large: Arc<listener::Gate>,
}

/// How often catalog directories are checked for changes.
const RELOAD_POLL: Duration = Duration::from_millis(400);

/// What the FUSE side asks the daemon, answered from memory.
struct FsHooks<B> {
    daemon: std::sync::Weak<Daemon<B>>,
    prewarm: mpsc::UnboundedSender<String>,
}

impl<B: ContainerBackend> crate::fs::Hooks for FsHooks<B> {
    fn opened(&self, command: &str) {
        let _ = self.prewarm.send(command.to_string());
    }

    fn xattr(&self, command: &str, name: &str) -> Option<Vec<u8>> {
        let d = self.daemon.upgrade()?;
        let entry = d.snapshot().get(command).cloned()?;
        match name {
            "user.odfs.image" => Some(entry.image.reference.clone().into_bytes()),
            "user.odfs.state" => Some(d.pool.state_name(&entry.image).as_bytes().to_vec()),
            _ => None,
        }
    }
}

/// Names, sizes and times of every catalog file: a change in any means reload.
fn catalog_fingerprint(dirs: &[PathBuf]) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let meta = std::fs::metadata(&p).ok();
                out.push((p, meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok())));
            }
        }
    }
    out.sort();
    out
}

impl<B: ContainerBackend> Daemon<B> {
    /// Load the catalog again and serve it: new commands appear, removed ones
    /// vanish (the kernel's cached entries for them are dropped), running
    /// tools are not touched.
    fn reload(&self, dirs: &[PathBuf], fs: &ShimFs, notifier: &fuser::Notifier) {
        let (catalog, errors) = catalog::load_dirs(dirs);
        for e in &errors {
            tracing::error!("catalog: {e} (file skipped)");
        }
        self.store.save_catalog(&catalog);
        let snapshot = Arc::new(Snapshot::new(&catalog));
        *self.snapshot.write().unwrap() = snapshot.clone();
        let changed = fs.set_commands(snapshot.commands.keys().map(String::as_str));
        let root = fuser::INodeNo(crate::fs::ROOT_INO);
        for name in &changed {
            if let Err(e) = notifier.inval_entry(root, std::ffi::OsStr::new(name)) {
                tracing::debug!(name, "cache invalidation: {e}");
            }
        }
        let _ = notifier.inval_inode(root, 0, 0);
        tracing::info!(commands = snapshot.commands.len(), changed = changed.len(), "catalog reloaded");
    }
}

/// Calls an earlier run recorded in `odfs.db`, fed to the pool (each
/// profile's history) and to a fresh sequence model, so a restart keeps what
/// was learned. Calls of images no longer in the catalog are left out.
fn learn_from_earlier_runs<B: ContainerBackend>(
    pool: &Pool<B>,
    store: &Store,
    snapshot: &Snapshot,
) -> crate::policy::predict::Transitions {
    let mut transitions = crate::policy::predict::Transitions::default();
    let past = match store.recent_calls(HISTORY_ON_START) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot read the call history: {e}");
            return transitions;
        }
    };
    let wall_now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let now = pool.now();
    let known: Vec<_> = past.into_iter().filter_map(|p| Some((snapshot.images.get(&p.image)?.clone(), p))).collect();
    for (_, p) in &known {
        let at = now - (wall_now_ms - p.started_ms) as f64 / 1000.0;
        let session = p.session.map_or_else(|| "unknown".to_string(), |s| s.to_string());
        transitions.observe(&session, &p.command, at);
    }
    pool.seed(&known, wall_now_ms);
    tracing::info!(calls = known.len(), "history of earlier runs loaded");
    transitions
}

/// Calls read back from `odfs.db` at start-up.
const HISTORY_ON_START: usize = 20_000;

/// A stable short id for a mountpoint: names and labels of its containers.
///
/// On a remote engine, which several hosts may share, the host name is part
/// of it: two hosts mounting the same path must not adopt or remove each
/// other's containers.
pub fn mount_id(mountpoint: &std::path::Path, remote: bool) -> String {
    use sha2::{Digest, Sha256};
    let mut key = mountpoint.as_os_str().as_encoded_bytes().to_vec();
    if remote {
        key.push(0);
        key.extend(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().as_bytes());
    }
    let h = Sha256::digest(&key);
    h.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The shim text: `#!LAUNCHER SOCKET`. The kernel reads at most 256 bytes of
/// it and splits the interpreter from its one argument at the first blank.
fn shim_text(cfg: &DaemonConfig) -> anyhow::Result<Vec<u8>> {
    let launcher = cfg.launcher.to_string_lossy();
    if launcher.contains(char::is_whitespace) {
        bail!("the launcher path {launcher:?} contains a blank, which a #! line cannot hold");
    }
    let text = format!("#!{} {}\n", launcher, cfg.socket.display());
    if text.len() > 255 {
        bail!("the shim line {text:?} is longer than the kernel's 255-byte #! limit (use shorter --socket or launcher paths)");
    }
    Ok(text.into_bytes())
}

/// Whether an ELF file asks for a dynamic loader (PT_INTERP). The agent must
/// not: it runs in images that have no libc at all.
fn needs_loader(path: &std::path::Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    let bad = || std::io::Error::other("not a 64-bit ELF file");
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let kind = data.get(o..o + 4).ok_or_else(bad)?;
        if u32::from_le_bytes(kind.try_into().unwrap()) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn check_binaries(cfg: &DaemonConfig) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let launcher = std::fs::metadata(&cfg.launcher).with_context(|| format!("launcher {}", cfg.launcher.display()))?;
    if launcher.mode() & 0o001 == 0 {
        bail!("launcher {} is not executable by every user (chmod 755 it)", cfg.launcher.display());
    }
    // Tools run other tools through the launcher, inside images that may
    // have no libc or another one.
    if needs_loader(&cfg.launcher).unwrap_or(false) {
        tracing::warn!(
            launcher = %cfg.launcher.display(),
            "the launcher is dynamically linked: tools in images without a matching libc cannot run other odfs tools (build it static: scripts/build)"
        );
    }
    match needs_loader(&cfg.agent) {
        Ok(false) => Ok(()),
        Ok(true) => bail!(
            "agent {} is dynamically linked and cannot run in images without libc; build it static (scripts/build)",
            cfg.agent.display()
        ),
        Err(e) => bail!("agent {}: {e}", cfg.agent.display()),
    }
}

/// Bind the control socket, refusing to steal it from a live daemon.
fn bind_control(path: &std::path::Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if UnixStream::connect(path).is_ok() {
        bail!("another odfs daemon already serves {} (stop it, or give this mount its own --socket)", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Every local user may ask; the daemon trusts only kernel-reported credentials.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The mountpoint as an absolute path with its parent resolved, without
/// touching the mountpoint itself (it may be a dead mount answering ENOTCONN).
fn absolute_mountpoint(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        bail!("cannot mount on {}", abs.display());
    };
    let parent = std::fs::canonicalize(parent).with_context(|| format!("mountpoint parent {}", parent.display()))?;
    Ok(parent.join(name))
}

/// Run `odfs mount` until SIGTERM or SIGINT.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    check_binaries(&cfg)?;
    let text = shim_text(&cfg)?;
    for dir in [&cfg.state_dir, &cfg.run_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let containers_dir = cfg.run_dir.join("containers");
    std::fs::create_dir_all(&containers_dir)?;
    std::fs::set_permissions(&containers_dir, std::fs::Permissions::from_mode(0o700))?;

    // Fingerprint before loading: an edit made while we load or mount is then
    // seen by the first poll instead of being lost.
    let loaded_fingerprint = catalog_fingerprint(&cfg.catalogs);
    let (catalog, errors) = catalog::load_dirs(&cfg.catalogs);
    for e in &errors {
        tracing::error!("catalog: {e} (file skipped)");
    }
    let store = Store::open(&cfg.state_dir.join("odfs.db")).context("cannot open the state database")?;
    store.save_catalog(&catalog);
    let snapshot = Arc::new(Snapshot::new(&catalog));
    tracing::info!(commands = snapshot.commands.len(), images = snapshot.images.len(), "catalog loaded");

    let mountpoint = absolute_mountpoint(&cfg.mountpoint)?;
    if crate::fuse::clear_stale_mount(&mountpoint)? {
        tracing::warn!(mountpoint = %mountpoint.display(), "cleared a stale mount left by a crashed daemon");
    }
    std::fs::create_dir_all(&mountpoint).with_context(|| format!("cannot create {}", mountpoint.display()))?;
    let id = mount_id(&mountpoint, !cfg.engine.is_local());
    tracing::info!(engine = cfg.engine.describe(), "container engine");
    let pool = Pool::new(
        Arc::new(Docker::with_engine(cfg.engine.clone())),
        PoolConfig {
            mount_id: id.clone(),
            run_dir: containers_dir,
            agent: std::fs::canonicalize(&cfg.agent)?,
            view: cfg.view.clone(),
            policy: cfg.policy,
            costs: crate::policy::Costs::default(),
            inner: pool::InnerCalls { mountpoint: mountpoint.clone(), launcher: cfg.launcher.clone(), socket: cfg.socket.clone() },
        },
        Some(store.clone()),
    );
    let transitions = learn_from_earlier_runs(&pool, &store, &snapshot);
    let images: Vec<_> = snapshot.images.values().cloned().collect();
    if let Err(e) = pool.adopt(&images).await {
        tracing::warn!("cannot look for containers of an earlier run: {e}");
    }
    let cli_catalog = cfg.catalogs.last().map(|d| d.join(admin::CLI_CATALOG));
    let daemon = Arc::new(Daemon {
        pool,
        cli_catalog,
        transitions: std::sync::Mutex::new(transitions),
        snapshot: RwLock::new(snapshot.clone()),
        store,
        index: Default::default(),
        remote_notices: Default::default(),
        stamps: calls::Stamps::new(),
    });

    crate::backend::docker::raise_nofile();
    let control = tokio::net::UnixListener::from_std(bind_control(&cfg.socket)?)?;
    let gates = Gates { in_flight: listener::Gate::in_flight(), reading: listener::Gate::reading(), large: listener::Gate::large() };

    let (prewarm_tx, mut prewarm_rx) = mpsc::unbounded_channel::<String>();
    let fs = Arc::new(ShimFs::new(text, Box::new(FsHooks { daemon: Arc::downgrade(&daemon), prewarm: prewarm_tx })));
    fs.set_commands(snapshot.commands.keys().map(String::as_str));
    let session =
        crate::fuse::mount(fs.clone(), &mountpoint).with_context(|| format!("cannot mount {}", mountpoint.display()))?;
    let connection = crate::fuse::connection_id(&mountpoint);
    let notifier = session.notifier();
    let d = daemon.clone();
    let catalogs = cfg.catalogs.clone();
    tokio::spawn(async move {
        let mut seen = loaded_fingerprint;
        let mut tick = tokio::time::interval(RELOAD_POLL);
        loop {
            tick.tick().await;
            let now = catalog_fingerprint(&catalogs);
            if now != seen {
                seen = now;
                d.reload(&catalogs, &fs, &notifier);
            }
        }
    });
    tracing::info!(mountpoint = %mountpoint.display(), socket = %cfg.socket.display(), mount_id = id, "serving");

    let d = daemon.clone();
    tokio::spawn(async move {
        while let Some(name) = prewarm_rx.recv().await {
            let Some(entry) = d.snapshot().get(&name).cloned() else { continue };
            let d = d.clone();
            tokio::spawn(async move {
                if let Err(e) = d.pool.warm_up(&entry.image, None).await {
                    tracing::debug!(command = name, "prewarm failed: {e}");
                }
            });
        }
    });
    let d = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            d.pool.reap().await;
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Some(admitted) = admit(&stream, &gates) {
                        tokio::spawn(daemon.clone().handle(stream, admitted, gates.large.clone()));
                    }
                }
                Err(e) => {
                    // Wait instead of spinning on the same error.
                    ACCEPT_ERRORS.note(0, &format!("accept: {e} (waiting before the next connection)"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping: unmounting and removing idle containers");
    drop(control);
    let _ = std::fs::remove_file(&cfg.socket);
    drop(session);
    if let Some(id) = connection {
        crate::fuse::abort_connection(id);
    }
    daemon.pool.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_must_be_static() {
        assert!(needs_loader(std::path::Path::new("/bin/sh")).unwrap());
        assert!(!needs_loader(std::path::Path::new("/bin/busybox")).unwrap());
        assert!(needs_loader(std::path::Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn time_left_reads_as_a_duration() {
        assert_eq!(time_left(120.0), "2m left");
        assert_eq!(time_left(119.6), "2m left");
        assert_eq!(time_left(45.2), "45s left");
        assert_eq!(time_left(3600.0), "1h left");
        assert_eq!(time_left(125.0), "125s left");
        assert_eq!(time_left(-3.0), "0s left");
    }
}
