//! One user against the others: an unprivileged user who floods calls
//! with many open fds, stops the agent's children before their exec, or
//! calls from a file system that stops answering holds only its own share
//! of the agent and the daemon. Another user's calls in the same container
//! go on, its pipes end, and the container is never replaced.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long each attack lasts.
const ATTACK: Duration = Duration::from_secs(20);

/// An attacker's flood, as a bash script run as that user: 200 open files
/// (fds 10–209), then `calls` 8 at a time for as long as `ATTACK` lasts
/// (each given up after `limit` seconds: a call it stopped after its exec
/// is its own and would never end), then `after`.
fn flood(calls: &str, limit: u32, after: &str) -> String {
    format!(
        r#"for i in $(seq 10 209); do eval "exec $i</dev/null"; done
end=$(( $(date +%s) + {} ))
while [ "$(date +%s)" -lt "$end" ]; do
  for j in 1 2 3 4 5 6 7 8; do timeout -s KILL {limit} bash -c '{calls}' >/dev/null 2>&1 & done
  wait
done
{after}"#,
        ATTACK.as_secs()
    )
}

/// A program of the attacker's: for `seconds`, SIGSTOP the next pids to
/// come, over and over, so that an agent's child is stopped the moment it
/// takes the caller's uid, before its exec (a process of the attacker's
/// own that is not such a child is let go at once); prints how many such
/// children it stopped.
const STOPPER: &str = r#"
import os, signal, sys, time
until, caught = time.time() + float(sys.argv[1]), set()
while time.time() < until:
    base = int(open("/proc/sys/kernel/ns_last_pid").read())
    for _ in range(100):
        for p in range(base + 1, base + 12):
            try:
                os.kill(p, signal.SIGSTOP)
            except OSError:
                continue
            try:
                if open(f"/proc/{p}/comm").read().strip() == "odfs-agent":
                    caught.add(p)
                    continue
            except OSError:
                pass
            try:
                os.kill(p, signal.SIGCONT)
            except OSError:
                pass
print(len(caught))
"#;

/// An attacker's flood from a directory that stops answering, in Python
/// (a shell would itself hang on its working directory): enter DIR, wait
/// for a line on stdin (the file system stops answering then), open 200
/// files, and for SECONDS keep 32 calls in flight (`true`, and `cat` of a
/// file in DIR, which the daemon resolves), each given up after 60 s; then
/// one more call, whose status and message go to TOLD.
const HUNG_FLOOD: &str = r#"
import os, subprocess, sys, time
where, mnt, seconds, told = sys.argv[1:5]
os.chdir(where)
sys.stdin.readline()
files = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
until, running, n = time.time() + float(seconds), [], 0
while time.time() < until:
    for p, t in running:
        if p.poll() is None and time.time() - t > 60:
            p.kill()
    running = [(p, t) for p, t in running if p.poll() is None]
    while len(running) < 32:
        argv = [f"{mnt}/true"] if n % 2 else [f"{mnt}/cat", "./true"]
        n += 1
        p = subprocess.Popen(argv, pass_fds=files, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.append((p, time.time()))
    time.sleep(0.05)
for p, _ in running:
    p.kill()
    p.wait()
last = subprocess.run([f"{mnt}/true"], stderr=subprocess.PIPE, timeout=120)
open(told, "w").write(last.stderr.decode() + f"status {last.returncode}\n")
"#;

/// The victim's call: `echo NAME | cat` through the mount, its output read
/// to the end of the pipe. Returns how long it took, or panics with what
/// went wrong; a pipe that some other process keeps open never ends, so a
/// read that does not end within a minute fails the test.
fn victim_call(m: &TestMount, victim: &TestUser, n: usize) -> Duration {
    let started = Instant::now();
    let mut child = victim
        .cmd("/bin/sh")
        .arg("-c")
        .arg(format!("echo call-{n} | \"$M/cat\""))
        .env("M", &m.mnt)
        .current_dir(&victim.home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "the victim's pipe did not end (call {n}): another process holds it\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = reader.join().unwrap().unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success() && text == format!("call-{n}\n"), "victim call {n}: {status}, {text:?}, {err}");
    started.elapsed()
}

/// The victim calls over and over while `attack` runs; every call must
/// succeed and its pipe end. Returns the slowest call.
fn victim_meanwhile(m: &TestMount, victim: &TestUser, attack: &mut [Child]) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    let deadline = Instant::now() + ATTACK + Duration::from_secs(180);
    while attack.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(Instant::now() < deadline, "the attack did not end");
        slowest = slowest.max(victim_call(m, victim, n));
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(n >= 10, "the victim made only {n} calls during the attack");
    slowest
}

/// Processes of `uid` that are still the agent before their exec.
fn pre_exec_children(uid: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let owner = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
        if comm.trim() == "odfs-agent" && owner == Some(uid) {
            found.push(pid);
        }
    }
    found
}

/// Whether a process is stopped.
fn stopped(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
}

/// What the fds of a process are open on, each once.
fn open_files(pid: i32) -> std::collections::BTreeSet<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Default::default() };
    dir.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).map(|p| p.display().to_string()).collect()
}

/// The open fds and threads of a process.
fn fds_and_threads(pid: i32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    (fds, threads)
}

/// The one container of the mount, warm, and its agent's host pid.
fn warm_container(m: &TestMount, victim: &TestUser) -> (String, i32) {
    victim_call(m, victim, 0);
    let containers = m.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let agent: i32 = agent_proc(&containers[0]).trim_start_matches("/proc/").parse().expect("the test image's agent runs in the host's pid namespace");
    (containers[0].clone(), agent)
}

/// The container was never replaced: the same one runs, and the log never
/// says it was given up.
fn same_container(m: &TestMount, container: &str) {
    assert_eq!(m.containers(), vec![container.to_string()], "the container was replaced:\n{}", m.log_text());
    assert!(!m.log_text().contains("replacing its container"), "{}", m.log_text());
}

#[test]
fn stopping_the_agents_children_while_flooding_with_open_files_reaches_no_other_user() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let (attacker, victim) = (TestUser::new(), TestUser::new());
    let (container, agent) = warm_container(&m, &victim);
    let mut attack = vec![
        attacker.cmd("bash").arg("-c").arg(flood("\"$M/true\"", 10, "")).env("M", &m.mnt).current_dir(&attacker.home).spawn().unwrap(),
        attacker
            .cmd("/usr/bin/python3")
            .args(["-c", STOPPER, &ATTACK.as_secs().to_string()])
            .current_dir(&attacker.home)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ];
    let _end = Defer(|| {
        let _ = Command::new("pkill").args(["-KILL", "-u", &attacker.uid.to_string()]).status();
    });
    let (slowest, most) = {
        std::thread::scope(|s| {
            let peak = s.spawn(|| {
                let mut most = (0, 0);
                let until = Instant::now() + ATTACK;
                while Instant::now() < until {
                    let (fds, threads) = fds_and_threads(agent);
                    most = (most.0.max(fds), most.1.max(threads));
                    // A stopped child holds no fd but its caller's (two
                    // copies of each while it moves them to their numbers):
                    // /dev/null, its stdin, its call's channel and the
                    // agent's pipe for exec errors. The agent's own table
                    // would add every other call's sockets and pipes.
                    for child in pre_exec_children(attacker.uid).into_iter().filter(|&c| stopped(c)) {
                        let held = open_files(child);
                        assert!(held.len() <= 8, "a child of the attacker's holds before its exec: {held:?}");
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                most
            });
            let slowest = victim_meanwhile(&m, &victim, &mut attack);
            (slowest, peak.join().unwrap())
        })
    };
    let mut stopped = String::new();
    attack[1].stdout.take().unwrap().read_to_string(&mut stopped).unwrap();
    let stopped: usize = stopped.trim().parse().unwrap_or_else(|_| panic!("the attacker's stopper did not finish: {stopped:?}"));
    assert!(stopped > 0, "the attack never caught a child before its exec");
    eprintln!("stopped {stopped} children; slowest victim call {slowest:?}; agent at most {} fds, {} threads", most.0, most.1);
    // Bounded: the attacker's places in the agent (16 starts with their
    // copies of 200 fds let go at the clone), not its flood.
    assert!(most.0 < 2_000, "the agent held {} fds", most.0);
    // Every stopped child is ended once its call is given up, and nothing
    // of the attacker's is left before its exec.
    assert!(
        eventually(Duration::from_secs(60), || pre_exec_children(attacker.uid).is_empty()),
        "children of the attacker's are still held before their exec: {:?}",
        pre_exec_children(attacker.uid)
    );
    victim_call(&m, &victim, 9999);
    same_container(&m, &container);
}

#[test]
fn a_working_directory_that_stops_answering_holds_only_its_own_user_s_share() {
    // The file system that will stop answering: another odfs mount (a real
    // FUSE server, open to every user), made before the tested mount's
    // container so that its view holds it. SIGSTOP makes it hang.
    let hung = TestMount::new(BUSYBOX_CATALOG);
    let m = TestMount::new(BUSYBOX_CATALOG);
    let (attacker, victim) = (TestUser::new(), TestUser::new());
    let (container, agent) = warm_container(&m, &victim);
    let hung_pid = hung.daemon_pid();
    let _resume = Defer(|| {
        // SAFETY: signalling a child of this test.
        unsafe { libc::kill(hung_pid, libc::SIGCONT) };
    });
    let daemon = m.daemon_pid();
    let before = (fds_and_threads(daemon), fds_and_threads(agent));
    // The attacker calls from there (its cwd, and a file it names there,
    // which the daemon resolves as root), 32 calls in flight with 200 open
    // files; then once more, to hear what it is told.
    let told = attacker.home.join("told");
    let mut flooder = attacker
        .cmd("/usr/bin/python3")
        .args(["-c", HUNG_FLOOD])
        .args([hung.mnt.as_os_str(), m.mnt.as_os_str(), ATTACK.as_secs().to_string().as_ref(), told.as_os_str()])
        .current_dir(&attacker.home)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let _end = Defer(|| {
        let _ = Command::new("pkill").args(["-KILL", "-u", &attacker.uid.to_string()]).status();
    });
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling a child of this test.
    unsafe { libc::kill(hung_pid, libc::SIGSTOP) };
    std::io::Write::write_all(flooder.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let (slowest, most) = std::thread::scope(|s| {
        let peak = s.spawn(|| {
            let until = Instant::now() + ATTACK;
            let mut most = (0, 0, 0, 0);
            while Instant::now() < until {
                let ((dfds, dthreads), (afds, athreads)) = (fds_and_threads(daemon), fds_and_threads(agent));
                most = (most.0.max(dfds), most.1.max(dthreads), most.2.max(afds), most.3.max(athreads));
                std::thread::sleep(Duration::from_millis(250));
            }
            most
        });
        let mut attack = [flooder];
        let slowest = victim_meanwhile(&m, &victim, &mut attack);
        (slowest, peak.join().unwrap())
    });
    eprintln!("before: daemon {:?}, agent {:?}; during, at most: daemon {} fds {} threads, agent {} fds {} threads; slowest victim call {slowest:?}", before.0, before.1, most.0, most.1, most.2, most.3);
    // The daemon's and the agent's threads held by the attacker's hung
    // paths: at most its 16 places each, whatever it floods.
    assert!(most.1 <= before.0 .1 + 40, "the daemon went from {} to {} threads", before.0 .1, most.1);
    assert!(most.3 <= before.1 .1 + 40, "the agent went from {} to {} threads", before.1 .1, most.3);
    assert!(most.0 < 5_000 && most.2 < 5_000, "fds: daemon {}, agent {}", most.0, most.2);
    // Both of the attacker's ways were tried: the daemon's look at a named
    // path cut off, and the agent's child held in its chdir until the call
    // was given up (what each call was told is in the history).
    let outcomes = Command::new("sqlite3")
        .arg(m.state.join("odfs.db"))
        .arg(format!("select outcome, count(*) from invocations where uid = {} group by outcome", attacker.uid))
        .output()
        .unwrap();
    let outcomes = stdout(&outcomes);
    eprintln!("the attacker's calls:\n{outcomes}");
    assert!(outcomes.contains("could not be read within 10s"), "{outcomes}");
    assert!(outcomes.contains("did not start within 30s") || outcomes.contains("held before its exec"), "{outcomes}");
    // The attacker was told, in one line, why its call did not run.
    let told = std::fs::read_to_string(&told).unwrap();
    eprintln!("the attacker's last call: {told}");
    let lines: Vec<&str> = told.lines().collect();
    assert!(lines.len() == 2 && lines[1] == "status 126", "{told}");
    // SAFETY: signalling a child of this test.
    unsafe { libc::kill(hung_pid, libc::SIGCONT) };
    assert!(eventually(Duration::from_secs(60), || pre_exec_children(attacker.uid).is_empty()), "children of the attacker's stayed before their exec");
    victim_call(&m, &victim, 9999);
    same_container(&m, &container);
}
