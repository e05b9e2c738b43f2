//! `odfs mount` from start to stop: checks, catalog and history, the pool,
//! the mount and the control socket (fresh, taken over from a live daemon,
//! or back from systemd's fd store), the daemon's tasks, and an end that
//! every one of them hears and that waits for them: a stop, or a hand-over.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::protocol;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dispatch::serve;
use super::pool::{self, Pool, PoolConfig};
use super::reload::{watch_catalogs, FsHooks, catalog_fingerprint};
use super::{admin, stamps, systemd, takeover, Daemon};
use crate::backend::docker::Docker;
use crate::backend::ContainerBackend;
use crate::catalog::{self, Snapshot, Store};
use crate::config::DaemonConfig;
use crate::fs::ShimFs;

/// How long a stopping daemon waits for requests under way (a start, a
/// hand-off) before it stops without them (a second signal: at once).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the reaper steps every profile's lifecycle.
const REAP_EVERY: Duration = Duration::from_millis(500);

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

/// What an earlier process of this mount passes on, instead of a fresh
/// mount: a live daemon's takeover, or systemd's fd store after a restart.
enum Inherited {
    Predecessor(takeover::Taken),
    /// The fd store: the daemon before this one stopped for a restart or
    /// died. Requests it had read and not answered are sent again. Or the
    /// same fds kept across an in-place restart ([`IN_PLACE_ENV`]), with
    /// `odfs restart`'s connection to answer.
    Store { fuse: OwnedFd, control: OwnedFd, state: takeover::State, state_fd: Option<OwnedFd>, reply: Option<std::os::unix::net::UnixStream> },
}

/// Names the fds an in-place restart keeps across `execve`
/// (`fuse=N,control=N,state=N,reply=N`); this process's own, read once.
const IN_PLACE_ENV: &str = "ODFS_IN_PLACE_FDS";
/// The name of `odfs restart`'s connection among them.
const IN_PLACE_REPLY: &str = "reply";

/// systemd's fd-store names.
const STORE_FUSE: &str = "fuse";
const STORE_CONTROL: &str = "control";
const STORE_STATE: &str = "state";

/// The fds systemd kept for this unit, or those an in-place restart kept,
/// if they are still a mount here.
fn from_store(mountpoint: &std::path::Path) -> Option<Inherited> {
    let mut fds = match take_in_place_fds() {
        Some(fds) => fds,
        None => systemd::take_listen_fds(),
    };
    let reply = fds.remove(IN_PLACE_REPLY).map(std::os::unix::net::UnixStream::from);
    let (fuse, control) = (fds.remove(STORE_FUSE)?, fds.remove(STORE_CONTROL)?);
    if !crate::fuse::is_fuse_mountpoint(mountpoint) {
        tracing::warn!(mountpoint = %mountpoint.display(), "the stored FUSE connection is no longer mounted here: mounting afresh");
        return None;
    }
    let state_fd = fds.remove(STORE_STATE);
    let state = state_fd.as_ref().and_then(read_state).unwrap_or_default();
    Some(Inherited::Store { fuse, control, state, state_fd, reply })
}

/// The fds [`IN_PLACE_ENV`] names, made close-on-exec again.
fn take_in_place_fds() -> Option<std::collections::HashMap<String, OwnedFd>> {
    use std::os::fd::FromRawFd;
    let named = std::env::var(IN_PLACE_ENV).ok()?;
    // SAFETY: read at start-up, before any thread reads the environment.
    unsafe { std::env::remove_var(IN_PLACE_ENV) };
    let mut pairs = named.split(',').filter_map(|kv| kv.split_once('='));
    // Meant for this very process (an exec keeps the pid), as LISTEN_PID is.
    if pairs.next() != Some(("pid", &std::process::id().to_string())) {
        return None;
    }
    let mut out = std::collections::HashMap::new();
    for (name, fd) in pairs {
        let Ok(fd) = fd.parse::<i32>() else { continue };
        if ![STORE_FUSE, STORE_CONTROL, STORE_STATE, IN_PLACE_REPLY].contains(&name) {
            continue;
        }
        // Only an open fd, once: the variable is this process's own.
        if fd > 2 && !out.values().any(|o: &OwnedFd| o.as_raw_fd() == fd) && nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).is_ok() {
            // SAFETY: the image before this one left this fd open for us.
            out.insert(name.to_string(), unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Some(out)
}

/// Run this daemon's binary anew in this process (same pid: it stays the
/// unit's main process), keeping `fds` open under their names (the mount,
/// the control socket, the state, `reply`). Returns only if the exec failed.
fn exec_in_place(relaunch: &[std::ffi::OsString], fds: &[(&str, RawFd)]) -> std::io::Result<std::convert::Infallible> {
    use nix::fcntl::{fcntl, FcntlArg::F_SETFD, FdFlag};
    let cstr = |b: &[u8]| std::ffi::CString::new(b).map_err(std::io::Error::other);
    let argv = relaunch.iter().map(|a| cstr(a.as_encoded_bytes())).collect::<std::io::Result<Vec<_>>>()?;
    let named: Vec<String> = fds.iter().map(|(name, fd)| format!("{name}={fd}")).collect();
    let mut env = std::env::vars_os()
        .filter(|(k, _)| k != IN_PLACE_ENV)
        .map(|(k, v)| cstr(&[k.as_encoded_bytes(), b"=", v.as_encoded_bytes()].concat()))
        .collect::<std::io::Result<Vec<_>>>()?;
    env.push(cstr(format!("{IN_PLACE_ENV}=pid={},{}", std::process::id(), named.join(",")).as_bytes())?);
    let exe = argv.first().ok_or_else(|| std::io::Error::other("this daemon's command line is unknown"))?;
    // execve itself, not std's Command: that one sets SIGPIPE back to its
    // default first and leaves it so if the exec fails, and a daemon that
    // serves on must not die of a closed pipe.
    let e = match fds.iter().try_for_each(|(_, fd)| fcntl(*fd, F_SETFD(FdFlag::empty())).map(drop)) {
        Ok(()) => nix::unistd::execve(exe, &argv, &env).unwrap_err(),
        Err(e) => e,
    };
    // Serving on: none of them may reach a child.
    for (_, fd) in fds {
        let _ = fcntl(*fd, F_SETFD(FdFlag::FD_CLOEXEC));
    }
    Err(e.into())
}

/// A memfd holding `state`, for the fd store: a daemon restarted after a
/// crash keeps the stamps key and knows the connection's INIT.
fn state_memfd(state: &takeover::State) -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"odfs-state", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    write_state(&fd, state)?;
    Ok(fd)
}

fn write_state(fd: &OwnedFd, state: &takeover::State) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::from(fd.try_clone()?);
    let body = serde_json::to_vec(state)?;
    file.set_len(0)?;
    file.write_all_at(&body, 0)
}

fn read_state(fd: &OwnedFd) -> Option<takeover::State> {
    use std::io::Read;
    let mut file = std::fs::File::from(fd.try_clone().ok()?);
    std::io::Seek::rewind(&mut file).ok()?;
    let mut body = Vec::new();
    file.take(1 << 20).read_to_end(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// What follows a round that ends without unmounting.
enum Next {
    /// Under systemd: exit, the fds wait in the store.
    Store,
    /// Hand everything to a successor.
    Hand(takeover::Offer),
    /// Run the binary anew in this process; answer `odfs restart` here.
    InPlace(std::os::unix::net::UnixStream),
}

/// How a round of serving ended.
enum Ended {
    /// SIGTERM or SIGINT.
    Signal,
    /// A successor asked for the mount.
    Asked(takeover::Asked),
}

/// Run `odfs mount` until SIGTERM or SIGINT, or until a successor takes
/// the mount over.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    // Signals first: one that comes while the daemon starts must stop it
    // cleanly once it serves, never kill it with its mount up.
    // A second signal cuts the wait for requests under way short.
    let (stop, hurry) = (CancellationToken::new(), CancellationToken::new());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (on_signal, on_second) = (stop.clone(), hurry.clone());
    tokio::spawn(async move {
        for token in [on_signal, on_second] {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            token.cancel();
        }
    });

    // The shims' `#!` line names the launcher: the kernel resolves a
    // relative one against each caller's cwd, where it is not.
    let mut cfg = DaemonConfig { launcher: std::path::absolute(&cfg.launcher)?, ..cfg };
    // The site's CA bundle is named to networked tools at its host path:
    // shared at that path even under an image-owned directory (/etc/ssl).
    if let Some(ca) = cfg.engine.outbound.ca_bundle.clone().filter(|ca| !cfg.view.share.contains(ca)) {
        cfg.view.share.push(ca);
    }
    check_binaries(&cfg)?;
    let text = shim_text(&cfg)?;
    create_state_dir(&cfg.state_dir).with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
    std::fs::create_dir_all(&cfg.run_dir).with_context(|| format!("cannot create {}", cfg.run_dir.display()))?;
    std::fs::set_permissions(&cfg.run_dir, std::fs::Permissions::from_mode(0o755))?;
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let containers_dir = cfg.run_dir.join("containers");
    std::fs::create_dir_all(&containers_dir)?;
    std::fs::set_permissions(&containers_dir, std::fs::Permissions::from_mode(0o700))?;

    // Fingerprint before loading: an edit made while we load or mount is then
    // seen by the first poll instead of being lost.
    // A catalog directory or file that cannot be read stops the start: a
    // mount without its commands would look like a catalog without them.
    let unreadable = |e: catalog::Unreadable| anyhow::anyhow!("mount: {e}; create it or make it readable, or leave it out of --catalog");
    let loaded_fingerprint = catalog_fingerprint(&cfg.catalogs).map_err(unreadable)?;
    let (catalog, errors) = catalog::load_dirs(&cfg.catalogs).map_err(unreadable)?;
    for e in &errors {
        tracing::error!("catalog: {e} (file skipped)");
    }
    let mountpoint = absolute_mountpoint(&cfg.mountpoint)?;

    // Take the mount over from a live daemon, or from systemd's store; only
    // then read the history, which the predecessor wrote out before going.
    let mut inherited = match from_store(&mountpoint) {
        Some(i) => Some(i),
        None => {
            let (run_dir, mp) = (cfg.run_dir.clone(), mountpoint.clone());
            tokio::task::spawn_blocking(move || takeover::take(&run_dir, &mp)).await??.map(Inherited::Predecessor)
        }
    };
    let store = Store::open(&cfg.state_dir.join("odfs.db")).context("cannot open the state database")?;
    store.save_catalog(&catalog);
    let snapshot = Arc::new(Snapshot::new(&catalog));
    tracing::info!(commands = snapshot.commands.len(), images = snapshot.images.len(), "catalog loaded");

    // An inherited mount is not served until this process serves it: a
    // look at it now (a stat) would wait on ourselves.
    if inherited.is_none() {
        if crate::fuse::clear_stale_mount(&mountpoint)? {
            tracing::warn!(mountpoint = %mountpoint.display(), "cleared a stale mount left by a crashed daemon");
        }
        std::fs::create_dir_all(&mountpoint).with_context(|| format!("cannot create {}", mountpoint.display()))?;
    }
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
            idle: cfg.idle.clone(),
            inner: pool::InnerCalls { mountpoint: mountpoint.clone(), launcher: cfg.launcher.clone(), socket: cfg.socket.clone() },
        },
        Some(store.clone()),
    );
    pool.catalog_is(catalog.images.values());
    let transitions = learn_from_earlier_runs(&pool, &store, &snapshot);
    let images: Vec<_> = snapshot.images.values().cloned().collect();
    let handed = match &inherited {
        Some(Inherited::Predecessor(t)) => Some(&t.state),
        Some(Inherited::Store { state, .. }) => Some(state),
        None => None,
    };
    let secret = handed.and_then(|s| s.stamps_secret());
    let taken = match &inherited {
        Some(Inherited::Predecessor(t)) => pool.import(&images, t.state.containers.clone()).await,
        _ => 0,
    };
    if taken > 0 {
        tracing::info!(containers = taken, "containers taken over");
    } else {
        // The engine may hang (up to its request timeout): a stop now must
        // not wait for it. Nothing is served yet.
        tokio::select! {
            adopted = pool.adopt(&images) => if let Err(e) = adopted {
                tracing::warn!("cannot look for containers of an earlier run: {e}");
            },
            _ = stop.cancelled() => {
                tracing::info!("stopped while starting");
                return Ok(());
            }
        }
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
        stamps: secret.map_or_else(stamps::Stamps::new, stamps::Stamps::with_secret),
        tasks: TaskTracker::new(),
        pins: Default::default(),
        outbound: cfg.engine.outbound.clone(),
        gc: cfg.gc.clone(),
        image_usage: Default::default(),
        docs: super::docs::Docs::new(crate::share::share_dir(&mountpoint, cfg.share_dir.as_deref()), &cfg.state_dir),
        relaunch: relaunch_command(),
        in_place: Default::default(),
    });

    // Before the mount lists a command: `man` and completion answer at once.
    daemon.docs.restore(&snapshot);
    crate::backend::docker::raise_nofile();
    let (prewarm_tx, prewarm_rx) = mpsc::unbounded_channel::<(String, crate::fs::Requester)>();
    let fs = Arc::new(ShimFs::new(text, Box::new(FsHooks { daemon: Arc::downgrade(&daemon), prewarm: prewarm_tx })));
    fs.set_commands(snapshot.commands.keys().map(String::as_str));
    let mount_err = || format!("cannot mount {}", mountpoint.display());
    let (inherited_state_fd, in_place_reply) = match &mut inherited {
        Some(Inherited::Store { state_fd, reply, .. }) => (state_fd.take(), reply.take()),
        _ => (None, None),
    };
    let (control, server, init, predecessor) = match inherited {
        None => {
            let control = bind_control(&cfg.socket)?;
            let (server, init) = crate::fuse::mount(fs.clone(), &mountpoint).with_context(mount_err)?;
            (control, server, Some(init), None)
        }
        Some(Inherited::Predecessor(t)) => {
            let server = crate::fuse::resume(fs.clone(), t.fuse.try_clone()?).with_context(mount_err)?;
            let (control, init) = (listener_from(t.control.try_clone()?)?, t.state.init);
            (control, server, init, Some(t))
        }
        Some(Inherited::Store { fuse, control, state, .. }) => {
            let server = crate::fuse::resume(fs.clone(), fuse).with_context(mount_err)?;
            // What the dead daemon had read and not answered.
            // The INIT the first daemon agreed says whether the kernel can.
            let resend = match state.init {
                Some(init) if !init.can_resend() => Err(std::io::Error::other("the kernel did not offer FUSE_HAS_RESEND")),
                _ => server.notifier().resend(),
            };
            match resend {
                Ok(()) => tracing::info!("asked the kernel to send again what the previous daemon had not answered"),
                Err(e) => tracing::warn!("the kernel cannot send again what the previous daemon had read (needs Linux 6.9): those callers wait for their answer until the connection goes: {e}"),
            }
            (listener_from(control)?, server, state.init, None)
        }
    };
    let control = tokio::net::UnixListener::from_std(control)?;
    if let Err(e) = daemon.pool.inner().link_socket() {
        tracing::warn!("containers of an earlier run cannot reach this one's socket (tools they run cannot run tools): {e}");
    }
    let (asks, mut asked) = mpsc::channel::<takeover::Asked>(1);
    let _ = daemon.in_place.set(asks.clone());
    let offers = offer_takeovers(&cfg.run_dir, &mountpoint, asks)?;
    let connection = crate::fuse::connection_id(&mountpoint);
    let state = takeover::State { init, mountpoint: mountpoint.clone(), ..Default::default() }.with_secret(daemon.stamps.secret());
    let state_fd = if systemd::managed() {
        // The stored one again (a restart from the store, or in place): the
        // store keeps one state, not one per start.
        let fd = match inherited_state_fd {
            Some(fd) => {
                write_state(&fd, &state)?;
                fd
            }
            None => state_memfd(&state)?,
        };
        systemd::store(STORE_FUSE, server.fd().as_raw_fd());
        systemd::store(STORE_CONTROL, control.as_raw_fd());
        systemd::store(STORE_STATE, fd.as_raw_fd());
        let _ = systemd::notify(&format!("READY=1\nMAINPID={}\nSTATUS=serving {}", std::process::id(), mountpoint.display()), &[]);
        Some(fd)
    } else {
        None
    };
    tracing::info!(mountpoint = %mountpoint.display(), socket = %cfg.socket.display(), mount_id = id, taken_over = predecessor.is_some(), "serving");
    if let Some(reply) = in_place_reply {
        let text = format!("pid {} runs {} anew and serves {}", std::process::id(), daemon.relaunch.first().map_or("odfs".into(), |e| e.to_string_lossy()), mountpoint.display());
        tokio::task::spawn_blocking(move || protocol::send(&reply, &protocol::Response::Restarted(text), &[]));
    }
    if let Some(p) = &predecessor {
        p.serving();
        // Containers the predecessor did not hand over (their profile left
        // the catalog) are left to adoption, now that calls are served.
        let d = daemon.clone();
        daemon.tasks.spawn(async move {
            if let Err(e) = d.pool.adopt(&d.snapshot().images.values().cloned().collect::<Vec<_>>()).await {
                tracing::warn!("cannot look for containers of an earlier run: {e}");
            }
        });
    }
    drop(predecessor);

    let mut server = Some(server);
    let mut waiting_successor = None;
    let prewarm_rx = Arc::new(tokio::sync::Mutex::new(prewarm_rx));
    let mut fingerprint = loaded_fingerprint;
    loop {
        // The daemon's own tasks: each ends when the round ends, after the
        // step it is in (a reaper step that starts a container finishes it,
        // so whoever runs the pool next sees that container).
        let Some(serving) = &server else { break };
        let round = stop.child_token();
        let tasks = daemon.tasks.clone();
        tasks.reopen();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        tasks.spawn(watch_catalogs(daemon.clone(), cfg.catalogs.clone(), fs.clone(), serving.notifier(), fingerprint, round.clone(), seen_tx));
        tasks.spawn(prewarm_on_open(daemon.clone(), prewarm_rx.clone(), tasks.clone(), round.clone()));
        tasks.spawn(reap(daemon.clone(), round.clone()));
        tasks.spawn(super::docs::keep_docs(daemon.clone(), round.clone()));
        tasks.spawn(super::images::keep_collecting(daemon.clone(), round.clone()));

        let requests = TaskTracker::new();
        let ended = tokio::select! {
            _ = serve(&daemon, &control, &requests, &round) => Ended::Signal,
            Some(a) = asked.recv() => Ended::Asked(a),
        };
        round.cancel();
        match &ended {
            Ended::Signal => tracing::info!("stopping"),
            Ended::Asked(_) => tracing::info!("a new daemon takes the mount over: finishing what is under way"),
        }
        tasks.close();
        requests.close();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            tasks.wait().await;
            requests.wait().await;
        });
        let drained = tokio::select! {
            d = drained => d.is_ok(),
            _ = hurry.cancelled() => false,
        };
        if !drained {
            tracing::warn!(tasks = tasks.len(), requests = requests.len(), "going on without what is still under way");
        }
        fingerprint = seen_rx.await.unwrap_or_default();

        let handover = match ended {
            Ended::Asked(takeover::Asked::Handover(offer)) => Some(Next::Hand(offer)),
            Ended::Asked(takeover::Asked::InPlace(reply)) => Some(Next::InPlace(reply)),
            // Under systemd, a stop that is half of a restart leaves the
            // mount in the fd store for the next process.
            Ended::Signal if state_fd.is_some() && !hurry.is_cancelled() && systemd::restart_pending() => Some(Next::Store),
            Ended::Signal => None,
            Ended::Asked(takeover::Asked::Stop(successor)) => {
                // Closed when the stop is over: the successor mounts then.
                waiting_successor = Some(successor);
                None
            }
        };
        let Some(offer) = handover else { break };
        let (fd, end) = server.take().expect("serving").pause()?;
        if end == crate::fuse::End::Gone {
            tracing::warn!("the mount went away meanwhile: nothing to hand over");
            break;
        }
        daemon.store.flush(Duration::from_secs(5));
        let state = takeover::State { containers: daemon.pool.export().await, ..state.clone() };
        match offer {
            Next::Store => {
                if let Some(sfd) = &state_fd {
                    write_state(sfd, &state)?;
                }
                tracing::info!("restarting: the mount, the control socket and the containers stay for the next process");
                return Ok(());
            }
            Next::InPlace(reply) => {
                let sfd = state_fd.as_ref().expect("in place only under systemd");
                write_state(sfd, &state)?;
                tracing::info!("restarting in place: the mount, the control socket and the containers stay for the new image");
                let _ = systemd::notify("RELOADING=1", &[]);
                let kept = [(STORE_FUSE, fd.as_raw_fd()), (STORE_CONTROL, control.as_raw_fd()), (STORE_STATE, sfd.as_raw_fd()), (IN_PLACE_REPLY, reply.as_raw_fd())];
                let Err(e) = exec_in_place(&daemon.relaunch, &kept);
                tracing::warn!("cannot run the binary anew: {e}; serving on");
                let _ = systemd::notify("READY=1", &[]);
                let text = format!("restart: cannot run {} anew: {e}", daemon.relaunch.first().map_or("odfs".into(), |p| p.to_string_lossy()));
                let _ = protocol::send(&reply, &protocol::Response::Error(protocol::Failure::new(text)), &[]);
                server = Some(crate::fuse::resume(fs.clone(), fd)?);
            }
            Next::Hand(offer) => {
                let handed = tokio::task::block_in_place(|| offer.hand(&state, &fd, &control));
                if handed {
                    tracing::info!("handed over: the new daemon serves the mount");
                    offers.abort();
                    return Ok(());
                }
                tracing::warn!("the new daemon did not take the mount over: serving on");
                server = Some(crate::fuse::resume(fs.clone(), fd)?);
            }
        }
    }

    tracing::info!("unmounting and removing idle containers");
    offers.abort();
    let _ = std::fs::remove_file(takeover::socket_path(&cfg.run_dir));
    if state_fd.is_some() {
        for name in [STORE_FUSE, STORE_CONTROL, STORE_STATE] {
            systemd::unstore(name);
        }
    }
    drop(control);
    let _ = std::fs::remove_file(&cfg.socket);
    if let (Some(dir), Some(name)) = (daemon.pool.inner().socket_dir(), cfg.socket.file_name()) {
        let _ = std::fs::remove_file(dir.join(name));
    }
    daemon.docs.withdraw();
    if let Err(e) = crate::fuse::session::unmount(&mountpoint) {
        tracing::warn!(mountpoint = %mountpoint.display(), "cannot unmount: {e}");
    }
    drop(server);
    if let Some(id) = connection {
        crate::fuse::abort_connection(id);
    }
    daemon.pool.shutdown().await;
    drop(waiting_successor);
    Ok(())
}

/// The control socket from an inherited fd.
fn listener_from(fd: OwnedFd) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::from(fd);
    // Listening again makes this process the socket's peer (SO_PEERCRED
    // of each connection names the process that last called listen), so
    // clients see who serves them now. The backlog is the kernel's most.
    // SAFETY: a valid listening socket this process owns.
    if unsafe { libc::listen(listener.as_raw_fd(), libc::SOMAXCONN) } != 0 {
        return Err(std::io::Error::last_os_error()).context("the inherited control socket");
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// This process's command line with its binary's path as it is now: after
/// an upgrade, `odfs restart` runs the new binary with the same arguments.
fn relaunch_command() -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(exe) = std::fs::read_link("/proc/self/exe").ok().map(|p| {
        // A replaced binary shows as `PATH (deleted)`: the path is what counts.
        let s = p.to_string_lossy().trim_end_matches(" (deleted)").to_string();
        std::ffi::OsString::from(s)
    }) {
        if let Some(first) = argv.first_mut() {
            *first = exe;
        }
    }
    argv
}

/// Listen for successors on the root-only takeover socket; each hello that
/// asks for the mount goes to the serving loop.
fn offer_takeovers(run_dir: &std::path::Path, mountpoint: &std::path::Path, asks: mpsc::Sender<takeover::Asked>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = takeover::socket_path(run_dir);
    let _ = std::fs::remove_file(&path);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = std::os::unix::net::UnixListener::bind(&path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let mountpoint = mountpoint.to_path_buf();
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let Ok(stream) = stream.into_std() else { continue };
            let _ = stream.set_nonblocking(false);
            let mp = mountpoint.clone();
            match tokio::task::spawn_blocking(move || takeover::hello(stream, &mp)).await {
                Ok(Ok(Some(a))) => {
                    if asks.send(a).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!("a takeover request failed: {e}"),
                Err(_) => {}
            }
        }
    }))
}

/// The state directory, made 0711 when odfs makes it: other users may
/// pass through (the control socket may be in it, with `--state`) but not
/// list it. Its database is root's alone by its own mode (`Store::open`);
/// an existing directory keeps the mode its admin gave it.
fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

/// Warm the container of each shim opened (an exec is probably coming),
/// each in a task of its own under `tasks`; only for an opener the image's
/// `allow_groups` let in, as for a call: anyone may open a shim (`cat`
/// it), but a container that holds the image's capabilities is started
/// only for those who may use it.
async fn prewarm_on_open<B: ContainerBackend>(
    daemon: Arc<Daemon<B>>,
    opened: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, crate::fs::Requester)>>>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let mut opened = opened.lock().await;
    while let Some(Some((name, by))) = stop.run_until_cancelled(opened.recv()).await {
        let Some(entry) = daemon.snapshot().get(&name).cloned() else { continue };
        // The groups are read only where they matter: most images let
        // everyone in, and an open is on every call's path.
        let opener = if entry.image.allow_groups.is_empty() {
            protocol::peer::Peer { pid: by.pid as i32, uid: by.uid, gid: by.gid, groups: vec![], pidfd: None }
        } else {
            protocol::peer::requester(by.pid, by.uid, by.gid)
        };
        let opener = Arc::new(opener);
        if let Err(refused) = daemon.authorize(&entry, &opener) {
            tracing::debug!(command = name, uid = by.uid, pid = by.pid, groups = ?opener.groups, "no prewarm on open: {}", refused.message);
            continue;
        }
        let d = daemon.clone();
        tasks.spawn(async move {
            // Not cut short when the daemon stops: a start cut in the middle
            // would leave a container nobody knows.
            if let Err(e) = d.pool.warm_up(&entry.image, None).await {
                tracing::debug!(command = name, "prewarm failed: {e}");
            }
        });
    }
}

/// Step every profile's lifecycle (see [`Pool::reap`]) until `stop`; a
/// step under way finishes first.
async fn reap<B: ContainerBackend>(daemon: Arc<Daemon<B>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        daemon.pool.reap().await;
    }
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
}
