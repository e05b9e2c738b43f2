//! `odfs`: `odfs mount` runs the daemon; the other subcommands are the admin
//! CLI, talking to a daemon over its control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use odfs::config::{sibling, DaemonConfig, DEFAULT_SHARED};
use odfs::protocol::{self, Request, Response};

const DEFAULT_SOCKET: &str = "/run/odfs/odfs.sock";

#[derive(Parser)]
#[command(name = "odfs", version, about = "A filesystem of on-demand binaries backed by containers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount the shim directory and serve it (runs in the foreground).
    Mount {
        /// Catalog directory of *.toml files; repeat for several.
        #[arg(long = "catalog", value_name = "DIR")]
        catalogs: Vec<PathBuf>,
        /// Keep database, sockets and run dirs here (default /var/lib/odfs and /run/odfs).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Control socket (default /run/odfs/odfs.sock, or STATE/odfs.sock).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// The shim interpreter named in every shim.
        #[arg(long, value_name = "PATH")]
        launcher: Option<PathBuf>,
        /// The static agent bind-mounted into every container.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Host directory shared with containers at the same path; repeat for
        /// several (default: /home /tmp /var/tmp /root /srv /mnt /media).
        #[arg(long = "share", value_name = "DIR")]
        shared: Vec<PathBuf>,
        /// Keep-alive policy for images that say `keep_alive = "auto"`:
        /// auto, histogram, epsilon or fixed(DURATION).
        #[arg(long, value_name = "POLICY", default_value = "auto")]
        policy: odfs::policy::Policy,
        mountpoint: PathBuf,
    },
    /// Replay an invocation trace (CSV: time,command,session,run_time[,profile])
    /// against keep-alive policies and compare them.
    Simulate {
        #[arg(long, value_name = "FILE")]
        trace: PathBuf,
        /// Policy to replay: fixed(DURATION), epsilon, histogram, auto; repeat
        /// for several (default: fixed(0s) fixed(10m) epsilon histogram auto).
        #[arg(long = "policy", value_name = "POLICY")]
        policies: Vec<odfs::policy::Policy>,
        /// Seconds a cold start adds (container start to agent ready).
        #[arg(long, default_value_t = odfs::policy::Costs::default().cold)]
        cold: f64,
        /// Seconds a call to a paused container adds (unpause).
        #[arg(long, default_value_t = odfs::policy::Costs::default().paused)]
        paused: f64,
        /// Seconds a warm call adds.
        #[arg(long, default_value_t = odfs::policy::Costs::default().warm)]
        warm: f64,
        #[arg(long)]
        json: bool,
    },
    /// Show the containers of a running mount: state, idle time, next step and why.
    Status {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show call figures per command: warm/paused/cold, MTBC, MTTS, MTTE, ε, keep-alive.
    Stats {
        /// Only this command.
        command: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount { catalogs, state, socket, launcher, agent, shared, policy, mountpoint } => {
            odfs::telemetry::init();
            let (state_dir, run_dir) = match &state {
                Some(s) => (s.clone(), s.join("run")),
                None => (PathBuf::from("/var/lib/odfs"), PathBuf::from("/run/odfs")),
            };
            let socket = socket.unwrap_or_else(|| match &state {
                Some(s) => s.join("odfs.sock"),
                None => PathBuf::from(DEFAULT_SOCKET),
            });
            let shared = if shared.is_empty() { DEFAULT_SHARED.iter().map(PathBuf::from).collect() } else { shared };
            let cfg = DaemonConfig {
                mountpoint,
                catalogs,
                state_dir,
                run_dir,
                socket,
                launcher: launcher.unwrap_or_else(|| sibling("odfs-launch")),
                agent: agent.unwrap_or_else(|| sibling("odfs-agent")),
                shared,
                policy,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")
                .and_then(|rt| rt.block_on(odfs::daemon::run(cfg)))
        }
        Command::Status { socket, json } => status(&socket, json),
        Command::Stats { command, socket, json } => stats(&socket, command.as_deref(), json),
        Command::Simulate { trace, policies, cold, paused, warm, json } => {
            simulate(&trace, policies, odfs::policy::Costs { cold, paused, warm }, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("odfs: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One request to a running daemon, one answer.
fn ask(socket: &std::path::Path, req: Request) -> anyhow::Result<Response> {
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("daemon not reachable at {} (is `odfs mount` running?)", socket.display()))?;
    protocol::send(&conn, &req, &[])?;
    match protocol::recv::<Response>(&conn)? {
        Some((r, _)) => Ok(r),
        None => anyhow::bail!("the daemon closed the connection without an answer"),
    }
}

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let Response::Status(list) = ask(socket, Request::Status)? else { anyhow::bail!("unexpected answer from the daemon") };
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|c| serde_json::json!({"image": c.image, "container": c.container, "state": c.state,
                                        "running_tools": c.running_tools, "idle_ms": c.idle_ms, "next": c.next}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<16} {:<12} {:>7} {:>7}  {:<40} NEXT", "IMAGE", "STATE", "RUNNING", "IDLE", "CONTAINER");
        for c in list {
            let idle = format!("{}s", c.idle_ms / 1000);
            println!("{:<16} {:<12} {:>7} {:>7}  {:<40} {}", c.image, c.state, c.running_tools, idle, c.container, c.next);
        }
    }
    Ok(())
}

fn stats(socket: &std::path::Path, only: Option<&str>, json: bool) -> anyhow::Result<()> {
    let Response::Stats(mut list) = ask(socket, Request::Stats)? else { anyhow::bail!("unexpected answer from the daemon") };
    if let Some(cmd) = only {
        list.retain(|s| s.command == cmd);
        if list.is_empty() {
            anyhow::bail!("{cmd}: no calls recorded since the daemon started");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list.iter().map(|s| serde_json::json!({
            "command": s.command, "image": s.image, "calls": s.calls, "warm": s.warm, "paused": s.paused, "cold": s.cold,
            "mtbc_s": s.mtbc, "mtts_s": s.mtts, "mtte_s": s.mtte, "epsilon_s": s.epsilon, "keep_alive": s.window,
        })).collect::<Vec<_>>())?);
        return Ok(());
    }
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    println!("{:<16} {:<12} {:>6} {:>5} {:>6} {:>5} {:>9} {:>8} {:>8} {:>9}  KEEP-ALIVE", "COMMAND", "IMAGE", "CALLS", "WARM", "PAUSED", "COLD", "MTBC s", "MTTS s", "MTTE s", "EPSILON s");
    for s in list {
        println!(
            "{:<16} {:<12} {:>6} {:>5} {:>6} {:>5} {:>9} {:>8} {:>8} {:>9}  {}",
            s.command, s.image, s.calls, s.warm, s.paused, s.cold, f(s.mtbc), f(s.mtts), f(s.mtte), f(s.epsilon), s.window
        );
    }
    Ok(())
}

fn simulate(trace: &std::path::Path, mut policies: Vec<odfs::policy::Policy>, costs: odfs::policy::Costs, json: bool) -> anyhow::Result<()> {
    use odfs::policy::{sim, Policy};
    let text = std::fs::read_to_string(trace).with_context(|| format!("cannot read trace {}", trace.display()))?;
    let calls = sim::parse_trace(&text).map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
    if policies.is_empty() {
        policies = vec![Policy::Fixed(0.0), Policy::Fixed(600.0), Policy::Epsilon, Policy::Histogram, Policy::Auto];
    }
    let reports: Vec<sim::Report> = policies.iter().map(|p| sim::simulate(&calls, *p, &costs)).collect();
    if json {
        let rows: Vec<_> = reports
            .iter()
            .map(|r| serde_json::json!({
                "policy": r.policy, "calls": r.calls, "cold": r.cold, "paused": r.paused, "warm": r.warm,
                "starts": r.starts, "cold_pct": r.cold_pct(), "paused_pct": r.paused_pct(),
                "idle_warm_s": r.idle_warm, "idle_paused_s": r.idle_paused, "idle_s": r.idle(),
                "mean_added_latency_ms": r.mean_latency_ms(),
                "sequence_calls": r.sequence_calls, "sequence_hits": r.sequence_hits,
            }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("trace {}: {} calls; costs cold {}s, paused {}s, warm {}s", trace.display(), calls.len(), costs.cold, costs.paused, costs.warm);
    println!(
        "| {:<12} | {:>6} | {:>7} | {:>9} | {:>6} | {:>11} | {:>13} | {:>10} | {:>12} | {:>9} |",
        "policy", "calls", "cold %", "paused %", "starts", "idle warm h", "idle paused h", "idle all h", "mean add ms", "seq hit %"
    );
    println!("|{:-<14}|{:-<8}|{:-<9}|{:-<11}|{:-<8}|{:-<13}|{:-<15}|{:-<12}|{:-<14}|{:-<11}|", "", "", "", "", "", "", "", "", "", "");
    for r in &reports {
        let seq = if r.sequence_calls == 0 { "-".to_string() } else { format!("{:.0} ({}/{})", r.sequence_hit_pct(), r.sequence_hits, r.sequence_calls) };
        println!(
            "| {:<12} | {:>6} | {:>7.1} | {:>9.1} | {:>6} | {:>11.2} | {:>13.2} | {:>10.2} | {:>12.1} | {:>9} |",
            r.policy, r.calls, r.cold_pct(), r.paused_pct(), r.starts, r.idle_warm / 3600.0, r.idle_paused / 3600.0, r.idle() / 3600.0, r.mean_latency_ms(), seq
        );
    }
    Ok(())
}
