//! The engine's create request for a container spec: the view's binds,
//! the privileges, the limits, the namespaces and the devices, in the form
//! Docker's API (and Podman's compatible one) takes; and the one line for
//! an engine that refuses a device.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, DeviceMapping, DeviceRequest, HostConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum, MountTypeEnum};

use crate::backend::{BackendError, ContainerSpec};

/// An engine's message on one line.
pub(super) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Open files and processes for every container, set explicitly: an
/// engine's defaults may exceed the machine's hard limits (Podman's do on
/// this kind of VM, and the container then fails to start). The daemon's own
/// limits are known to be within them; nproc is also kept within the 32768
/// Podman sets for itself, which its runtime cannot exceed without
/// CAP_SYS_RESOURCE.
fn ulimits() -> Vec<bollard::models::ResourcesUlimits> {
    let started = started_limits();
    // Podman lowers its own nproc limit to 32768 when it starts, and its
    // runtime cannot give a container more where root lacks CAP_SYS_RESOURCE
    // (this kind of VM): "error setting rlimit type 6: operation not permitted".
    const PODMAN_NPROC: u64 = 32768;
    [("nofile", libc::RLIMIT_NOFILE, u64::MAX), ("nproc", libc::RLIMIT_NPROC, PODMAN_NPROC)]
        .into_iter()
        .filter_map(|(name, resource, most)| {
            let r = if resource == libc::RLIMIT_NOFILE { started? } else { rlimit(resource)? };
            let (cur, max) = (r.rlim_cur.min(most), r.rlim_max.min(most));
            let clamp = |v: libc::rlim_t| if v == libc::RLIM_INFINITY { -1 } else { v.min(i64::MAX as u64) as i64 };
            Some(bollard::models::ResourcesUlimits { name: Some(name.into()), soft: Some(clamp(cur)), hard: Some(clamp(max)) })
        })
        .collect()
}

/// [`ulimits`] as the agent takes them from an engine that has none
/// ([`crate::protocol::RLIMITS_ENV`]).
pub(super) fn rlimits_spec() -> String {
    ulimits().iter().map(|u| format!("{}={}:{}", u.name.as_deref().unwrap_or_default(), u.soft.unwrap_or(-1), u.hard.unwrap_or(-1))).collect::<Vec<_>>().join(",")
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct.
    (unsafe { libc::getrlimit(resource, &mut r) } == 0).then_some(r)
}

/// The daemon's open-files limit as it started, before
/// [`raise_nofile`]: what tools get, as they would from a login.
fn started_limits() -> Option<libc::rlimit> {
    static STARTED: std::sync::OnceLock<Option<libc::rlimit>> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| rlimit(libc::RLIMIT_NOFILE))
}

/// Raise the daemon's own soft open-files limit to its hard one: it holds a
/// socket (and the callers' fds) per request in flight. Tools keep the
/// limit the daemon started with.
pub fn raise_nofile() {
    let Some(r) = started_limits() else { return };
    let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
    // SAFETY: setrlimit reads the struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
}

/// A device asked by name as CDI names (NVIDIA's for GPUs).
fn cdi_names(ask: &crate::backend::DeviceAsk) -> Vec<String> {
    use crate::catalog::Gpus;
    match ask {
        crate::backend::DeviceAsk::Cdi(name) => vec![name.clone()],
        crate::backend::DeviceAsk::Gpus(Gpus::All) => vec!["nvidia.com/gpu=all".into()],
        crate::backend::DeviceAsk::Gpus(Gpus::Count(n)) => (0..*n).map(|i| format!("nvidia.com/gpu={i}")).collect(),
        crate::backend::DeviceAsk::Gpus(Gpus::Ids(ids)) => ids.iter().map(|i| format!("nvidia.com/gpu={i}")).collect(),
    }
}

/// The engine's form of a device the image asks for by name.
fn device_request(ask: &crate::backend::DeviceAsk) -> DeviceRequest {
    use crate::catalog::Gpus;
    match ask {
        crate::backend::DeviceAsk::Cdi(name) => DeviceRequest { driver: Some("cdi".into()), device_ids: Some(vec![name.clone()]), ..Default::default() },
        crate::backend::DeviceAsk::Gpus(g) => {
            let (count, device_ids) = match g {
                Gpus::All => (Some(-1), None),
                Gpus::Count(n) => (Some(*n as i64), None),
                Gpus::Ids(ids) => (None, Some(ids.clone())),
            };
            DeviceRequest { driver: Some(String::new()), count, device_ids, capabilities: Some(vec![vec!["gpu".into()]]), ..Default::default() }
        }
    }
}

/// An engine's refusal of a container whose image asks for GPUs or CDI
/// devices, as the one line the caller needs: what was asked, what the
/// engine said, what to install. Other errors are given back.
pub(super) fn devices_unsupported(spec: &ContainerSpec, e: BackendError) -> BackendError {
    let BackendError::Answered { message, .. } = &e else { return e };
    let image = spec.labels.get(crate::backend::LABEL_IMAGE).map_or(spec.image.as_str(), String::as_str);
    let gpus = spec.device_requests.iter().find_map(|d| match d {
        crate::backend::DeviceAsk::Gpus(g) => Some(g.describe()),
        crate::backend::DeviceAsk::Cdi(_) => None,
    });
    let cdi: Vec<&str> = spec.device_requests.iter().filter_map(|d| if let crate::backend::DeviceAsk::Cdi(n) = d { Some(n.as_str()) } else { None }).collect();
    let lower = message.to_lowercase();
    if let (Some(g), true) = (&gpus, lower.contains("device driver") || lower.contains("nvidia") || lower.contains("gpu")) {
        return BackendError::Unsupported(format!(
            "image {image} asks for GPUs ({g}) and the container engine has no GPU runtime ({}): install NVIDIA's container toolkit and restart the engine, or remove `gpus` from the image",
            one_line(message)
        ));
    }
    if !cdi.is_empty() && (lower.contains("cdi") || lower.contains("device driver") || lower.contains("unresolvable")) {
        return BackendError::Unsupported(format!(
            "image {image} asks for the CDI device {} and the container engine cannot give it ({}): generate its CDI spec (nvidia-ctk cdi generate) on an engine with CDI support, or remove it from `devices`",
            cdi.join(", "),
            one_line(message)
        ));
    }
    e
}

/// The engine's create request for `spec`: the view's binds and tmpfs,
/// the privileges (none but the catalog's capabilities), the limits, the
/// namespaces and the devices. `podman`: devices as Podman takes them.
pub(super) fn create_body(spec: &ContainerSpec, podman: bool, runtime: Option<&str>) -> ContainerCreateBody {
    // Host-view binds in the `Binds` form (`SRC:DST:rslave`): recursive
    // on Docker and on Podman alike, where Podman's `Mounts` form binds
    // only the top mount. Paths that form cannot spell go to `Mounts`.
    let spelled = |b: &&super::Bind| b.follow_host && [&b.source, &b.target].iter().all(|p| !p.to_string_lossy().contains([':', ',']));
    let host_binds: Vec<String> = spec
        .binds
        .iter()
        .filter(spelled)
        .map(|b| format!("{}:{}:{},rslave", b.source.display(), b.target.display(), if b.read_only { "ro" } else { "rw" }))
        .collect();
    let mounts = spec
        .binds
        .iter()
        .filter(|b| !spelled(b))
        .map(|b| Mount {
            target: Some(b.target.to_string_lossy().into_owned()),
            source: Some(b.source.to_string_lossy().into_owned()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(b.read_only),
            // A recursive bind that is not a slave of the host's mounts
            // would keep copies of every mount below it (an odfs FUSE
            // mount under /tmp) alive after the host unmounts them; so a
            // bind is either recursive and rslave, or single.
            bind_options: Some(if b.follow_host {
                MountBindOptions { propagation: Some(MountBindOptionsPropagationEnum::RSLAVE), ..Default::default() }
            } else {
                MountBindOptions { non_recursive: Some(true), ..Default::default() }
            }),
            ..Default::default()
        })
        .collect();
    // `/run` is root's, as on the host (a world-writable one would let
    // one caller plant sockets, nscd's or D-Bus's, for the next); a
    // scratch directory is the image's callers' to share.
    let tmpfs: HashMap<String, String> = spec
        .tmpfs
        .iter()
        .map(|p| {
            let mode = if p.as_path() == std::path::Path::new("/run") { "0755" } else { "1777" };
            (p.to_string_lossy().into_owned(), format!("rw,nosuid,nodev,mode={mode}"))
        })
        .collect();
    let cdi_names: Vec<String> = if podman { spec.device_requests.iter().flat_map(cdi_names).collect() } else { vec![] };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: Some(spec.entrypoint.clone()),
        cmd: Some(vec![]),
        labels: Some(spec.labels.clone()),
        env: Some(spec.env.clone()),
        user: Some("0:0".into()),
        working_dir: Some("/".into()),
        hostname: spec.hostname.clone().filter(|_| !spec.host_namespaces),
        network_disabled: Some(spec.loopback_only),
        host_config: Some(HostConfig {
            binds: Some(host_binds),
            mounts: Some(mounts),
            readonly_rootfs: Some(spec.read_only_root),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            network_mode: Some(spec.network.clone()),
            runtime: runtime.map(String::from),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges".into()]),
            init: Some(false),
            memory: spec.limits.memory.map(|m| m as i64),
            // Swap counts against the same limit, so a tool over it is
            // stopped, not slowed to a crawl.
            memory_swap: spec.limits.memory.map(|m| m as i64),
            nano_cpus: spec.limits.nano_cpus.map(|c| c as i64),
            pids_limit: spec.limits.pids.map(|p| p as i64),
            ulimits: Some(ulimits()),
            pid_mode: spec.host_namespaces.then(|| "host".into()),
            ipc_mode: spec.host_namespaces.then(|| "host".into()),
            uts_mode: spec.host_namespaces.then(|| "host".into()),
            devices: Some(
                spec.devices
                    .iter()
                    .cloned()
                    .chain(cdi_names)
                    .map(|d| DeviceMapping {
                        path_in_container: Some(d.clone()),
                        path_on_host: Some(d),
                        cgroup_permissions: Some("rwm".into()),
                    })
                    .collect(),
            ),
            device_requests: (!spec.device_requests.is_empty() && !podman).then(|| spec.device_requests.iter().map(device_request).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

