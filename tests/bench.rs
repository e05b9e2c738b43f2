//! A smoke run of `odfs-bench` with tiny counts, so the benchmark never
//! rots: every section runs against the real engine and the report and
//! plot are written. Its figures are not checked (timings belong in the
//! benchmark, not in tests).

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_benchmark_runs_every_section_and_writes_its_report_and_plot() {
    prepare();
    let remote = TestEngine::start_remote();
    let out = std::path::PathBuf::from(format!("/tmp/odfs-test-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    // A container left by a run that died (its pid is not a live bench)
    // is removed by the next run.
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = dead.wait_with_output();
    let leftover = docker(&["create", "--label", &format!("io.odfs.bench={dead_pid}"), "odfs-test/busybox:latest", "true"]);
    assert!(leftover.status.success(), "{}", stderr(&leftover));
    std::fs::write(out.join("performance.md"), "# Performance\n\nHand-written intro.\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_odfs-bench"))
        .args(["--smoke", "--out", out.to_str().unwrap(), "--agent", agent().to_str().unwrap()])
        .args(["--launcher", launcher().to_str().unwrap()])
        .args(["--remote", remote.tcp.as_deref().unwrap(), "--remote-certs", remote.certs.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = o.id();
    let o = o.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report = stdout(&o);
    for needle in [
        "| native /bin/true ",
        "| odfs shim (warm) ",
        "| docker exec ",
        "| docker run --rm ",
        "| odfs shim (paused) ",
        "| odfs shim (cold) ",
        "| odfs shim cat ",
        "| docker exec -i cat ",
        "concurrent first calls",
        "| PATH miss, mount on PATH ",
        "Daemon RSS with 200 commands",
        "instructions per warm call",
        "| warm shim ≤ 2.0× native ",
        "| warm shim ≤ 1/25 of docker exec ",
        "| launcher ≤ 90k instructions per warm call ",
        "| exec of the shim: kernel `#!`, launcher start ",
        "| tool: execve to exit ",
        "| (alongside) hand-off: daemon to launcher ",
        "| remote engine, relay path ",
        "| docker exec on the remote engine ",
        "| remote cat, relay path ",
        "| remote (relay path) ",
        "| odfs shim, shell loop ",
        "| odfs shim, xargs -n1 -P8 ",
        "| xargs -n1 -P1 ≤ 2.2× native ",
        "| xargs -n1 -P8 ≥ 0.5× native throughput ",
    ] {
        assert!(report.contains(needle), "{needle:?} missing from:\n{report}");
    }
    // The burst must not fail even at smoke size.
    assert!(report.contains("1 container(s) created, 0 failure(s)"), "{report}");
    let doc = std::fs::read_to_string(out.join("performance.md")).unwrap();
    assert!(doc.starts_with("# Performance\n\nHand-written intro.\n"), "{doc}");
    assert!(doc.contains(odfs::bench::report::BEGIN) && doc.contains("| odfs shim (warm) "), "{doc}");
    let png = std::fs::read(out.join("performance.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Nothing of this run's is left on the engine.
    let left = docker(&["ps", "-aq", "--filter", &format!("label=io.odfs.bench={run}")]);
    assert!(left.stdout.is_empty(), "{}", stdout(&left));
    let left = docker(&["ps", "-aq", "--filter", &format!("label=io.odfs.bench={dead_pid}")]);
    assert!(left.stdout.is_empty(), "a dead run's container was left: {}", stdout(&left));
    let left = remote.docker(&["ps", "-aq"]);
    assert!(left.stdout.is_empty(), "left on the remote engine: {}", stdout(&left));
    let _ = std::fs::remove_dir_all(&out);
}
