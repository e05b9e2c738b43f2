//! Whether a kubelet manages the CRI engine odfs was given. A kubelet takes
//! every pod sandbox on its engine for one of its pods, and stops within
//! seconds (its housekeeping's "orphaned pod" cleanup, a one-second grace)
//! any whose pod it does not know: odfs's tools would be killed mid-call.
//! So odfs refuses such an engine, with one line, instead.

use std::path::Path;

/// The kubelet's runtime endpoint when neither its flags nor its config
/// file name one (Kubernetes 1.27 and later).
const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// Bytes of a kubelet's config file read.
const MAX_CONFIG: u64 = 1 << 20;

/// A kubelet running on this machine whose runtime endpoint is `socket`:
/// its pid. Only root's processes count, run from a root-owned file: a
/// user's process named `kubelet` neither refuses the engine to everyone
/// nor makes the daemon read a file of its choosing.
pub fn managing(socket: &Path) -> Option<u32> {
    let ours = same_file(socket)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "kubelet") || !roots(&entry.path()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let root = entry.path().join("root");
        let endpoint = endpoint(&args, |config| read_config(&root.join(config.trim_start_matches('/'))));
        let path = endpoint.strip_prefix("unix://").unwrap_or(&endpoint);
        if same_file(&root.join(path.trim_start_matches('/'))) == Some(ours) {
            return Some(pid);
        }
    }
    None
}

/// The process at `proc` (`/proc/PID`) is root's (every uid 0) and runs a
/// root-owned executable.
fn roots(proc: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    let uids_root = status.lines().find_map(|l| l.strip_prefix("Uid:")).is_some_and(|u| u.split_whitespace().all(|id| id == "0"));
    uids_root && std::fs::metadata(proc.join("exe")).is_ok_and(|m| m.uid() == 0)
}

/// A config file, when it is a regular file: never blocking, at most
/// [`MAX_CONFIG`] bytes.
fn read_config(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).ok()?;
    if !file.metadata().ok()?.file_type().is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_CONFIG).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Device and inode of a socket, so two paths to it compare equal.
fn same_file(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The runtime endpoint of a kubelet with arguments `args`: its flag, else
/// its config file's `containerRuntimeEndpoint` (read by `read`), else the
/// default.
fn endpoint(args: &[String], read: impl Fn(&str) -> Option<String>) -> String {
    let flag = |name: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{name}=")).map(String::from).or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
        })
    };
    if let Some(e) = flag("--container-runtime-endpoint") {
        return e;
    }
    let from_config = flag("--config").and_then(|c| read(&c)).and_then(|text| {
        text.lines().find_map(|l| l.trim().strip_prefix("containerRuntimeEndpoint:").map(|v| v.trim().trim_matches(['"', '\'']).to_string()))
    });
    from_config.filter(|e| !e.is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// The one line for an engine a kubelet manages.
pub fn refusal(socket: &Path, pid: u32) -> String {
    format!(
        "the kubelet on this node (pid {pid}) manages the CRI engine at {} and stops within seconds every pod sandbox it did not make, odfs's tools among them: give odfs an engine of its own (a containerd with its own socket and root, see docs/scaling.md) or the node's Docker or Podman",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_endpoint_is_the_flag_s_else_the_config_s_else_containerd_s() {
        let none = |_: &str| None;
        assert_eq!(endpoint(&args(&["kubelet", "--container-runtime-endpoint=unix:///var/run/crio/crio.sock"]), none), "unix:///var/run/crio/crio.sock");
        assert_eq!(endpoint(&args(&["kubelet", "--container-runtime-endpoint", "unix:///x.sock"]), none), "unix:///x.sock");
        let config = |p: &str| (p == "/var/lib/kubelet/config.yaml").then(|| "kind: KubeletConfiguration\ncontainerRuntimeEndpoint: \"unix:///run/k3s/containerd/containerd.sock\"\n".to_string());
        assert_eq!(endpoint(&args(&["kubelet", "--config=/var/lib/kubelet/config.yaml"]), config), "unix:///run/k3s/containerd/containerd.sock");
        assert_eq!(endpoint(&args(&["kubelet", "--config", "/other.yaml"]), config), DEFAULT_ENDPOINT);
    }
}
