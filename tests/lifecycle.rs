//! Container lifecycle against the real engine: pause tier, resume, removal
//! by keep-alive, the idle budget and memory pressure, nothing touched while
//! a tool runs, sequence prefetch, and the admin views of it all.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn admin(m: &TestMount, args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(args).arg("--socket").arg(&m.socket).arg("--json").output().unwrap();
    assert!(o.status.success(), "odfs {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The started containers of `image` (not one made ahead of a call).
fn containers_of(m: &TestMount, image: &str) -> Vec<String> {
    let (mount, image) = (format!("label=io.odfs.mount={}", m.id), format!("label=io.odfs.image={image}"));
    let out = docker(&["ps", "-a", "--filter", &mount, "--filter", &image, "--format", "{{.ID}} {{.State}}"]);
    stdout(&out).lines().filter_map(|l| l.split_once(' ')).filter(|(_, state)| *state != "created").map(|(id, _)| id.to_string()).collect()
}

const SHORT: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
keep_alive = "8s"
pause_after = "1s"
commands = ["true", "sleep", "echo"]
"#;

#[test]
fn idle_containers_pause_resume_on_the_next_call_and_go_after_keep_alive() {
    let m = TestMount::new(SHORT);
    assert!(m.sh(r#""$M/true""#).status.success());
    let c = m.containers()[0].clone();
    assert!(eventually(Duration::from_secs(10), || frozen(&c).1), "never paused");
    // Frozen through its cgroup, not by the engine: resuming is one write.
    assert_eq!(frozen(&c), (false, true), "paused by the engine, not through the cgroup");
    let status = admin(&m, &["status"]);
    assert_eq!(status["engine"]["exec_path"], "fd", "{status}");
    let status = &status["containers"];
    assert_eq!(status[0]["state"], "paused", "{status}");
    assert_eq!(status[0]["exec_path"], "fd", "{status}");
    assert!(status[0]["next"].as_str().unwrap().starts_with("remove in"), "{status}");

    let o = m.sh(r#""$M/echo" resumed"#);
    assert_eq!(stdout(&o), "resumed\n", "{}", stderr(&o));
    assert_eq!(m.containers(), vec![c.clone()], "a new container instead of a resume");
    let stats = admin(&m, &["stats"]);
    let echo = stats.as_array().unwrap().iter().find(|s| s["command"] == "echo").unwrap();
    assert_eq!((echo["calls"].as_u64(), echo["paused"].as_u64()), (Some(1), Some(1)), "{stats}");
    let t = stats.as_array().unwrap().iter().find(|s| s["command"] == "true").unwrap();
    assert_eq!(t["cold"].as_u64(), Some(1), "{stats}");

    assert!(eventually(Duration::from_secs(30), || m.containers().is_empty()), "not removed after its keep-alive");
    // Its next container is made ahead, not started: the call only starts it.
    assert!(eventually(Duration::from_secs(5), || m.made_ahead().len() == 1), "nothing made ahead:\n{}", m.log_text());
    let ahead = m.made_ahead()[0].clone();
    let status = admin(&m, &["status"]);
    assert_eq!(status["containers"][0]["state"], "created", "{status}");
    assert_eq!(status["containers"][0]["memory"], 0, "{status}");
    let o = m.sh(r#""$M/echo" again"#);
    assert_eq!(stdout(&o), "again\n", "{}", stderr(&o));
    assert_eq!(m.containers(), vec![ahead], "the container made ahead was not the one started");
    assert!(m.made_ahead().is_empty());
}

#[test]
fn a_container_with_a_running_tool_is_never_paused_or_removed() {
    let m = TestMount::new(&SHORT.replace("keep_alive = \"8s\"", "keep_alive = \"2s\""));
    let child = Command::new(m.shim("sleep")).arg("6").current_dir(&m.work).spawn().unwrap();
    assert!(eventually(Duration::from_secs(20), || !m.containers().is_empty()));
    let c = m.containers()[0].clone();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(frozen(&c), (false, false), "paused while sleep ran");
        assert_eq!(m.containers(), vec![c.clone()], "removed while sleep ran");
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(eventually(Duration::from_secs(20), || m.containers().is_empty()), "not removed once idle");
}

/// Two images: a's command `true`, then b's `echo`, make the sequence.
const A_THEN_B: &str = r#"
[image.a]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["true"]

[image.b]
ref = "odfs-test/busybox:latest"
network = "bridge"
commands = ["echo"]
"#;

#[test]
fn a_learned_sequence_warms_the_next_commands_container_even_after_a_restart() {
    let mut m = TestMount::new(A_THEN_B);
    // One session: a then b, three times.
    let o = m.sh(r#"for i in 1 2 3; do "$M/true" && "$M/echo" b >/dev/null || exit 1; sleep 0.5; done"#);
    assert!(o.status.success(), "{}", stderr(&o));
    let db = rusqlite::Connection::open(m.state.join("odfs.db")).unwrap();
    let recorded = || db.query_row("SELECT COUNT(*) FROM invocations", [], |r| r.get::<_, i64>(0)).unwrap();
    assert!(eventually(Duration::from_secs(10), || recorded() == 6), "{} calls recorded", recorded());
    // What was learned survives a restart: the history is read back from
    // odfs.db (shutdown removed the idle containers).
    assert!(m.stop().success());
    m.start(&[]);
    assert!(m.log_text().contains("history of earlier runs loaded calls=6"), "{}", m.log_text());
    assert!(containers_of(&m, "b").is_empty());
    // Now only a: b's container comes up by itself.
    assert!(m.sh(r#""$M/true""#).status.success());
    assert!(eventually(Duration::from_secs(10), || !containers_of(&m, "b").is_empty()), "b was not prefetched");
    let status = admin(&m, &["status"])["containers"].clone();
    let b = status.as_array().unwrap().iter().find(|s| s["image"] == "b").unwrap();
    assert!(b["next"].as_str().unwrap().contains("predicted after true"), "{status}");
    // And the predicted container serves the call warm; stats count the
    // calls of the earlier run too.
    let o = m.sh(r#""$M/echo" hit"#);
    assert_eq!(stdout(&o), "hit\n");
    let stats = admin(&m, &["stats", "echo"]);
    assert_eq!((stats[0]["calls"].as_u64(), stats[0]["warm"].as_u64()), (Some(4), Some(3)), "{stats}");
}

#[test]
fn a_fixed_keep_alive_image_is_never_warmed_by_prediction() {
    // keep_alive = "0s" is the paper's baseline: remove after each call,
    // nothing kept or guessed.
    let m = TestMount::new(&A_THEN_B.replace("network = \"bridge\"\n", "network = \"bridge\"\nkeep_alive = \"0s\"\n"));
    let o = m.sh(r#"for i in 1 2 3 4; do "$M/true" && "$M/echo" b >/dev/null || exit 1; sleep 0.3; done"#);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(10), || containers_of(&m, "b").is_empty()), "b stayed after a 0s call");
    assert!(m.sh(r#""$M/true""#).status.success());
    std::thread::sleep(Duration::from_secs(2));
    assert!(containers_of(&m, "b").is_empty(), "b was warmed against its keep_alive");
}

#[test]
fn invocations_record_how_each_call_was_served_and_how_it_ended() {
    let m = TestMount::new(SHORT);
    let o = m.sh(r#""$M/sleep" 1; "$M/echo" hi; "$M/sleep" 0 & wait"#);
    assert!(o.status.success(), "{}", stderr(&o));
    let db = rusqlite::Connection::open(m.state.join("odfs.db")).unwrap();
    type Row = (String, String, Option<i64>, Option<i64>, Option<i64>);
    let rows = || -> Vec<Row> {
        let mut q = db.prepare("SELECT command, served, exit, run_ms, session FROM invocations ORDER BY id").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))).unwrap().map(|r| r.unwrap()).collect()
    };
    assert!(eventually(Duration::from_secs(10), || rows().len() == 3 && rows().iter().all(|r| r.2.is_some())), "{:?}", rows());
    let r = rows();
    assert_eq!((r[0].0.as_str(), r[0].1.as_str(), r[0].2), ("sleep", "cold", Some(0)));
    assert!(r[0].3.unwrap() >= 900, "run time {:?}", r[0].3);
    assert_eq!((r[1].0.as_str(), r[1].1.as_str()), ("echo", "warm"));
    assert!(r.iter().all(|x| x.4.is_some() && x.4 == r[0].4), "one shell session: {r:?}");
    // A tool that dies of a signal is recorded as 128 + N.
    let o = m.sh(r#""$M/sleep" 5 & sleep 1; kill -TERM $!; wait $!"#);
    assert_eq!(shell_status(&o), 143);
    assert!(eventually(Duration::from_secs(10), || rows().last().is_some_and(|x| x.2 == Some(143))), "{:?}", rows());
}

/// Three profiles of one image (different process limits), and a daemon
/// config with `[idle]` set to `idle`, written where only this test looks.
fn budgeted(idle: &str) -> (TestMount, std::path::PathBuf) {
    let config = std::path::PathBuf::from(format!("/tmp/odfs-test-idle-{}-{}.toml", std::process::id(), idle.len()));
    std::fs::write(&config, format!("[idle]\n{idle}\n")).unwrap();
    let mut catalog = String::new();
    for (name, pids) in [("a", 100), ("b", 101), ("c", 102)] {
        catalog += &format!("[image.{name}]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\npids = {pids}\n[command.{name}-sh]\nimage = \"{name}\"\npath = \"/bin/sh\"\n");
    }
    let m = TestMount::with_files(&[("test.toml", &catalog)], &["--config", config.to_str().unwrap()]);
    (m, config)
}

fn state_of(m: &TestMount, image: &str) -> String {
    let v = admin(m, &["status"]);
    v["containers"].as_array().unwrap().iter().find(|c| c["image"] == image).map_or("absent".into(), |c| c["state"].as_str().unwrap().to_string())
}

#[test]
fn the_idle_budget_removes_the_least_called_container_and_keeps_the_rest_without_a_time_limit() {
    let (m, config) = budgeted("max_idle = 2\nmemory = \"0\"");
    let _cleanup = Defer(|| drop(std::fs::remove_file(&config)));
    // a called 8 times, b 4 times, c once: with room for two idle
    // containers, c is worth least.
    for (cmd, n) in [("a-sh", 8), ("b-sh", 4), ("c-sh", 1)] {
        for _ in 0..n {
            let o = m.sh(&format!(r#""$M/{cmd}" -c true"#));
            assert!(o.status.success(), "{}", stderr(&o));
        }
    }
    assert!(eventually(Duration::from_secs(20), || state_of(&m, "c") == "absent"), "c was not removed: {}", admin(&m, &["status"]));
    assert!(m.log_text().contains("idle budget: removed, the least valuable of 3 idle"), "{}", m.log_text());
    for image in ["a", "b"] {
        assert_ne!(state_of(&m, image), "absent", "{image} went: {}", admin(&m, &["status"]));
    }
    // Nothing else goes by the clock, and the status says what is held.
    std::thread::sleep(Duration::from_secs(3));
    let v = admin(&m, &["status"]);
    assert_eq!(v["containers"].as_array().unwrap().iter().filter(|c| c["state"] != "absent").count(), 2, "{v}");
    let line = v["idle_budget"].as_str().unwrap();
    assert!(line.starts_with("2 of at most 2 idle containers"), "{line}");
    // Each one's memory is its cgroup's and its engine process's share,
    // as measured here.
    for c in v["containers"].as_array().unwrap().iter().filter(|c| c["state"] != "absent") {
        let (reported, measured) = (c["memory"].as_u64().unwrap() as f64, held_by(c["container"].as_str().unwrap()) as f64);
        assert!((reported - measured).abs() < 0.25 * measured, "{} reported {reported}, measured {measured}: {v}", c["container"]);
    }
}

/// What a container holds as measured from outside: its cgroup's memory and
/// the proportional set of the engine's process beside it.
fn held_by(container: &str) -> u64 {
    let o = common::docker(&["inspect", "-f", "{{.State.Pid}}", container]);
    let pid = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let parent = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(1).unwrap().to_string();
    let rollup = std::fs::read_to_string(format!("/proc/{parent}/smaps_rollup")).unwrap();
    let pss_kb: u64 = rollup.lines().find_map(|l| l.strip_prefix("Pss:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    // cgroup v1's memory controller where the machine has one, else v2's.
    let file = match cgroup.lines().find_map(|l| l.split_once(":memory:")) {
        Some((_, path)) => format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"),
        None => format!("/sys/fs/cgroup{}/memory.current", cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap()),
    };
    let current: u64 = std::fs::read_to_string(&file).unwrap().trim().parse().unwrap();
    current + (pss_kb << 10)
}

#[test]
fn memory_pressure_sheds_idle_containers_never_a_running_tool() {
    let pressure = std::path::PathBuf::from(format!("/tmp/odfs-test-pressure-{}", std::process::id()));
    std::fs::write(&pressure, "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
    let (m, config) = budgeted(&format!("memory = \"0\"\npressure_file = \"{}\"", pressure.display()));
    let _cleanup = Defer(|| {
        let _ = std::fs::remove_file(&config);
        let _ = std::fs::remove_file(&pressure);
    });
    for cmd in ["b-sh", "c-sh"] {
        assert!(m.sh(&format!(r#""$M/{cmd}" -c true"#)).status.success());
    }
    // a runs a tool through the pressure.
    let running = m.sh_cmd(r#"exec "$M/a-sh" -c 'sleep 25; echo finished'"#).stdout(std::process::Stdio::piped()).spawn().unwrap();
    assert!(eventually(Duration::from_secs(20), || state_of(&m, "a") == "warm"));
    std::fs::write(&pressure, "some avg10=90.00 avg60=40.00 avg300=10.00 total=1\nfull avg10=50.00 avg60=0 avg300=0 total=1\n").unwrap();
    assert!(
        eventually(Duration::from_secs(20), || state_of(&m, "b") == "absent" && state_of(&m, "c") == "absent"),
        "idle containers were not shed: {}",
        admin(&m, &["status"])
    );
    // Frozen first, then removed, least valuable first.
    let log = m.log_text();
    let (paused, removed) = (log.find("memory pressure: paused"), log.find("memory pressure: removed"));
    assert!(paused.is_some() && removed.is_some() && paused < removed, "{log}");
    // Pressure gone while a's tool still runs: it finishes, and its
    // container, now idle, stays.
    std::fs::write(&pressure, "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n").unwrap();
    assert_eq!(state_of(&m, "a"), "warm", "{}", admin(&m, &["status"]));
    let o = running.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "finished\n", "the running tool was touched: {}", stderr(&o));
    assert!(o.status.success());
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(state_of(&m, "a"), "absent", "{}", admin(&m, &["status"]));
}
