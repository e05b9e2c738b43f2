//! Test harness: a real `odfs mount` with its own mountpoint, state dir,
//! socket and catalog, against the real Docker engine. Everything it creates
//! is labelled by the mount id and removed on drop, even when a test fails.
#![allow(dead_code)]

pub mod cri;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

pub const TEST_IMAGE: &str = "odfs-test/busybox:latest";

/// A catalog of busybox applets in the offline test image (no libc in it).
pub const BUSYBOX_CATALOG: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["sh", "cat", "ls", "sleep", "true", "false", "touch", "id", "pwd", "env",
            "wc", "head", "yes", "echo", "stat", "tr"]

# Names no host has: a multiplexer binary with fixed leading arguments.
[command.odfs-upper]
image = "bb"
path = "/bin/busybox"
args = ["tr", "a-z", "A-Z"]

[command.odfs-echo]
image = "bb"
path = "/bin/busybox"
args = ["echo", "odfs:"]
"#;

/// The Podman API service's socket (scripts/setup starts it).
pub const PODMAN_HOST: &str = "unix:///run/odfs-podman/podman.sock";

/// The engine the end-to-end tests use, by `ODFS_TEST_ENGINE`: `docker`
/// (default: the machine's dockerd, as the environment names it), `podman`
/// (its Docker-compatible API) or `cri` (the containerd of
/// `scripts/cri-engine`, through its CRI): `DOCKER_HOST` of every test
/// daemon, and the engine every `docker` command of the helpers asks.
pub fn engine_host() -> Option<&'static str> {
    match std::env::var("ODFS_TEST_ENGINE").as_deref() {
        Err(_) | Ok("" | "docker") => None,
        Ok("podman") => Some(PODMAN_HOST),
        Ok("cri") => Some(cri::HOST),
        Ok(other) => panic!("ODFS_TEST_ENGINE={other}: expected docker, podman or cri"),
    }
}

/// The engine under test is a CRI engine.
pub fn on_cri() -> bool {
    engine_host() == Some(cri::HOST)
}

/// A number no other call in this process has had.
pub fn seq() -> usize {
    SEQ.fetch_add(1, Ordering::SeqCst)
}

/// The docker CLI, talking to the engine under test.
pub fn docker_cli() -> Command {
    let mut c = Command::new("docker");
    if let Some(host) = engine_host() {
        c.args(["-H", host]);
    }
    c
}

static PREPARE: Once = Once::new();
static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The static agent, built once per test run in its own target dir (the
/// tests' own build of it is dynamic and could not run in the test image).
pub fn agent() -> PathBuf {
    manifest().join("target/static/release/odfs-agent")
}

/// The static launcher (see [`prepare`]).
pub fn launcher() -> PathBuf {
    manifest().join("target/static/release/odfs-launch")
}

/// Engine up, static agent built, test image present; once per process.
pub fn prepare() {
    PREPARE.call_once(|| {
        let ok = docker(&["info"]).status.success();
        let start = if on_cri() { "scripts/cri-engine start" } else { "scripts/setup" };
        assert!(ok, "the engine ({}) does not answer: run {start} first", engine_host().unwrap_or("Docker"));
        // Static, as installed: the agent runs in every image, and so does
        // the launcher when a tool runs another tool.
        let built = Command::new(manifest().join("scripts/build-static")).status().expect("run scripts/build-static");
        assert!(built.success(), "scripts/build-static failed");
        let images = Command::new(manifest().join("scripts/build-images")).status().expect("run scripts/build-images");
        assert!(images.success(), "scripts/build-images failed");
    });
}

/// `program` run as nobody (uid and gid 65534, no supplementary groups).
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(program);
    c
}

pub fn docker(args: &[&str]) -> Output {
    if on_cri() {
        return cri::docker(args);
    }
    docker_cli().args(args).output().expect("run docker")
}

/// The agent of `container` as its own processes see it: `/proc/PID` of
/// its first process (PID 1 in a pid namespace of its own, its host pid in
/// the host's).
pub fn agent_proc(container: &str) -> String {
    let o = docker(&["inspect", "-f", "{{.HostConfig.PidMode}} {{.State.Pid}}", container]);
    match stdout(&o).split_whitespace().collect::<Vec<_>>()[..] {
        ["host", pid] => format!("/proc/{pid}"),
        _ => "/proc/1".to_string(),
    }
}

pub struct TestMount {
    pub root: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub catalog: PathBuf,
    /// A directory every user may write, under shared /tmp.
    pub work: PathBuf,
    pub id: String,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    daemon: Option<Child>,
}

impl TestMount {
    /// A mount serving one catalog file.
    pub fn new(catalog: &str) -> TestMount {
        Self::with_files(&[("test.toml", catalog)], &[])
    }

    pub fn with_files(files: &[(&str, &str)], extra_args: &[&str]) -> TestMount {
        Self::with_env(files, extra_args, &[])
    }

    /// Also set environment variables of the daemon.
    pub fn with_env(files: &[(&str, &str)], extra_args: &[&str], env: &[(&str, &str)]) -> TestMount {
        prepare();
        let root = PathBuf::from(format!("/tmp/odfs-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&root);
        let (mnt, state, catalog, work) = (root.join("mnt"), root.join("state"), root.join("catalog"), root.join("work"));
        for d in [&mnt, &state, &catalog, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        for d in [&root, &work] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        for (name, text) in files {
            let path = catalog.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let id = odfs::daemon::mount_id(&mnt, false);
        // `--socket PATH` among the arguments puts it elsewhere.
        let socket = extra_args.iter().position(|a| *a == "--socket").map_or(state.join("odfs.sock"), |i| PathBuf::from(extra_args[i + 1]));
        let log = root.join("daemon.log");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut m = TestMount { root, mnt, state, socket, catalog, work, id, log, env, daemon: None };
        m.start(extra_args);
        m
    }

    /// Start the daemon and wait until the mount serves.
    pub fn start(&mut self, extra_args: &[&str]) {
        self.launch(extra_args);
        let deadline = Instant::now() + Duration::from_secs(20);
        // A crashed daemon leaves its socket file and a stale mount behind:
        // only a socket that accepts proves the new daemon is serving (it
        // clears the stale mount before binding and mounts right after).
        while !(std::os::unix::net::UnixStream::connect(&self.socket).is_ok() && self.mounted()) {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("odfs mount exited with {status}:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "mount did not come up:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the daemon without waiting for it.
    pub fn launch(&mut self, extra_args: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_odfs"))
            .arg("mount")
            .args(["--catalog".as_ref(), self.catalog.as_os_str()])
            .args(["--state".as_ref(), self.state.as_os_str()])
            .args(["--agent".as_ref(), agent().as_os_str()])
            .arg("--launcher")
            .arg(launcher())
            .args(extra_args)
            .arg(&self.mnt)
            .env("ODFS_LOG", "odfs=debug,info")
            .envs(engine_host().map(|h| ("DOCKER_HOST", h)))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start odfs mount");
        self.daemon = Some(child);
    }

    /// SIGKILL the daemon, as a crash would; its mount is left stale.
    pub fn crash(&mut self) {
        let mut child = self.daemon.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let target = format!(" {} fuse", self.mnt.display());
        mounts.lines().any(|l| l.contains(&target))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn daemon_pid(&self) -> i32 {
        self.daemon.as_ref().expect("daemon running").id() as i32
    }

    /// SIGTERM the daemon and wait for it; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("daemon running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon ignored SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin CLI against this mount's daemon.
    pub fn odfs(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_odfs")).args(args).arg("--socket").arg(&self.socket).output().unwrap()
    }

    pub fn shim(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// Ids of this mount's containers on the engine that were started
    /// (running, frozen or ended); not the never-started ones it reads
    /// images through (`odfs scan`, what an image fills of the host view),
    /// nor those made ahead of a call ([`TestMount::made_ahead`]).
    pub fn containers(&self) -> Vec<String> {
        self.labelled().into_iter().filter(|(_, scratch, state)| !scratch && state != "created").map(|(id, ..)| id).collect()
    }

    /// Ids of this mount's containers made ahead of a call: created, never
    /// started.
    pub fn made_ahead(&self) -> Vec<String> {
        self.labelled().into_iter().filter(|(_, scratch, state)| !scratch && state == "created").map(|(id, ..)| id).collect()
    }

    /// Ids of every container of this mount, scratch ones included.
    pub fn every_container(&self) -> Vec<String> {
        self.labelled().into_iter().map(|(id, ..)| id).collect()
    }

    /// Ids of all this mount's containers, whether each is a scratch
    /// one, and its state (`created`, `running`…).
    fn labelled(&self) -> Vec<(String, bool, String)> {
        let filter = format!("label=io.odfs.mount={}", self.id);
        let out = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.ID}} {{.State}} {{.Label \"io.odfs.scan\"}}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (id, state) = (f.next()?.to_string(), f.next()?.to_string());
                Some((id, f.next() == Some("true"), state))
            })
            .collect()
    }

    /// Processes inside a container, as `ps` there prints them: pid, state
    /// (`T` when stopped) and command line.
    /// `ps` of the container's own processes (header first): in the host's
    /// pid namespace `ps` lists the machine, so only the processes in the
    /// container's cgroups are kept.
    pub fn ps(&self, container: &str) -> String {
        let script = r#"own=$(cat /proc/self/cgroup); for p in /proc/[0-9]*; do [ "$(cat $p/cgroup 2>/dev/null)" = "$own" ] && echo ${p#/proc/}; done; echo --; ps -o pid,stat,args"#;
        let out = String::from_utf8_lossy(&docker(&["exec", container, "sh", "-c", script]).stdout).into_owned();
        let Some((pids, ps)) = out.split_once("--\n") else { return out };
        let pids: Vec<&str> = pids.lines().collect();
        let mut lines = ps.lines();
        let mut kept: Vec<&str> = lines.next().into_iter().collect();
        kept.extend(lines.filter(|l| l.split_whitespace().next().is_some_and(|p| pids.contains(&p))));
        kept.join("\n") + "\n"
    }

    /// The state letter (`S`, `R`, `T`…) of the first process in the container
    /// whose command line contains `needle`.
    pub fn state_of(&self, container: &str, needle: &str) -> Option<char> {
        let ps = self.ps(container);
        let line = ps.lines().skip(1).find(|l| l.contains(needle))?;
        line.split_whitespace().nth(1)?.chars().next()
    }

    /// Wait until a process named `name` runs in this mount's container;
    /// returns the container's id.
    pub fn wait_running(&self, name: &str) -> String {
        let mut found = None;
        let ok = eventually(Duration::from_secs(20), || {
            found = self.containers().first().filter(|c| self.ps(c).contains(name)).cloned();
            found.is_some()
        });
        assert!(ok, "{name} never ran in a container of this mount:\n{}", self.log_text());
        found.unwrap()
    }

    /// A host shell command with `$M` set to the mountpoint, run in the work dir.
    pub fn sh(&self, script: &str) -> Output {
        self.sh_cmd(script).output().expect("run sh")
    }

    pub fn sh_cmd(&self, script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script).env("M", &self.mnt).current_dir(&self.work);
        c
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let ids: Vec<String> = self.labelled().into_iter().map(|(id, ..)| id).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
        if self.mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("kept {} for inspection; daemon log:\n{}", self.root.display(), self.log_text());
        }
    }
}

/// Wait until `f` holds, up to `limit`.
/// Start a shim with `stdin`, its stdout and stderr piped, and wait for
/// its first line, which must be `ready`.
pub fn spawn_until_ready(m: &TestMount, cmd: &str, args: &[&str], stdin: Stdio) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(m.shim(cmd));
    command.args(args).current_dir(&m.work).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
    // The caller's signals at their defaults, however the suite was started:
    // a background job's INT and QUIT are ignored, and a caller that ignores
    // a signal passes that on to its tool, as a native one would.
    // SAFETY: signal(2) is async-signal-safe, and only this child's
    // dispositions change.
    unsafe {
        command.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        })
    };
    let mut child = command.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "{}", m.log_text());
    (child, out)
}

pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit status as a shell reports it: code, or 128 + signal.
pub fn shell_status(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status.code().unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

static TMUX_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A real terminal: a tmux server of its own (own socket), one window with
/// an interactive bash in the mount's work dir, `$M` set to the mountpoint.
pub struct Tmux {
    socket: String,
    pub before: PathBuf,
    work: PathBuf,
}

impl Tmux {
    /// `run_as`: prefix such as `setpriv --reuid=65534 …` to make the
    /// terminal's user someone other than root.
    pub fn new(m: &TestMount, run_as: &str) -> Tmux {
        let socket = format!("odfs-test-{}-{}", std::process::id(), TMUX_SEQ.fetch_add(1, Ordering::SeqCst));
        let shell = format!(
            "cd {work} && exec env -i TERM=xterm-256color HOME=/tmp LANG=C PATH=/usr/bin:/bin M={mnt} PS1='term$ ' {run_as} bash --norc --noprofile -i",
            work = m.work.display(),
            mnt = m.mnt.display()
        );
        let ok = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "100", "-y", "30", "-s", "t", &shell])
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux did not start");
        let t = Tmux { socket, before: m.work.join(".stty-before"), work: m.work.clone() };
        assert!(t.wait_for("term$", Duration::from_secs(10)), "no prompt:\n{}", t.screen());
        // The terminal's settings before any tool ran, to compare after each.
        t.line(&format!("stty -a > {}", t.before.display()));
        assert!(eventually(Duration::from_secs(5), || t.before.exists()));
        t
    }

    pub fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("run tmux")
    }

    /// Type keys (tmux key names: `C-c`, `Escape`, `Enter`…).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Type text literally.
    pub fn text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
    }

    /// Type a line literally, then Enter.
    pub fn line(&self, text: &str) {
        self.text(text);
        self.keys(&["Enter"]);
    }

    pub fn screen(&self) -> String {
        stdout(&self.tmux(&["capture-pane", "-p", "-t", "t"]))
    }

    pub fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        eventually(limit, || self.screen().contains(needle))
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        self.tmux(&["resize-window", "-t", "t", "-x", &cols.to_string(), "-y", &rows.to_string()]);
    }

    /// Wait until the shell prompt is back on the last line, as a person
    /// would before typing: keys typed while a tool still owns the terminal
    /// go to that tool.
    pub fn wait_prompt(&self) {
        let back = eventually(Duration::from_secs(20), || {
            self.screen().lines().rev().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_end() == "term$")
        });
        assert!(back, "the prompt did not come back:\n{}", self.screen());
    }

    /// Run a shell line at the prompt and wait for the marker it prints. The
    /// marker must not appear in the line itself (compute it: `echo x-$((1+1))`).
    pub fn run(&self, text: &str, marker: &str) {
        self.wait_prompt();
        self.line(text);
        assert!(self.wait_for(marker, Duration::from_secs(20)), "never saw {marker:?}:\n{}", self.screen());
    }

    /// The terminal's settings are exactly what they were before (its size
    /// is the window's, not a setting, and tests change it).
    pub fn assert_sane(&self) {
        let settings = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap();
            text.lines().skip(1).collect::<Vec<_>>().join("\n")
        };
        let after = self.work.join(format!(".stty-after-{}", TMUX_SEQ.fetch_add(1, Ordering::SeqCst)));
        self.wait_prompt();
        self.line(&format!("stty -a > {}", after.display()));
        assert!(eventually(Duration::from_secs(5), || std::fs::metadata(&after).is_ok_and(|m| m.len() > 0)));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(settings(&self.before), settings(&after), "terminal settings changed");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("terminal at failure:\n{}", self.screen());
        }
        self.tmux(&["kill-server"]);
    }
}

static ENGINE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A Docker engine of its own (own data root, exec root, socket and
/// bridge), for tests that stop, freeze or restart the engine without
/// touching the machine's. It holds the busybox test image. Stopped, and
/// its files deleted, on drop.
pub struct TestEngine {
    pub dir: PathBuf,
    /// `unix://…` for DOCKER_HOST.
    pub host: String,
    /// `tcp://127.0.0.1:PORT` with TLS client certificates in `certs`, when
    /// started with [`TestEngine::start_remote`].
    pub tcp: Option<String>,
    pub certs: PathBuf,
    bridge: String,
    child: Option<Child>,
}

/// Client and server certificates for 127.0.0.1 (scripts/remote-engine).
fn make_certs(dir: &Path) {
    let o = Command::new(manifest().join("scripts/remote-engine")).arg("certs").arg(dir).output().unwrap();
    assert!(o.status.success(), "certificates: {}", stderr(&o));
}

impl TestEngine {
    /// An engine reached over TCP with TLS client certificates, which odfs
    /// treats as remote: no host path, no fd crosses to it.
    pub fn start_remote() -> TestEngine {
        Self::launch(true)
    }

    pub fn start() -> TestEngine {
        Self::launch(false)
    }

    fn launch(remote: bool) -> TestEngine {
        prepare();
        let seq = ENGINE_SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/var/lib/odfs-test-engine-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host = format!("unix://{}", dir.join("docker.sock").display());
        // A bridge of its own: with `--bridge=none` dockerd deletes docker0,
        // the machine engine's bridge.
        let bridge = format!("odfs{}b{seq}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        let o = Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]).output().unwrap();
        assert!(o.status.success(), "ip link add: {}", stderr(&o));
        let certs = dir.join("certs");
        let tcp = remote.then(|| {
            make_certs(&certs);
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            format!("tcp://127.0.0.1:{port}")
        });
        let mut e = TestEngine { dir, host, tcp, certs, bridge, child: None };
        e.run();
        let save = Command::new("docker").args(["save", TEST_IMAGE]).stdout(Stdio::piped()).spawn().unwrap();
        let load = Command::new("docker").args(["-H", &e.host, "load", "-q"]).stdin(save.stdout.unwrap()).output().unwrap();
        assert!(load.status.success(), "load: {}", stderr(&load));
        e
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .args(["-H", &self.host, "--bridge", &self.bridge, "--iptables=false", "--ip6tables=false"])
            .args(self.tcp.iter().flat_map(|t| {
                let c = |f: &str| self.certs.join(f).display().to_string();
                ["-H".to_string(), t.clone(), "--tlsverify".into(), "--tlscacert".into(), c("ca.pem"), "--tlscert".into(), c("server-cert.pem"), "--tlskey".into(), c("server-key.pem")]
            }))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        self.child = Some(child);
        let up = eventually(Duration::from_secs(30), || self.docker(&["info"]).status.success());
        assert!(up, "test engine did not start: {}", std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default());
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker").args(["-H", &self.host]).args(args).output().unwrap()
    }

    /// A mount whose daemon uses this engine as a remote one (TLS from
    /// Docker's variables, as a user would set them).
    pub fn remote_mount(&self, files: &[(&str, &str)]) -> TestMount {
        let tcp = self.tcp.as_deref().expect("an engine started with start_remote");
        let certs = self.certs.display().to_string();
        let mut m = TestMount::with_env(files, &["--engine", tcp], &[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", &certs)]);
        m.id = odfs::daemon::mount_id(&m.mnt, true);
        m
    }

    /// Stop the engine as an admin would (its containers stop with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// Freeze (`true`) or thaw the engine's process: its API hangs.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("engine running").id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, if frozen { libc::SIGSTOP } else { libc::SIGCONT }) };
    }

    /// Ids of the containers of a mount on this engine.
    pub fn containers(&self, m: &TestMount) -> Vec<String> {
        let o = self.docker(&["ps", "-q", "--filter", &format!("label=io.odfs.mount={}", m.id)]);
        stdout(&o).lines().map(String::from).collect()
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.freeze(false);
            let o = self.docker(&["ps", "-aq"]);
            for id in stdout(&o).lines() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        self.stop();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An sshd on loopback in front of a test engine, for `ssh://` engines:
/// the daemon's `ssh` (a wrapper first on its PATH adds a client config of
/// the test's own: key and known host) logs in as root, and a forced
/// command in `authorized_keys` runs `docker system dial-stdio` against the
/// engine, as a hardened remote account would. Stopped on drop.
pub struct SshFront {
    /// Put this first on the daemon's PATH.
    pub bin: PathBuf,
    /// `ssh://root@127.0.0.1:PORT`.
    pub url: String,
    child: Child,
}

impl SshFront {
    pub fn start(engine: &TestEngine) -> SshFront {
        let dir = engine.dir.join("ssh");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for key in ["host_key", "client_key"] {
            let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(dir.join(key)).output().unwrap();
            assert!(o.status.success(), "ssh-keygen: {}", stderr(&o));
        }
        let public = |key: &str| std::fs::read_to_string(dir.join(format!("{key}.pub"))).unwrap().trim().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let alias = format!("odfs-test-engine-{port}");
        let d = dir.display();
        let files = [
            ("authorized_keys", format!("command=\"docker -H {} system dial-stdio\",restrict {}\n", engine.host, public("client_key"))),
            ("known_hosts", format!("{alias} {}\n", public("host_key"))),
            (
                "sshd_config",
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
                     PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                ),
            ),
            (
                "ssh_config",
                format!(
                    "Host 127.0.0.1\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n\
                     \x20 HostKeyAlias {alias}\n  StrictHostKeyChecking yes\n"
                ),
            ),
            ("bin/ssh", format!("#!/bin/sh\nexec /usr/bin/ssh -F {d}/ssh_config \"$@\"\n")),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        std::fs::set_permissions(bin.join("ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd").args(["-D", "-e", "-f"]).arg(dir.join("sshd_config")).stderr(log).spawn().expect("sshd");
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "sshd did not start: {}", std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default());
        SshFront { bin, url: format!("ssh://root@127.0.0.1:{port}"), child }
    }

    /// PATH for a daemon that reaches the engine through this sshd.
    pub fn path(&self) -> String {
        format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap_or_default())
    }
}

impl Drop for SshFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
static USER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A real unprivileged user of the machine, made for one test (`useradd`,
/// with a home under /home) and deleted with its home on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    pub fn new() -> TestUser {
        // useradd locks /etc/passwd: one at a time within this process.
        let _guard = USERS.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("odfs-t{}-{}", std::process::id() % 100_000, USER_SEQ.fetch_add(1, Ordering::SeqCst));
        let _ = Command::new("userdel").args(["-r", &name]).output();
        let o = Command::new("useradd").args(["-m", "-U", "-s", "/bin/sh", "-c", "odfs test user", &name]).output().expect("run useradd");
        assert!(o.status.success(), "useradd {name}: {}", stderr(&o));
        let id = |flag: &str| -> u32 { stdout(&Command::new("id").args([flag, &name]).output().unwrap()).trim().parse().unwrap() };
        let (uid, gid) = (id("-u"), id("-g"));
        TestUser { home: PathBuf::from("/home").join(&name), name, uid, gid }
    }

    /// `program` run as this user (its uid, gid and groups).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid)).arg(format!("--regid={}", self.gid)).arg("--init-groups").arg(program);
        c.env("HOME", &self.home).env("USER", &self.name);
        c
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _guard = USERS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).output();
        let _ = Command::new("userdel").args(["-r", &self.name]).output();
    }
}

/// Runs its closure when dropped: clean-up that happens even on failure.
pub struct Defer<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Whether the engine paused `container`, and whether every process of it
/// is frozen (by the engine, or by odfs through its cgroup).
pub fn frozen(container: &str) -> (bool, bool) {
    let out = stdout(&docker(&["inspect", "-f", "{{.State.Paused}} {{.State.Pid}} {{.Id}}", container]));
    match out.split_whitespace().collect::<Vec<_>>()[..] {
        [paused, pid, id] => {
            let frozen = pid.parse().is_ok_and(|pid| odfs::backend::freezer::Freezer::of(pid, id).is_ok_and(|f| f.frozen().unwrap_or(false)));
            (paused == "true", frozen)
        }
        _ => (false, false),
    }
}
