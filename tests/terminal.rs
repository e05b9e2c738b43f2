//! Interactive tools at a real terminal (tmux): a pty in the container, raw
//! mode and relay in the launcher, job control, window sizes, and a terminal
//! left exactly as it was.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;

const NOBODY: &str = "setpriv --reuid=65534 --regid=65534 --clear-groups";

const CATALOG: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["vi", "less", "more", "top", "stty", "sleep", "tty", "sh", "cat"]
"#;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn vi_edits_and_saves_a_file_owned_by_the_caller() {
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, NOBODY);
    t.line("$M/vi notes.txt");
    // vi's own screen: empty lines shown as `~`.
    assert!(eventually(secs(20), || t.screen().lines().any(|l| l.trim_end() == "~")), "{}", t.screen());
    t.keys(&["i"]);
    t.text("written in vi");
    t.keys(&["Escape"]);
    // vi waits briefly after ESC for the rest of an escape sequence.
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&[":wq", "Enter"]);
    t.run("echo vi-rc=$?", "vi-rc=0");
    let path = m.work.join("notes.txt");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "written in vi\n");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    t.assert_sane();
}

#[test]
fn less_and_more_page_and_quit_on_q() {
    let m = TestMount::new(CATALOG);
    let text: String = (1..=200).map(|i| format!("line {i}\n")).collect();
    std::fs::write(m.work.join("long.txt"), text).unwrap();
    let t = Tmux::new(&m, "");
    for pager in ["less", "more"] {
        t.wait_prompt();
        t.line(&format!("clear; $M/{pager} long.txt"));
        assert!(t.wait_for("line 20", secs(20)), "{}", t.screen());
        assert!(!t.screen().contains("line 60"), "{pager} did not page:\n{}", t.screen());
        t.keys(&["Space"]);
        assert!(t.wait_for("line 40", secs(10)), "{pager} did not turn the page:\n{}", t.screen());
        t.keys(&["q"]);
        t.run(&format!("echo {pager}-rc=$?"), &format!("{pager}-rc=0"));
        t.assert_sane();
    }
}

#[test]
fn top_redraws_on_resize_and_stty_reports_the_window() {
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, "");
    t.run("$M/stty size", "30 100");
    t.resize(60, 15);
    t.wait_prompt();
    t.line("clear; $M/top");
    assert!(t.wait_for("PID", secs(20)), "{}", t.screen());
    // At 60 columns top cuts the agent's command line short…
    assert!(!t.screen().contains("agent.sock"), "{}", t.screen());
    t.resize(140, 40);
    // …and after the window grows it redraws it whole (tmux cannot invent it).
    assert!(t.wait_for("/.odfs/run/agent.sock", secs(10)), "top did not follow the resize:\n{}", t.screen());
    t.keys(&["q"]);
    t.run("clear; $M/stty size", "40 140");
    t.assert_sane();
}

#[test]
fn ctrl_c_interrupts_and_ctrl_z_then_fg_resumes() {
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, "");
    t.line("$M/sleep 100");
    m.wait_running("sleep");
    t.keys(&["C-c"]);
    t.run("echo int-rc=$?", "int-rc=130");
    let c = m.containers()[0].clone();
    assert!(!m.ps(&c).contains("sleep"));
    t.assert_sane();

    t.wait_prompt();
    t.line("clear; $M/sleep 100");
    assert!(eventually(secs(10), || m.ps(&c).contains("sleep")));
    t.keys(&["C-z"]);
    assert!(t.wait_for("Stopped", secs(10)), "the job did not stop:\n{}", t.screen());
    // The tool is stopped too (state T), not merely its launcher.
    assert!(eventually(secs(5), || m.state_of(&c, "sleep 100") == Some('T')), "{}", m.ps(&c));
    t.assert_sane();
    // bg resumes it in the background, the terminal stays the shell's…
    t.wait_prompt();
    t.line("bg");
    assert!(eventually(secs(5), || matches!(m.state_of(&c, "sleep 100"), Some('S' | 'R'))), "bg did not resume:\n{}", m.ps(&c));
    t.assert_sane();
    // …and fg brings it back to the foreground, where Ctrl-C reaches it.
    t.wait_prompt();
    t.line("fg");
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&["C-c"]);
    t.run("echo fg-rc=$?", "fg-rc=130");
    assert!(!m.ps(&c).contains("sleep"));
    t.assert_sane();
}

#[test]
fn background_jobs_and_kill_work_and_the_tty_is_the_tools() {
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, NOBODY);
    t.run("$M/sleep 10 & sleep 1; kill %1; wait; echo bg-$((40+2))", "bg-42");
    assert!(t.screen().contains("Terminated"), "{}", t.screen());
    // The tool has a controlling terminal of its own, owned by the caller.
    t.run("$M/sh -c 'tty; stat -c %u /proc/self/fd/0; echo via-tty-$((1+1)) > /dev/tty'", "via-tty-2");
    let screen = t.screen();
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("65534"), "{screen}");
    t.assert_sane();
}

#[test]
fn a_terminal_stdin_opened_read_only_still_shows_the_tool_s_output() {
    // `xargs -o` gives each command /dev/tty opened for reading as stdin:
    // the tool's output must go to a terminal fd open for writing.
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, NOBODY);
    t.run("seq 2 | xargs -o -I{} $M/sh -c 'echo out-{}; echo err-{} >&2'; echo done-$((6*7))", "done-42");
    let screen = t.screen();
    for line in ["out-1", "err-1", "out-2", "err-2"] {
        assert!(screen.contains(line), "{line} missing:\n{screen}");
    }
    t.assert_sane();
}

#[test]
fn closing_the_terminal_hangs_up_the_tool() {
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, "");
    t.line("$M/sh -c 'trap \"echo hup > hup.txt; exit 1\" HUP; while :; do sleep 0.1; done'");
    m.wait_running("sleep");
    drop(t); // kill-server: the terminal goes away, as when a window closes
    assert!(eventually(secs(10), || m.work.join("hup.txt").exists()), "the tool never saw SIGHUP");
    let c = m.containers()[0].clone();
    assert!(eventually(secs(5), || !m.ps(&c).contains("trap")), "{}", m.ps(&c));
}

#[test]
fn a_container_killed_under_a_terminal_tool_leaves_the_terminal_sane() {
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, "");
    t.line("$M/sleep 100");
    m.wait_running("sleep");
    docker(&["rm", "-f", &m.containers()[0]]);
    t.run("echo gone-rc=$?", "gone-rc=137");
    assert!(t.screen().contains("odfs: sleep: the tool's container stopped while the tool ran"), "{}", t.screen());
    t.assert_sane();
}

#[test]
fn a_tool_without_a_terminal_stdin_leaves_the_terminal_alone() {
    let m = TestMount::new(CATALOG);
    let t = Tmux::new(&m, "");
    let pane = stdout(&t.tmux(&["display", "-p", "-t", "t", "#{pane_tty}"])).trim().to_string();
    // stdin from a file, stdout and stderr the terminal (`jq . < f`, maybe
    // piped to a pager): no pty, no raw mode, keys stay with the shell.
    t.line("$M/sleep 3 < /dev/null; echo nopty-$((6*7))");
    m.wait_running("sleep 3");
    let settings = stdout(&std::process::Command::new("stty").args(["-a", "-F", &pane]).output().unwrap());
    assert!(settings.split_whitespace().any(|w| w == "icanon"), "the terminal went raw:\n{settings}");
    assert!(t.wait_for("nopty-42", secs(10)), "{}", t.screen());
    // A terminal stdin with stdout to a pipe: a pty for the tool, the pipe kept.
    t.run("$M/tty | $M/cat; echo piped-$((6*7))", "piped-42");
    assert!(t.screen().contains("/dev/pts/"), "{}", t.screen());
    // stderr alone to the terminal, written straight through.
    t.run("echo abc | $M/sh -c 'cat >&2' >/dev/null; echo err-$((6*7))", "err-42");
    assert!(t.screen().lines().any(|l| l.trim_end() == "abc"), "{}", t.screen());
    t.assert_sane();
}
