//! What a start inherits instead of mounting afresh: a live daemon's
//! mount, control socket and containers (a takeover), or the fds systemd's
//! store kept (a restart, a crash) or an in-place restart kept across its
//! `execve`; and how those fds are kept for the next process.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use super::{systemd, takeover};
use crate::backend::ContainerBackend;
use crate::catalog::Snapshot;

/// What an earlier process of this mount passes on, instead of a fresh
/// mount: a live daemon's takeover, or systemd's fd store after a restart.
pub(super) enum Inherited {
    Predecessor(takeover::Taken),
    /// The fd store: the daemon before this one stopped for a restart or
    /// died. Requests it had read and not answered are sent again. Or the
    /// same fds kept across an in-place restart ([`IN_PLACE_ENV`]), with
    /// `odfs restart`'s connection to answer.
    Store { fuse: OwnedFd, control: OwnedFd, state: takeover::State, state_fd: Option<OwnedFd>, reply: Option<std::os::unix::net::UnixStream> },
}

/// Names the fds an in-place restart keeps across `execve`
/// (`fuse=N,control=N,state=N,reply=N`); this process's own, read once.
pub(super) const IN_PLACE_ENV: &str = "ODFS_IN_PLACE_FDS";
/// The name of `odfs restart`'s connection among them.
pub(super) const IN_PLACE_REPLY: &str = "reply";

/// systemd's fd-store names.
pub(super) const STORE_FUSE: &str = "fuse";
pub(super) const STORE_CONTROL: &str = "control";
pub(super) const STORE_STATE: &str = "state";

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
pub(super) fn exec_in_place(relaunch: &[std::ffi::OsString], fds: &[(&str, RawFd)]) -> std::io::Result<std::convert::Infallible> {
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
pub(super) fn state_memfd(state: &takeover::State) -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"odfs-state", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    write_state(&fd, state)?;
    Ok(fd)
}

pub(super) fn write_state(fd: &OwnedFd, state: &takeover::State) -> std::io::Result<()> {
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

impl Inherited {
    /// What this start inherits: the fds systemd's store or an in-place
    /// restart kept, else a live daemon's mount (it hands over), else
    /// nothing (a fresh mount).
    pub(super) async fn find(run_dir: &Path, mountpoint: &Path) -> anyhow::Result<Option<Inherited>> {
        if let Some(i) = from_store(mountpoint) {
            return Ok(Some(i));
        }
        let (run_dir, mp) = (run_dir.to_path_buf(), mountpoint.to_path_buf());
        Ok(tokio::task::spawn_blocking(move || takeover::take(&run_dir, &mp)).await??.map(Inherited::Predecessor))
    }

    /// The state handed on with the fds.
    pub(super) fn state(&self) -> &takeover::State {
        match self {
            Inherited::Predecessor(t) => &t.state,
            Inherited::Store { state, .. } => state,
        }
    }
}

/// The containers a start begins with: those a predecessor handed over,
/// else those an earlier run left running (adopted). `false`: a stop came
/// while the engine was asked, and nothing is served yet.
pub(super) async fn containers<B: ContainerBackend>(pool: &Pool<B>, inherited: Option<&Inherited>, snapshot: &Snapshot, stop: &CancellationToken) -> bool {
    let images: Vec<_> = snapshot.images.values().cloned().collect();
    let taken = match inherited {
        Some(Inherited::Predecessor(t)) => pool.import(&images, t.state.containers.clone()).await,
        _ => 0,
    };
    if taken > 0 {
        tracing::info!(containers = taken, "containers taken over");
        return true;
    }
    // The engine may hang (up to its request timeout): a stop now must not
    // wait for it.
    tokio::select! {
        adopted = pool.adopt(&images) => {
            if let Err(e) = adopted {
                tracing::warn!("cannot look for containers of an earlier run: {e}");
            }
            true
        }
        _ = stop.cancelled() => {
            tracing::info!("stopped while starting");
            false
        }
    }
}

/// The mount and the control socket as this start has them.
pub(super) struct Had {
    pub control: std::os::unix::net::UnixListener,
    pub fuse: crate::fuse::Server,
    /// The INIT the kernel and the first daemon agreed (unknown after a
    /// store without a state).
    pub init: Option<crate::fuse::abi::Init>,
    /// A live predecessor, told once this process serves.
    pub predecessor: Option<takeover::Taken>,
    /// The fd store's state, written again rather than stored twice.
    pub state_fd: Option<OwnedFd>,
    /// `odfs restart`'s connection, answered once this process serves.
    pub reply: Option<UnixStream>,
}

/// Mount afresh (binding the control socket) or serve on what was
/// inherited; after a store, ask the kernel to send again what the dead
/// daemon had read and not answered.
pub(super) fn mount(inherited: Option<Inherited>, fs: std::sync::Arc<crate::fs::ShimFs>, mountpoint: &Path, socket: &Path) -> anyhow::Result<Had> {
    let mount_err = || format!("cannot mount {}", mountpoint.display());
    Ok(match inherited {
        None => {
            let control = bind_control(socket)?;
            let (fuse, init) = crate::fuse::mount(fs, mountpoint).with_context(mount_err)?;
            Had { control, fuse, init: Some(init), predecessor: None, state_fd: None, reply: None }
        }
        Some(Inherited::Predecessor(t)) => {
            let fuse = crate::fuse::resume(fs, t.fuse.try_clone()?).with_context(mount_err)?;
            let (control, init) = (listener_from(t.control.try_clone()?)?, t.state.init);
            Had { control, fuse, init, predecessor: Some(t), state_fd: None, reply: None }
        }
        Some(Inherited::Store { fuse, control, state, state_fd, reply }) => {
            let fuse = crate::fuse::resume(fs, fuse).with_context(mount_err)?;
            // What the dead daemon had read and not answered.
            // The INIT the first daemon agreed says whether the kernel can.
            let resend = match state.init {
                Some(init) if !init.can_resend() => Err(std::io::Error::other("the kernel did not offer FUSE_HAS_RESEND")),
                _ => fuse.notifier().resend(),
            };
            match resend {
                Ok(()) => tracing::info!("asked the kernel to send again what the previous daemon had not answered"),
                Err(e) => tracing::warn!("the kernel cannot send again what the previous daemon had read (needs Linux 6.9): those callers wait for their answer until the connection goes: {e}"),
            }
            Had { control: listener_from(control)?, fuse, init: state.init, predecessor: None, state_fd, reply }
        }
    })
}

/// Under systemd: the mount, the control socket and `state` kept in the fd
/// store for the next process (in `state_fd` when one was inherited: the
/// store keeps one state, not one per start), and the unit told it is
/// ready. Returns the state's fd.
pub(super) fn keep_in_store(fuse: &crate::fuse::Server, control: &impl AsRawFd, state: &takeover::State, state_fd: Option<OwnedFd>, mountpoint: &Path) -> anyhow::Result<OwnedFd> {
    let fd = match state_fd {
        Some(fd) => {
            write_state(&fd, state)?;
            fd
        }
        None => state_memfd(state)?,
    };
    systemd::store(STORE_FUSE, fuse.fd().as_raw_fd());
    systemd::store(STORE_CONTROL, control.as_raw_fd());
    systemd::store(STORE_STATE, fd.as_raw_fd());
    let _ = systemd::notify(&format!("READY=1\nMAINPID={}\nSTATUS=serving {}", std::process::id(), mountpoint.display()), &[]);
    Ok(fd)
}

/// The fd store no longer holds this mount (it is being unmounted).
pub(super) fn forget_store() {
    for name in [STORE_FUSE, STORE_CONTROL, STORE_STATE] {
        systemd::unstore(name);
    }
}
