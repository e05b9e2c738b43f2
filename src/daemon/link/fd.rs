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

use super::{AgentStatus, Launch, Setup, Target, AGENT_IN_CONTAINER, RUN_IN_CONTAINER};
use crate::backend::{Bind, ContainerBackend, ContainerSpec};
use crate::catalog::ImageSpec;
use crate::daemon::call::{CallError, PoolError, StartError, Started};
use crate::daemon::paths;
use crate::protocol::{self, AgentEvent, AgentRequest, SpawnRequest};
use crate::view::{RealFs, View};

/// How long the agent may take to report a tool started.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The view checked against the paths the call names (see [`paths`]).
pub async fn check_in_time(place: &paths::Place, to: &Target, launch: &Launch) -> Result<(), CallError> {
    let (view, image, cwd, args) = (to.view.clone(), launch.image.clone(), launch.spawn.cwd.clone(), launch.args.clone());
    paths::look(place, "the paths the call names", move || check_view(&view, &image, Path::new(std::ffi::OsStr::from_bytes(&cwd)), &args)).await?
}

/// How long a status question may take: a frozen container cannot hang us.
const STATUS_LIMIT: Duration = Duration::from_secs(2);

/// Where X servers listen (the abstract socket of the same name needs the
/// host's network namespace; this one any container can reach).
const X11_SOCKETS: &str = "/tmp/.X11-unix";

/// A device node an image passes must be one on this machine: else one
/// line that names it, not the engine's error at start.
fn check_device(image: &ImageSpec, dev: &str) -> Result<(), PoolError> {
    use std::os::unix::fs::FileTypeExt;
    let refuse = |why: String| {
        PoolError::Backend(crate::backend::BackendError::Unsupported(format!(
            "image {} passes the device {dev}, which {why}: load its driver or attach the device, or remove it from the image's `devices`",
            image.name
        )))
    };
    match std::fs::metadata(dev) {
        Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(refuse("is not a device node on this machine".into())),
        Err(e) => Err(refuse(format!("this machine does not have ({e})"))),
    }
}

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
        let host_top = setup.facts.host_top();
        let facts = setup.facts.image(setup.backend, image, &host_top, setup.view, setup.mount_id).await?;
        Ok(View::plan(&host_top, facts.as_ref().map_or(&[][..], |f| &f.filled), setup.view, &RealFs))
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
        let host_top = setup.facts.host_top();
        // Fetched just now, so here (or gone again: nothing to keep).
        let facts = setup.facts.image(setup.backend, image, &host_top, setup.view, setup.mount_id).await?.unwrap_or_default();
        let mut view = View::plan(&host_top, &facts.filled, setup.view, &RealFs);
        // The caller's identity reaches the image without writing it:
        // generated account files, bound over the image's.
        let (passwd, group) = crate::daemon::accounts::seed(run, &facts)
            .map_err(|e| PoolError::setup(format!("write the account files in {}", run.display()), e))?;
        spec.binds = vec![
            Bind::plain(setup.agent.to_path_buf(), AGENT_IN_CONTAINER, true),
            Bind::plain(run.clone(), RUN_IN_CONTAINER, false),
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
        spec.host_namespaces = crate::view::shares_host_namespaces(image.host_namespaces(), &mountinfo);
        if spec.host_namespaces {
            // The host's IPC namespace comes with its /dev/shm (the engine
            // binds it): POSIX shared memory there is the host's, and a path
            // the caller names there is the caller's file.
            view.host.push(crate::view::HOST_SHM.into());
        }
        // Devices passed are the host's nodes at the same path: named there,
        // they are the caller's device.
        for dev in &spec.devices {
            check_device(image, dev)?;
            view.host.push(dev.into());
        }
        // A graphical tool draws on the caller's display: X11's sockets,
        // wherever the image's own /tmp would hide them.
        if image.gui && Path::new(X11_SOCKETS).is_dir() && !view.sees_host(Path::new(X11_SOCKETS)) {
            spec.binds.push(Bind { source: X11_SOCKETS.into(), target: X11_SOCKETS.into(), read_only: true, follow_host: true });
        }
        if !spec.host_namespaces && image.network != crate::catalog::Network::Host {
            spec.hostname = host_name();
        }
        // A tool runs the mount's tools as its caller does: through the
        // shims on its PATH, the launcher and the socket.
        let inner = setup.inner;
        if !inner.mountpoint.as_os_str().is_empty() {
            spec.entrypoint.extend(["--path-tail".to_string(), inner.mountpoint.display().to_string()]);
            if !view.sees_host(&inner.mountpoint) {
                spec.binds.push(Bind { source: inner.mountpoint.clone(), target: inner.mountpoint.clone(), read_only: true, follow_host: true });
            }
            if !view.sees_host(&inner.launcher) {
                spec.binds.push(Bind::plain(inner.launcher.clone(), inner.launcher.clone(), true));
            }
            if !view.sees_host(&inner.socket) {
                spec.binds.push(match (inner.socket_dir(), inner.socket.parent()) {
                    (Some(dir), Some(parent)) => Bind::plain(dir, parent.to_path_buf(), true),
                    _ => Bind::plain(inner.socket.clone(), inner.socket.clone(), false),
                });
            }
        }
        Ok(view)
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

/// Refuse a call whose tool would not see, at a path the caller names (its
/// cwd, its arguments), the host's file the caller means.
fn check_view(view: &View, image: &str, cwd: &Path, args: &[Vec<u8>]) -> Result<(), CallError> {
    if let Err(c) = view.check_cwd(cwd) {
        return Err(CallError::NotShared(format!(
            "working directory {} is not shared with image {image} (the tool would see the image's own {}; cd into a shared directory or add it to shared)",
            cwd.display(),
            c.image_dir
        )));
    }
    view.check_args(cwd, args, &RealFs).map_err(|c| CallError::NotShared(c.message(image)))
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
    spawn.channel = channel.is_some();
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
            Ok(Started { agent, pid, container, pty_master: got.pop(), relayed: false, sent_at, started_at })
        }
        Ok(Some((AgentEvent::Failed(f), _))) => Err(StartError::Refused(CallError::Spawn(f))),
        Ok(Some((other, _))) => Err(StartError::Refused(CallError::Start(format!("unexpected agent answer {other:?}")))),
        Ok(None) if channel.is_some() => Err(StartError::Refused(CallError::Start("the container's agent went away while starting the tool".into()))),
        Ok(None) => Err(StartError::Unreachable("the agent closed the connection".into())),
        Err(e) => Err(classify(e)),
    }
}

/// The host's name, for containers that do not share its network.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
