//! `odfs simulate` as a user runs it: a small trace with answers computed by
//! hand, and the shipped traces reproducing the tables of docs/keep-alive.md.

use std::path::Path;
use std::process::Command;

fn simulate(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).arg("simulate").args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_small_trace_gives_the_hand_computed_figures() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.csv");
    std::fs::write(&trace, "time,command,session,run_time\n0,jq,s1,1\n100,jq,s1,1\n1000,jq,s1,1\n").unwrap();
    let out = simulate(&["--trace", trace.to_str().unwrap(), "--policy", "fixed(10m)", "--policy", "fixed(0s)", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // fixed(10m): cold at 0 (ends 1.233), warm at 100 (ends 101.004), the
    // window ends at 701.004, cold again at 1000 (ends 1001.233, removed
    // 600 s later). Idle: 98.767 + 600 + 600 s.
    assert_eq!((v[0]["cold"].as_u64(), v[0]["warm"].as_u64(), v[0]["starts"].as_u64()), (Some(2), Some(1), Some(2)));
    assert!((v[0]["idle_s"].as_f64().unwrap() - 1298.767).abs() < 1e-6, "{out}");
    assert!((v[0]["mean_added_latency_ms"].as_f64().unwrap() - 470.0 / 3.0).abs() < 1e-6, "{out}");
    // fixed(0s): every call cold, nothing idle.
    assert_eq!((v[1]["cold"].as_u64(), v[1]["idle_s"].as_f64()), (Some(3), Some(0.0)));
    // A bad trace is refused with its line.
    std::fs::write(&trace, "0,jq,s1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["simulate", "--trace"]).arg(&trace).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 1"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_shipped_traces_reproduce_the_documented_tables() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/keep-alive.md")).unwrap();
    for name in ["workday", "cron", "rare", "mix"] {
        let trace = root.join(format!("tests/data/{name}.csv"));
        let out = simulate(&["--trace", trace.to_str().unwrap()]);
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| policy")).collect();
        assert!(rows.len() >= 5, "{out}");
        for row in rows {
            assert!(doc.contains(row), "docs/keep-alive.md lacks the {name} row\n{row}");
        }
    }
}
