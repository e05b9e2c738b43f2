//! The `docker` commands the tests' helpers run, answered by containerd's
//! own client (`ctr`) when the engine under test is the CRI engine of
//! `scripts/cri-engine`: listing a mount's containers, running a command
//! in one, killing one as an admin would, its pid. What the tests check
//! is the engine's own account, not odfs's.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The socket `scripts/cri-engine start` serves.
pub const SOCKET: &str = "/run/odfs-cri-engine/containerd.sock";
pub const HOST: &str = "cri+unix:///run/odfs-cri-engine/containerd.sock";

/// `ctr` on the test engine, in the CRI's namespace.
pub fn ctr(args: &[&str]) -> Output {
    Command::new("ctr").args(["--address", SOCKET, "--namespace", "k8s.io"]).args(args).output().expect("run ctr")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn output(stdout: String, ok: bool) -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output { status: std::process::ExitStatus::from_raw(if ok { 0 } else { 1 << 8 }), stdout: stdout.into_bytes(), stderr: vec![] }
}

/// A container (not a sandbox) as the CRI made it: its labels and its
/// name (the CRI's, which odfs gives; containerd keeps it in the
/// container's CRI metadata).
struct Made {
    labels: HashMap<String, String>,
    name: String,
}

/// Containers, by id.
fn containers() -> HashMap<String, Made> {
    use base64::Engine;
    let mut out = HashMap::new();
    for id in text(&ctr(&["containers", "ls", "-q"])).lines() {
        let info: serde_json::Value = serde_json::from_slice(&ctr(&["containers", "info", id]).stdout).unwrap_or_default();
        let labels: HashMap<String, String> = serde_json::from_value(info["Labels"].clone()).unwrap_or_default();
        if labels.get("io.cri-containerd.kind").map(String::as_str) != Some("container") {
            continue;
        }
        let metadata = info["Extensions"]["io.cri-containerd.container.metadata"]["value"].as_str().unwrap_or_default();
        let metadata: serde_json::Value = base64::engine::general_purpose::STANDARD.decode(metadata).ok().and_then(|m| serde_json::from_slice(&m).ok()).unwrap_or_default();
        let name = metadata.pointer("/Metadata/Config/metadata/name").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        out.insert(id.to_string(), Made { labels, name });
    }
    out
}

/// The id of the container named or identified by `what`, as `docker`
/// takes either.
fn resolve(what: &str) -> String {
    containers().into_iter().find(|(id, m)| id == what || m.name == what).map_or_else(|| what.to_string(), |(id, _)| id)
}

/// Tasks: id → (pid, status as Docker names it).
fn tasks() -> HashMap<String, (u32, String)> {
    text(&ctr(&["tasks", "ls"]))
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let state = match *f.get(2)? {
                "RUNNING" => "running",
                "PAUSED" => "paused",
                "STOPPED" => "exited",
                _ => "created",
            };
            Some((f[0].to_string(), (f.get(1)?.parse().ok()?, state.to_string())))
        })
        .collect()
}

fn state(id: &str) -> (u32, String) {
    tasks().remove(id).unwrap_or((0, "created".into()))
}

fn kill(id: &str, signal: &str) {
    let _ = ctr(&["tasks", "kill", "--signal", signal, id]);
}

fn wait_stopped(id: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if state(id).1 != "running" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `docker ARGS` for the forms the helpers use.
pub fn docker(args: &[&str]) -> Output {
    match args {
        ["info"] => output(String::new(), ctr(&["version"]).status.success()),
        ["ps", rest @ ..] => ps(rest),
        ["exec", id, cmd @ ..] => {
            let id = &resolve(id).clone();
            let exec_id = format!("odfs-test-{}-{}", std::process::id(), crate::common::seq());
            let mut a = vec!["tasks", "exec", "--exec-id", &exec_id, id];
            a.extend_from_slice(cmd);
            ctr(&a)
        }
        ["rm", "-f", ids @ ..] => {
            // An admin's removal: its processes die; the engine keeps what
            // the CRI made, for the daemon to find gone.
            let known = containers();
            let mut ok = true;
            for id in ids.iter().map(|i| resolve(i)) {
                ok &= known.contains_key(&id);
                kill(&id, "SIGKILL");
                ok &= wait_stopped(&id, Duration::from_secs(10));
            }
            output(String::new(), ok)
        }
        ["stop", "-t", secs, id] => {
            let id = &resolve(id).clone();
            let known = containers().contains_key(id);
            kill(id, "SIGTERM");
            let mut stopped = wait_stopped(id, Duration::from_secs(secs.parse().unwrap_or(10)));
            if !stopped {
                kill(id, "SIGKILL");
                stopped = wait_stopped(id, Duration::from_secs(10));
            }
            output(String::new(), known && stopped)
        }
        ["inspect", "-f", format, what] => {
            let id = &resolve(what);
            let (pid, status) = state(id);
            let pid_mode = if pid > 0 && std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == std::fs::read_link("/proc/self/ns/pid").ok() { "host" } else { "" };
            let out = format
                .replace("{{.State.Pid}}", &pid.to_string())
                .replace("{{.State.Paused}}", if status == "paused" { "true" } else { "false" })
                .replace("{{.Id}}", id)
                .replace("{{.HostConfig.PidMode}}", pid_mode);
            output(out + "\n", containers().contains_key(id))
        }
        ["image", "inspect", reference] => {
            // As containerd names it: a registry host, a path, a tag.
            let tagged = if reference.rsplit('/').next().is_some_and(|last| last.contains(':') || last.contains('@')) { reference.to_string() } else { format!("{reference}:latest") };
            let first = tagged.split('/').next().unwrap_or_default();
            let full = match tagged.contains('/') {
                true if first.contains('.') || first.contains(':') || first == "localhost" => tagged.clone(),
                true => format!("docker.io/{tagged}"),
                false => format!("docker.io/library/{tagged}"),
            };
            output(String::new(), text(&ctr(&["images", "ls", "-q"])).lines().any(|l| l == full))
        }
        ["build", "-q", "-t", reference, dir] => {
            // No CRI engine builds: the image is built with the machine's
            // Docker and brought to the node, as a build host's would be.
            let built = Command::new("docker").args(["build", "-q", "-t", reference, dir]).output().expect("run docker build");
            if built.status.success() {
                load(reference);
            }
            built
        }
        other => panic!("docker {other:?} has no CRI form in the tests"),
    }
}

/// Import `reference` from the machine's Docker into the test engine.
pub fn load(reference: &str) {
    let o = Command::new(crate::common::manifest().join("scripts/cri-engine")).args(["load", reference]).output().expect("run scripts/cri-engine load");
    assert!(o.status.success(), "scripts/cri-engine load {reference}: {}", String::from_utf8_lossy(&o.stderr));
}

/// `docker ps -a [--filter label=K=V]… [--format F | -q]`.
fn ps(args: &[&str]) -> Output {
    let (mut filters, mut format) = (vec![], "{{.ID}}".to_string());
    let mut all = false;
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "-a" => all = true,
            "-q" | "-aq" => all |= args[i] == "-aq",
            "--filter" => {
                i += 1;
                let (k, v) = args[i].strip_prefix("label=").and_then(|kv| kv.split_once('=')).expect("a label filter");
                filters.push((k.to_string(), v.to_string()));
            }
            "--format" => {
                i += 1;
                format = args[i].to_string();
            }
            other => panic!("docker ps {other}: no CRI form in the tests"),
        }
        i += 1;
    }
    let tasks = tasks();
    let mut out = String::new();
    // In a stable order, as docker lists them.
    let mut found: Vec<(String, Made)> = containers().into_iter().collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, Made { labels, .. }) in found {
        if !filters.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let state = tasks.get(&id).map_or("created", |(_, s)| s.as_str());
        if !all && state != "running" && state != "paused" {
            continue;
        }
        let mut line = format.replace("{{.ID}}", &id).replace("{{.State}}", state);
        while let Some(start) = line.find("{{.Label \"") {
            let Some(end) = line[start..].find("\"}}") else { break };
            let key = line[start + 10..start + end].to_string();
            line.replace_range(start..start + end + 3, labels.get(&key).map_or("", String::as_str));
        }
        out.push_str(&line);
        out.push('\n');
    }
    output(out, true)
}
