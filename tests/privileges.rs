//! No more than the caller's privileges, and no user can stall or break
//! another's tools: each test is an attack by one unprivileged user (made
//! by the test), and asserts the defence. Hostile clients are this test
//! binary itself, run as that user (`helper`, below).

mod common;

use common::*;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use odfs::protocol::{self, ExecRequest, Request, Response, PROTOCOL_VERSION};

const CATALOG: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["cat", "sleep", "true", "sh"]

[image.suid]
ref = "odfs-test/setuid:latest"
network = "none"
commands = ["euid"]
"#;

/// An image with a setuid-root program that prints its effective uid.
const SETUID_IMAGE: &str = "odfs-test/setuid:latest";

fn setuid_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = std::env::temp_dir().join(format!("odfs-test-setuid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("euid.c"), "#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"%d\\n\",(int)geteuid());return 0;}\n").unwrap();
        let o = Command::new("gcc").args(["-static", "-O2", "-o"]).arg(dir.join("euid")).arg(dir.join("euid.c")).output().unwrap();
        assert!(o.status.success(), "gcc: {}", stderr(&o));
        std::fs::write(dir.join("Dockerfile"), format!("FROM {TEST_IMAGE}\nCOPY euid /bin/euid\nRUN chmod 4755 /bin/euid\n")).unwrap();
        let o = docker(&["build", "-q", "-t", SETUID_IMAGE, dir.to_str().unwrap()]);
        assert!(o.status.success(), "docker build: {}", stderr(&o));
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A group made for one test, deleted on drop. Named per test: tests run
/// side by side, and one that made the group again would give it a gid
/// another's members lack.
struct TestGroup(String);

static GROUP_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl TestGroup {
    fn new() -> TestGroup {
        let name = format!("odfs-g{}-{}", std::process::id() % 100_000, GROUP_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        let _ = Command::new("groupdel").arg(&name).output();
        let o = Command::new("groupadd").arg(&name).output().unwrap();
        assert!(o.status.success(), "groupadd: {}", stderr(&o));
        TestGroup(name)
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.0).output();
    }
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(field)).map(str::trim).unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn a_caller_s_tool_holds_no_privilege_and_setuid_programs_give_none() {
    setuid_image();
    let m = TestMount::new(CATALOG);
    let u = TestUser::new();
    let o = u.cmd(m.shim("cat")).arg("/proc/self/status").current_dir("/tmp").output().unwrap();
    let status = stdout(&o);
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{}", stderr(&o));
    for field in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(&status, field), "0000000000000000", "{field}");
    }
    let o = u.cmd(m.shim("euid")).current_dir("/tmp").output().unwrap();
    assert_eq!(stdout(&o).trim(), u.uid.to_string(), "a setuid-root program ran as root: {}", stderr(&o));
    // Root calls as root: the engine's root set, and still no_new_privs.
    let o = Command::new(m.shim("cat")).arg("/proc/self/status").current_dir("/tmp").output().unwrap();
    let status = stdout(&o);
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&status, "CapBnd:"), "00000000a80425fb", "{status}");
}

#[test]
fn a_granted_capability_is_held_as_the_caller_who_writes_only_where_they_may() {
    let group = TestGroup::new();
    let m = TestMount::new(&format!(
        r#"
[image.netcap]
ref = "odfs/netcap:latest"
network = "host"
cap_add = ["NET_RAW", "NET_ADMIN"]
allow_groups = ["{}"]
commands = ["tcpdump", "ping"]

[command.netcap-cat]
image = "netcap"
path = "/bin/cat"
"#,
        group.0
    ));
    let member = TestUser::new();
    let o = Command::new("usermod").args(["-aG", &group.0, &member.name]).output().unwrap();
    assert!(o.status.success(), "usermod: {}", stderr(&o));
    let o = member.cmd(m.shim("netcap-cat")).arg("/proc/self/status").current_dir("/tmp").output().unwrap();
    let status = stdout(&o);
    // NET_ADMIN (12) and NET_RAW (13), nothing else, ambient under the caller's uid.
    for field in ["CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(&status, field), "0000000000003000", "{field}: {}", stderr(&o));
    }
    assert_eq!(status_field(&status, "Uid:").split_whitespace().next(), Some(member.uid.to_string().as_str()));
    // It captures...
    let script = format!(
        r#"( sleep 2; "{ping}" -c 4 -i 0.3 127.0.0.1 >/dev/null ) & timeout 30 "{tcpdump}" -n -c 2 -i lo icmp 2>/dev/null"#,
        ping = m.shim("ping").display(),
        tcpdump = m.shim("tcpdump").display()
    );
    let o = member.cmd("/bin/sh").args(["-c", &script]).current_dir("/tmp").output().unwrap();
    assert_eq!(stdout(&o).lines().count(), 2, "{}{}", stdout(&o), stderr(&o));
    // ...but writes only where the member may.
    let target = PathBuf::from(format!("/root/odfs-test-capture-{}", std::process::id()));
    let o = member.cmd(m.shim("tcpdump")).args(["-i", "lo", "-c", "1", "-w"]).arg(&target).current_dir("/tmp").output().unwrap();
    assert!(!o.status.success(), "tcpdump wrote into /root");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    assert!(!target.exists());
}

#[test]
fn a_non_member_starts_no_container_of_a_gated_image_by_prewarm_or_by_opening_its_shim() {
    let group = TestGroup::new();
    let m = TestMount::new(&format!(
        "[image.netcap]\nref = \"odfs/netcap:latest\"\nnetwork = \"host\"\ncap_add = [\"NET_RAW\", \"NET_ADMIN\"]\nallow_groups = [\"{}\"]\ncommands = [\"tcpdump\"]\n",
        group.0
    ));
    let (outsider, member) = (TestUser::new(), TestUser::new());
    let o = Command::new("usermod").args(["-aG", &group.0, &member.name]).output().unwrap();
    assert!(o.status.success(), "usermod: {}", stderr(&o));
    let odfs = |u: &TestUser, args: &[&str]| u.cmd(env!("CARGO_BIN_EXE_odfs")).args(args).arg("--socket").arg(&m.socket).output().unwrap();
    // Held open by a process that lives on, as an exec's is, so its groups
    // can be read: what decides is the group, not the process being gone.
    let hold_open = |u: &TestUser| {
        let script = format!("exec 3< {}; sleep 3", m.shim("tcpdump").display());
        u.cmd("sh").args(["-c", &script]).current_dir("/tmp").output().unwrap()
    };

    let o = odfs(&outsider, &["prewarm", "tcpdump"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("odfs: prewarm tcpdump: permission denied (allowed groups: {}); only members of those groups may start its container\n", group.0)
    );
    // Reading the shim is no use of the image: allowed, and nothing starts.
    let o = outsider.cmd("cat").arg(m.shim("tcpdump")).output().unwrap();
    assert!(o.status.success() && stdout(&o).starts_with("#!"), "{}", stderr(&o));
    assert!(hold_open(&outsider).status.success());
    let o = outsider.cmd(m.shim("tcpdump")).arg("--version").current_dir("/tmp").output().unwrap();
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    std::thread::sleep(Duration::from_secs(2));
    assert!(m.containers().is_empty(), "a non-member started {:?}:\n{}", m.containers(), m.log_text());
    assert!(m.log_text().contains("no prewarm on open"), "{}", m.log_text());

    // A member (by a supplementary group) warms it by opening the shim…
    assert!(hold_open(&member).status.success());
    assert!(eventually(Duration::from_secs(30), || m.containers().len() == 1), "the member's open warmed nothing:\n{}", m.log_text());
    // …and by prewarm.
    assert!(m.odfs(&["stop", "--all"]).status.success());
    assert!(eventually(Duration::from_secs(10), || m.containers().is_empty()));
    let o = odfs(&member, &["prewarm", "tcpdump"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(m.containers().len(), 1);
}

#[test]
fn another_user_cannot_read_the_history_of_calls() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut m = TestMount::new(CATALOG);
    let user = TestUser::new();
    let o = user.cmd(m.shim("true")).current_dir("/tmp").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let files = ["odfs.db", "odfs.db-wal", "odfs.db-shm"];
    let private = |m: &TestMount| {
        for f in files {
            let path = m.state.join(f);
            let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0), "{f}");
            let o = user.cmd("cat").arg(&path).output().unwrap();
            assert!(!o.status.success() && stderr(&o).contains("Permission denied"), "{f} read by {}: {}", user.name, stderr(&o));
        }
    };
    private(&m);
    // As a daemon of an older version left them: made private at the start.
    m.stop();
    for f in files {
        let _ = std::fs::set_permissions(m.state.join(f), std::fs::Permissions::from_mode(0o644));
    }
    m.start(&[]);
    private(&m);
    // A state directory the daemon makes can be passed through (its
    // socket may be in it) but not listed.
    m.stop();
    std::fs::remove_dir_all(&m.state).unwrap();
    m.start(&[]);
    assert_eq!(std::fs::metadata(&m.state).unwrap().mode() & 0o777, 0o711);
    let o = user.cmd("ls").arg(&m.state).output().unwrap();
    assert!(!o.status.success(), "{} listed the state directory: {}", user.name, stdout(&o));
    let o = user.cmd(m.shim("true")).current_dir("/tmp").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    private(&m);
}

/// Run this test binary's `helper` as `user`, acting out `mode` against `socket`.
fn hostile(user: &TestUser, mode: &str, socket: &Path) -> std::process::Child {
    user.cmd(std::env::current_exe().unwrap())
        .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
        .env("ODFS_HOSTILE", mode)
        .env("ODFS_HOSTILE_SOCKET", socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What the hostile client answered (its `ANSWER` line).
fn answer(o: &std::process::Output) -> String {
    stdout(o).lines().find_map(|l| l.strip_prefix("ANSWER ")).unwrap_or_default().to_string()
}

/// Not a test: the hostile client, when `hostile` runs it.
#[test]
fn helper() {
    let (Ok(mode), Ok(socket)) = (std::env::var("ODFS_HOSTILE"), std::env::var("ODFS_HOSTILE_SOCKET")) else { return };
    let parts: Vec<&str> = mode.split(':').collect();
    let n = |i: usize| parts[i].parse::<usize>().unwrap();
    let exec = |command: String, args: Vec<Vec<u8>>| {
        Request::Exec(ExecRequest { version: PROTOCOL_VERSION, command, args, env: vec![], passed: Default::default(), })
    };
    match parts[0] {
        // N connections that say nothing, held SECS seconds.
        "idle" => {
            let held: Vec<UnixStream> = (0..n(1)).filter_map(|_| UnixStream::connect(&socket).ok()).collect();
            println!("\nANSWER held {}", held.len());
            std::thread::sleep(Duration::from_secs(n(2) as u64));
        }
        // N connections, each a frame header and K fds, and no body.
        "fds" => {
            let files: Vec<std::fs::File> = (0..n(2)).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
            let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
            let mut held = vec![];
            for _ in 0..n(1) {
                let Ok(s) = UnixStream::connect(&socket) else { continue };
                let header = 1000u32.to_le_bytes();
                let rights = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
                let _ = nix::sys::socket::sendmsg::<()>(s.as_raw_fd(), &[std::io::IoSlice::new(&header)], &rights, nix::sys::socket::MsgFlags::empty(), None);
                held.push(s);
            }
            println!("\nANSWER held {}", held.len());
            std::thread::sleep(Duration::from_secs(n(3) as u64));
        }
        // One exec request just under the frame limit; prints the answer.
        "oversized" => {
            // Fits the control socket's frame; the spawn request the daemon
            // makes of it (with the program, cwd, identity) does not.
            let arg = vec![b'x'; protocol::MAX_FRAME - 40];
            let s = UnixStream::connect(&socket).unwrap();
            protocol::send(&s, &exec("sleep".into(), vec![arg]), &[]).unwrap();
            match protocol::recv::<Response>(&s).unwrap() {
                Some((Response::Error(odfs::protocol::Failure { message, exit_code }), _)) => println!("\nANSWER error {exit_code}: {message}"),
                other => println!("\nANSWER {other:?}"),
            }
        }
        // N requests for commands with huge names (refused).
        "names" => {
            for _ in 0..n(1) {
                let s = UnixStream::connect(&socket).unwrap();
                protocol::send(&s, &exec("x".repeat(1 << 20), vec![]), &[]).unwrap();
                let _ = protocol::recv::<Response>(&s);
            }
            println!("\nANSWER sent");
        }
        other => panic!("unknown mode {other}"),
    }
    std::io::stdout().flush().unwrap();
}

#[test]
fn an_oversized_request_is_refused_to_its_caller_alone() {
    let m = TestMount::new(CATALOG);
    let (victim, attacker) = (TestUser::new(), TestUser::new());
    let mut tool = victim.cmd(m.shim("sleep")).arg("60").current_dir("/tmp").spawn().unwrap();
    let container = m.wait_running("sleep");
    let o = hostile(&attacker, "oversized", &m.socket).wait_with_output().unwrap();
    let answer = answer(&o);
    assert!(answer.starts_with("error 126: the request cannot be passed to the tool"), "{answer}{}{}", stdout(&o), stderr(&o));
    std::thread::sleep(Duration::from_millis(500));
    assert!(tool.try_wait().unwrap().is_none(), "the victim's tool died:\n{}", m.log_text());
    assert_eq!(m.containers(), vec![container.clone()], "the shared container was replaced");
    assert!(m.ps(&container).contains("sleep 60"));
    tool.kill().unwrap();
    tool.wait().unwrap();
}

#[test]
fn requests_at_every_size_around_the_frame_limit_get_one_answer_at_once() {
    use std::os::unix::process::CommandExt;
    let m = TestMount::new(CATALOG);
    let (victim, caller) = (TestUser::new(), TestUser::new());
    let mut tool = victim.cmd(m.shim("sleep")).arg("60").current_dir("/tmp").spawn().unwrap();
    let container = m.wait_running("sleep");
    let limit = protocol::MAX_FRAME;
    let (mut ran, mut too_long, mut refused) = (0, 0, 0);
    // Arguments whose size takes the request from well under the limit to
    // past it (the rest of the request is a few hundred bytes), in pieces
    // of 64 KiB (the kernel's limit for one argument is 128 KiB).
    for size in (limit - 6144..=limit + 2048).step_by(128) {
        let mut call = caller.cmd(m.shim("true"));
        let piece = 64 << 10;
        call.args((0..size.div_ceil(piece)).map(|i| "x".repeat(piece.min(size - i * piece)))).env_clear().env("PATH", "/usr/bin:/bin").current_dir("/tmp").stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: setrlimit only, between fork and exec: room for a 4 MiB
        // argument (a quarter of the stack limit), as `ulimit -s 65536` gives.
        unsafe {
            call.pre_exec(|| {
                let stack = libc::rlimit { rlim_cur: 64 << 20, rlim_max: libc::RLIM_INFINITY };
                libc::setrlimit(libc::RLIMIT_STACK, &stack);
                Ok(())
            })
        };
        let mut child = call.spawn().unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(20), "a request of {size} bytes of argument got no answer:\n{}", m.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        match o.status.code() {
            Some(0) => ran += 1,
            Some(126) if err.lines().count() == 1 && err.contains("argument list too long") => too_long += 1,
            // The daemon's request to the agent too large, or the tool's
            // exec in the container (whose stack limit is the engine's).
            Some(126) if err.lines().count() == 1 && (err.contains("cannot be passed to the tool") || err.contains("Argument list too long")) => refused += 1,
            other => panic!("{size} bytes of argument: {other:?}: {err}"),
        }
    }
    // The sizes straddle the launcher's limit: some went, some were too long to send.
    assert!(refused > 0 && too_long > 0, "ran {ran}, refused on the way {refused}, too long to send {too_long}");
    assert!(tool.try_wait().unwrap().is_none(), "the victim's tool died:\n{}", m.log_text());
    assert_eq!(m.containers(), vec![container], "the shared container was replaced");
    tool.kill().unwrap();
    tool.wait().unwrap();
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn idle_and_fd_holding_connections_of_one_user_do_not_stall_another() {
    let m = TestMount::new(CATALOG);
    let (victim, attacker) = (TestUser::new(), TestUser::new());
    assert!(victim.cmd(m.shim("true")).current_dir("/tmp").status().unwrap().success());
    let before = open_fds(m.daemon_pid());
    let idle = hostile(&attacker, "idle:600:20", &m.socket);
    let fds = hostile(&attacker, "fds:30:40:20", &m.socket);
    std::thread::sleep(Duration::from_secs(1));
    let mut slowest = Duration::ZERO;
    let mut most_fds = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let o = victim.cmd(m.shim("true")).current_dir("/tmp").output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        slowest = slowest.max(t.elapsed());
        most_fds = most_fds.max(open_fds(m.daemon_pid()));
    }
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?} under the flood");
    // The daemon holds at most its per-user places' worth of the flood.
    assert!(most_fds < before + 16 * 41 + 64, "the daemon held {most_fds} fds (before: {before})");
    for mut c in [idle, fds] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(eventually(Duration::from_secs(5), || open_fds(m.daemon_pid()) <= before + 8), "fds left: {}", open_fds(m.daemon_pid()));
}

#[test]
fn refused_requests_keep_the_history_small() {
    let m = TestMount::new(CATALOG);
    let attacker = TestUser::new();
    let o = hostile(&attacker, "names:200", &m.socket).wait_with_output().unwrap();
    assert_eq!(answer(&o), "sent", "{}{}", stdout(&o), stderr(&o));
    // Every refusal is recorded (the writer is a thread of its own: wait
    // for it), under a bounded name.
    let db = rusqlite::Connection::open(m.state.join("odfs.db")).unwrap();
    let recorded = || -> i64 { db.query_row("SELECT count(*) FROM invocations WHERE command = '(invalid name)'", [], |r| r.get(0)).unwrap_or(0) };
    assert!(eventually(Duration::from_secs(10), || recorded() >= 200), "{} of 200 refusals recorded", recorded());
    let longest: i64 = db.query_row("SELECT max(length(command) + length(coalesce(outcome, ''))) FROM invocations", [], |r| r.get(0)).unwrap();
    assert!(longest < 1000, "a history row holds {longest} characters");
    let size: u64 = ["odfs.db", "odfs.db-wal"].iter().filter_map(|f| std::fs::metadata(m.state.join(f)).ok()).map(|md| md.len()).sum();
    assert!(size < 4 << 20, "the history grew to {size} bytes");
}

#[test]
fn a_scan_exports_nothing_others_can_read_and_other_users_learn_only_the_catalog_s_images() {
    let m = TestMount::new(CATALOG);
    let user = TestUser::new();
    // Root's `provides` scans the machine's images (each an export).
    let mut provides = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["provides", "sh", "--socket"]).arg(&m.socket).stdout(Stdio::piped()).spawn().unwrap();
    let mut seen = vec![];
    while provides.try_wait().unwrap().is_none() {
        for e in std::fs::read_dir("/tmp").unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("odfs-scan") {
                seen.push(e.file_name());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(seen.is_empty(), "exports visible in /tmp: {seen:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(provides.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains(TEST_IMAGE) && out.lines().any(|l| !l.starts_with("odfs-test/")), "{out}");
    // Another user scans nothing and hears only of the catalog's images,
    // never of the machine's others (which may be someone's own).
    for ask in ["provides", "hint"] {
        let o = user.cmd(env!("CARGO_BIN_EXE_odfs")).args([ask, "sh", "--socket"]).arg(&m.socket).output().unwrap();
        let text = stdout(&o) + &stderr(&o);
        assert!(text.lines().all(|l| !l.contains("odfs/")), "{ask}: {text}");
    }
    let o = user.cmd(env!("CARGO_BIN_EXE_odfs")).args(["provides", "sh", "--socket"]).arg(&m.socket).output().unwrap();
    assert!(stdout(&o).lines().any(|l| l.starts_with(TEST_IMAGE)), "{}{}", stdout(&o), stderr(&o));
}
