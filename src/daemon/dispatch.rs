//! The control socket's front door: who is asking (admission at accept,
//! from kernel-reported credentials, and the places a user's requests and
//! fds may take), and the one table of which handler answers a request.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::call::{CallError, Caller, Throttled};
use super::{listener, stamps, Daemon};
use crate::backend::ContainerBackend;
use crate::protocol::{self, ExecRequest, Failure, Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accept control connections until `stop`, each one admitted at once
/// (see [`admit`]) and served in a task under `requests`.
pub(super) async fn serve<B: ContainerBackend>(
    daemon: &Arc<Daemon<B>>,
    control: &tokio::net::UnixListener,
    requests: &TaskTracker,
    stop: &CancellationToken,
) {
    let gates = Gates::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Some(admitted) = admit(&stream, &gates) {
                        requests.spawn(daemon.clone().handle(stream, admitted, gates.clone()));
                    }
                }
                Err(e) => {
                    // Wait instead of spinning on the same error.
                    ACCEPT_ERRORS.note(None, &format!("accept: {e} (waiting before the next connection)"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

impl<B: ContainerBackend> Daemon<B> {
    /// One control connection: the peer fixed now, the request read within
    /// [`listener::REQUEST_DEADLINE`] while the peer holds one of its
    /// user's few places for requests being read, then answered by its
    /// handler (exec.rs for a call, [`requests`](super::requests) for the rest).
    async fn handle(self: Arc<Self>, stream: tokio::net::UnixStream, admitted: Admitted, gates: Gates) {
        let Admitted { accepted, peer, inside, places, serving: _serving, reading: ticket } = admitted;
        let msg = match tokio::time::timeout(listener::REQUEST_DEADLINE, listener::read_frame(&stream, peer.uid, &gates.large)).await {
            Ok(m) => m,
            Err(_) => return tracing::debug!(uid = peer.uid, "dropped a request not complete within {:?}", listener::REQUEST_DEADLINE),
        };
        let stamps = protocol::stages::DaemonStamps { accepted, read: protocol::stages::now_ns(), ..Default::default() };
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
        // tool's stamp ([`stamps`]): never manage odfs.
        if inside && !matches!(msg, Ok(Some((Request::Exec(_), _)))) {
            REFUSALS.note(Some(caller.uid), "refused a request from inside a container");
            return self.answer(conn, Response::Error(CallError::from(stamps::StampRefusal::Unstamped).into_failure(Some(caller.uid))));
        }
        let (request, fds) = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => return REFUSALS.note(Some(caller.uid), &format!("refused a bad request: {e}")),
        };
        let answer = match request {
            Request::Exec(req) => {
                let (_held, fds) = match hold_fds(&gates, places, caller.uid, &req, fds) {
                    Ok(held) => held,
                    Err(e) => return self.answer(conn, Response::Error(e.into_failure(Some(caller.uid)))),
                };
                let call = super::exec::Call::new(caller, inside, stamps);
                let span = call.span(&req);
                return tracing::Instrument::instrument(self.exec(conn, req, fds, call), span).await;
            }
            Request::Status => self.status().await,
            Request::Stats => self.stats(),
            Request::List => self.list(),
            Request::Add { command, image, path } => self.add(&caller, &command, &image, path.as_deref()),
            Request::Remove { command } => self.remove(&caller, &command),
            Request::Stop { command, force } => self.stop(&caller, command.as_deref(), force).await,
            Request::Prewarm { command } => self.prewarm(&caller, &command, &conn).await,
            Request::Scan { image, add } => self.scan(&caller, &image, add).await,
            Request::Provides { command } => self.provides(&caller, &command).await,
            Request::Hint { command } => self.hint(&caller, &command),
            Request::View { command } => self.view(&caller, &command).await,
            Request::Update { archive: true, .. } => self.update_archive(&caller, &conn).await,
            Request::Update { commands, check, archive: false } => self.update(&caller, &commands, check, &conn).await,
            Request::Gc { dry_run, max_age_s, budget } => self.gc(&caller, dry_run, max_age_s, budget).await,
            Request::Restart => return self.restart(&caller, conn).await,
            Request::Pull { commands } => self.pull(&caller, &commands, &conn).await,
            // Only ever an answer on an exec request's connection.
            Request::Answer { .. } => Err(crate::protocol::Failure::with_status("an answer without a question", 1)),
        };
        self.answer(conn, answer.unwrap_or_else(Response::Error));
    }
}

/// Places for the fds a call brings: they count against its user's share
/// of the daemon's until the call is handed off or refused. Refused, the
/// fds are closed before the caller hears how to pass fewer.
fn hold_fds(gates: &Gates, places: u32, uid: u32, req: &ExecRequest, fds: Vec<OwnedFd>) -> Result<(listener::Ticket, Vec<OwnedFd>), CallError> {
    let Some(held) = gates.fds.enter_n(places, fds.len()) else {
        drop(fds);
        let message = format!(
            "too many open files passed at once by the calls of uid {uid} ({} held, this call brings {}, at most {} per user): run fewer calls at once, or close the files the tool does not need",
            gates.fds.taken(places),
            req.passed.fds.len(),
            gates.fds.per_uid()
        );
        REFUSALS.note(Some(uid), &message);
        return Err(CallError::Request(message));
    };
    Ok((held, fds))
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
    /// When it was accepted ([`crate::protocol::stages`]).
    accepted: u64,
    peer: listener::Peer,
    inside: bool,
    /// Whose places it takes (root inside containers has its own).
    places: u32,
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
            REFUSALS.note(None, &format!("refused a connection: no peer credentials: {e}"));
            return None;
        }
    };
    let refuse = |message: String| {
        REFUSALS.note(Some(peer.uid), &format!("refused a connection: {message}"));
        if let Ok(frame) = protocol::frame(&Response::Error(Failure::new(message))) {
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
    Some(Admitted { accepted: protocol::stages::now_ns(), peer, inside, places, serving, reading })
}

/// Refused connections and bad requests.
static REFUSALS: Throttled = Throttled::new();
/// Failed accepts (out of fds, most likely).
static ACCEPT_ERRORS: Throttled = Throttled::new();

/// The control socket's places (see [`listener`]).
#[derive(Clone)]
struct Gates {
    in_flight: Arc<listener::Gate>,
    reading: Arc<listener::Gate>,
    large: Arc<listener::Gate>,
    /// The callers' fds the daemon holds.
    fds: Arc<listener::Gate>,
}

impl Gates {
    fn new() -> Gates {
        let mut nofile = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
        // SAFETY: getrlimit fills the struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
        Gates {
            in_flight: listener::Gate::in_flight(),
            reading: listener::Gate::reading(),
            large: listener::Gate::large(),
            fds: listener::Gate::fds(nofile.rlim_cur),
        }
    }
}
