//! The container's cgroups: which processes are the container's (in the
//! host's pid namespace `/proc` lists the whole machine), and what its
//! memory accounting says about a tool's death (whether the kernel's
//! out-of-memory killer struck, and under which limit).

/// A process's cgroups as `/proc/PID/cgroup` lists them, every hierarchy
/// (v1 controllers and the unified one alike). Processes of one container
/// list the same; a tool cannot change its own (the cgroup file systems are
/// read-only in containers).
fn cgroups_of(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().filter(|t| !t.is_empty())
}

/// The agent's own cgroups, read once: a container's never change.
fn own_cgroups() -> Option<&'static String> {
    static OWN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| cgroups_of("self")).as_ref()
}

/// Whether process `pid` is in the agent's own cgroups, that is, inside
/// this container. `None` when either cannot be read (gone).
pub fn in_our_cgroup(pid: i32) -> Option<bool> {
    Some(cgroups_of(&pid.to_string())? == *own_cgroups()?)
}

/// The processes of this container: those in the agent's cgroups, wherever
/// their parent is (in the host's pid namespace `/proc` lists the whole
/// machine). None when the agent's own cgroups cannot be read.
pub fn container_pids() -> Vec<i32> {
    let Some(own) = own_cgroups() else { return vec![] };
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| cgroups_of(&pid.to_string()).as_ref() == Some(own))
        .collect()
}

/// The memory this container holds now, in bytes (cgroup v2
/// `memory.current`, v1 `memory.usage_in_bytes`, as the container's own
/// cgroup namespace shows them); 0 if neither is readable.
pub fn memory() -> u64 {
    ["/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// Kills by the OOM killer in this container so far (cgroup v2
/// `memory.events`, v1 `memory.oom_control`); `None` if neither is readable.
pub fn oom_kills() -> Option<u64> {
    // Which file this container has is looked up once.
    static FILE: std::sync::OnceLock<Option<&str>> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"].into_iter().find(|f| std::fs::metadata(f).is_ok())
    });
    std::fs::read_to_string((*file)?).ok().and_then(|text| oom_kill_count(&text))
}

fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The container's memory limit in bytes, if it has one.
fn memory_limit() -> Option<u64> {
    ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .and_then(|text| limit_of(&text))
}

/// v2 says `max`, v1 a huge page-rounded number, when there is no limit.
fn limit_of(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&b: &u64| b < 1 << 60)
}

/// Why a tool that died of SIGKILL died, when the OOM killer struck while
/// it ran (`before`: the count when it started).
pub fn oom_reason(before: Option<u64>) -> Option<String> {
    let before = before?;
    // The kernel counts the kill after sending SIGKILL: the victim can be
    // reaped before the count moves. Only SIGKILL deaths wait, 50 ms at most.
    let struck = (0..10).any(|i| {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        oom_kills().is_some_and(|now| now > before)
    });
    struck.then(|| match memory_limit() {
        Some(limit) => format!(
            "killed by the out-of-memory killer: its container's memory limit is {} MiB (raise `memory` for its image in the catalog)",
            limit >> 20
        ),
        None => "killed by the out-of-memory killer: the machine ran out of memory".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_limits_read_from_both_cgroup_versions() {
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), Some(3));
        assert_eq!(oom_kill_count("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n"), Some(1));
        assert_eq!(oom_kill_count("low 0\n"), None);
        assert_eq!(limit_of("67108864\n"), Some(64 << 20));
        assert_eq!(limit_of("max\n"), None);
        assert_eq!(limit_of("9223372036854771712\n"), None);
    }
}
