//! Process semantics without a terminal: fds, pipes, closed stdio and exit
//! statuses of a shim, compared with the same busybox binary run natively.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CATALOG: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["sh", "cat", "diff", "yes", "echo", "true"]

[command.odfs-echo]
image = "bb"
path = "/bin/busybox"
args = ["echo", "odfs:"]
"#;

/// A directory of native busybox applets under the same names as the
/// shims, so both print the same program names in their messages.
fn native(m: &TestMount) -> std::path::PathBuf {
    let dir = m.work.join("native");
    std::fs::create_dir_all(&dir).unwrap();
    for applet in ["sh", "cat", "diff", "yes", "echo", "true"] {
        let _ = std::os::unix::fs::symlink("/bin/busybox", dir.join(applet));
    }
    dir
}

#[test]
fn every_open_fd_reaches_the_tool() {
    let m = TestMount::new(CATALOG);
    std::fs::write(m.work.join("f.txt"), "from fd\n").unwrap();
    let o = m.sh(r#""$M/cat" /dev/fd/3 3<f.txt; "$M/cat" /dev/fd/7 7<f.txt"#);
    assert_eq!(stdout(&o), "from fd\nfrom fd\n", "{}", stderr(&o));
    let o = m.sh_cmd(r#"exec bash -c '"$M/diff" <(echo a) <(echo b); echo "status $?"'"#).output().unwrap();
    let out = stdout(&o);
    assert!(out.contains("-a\n+b\n") && out.ends_with("status 1\n"), "{out}{}", stderr(&o));
}

#[test]
fn more_fds_than_a_call_can_pass_get_one_line_and_126_and_up_to_the_limit_all_arrive() {
    let m = TestMount::new(CATALOG);
    // 249 fds (stdio and 246 more, at 10..=255) reach the tool, each at its
    // number; one more and the tool would miss one: it does not run.
    let opens = |last: i32| (10..=last).map(|fd| format!("exec {fd}</dev/null; ")).collect::<String>();
    let count = r#""$M/sh" -c 'ls /proc/self/fd | wc -l; [ -e /proc/self/fd/255 ] && echo 255 there'"#;
    let o = m.sh_cmd(&format!("exec bash -c '{}{}'", opens(255), count.replace('\'', "'\\''"))).output().unwrap();
    // ls's own directory fd is the one more.
    assert_eq!(stdout(&o), "250\n255 there\n", "{}", stderr(&o));
    let o = m.sh_cmd(&format!("exec bash -c '{}{}; echo \"status $?\"'", opens(256), count.replace('\'', "'\\''"))).output().unwrap();
    assert_eq!(stdout(&o), "status 126\n", "{}", stderr(&o));
    let err = stderr(&o);
    let said: Vec<&str> = err.lines().collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with("odfs: sh: 250 open files") && said[0].contains("more than the 249 a call can pass"), "{said:?}");
}

#[test]
fn a_reader_that_stops_ends_the_writer_at_once() {
    let m = TestMount::new(CATALOG);
    assert!(m.sh(r#""$M/true""#).status.success());
    let start = Instant::now();
    let o = m.sh_cmd(r#"exec bash -c '"$M/yes" | head -1; echo "${PIPESTATUS[@]}"'"#).output().unwrap();
    assert_eq!(stdout(&o), "y\n141 0\n", "{}", stderr(&o));
    assert!(start.elapsed() < Duration::from_secs(10), "yes ran on: {:?}", start.elapsed());
}

#[test]
fn closed_stdin_stdout_and_stderr_behave_as_natively() {
    let m = TestMount::new(CATALOG);
    let n = native(&m);
    // The tool sees exactly the caller's closed fds (the launcher's own
    // stand-ins for them are not passed).
    let probe = r#"{T}/sh -c 'for fd in 0 1 2; do [ -e /proc/self/fd/$fd ] && echo "$fd open" >&3 || echo "$fd closed" >&3; done' 3>&1"#;
    for case in [
        r#"{T}/echo hi >&-"#,
        r#"{T}/cat <&-"#,
        r#"{T}/sh -c 'echo out; echo err >&2' 2>&-"#,
        r#"{T}/cat <&- >&- 2>&-"#,
        &format!("{probe} <&- 2>&-"),
        &format!("{probe} >&-"),
    ] {
        let shim = m.sh(&case.replace("{T}", "$M"));
        let nat = m.sh(&case.replace("{T}", &n.display().to_string()));
        assert_eq!(
            (stdout(&shim), stderr(&shim), shell_status(&shim)),
            (stdout(&nat), stderr(&nat), shell_status(&nat)),
            "case {case}"
        );
    }
}

#[test]
fn signals_the_caller_ignores_stay_ignored_as_for_a_native_tool() {
    // `nohup`, or `tool &` in a script: the caller ignores SIGHUP, so the
    // tool must survive it, as it would natively.
    let m = TestMount::new(CATALOG);
    let n = native(&m);
    let script = r#"trap '' HUP; {T}/sh -c 'sleep 1; echo done' & pid=$!; sleep 0.3; kill -HUP $pid; wait $pid; echo "status $?""#;
    for dir in ["$M".to_string(), n.display().to_string()] {
        let o = m.sh(&script.replace("{T}", &dir));
        assert_eq!(stdout(&o), "done\nstatus 0\n", "{dir}: {}", stderr(&o));
    }
    // Not ignored, it ends the tool as it would natively.
    let o = m.sh(r#""$M/sh" -c 'sleep 5; echo done' & pid=$!; sleep 0.5; kill -HUP $pid; wait $pid; echo "status $?""#);
    assert_eq!(stdout(&o), "status 129\n", "{}", stderr(&o));
}

#[test]
fn a_tool_that_stops_in_an_orphaned_process_group_goes_on_as_natively() {
    // With no shell left to continue it (its own session), the kernel
    // discards a stop signal natively; the launcher cannot stop either, and
    // the tool must not stay stopped in its container.
    let m = TestMount::new(CATALOG);
    let n = native(&m);
    // On a terminal (`script` gives one), so the tool runs in pty mode and
    // does stop in its container.
    for dir in ["$M".to_string(), n.display().to_string()] {
        let inner = format!(r#"setsid -w {dir}/sh -c 'kill -TSTP $$; echo resumed'; echo "status $?""#);
        let o = m.sh_cmd("timeout 30 script -qec \"$INNER\" /dev/null").env("INNER", &inner).output().unwrap();
        let out = stdout(&o).replace('\r', "");
        assert!(out.ends_with("resumed\nstatus 0\n"), "{dir}: {out:?} {}", stderr(&o));
    }
}

#[test]
fn exit_statuses_match_the_native_tool_for_every_code_and_signal() {
    let m = TestMount::new(CATALOG);
    let n = native(&m);
    // Stop signals are left out: they would stop the test's own shell job;
    // so are 32 and 33, which glibc keeps for itself (no glibc program,
    // native or not, can have a handler for them or die of them by raise).
    let script = r#"
        for code in $(seq 0 255); do "$T/sh" -c "exit $code"; echo "exit $code -> $?"; done
        for sig in $(seq 1 64); do
            case $sig in 19|20|21|22|32|33) continue;; esac
            "$T/sh" -c "kill -$sig \$\$"; echo "signal $sig -> $?"
        done"#;
    let shim = m.sh_cmd(script).env("T", &m.mnt).output().unwrap();
    let nat = m.sh_cmd(script).env("T", &n).output().unwrap();
    assert_eq!(stdout(&shim).lines().count(), 256 + 27 + 31, "{}", stderr(&shim));
    for (s, n) in stdout(&shim).lines().zip(stdout(&nat).lines()) {
        assert_eq!(s, n);
    }
}

#[test]
fn make_runs_shims_in_parallel_from_path() {
    let m = TestMount::new(CATALOG);
    std::fs::write(m.work.join("Makefile"), "all: a b c d\na b c d:\n\todfs-echo $@ > $@.out\n").unwrap();
    let o = m.sh(r#"PATH="/usr/bin:/bin:$M" make -s -j4"#);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    for t in ["a", "b", "c", "d"] {
        assert_eq!(std::fs::read_to_string(m.work.join(format!("{t}.out"))).unwrap(), format!("odfs: {t}\n"));
    }
}
