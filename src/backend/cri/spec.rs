//! A container spec in the CRI's form: the pod sandbox (its namespaces,
//! its host name, its cgroup) and the container (the view's binds, the
//! privileges, the limits, the devices), as `create.rs` gives them to the
//! Docker API.

use std::collections::HashMap;

use k8s_cri::v1 as cri;

use super::POD_NAMESPACE;
use crate::backend::ContainerSpec;

/// The cgroup parent of every sandbox: a container's cgroup is
/// `/odfs/ID` (named by its id, which the freezer checks).
const CGROUP_PARENT: &str = "/odfs";

/// The namespaces a profile shares with the node: its network on the
/// host network; pid and IPC where it shares the host's (UTS comes with
/// the network in the CRI). Otherwise the container has a pid namespace
/// of its own, not the pod's, so the agent is its PID 1 (as on Docker):
/// orphans are its to reap, and the pod's pause process is not in view.
fn namespaces(spec: &ContainerSpec) -> cri::NamespaceOption {
    let mode = |host: bool| if host { cri::NamespaceMode::Node } else { cri::NamespaceMode::Pod } as i32;
    cri::NamespaceOption {
        network: mode(spec.network == "host"),
        pid: if spec.host_namespaces { cri::NamespaceMode::Node } else { cri::NamespaceMode::Container } as i32,
        ipc: mode(spec.host_namespaces),
        ..Default::default()
    }
}

/// The seccomp profile the engine uses by default, as Docker applies its
/// own: the CRI's default is none at all.
fn runtime_default() -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile { profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32, localhost_ref: String::new() })
}

/// The pod sandbox of one odfs container, named and labelled as it is.
pub fn sandbox(spec: &ContainerSpec) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: spec.name.clone(), uid: spec.name.clone(), namespace: POD_NAMESPACE.into(), attempt: 0 }),
        // Not on the node's network: the host's name all the same, so
        // tools see the caller's.
        hostname: if spec.network == "host" { String::new() } else { spec.hostname.clone().unwrap_or_default() },
        labels: spec.labels.clone(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: CGROUP_PARENT.into(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(spec)),
                seccomp: runtime_default(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container of `spec` in its sandbox.
pub fn container(spec: &ContainerSpec) -> cri::ContainerConfig {
    let (command, args) = match spec.entrypoint.split_first() {
        Some((first, rest)) => (vec![first.clone()], rest.to_vec()),
        None => (vec![], vec![]),
    };
    let mut mounts: Vec<cri::Mount> = spec
        .binds
        .iter()
        .map(|b| cri::Mount {
            container_path: b.target.to_string_lossy().into_owned(),
            host_path: b.source.to_string_lossy().into_owned(),
            readonly: b.read_only,
            // The CRI's binds are recursive; those of the host view follow
            // the host's later mounts and unmounts (rslave).
            propagation: if b.follow_host { cri::MountPropagation::PropagationHostToContainer } else { cri::MountPropagation::PropagationPrivate } as i32,
            ..Default::default()
        })
        .collect();
    mounts.extend(spec.tmpfs.iter().enumerate().filter_map(|(i, p)| scratch_dir(&spec.name, i, p)));
    let limits = &spec.limits;
    let cpu_period = 100_000;
    let resources = cri::LinuxContainerResources {
        memory_limit_in_bytes: limits.memory.map_or(0, |m| m as i64),
        // Swap counts against the same limit, as on Docker.
        memory_swap_limit_in_bytes: limits.memory.map_or(0, |m| m as i64),
        cpu_period: if limits.nano_cpus.is_some() { cpu_period } else { 0 },
        cpu_quota: limits.nano_cpus.map_or(0, |n| (n as i64 * cpu_period) / 1_000_000_000),
        unified: limits.pids.filter(|_| cgroup_v2()).map(|p| HashMap::from([("pids.max".to_string(), p.to_string())])).unwrap_or_default(),
        ..Default::default()
    };
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: spec.name.clone(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: spec.image.clone(), ..Default::default() }),
        command,
        args,
        working_dir: "/".into(),
        envs: spec
            .env
            .iter()
            .cloned()
            .chain(std::iter::once(format!("{}={}", crate::protocol::RLIMITS_ENV, crate::backend::create::rlimits_spec())))
            .map(|e| {
                let (key, value) = e.split_once('=').unwrap_or((&e, ""));
                cri::KeyValue { key: key.into(), value: value.into() }
            })
            .collect(),
        mounts,
        devices: spec.devices.iter().map(|d| cri::Device { container_path: d.clone(), host_path: d.clone(), permissions: "rwm".into() }).collect(),
        cdi_devices: spec
            .device_requests
            .iter()
            .filter_map(|d| if let crate::backend::DeviceAsk::Cdi(name) = d { Some(cri::CdiDevice { name: name.clone() }) } else { None })
            .collect(),
        labels: spec.labels.clone(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability { add_capabilities: spec.cap_add.clone(), drop_capabilities: vec!["ALL".into()], add_ambient_capabilities: vec![] }),
                namespace_options: Some(namespaces(spec)),
                run_as_user: Some(cri::Int64Value { value: 0 }),
                run_as_group: Some(cri::Int64Value { value: 0 }),
                readonly_rootfs: spec.read_only_root,
                no_new_privs: true,
                seccomp: runtime_default(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Where the scratch directories of the containers made through the CRI
/// are, on the host: the CRI mounts no tmpfs, so the daemon mounts one per
/// scratch directory, as the Docker engine would (its default size, half
/// the memory, charged to whoever writes), here, binds it in, and unmounts
/// and removes it with its container.
pub const SCRATCH_ROOT: &str = "/run/odfs-cri";

/// A fresh tmpfs for scratch directory number `index` of container `name`,
/// at `path` inside it: `/run` is root's (0755), as on the host; any other
/// is its callers' to share (1777).
fn scratch_dir(name: &str, index: usize, path: &std::path::Path) -> Option<cri::Mount> {
    use nix::mount::{mount, MsFlags};
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::path::Path::new(SCRATCH_ROOT).join(name).join(index.to_string());
    unmount_all(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).ok()?;
    let mode = if path == std::path::Path::new("/run") { "0755" } else { "1777" };
    let options = format!("mode={mode}");
    if let Err(e) = mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options.as_str())) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot mount a scratch tmpfs");
        return None;
    }
    Some(cri::Mount { container_path: path.to_string_lossy().into_owned(), host_path: dir.to_string_lossy().into_owned(), ..Default::default() })
}

/// Unmount what is mounted at the scratch directories under `dir`.
fn unmount_all(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Remove the scratch directories of container `name`.
pub fn remove_scratch(name: &str) {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return;
    }
    let dir = std::path::Path::new(SCRATCH_ROOT).join(name);
    unmount_all(&dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// Remove the scratch directories of this mount's containers (names
/// starting `prefix`) that are not in `live`: those of containers that
/// went while no daemon watched (an engine restarted, an admin's removal).
pub fn sweep_scratch(prefix: &str, live: &[String]) {
    let Ok(entries) = std::fs::read_dir(SCRATCH_ROOT) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && !live.contains(&name) {
            remove_scratch(&name);
        }
    }
}

pub fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A bind the CRI would make a recursive copy of host mounts with: a
/// private bind (not following the host) of a directory with mounts below
/// it, in `mountinfo`. The CRI binds every directory recursively, so those
/// submounts would stay mounted in the container after the host unmounts
/// them (Docker binds such a directory alone). The bind's source and the
/// first such mount.
pub fn held_submount<'a>(binds: &'a [crate::backend::Bind], mountinfo: &str) -> Option<(&'a std::path::Path, String)> {
    let points: Vec<String> = mountinfo.lines().filter_map(|l| l.split(' ').nth(4).map(|p| p.replace("\\040", " "))).collect();
    binds.iter().filter(|b| !b.follow_host).find_map(|b| {
        let below = points.iter().find(|p| std::path::Path::new(p.as_str()).strip_prefix(&b.source).is_ok_and(|rest| !rest.as_os_str().is_empty()))?;
        Some((b.source.as_path(), below.clone()))
    })
}

/// The interface names of a `/proc/PID/net/dev` table.
pub fn interfaces(net_dev: &str) -> Vec<String> {
    net_dev.lines().skip(2).filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string())).filter(|n| !n.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Bind;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "odfs-x".into(),
            image: "busybox".into(),
            entrypoint: vec!["/.odfs/agent".into(), "--socket".into(), "/.odfs/run/agent.sock".into()],
            labels: HashMap::from([("io.odfs.managed".into(), "true".into())]),
            network: "none".into(),
            loopback_only: true,
            cap_add: vec!["NET_RAW".into()],
            binds: vec![Bind::plain("/a", "/b", true), Bind { source: "/home".into(), target: "/home".into(), read_only: false, follow_host: true }],
            env: vec!["PATH=/bin".into(), "EMPTY".into()],
            limits: crate::catalog::Limits { memory: Some(64 << 20), nano_cpus: Some(500_000_000), pids: None },
            preload: None,
            read_only_root: true,
            tmpfs: vec![],
            hostname: Some("node1".into()),
            host_namespaces: true,
            devices: vec!["/dev/fuse".into()],
            device_requests: vec![],
        }
    }

    #[test]
    fn privileges_are_the_catalog_s_and_nothing_more() {
        let c = container(&spec());
        let sc = c.linux.as_ref().unwrap().security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!((caps.add_capabilities.clone(), caps.drop_capabilities.clone()), (vec!["NET_RAW".to_string()], vec!["ALL".to_string()]));
        assert!(sc.no_new_privs && sc.readonly_rootfs && !sc.privileged);
        assert_eq!(sc.seccomp.as_ref().unwrap().profile_type, cri::security_profile::ProfileType::RuntimeDefault as i32);
        assert_eq!(c.command, vec!["/.odfs/agent"]);
        assert_eq!(c.args, vec!["--socket", "/.odfs/run/agent.sock"]);
        assert_eq!(c.envs[1], cri::KeyValue { key: "EMPTY".into(), value: "".into() });
        let r = c.linux.as_ref().unwrap().resources.as_ref().unwrap();
        assert_eq!((r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes, r.cpu_quota, r.cpu_period), (64 << 20, 64 << 20, 50_000, 100_000));
        assert_eq!(c.devices[0].host_path, "/dev/fuse");
    }

    #[test]
    fn host_view_binds_follow_the_host_and_others_are_private() {
        let c = container(&spec());
        assert_eq!(c.mounts[0].propagation, cri::MountPropagation::PropagationPrivate as i32);
        assert!(c.mounts[0].readonly);
        assert_eq!(c.mounts[1].propagation, cri::MountPropagation::PropagationHostToContainer as i32);
    }

    #[test]
    fn namespaces_are_the_profile_s() {
        let mut s = spec();
        let ns = sandbox(&s).linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!((ns.network, ns.pid, ns.ipc), (cri::NamespaceMode::Pod as i32, cri::NamespaceMode::Node as i32, cri::NamespaceMode::Node as i32));
        assert_eq!(sandbox(&s).hostname, "node1");
        s.network = "host".into();
        s.host_namespaces = false;
        let sb = sandbox(&s);
        let ns = sb.linux.as_ref().unwrap().security_context.as_ref().unwrap().namespace_options.as_ref().unwrap();
        assert_eq!((ns.network, ns.pid), (cri::NamespaceMode::Node as i32, cri::NamespaceMode::Container as i32));
        assert_eq!(sb.hostname, "");
        assert_eq!(sb.metadata.unwrap().namespace, POD_NAMESPACE);
    }

    #[test]
    fn a_private_bind_over_submounts_is_found_and_a_following_one_is_not() {
        let info = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:50 / /tmp/odfs-x/mnt rw - fuse odfs rw\n";
        let private = vec![Bind::plain("/etc/passwd", "/etc/passwd", true), Bind::plain("/tmp", "/tmp", false)];
        assert_eq!(held_submount(&private, info).map(|(s, m)| (s.to_path_buf(), m)), Some(("/tmp".into(), "/tmp/odfs-x/mnt".into())));
        let following = vec![Bind { source: "/tmp".into(), target: "/tmp".into(), read_only: false, follow_host: true }];
        assert_eq!(held_submount(&following, info), None);
        assert_eq!(held_submount(&[Bind::plain("/tmp/odfs-x/mnt", "/m", true)], info), None);
    }

    #[test]
    fn interfaces_come_from_the_net_dev_table() {
        let table = "Inter-|   Receive\n face |bytes\n    lo: 0 0\n  eth0: 1 2\n";
        assert_eq!(interfaces(table), vec!["lo", "eth0"]);
    }
}
