//! What a local container's tools see of the host, as its spec says it:
//! the agent and its run directory, the caller's account files, the host
//! at the same paths, the host's namespaces where the image may share them,
//! its devices, the display's sockets, the host's name, and the way back to
//! the mount's own tools; and the check, at each call, that the paths the
//! call names are the caller's files there.

use std::path::Path;

use super::{Setup, AGENT_IN_CONTAINER, RUN_IN_CONTAINER};
use crate::backend::{Bind, ContainerBackend, ContainerSpec};
use crate::catalog::ImageSpec;
use crate::daemon::call::{CallError, PoolError};
use crate::view::{RealFs, View};

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

/// What a container of `image` would see of the host now.
pub async fn plan<B: ContainerBackend>(setup: &Setup<'_, B>, image: &ImageSpec) -> Result<View, PoolError> {
    let host_top = setup.facts.host_top();
    let facts = setup.facts.image(setup.backend, image, &host_top, setup.view, setup.mount_id).await?;
    Ok(View::plan(&host_top, facts.as_ref().map_or(&[][..], |f| &f.filled), setup.view, &RealFs))
}

/// Fill in `spec` for a container of `image` whose run directory (the
/// agent's socket, the account files) is `run` on the host; returns what
/// its tools will see of the host.
pub async fn fill<B: ContainerBackend>(setup: &Setup<'_, B>, image: &ImageSpec, run: &Path, spec: &mut ContainerSpec) -> Result<View, PoolError> {
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
        Bind::plain(run.to_path_buf(), RUN_IN_CONTAINER, false),
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
    if image.network == crate::catalog::Network::None {
        loopback_only(&view, spec);
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

/// A container without a network gets its namespace from the runtime,
/// not the engine's network stack ([`ContainerSpec::loopback_only`]); the
/// files the engine would have written come from the host, read-only, as
/// the caller has them: its hosts file (which names localhost and, on
/// Debian, the host's own name, the container's name too) and its
/// resolver configuration, where the view does not show them already.
fn loopback_only(view: &View, spec: &mut ContainerSpec) {
    spec.loopback_only = true;
    for file in ["/etc/hosts", "/etc/resolv.conf"].map(Path::new) {
        if !view.sees_host(file) && file.exists() {
            spec.binds.push(Bind::plain(file.to_path_buf(), file.to_path_buf(), true));
        }
    }
}

/// Refuse a call whose tool would not see, at a path the caller names (its
/// cwd, its arguments), the host's file the caller means.
pub fn check_view(view: &View, image: &str, cwd: &Path, args: &[Vec<u8>]) -> Result<(), CallError> {
    if let Err(c) = view.check_cwd(cwd) {
        return Err(CallError::NotShared(format!(
            "working directory {} is not shared with image {image} (the tool would see the image's own {}; cd into a shared directory or add it to shared)",
            cwd.display(),
            c.image_dir
        )));
    }
    view.check_args(cwd, args, &RealFs).map_err(|c| CallError::NotShared(c.message(image)))
}

/// The host's name, for containers that do not share its network.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
}
