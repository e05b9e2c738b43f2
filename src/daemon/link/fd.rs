//! The local link: the agent's socket sits in a root-only host directory
//! bound into the container, and a call's fds cross it (SCM_RIGHTS) to the
//! agent, which starts the tool on them. The container sees the host at the
//! same paths (its view), so this is also where that view is set up.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{host_view, AgentStatus, Launch, Setup, Target};
use crate::backend::{ContainerBackend, ContainerSpec};
use crate::catalog::ImageSpec;
use crate::daemon::call::{CallError, PoolError, StartError, Started};
use crate::daemon::paths;
use crate::protocol::{self, AgentEvent, AgentRequest, SpawnRequest};
use crate::view::View;

/// How long the agent may take to report a tool started.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The view checked against the paths the call names (see [`paths`]).
pub async fn check_in_time(place: &paths::Place, to: &Target, launch: &Launch) -> Result<(), CallError> {
    let (view, image, cwd, args) = (to.view.clone(), launch.image.clone(), launch.spawn.cwd.clone(), launch.args.clone());
    paths::look(place, "the paths the call names", move || host_view::check_view(&view, &image, Path::new(std::ffi::OsStr::from_bytes(&cwd)), &args)).await?
}

/// How long a status question may take: a frozen container cannot hang us.
const STATUS_LIMIT: Duration = Duration::from_secs(2);

/// A profile's container as the local link reaches it.
#[derive(Debug, Clone)]
pub struct FdLink {
    /// The container's run directory on the host (root-only), bound at
    /// [`RUN_IN_CONTAINER`]: the agent's socket and the account files.
    dir: PathBuf,
}

impl FdLink {
    pub fn new(dir: PathBuf) -> FdLink {
        FdLink { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// What a container of `image` would see of the host now.
    pub async fn plan_view<B: ContainerBackend>(&self, setup: &Setup<'_, B>, image: &ImageSpec) -> Result<View, PoolError> {
        host_view::plan(setup, image).await
    }

    /// The local parts of a container's spec: the agent and its run
    /// directory, the caller's account files, the host view at the same
    /// paths, the host's namespaces where the image may share them, and
    /// what tools need to call the mount's tools.
    pub async fn prepare<B: ContainerBackend>(
        &self,
        setup: &Setup<'_, B>,
        image: &ImageSpec,
        spec: &mut ContainerSpec,
    ) -> Result<View, PoolError> {
        let run = &self.dir;
        make_private_dir(run).map_err(|e| PoolError::setup(format!("create {}", run.display()), e))?;
        let _ = std::fs::remove_file(self.socket());
        host_view::fill(setup, image, run, spec).await
    }

    /// Ask the agent how it is; blocking.
    pub fn status(&self, token: &str) -> std::io::Result<AgentStatus> {
        status(&self.socket(), token)
    }

    /// Wait until the agent answers, up to `limit`; blocking.
    pub fn wait_ready(&self, token: &str, limit: Duration) -> std::io::Result<AgentStatus> {
        protocol::retry(limit, || self.status(token))
    }

    /// Start a tool whose paths passed [`check_in_time`]: the caller made
    /// known to the container's account files, the request and the
    /// caller's fds passed to the agent. Blocking.
    pub fn start(&self, to: &Target, launch: Launch) -> Result<Started, StartError> {
        let id = &launch.spawn.identity;
        let (passwd, group) = &launch.accounts;
        if let Err(e) = crate::daemon::accounts::ensure_known(&self.dir, id.uid, id.gid, passwd.as_deref(), group.as_deref()) {
            tracing::warn!(container = to.name, "cannot add uid {} to the container's account files: {e}", id.uid);
        }
        start_tool(&self.socket(), launch.spawn, &launch.fds, launch.channel.as_deref(), to.name.clone())
    }
}

/// Ask an agent how many tools it runs and how long it has been idle.
fn status(socket: &Path, token: &str) -> std::io::Result<AgentStatus> {
    let conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(STATUS_LIMIT))?;
    conn.set_write_timeout(Some(STATUS_LIMIT))?;
    let bad = |m: String| std::io::Error::other(m);
    protocol::send(&conn, &AgentRequest::Status { token: token.to_string() }, &[]).map_err(|e| bad(e.to_string()))?;
    let mut status = match protocol::recv::<AgentEvent>(&conn).map_err(|e| bad(e.to_string()))? {
        Some((ev, _)) => AgentStatus::of(ev).map_err(|ev| bad(format!("unexpected agent answer {ev:?}")))?,
        None => return Err(bad("the agent closed the connection".into())),
    };
    // The agent is the container's first process: its parent is the
    // engine's process for it.
    if let Ok(cred) = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials) {
        status.beside = engine_process_memory(cred.pid()).unwrap_or(0);
    }
    Ok(status)
}

/// What the engine's process beside a container holds, given its first
/// process: the parent's proportional set size, if that parent is one of
/// the engines' per-container processes (the shim's code pages are shared
/// among all of them; `Pss` gives each its share).
fn engine_process_memory(first: i32) -> Option<u64> {
    let parent = crate::protocol::peer::parent_of(first)?;
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    if !(comm.starts_with("containerd-shim") || comm.starts_with("conmon")) {
        return None;
    }
    let rollup = std::fs::read_to_string(format!("/proc/{parent}/smaps_rollup")).ok()?;
    pss_bytes(&rollup)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_proportional_set_is_read_from_a_real_rollup() {
        let own = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
        assert!(super::pss_bytes(&own).unwrap() > 1 << 20);
        assert_eq!(super::pss_bytes("Rss: 10 kB\nPss:  12174 kB\n"), Some(12174 << 10));
        assert_eq!(super::pss_bytes("garbage"), None);
        // This process is no engine's: nothing is counted for its child.
        assert_eq!(super::engine_process_memory(std::process::id() as i32), None);
    }
}

/// `Pss:` of a `smaps_rollup`, in bytes.
fn pss_bytes(rollup: &str) -> Option<u64> {
    let kb: u64 = rollup.lines().find_map(|l| l.strip_prefix("Pss:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb << 10)
}

/// Whether a failure talking to an agent means the agent is gone (its
/// socket refuses, the connection breaks or ends), as opposed to something
/// about this one request (too large, malformed), which is the caller's.
fn agent_gone(e: &protocol::FrameError) -> bool {
    use std::io::ErrorKind as K;
    match e {
        protocol::FrameError::Io(io) => {
            matches!(io.kind(), K::ConnectionRefused | K::NotFound | K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof)
        }
        protocol::FrameError::Truncated => true,
        _ => false,
    }
}

/// Ask the agent to start the tool with the caller's fds, and the launcher's
/// channel if it sent one (the agent then reports there, and answers here
/// only whether the tool started); blocking. Only an
/// agent that is gone makes the container be replaced: the container serves
/// other callers, so a request that fails on its own merits is refused to
/// its caller alone.
fn start_tool(socket: &Path, mut spawn: SpawnRequest, fds: &Arc<Vec<OwnedFd>>, channel: Option<&OwnedFd>, container: String) -> Result<Started, StartError> {
    spawn.passed.channel = channel.is_some();
    let classify = |e: protocol::FrameError| {
        if agent_gone(&e) {
            StartError::Unreachable(e.to_string())
        } else {
            StartError::Refused(CallError::Request(format!("the request cannot be passed to the tool: {e} (fewer or shorter arguments or environment)")))
        }
    };
    let body = protocol::encode(&AgentRequest::Spawn(Box::new(spawn))).map_err(classify)?;
    if body.len() > protocol::MAX_FRAME {
        return Err(classify(protocol::FrameError::TooLarge(body.len())));
    }
    let conn = UnixStream::connect(socket).map_err(|e| classify(e.into()))?;
    // The tool's start (its cwd, its program) may sit on a file system that
    // never answers: the caller is told, and this thread is not held.
    conn.set_read_timeout(Some(START_LIMIT)).map_err(|e| classify(e.into()))?;
    let raw: Vec<i32> = fds.iter().chain(channel).map(|f| f.as_raw_fd()).collect();
    let sent_at = protocol::stages::now_ns();
    protocol::write_frame(&conn, &body, &raw).map_err(classify)?;
    // Once the agent may hold the channel it may have started the tool and
    // said so there: an agent lost now is not retried in a new container,
    // which would run the tool a second time on the same channel.
    let classify = |e: protocol::FrameError| match (classify(e), channel) {
        (StartError::Unreachable(e), Some(_)) => StartError::Refused(CallError::Start(format!("the container's agent went away while starting the tool ({e})"))),
        (other, _) => other,
    };
    let answer = protocol::recv::<AgentEvent>(&conn);
    let started_at = protocol::stages::now_ns();
    let _ = conn.set_read_timeout(None);
    match answer {
        Err(protocol::FrameError::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Err(StartError::Refused(CallError::Start(format!(
                "the tool did not start within {}s (its working directory or a file system it needs does not answer)",
                START_LIMIT.as_secs()
            ))))
        }
        Ok(Some((AgentEvent::Started { pid }, mut got))) => {
            let agent = (channel.is_none()).then_some(conn);
            Ok(Started { agent, pid, container, pty_master: got.pop(), relayed: false, sent_at, started_at, up: Default::default() })
        }
        Ok(Some((AgentEvent::Failed(f), _))) => Err(StartError::Refused(CallError::Spawn(f))),
        Ok(Some((other, _))) => Err(StartError::Refused(CallError::Start(format!("unexpected agent answer {other:?}")))),
        Ok(None) if channel.is_some() => Err(StartError::Refused(CallError::Start("the container's agent went away while starting the tool".into()))),
        Ok(None) => Err(StartError::Unreachable("the agent closed the connection".into())),
        Err(e) => Err(classify(e)),
    }
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
