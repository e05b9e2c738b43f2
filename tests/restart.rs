//! Restarts no caller notices: a new daemon takes the live mount, the
//! control socket and the containers over from the running one (`odfs
//! mount` again, or `odfs restart`), while callers keep calling.

mod common;

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CATALOG: &str = "[image.bb]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\ncommands = [\"expr\", \"sh\"]\n";

/// The pid of the daemon that answers the control socket now.
fn serving_pid(m: &TestMount) -> i32 {
    let conn = UnixStream::connect(&m.socket).expect("the control socket answers");
    nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials).unwrap().pid()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists() && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Stops whichever daemon serves at the end (one `odfs restart` started
/// is not the test's child), then lets the mount's own cleanup run.
struct LastDaemon(std::path::PathBuf);

impl Drop for LastDaemon {
    fn drop(&mut self) {
        if let Ok(conn) = UnixStream::connect(&self.0) {
            if let Ok(cred) = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials) {
                // SAFETY: signalling the daemon this test started.
                unsafe { libc::kill(cred.pid(), libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(15);
                while alive(cred.pid()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[test]
fn five_takeovers_under_eight_callers_lose_no_call_and_start_no_container() {
    let mut m = TestMount::new(CATALOG);
    let last = LastDaemon(m.socket.clone());
    // A running tool that outlives every takeover keeps its output and status.
    let (sh, work) = (m.shim("sh"), m.work.clone());
    let long = std::thread::spawn(move || Command::new(sh).args(["-c", "sleep 4; echo still here; exit 7"]).current_dir(work).output());
    let o = Command::new(m.shim("expr")).args(["1", "+", "1"]).output().unwrap();
    assert_eq!(stdout(&o), "2\n");
    let before = m.containers();
    assert_eq!(before.len(), 1);

    const CALLERS: usize = 8;
    const CALLS: usize = 5000;
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let callers: Vec<_> = (0..CALLERS)
        .map(|t| {
            let (shim, done, failures) = (m.shim("expr"), done.clone(), failures.clone());
            std::thread::spawn(move || {
                for i in 0..CALLS / CALLERS {
                    // `expr` exits 1 when the result is 0: both statuses are checked.
                    let (a, b) = (i as i64, if i % 5 == 0 { -(i as i64) } else { t as i64 });
                    let o = Command::new(&shim).args([a.to_string(), "+".into(), b.to_string()]).output().unwrap();
                    let want = (format!("{}\n", a + b), if a + b == 0 { 1 } else { 0 });
                    if (stdout(&o), o.status.code().unwrap_or(-1)) != want {
                        failures.lock().unwrap().push(format!("{a} + {b}: {:?} {} {}", o.status, stdout(&o), stderr(&o)));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // Five takeovers spread over the calls: three by starting `odfs mount`
    // again, two by `odfs restart`.
    let mut pids = vec![serving_pid(&m)];
    for n in 1..=5 {
        while done.load(Ordering::SeqCst) < n * CALLS / 6 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let old = serving_pid(&m);
        if n % 2 == 1 {
            m.launch(&[]);
        } else {
            let o = m.odfs(&["restart"]);
            assert!(o.status.success(), "odfs restart: {}{}", stdout(&o), stderr(&o));
            assert!(stdout(&o).contains("takes the mount over"), "{}", stdout(&o));
        }
        assert!(eventually(Duration::from_secs(30), || !alive(old)), "the old daemon {old} did not hand over:\n{}", m.log_text());
        assert!(m.mounted(), "the mount must never go");
        pids.push(serving_pid(&m));
    }
    for c in callers {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} failed calls, first: {:?}\n{}", failures.len(), failures.first(), m.log_text());
    assert_eq!(done.load(Ordering::SeqCst), CALLS);
    pids.dedup();
    assert_eq!(pids.len(), 6, "six daemons in turn: {pids:?}");

    let long = long.join().unwrap().unwrap();
    assert_eq!((stdout(&long), long.status.code()), ("still here\n".to_string(), Some(7)), "{}", stderr(&long));
    let after = m.containers();
    assert!(after.len() <= 2 && after.contains(&before[0]), "at most one extra container: {before:?} then {after:?}");
    let log = m.log_text();
    assert_eq!(log.matches("handed over: the new daemon serves the mount").count(), 5, "{log}");
    assert!(!log.contains("cleared a stale mount"), "{log}");
    drop(last);
}

#[test]
fn only_root_may_restart_the_daemon_and_a_refused_takeover_leaves_it_serving() {
    let m = TestMount::new(CATALOG);
    let _last = LastDaemon(m.socket.clone());
    let pid = serving_pid(&m);
    let o = as_nobody(env!("CARGO_BIN_EXE_odfs")).args(["restart", "--socket"]).arg(&m.socket).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("root"), "{}", stderr(&o));
    // Nobody can reach the takeover socket at all.
    let sock = m.state.join("run/takeover.sock");
    assert!(sock.exists());
    let o = as_nobody("sh").arg("-c").arg(format!("exec 3<>/dev/null; test -w {} && echo writable", sock.display())).output().unwrap();
    assert_eq!(stdout(&o), "");
    // A successor for another mountpoint is refused; the daemon serves on.
    let other = m.root.join("other");
    let o = Command::new(env!("CARGO_BIN_EXE_odfs"))
        .args(["mount", "--catalog"])
        .arg(&m.catalog)
        .arg("--state")
        .arg(&m.state)
        .arg("--agent")
        .arg(agent())
        .arg("--launcher")
        .arg(launcher())
        .arg(&other)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("will not hand over"), "{}", stderr(&o));
    assert_eq!(serving_pid(&m), pid);
    let o = Command::new(m.shim("expr")).args(["2", "+", "2"]).output().unwrap();
    assert_eq!(stdout(&o), "4\n");
}

#[test]
fn a_frozen_container_handed_over_is_thawed_by_the_successor_not_replaced() {
    let m = TestMount::new(&CATALOG.replace("commands", "pause_after = \"1s\"\nkeep_alive = \"1h\"\ncommands"));
    let last = LastDaemon(m.socket.clone());
    let o = Command::new(m.shim("expr")).args(["1", "+", "1"]).output().unwrap();
    assert_eq!(stdout(&o), "2\n");
    let c = m.containers()[0].clone();
    assert!(eventually(Duration::from_secs(10), || frozen(&c) == (false, true)), "never frozen");
    let old = serving_pid(&m);
    let o = m.odfs(&["restart"]);
    assert!(o.status.success(), "odfs restart: {}{}", stdout(&o), stderr(&o));
    assert!(eventually(Duration::from_secs(30), || !alive(old)), "the old daemon did not hand over:\n{}", m.log_text());
    let o = Command::new(m.shim("expr")).args(["2", "+", "2"]).output().unwrap();
    assert_eq!(stdout(&o), "4\n", "{}", stderr(&o));
    assert_eq!(m.containers(), vec![c.clone()], "replaced instead of thawed:\n{}", m.log_text());
    assert_eq!(frozen(&c), (false, false));
    drop(last);
}
