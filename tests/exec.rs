//! End to end through a real mount, daemon, engine and container: a shim
//! behaves like the installed tool.

mod common;

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ls_lists_every_catalog_command_as_a_root_owned_executable() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let mut names: Vec<String> =
        std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut expected = vec![
        "odfs-upper", "odfs-echo", "cat", "echo", "env", "false", "head", "id", "ls", "pwd", "sh", "sleep", "stat", "touch", "tr", "true", "wc", "yes",
    ];
    expected.sort();
    assert_eq!(names, expected);
    let meta = std::fs::metadata(m.shim("cat")).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, 0, 0o755));
    let text = std::fs::read_to_string(m.shim("cat")).unwrap();
    assert_eq!(text, format!("#!{} {}\n", launcher().display(), m.socket.display()));
    // Read-only: nothing can be created or changed.
    assert!(std::fs::write(m.mnt.join("new"), "x").is_err());
    assert!(std::fs::OpenOptions::new().write(true).open(m.shim("cat")).is_err());
    let miss = std::fs::metadata(m.shim("definitely-not-a-command")).unwrap_err();
    assert_eq!(miss.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn stdin_stdout_and_stderr_reach_pipes_and_files() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    std::fs::write(m.work.join("in.txt"), "one\ntwo\nthree\n").unwrap();
    let o = m.sh(r#"printf 'a\nb\n' | "$M/wc" -l"#);
    assert_eq!((stdout(&o).trim(), shell_status(&o)), ("2", 0), "{}", stderr(&o));
    let o = m.sh(r#""$M/wc" -l < in.txt > out.txt && cat out.txt"#);
    assert_eq!(stdout(&o).trim(), "3", "{}", stderr(&o));
    let o = m.sh(r#""$M/sh" -c 'echo to-out; echo to-err >&2' 2>err.txt | "$M/tr" a-z A-Z; cat err.txt"#);
    assert_eq!(stdout(&o), "TO-OUT\nto-err\n", "{}", stderr(&o));
    // A larger stream passes intact.
    let o = m.sh(r#"head -c 5000000 /dev/urandom > big; "$M/cat" < big | cmp - big && echo same"#);
    assert_eq!(stdout(&o).trim(), "same", "{}", stderr(&o));
}

#[test]
fn exit_codes_and_deaths_by_signal_pass_through() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    for code in [0, 1, 42, 255] {
        let o = m.sh(&format!(r#""$M/sh" -c 'exit {code}'"#));
        assert_eq!(shell_status(&o), code, "{}", stderr(&o));
    }
    let o = m.sh(r#""$M/false""#);
    assert_eq!(shell_status(&o), 1);
    let o = m.sh(r#""$M/sh" -c 'kill -9 $$'; echo "status $?""#);
    assert_eq!(stdout(&o).trim(), "status 137", "{}", stderr(&o));
    let o = m.sh(r#""$M/sh" -c 'kill -TERM $$'; echo "status $?""#);
    assert_eq!(stdout(&o).trim(), "status 143", "{}", stderr(&o));
    // The launcher itself dies by the signal, as the native tool would.
    let o = Command::new(m.shim("sh")).args(["-c", "kill -USR1 $$"]).current_dir(&m.work).output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(libc::SIGUSR1));
}

#[test]
fn timeout_term_reaches_the_tool_and_leaves_nothing_behind() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    assert!(m.sh(r#""$M/true""#).status.success()); // warm: measure the signal path only
    let start = Instant::now();
    let o = m.sh(r#"timeout -s TERM 1 "$M/sleep" 30"#);
    let took = start.elapsed();
    assert_eq!(shell_status(&o), 124, "{}", stderr(&o));
    assert!(took < Duration::from_secs(2), "timeout took {took:?}");
    let c = &m.containers()[0];
    let ps = m.ps(c);
    assert!(!ps.contains("sleep"), "sleep left in the container:\n{ps}");
}

#[test]
fn signals_to_the_launcher_reach_the_tool() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    for (sig, name) in [(libc::SIGUSR1, "USR1"), (libc::SIGUSR2, "USR2"), (libc::SIGHUP, "HUP"), (libc::SIGINT, "INT")] {
        let script = format!("trap 'echo got-{name}; exit 7' {name}; echo ready; while :; do sleep 0.05; done");
        let (mut child, mut out) = spawn_until_ready(&m, "sh", &["-c", &script], Stdio::inherit());
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, format!("got-{name}\n"));
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }
}

#[test]
fn killing_the_launcher_kills_the_tools_process_group() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let mut child = Command::new(m.shim("sh"))
        .args(["-c", "sleep 300 & sleep 301; wait"])
        .current_dir(&m.work)
        .spawn()
        .unwrap();
    m.wait_running("sleep");
    child.kill().unwrap();
    child.wait().unwrap();
    let c = m.containers()[0].clone();
    assert!(eventually(Duration::from_secs(5), || !m.ps(&c).contains("sleep")), "left behind:\n{}", m.ps(&c));
}

#[test]
fn cwd_and_relative_paths_are_the_callers() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    std::fs::create_dir_all(m.work.join("sub/dir")).unwrap();
    std::fs::write(m.work.join("sub/dir/f.txt"), "hello\n").unwrap();
    let o = m.sh(r#"cd sub && "$M/pwd" && "$M/cat" dir/f.txt && "$M/touch" dir/new && ls dir"#);
    assert_eq!(stdout(&o), format!("{}/sub\nhello\nf.txt\nnew\n", m.work.display()), "{}", stderr(&o));
    // `/` is a working directory like any other (services run there).
    let o = Command::new(m.shim("pwd")).current_dir("/").output().unwrap();
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("/\n", Some(0)), "{}", stderr(&o));
    // In a directory the image keeps, the error says so and what to do.
    let o = Command::new(m.shim("pwd")).current_dir("/usr/share").output().unwrap();
    assert_eq!(o.status.code(), Some(126));
    assert_eq!(
        stderr(&o),
        "odfs: pwd: working directory /usr/share is not shared with image bb (the tool would see the image's own /usr; cd into a shared directory or add it to shared)\n"
    );
}

#[test]
fn files_created_by_a_non_root_caller_are_theirs() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let o = as_nobody(m.shim("sh"))
        .args(["-c", "id -u; id -g; id -un; echo data > owned.txt"])
        .current_dir(&m.work)
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "65534\n65534\nnobody\n", "{}", stderr(&o));
    let meta = std::fs::metadata(m.work.join("owned.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    // The caller's groups come along too.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--groups=4,24"])
        .arg(m.shim("id"))
        .arg("-G")
        .current_dir(&m.work)
        .output()
        .unwrap();
    assert_eq!(stdout(&o).trim(), "65534 4 24", "{}", stderr(&o));
}

#[test]
fn sequential_calls_reuse_one_container() {
    // Kept alive: `auto` may remove it as soon as the loop ends, under the
    // `docker exec` below.
    let m = TestMount::new(&BUSYBOX_CATALOG.replacen("network = \"none\"", "network = \"none\"\nkeep_alive = \"1h\"", 1));
    // Each call names the container it ran in: when its agent (the tool's
    // parent) started, field 22 of its stat; one for all 100 calls, not
    // just one at the end.
    let o = m.sh(r#"i=0; while [ $i -lt 100 ]; do n=$("$M/sh" -c 'set -- $(cat /proc/$PPID/stat); echo ${22}') || exit 1; echo "$n"; i=$((i+1)); done"#);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(names.len(), 100);
    let mut distinct = names.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 1, "calls ran in several containers: {distinct:?}");
    let containers = m.containers();
    assert_eq!(containers.len(), 1);
    let agent = agent_proc(&containers[0]);
    let started = docker(&["exec", &containers[0], "sh", "-c", &format!("set -- $(cat {agent}/stat); echo ${{22}}")]);
    assert_eq!(stdout(&started).trim(), distinct[0], "{containers:?}: {}", stderr(&started));
}

#[test]
fn parallel_first_calls_start_exactly_one_container() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let children: Vec<_> = (0..50)
        .map(|i| {
            Command::new(m.shim("echo"))
                .arg(format!("call-{i}"))
                .current_dir(&m.work)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "call {i}: {}", stderr(&o));
        assert_eq!(stdout(&o), format!("call-{i}\n"));
    }
    assert_eq!(m.containers().len(), 1);
}

#[test]
fn stopped_daemon_gives_a_clear_error_and_126() {
    let mut m = TestMount::new(BUSYBOX_CATALOG);
    // A copy of a shim outside the mount: the kernel still runs the launcher,
    // which then finds nobody at the socket.
    let copy = m.work.join("cat");
    std::fs::copy(m.shim("cat"), &copy).unwrap();
    assert!(m.stop().success());
    assert!(!m.mounted(), "still mounted after SIGTERM");
    let o = Command::new(&copy).current_dir(&m.work).output().unwrap();
    assert_eq!(o.status.code(), Some(126));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("odfs: cat: daemon not reachable at {}", m.socket.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_bad_catalog_file_does_not_hide_the_good_ones() {
    let bad = "[image.broken]\nref = \"x\"\nnetwork = \"wifi\"\ncommands = [\"vi\"]\n";
    let m = TestMount::with_files(&[("a.toml", BUSYBOX_CATALOG), ("b.toml", bad)], &[]);
    assert!(m.shim("cat").exists());
    assert!(!m.shim("vi").exists());
    assert!(m.log_text().contains("b.toml:3"), "{}", m.log_text());
    let o = m.sh(r#"echo ok | "$M/cat""#);
    assert_eq!(stdout(&o), "ok\n");
}

#[test]
fn two_mounts_serve_side_by_side() {
    let a = TestMount::new(BUSYBOX_CATALOG);
    let b = TestMount::new("[image.other]\nref = \"odfs-test/busybox:latest\"\ncommands = [\"echo\", \"uname\"]\n");
    let oa = a.sh(r#""$M/echo" from-a"#);
    let ob = b.sh(r#""$M/echo" from-b"#);
    assert_eq!((stdout(&oa).as_str(), stdout(&ob).as_str()), ("from-a\n", "from-b\n"));
    assert!(!a.shim("uname").exists() && b.shim("uname").exists());
    assert_eq!((a.containers().len(), b.containers().len()), (1, 1));
    assert_ne!(a.containers(), b.containers());
}

#[test]
fn refusals_name_the_command_the_cause_and_exit_126_or_127() {
    let catalog = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
allow_groups = ["odfs-test-admins"]
commands = ["id"]

[command.nosuch]
image = "bb"

[image.gone]
ref = "localhost:5999/odfs-test/not-there:1"
commands = ["ghost"]
"#;
    let m = TestMount::new(catalog);
    let o = as_nobody(m.shim("id"))
        .current_dir(&m.work)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(126));
    assert_eq!(stderr(&o), "odfs: id: permission denied (allowed groups: odfs-test-admins)\n");
    // Root is always allowed.
    assert!(m.sh(r#""$M/id""#).status.success());

    let o = m.sh(r#""$M/nosuch""#);
    assert_eq!(shell_status(&o), 127);
    assert!(stderr(&o).starts_with("odfs: nosuch: nosuch not found in the image"), "{}", stderr(&o));

    let o = m.sh(r#""$M/ghost""#);
    assert_eq!(shell_status(&o), 126);
    let err = stderr(&o);
    // One line when the pull starts, one when it ends: here, the error. The
    // pull the shim's open started may already have failed by the time the
    // call waits on it; then the error alone is the whole story.
    let lines: Vec<&str> = err.lines().collect();
    assert!(matches!(lines.len(), 1 | 2), "{err}");
    if lines.len() == 2 {
        assert_eq!(lines[0], "odfs: ghost: pulling localhost:5999/odfs-test/not-there:1 (not on this machine)");
    }
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("odfs: ghost: image localhost:5999/odfs-test/not-there:1 is not on this machine"), "{err}");
    // A failed pull is not tried again on every call, and says when it will be.
    let o = m.sh(r#""$M/ghost""#);
    assert_eq!(shell_status(&o), 126);
    assert!(stderr(&o).contains("(next attempt in "), "{}", stderr(&o));
    assert_eq!(m.log_text().matches("image missing, pulling").count(), 1, "{}", m.log_text());
}

#[test]
fn a_container_removed_behind_our_back_is_replaced() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    assert!(m.sh(r#""$M/true""#).status.success());
    let first = m.containers();
    docker(&["rm", "-f", &first[0]]);
    let o = m.sh(r#""$M/echo" again"#);
    assert_eq!(stdout(&o), "again\n", "{}", stderr(&o));
    let now = m.containers();
    assert_eq!(now.len(), 1);
    assert_ne!(now, first);
}

#[test]
fn shutdown_unmounts_and_removes_idle_containers() {
    let mut m = TestMount::new(BUSYBOX_CATALOG);
    assert!(m.sh(r#""$M/true""#).status.success());
    assert_eq!(m.containers().len(), 1);
    assert!(m.stop().success());
    assert!(!m.mounted());
    assert!(m.containers().is_empty(), "containers left: {:?}", m.containers());
    assert!(!m.socket.exists());
}

#[test]
fn a_stop_while_a_container_starts_waits_for_the_start_and_leaves_nothing() {
    let mut m = TestMount::new(BUSYBOX_CATALOG);
    // Opening a shim warms its container: stop once the engine has it,
    // while the start (or its agent's first answer) is under way.
    drop(std::fs::File::open(m.shim("cat")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.containers().is_empty() {
        assert!(Instant::now() < deadline, "no container was started:\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(m.stop().success(), "{}", m.log_text());
    assert!(!m.mounted());
    // A start cut off halfway would leave a container nobody removes.
    assert!(m.every_container().is_empty(), "containers left: {:?}\n{}", m.every_container(), m.log_text());
}

#[test]
fn programs_find_shims_on_path_after_native_commands() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    // Native commands stay first; names only the mount has are found last.
    let o = m.sh(r#"PATH="/usr/bin:/bin:$M"; command -v cat; command -v odfs-upper; echo abc | odfs-upper"#);
    assert_eq!(stdout(&o), format!("/usr/bin/cat\n{}/odfs-upper\nABC\n", m.mnt.display()), "{}", stderr(&o));
    let o = m.sh(r#"PATH="/usr/bin:/bin:$M"; printf '1 2 3 4 5 6 7 8' | xargs -n1 -P 8 odfs-echo | sort"#);
    let expected: String = (1..=8).map(|i| format!("odfs: {i}\n")).collect();
    assert_eq!(stdout(&o), expected, "{}", stderr(&o));
    let script = r#"import subprocess
r = subprocess.run(["odfs-upper"], input=b"piped", capture_output=True)
print(r.stdout.decode().strip(), r.returncode)"#;
    let o = m.sh_cmd(r#"PATH="/usr/bin:/bin:$M" exec python3 -c "$SCRIPT""#).env("SCRIPT", script).output().unwrap();
    assert_eq!(stdout(&o), "PIPED 0\n", "{}", stderr(&o));
}

#[test]
fn a_daemon_crash_spares_running_tools_and_the_restart_adopts_their_container() {
    let mut m = TestMount::new(BUSYBOX_CATALOG);
    let child = Command::new(m.shim("sh"))
        .args(["-c", "echo started; sleep 2; echo survived; exit 3"])
        .current_dir(&m.work)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    m.wait_running("sleep");
    let before = m.containers();
    m.crash();
    let o = child.wait_with_output().unwrap();
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("started\nsurvived\n", Some(3)));

    // The crashed daemon's mount answers ENOTCONN until the next start clears it.
    m.start(&[]);
    assert!(m.log_text().contains("cleared a stale mount"), "{}", m.log_text());
    assert!(m.log_text().contains("adopted"), "{}", m.log_text());
    let o = m.sh(r#""$M/echo" after-restart"#);
    assert_eq!(stdout(&o), "after-restart\n", "{}", stderr(&o));
    assert_eq!(m.containers(), before, "the container was not adopted");
}

#[test]
fn an_unreachable_engine_is_reported_and_the_mount_still_lists() {
    let m = TestMount::with_env(&[("t.toml", BUSYBOX_CATALOG)], &[], &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    assert!(m.shim("cat").exists());
    let o = m.sh(r#""$M/cat" </dev/null"#);
    assert_eq!(shell_status(&o), 126);
    let err = stderr(&o);
    assert!(err.starts_with("odfs: cat: container engine not reachable at unix:///nonexistent/docker.sock"), "{err}");
    assert!(err.trim_end().ends_with("(is dockerd running?)"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// An image missing with a recipe is built where the engine builds
/// (Docker, Podman); a CRI engine builds nothing, and the call gets one
/// line naming where to build it and how the node gets it, at once.
#[test]
fn a_recipe_is_built_where_the_engine_builds_and_refused_in_one_line_where_it_cannot() {
    let reference = format!("odfs-test/recipe-{}:1", std::process::id());
    let toml = format!("[image.rec]\nref = \"{reference}\"\nbuild = \"images/rec\"\nnetwork = \"none\"\ncommands = [\"echo\"]\n");
    let m = TestMount::with_files(&[("t.toml", &toml), ("images/rec/Dockerfile", "FROM odfs-test/busybox:latest\nLABEL org.odfs.test=recipe\n")], &[]);
    let _gone = Defer(|| drop(docker_cli().args(["rmi", "-f", &reference]).output()));
    let o = m.sh(r#""$M/echo" built"#);
    if !on_cri() {
        assert_eq!((stdout(&o).as_str(), o.status.code()), ("built\n", Some(0)), "{}", stderr(&o));
        return;
    }
    assert_eq!(shell_status(&o), 126, "{}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("odfs: echo: image {reference} has a build recipe and cannot be built on this node"))
            && last.contains("build it on a build host")
            && last.contains("push it to the registry this node pulls from"),
        "{err}"
    );
    assert!(err.lines().count() <= 2, "{err}");
    // The runtime behind the CRI is named.
    let o = m.odfs(&["status"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("runtime: ") && l.contains("handler")), "{}", stdout(&o));
}
