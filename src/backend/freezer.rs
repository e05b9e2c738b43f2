//! A local container's cgroup freezer, written directly: freezing and
//! thawing without the engine's round trip (v1 `freezer.state`, v2
//! `cgroup.freeze`). A thaw is one write, about 0.2 ms, where the engine's
//! unpause costs 10–20 ms (its API, containerd, the runtime's process).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The freezer of one container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freezer {
    /// The cgroup's directory.
    dir: PathBuf,
    v2: bool,
}

impl Freezer {
    /// The freezer of the cgroup process `pid` is in, which must be
    /// container `id`'s: engines name their containers' cgroups by id
    /// (`/docker/ID`, `docker-ID.scope`, `libpod-ID.scope`), so a pid that
    /// ended and was reused by another process is never frozen instead.
    pub fn of(pid: i32, id: &str) -> io::Result<Freezer> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let f = find(&cgroups, &mountinfo).ok_or_else(|| io::Error::other(format!("no freezer mounted for the cgroup of pid {pid}")))?;
        // The cgroup's own name, not a parent's: one a user made below
        // the container's would not do.
        if id.is_empty() || !f.dir.file_name().is_some_and(|n| n.to_string_lossy().contains(id)) {
            return Err(io::Error::other(format!("pid {pid} is not in container {id}'s cgroup ({})", f.dir.display())));
        }
        Ok(f)
    }

    /// Freeze every process of the cgroup; wait until they are (a process
    /// in uninterruptible sleep holds the cgroup in FREEZING), up to
    /// `limit`, and thaw it again if they never are.
    pub fn freeze(&self, limit: Duration) -> io::Result<()> {
        self.write(true)?;
        let start = Instant::now();
        while !self.frozen()? {
            if start.elapsed() >= limit {
                let _ = self.write(false);
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{} not frozen within {limit:?}", self.dir.display())));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Thaw it: one write, done when it returns (v1 thaws synchronously;
    /// v2 wakes each process as the write returns).
    pub fn thaw(&self) -> io::Result<()> {
        self.write(false)
    }

    /// Whether every process of it is frozen now.
    pub fn frozen(&self) -> io::Result<bool> {
        Ok(if self.v2 {
            std::fs::read_to_string(self.dir.join("cgroup.events"))?.lines().any(|l| l == "frozen 1")
        } else {
            std::fs::read_to_string(self.dir.join("freezer.state"))?.trim() == "FROZEN"
        })
    }

    fn write(&self, frozen: bool) -> io::Result<()> {
        let (file, value) = match (self.v2, frozen) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        // Not `fs::write`: no O_CREAT, so a cgroup removed meanwhile (its
        // container gone) is an error, not a stray file.
        use std::io::Write;
        std::fs::OpenOptions::new().write(true).open(self.dir.join(file))?.write_all(value.as_bytes())
    }
}

/// The freezer for a process with `/proc/PID/cgroup` text `cgroups`, given
/// this process's mount table: v1's freezer hierarchy where it is mounted
/// (a hybrid machine has both), else the v2 cgroup.
fn find(cgroups: &str, mountinfo: &str) -> Option<Freezer> {
    let mut v2_path = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "freezer") {
            if let Some((root, point)) = mount_of(mountinfo, |fstype, opts| fstype == "cgroup" && opts.split(',').any(|o| o == "freezer")) {
                return Some(Freezer { dir: under(&point, &root, path)?, v2: false });
            }
        }
        if controllers.is_empty() && line.starts_with("0::") {
            v2_path = Some(path.to_string());
        }
    }
    let path = v2_path?;
    let (root, point) = mount_of(mountinfo, |fstype, _| fstype == "cgroup2")?;
    Some(Freezer { dir: under(&point, &root, &path)?, v2: true })
}

/// The cgroup v1 directory of `controller` (`pids`) that process `pid` is
/// in, which must be named after container `id` (as [`Freezer::of`]
/// checks); `None` where that controller has no v1 hierarchy.
pub fn v1_dir(pid: i32, id: &str, controller: &str) -> io::Result<Option<PathBuf>> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let Some(path) = cgroups.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then(|| path.to_string())
    }) else {
        return Ok(None);
    };
    let Some((root, point)) = mount_of(&mountinfo, |fstype, opts| fstype == "cgroup" && opts.split(',').any(|o| o == controller)) else { return Ok(None) };
    let dir = under(&point, &root, &path).ok_or_else(|| io::Error::other(format!("the {controller} cgroup of pid {pid} is outside its mount")))?;
    if id.is_empty() || !dir.file_name().is_some_and(|n| n.to_string_lossy().contains(id)) {
        return Err(io::Error::other(format!("pid {pid} is not in container {id}'s cgroup ({})", dir.display())));
    }
    Ok(Some(dir))
}

/// The first mount whose type and super options pass `wanted`: its root
/// within the filesystem and its mount point.
fn mount_of(mountinfo: &str, wanted: impl Fn(&str, &str) -> bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (head, tail) = line.split_once(" - ")?;
        let fields: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        let (root, point) = (*fields.get(3)?, *fields.get(4)?);
        wanted(tail.first()?, tail.get(2).copied().unwrap_or("")).then(|| (root.to_string(), PathBuf::from(point)))
    })
}

/// The directory of cgroup `path` in a hierarchy mounted at `point` from
/// its `root`; `None` if the cgroup is outside what is mounted, or the
/// path would climb out of it.
fn under(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let rel = if root == "/" { path } else { path.strip_prefix(root)? };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() { point.to_path_buf() } else { point.join(rel) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 25 0:27 / /sys/fs/cgroup/freezer rw,relatime shared:9 - cgroup cgroup rw,freezer
32 25 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V2_MOUNTS: &str = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn a_hybrid_machine_freezes_through_v1() {
        let cg = "6:freezer:/docker/abc123\n4:memory:/docker/abc123\n0::/docker/abc123\n";
        assert_eq!(find(cg, HYBRID_MOUNTS), Some(Freezer { dir: "/sys/fs/cgroup/freezer/docker/abc123".into(), v2: false }));
    }

    #[test]
    fn a_unified_machine_freezes_through_v2() {
        let cg = "0::/system.slice/docker-abc123.scope\n";
        assert_eq!(find(cg, V2_MOUNTS), Some(Freezer { dir: "/sys/fs/cgroup/system.slice/docker-abc123.scope".into(), v2: true }));
    }

    #[test]
    fn a_cgroup_outside_the_mount_or_climbing_out_has_no_freezer() {
        let mounts = "29 23 0:26 /sub /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find("0::/other/x\n", mounts), None);
        assert_eq!(find("0::/sub/x\n", mounts), Some(Freezer { dir: "/sys/fs/cgroup/x".into(), v2: true }));
        assert_eq!(find("0::/../etc\n", V2_MOUNTS), None);
        assert_eq!(find("6:freezer:/docker/x\n", "nothing mounted\n"), None);
    }

    #[test]
    fn a_pid_outside_the_named_container_is_refused() {
        // This test's own cgroup does not name a container id.
        assert!(Freezer::of(std::process::id() as i32, "0123456789abcdef0123456789abcdef").is_err());
    }
}
