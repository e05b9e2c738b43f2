//! `odfs-bench --archive`: the archive as a source of commands, on the real
//! archive (the network) and the real engine: the index's refresh, the
//! first call of a small package against a user's `docker run` with apt,
//! the warm call after it, `ls` and PATH misses of the listed mount, and
//! the daemon's memory with the index.

use std::process::Command;
use std::time::Instant;

use super::run::{path_misses, time_ms, Binaries, Mount};
use super::stats::Measured;

/// The small package whose first call is measured, and its command.
const PACKAGE: &str = "tree";
/// What makes the suite's base on the machine before the first calls
/// are timed (it is built once per Release).
const BASE_MAKER: &str = "sl";

pub struct Figures {
    pub commands: usize,
    pub refresh_ms: f64,
    /// `tree --version`, its image absent, the base present.
    pub first: Measured,
    pub warm: Measured,
    /// `docker run --rm debian:bookworm-slim sh -c 'apt-get update &&
    /// apt-get install -y tree && tree --version'`.
    pub by_hand: Measured,
    pub ls: Measured,
    pub miss_mount: Measured,
    pub miss_empty: Measured,
    pub rss_kib: u64,
}

fn forget(package: &str) {
    let ids = Command::new("docker").args(["images", "-q", "--filter", &format!("reference=odfs-archive/bookworm/{package}")]).output();
    let ids = ids.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect::<Vec<_>>()).unwrap_or_default();
    if !ids.is_empty() {
        let _ = Command::new("docker").args(["rmi", "-f"]).args(&ids).output();
    }
}

pub fn run(bins: &Binaries, rounds: usize, progress: &mut dyn FnMut(&str)) -> std::io::Result<Figures> {
    // A command of the catalog's, so the mount lists something before the
    // index is there.
    let catalog = format!("[archive.debian]\nfetch = \"auto\"\n\n[image.b]\nref = \"{}\"\ncommands = [\"true\"]\n", super::run::IMAGE);
    let m = Mount::start(bins, "archive", &catalog)?;
    let socket = m.root.join("state/odfs.sock");
    progress("archive: odfs update --archive");
    let started = Instant::now();
    let o = Command::new(&bins.odfs).args(["update", "--archive", "--socket"]).arg(&socket).output()?;
    if !o.status.success() {
        return Err(std::io::Error::other(format!("odfs update --archive: {}", String::from_utf8_lossy(&o.stderr))));
    }
    let refresh_ms = started.elapsed().as_secs_f64() * 1e3;
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while !m.shim(PACKAGE).exists() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("the refreshed index was not served"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let commands = std::fs::read_dir(&m.mnt)?.count();
    progress("archive: the suite's base");
    time_ms(Command::new(m.shim(BASE_MAKER)).arg("--help").current_dir(m.work())).ok();
    let (mut first, mut warm, mut by_hand) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        progress(&format!("archive: first call, round {}", round + 1));
        // Its container holds the image: gone first.
        Command::new(&bins.odfs).args(["stop", PACKAGE, "--force", "--socket"]).arg(&socket).output()?;
        let held = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=io.odfs.mount={}", m.id)]).output()?;
        let held: Vec<String> = String::from_utf8_lossy(&held.stdout).split_whitespace().map(String::from).collect();
        if !held.is_empty() {
            Command::new("docker").args(["rm", "-f"]).args(&held).output()?;
        }
        forget(PACKAGE);
        let left = Command::new("docker").args(["images", "-q", "--filter", &format!("reference=odfs-archive/bookworm/{PACKAGE}")]).output()?;
        if !left.stdout.is_empty() {
            return Err(std::io::Error::other(format!("the image of {PACKAGE} could not be removed before its first call")));
        }
        first.push(time_ms(Command::new(m.shim(PACKAGE)).arg("--version").current_dir(m.work()))?);
        warm.push(time_ms(Command::new(m.shim(PACKAGE)).arg("--version").current_dir(m.work()))?);
        by_hand.push(time_ms(Command::new("docker").args([
            "run",
            "--rm",
            "--network",
            "host",
            "debian:bookworm-slim",
            "sh",
            "-c",
            &format!("apt-get update && apt-get install -y {PACKAGE} && {PACKAGE} --version"),
        ]))?);
    }
    let ls = (0..rounds * 4).map(|_| time_ms(Command::new("ls").arg(&m.mnt))).collect::<std::io::Result<Vec<f64>>>()?;
    let empty = m.root.join("empty");
    std::fs::create_dir_all(&empty)?;
    let (miss_mount, miss_empty) = path_misses(&m.mnt, &empty, rounds * 20)?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.daemon_pid()))?;
    drop(m);
    forget(PACKAGE);
    Ok(Figures {
        commands,
        refresh_ms,
        first: Measured::new("first call of tree (image absent, base present)", first),
        warm: Measured::new("the call after it", warm),
        by_hand: Measured::new("docker run --rm with apt-get update and install", by_hand),
        ls: Measured::new("ls of the mount", ls),
        miss_mount,
        miss_empty,
        rss_kib: super::parse::rss_kib(&status).unwrap_or(0),
    })
}

/// The section of docs/archive.md these figures make.
pub fn markdown(f: &Figures) -> String {
    let med = |m: &Measured| m.summary.median;
    let row = |m: &Measured| format!("| {} | {:.1} ms | {} |\n", m.name, med(m), m.summary.n);
    let mut out = String::from("| what (one run, medians) | figure | samples |\n| --- | --- | --- |\n");
    for m in [&f.first, &f.warm, &f.by_hand, &f.ls, &f.miss_mount, &f.miss_empty] {
        out += &row(m);
    }
    out += &format!("\n- first call / by hand: {:.2} (target ≤ 0.3)\n", med(&f.first) / med(&f.by_hand));
    out += &format!("- PATH miss, mount / empty dir: {:.2} (target ≤ 1.1)\n", med(&f.miss_mount) / med(&f.miss_empty));
    out += &format!("- listed commands: {}; `ls` {:.1} ms (target ≤ 60)\n", f.commands, med(&f.ls));
    out += &format!("- daemon RSS with the index: {:.1} MiB (target ≤ 80)\n", f.rss_kib as f64 / 1024.0);
    out += &format!("- index refresh (`odfs update --archive`): {:.1} s\n", f.refresh_ms / 1e3);
    out
}
