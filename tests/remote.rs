//! Calls on a remote engine: a second dockerd of the test's own, reached
//! over loopback TCP with TLS client certificates, which odfs treats as
//! remote (no fd, no host path crosses). The caller must see what a local
//! call shows: pipes, exit statuses, signals, a terminal; and a daemon
//! restart must end a relayed call clearly and leave nothing running there.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const CATALOG: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["sh", "cat", "yes", "pwd", "stty", "tty", "sleep"]

# /tmp is the same directory on this "remote" host.
[image.bbdirs]
ref = "odfs-test/busybox:latest"
network = "none"
remote_dirs = ["/tmp"]

[command.dsh]
image = "bbdirs"
path = "/bin/sh"
"#;

fn remote() -> (TestEngine, TestMount) {
    let e = TestEngine::start_remote();
    let m = e.remote_mount(&[("test.toml", CATALOG)]);
    (e, m)
}

#[test]
fn pipes_exit_statuses_and_the_working_directory_through_a_remote_engine() {
    let (_e, m) = remote();
    let o = m.sh(r#"printf 'a\nb\n' | "$M/sh" -c 'cat; echo err >&2; exit 3'; echo "rc=$?""#);
    assert_eq!(stdout(&o), "a\nb\nrc=3\n", "{}\n{}", stderr(&o), m.log_text());
    // The caller's cwd is not declared for this image: it runs in /, and
    // the caller is told once.
    let err = stderr(&o);
    let notice = format!("odfs: sh: note: {} is not available on the remote engine", m.work.display());
    assert!(err.starts_with(&notice) && err.ends_with("running in /\nerr\n"), "{err}");
    let o = m.sh(r#""$M/pwd"; "$M/sh" -c 'kill -KILL $$'; echo "rc=$?"; "$M/cat" < /dev/null; echo "empty=$?""#);
    assert_eq!(stdout(&o), "/\nrc=137\nempty=0\n", "{}", stderr(&o));
    // The calling shell reports the SIGKILL itself, as it would natively.
    assert!(!stderr(&o).contains("note:"), "the notice comes once: {}", stderr(&o));

    // Megabytes both ways, byte for byte.
    let o = m.sh(r#"head -c 67108864 /dev/urandom > big && "$M/cat" < big | cmp - big && echo same"#);
    assert_eq!(stdout(&o), "same\n", "{}", stderr(&o));

    // A declared remote dir: the tool runs in the caller's cwd, as the
    // caller, and what it makes there is the caller's.
    let o = as_nobody(m.shim("dsh")).args(["-c", "pwd; touch made-remotely; id -u"]).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), format!("{}\n65534\n", m.work.display()), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(m.work.join("made-remotely")).unwrap().uid(), 65534);
}

#[test]
fn signals_and_a_closed_pipe_reach_a_remote_tool() {
    let (_e, m) = remote();
    let trap = "trap 'echo got-TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let (child, mut out) = spawn_until_ready(&m, "sh", &["-c", trap], Stdio::inherit());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((rest.as_str(), o.status.code()), ("got-TERM\n", Some(7)), "{}", stderr(&o));

    // Without a trap the tool dies of the signal, and so does its caller.
    let (child, _out) = spawn_until_ready(&m, "sh", &["-c", "echo ready; while :; do sleep 0.05; done"], Stdio::inherit());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.signal(), Some(libc::SIGINT), "{:?} {}", o.status, stderr(&o));

    // A reader that goes away: the writer dies of SIGPIPE, as natively.
    let mut yes = Command::new(m.shim("yes")).current_dir(&m.work).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(yes.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "y\n");
    let status = yes.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?}");
}

#[test]
fn input_output_and_signals_keep_flowing_whatever_the_tool_reads() {
    let (e, m) = remote();
    // A tool that ends without reading its input: its status, not a lost call.
    let o = m.sh(r#"yes | "$M/sh" -c 'echo took-none; exit 3'; echo "rc=$?""#);
    assert_eq!(stdout(&o), "took-none\nrc=3\n", "{}", stderr(&o));
    // A tool that does not read its stdin still hears Ctrl-C at once, with
    // a caller pouring input into it.
    let mut yes = Command::new("yes").stdout(Stdio::piped()).spawn().unwrap();
    let (mut child, _out) = spawn_until_ready(&m, "sh", &["-c", "echo ready; exec sleep 600"], yes.stdout.take().unwrap().into());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child (the launcher).
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let _ = yes.kill();
    let _ = yes.wait();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    // A tool that ignores SIGPIPE still learns its reader is gone: its
    // write fails, as natively.
    let ignoring = "trap '' PIPE; while echo y; do :; done; echo stopped-writing >&2";
    let mut child = Command::new(m.shim("sh")).args(["-c", ignoring]).current_dir(&m.work).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(stderr(&o).contains("stopped-writing"), "{}", stderr(&o));
    // A caller killed while nobody reads the tool's output: the tool is
    // killed there too, and the container counts no running tool.
    let mut child = Command::new(m.shim("yes")).current_dir(&m.work).stdout(Stdio::piped()).spawn().unwrap();
    let c = e.containers(&m).pop().unwrap();
    let yes_running = || String::from_utf8_lossy(&e.docker(&["exec", &c, "ps", "-o", "args"]).stdout).lines().any(|l| l.trim() == "yes");
    assert!(eventually(Duration::from_secs(10), yes_running), "yes never ran");
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(eventually(Duration::from_secs(10), || !yes_running()), "yes still runs on the remote engine");
    let status = stdout(&m.odfs(&["status"]));
    assert!(eventually(Duration::from_secs(5), || stdout(&m.odfs(&["status"])).lines().any(|l| l.starts_with("bb ") && l.split_whitespace().nth(2) == Some("0"))), "{status}");
}

#[test]
fn a_remote_tool_gets_a_terminal_that_follows_the_window() {
    let (_e, m) = remote();
    let t = Tmux::new(&m, "");
    t.run("$M/tty", "/dev/pts/");
    t.run("$M/stty size", "30 100");
    // An interactive shell there (with the caller's PS1): the window's
    // size follows a resize.
    t.line("$M/sh");
    assert!(t.wait_for("built-in shell (ash)", Duration::from_secs(20)), "{}", t.screen());
    t.resize(120, 40);
    std::thread::sleep(Duration::from_millis(300));
    t.line("stty size | sed s/^/inner:/");
    assert!(t.wait_for("inner:40 120", Duration::from_secs(10)), "{}", t.screen());
    // Ctrl-C stops the tool in the foreground there, not the shell.
    t.line("cat");
    std::thread::sleep(Duration::from_millis(300));
    t.keys(&["C-c"]);
    t.line("exit 5");
    // Not typed ahead: keys typed while a tool ends go to its pty (the
    // launcher cannot know the tool will not read them) and are lost with
    // it, where a native tool leaves them in the terminal for the shell.
    std::thread::sleep(Duration::from_secs(2));
    t.run("echo rc=$?", "rc=5");
    t.assert_sane();
}

#[test]
fn job_control_reaches_a_remote_tool() {
    let (e, m) = remote();
    let t = Tmux::new(&m, "");
    t.line("$M/sleep 100");
    let ps = |c: &str| String::from_utf8_lossy(&e.docker(&["exec", c, "ps", "-o", "pid,stat,args"]).stdout).into_owned();
    assert!(eventually(Duration::from_secs(20), || e.containers(&m).len() == 1));
    let c = e.containers(&m).pop().unwrap();
    let state = |c: &str| ps(c).lines().find(|l| l.contains("sleep 100")).and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.chars().next());
    assert!(eventually(Duration::from_secs(10), || state(&c).is_some()), "{}", ps(&c));
    t.keys(&["C-z"]);
    assert!(t.wait_for("Stopped", Duration::from_secs(10)), "the job did not stop:\n{}", t.screen());
    assert!(eventually(Duration::from_secs(5), || state(&c) == Some('T')), "{}", ps(&c));
    t.wait_prompt();
    t.line("bg");
    assert!(eventually(Duration::from_secs(5), || matches!(state(&c), Some('S' | 'R'))), "bg did not resume:\n{}", ps(&c));
    t.wait_prompt();
    t.line("fg");
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&["C-c"]);
    t.run("echo fg-rc=$?", "fg-rc=130");
    assert!(eventually(Duration::from_secs(5), || state(&c).is_none()), "{}", ps(&c));
    t.assert_sane();
}

#[test]
fn a_daemon_restart_ends_a_remote_call_clearly_and_leaves_nothing_running_there() {
    let (mut e, mut m) = remote();
    let (child, _out) = spawn_until_ready(&m, "sh", &["-c", "echo ready; while :; do sleep 0.05; done"], Stdio::inherit());
    let container = e.containers(&m).pop().expect("a container on the remote engine");
    m.crash();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(137), "{err}");
    assert!(err.contains("odfs: sh: the odfs daemon relaying this call to the remote engine stopped"), "{err}");
    let tools_left = || {
        let ps = e.docker(&["exec", &container, "ps", "-o", "pid,args"]);
        String::from_utf8_lossy(&ps.stdout).lines().filter(|l| l.contains("sleep") || l.contains("while")).count()
    };
    assert!(eventually(Duration::from_secs(10), || tools_left() == 0), "the tool still runs remotely");

    // The next daemon adopts the container and serves calls again.
    let tcp = e.tcp.clone().unwrap();
    m.start(&["--engine", &tcp]);
    let o = m.sh(r#""$M/sh" -c 'echo again'"#);
    assert_eq!(stdout(&o), "again\n", "{}", stderr(&o));
    assert_eq!(e.containers(&m), vec![container]);

    // The engine gone: one line that names it and the likely cause.
    e.stop();
    let o = m.sh(r#""$M/sh" -c 'echo never'; echo "rc=$?""#);
    assert_eq!(stdout(&o), "rc=126\n");
    let err = stderr(&o);
    assert!(err.contains(&format!("not reachable at {tcp}")) && err.trim_end().ends_with("(is the remote engine up and reachable from here?)"), "{err}");
}

#[test]
fn status_and_doctor_show_the_remote_engine_and_the_relay_path() {
    let e = TestEngine::start_remote();
    let tcp = e.tcp.clone().unwrap();
    // The engine from a config file this time, TLS included.
    let config = e.dir.join("odfs.toml");
    std::fs::write(&config, format!("[engine]\nhost = \"{tcp}\"\ntls_verify = true\ncert_path = \"{}\"\n", e.certs.display())).unwrap();
    let mut m = TestMount::with_files(&[("test.toml", CATALOG)], &["--config", config.to_str().unwrap()]);
    m.id = odfs::daemon::mount_id(&m.mnt, true);
    let o = m.sh(r#""$M/sh" -c true"#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(e.containers(&m).len(), 1);
    let status = stdout(&m.odfs(&["status"]));
    assert!(status.starts_with(&format!("engine: {tcp} (remote, exec path relay, from config file): Docker Engine")), "{status}");
    assert!(status.lines().any(|l| l.starts_with("bb ") && l.contains(" relay ")), "{status}");
    let doctor = stdout(&m.odfs(&["doctor"]));
    assert!(doctor.contains(&format!("ok   container engine {tcp} (remote, Docker Engine")) && doctor.contains("calls take the relay path"), "{doctor}");
    assert!(doctor.contains("image bb (warm): exec path relay"), "{doctor}");
}

#[test]
fn a_bad_engine_setting_stops_the_mount_with_one_line() {
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["mount", "--engine", "http://build1:2375", "/nonexistent"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.starts_with("odfs: mount: engine \"http://build1:2375\" is not unix:///PATH,") && err.lines().count() == 1, "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["mount", "--config", "/nonexistent/odfs.toml", "/nonexistent"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("odfs: mount: cannot read the config file /nonexistent/odfs.toml:"), "{}", stderr(&o));
}

#[test]
fn an_ssh_engine_serves_calls_through_the_system_ssh_client() {
    let e = TestEngine::start();
    let ssh = SshFront::start(&e);
    let url = ssh.url.clone();
    let mut m = TestMount::with_env(&[("test.toml", CATALOG)], &["--engine", &url], &[("PATH", &ssh.path())]);
    m.id = odfs::daemon::mount_id(&m.mnt, true);
    let o = m.sh(r#"printf 'x\n' | "$M/sh" -c 'cat; exit 4' 2>/dev/null; echo "rc=$?""#);
    assert_eq!(stdout(&o), "x\nrc=4\n", "{}\n{}", stderr(&o), m.log_text());
    assert_eq!(e.containers(&m).len(), 1, "one container, on the engine behind ssh");
    // Calls after the first share the ssh master connection.
    let o = m.sh(r#"for i in 1 2 3; do "$M/sh" -c 'echo $0' again; done 2>/dev/null"#);
    assert_eq!(stdout(&o), "again\nagain\nagain\n", "{}", stderr(&o));
    let status = stdout(&m.odfs(&["status"]));
    assert!(status.starts_with(&format!("engine: {url} (remote, exec path relay, from --engine): Docker Engine")), "{status}");
}
