//! The Kubernetes deployment (deploy/kubernetes): every manifest valid
//! against the API's schemas (kubernetes-validate, which carries them, so
//! offline), the DaemonSet giving the daemon what it needs on a node, its
//! command line made of flags `odfs mount` has, its example catalog loading
//! with odfs's own parser, the daemon following a catalog directory as
//! the kubelet updates a ConfigMap volume (its `..data` symlink swapped),
//! and the DaemonSet's pod run for real on this machine (`docker run`s made
//! from its spec) against the engine under test: a shim called from the
//! machine runs its tool.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use common::*;

/// The Kubernetes version the manifests are validated against (one
/// kubernetes-validate carries; 1.30 is the oldest the manifests' fields
/// need, and a release most clusters run or have passed).
const KUBERNETES: &str = "1.30.0";

/// The DaemonSet's prefix of every node path it installs to and serves.
const PREFIX_VAR: &str = "ODFS_PREFIX";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read(path: impl AsRef<Path>) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The YAML files of deploy/kubernetes, by name.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Every document of a YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every resource of every manifest but the kustomization.
fn resources() -> Vec<Value> {
    manifests().iter().filter(|p| !is_kustomization(p)).flat_map(|p| documents(p)).collect()
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

fn resource(kind: &str, name: &str) -> Value {
    resources()
        .into_iter()
        .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().expect("a string").to_string()).collect()).unwrap_or_default()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().and_then(|a| a.iter().find(|x| x["name"] == name)).unwrap_or_else(|| panic!("nothing named {name} in {list}"))
}

/// The value following `flag` in `args`, for every occurrence.
fn values_of(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
}

fn kubernetes_validate() -> Command {
    // Where scripts/setup installs it (pinned), else any on PATH.
    let installed = Path::new("/usr/local/bin/kubernetes-validate");
    let on_path = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("kubernetes-validate").is_file()));
    assert!(installed.is_file() || on_path, "kubernetes-validate is not installed: run scripts/setup");
    Command::new(if installed.is_file() { installed } else { Path::new("kubernetes-validate") })
}

#[test]
fn every_manifest_passes_kubernetes_validate_strictly() {
    let files = manifests();
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let out = kubernetes_validate().args(["--strict", "--kubernetes-version", KUBERNETES]).arg(file).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubernetes-validate --strict -k {KUBERNETES} {}:\n{text}", file.display());
        assert!(!text.contains("ERROR"), "{text}");
        if is_kustomization(file) {
            continue;
        }
        // Every resource was checked against a schema: none of an unknown
        // kind slipped through as a warning.
        assert!(!text.contains("Couldn't find schema"), "{text}");
        let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
        assert_eq!(passed, documents(file).len(), "{text}");
    }
}

#[test]
fn the_kustomization_names_every_manifest() {
    let kustomization = deploy_dir().join("kustomization.yaml");
    let listed = str_list(&documents(&kustomization)[0]["resources"]);
    let files: Vec<String> =
        manifests().iter().filter(|p| !is_kustomization(p)).map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(listed, files);
}

#[test]
fn the_daemonset_gives_the_daemon_the_node_as_its_own() {
    let ns = resource("Namespace", "odfs");
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged", "host namespaces and hostPath need it");
    let ds = resource("DaemonSet", "odfs");
    assert_eq!(ds["metadata"]["namespace"], "odfs");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "the callers' /proc");
    assert_eq!(pod["hostNetwork"], true, "the node's name and network");
    assert_eq!(pod["automountServiceAccountToken"], false, "no cluster credentials");
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"].as_array().unwrap().iter().any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none()),
        "every node, whatever its taints: {}",
        pod["tolerations"]
    );
    // As long as the systemd unit gives the daemon to stop.
    let unit = read("mount-units/odfs.service");
    let stop: u64 = unit.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).expect("TimeoutStopSec in the unit").trim().parse().unwrap();
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= stop, "{}", pod["terminationGracePeriodSeconds"]);
    let update = &ds["spec"]["updateStrategy"];
    assert_eq!(update["type"], "RollingUpdate");
    assert!(update["rollingUpdate"]["maxUnavailable"].is_number() || update["rollingUpdate"]["maxUnavailable"].is_string());
    assert_eq!(update["rollingUpdate"]["maxSurge"], 0, "two daemons of one node would take the mount from each other");

    let volumes = &pod["volumes"];
    let host_path = |volume: &str| volume_host_path(volumes, volume);
    let daemon = named(&pod["containers"], "odfs");
    let raw: Vec<String> = str_list(&daemon["command"]).into_iter().chain(str_list(&daemon["args"])).collect();
    // Every node path the daemon is given starts with $(ODFS_PREFIX), empty
    // here as on a node (only the_daemonset_pod_runs_on_this_machine… sets
    // it), and so does every file the init container installs.
    for c in pod["containers"].as_array().unwrap().iter().chain(pod["initContainers"].as_array().unwrap()) {
        assert_eq!(named(&c["env"], PREFIX_VAR)["value"], "", "{}: {PREFIX_VAR} must be empty on a node", c["name"]);
    }
    if let Some(a) = raw.iter().skip(2).find(|a| a.starts_with('/')) {
        panic!("{a}: a node path the daemon is given without $({PREFIX_VAR}) in front");
    }
    let argv: Vec<String> = raw.iter().map(|a| a.replace(&format!("$({PREFIX_VAR})"), "")).collect();
    // The node's copy of the daemon, with the node's root as its own.
    assert_eq!(argv[..2], ["chroot", "/host"], "{argv:?}");
    let (binary, args) = (Path::new(&argv[2]), &argv[3..]);
    assert_eq!(args[..2], ["mount", "/opt/od/bin"], "{argv:?}");
    let mountpoint = Path::new(&args[1]);
    let mounts = &daemon["volumeMounts"];
    let root = named(mounts, "host-root");
    assert_eq!((root["mountPath"].as_str(), host_path("host-root").as_str()), (Some("/host"), "/"));
    assert_eq!(root["mountPropagation"], "HostToContainer", "the node's later mounts, and none of the pod's");

    // The mount reaches the node: made under a hostPath of its parent,
    // Bidirectional, which the API server allows to privileged containers only.
    let parent = mountpoint.parent().unwrap();
    let opt_od = mounts.as_array().unwrap().iter().find(|m| m["mountPath"] == format!("/host{}", parent.display())).expect("a mount of the mountpoint's parent");
    assert_eq!(host_path(opt_od["name"].as_str().unwrap()), parent.to_str().unwrap());
    assert_eq!(opt_od["mountPropagation"], "Bidirectional");
    for c in pod["containers"].as_array().unwrap().iter().chain(pod["initContainers"].as_array().unwrap()) {
        let bidirectional = c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPropagation"] == "Bidirectional");
        assert!(!bidirectional || c["securityContext"]["privileged"] == true, "{} has a Bidirectional mount but is not privileged", c["name"]);
    }

    // The node's CRI socket, checked by the kubelet before anything runs.
    let engine = values_of(args, "--engine");
    let socket = engine[0].strip_prefix("cri+unix://").unwrap_or_else(|| panic!("--engine {engine:?}"));
    assert_eq!(host_path("cri-socket"), socket);
    assert_eq!(named(volumes, "cri-socket")["hostPath"]["type"], "Socket");
    // /dev/fuse likewise; the daemon opens the node's own through /host.
    assert_eq!(host_path("dev-fuse"), "/dev/fuse");
    assert_eq!(named(volumes, "dev-fuse")["hostPath"]["type"], "CharDevice");
    let install = named(&pod["initContainers"], "install");
    let checked: Vec<&str> = install["volumeMounts"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(["host-root", "dev-fuse", "cri-socket"].iter().all(|v| checked.contains(v)), "{checked:?}");

    // The binaries the daemon names are where the init container installs
    // them on the node (the launcher: every shim's #! line; the agent:
    // bound into every tool container by the runtime).
    let install_script = read("deploy/kubernetes/node-install");
    let lib = binary.parent().unwrap();
    assert!(install_script.contains(&format!("lib={}\n", lib.display())), "node-install installs elsewhere than {}", lib.display());
    assert_eq!(values_of(args, "--launcher"), [lib.join("odfs-launch").display().to_string()]);
    assert_eq!(values_of(args, "--agent"), [lib.join("odfs-agent").display().to_string()]);
    assert_eq!(str_list(&install["command"]), ["/usr/local/sbin/odfs-node-install", "/host"]);
    let dockerfile = read("deploy/kubernetes/Dockerfile");
    assert!(dockerfile.contains("COPY deploy/kubernetes/node-install /usr/local/sbin/odfs-node-install\n"), "{dockerfile}");
    assert!(dockerfile.contains(&format!("target/static/release/odfs-agent {}/\n", lib.display())), "{dockerfile}");
    assert!(read("scripts/build-base").contains("ref=debian:bookworm-slim\n") && dockerfile.contains("\nFROM debian:bookworm-slim\n"));

    // The state stays where the CLI and the shell hooks look for it.
    assert!(values_of(args, "--state").is_empty(), "--state would move the socket to STATE/odfs.sock");
    assert_eq!(values_of(args, "--socket"), ["/run/odfs/odfs.sock"]);

    // The cluster's catalog: the ConfigMap mounted as a directory (a
    // subPath would never see an update); the node's own directory last,
    // where `odfs add` writes and node-install makes it.
    let catalogs = values_of(args, "--catalog");
    let cluster = mounts.as_array().unwrap().iter().find(|m| m["name"] == "catalog").expect("the catalog mount");
    assert_eq!(cluster["mountPath"], format!("/host{}", catalogs[0]));
    assert!(cluster.get("subPath").is_none() && cluster.get("subPathExpr").is_none(), "{cluster}");
    assert_eq!(cluster["readOnly"], true);
    assert_eq!(named(volumes, "catalog")["configMap"]["name"], "odfs-catalog");
    let node_catalog = catalogs.last().unwrap();
    assert!(catalogs.len() >= 2 && install_script.contains(&format!("$node{node_catalog}")), "{catalogs:?}");
    assert!(install_script.contains(&format!("prefix=${{{PREFIX_VAR}:-}}\n")) && install_script.contains("node=$root$prefix\n"), "{install_script}");

    // Resources of every container, and probes of the daemon against its
    // mount and its socket, as the container sees them.
    for c in pod["containers"].as_array().unwrap().iter().chain(pod["initContainers"].as_array().unwrap()) {
        let r = &c["resources"];
        assert!(r["requests"]["cpu"].is_string() && r["requests"]["memory"].is_string(), "{}: {r}", c["name"]);
        assert!(r["limits"]["memory"].is_string(), "{}: {r}", c["name"]);
    }
    // (Probes are not expanded by the kubelet: their shell expands the variable.)
    let probe = |kind: &str| str_list(&daemon[kind]["exec"]["command"]).join(" ").replace(&format!("${PREFIX_VAR}"), "").replace('"', "");
    for kind in ["startupProbe", "livenessProbe"] {
        assert!(probe(kind).ends_with(&format!(" /host{}", mountpoint.display())), "{kind}: {}", probe(kind));
    }
    assert!(probe("readinessProbe").contains(" status --socket /host/run/odfs/odfs.sock"), "{}", probe("readinessProbe"));

    // Nothing dangles: every mount names a volume, every volume is mounted.
    let declared: Vec<&str> = volumes.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    let mut used: Vec<&str> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap())
        .flat_map(|c| c["volumeMounts"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()))
        .collect();
    used.sort();
    used.dedup();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort();
    assert_eq!(used, declared_sorted);
}

fn volume_host_path(volumes: &Value, name: &str) -> String {
    named(volumes, name)["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("volume {name} is no hostPath")).to_string()
}

#[test]
fn the_daemon_command_line_uses_flags_odfs_mount_has() {
    let help = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["mount", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let ds = resource("DaemonSet", "odfs");
    let args = str_list(&named(&ds["spec"]["template"]["spec"]["containers"], "odfs")["args"]);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(&format!("  {flag} <")), "odfs mount has no {flag}:\n{help}");
    }
    // The socket the CLI (and so the probes and the shell hooks) uses by default.
    let status = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["status", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("[default: /run/odfs/odfs.sock]"));
}

#[test]
fn the_example_catalog_loads_with_odfs_own_parser() {
    let cm = resource("ConfigMap", "odfs-catalog");
    let data = cm["data"].as_object().unwrap();
    assert!(!data.is_empty());
    let dir = tempfile::tempdir().unwrap();
    for (key, text) in data {
        assert!(key.ends_with(".toml"), "{key}: the daemon reads *.toml files only");
        std::fs::write(dir.path().join(key), text.as_str().unwrap()).unwrap();
    }
    let (catalog, errors) = odfs::catalog::load_dirs(&[dir.path().to_path_buf()]).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(catalog.commands.contains_key("xxd") && catalog.commands.contains_key("wget"), "{:?}", catalog.commands.keys());
    // Images the node's runtime pulls: no recipes, which need a Docker engine.
    assert!(catalog.images.values().all(|i| i.build.is_none()));
}

/// A catalog directory laid out as the kubelet lays out a ConfigMap volume:
/// the files in a timestamped directory, `..data` pointing at it, and each
/// key a symlink through `..data`. [`ConfigMapDir::update`] swaps it as
/// the kubelet's atomic writer does.
struct ConfigMapDir {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapDir {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> ConfigMapDir {
        std::fs::create_dir_all(&dir).unwrap();
        let mut cm = ConfigMapDir { dir, generation: 0 };
        cm.update(files);
        cm
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        use std::os::unix::fs::symlink;
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        self.generation += 1;
        let stamp = format!("..2025_01_01_00_00_{:02}.{:09}", self.generation, self.generation);
        std::fs::create_dir(self.dir.join(&stamp)).unwrap();
        for (key, text) in files {
            std::fs::write(self.dir.join(&stamp).join(key), text).unwrap();
        }
        // The swap itself: one rename of a new symlink over `..data`.
        symlink(&stamp, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        for (key, _) in files {
            let _ = symlink(Path::new("..data").join(key), self.dir.join(key));
        }
        // Keys gone from the map lose their symlinks, then the old files go.
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if !name.starts_with("..") && !files.iter().any(|(k, _)| *k == name) {
                std::fs::remove_file(self.dir.join(&name)).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

impl Drop for ConfigMapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn listed(m: &TestMount) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn the_daemon_follows_a_configmap_volume_as_the_kubelet_swaps_it() {
    let image = |commands: &str| format!("[image.cm]\nref = \"{TEST_IMAGE}\"\nnetwork = \"none\"\ncommands = [{commands}]\n");
    let dir = PathBuf::from(format!("/tmp/odfs-test-configmap-{}", std::process::id()));
    let mut cm = ConfigMapDir::new(dir.clone(), &[("tools.toml", &image("\"seq\""))]);
    let m = TestMount::with_files(&[("test.toml", BUSYBOX_CATALOG)], &["--catalog", dir.to_str().unwrap()]);
    assert!(m.shim("seq").exists(), "{:?}\n{}", listed(&m), m.log_text());
    assert!(!listed(&m).iter().any(|n| n.starts_with("..")));

    // A changed key: a file of the same size in a new directory; only its
    // time tells it apart.
    cm.update(&[("tools.toml", &image("\"tee\""))]);
    assert!(eventually(Duration::from_secs(3), || m.shim("tee").exists() && !m.shim("seq").exists()), "{:?}\n{}", listed(&m), m.log_text());
    // A key added, then removed again.
    cm.update(&[("tools.toml", &image("\"tee\"")), ("more.toml", "[command.basename]\nimage = \"cm\"\n")]);
    assert!(eventually(Duration::from_secs(3), || m.shim("basename").exists()), "{:?}\n{}", listed(&m), m.log_text());
    let o = m.sh(r#""$M/basename" /a/b/c"#);
    assert_eq!(stdout(&o), "c\n", "{}", stderr(&o));
    cm.update(&[("tools.toml", &image("\"tee\""))]);
    assert!(eventually(Duration::from_secs(3), || !m.shim("basename").exists()), "{:?}\n{}", listed(&m), m.log_text());
    assert!(m.shim("tee").exists() && m.shim("cat").exists());
}

// The DaemonSet's pod, run for real on this machine.
//
// The pod spec of deploy/kubernetes/odfs-daemonset.yaml becomes `docker run`
// invocations on the machine's dockerd, as a kubelet would run it: the init
// containers to completion, then the daemon, each with the image, command,
// args, env, volume mounts and their propagation, capabilities, security
// options, memory limit and host namespaces the manifest gives it. The
// daemon inside talks to the engine under test (ODFS_TEST_ENGINE: the CRI
// of scripts/cri-engine, Docker or Podman), and a shim called from the
// machine runs its tool there. What differs from a node is only what keeps
// the machine's own files and mounts alone, each said where it is made:
//  * ODFS_PREFIX, empty in the manifest, is a directory of the test's: the
//    init container installs under it and the daemon serves and keeps its
//    files under it; the node paths the volumes name move under it too
//    (hostPath /opt/od is PREFIX/opt/od, mountPath /host/X is
//    /host/PREFIX/X), and the daemon gets --state under it;
//  * the CRI socket is the engine under test's;
//  * the ConfigMap volume is a directory laid out as the kubelet lays one
//    out, with the manifest's data (images the engines have offline);
//  * `privileged: true` is the capabilities, device and unconfined
//    profiles it stands for (this machine cannot run privileged containers).

/// What a container of the pod is turned into.
struct Substitutions {
    /// The test's value of ODFS_PREFIX: where the node's paths go.
    prefix: PathBuf,
    /// `--engine` for the daemon, and the socket the CRI socket's
    /// hostPath stands for.
    engine: String,
    engine_socket: PathBuf,
    /// ConfigMap name → the directory standing for its volume.
    config_maps: Vec<(String, PathBuf)>,
    /// Label of every container the test runs: io.odfs.deploy-test=VALUE.
    label: String,
}

/// The machine's dockerd, which plays the kubelet's runtime (whatever engine
/// the daemon under test uses for its tools).
fn machine_docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("run docker")
}

/// The kubelet's expansion of `$(VAR)` in command, args and env values: a
/// variable defined earlier in the container's env is replaced by its
/// value, `$$` is a `$`, anything else is left as written.
fn kubelet_expand(s: &str, env: &[(String, String)]) -> String {
    let (mut out, mut rest) = (String::new(), s);
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
            continue;
        }
        let var = after.strip_prefix('(').and_then(|inner| {
            let end = inner.find(')')?;
            let (_, v) = env.iter().rev().find(|(k, _)| k == &inner[..end])?;
            Some((v.clone(), &inner[end + 1..]))
        });
        match var {
            Some((v, r)) => {
                out.push_str(&v);
                rest = r;
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out + rest
}

/// A Kubernetes quantity of bytes (`64Mi`, `1Gi`, `500M`, `1000`) as bytes.
fn quantity_bytes(q: &str) -> u64 {
    let units = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1000), ("M", 1_000_000), ("G", 1_000_000_000)];
    let (n, unit) = units.iter().find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m))).unwrap_or((q, 1));
    n.parse::<u64>().unwrap_or_else(|e| panic!("quantity {q}: {e}")) * unit
}

/// Keys of `v` that the test does not know how to run: a manifest change
/// the test would otherwise ignore fails it instead.
fn assert_known(what: &str, v: &Value, known: &[&str]) {
    let unknown: Vec<&String> = v.as_object().into_iter().flat_map(|o| o.keys()).filter(|k| !known.contains(&k.as_str())).collect();
    assert!(unknown.is_empty(), "{what}: {unknown:?} has no docker form in this test: teach it");
}

/// The capabilities `privileged: true` stands for here: the systemd unit's
/// (CapabilityBoundingSet), which the daemon runs with on a host, SYS_CHROOT
/// for chroot(8), and NET_ADMIN, with which the daemon takes the pod network
/// away from the CRI sandbox of a `network = "none"` image. The manifest
/// says the daemon uses no more.
fn daemon_capabilities() -> Vec<String> {
    let unit = read("mount-units/odfs.service");
    let set = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("CapabilityBoundingSet in the unit");
    let mut caps: Vec<String> = set.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_string()).collect();
    caps.extend(["SYS_CHROOT".to_string(), "NET_ADMIN".to_string()]);
    let manifest = read("deploy/kubernetes/odfs-daemonset.yaml");
    for cap in &caps {
        assert!(manifest.contains(cap.as_str()), "the DaemonSet's comment does not say the daemon uses {cap}");
    }
    caps
}

/// `docker run` arguments (after `run`, before none) for container `c` of
/// `pod`, with the test's substitutions.
fn docker_run_args(pod: &Value, c: &Value, s: &Substitutions) -> Vec<String> {
    let name = c["name"].as_str().unwrap();
    assert_known(
        &format!("container {name}"),
        c,
        &["name", "image", "imagePullPolicy", "command", "args", "env", "securityContext", "resources", "volumeMounts", "startupProbe", "livenessProbe", "readinessProbe"],
    );
    let mut a: Vec<String> = vec!["--name".into(), format!("odfs-deploy-{}-{name}", s.label), "--label".into(), format!("io.odfs.deploy-test={}", s.label)];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|x| x.to_string()));

    // The pod's namespaces. With hostNetwork, Kubernetes also gives the
    // pod the node's UTS namespace (its host name).
    if pod["hostPID"] == true {
        push(&["--pid", "host"]);
    }
    if pod["hostNetwork"] == true {
        push(&["--network", "host", "--uts", "host"]);
    }
    // The machine has no registry: the image is the one build-image made.
    match c["imagePullPolicy"].as_str() {
        Some("IfNotPresent" | "Never") => push(&["--pull", "never"]),
        other => panic!("{name}: imagePullPolicy {other:?}: the test can only use the image build-image made"),
    }

    // Env, expanded as the kubelet does (a value may name earlier ones).
    let mut env: Vec<(String, String)> = vec![];
    for e in c["env"].as_array().into_iter().flatten() {
        assert_known(&format!("{name}: env"), e, &["name", "value"]);
        let key = e["name"].as_str().unwrap().to_string();
        let mut value = kubelet_expand(e["value"].as_str().unwrap_or_default(), &env);
        // Substitution: the node's paths under the test's directory.
        if key == PREFIX_VAR {
            value = s.prefix.display().to_string();
        }
        env.push((key, value));
    }
    assert!(env.iter().any(|(k, _)| k == PREFIX_VAR), "{name}: no {PREFIX_VAR}: the test could not keep it off the machine's own files");
    for (k, v) in &env {
        push(&["--env", &format!("{k}={v}")]);
    }

    // Security.
    let sc = &c["securityContext"];
    assert_known(&format!("{name}: securityContext"), sc, &["privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"]);
    if sc["privileged"] == true {
        // Substitution: this machine's root lacks CAP_SYS_RESOURCE, so a
        // privileged container fails ("unable to apply caps"). A privileged
        // container gets every capability, every device and no seccomp or
        // AppArmor profile; here it gets the capabilities the manifest says
        // the daemon uses (no others: a stricter test than privileged), the
        // pod's character devices (/dev/fuse), and the profiles off (the
        // default ones deny mount(2)).
        push(&["--cap-drop", "ALL"]);
        for cap in daemon_capabilities() {
            push(&["--cap-add", &cap]);
        }
        for v in pod["volumes"].as_array().unwrap().iter().filter(|v| v["hostPath"]["type"] == "CharDevice") {
            push(&["--device", v["hostPath"]["path"].as_str().unwrap()]);
        }
        push(&["--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"]);
    }
    for cap in str_list(&sc["capabilities"]["drop"]) {
        push(&["--cap-drop", &cap]);
    }
    for cap in str_list(&sc["capabilities"]["add"]) {
        push(&["--cap-add", &cap]);
    }
    assert_known(&format!("{name}: capabilities"), &sc["capabilities"], &["drop", "add"]);
    if sc["allowPrivilegeEscalation"] == false {
        push(&["--security-opt", "no-new-privileges"]);
    }
    if sc["readOnlyRootFilesystem"] == true {
        push(&["--read-only"]);
    }
    // The limit, which the runtime enforces (requests only schedule).
    if let Some(limit) = c["resources"]["limits"]["memory"].as_str() {
        push(&["--memory", &quantity_bytes(limit).to_string()]);
    }

    // Volumes. The node's root is the hostPath "/"; a mount under where a
    // container has it names a node path.
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let host_root = mounts.iter().find(|m| named(&pod["volumes"], m["name"].as_str().unwrap())["hostPath"]["path"] == "/").map(|m| m["mountPath"].as_str().unwrap().to_string());
    for m in &mounts {
        assert_known(&format!("{name}: volumeMount"), m, &["name", "mountPath", "mountPropagation", "readOnly"]);
        let volume = named(&pod["volumes"], m["name"].as_str().unwrap());
        let mut target = m["mountPath"].as_str().unwrap().to_string();
        if let Some(root) = host_root.as_deref().filter(|r| target.starts_with(&format!("{r}/"))) {
            // Substitution: /host/X is /host/PREFIX/X, as PREFIX/X is the
            // hostPath X (below).
            target = format!("{root}{}{}", s.prefix.display(), &target[root.len()..]);
        }
        let source = volume_source(volume, s);
        let propagation = match m["mountPropagation"].as_str() {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => "rslave",
            Some("Bidirectional") => "rshared",
            Some(other) => panic!("{name}: mountPropagation {other}"),
        };
        let ro = if m["readOnly"] == true { ",readonly" } else { "" };
        push(&["--mount", &format!("type=bind,src={},dst={target},bind-propagation={propagation}{ro}", source.display())]);
    }

    // Command (the image's entrypoint replaced) and args, expanded.
    let command: Vec<String> = str_list(&c["command"]).iter().map(|x| kubelet_expand(x, &env)).collect();
    let mut args: Vec<String> = str_list(&c["args"]).iter().map(|x| kubelet_expand(x, &env)).collect();
    assert!(!command.is_empty(), "{name}: no command: the test runs none of an image's entrypoint");
    // Substitution: the engine under test for the node's CRI socket.
    let cri = format!("cri+unix://{}", volume_host_path(&pod["volumes"], "cri-socket"));
    for x in args.iter_mut().filter(|x| **x == cri) {
        *x = s.engine.clone();
    }
    if name == "odfs" {
        // Substitution: the daemon's state, by default the node's
        // /var/lib/odfs and /run/odfs, under the test's directory.
        args.extend(["--state".to_string(), s.prefix.join("var/lib/odfs").display().to_string()]);
    }
    push(&["--entrypoint", &command[0], c["image"].as_str().unwrap()]);
    a.extend(command[1..].iter().cloned().chain(args));
    a
}

/// The machine's path standing for `volume`, checked (or made) as the
/// kubelet checks a hostPath's type.
fn volume_source(volume: &Value, s: &Substitutions) -> PathBuf {
    use std::os::unix::fs::FileTypeExt;
    if let Some(cm) = volume["configMap"]["name"].as_str() {
        // Substitution: the kubelet's directory for the volume.
        return s.config_maps.iter().find(|(n, _)| n == cm).unwrap_or_else(|| panic!("ConfigMap {cm}")).1.clone();
    }
    let path = volume["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("volume {volume}: only hostPath and configMap volumes run here"));
    let kind = volume["hostPath"]["type"].as_str().unwrap_or_default();
    let source = match kind {
        // The node's root itself, and its devices, are the machine's.
        _ if path == "/" => PathBuf::from(path),
        "CharDevice" => PathBuf::from(path),
        // Substitution: the engine under test's socket for the node's CRI socket.
        "Socket" => s.engine_socket.clone(),
        // Substitution: the node's directory under the test's prefix.
        _ => PathBuf::from(format!("{}{path}", s.prefix.display())),
    };
    let meta = std::fs::metadata(&source);
    let ok = match kind {
        "Directory" => meta.is_ok_and(|m| m.is_dir()),
        "DirectoryOrCreate" => std::fs::create_dir_all(&source).is_ok(),
        "CharDevice" => meta.is_ok_and(|m| m.file_type().is_char_device()),
        "Socket" => meta.is_ok_and(|m| m.file_type().is_socket()),
        other => panic!("hostPath type {other:?} of {path}"),
    };
    assert!(ok, "hostPath {path} ({}) is no {kind}", source.display());
    source
}

/// Everything one run of the pod makes, removed on drop even when the test
/// fails: the pod's containers (labelled), the daemon's mount and tool
/// containers, the shared mount, the directories.
struct PodRun {
    root: PathBuf,
    label: String,
    /// Directories the test bound on themselves and made shared.
    shared: Vec<PathBuf>,
    mountpoint: Option<PathBuf>,
    /// The pod's terminationGracePeriodSeconds.
    grace: String,
}

impl PodRun {
    fn containers(&self) -> Vec<String> {
        let o = machine_docker(&["ps", "-aq", "--filter", &format!("label=io.odfs.deploy-test={}", self.label)]);
        stdout(&o).lines().map(String::from).collect()
    }
}

fn mounted_at(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // mountinfo: the 5th field is the mount point, the fstype follows " - ".
    mounts.lines().filter(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap())).last().map(|l| l.split(" - ").nth(1).unwrap_or_default().split(' ').next().unwrap_or_default().to_string())
}

/// Remove what a CRI engine holds of mount `id` (containers and their
/// sandboxes) through the CRI, as the daemon does: `docker rm -f` of the
/// tests' CRI form only kills.
fn remove_from_cri(id: &str) {
    use odfs::backend::ContainerBackend;
    let engine = odfs::backend::engine::Engine { host: common::cri::HOST.into(), tls: None, source: "tests", outbound: Default::default() };
    let cri = odfs::backend::cri::Cri::new(engine, None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for c in cri.list(id).await.unwrap_or_default() {
            let _ = cri.remove(&c.id).await;
        }
    });
}

impl Drop for PodRun {
    fn drop(&mut self) {
        let ids = self.containers();
        if std::thread::panicking() {
            for id in &ids {
                let logs = machine_docker(&["logs", id]);
                eprintln!("pod container {id}:\n{}{}", stdout(&logs), stderr(&logs));
            }
        }
        // Stopped as the kubelet stops them first: the daemon unmounts and
        // removes its containers itself.
        for id in &ids {
            machine_docker(&["stop", "-t", &self.grace, id]);
            machine_docker(&["rm", "-f", id]);
        }
        if let Some(mnt) = &self.mountpoint {
            // A daemon that died leaves its mount behind, stale.
            if mounted_at(mnt).is_some() {
                let _ = Command::new("umount").arg("-l").arg(mnt).status();
            }
            let id = odfs::daemon::mount_id(mnt, false);
            if on_cri() {
                remove_from_cri(&id);
            } else {
                let left: Vec<String> = stdout(&docker(&["ps", "-a", "--filter", &format!("label=io.odfs.mount={id}"), "-q"])).lines().map(String::from).collect();
                if !left.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(left.iter().map(String::as_str));
                    docker(&args);
                }
            }
        }
        for d in self.shared.iter().rev() {
            while mounted_at(d).is_some() {
                if !Command::new("umount").arg("-l").arg(d).status().is_ok_and(|s| s.success()) {
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The node's paths the pod would write on a node: on this machine, none
/// may appear (or change from absent to present) while the test runs.
const NODE_PATHS: &[&str] =
    &["/usr/local/lib/odfs", "/usr/local/bin/odfs", "/etc/odfs", "/etc/profile.d/odfs.sh", "/opt/od", "/run/odfs", "/var/lib/odfs", "/run/odfs-cluster.d"];

#[test]
fn the_daemonset_pod_runs_on_this_machine_and_a_shim_called_from_it_runs_its_tool() {
    prepare();
    let node_paths_before: Vec<bool> = NODE_PATHS.iter().map(|p| Path::new(p).symlink_metadata().is_ok()).collect();
    assert!(machine_docker(&["info"]).status.success(), "the machine's dockerd (the pod's runtime here) does not answer: run scripts/setup");
    let ds = resource("DaemonSet", "odfs");
    let pod = ds["spec"]["template"]["spec"].clone();
    assert_known(
        "pod spec",
        &pod,
        &[
            "hostPID",
            "hostNetwork",
            "automountServiceAccountToken",
            "enableServiceLinks",
            "priorityClassName",
            "tolerations",
            "terminationGracePeriodSeconds",
            "initContainers",
            "containers",
            "volumes",
        ],
    );
    // No token, no service variables: nothing for docker to leave out.
    assert_eq!((&pod["automountServiceAccountToken"], &pod["enableServiceLinks"]), (&Value::Bool(false), &Value::Bool(false)));

    // The image, as the manifest names it, from this build's binaries.
    let containers: Vec<Value> = pod["initContainers"].as_array().unwrap().iter().chain(pod["containers"].as_array().unwrap()).cloned().collect();
    let mut images: Vec<&str> = containers.iter().map(|c| c["image"].as_str().unwrap()).collect();
    images.dedup();
    assert_eq!(images.len(), 1, "{images:?}");
    let tag = images[0].strip_prefix("odfs:").unwrap_or_else(|| panic!("image {}: build-image makes odfs:TAG", images[0]));
    let built = Command::new(manifest().join("deploy/kubernetes/build-image")).arg(tag).output().unwrap();
    assert!(built.status.success(), "build-image {tag}: {}{}", stdout(&built), stderr(&built));

    let label = format!("{}-{}", std::process::id(), seq());
    let root = PathBuf::from(format!("/tmp/odfs-deploy-{label}"));
    let _ = std::fs::remove_dir_all(&root);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap().to_string();
    let mut run = PodRun { root: root.clone(), label: label.clone(), shared: vec![], mountpoint: None, grace: grace.clone() };
    let prefix = root.join("node");
    std::fs::create_dir_all(prefix.join("etc")).unwrap();

    // The engine: the test's, as a local socket the daemon reaches through /host.
    let engine = match engine_host() {
        Some(h) => h.to_string(),
        None => std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "unix:///var/run/docker.sock".into()),
    };
    let engine_socket = PathBuf::from(engine.strip_prefix("cri+unix://").or(engine.strip_prefix("unix://")).unwrap_or_else(|| panic!("engine {engine}: the pod reaches only a local socket")));

    // The ConfigMap's data as the kubelet lays it out, its images those the
    // engines have offline (the example's busybox:1.36 is on no registry
    // here): each image's ref replaced, its commands kept. One key is
    // added: a shell from the manifest's image, for exit statuses.
    let cm = resource("ConfigMap", "odfs-catalog");
    let mut files: Vec<(String, String)> = vec![];
    let mut image_names = vec![];
    for (key, text) in cm["data"].as_object().unwrap() {
        let mut catalog: toml::Table = text.as_str().unwrap().parse().unwrap_or_else(|e| panic!("{key}: {e}"));
        for (name, image) in catalog.get_mut("image").and_then(|i| i.as_table_mut()).into_iter().flatten() {
            image.as_table_mut().unwrap().insert("ref".into(), TEST_IMAGE.into());
            image_names.push(name.clone());
        }
        files.push((key.clone(), toml::to_string(&catalog).unwrap()));
    }
    files.push(("zz-deploy-test.toml".into(), format!("[command.sh]\nimage = \"{}\"\n", image_names[0])));
    let cm_dir = root.join("kubelet/volumes/kubernetes.io~configmap/catalog");
    let file_refs: Vec<(&str, &str)> = files.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _cm = ConfigMapDir::new(cm_dir.clone(), &file_refs);
    let (catalog, errors) = odfs::catalog::load_dirs(&[cm_dir.clone()]).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let mut commands: Vec<String> = catalog.commands.keys().cloned().collect();
    commands.sort();

    let s = Substitutions { prefix: prefix.clone(), engine, engine_socket, config_maps: vec![("odfs-catalog".into(), cm_dir)], label: label.clone() };

    // Bidirectional propagation needs a shared source: each such hostPath
    // (the node's /opt/od, here PREFIX/opt/od) is bound on itself and made
    // shared, as / is on a systemd node; a mount of its own keeps the
    // daemon's mount from propagating to every peer of the machine's /.
    for c in &containers {
        for m in c["volumeMounts"].as_array().into_iter().flatten().filter(|m| m["mountPropagation"] == "Bidirectional") {
            let dir = volume_source(named(&pod["volumes"], m["name"].as_str().unwrap()), &s);
            if run.shared.contains(&dir) {
                continue;
            }
            let d = dir.to_str().unwrap();
            assert!(Command::new("mount").args(["--bind", d, d]).status().unwrap().success());
            run.shared.push(dir.clone());
            assert!(Command::new("mount").args(["--make-rshared", d]).status().unwrap().success());
        }
    }
    assert!(!run.shared.is_empty(), "no Bidirectional mount: the daemon's mount could not reach the node");

    // Init containers, in order, each to completion.
    let started = std::time::Instant::now();
    for c in pod["initContainers"].as_array().unwrap() {
        let mut args = vec!["run".to_string()];
        args.extend(docker_run_args(&pod, c, &s));
        let o = Command::new("docker").args(&args).output().unwrap();
        assert!(o.status.success(), "init container {}: docker {args:?}:\n{}{}", c["name"], stdout(&o), stderr(&o));
        eprintln!("init container {}: {}", c["name"], stdout(&o).trim());
    }
    // What it installed, where the daemon's command line names it.
    for f in ["usr/local/lib/odfs/odfs", "usr/local/lib/odfs/odfs-launch", "usr/local/lib/odfs/odfs-agent", "etc/profile.d/odfs.sh", "etc/odfs/catalog.d"] {
        assert!(prefix.join(f).exists(), "{f} not installed under {}", prefix.display());
    }
    assert_eq!(std::fs::read_link(prefix.join("usr/local/bin/odfs")).unwrap(), prefix.join("usr/local/lib/odfs/odfs"));

    // The daemon.
    let daemon = named(&pod["containers"], "odfs");
    let mut args = vec!["run".to_string(), "-d".into()];
    let run_args = docker_run_args(&pod, daemon, &s);
    args.extend(run_args.iter().cloned());
    let name = format!("odfs-deploy-{label}-odfs");
    let o = Command::new("docker").args(&args).output().unwrap();
    assert!(o.status.success(), "docker {args:?}:\n{}", stderr(&o));
    // The mountpoint it was given, a path of the machine's (chroot /host).
    let entry = run_args.iter().position(|a| a == "mount").expect("odfs mount");
    let mnt = PathBuf::from(&run_args[entry + 1]);
    assert!(mnt.starts_with(&prefix), "{}", mnt.display());
    run.mountpoint = Some(mnt.clone());
    let logs = || {
        let o = machine_docker(&["logs", &name]);
        format!("{}{}", stdout(&o), stderr(&o))
    };

    // Up: the startup probe, as the kubelet runs it (in the container, every
    // periodSeconds, failureThreshold times at most), then the others.
    let probe = |kind: &str| -> bool {
        let mut a = vec!["exec".to_string(), name.clone()];
        a.extend(str_list(&daemon[kind]["exec"]["command"]));
        Command::new("docker").args(&a).output().unwrap().status.success()
    };
    let startup = &daemon["startupProbe"];
    let (period, tries) = (startup["periodSeconds"].as_u64().unwrap_or(10), startup["failureThreshold"].as_u64().unwrap_or(3));
    let mut up = false;
    for _ in 0..tries {
        if probe("startupProbe") {
            up = true;
            break;
        }
        let state = stdout(&machine_docker(&["inspect", "-f", "{{.State.Status}}", &name]));
        assert_eq!(state.trim(), "running", "the daemon's container stopped:\n{}", logs());
        std::thread::sleep(Duration::from_secs(period));
    }
    assert!(up, "startup probe failed {tries} times:\n{}", logs());
    eprintln!("pod up in {:.1?} (init containers included)", started.elapsed());
    assert!(probe("livenessProbe"), "{}", logs());
    assert!(eventually(Duration::from_secs(10), || probe("readinessProbe")), "readiness probe:\n{}", logs());

    // On the machine: the mount, under the test's /opt/od.
    let fstype = mounted_at(&mnt).unwrap_or_default();
    assert!(fstype == "fuse" || fstype.starts_with("fuse."), "{} is not a FUSE mount on the machine ({fstype:?}):\n{}", mnt.display(), logs());
    let mut listed: Vec<String> = std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, commands, "{}", logs());

    // Shims called from the machine, in a directory of its own.
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("hello.txt"), "hello from the node\n").unwrap();
    let call = |cmd: &str, args: &[&str], input: &str| {
        use std::io::Write;
        let mut child = Command::new(mnt.join(cmd))
            .args(args)
            .current_dir(&work)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let t = std::time::Instant::now();
    let o = call("bc", &[], "6*7\n");
    eprintln!("first call (bc) in {:.1?}", t.elapsed());
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("42\n", Some(0)), "{}\n{}", stderr(&o), logs());
    // A host file, named by its absolute path and relative to the caller's cwd.
    let file = work.join("hello.txt");
    let o = call("xxd", &["-p", file.to_str().unwrap()], "");
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("68656c6c6f2066726f6d20746865206e6f64650a\n", Some(0)), "{}\n{}", stderr(&o), logs());
    // The caller's exit status.
    let o = call("sh", &["-c", "cat hello.txt; pwd; exit 3"], "");
    assert_eq!(stdout(&o), format!("hello from the node\n{}\n", work.display()), "{}\n{}", stderr(&o), logs());
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // The node's CLI, as installed, against the daemon's socket.
    let sock = run_args.iter().position(|a| a == "--socket").map(|i| run_args[i + 1].clone()).unwrap();
    let o = Command::new(prefix.join("usr/local/bin/odfs")).args(["status", "--socket", &sock]).output().unwrap();
    assert!(o.status.success(), "odfs status: {}{}", stdout(&o), stderr(&o));
    let id = odfs::daemon::mount_id(&mnt, false);
    let filter = format!("label=io.odfs.mount={id}");
    let engine_containers = || stdout(&docker(&["ps", "-a", "--filter", &filter, "-q"])).lines().map(String::from).collect::<Vec<_>>();
    assert!(!engine_containers().is_empty(), "no container of the mount's on the engine: {}", engine_host().unwrap_or("docker"));

    // The kubelet stops the pod: SIGTERM, then SIGKILL after the grace period.
    let t = std::time::Instant::now();
    assert!(machine_docker(&["stop", "-t", &grace, &name]).status.success());
    let stopped = t.elapsed();
    eprintln!("pod stopped in {stopped:.1?}");
    let exit = stdout(&machine_docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]));
    assert_eq!(exit.trim(), "0", "the daemon did not stop cleanly on SIGTERM (killed after {grace} s?):\n{}", logs());
    assert_eq!(mounted_at(&mnt), None, "the mount outlived the pod on the machine");
    assert!(eventually(Duration::from_secs(10), || engine_containers().is_empty()), "containers left on the engine: {:?}\n{}", engine_containers(), logs());

    // And nothing of the node's own paths was touched on this machine.
    let node_paths_after: Vec<bool> = NODE_PATHS.iter().map(|p| Path::new(p).symlink_metadata().is_ok()).collect();
    assert_eq!(node_paths_after, node_paths_before, "{NODE_PATHS:?}");
}
