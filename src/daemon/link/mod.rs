//! The way from the daemon to a container's agent, picked once per profile:
//! [`fd`] on a local engine (the agent's socket on the host, the caller's
//! fds passed to it), [`relay`] on a remote one (an exec stream through the
//! engine's API, the daemon between the tool and the caller). Everything
//! that differs between the two is here, behind one [`Link`]; the pool and
//! the exec path above it do not branch on the path.

mod fd;
mod host_view;
mod relay;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::call::{CallError, PoolError, StartError, Started};
use super::facts::Facts;
use crate::backend::outbound::Outbound;
use crate::backend::{ContainerBackend, ContainerSpec, ExecPath};
use crate::catalog::ImageSpec;
use crate::protocol::{Finished, SpawnRequest};
use crate::view::{View, ViewSettings};

/// Where the agent lives inside every container.
pub const AGENT_IN_CONTAINER: &str = "/.odfs/odfs-agent";
/// The agent's run directory inside every container (its socket).
const RUN_IN_CONTAINER: &str = "/.odfs/run";
/// The agent's socket inside every container.
pub const SOCKET_IN_CONTAINER: &str = "/.odfs/run/agent.sock";

/// What an agent says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub running: u32,
    pub idle_ms: u64,
    pub finished: Vec<Finished>,
    /// Bytes the container's cgroup holds (0: unknown).
    pub memory: u64,
    /// Bytes the engine's process beside it holds (containerd's shim,
    /// Podman's conmon: outside the cgroup), its proportional share
    /// (`Pss`); 0 when it cannot be seen from here (a remote engine).
    pub beside: u64,
}

impl AgentStatus {
    /// The status an agent's answer carries; any other answer is given back.
    pub fn of(event: crate::protocol::AgentEvent) -> Result<AgentStatus, crate::protocol::AgentEvent> {
        match event {
            crate::protocol::AgentEvent::Status { running, idle_ms, finished, memory } => Ok(AgentStatus { running, idle_ms, finished, memory, beside: 0 }),
            other => Err(other),
        }
    }
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

impl InnerCalls {
    /// The directory that holds, for containers, a second name of the
    /// control socket (a hard link, renewed at each start): bound at the
    /// socket's own directory, it lets a container created by an earlier
    /// daemon reach this one. A bind of the socket file itself would hold
    /// on to the dead socket of the run that created it. Only that name is
    /// in it: the socket's directory may hold the state (the history).
    pub fn socket_dir(&self) -> Option<PathBuf> {
        let (parent, name) = (self.socket.parent()?, self.socket.file_name()?);
        // A socket right under a top-level directory would need that whole
        // directory covered inside: it keeps a bind of its own.
        parent.parent().filter(|g| *g != Path::new("/"))?;
        Some(parent.join(format!(".{}.containers", name.to_string_lossy())))
    }

    /// Give the socket its name in [`InnerCalls::socket_dir`], replacing
    /// the one an earlier run left.
    pub fn link_socket(&self) -> std::io::Result<()> {
        let Some(dir) = self.socket_dir() else { return Ok(()) };
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let name = self.socket.file_name().expect("checked by socket_dir");
        let fresh = dir.join(format!(".{}.new", std::process::id()));
        let _ = std::fs::remove_file(&fresh);
        std::fs::hard_link(&self.socket, &fresh)?;
        std::fs::rename(&fresh, dir.join(name))
    }
}

/// What a link needs from the pool to set up a container.
pub struct Setup<'a, B> {
    pub backend: &'a B,
    pub facts: &'a Facts,
    pub agent: &'a Path,
    pub view: &'a ViewSettings,
    pub inner: &'a InnerCalls,
    pub mount_id: &'a str,
    /// The agent as a tar, made once, for engines it is copied into.
    pub archive: &'a OnceLock<bytes::Bytes>,
}

/// The container a call goes to.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    /// Its name (invocations record it).
    pub name: String,
    pub token: String,
    /// What its tools see of the host.
    pub view: Arc<View>,
}

/// A tool to start: the agent's request, the caller's fds (numbered as
/// `spawn.passed.fds` says), and what the checks and the account files need.
#[derive(Clone)]
pub struct Launch {
    pub spawn: SpawnRequest,
    pub fds: Arc<Vec<OwnedFd>>,
    /// The caller's own arguments (paths it names are checked against the view).
    pub args: Vec<Vec<u8>>,
    /// The catalog name of the image, for refusals.
    pub image: String,
    /// The caller's passwd and group lines, where the link writes them.
    pub accounts: (Option<String>, Option<String>),
    /// The launcher's channel ([`crate::protocol::ExecRequest::channel`]),
    /// which the fd path passes to the agent; a relayed call does not use it.
    pub channel: Option<Arc<OwnedFd>>,
    /// Who asked: the start takes one of that user's places.
    pub caller_uid: u32,
}

/// Where the tools of this engine run, as a call's request is shaped
/// before its container is known: on this host (the fd path), where the
/// caller's working directory and the site's files are the tool's too; or
/// on a remote engine (the relay), where only the image's `remote_dirs`
/// are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach(ExecPath);

impl Reach {
    /// Where tools run on an engine that offers `path`.
    pub fn of(path: ExecPath) -> Reach {
        Reach(path)
    }

    /// Whether tools run on a remote engine.
    pub fn remote(self) -> bool {
        self.0 == ExecPath::Relay
    }

    /// The tool's working directory, from the caller's (`cwd`, or why it
    /// cannot be read): on this host that one, which must be known. On a
    /// remote engine the caller's paths are the remote side's: the
    /// caller's when it is under one of the image's `remote_dirs`, else
    /// `/`, with the caller's given back as the one the tool does not get.
    pub fn cwd(self, cwd: Result<PathBuf, CallError>, image: &ImageSpec) -> Result<(PathBuf, Option<PathBuf>), CallError> {
        if !self.remote() {
            return Ok((cwd?, None));
        }
        let cwd = cwd.unwrap_or_else(|_| PathBuf::from("/"));
        if image.remote_dirs.iter().any(|d| cwd.starts_with(d)) {
            return Ok((cwd, None));
        }
        Ok((PathBuf::from("/"), Some(cwd)))
    }

    /// The site's variables for a networked tool ([`Outbound::tool_env`]):
    /// its CA bundle is a file of this host's.
    pub fn site_env(self, outbound: &Outbound) -> Vec<(String, String)> {
        outbound.tool_env(!self.remote())
    }
}

/// One profile's way to its container's agent.
#[derive(Debug)]
pub enum Link {
    Fd(fd::FdLink),
    Relay(relay::RelayLink),
}

impl Link {
    /// The link for a profile whose container is `name`, on an engine that
    /// offers `path`; local run directories go under `run_dir`.
    pub fn new(path: ExecPath, run_dir: &Path, name: &str) -> Link {
        match path {
            ExecPath::Fd => Link::Fd(fd::FdLink::new(run_dir.join(name))),
            ExecPath::Relay => Link::Relay(relay::RelayLink::default()),
        }
    }

    pub fn path(&self) -> ExecPath {
        match self {
            Link::Fd(_) => ExecPath::Fd,
            Link::Relay(_) => ExecPath::Relay,
        }
    }

    /// What a container of `image` would see of the host now.
    pub async fn plan_view<B: ContainerBackend>(&self, setup: &Setup<'_, B>, image: &ImageSpec) -> Result<View, PoolError> {
        match self {
            Link::Fd(l) => l.plan_view(setup, image).await,
            Link::Relay(l) => Ok(l.plan_view(image)),
        }
    }

    /// Fill in the link's part of a container's spec; returns what its
    /// tools will see of the host.
    pub async fn prepare<B: ContainerBackend>(&self, setup: &Setup<'_, B>, image: &ImageSpec, spec: &mut ContainerSpec) -> Result<View, PoolError> {
        match self {
            Link::Fd(l) => l.prepare(setup, image, spec).await,
            Link::Relay(l) => l.prepare(setup, image, spec),
        }
    }

    /// A container was started or adopted for this profile.
    pub fn started(&self) {
        if let Link::Relay(l) = self {
            l.started();
        }
    }

    /// Wait up to `limit` for the agent of container `id` to answer.
    pub async fn probe<B: ContainerBackend>(&self, backend: &B, id: &str, token: &str, limit: Duration) -> std::io::Result<AgentStatus> {
        match self {
            Link::Fd(l) => blocking(l, token, move |l, t| l.wait_ready(&t, limit)).await,
            Link::Relay(l) => l.probe(backend, id, token, limit).await,
        }
    }

    /// The agent's running tools, idle time and tools ended since the last
    /// question, or why it does not answer.
    pub async fn status(&self, token: &str) -> std::io::Result<AgentStatus> {
        match self {
            Link::Fd(l) => blocking(l, token, |l, t| l.status(&t)).await,
            Link::Relay(l) => Ok(l.status()),
        }
    }

    /// Start a tool in the container `to`.
    pub async fn start<B: ContainerBackend>(&self, backend: &B, to: &Target, launch: Launch) -> Result<Started, StartError> {
        match self {
            Link::Fd(l) => {
                let place = super::paths::place(launch.caller_uid).await.map_err(StartError::Refused)?;
                fd::check_in_time(&place, to, &launch).await.map_err(StartError::Refused)?;
                let (l, to, span) = (l.clone(), to.clone(), tracing::Span::current());
                tokio::task::spawn_blocking(move || {
                    let _place = place;
                    span.in_scope(|| l.start(&to, launch))
                })
                .await
                .map_err(|e| StartError::Refused(CallError::Start(e.to_string())))?
            }
            Link::Relay(l) => l.start(backend, to, launch).await,
        }
    }
}

/// Run a blocking question to a local agent off the async workers.
async fn blocking<T: Send + 'static>(
    l: &fd::FdLink,
    token: &str,
    ask: impl FnOnce(fd::FdLink, String) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let (l, token) = (l.clone(), token.to_string());
    tokio::task::spawn_blocking(move || ask(l, token)).await.map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(remote_dirs: &str) -> ImageSpec {
        let text = format!("[image.i]\nref = \"r\"\nremote_dirs = {remote_dirs}\ncommands = [\"x\"]\n");
        crate::catalog::parse_file(Path::new("t.toml"), &text).unwrap().images["i"].clone()
    }

    #[test]
    fn a_tool_here_runs_where_its_caller_is_a_remote_one_only_under_the_image_s_remote_dirs() {
        let (here, remote, image) = (Reach::of(ExecPath::Fd), Reach::of(ExecPath::Relay), image("[\"/srv\"]"));
        let gone = || Err::<PathBuf, _>(CallError::Caller("gone".into()));
        assert_eq!(here.cwd(Ok("/home/u".into()), &image).ok(), Some(("/home/u".into(), None)));
        assert!(matches!(here.cwd(gone(), &image), Err(CallError::Caller(m)) if m == "gone"));
        assert_eq!(remote.cwd(Ok("/srv/data".into()), &image).ok(), Some(("/srv/data".into(), None)));
        assert_eq!(remote.cwd(Ok("/home/u".into()), &image).ok(), Some(("/".into(), Some("/home/u".into()))));
        // A directory it cannot read is `/` to the remote side.
        assert_eq!(remote.cwd(gone(), &image).ok(), Some(("/".into(), Some("/".into()))));
    }
}
