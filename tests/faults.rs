//! Faults injected into the real thing: the daemon killed while tools run,
//! the engine stopped or frozen, a container killed, a tool over its
//! memory limit. Callers lose no byte and no exit status, and hear why.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_daemon_killed_while_50_tools_run_loses_no_byte_and_no_status() {
    let mut m = TestMount::new(BUSYBOX_CATALOG);
    // Each tool writes 300 lines, waits for the go file, writes one more
    // and exits with its own status; the daemon is killed while all 50 wait.
    let script = r#"i=0; while [ $i -lt 300 ]; do echo "$0 line $i"; i=$((i+1)); done; while [ ! -e go ]; do sleep 0.1; done; echo "$0 end"; exit $1"#;
    let tools: Vec<_> = (0..50)
        .map(|n| {
            Command::new(m.shim("sh"))
                .args(["-c", script, &format!("tool{n}"), &(n * 5).to_string()])
                .current_dir(&m.work)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let container = m.wait_running("-e go");
    assert!(
        eventually(Duration::from_secs(60), || m.ps(&container).matches("-e go").count() == 50),
        "not all 50 tools started: {}",
        m.ps(&container)
    );
    let before = m.containers();
    m.crash();
    std::fs::write(m.work.join("go"), "").unwrap();
    for (n, tool) in tools.into_iter().enumerate() {
        let o = tool.wait_with_output().unwrap();
        let mut expected: String = (0..300).map(|i| format!("tool{n} line {i}\n")).collect();
        expected += &format!("tool{n} end\n");
        assert_eq!(stdout(&o), expected, "tool{n}");
        assert_eq!(o.status.code(), Some(n as i32 * 5), "tool{n}");
    }
    m.start(&[]);
    assert!(m.log_text().contains("cleared a stale mount"), "{}", m.log_text());
    assert!(m.log_text().contains("adopted"), "{}", m.log_text());
    assert_eq!(m.containers(), before, "a duplicate or a lost container");
    let o = m.sh(r#""$M/echo" after"#);
    assert_eq!(stdout(&o), "after\n", "{}", stderr(&o));
    // No orphans: the container holds its agent and nothing else.
    assert!(eventually(Duration::from_secs(10), || !m.ps(&container).contains("-e go")), "{}", m.ps(&container));
}

#[test]
fn an_engine_outage_fails_calls_clearly_and_calls_work_again_once_it_is_back() {
    let mut engine = TestEngine::start();
    let m = TestMount::with_env(&[("t.toml", BUSYBOX_CATALOG)], &[], &[("DOCKER_HOST", &engine.host)]);
    let o = m.sh(r#""$M/echo" before"#);
    assert_eq!(stdout(&o), "before\n", "{}", stderr(&o));
    engine.stop();
    let o = m.sh(r#""$M/echo" during"#);
    assert_eq!(shell_status(&o), 126, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("odfs: echo: container engine not reachable at {}", engine.host)), "{err}");
    assert!(err.trim_end().ends_with("(is dockerd running?)") && err.lines().count() == 1, "{err}");
    // Back, with its containers gone (stopped with the engine): the next
    // call makes a new one, without restarting odfs.
    engine.restart();
    let o = m.sh(r#""$M/echo" after"#);
    assert_eq!(stdout(&o), "after\n", "{}", stderr(&o));
    assert_eq!(engine.containers(&m).len(), 1);
}

#[test]
fn a_stop_while_the_engine_hangs_at_start_up_is_heard() {
    let engine = TestEngine::start();
    let mut m = TestMount::with_env(&[("t.toml", BUSYBOX_CATALOG)], &[], &[("DOCKER_HOST", &engine.host)]);
    assert!(m.stop().success());
    engine.freeze(true);
    m.launch(&[]);
    // Its next step asks the engine for containers of an earlier run.
    let marker = "history of earlier runs loaded";
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.log_text().matches(marker).count() < 2 {
        assert!(Instant::now() < deadline, "the daemon did not get to the engine:\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The engine would answer only after its request timeout (minutes).
    let status = m.stop();
    engine.freeze(false);
    assert!(status.success(), "{status}:\n{}", m.log_text());
    assert!(!m.mounted());
    assert!(m.log_text().contains("stopped while starting"), "{}", m.log_text());
}

#[test]
fn the_mount_answers_from_memory_while_the_engine_hangs() {
    let engine = TestEngine::start();
    let m = TestMount::with_env(&[("t.toml", BUSYBOX_CATALOG)], &[], &[("DOCKER_HOST", &engine.host)]);
    engine.freeze(true);
    // A call that waits on the frozen engine, holding its image's lock.
    let stuck = m.sh_cmd(r#""$M/echo" patience"#).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let probes = [
        r#"ls "$M" | grep -qx cat"#,
        r#"stat "$M/cat" >/dev/null"#,
        r#"head -c 2 "$M/cat" | grep -q '#!'"#,
        r#"! test -e "$M/no-such-tool""#,
        r#"python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "user.odfs.state").decode())' "$M/echo""#,
    ];
    for probe in probes {
        let o = m.sh(&format!("timeout 5 sh -c '{}'", probe.replace('\'', r"'\''")));
        assert!(o.status.success(), "{probe} blocked or failed while the engine hangs: {}", stderr(&o));
    }
    engine.freeze(false);
    let o = stuck.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "patience\n", "{}", stderr(&o));
}

#[test]
fn a_killed_container_ends_its_tool_with_a_reason_and_the_next_call_makes_a_new_one() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let tool = m.sh_cmd(r#""$M/sleep" 30"#).stderr(Stdio::piped()).spawn().unwrap();
    let container = m.wait_running("sleep 30");
    assert!(docker(&["kill", &container]).status.success());
    let o = tool.wait_with_output().unwrap();
    assert_eq!(shell_status(&o), 137);
    assert_eq!(stderr(&o), "odfs: sleep: the tool's container stopped while the tool ran (removed or killed?)\n");
    let o = m.sh(r#""$M/echo" again"#);
    assert_eq!(stdout(&o), "again\n", "{}", stderr(&o));
    assert_eq!(m.containers().len(), 1);
    assert_ne!(m.containers()[0], container);
}

#[test]
fn a_tool_over_its_images_memory_limit_dies_with_the_reason_and_the_limits_apply() {
    let m = TestMount::new(
        "[image.small]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\nmemory = \"16m\"\ncpus = 0.5\npids = 64\ncommands = [\"sh\", \"echo\"]\n",
    );
    // A string that doubles past 16 MiB, in one process. (A pipeline that
    // fills the limit can make the kernel's next OOM kill, a few ms after
    // the first, take the agent: see docs/reliability.md.)
    let o = m.sh(r#""$M/sh" -c 'exec awk "BEGIN { s = \"x\"; while (1) s = s s }"'"#);
    assert_eq!(shell_status(&o), 137, "{}{}", stdout(&o), stderr(&o));
    // The reason, then the calling shell's own "Killed", as for a native tool.
    assert_eq!(
        stderr(&o).lines().next().unwrap_or_default(),
        "odfs: sh: killed by the out-of-memory killer: its container's memory limit is 16 MiB (raise `memory` for its image in the catalog)"
    );
    // The container itself lives on.
    let o = m.sh(r#""$M/echo" fine"#);
    assert_eq!(stdout(&o), "fine\n", "{}", stderr(&o));
    let id = &m.containers()[0];
    let o = docker(&["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}", id]);
    assert_eq!(stdout(&o).trim(), format!("{} {} 500000000 64", 16 << 20, 16 << 20));
    // Open-file and process limits are explicit in every container, the
    // daemon's own, so no engine default can exceed the machine's.
    let o = docker(&["inspect", "-f", "{{range .HostConfig.Ulimits}}{{.Name}} {{end}}", id]);
    assert_eq!(stdout(&o).trim(), "nofile nproc");
    let o = m.sh(r#""$M/sh" -c 'ulimit -n'"#);
    assert!(stdout(&o).trim().parse::<u64>().is_ok_and(|n| n >= 1024), "{}{}", stdout(&o), stderr(&o));
}
