//! `odfs mount` from start to stop, as phases: [`run`] boots
//! ([`super::boot`]), has the mount ([`super::inherit`]), then a
//! [`Server`] serves it in rounds. A round ends on a signal or when a
//! successor asks ([`Ended`]); what follows is a stop, or a hand-over to the
//! fd store, to a successor or to this binary anew ([`Next`]). Each phase
//! waits for the daemon's tasks and requests it ends.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dispatch::serve;
use super::inherit::{self, Inherited, IN_PLACE_REPLY, STORE_CONTROL, STORE_FUSE, STORE_STATE};
use super::reload::{watch_catalogs, Fingerprint};
use super::{boot, systemd, takeover, Daemon};
use crate::backend::ContainerBackend;
use crate::config::DaemonConfig;
use crate::fs::{Requester, ShimFs};
use crate::protocol;

/// Run `odfs mount` until SIGTERM or SIGINT, or until a successor takes
/// the mount over.
pub async fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    // Signals first: one that comes while the daemon starts must stop it
    // cleanly once it serves, never kill it with its mount up.
    let signals = Signals::install()?;
    let (cfg, text) = boot::prepare(cfg)?;
    let (fingerprint, catalog) = boot::load_catalog(&cfg)?;
    let mountpoint = boot::absolute_mountpoint(&cfg.mountpoint)?;
    // Take the mount over from a live daemon, or from systemd's store; only
    // then read the history, which the predecessor wrote out before going.
    let inherited = Inherited::find(&cfg.run_dir, &mountpoint).await?;
    let (store, snapshot) = boot::open_store(&cfg, &catalog)?;
    if inherited.is_none() {
        boot::fresh_mountpoint(&mountpoint)?;
    }
    let pool = boot::pool(&cfg, &mountpoint, &store, &catalog)?;
    let transitions = boot::learn_from_earlier_runs(&pool, &store, &snapshot);
    // Nothing is served yet: a stop while the engine is asked ends here.
    if !inherit::containers(&pool, inherited.as_ref(), &snapshot, &signals.stop).await {
        return Ok(());
    }
    let secret = inherited.as_ref().and_then(|i| i.state().stamps_secret());
    let daemon = boot::daemon(&cfg, &mountpoint, pool, store, snapshot, transitions, secret);
    crate::backend::docker::raise_nofile();
    let (fs, opened) = boot::shim_fs(&daemon, text);
    let booted = Booted { cfg, mountpoint, daemon, fs, opened, fingerprint };
    let mut server = Server::start(booted, inherited, signals)?;
    loop {
        let ended = server.run_round().await;
        server.drain().await;
        let Some(next) = server.next(ended) else { break };
        match server.continue_with(next).await? {
            Continued::Serving => {}
            Continued::Handed => return Ok(()),
            Continued::Gone => break,
        }
    }
    server.unmount().await;
    Ok(())
}

/// SIGTERM and SIGINT: the first stops the daemon (`stop`), a second cuts
/// the wait for requests under way short (`hurry`).
struct Signals {
    stop: CancellationToken,
    hurry: CancellationToken,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
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
        Ok(Signals { stop, hurry })
    }
}

/// The serving daemon: the mount, the control socket, and what a round of
/// serving needs from one round to the next.
struct Server<B> {
    daemon: Arc<Daemon<B>>,
    fs: Arc<ShimFs>,
    cfg: DaemonConfig,
    mountpoint: PathBuf,
    control: tokio::net::UnixListener,
    /// `None` while paused for a hand-over.
    fuse: Option<crate::fuse::Server>,
    /// The kernel's id of the connection, to abort it if it outlives the
    /// unmount.
    connection: Option<u64>,
    /// What a hand-over passes on (the containers are added then).
    state: takeover::State,
    /// Under systemd: the state kept in the fd store.
    state_fd: Option<OwnedFd>,
    /// Successors asking for the mount, and the task that hears them.
    asked: mpsc::Receiver<takeover::Asked>,
    offers: tokio::task::JoinHandle<()>,
    /// Shims opened (prewarms), shared by the rounds' prewarm tasks.
    opened: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Requester)>>>,
    /// The catalog files as last loaded.
    fingerprint: Fingerprint,
    signals: Signals,
    /// The round under way, until it is drained.
    round: Option<Round>,
    /// A successor that asked us to stop: it mounts once our stop is over
    /// (its connection closes then).
    waiting_successor: Option<UnixStream>,
}

/// What a start has made before it has the mount.
struct Booted<B> {
    cfg: DaemonConfig,
    mountpoint: PathBuf,
    daemon: Arc<Daemon<B>>,
    fs: Arc<ShimFs>,
    opened: mpsc::UnboundedReceiver<(String, Requester)>,
    fingerprint: Fingerprint,
}

/// What [`Server::drain`] waits for.
struct Round {
    requests: TaskTracker,
    seen: tokio::sync::oneshot::Receiver<Fingerprint>,
}

/// What follows a round that ends without unmounting.
enum Next {
    /// Under systemd: exit, the fds wait in the store.
    Store,
    /// Hand everything to a successor.
    Hand(takeover::Offer),
    /// Run the binary anew in this process; answer `odfs restart` here.
    InPlace(UnixStream),
}

/// How a round of serving ended.
enum Ended {
    /// SIGTERM or SIGINT.
    Signal,
    /// A successor asked for the mount.
    Asked(takeover::Asked),
}

/// What [`Server::continue_with`] came to.
enum Continued {
    /// The hand-over failed: this daemon serves on.
    Serving,
    /// The mount is someone else's now (or waits in the fd store): exit.
    Handed,
    /// The mount went away meanwhile: stop.
    Gone,
}

impl<B: ContainerBackend> Server<B> {
    /// Serve the mount as this start has it; tell whoever handed it over
    /// that this process serves.
    fn start(booted: Booted<B>, inherited: Option<Inherited>, signals: Signals) -> anyhow::Result<Server<B>> {
        let Booted { cfg, mountpoint, daemon, fs, opened, fingerprint } = booted;
        let had = inherit::mount(inherited, fs.clone(), &mountpoint, &cfg.socket)?;
        let control = tokio::net::UnixListener::from_std(had.control)?;
        if let Err(e) = daemon.pool.inner().link_socket() {
            tracing::warn!("containers of an earlier run cannot reach this one's socket (tools they run cannot run tools): {e}");
        }
        let (asks, asked) = mpsc::channel::<takeover::Asked>(1);
        let _ = daemon.in_place.set(asks.clone());
        let offers = offer_takeovers(&cfg.run_dir, &mountpoint, asks)?;
        let connection = crate::fuse::connection_id(&mountpoint);
        let state = takeover::State { init: had.init, mountpoint: mountpoint.clone(), ..Default::default() }.with_secret(daemon.stamps.secret());
        let state_fd = match systemd::managed() {
            true => Some(inherit::keep_in_store(&had.fuse, &control, &state, had.state_fd, &mountpoint)?),
            false => None,
        };
        tracing::info!(mountpoint = %mountpoint.display(), socket = %cfg.socket.display(), mount_id = daemon.pool.mount_id(), taken_over = had.predecessor.is_some(), "serving");
        if let Some(reply) = had.reply {
            let text = format!("pid {} runs {} anew and serves {}", std::process::id(), daemon.relaunch.first().map_or("odfs".into(), |e| e.to_string_lossy()), mountpoint.display());
            tokio::task::spawn_blocking(move || protocol::send(&reply, &protocol::Response::Restarted(text), &[]));
        }
        if let Some(p) = &had.predecessor {
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
        Ok(Server {
            daemon,
            fs,
            cfg,
            mountpoint,
            control,
            fuse: Some(had.fuse),
            connection,
            state,
            state_fd,
            asked,
            offers,
            opened: Arc::new(tokio::sync::Mutex::new(opened)),
            fingerprint,
            signals,
            round: None,
            waiting_successor: None,
        })
    }

    /// Serve requests, with the daemon's own tasks beside them, until a
    /// signal or a successor's ask; then every one of them hears the end.
    async fn run_round(&mut self) -> Ended {
        // The daemon's own tasks: each ends when the round ends, after the
        // step it is in (a reaper step that starts a container finishes it,
        // so whoever runs the pool next sees that container).
        let round = self.signals.stop.child_token();
        let (daemon, tasks) = (&self.daemon, self.daemon.tasks.clone());
        tasks.reopen();
        let (seen_tx, seen) = tokio::sync::oneshot::channel();
        let notifier = self.fuse.as_ref().expect("serving").notifier();
        tasks.spawn(watch_catalogs(daemon.clone(), self.cfg.catalogs.clone(), self.fs.clone(), notifier, std::mem::take(&mut self.fingerprint), round.clone(), seen_tx));
        tasks.spawn(prewarm_on_open(daemon.clone(), self.opened.clone(), tasks.clone(), round.clone()));
        tasks.spawn(reap(daemon.clone(), round.clone()));
        tasks.spawn(super::docs::keep_docs(daemon.clone(), round.clone()));
        tasks.spawn(super::images::keep_collecting(daemon.clone(), round.clone()));
        tasks.spawn(super::requests::archive::keep_indexes(daemon.clone(), round.clone()));

        let requests = TaskTracker::new();
        let ended = tokio::select! {
            _ = serve(daemon, &self.control, &requests, &round) => Ended::Signal,
            Some(a) = self.asked.recv() => Ended::Asked(a),
        };
        round.cancel();
        match &ended {
            Ended::Signal => tracing::info!("stopping"),
            Ended::Asked(_) => tracing::info!("a new daemon takes the mount over: finishing what is under way"),
        }
        self.round = Some(Round { requests, seen });
        ended
    }

    /// Wait for the round's tasks and requests, at most [`SHUTDOWN_GRACE`]
    /// (a second signal: not at all).
    async fn drain(&mut self) {
        let Round { requests, seen } = self.round.take().expect("a round ran");
        let tasks = &self.daemon.tasks;
        tasks.close();
        requests.close();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            tasks.wait().await;
            requests.wait().await;
        });
        let drained = tokio::select! {
            d = drained => d.is_ok(),
            _ = self.signals.hurry.cancelled() => false,
        };
        if !drained {
            tracing::warn!(tasks = tasks.len(), requests = requests.len(), "going on without what is still under way");
        }
        self.fingerprint = seen.await.unwrap_or_default();
    }

    /// What follows the round: `None` is a stop.
    fn next(&mut self, ended: Ended) -> Option<Next> {
        match ended {
            Ended::Asked(takeover::Asked::Handover(offer)) => Some(Next::Hand(offer)),
            Ended::Asked(takeover::Asked::InPlace(reply)) => Some(Next::InPlace(reply)),
            // Under systemd, a stop that is half of a restart leaves the
            // mount in the fd store for the next process.
            Ended::Signal if self.state_fd.is_some() && !self.signals.hurry.is_cancelled() && systemd::restart_pending() => Some(Next::Store),
            Ended::Signal => None,
            Ended::Asked(takeover::Asked::Stop(successor)) => {
                // Closed when the stop is over: the successor mounts then.
                self.waiting_successor = Some(successor);
                None
            }
        }
    }

    /// Pause the mount and pass it on as `next` says, with the containers;
    /// where that fails, serve on.
    async fn continue_with(&mut self, next: Next) -> anyhow::Result<Continued> {
        let (fd, end) = self.fuse.take().expect("serving").pause()?;
        if end == crate::fuse::End::Gone {
            tracing::warn!("the mount went away meanwhile: nothing to hand over");
            return Ok(Continued::Gone);
        }
        let daemon = &self.daemon;
        daemon.store.flush(Duration::from_secs(5));
        let state = takeover::State { containers: daemon.pool.export().await, ..self.state.clone() };
        match next {
            Next::Store => {
                if let Some(sfd) = &self.state_fd {
                    inherit::write_state(sfd, &state)?;
                }
                tracing::info!("restarting: the mount, the control socket and the containers stay for the next process");
                return Ok(Continued::Handed);
            }
            Next::InPlace(reply) => {
                let sfd = self.state_fd.as_ref().expect("in place only under systemd");
                inherit::write_state(sfd, &state)?;
                tracing::info!("restarting in place: the mount, the control socket and the containers stay for the new image");
                let _ = systemd::notify("RELOADING=1", &[]);
                let kept = [(STORE_FUSE, fd.as_raw_fd()), (STORE_CONTROL, self.control.as_raw_fd()), (STORE_STATE, sfd.as_raw_fd()), (IN_PLACE_REPLY, reply.as_raw_fd())];
                let Err(e) = inherit::exec_in_place(&daemon.relaunch, &kept);
                tracing::warn!("cannot run the binary anew: {e}; serving on");
                let _ = systemd::notify("READY=1", &[]);
                let text = format!("restart: cannot run {} anew: {e}", daemon.relaunch.first().map_or("odfs".into(), |p| p.to_string_lossy()));
                let _ = protocol::send(&reply, &protocol::Response::Error(protocol::Failure::new(text)), &[]);
            }
            Next::Hand(offer) => {
                let handed = tokio::task::block_in_place(|| offer.hand(&state, &fd, &self.control));
                if handed {
                    tracing::info!("handed over: the new daemon serves the mount");
                    self.offers.abort();
                    return Ok(Continued::Handed);
                }
                tracing::warn!("the new daemon did not take the mount over: serving on");
            }
        }
        self.fuse = Some(crate::fuse::resume(self.fs.clone(), fd)?);
        Ok(Continued::Serving)
    }

    /// The end of a stop: the sockets and the share withdrawn, the mount
    /// gone, the idle containers removed; a successor waiting is let go.
    async fn unmount(self) {
        tracing::info!("unmounting and removing idle containers");
        self.offers.abort();
        let _ = std::fs::remove_file(takeover::socket_path(&self.cfg.run_dir));
        if self.state_fd.is_some() {
            inherit::forget_store();
        }
        drop(self.control);
        let socket = &self.cfg.socket;
        let _ = std::fs::remove_file(socket);
        if let (Some(dir), Some(name)) = (self.daemon.pool.inner().socket_dir(), socket.file_name()) {
            let _ = std::fs::remove_file(dir.join(name));
        }
        self.daemon.docs.withdraw();
        if let Err(e) = crate::fuse::session::unmount(&self.mountpoint) {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "cannot unmount: {e}");
        }
        drop(self.fuse);
        if let Some(id) = self.connection {
            crate::fuse::abort_connection(id);
        }
        self.daemon.pool.shutdown().await;
        drop(self.waiting_successor);
    }
}

/// How long a stopping daemon waits for requests under way (a start, a
/// hand-off) before it stops without them (a second signal: at once).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often the reaper steps every profile's lifecycle.
const REAP_EVERY: Duration = Duration::from_millis(500);

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
        let Some(entry) = daemon.snapshot().get(&name) else { continue };
        // The groups are read only where they matter: most images let
        // everyone in, and an open is on every call's path.
        let opener = if entry.image.allow_groups.is_empty() {
            protocol::peer::Peer { pid: by.pid as i32, uid: by.uid, gid: by.gid, groups: vec![], pidfd: None }
        } else {
            protocol::peer::requester(by.pid, by.uid, by.gid)
        };
        let opener = Arc::new(opener);
        if let Err(refused) = daemon.authorize(&entry, &opener) {
            tracing::debug!(command = name, uid = by.uid, pid = by.pid, groups = ?opener.groups, "no prewarm on open: {}", refused);
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
