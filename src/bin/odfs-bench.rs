//! `odfs-bench`: the benchmark command (see `odfs::bench`).

use std::path::PathBuf;

use clap::Parser;
use odfs::bench::{parse, report, run};

/// Measure odfs side by side with native execution, `docker exec` and
/// `docker run --rm`, and write docs/performance.md and its plot.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Tiny counts: every code path in seconds, figures meaningless.
    #[arg(long)]
    smoke: bool,
    /// Where to write performance.md and performance.png.
    #[arg(long, default_value = "docs", value_name = "DIR")]
    out: PathBuf,
    /// The odfs-agent to put in containers (default: built by scripts/build).
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// The odfs-launch the shims name (default: the static one scripts/build makes).
    #[arg(long, value_name = "PATH")]
    launcher: Option<PathBuf>,
    /// Also measure the relay path on this remote engine (tcp://…), e.g. the
    /// one scripts/remote-engine starts, against the local fd path.
    #[arg(long, value_name = "URL")]
    remote: Option<String>,
    /// Measure only the archive as a source of commands (the network and
    /// the real archive: the index, first calls of a package) and print
    /// its figures.
    #[arg(long)]
    archive: bool,
    /// Measure only a CRI engine (cri+unix://…, e.g. the one
    /// scripts/cri-engine starts) against the machine's Docker engine, and
    /// print its figures.
    #[arg(long, value_name = "URL")]
    cri: Option<String>,
    /// TLS client certificates of the remote engine (ca.pem, cert.pem, key.pem).
    #[arg(long, value_name = "DIR", requires = "remote")]
    remote_certs: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let here = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
    let bins = run::Binaries {
        odfs: here.join("odfs"),
        // The launcher as installed: static (scripts/build).
        launcher: args.launcher.unwrap_or_else(|| here.join("../static/release/odfs-launch")),
        agent: args.agent.unwrap_or_else(|| here.join("../static/release/odfs-agent")),
    };
    for b in [&bins.odfs, &bins.launcher, &bins.agent] {
        anyhow::ensure!(b.exists(), "odfs-bench: {} is missing (build with scripts/build)", b.display());
    }
    if args.archive {
        let figures = odfs::bench::archive::run(&bins, if args.smoke { 1 } else { 5 }, &mut |what| eprintln!("odfs-bench: {what}"))?;
        print!("{}", odfs::bench::archive::markdown(&figures));
        return Ok(());
    }
    if let Some(url) = args.cri {
        let (rounds, cold) = if args.smoke { (5, 2) } else { (300, 15) };
        let figures = odfs::bench::cri::run(&bins, &url, rounds, cold, &mut |what| eprintln!("odfs-bench: {what}"))?;
        print!("{}", odfs::bench::cri::markdown(&figures));
        return Ok(());
    }
    let counts = if args.smoke { run::Counts::smoke() } else { run::Counts::full() };
    let remote = args.remote.map(|url| run::RemoteEngine { url, certs: args.remote_certs });
    let results = run::run(&bins, &counts, remote.as_ref(), &mut |what| eprintln!("odfs-bench: {what}"))?;
    let generated = report::markdown(&results, &machine());
    print!("{generated}");
    std::fs::create_dir_all(&args.out)?;
    let doc_path = args.out.join("performance.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|_| "# Performance\n".into());
    std::fs::write(&doc_path, report::splice(&doc, &generated))?;
    let png = args.out.join("performance.png");
    match report::plot(&results, &png) {
        Ok(()) => eprintln!("odfs-bench: wrote {} and {}", doc_path.display(), png.display()),
        Err(e) => eprintln!("odfs-bench: wrote {}; no plot: {e}", doc_path.display()),
    }
    Ok(())
}

/// CPU, cores, kernel and engine, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| parse::cpu_model(&c)).unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let docker = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}, Docker {docker}", kernel.trim())
}
