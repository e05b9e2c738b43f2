//! The rest of the caller's view, beyond files: the host's processes, the
//! caller's environment, the host's name and time zone, and tools that run
//! other catalog tools, each checked through a real mount as a real user.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CATALOG: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["sh", "ps", "kill", "hostname", "env", "xargs", "id", "pwd", "cat", "sleep"]

# Another image, so that calls from one to the other cross containers.
[image.data]
ref = "odfs/data:latest"
network = "none"
commands = ["jq"]

[command.data-sh]
image = "data"
path = "/bin/sh"

# Holds a capability its callers lack: an allowlisted environment, and
# processes of its own (NET_RAW reaches no other process: still the host's).
[image.capbb]
ref = "odfs-test/busybox:latest"
network = "none"
cap_add = ["NET_RAW"]
pids = 4101

[command.cap-env]
image = "capbb"
path = "/bin/busybox"
args = ["env"]

[image.private]
ref = "odfs-test/busybox:latest"
network = "none"
pid = "private"
pids = 4102

[command.private-ps]
image = "private"
path = "/bin/ps"

[command.private-cat]
image = "private"
path = "/bin/cat"

# Runs itself: stopped at the depth limit.
[command.loop]
image = "bb"
path = "/bin/sh"
args = ["-c", "echo level; loop"]
"#;

/// A host `sleep` of `user` (root's, with `marker` as its argv[0], when
/// `None`), killed on drop.
struct HostProcess(std::process::Child);

impl HostProcess {
    fn start(user: Option<&TestUser>, marker: &str) -> HostProcess {
        use std::os::unix::process::CommandExt;
        let mut cmd = match user {
            Some(u) => u.cmd("/bin/sleep"),
            None => {
                let mut c = Command::new("/bin/sleep");
                c.arg0(marker);
                c
            }
        };
        HostProcess(cmd.arg("600").stdin(Stdio::null()).spawn().expect("start a host process"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// Waits up to 10 s for it to end; whether it did.
    fn ended(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ps_lists_the_host_s_processes_and_a_private_image_only_its_own() {
    let m = TestMount::new(CATALOG);
    let marker = format!("odfs-marker-{}", std::process::id());
    let host = HostProcess::start(None, &marker);
    let o = m.sh(r#""$M/ps" -o pid,args"#);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o).lines().find(|l| l.contains(&marker)).map(str::to_string);
    let line = line.unwrap_or_else(|| panic!("{marker} not listed:\n{}", stdout(&o)));
    assert_eq!(line.split_whitespace().next(), Some(host.pid().to_string().as_str()), "{line}");
    // Its own pid is its host pid too: what `$$` says is what the host sees.
    let o = m.sh(r#""$M/sh" -c 'echo $$; cat /proc/$$/stat' | { read pid; read stat; case "$stat" in "$pid "*) echo same;; *) echo "$pid / $stat";; esac; }"#);
    assert_eq!(stdout(&o).trim(), "same", "{}", stderr(&o));
    // pid = "private": the container's processes only.
    let o = m.sh(r#""$M/private-ps" -o pid,args"#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains(&marker), "a private image sees the host's processes:\n{}", stdout(&o));
    assert!(stdout(&o).lines().count() < 10, "{}", stdout(&o));
    // `odfs show` says which.
    let show = stdout(&m.odfs(&["show", "ps"]));
    assert!(show.contains("processes:  the host's processes"), "{show}");
    assert!(show.contains("environment: the caller's, as it is; PATH is the image's, then"), "{show}");
    let show = stdout(&m.odfs(&["show", "private-ps"]));
    assert!(show.contains("processes:  the container's own processes and IPC (pid = \"private\")"), "{show}");
    let show = stdout(&m.odfs(&["show", "cap-env"]));
    assert!(show.contains("environment: for callers other than root, an allowlist"), "{show}");
}

#[test]
fn kill_stops_the_caller_s_own_process_and_not_another_user_s() {
    let m = TestMount::new(CATALOG);
    let user = TestUser::new();
    let mut own = HostProcess::start(Some(&user), "own");
    let mut roots = HostProcess::start(None, "root's");
    let o = user.cmd(m.shim("kill")).arg(roots.pid().to_string()).current_dir(&m.work).output().unwrap();
    assert_ne!(o.status.code(), Some(0), "killed root's process: {}", stderr(&o));
    assert!(stderr(&o).contains("not permitted"), "{}", stderr(&o));
    assert!(roots.alive(), "root's process died");
    let o = user.cmd(m.shim("kill")).arg(own.pid().to_string()).current_dir(&m.work).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(own.ended(), "the caller's own process was not stopped");
}

#[test]
fn a_caller_tool_gets_the_environment_and_a_capability_tool_an_allowlist() {
    let m = TestMount::new(CATALOG);
    let user = TestUser::new();
    let run = |cmd: &str| {
        let o = user
            .cmd(m.shim(cmd))
            .current_dir(&m.work)
            .env("RIPGREP_CONFIG_PATH", "/tmp/rgrc")
            .env("SQLITE_HISTORY", "/tmp/h")
            .env("LD_PRELOAD", "")
            .env("GCONV_PATH", "/tmp/gconv")
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        stdout(&o)
    };
    let env = run("env");
    for var in ["RIPGREP_CONFIG_PATH=/tmp/rgrc", "SQLITE_HISTORY=/tmp/h", "LD_PRELOAD=", "GCONV_PATH=/tmp/gconv", "LANG=C.UTF-8"] {
        assert!(env.lines().any(|l| l == var), "{var} missing for a caller tool:\n{env}");
    }
    // PATH: the image's, then the mount.
    let path = env.lines().find_map(|l| l.strip_prefix("PATH=")).unwrap().to_string();
    assert!(path.ends_with(&format!(":{}", m.mnt.display())), "{path}");
    let env = run("cap-env");
    assert!(env.lines().any(|l| l == "LANG=C.UTF-8"), "{env}");
    for var in ["RIPGREP_CONFIG_PATH", "LD_PRELOAD", "GCONV_PATH"] {
        assert!(!env.lines().any(|l| l.starts_with(&format!("{var}="))), "{var} reached a capability tool:\n{env}");
    }
}

#[test]
fn the_host_s_name_and_time_zone() {
    let m = TestMount::new(CATALOG);
    let o = m.sh(r#""$M/hostname""#);
    assert_eq!(stdout(&o).trim(), std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), "{}", stderr(&o));
    if std::path::Path::new("/etc/localtime").exists() {
        let o = m.sh(r#""$M/cat" /etc/localtime | cksum"#);
        let host = m.sh("cat /etc/localtime | cksum");
        assert_eq!(stdout(&o), stdout(&host), "{}", stderr(&o));
    }
}

#[test]
fn shared_memory_is_the_host_s_and_a_private_image_s_its_own() {
    // POSIX shared memory lives in /dev/shm: a caller tool sees what the
    // caller's other programs put there (as IPC between them needs). An
    // image with IPC of its own has its own /dev/shm: a host path named
    // there is refused, never its own file in its place.
    let m = TestMount::new(CATALOG);
    let name = format!("/dev/shm/odfs-test-{}", std::process::id());
    std::fs::write(&name, "segment\n").unwrap();
    let _cleanup = Defer(|| drop(std::fs::remove_file(&name)));
    let o = m.sh(&format!(r#""$M/cat" {name}"#));
    assert_eq!(stdout(&o), "segment\n", "{}", stderr(&o));
    let o = m.sh(&format!(r#""$M/private-cat" {name}"#));
    assert_eq!(shell_status(&o), 126, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("is a host path"), "{}", stderr(&o));
}

#[test]
fn a_tool_runs_another_image_s_tool_as_the_same_caller_in_the_same_directory() {
    let m = TestMount::new(CATALOG);
    let user = TestUser::new();
    std::fs::write(m.work.join("h.json"), r#"{"a":{"b":7}}"#).unwrap();
    // busybox xargs, in the bb image, finds jq (odfs/data) on its PATH.
    let o = user.cmd(m.shim("sh")).args(["-c", "echo h.json | xargs jq .a.b"]).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), "7\n", "{}", stderr(&o));
    let o = user.cmd(m.shim("sh")).args(["-c", "echo x | xargs data-sh -c 'id -u; pwd'"]).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), format!("{}\n{}\n", user.uid, m.work.display()), "{}", stderr(&o));
    assert_eq!(m.containers().len(), 2, "two images, two containers");
}

#[test]
fn a_tool_in_an_adopted_container_still_runs_tools_through_a_socket_outside_the_view() {
    // As installed: the control socket under /run, which tools do not see
    // from the host, so it reaches containers by a bind of its own. A
    // restarted daemon listens on a new socket; the containers it adopts
    // must reach that one, not the dead one they were created with.
    let dir = std::path::PathBuf::from(format!("/run/odfs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Defer(|| drop(std::fs::remove_dir_all(&dir)));
    let socket = dir.join("odfs.sock");
    let mut m = TestMount::with_files(&[("test.toml", CATALOG)], &["--socket", socket.to_str().unwrap()]);
    std::fs::write(m.work.join("h.json"), r#"{"a":{"b":7}}"#).unwrap();
    let inner = |m: &TestMount| m.sh(r#""$M/sh" -c 'echo h.json | xargs jq .a.b'"#);
    let o = inner(&m);
    assert_eq!(stdout(&o), "7\n", "{}", stderr(&o));
    let before = m.containers();
    m.crash();
    m.start(&["--socket", socket.to_str().unwrap()]);
    assert_eq!(m.containers(), before, "the containers were not adopted");
    let o = inner(&m);
    assert_eq!(stdout(&o), "7\n", "{}", stderr(&o));
}

#[test]
fn a_tool_that_runs_itself_stops_at_the_depth_limit_with_one_line() {
    let m = TestMount::new(CATALOG);
    let o = m.sh(r#""$M/loop""#);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 8, "{}", stdout(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("odfs: loop: calls nested 8 deep"), "{lines:?}");
}

#[test]
fn a_root_tool_cannot_run_tools_nor_a_tool_that_took_another_uid() {
    let user = TestUser::new();
    let catalog = format!(
        "{CATALOG}\n[image.rootbb]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\nuser = \"root\"\nallow_groups = [\"{}\"]\npids = 4103\n\n[command.rootsh]\nimage = \"rootbb\"\npath = \"/bin/sh\"\n",
        user.name
    );
    let m = TestMount::new(&catalog);
    let refusal = "inside a container, odfs serves only tools run from a tool odfs started";
    // As root there: no stamp, no call (it would be a way to any uid).
    let script = format!("id -u; {0}/id -u", m.mnt.display());
    let o = user.cmd(m.shim("rootsh")).args(["-c", &script]).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), "0\n", "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("odfs: id: {refusal}")), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(126));
    // Nor after taking another uid, stamp or not.
    let script = format!("su -s /bin/sh -c '{0}/id -u' nobody", m.mnt.display());
    let o = user.cmd(m.shim("rootsh")).args(["-c", &script]).current_dir(&m.work).output().unwrap();
    assert!(stderr(&o).contains(refusal), "{}{}", stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("65534"), "{}", stdout(&o));
    // A caller tool that drops its stamp is refused too; with it, served.
    let o = user.cmd(m.shim("sh")).args(["-c", &format!("{0}/id -u; unset ODFS_CALLER; {0}/id -u", m.mnt.display())]).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), format!("{}\n", user.uid), "{}", stderr(&o));
    assert!(stderr(&o).contains(refusal), "{}", stderr(&o));
}

#[test]
fn strace_attaches_to_the_caller_s_own_host_process() {
    let m = TestMount::with_files(
        &[("debug.toml", "[image.debug]\nref = \"odfs/debug:latest\"\nnetwork = \"none\"\ncommands = [\"strace\", \"lsof\"]\n")],
        &[],
    );
    if !docker(&["image", "inspect", "odfs/debug:latest"]).status.success() {
        panic!("odfs/debug:latest is missing: run scripts/build-images");
    }
    let user = TestUser::new();
    // The user's own process ends by itself after a while; strace, attached
    // to it, reports its end.
    let o = user
        .cmd("/bin/sh")
        .args(["-c", r#"sleep 3 & p=$!; "$M/lsof" -a -p $p -d cwd -Fn | grep -c "^n$PWD"; "$M/strace" -e trace=none -p $p 2>&1 | tail -1"#])
        .env("M", &m.mnt)
        .current_dir(&m.work)
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "1\n+++ exited with 0 +++\n", "{}", stderr(&o));
    // Another user's process: as on the host, not permitted.
    let root = HostProcess::start(None, "root's");
    let o = user.cmd(m.shim("strace")).args(["-p", &root.pid().to_string()]).current_dir(&m.work).output().unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("Operation not permitted"), "{}", stderr(&o));
}

#[test]
fn stopping_a_container_ends_its_tools_and_nothing_else_of_the_host() {
    let m = TestMount::new(CATALOG);
    let mut canary = HostProcess::start(None, &format!("odfs-canary-{}", std::process::id()));
    // A tool with a child of its own, both in the container.
    let mut tool = m.sh_cmd(r#""$M/sh" -c 'sleep 600 & sleep 601'"#).stdout(Stdio::null()).spawn().unwrap();
    let container = m.wait_running("sleep 601");
    assert!(m.ps(&container).contains("sleep 600"), "{}", m.ps(&container));
    // The agent, told to stop, ends every process of its container...
    assert!(docker(&["stop", "-t", "10", &container]).status.success());
    let status = tool.wait().unwrap();
    assert!(!status.success());
    let left = Command::new("pgrep").args(["-f", "^sleep 60[01]$"]).output().unwrap();
    assert!(stdout(&left).is_empty(), "the tool's processes outlived their container: {}", stdout(&left));
    // ...and none of the host's.
    assert!(canary.alive(), "a host process died with the container");
}
