//! `odfs`: `odfs mount` runs the daemon; the other subcommands are the admin
//! CLI, talking to a daemon over its control socket.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use odfs::config::{sibling, DaemonConfig};
use odfs::protocol::{self, Request, Response};

mod doctor;
mod import;
mod report;
mod simulate;

use doctor::doctor;
use import::{import, ImportFormat};
use report::{hint, list, restart, stats, status};
use simulate::{duration_secs, simulate, SimPolicy};

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
        /// Also share this host path at the same path, even inside a
        /// directory the image keeps (/etc/ssl/certs); repeat for several.
        /// Tools see every other host top-level directory by default.
        #[arg(long = "share", value_name = "PATH")]
        shared: Vec<PathBuf>,
        /// Keep this host top-level directory out of every container; repeat
        /// for several.
        #[arg(long = "hide", value_name = "DIR")]
        hidden: Vec<PathBuf>,
        /// Keep-alive policy for images that say `keep_alive = "auto"`:
        /// auto, histogram, epsilon or fixed(DURATION).
        #[arg(long, value_name = "POLICY", default_value = "auto")]
        policy: odfs::policy::Policy,
        /// Container engine: unix:///PATH, tcp://HOST:PORT (TLS from the
        /// config file or DOCKER_TLS_VERIFY/DOCKER_CERT_PATH) or
        /// ssh://[USER@]HOST. Default: the config file's [engine] host, else
        /// DOCKER_HOST, else the local Docker socket, else Podman's.
        #[arg(long, value_name = "URL")]
        engine: Option<String>,
        /// Config file (default /etc/odfs/odfs.toml, if present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Serve the catalog's man pages and shell completions here
        /// (default: `share` beside a mountpoint named `bin`, as
        /// /opt/od/share for /opt/od/bin).
        #[arg(long, value_name = "DIR")]
        share_dir: Option<PathBuf>,
        mountpoint: PathBuf,
    },
    /// List every command: image, state, where it is defined.
    Ls {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Everything about one command.
    Show {
        command: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Map a command to an image (recorded in the last catalog directory).
    Add {
        command: String,
        /// Image reference, e.g. localhost:5000/tools/jq:1.7
        #[arg(long)]
        image: String,
        /// Absolute path in the image (default: first match on its PATH).
        #[arg(long)]
        path: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Unmap a command added with `odfs add`.
    Rm {
        command: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove containers now: one command's, or all with --all.
    Stop {
        #[arg(required_unless_present = "all")]
        command: Option<String>,
        #[arg(long, conflicts_with = "command")]
        all: bool,
        /// Also kill tools still running in them.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Start a command's container now, ahead of its first call.
    Prewarm {
        command: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Make sure the images of these commands (default: all) are on this
    /// machine; an archive command's package is fetched (`odfs fetch`).
    #[command(alias = "fetch")]
    Pull {
        commands: Vec<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Fetch the images of these commands again (pull their references,
    /// or build recipes whose files or base images changed), print what
    /// changed, and move their containers to the new image when they are
    /// next idle. A reference pinned by digest never moves.
    Update {
        commands: Vec<String>,
        /// Every image of the catalog (the default when no command is named).
        #[arg(long, conflicts_with = "commands")]
        all: bool,
        /// Only report what would change (asks the registries, fetches nothing).
        #[arg(long)]
        check: bool,
        /// Refresh the indexes of [archive.debian] (the network, about 10 s
        /// a suite) and build again the images of packages they have in a
        /// newer version.
        #[arg(long, conflicts_with_all = ["commands", "check"])]
        archive: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Restart the daemon without unmounting: a new one, of the binary now
    /// installed, takes the mount, the control socket and the containers
    /// over; calls meanwhile wait, none fails. What `systemctl reload` runs.
    Restart {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove the images odfs manages that nothing uses: those unused for
    /// the age, then, least recently used first, those the catalog does
    /// not need while over the budget or the disk is nearly full; and
    /// leftover containers.
    Gc {
        /// List what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove images unused this long (default: [gc] image_max_age, 30d;
        /// 0s: every unused one).
        #[arg(long)]
        max_age: Option<String>,
        /// Keep the managed images under this size (default: [gc] image_budget).
        #[arg(long)]
        budget: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// List the executables on an image's PATH, without running anything
    /// from it; with --add, map them all as commands (root only).
    Scan {
        image: String,
        #[arg(long)]
        add: bool,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Write a catalog file from another tool runner's packages: `whalebrew`
    /// package files (a directory such as /usr/local/bin) or `shpc`
    /// registry entries (a directory of container.yaml files).
    Import {
        #[arg(value_enum)]
        format: ImportFormat,
        dir: PathBuf,
        /// Write here (e.g. /etc/odfs/catalog.d/whalebrew.toml) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// For shells' command-not-found hooks: say at once, from the daemon's
    /// index and without any network, how to get a missing command. Prints
    /// nothing and exits 1 when nothing is known.
    Hint {
        command: String,
        #[arg(long, env = "ODFS_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The mount to point to when the catalog has the command.
        #[arg(long, env = "ODFS_MOUNT", default_value = "/opt/od/bin", value_name = "DIR")]
        mount: PathBuf,
    },
    /// Which images on this machine have a command on their PATH.
    Provides {
        command: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Check the engine, FUSE, the daemon, stale mounts, PATH order and shadowed commands.
    Doctor {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Config file to read the engine from when no daemon answers.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, …).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Replay an invocation trace (CSV: time,command,session,run_time[,profile])
    /// against keep-alive policies and compare them.
    Simulate {
        #[arg(long, value_name = "FILE")]
        trace: PathBuf,
        /// Policy to replay: fixed(DURATION), epsilon, histogram, auto, or
        /// oracle (clairvoyant, at the idle time fixed(10m) spends: a bound);
        /// repeat for several (default: fixed(0s) fixed(10m) epsilon
        /// histogram auto oracle).
        #[arg(long = "policy", value_name = "POLICY")]
        policies: Vec<SimPolicy>,
        /// Seconds a cold start adds (container start to agent ready).
        #[arg(long, default_value_t = odfs::policy::Costs::default().cold)]
        cold: f64,
        /// Seconds a call to a paused container adds (unpause).
        #[arg(long, default_value_t = odfs::policy::Costs::default().paused)]
        paused: f64,
        /// Seconds a warm call adds.
        #[arg(long, default_value_t = odfs::policy::Costs::default().warm)]
        warm: f64,
        /// Freeze every profile this long after a call, as a catalog
        /// `pause_after` does, whatever the policy (e.g. 5s).
        #[arg(long, value_name = "DURATION", value_parser = duration_secs)]
        pause_after: Option<f64>,
        /// Keep at most N idle containers, the least valuable removed first
        /// (as the daemon's `max_idle`); under auto they stay until the
        /// budget needs room.
        #[arg(long, value_name = "N")]
        idle_budget: Option<usize>,
        /// With a budget, remove an idle container after this anyway
        /// (the daemon's `[idle] max_age`).
        #[arg(long, value_name = "DURATION", value_parser = duration_secs)]
        idle_max_age: Option<f64>,
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

/// The admin CLI is a filter like any (`odfs status | head`): a reader
/// that goes away ends it quietly. The daemon keeps ignoring SIGPIPE.
fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// `odfs mount`: the daemon, on a runtime of its own, until it stops.
fn serve(cfg: DaemonConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let result = rt.block_on(odfs::daemon::run(cfg));
    // A blocking send to a launcher that never reads must not keep a
    // stopped daemon's process alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Mount { .. }) {
        quiet_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Mount { catalogs, state, socket, launcher, agent, shared, hidden, policy, engine, config, share_dir, mountpoint } => {
            odfs::telemetry::init();
            let settings = odfs::config::engine(engine.as_deref(), config.as_deref()).and_then(|e| {
                Ok((e, odfs::config::view(&shared, &hidden, config.as_deref())?, odfs::config::idle(config.as_deref())?, odfs::config::gc(config.as_deref())?))
            });
            let (engine, view, idle, gc) = match settings {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("odfs: mount: {e}");
                    return ExitCode::from(2);
                }
            };
            let (state_dir, run_dir) = match &state {
                Some(s) => (s.clone(), s.join("run")),
                None => (PathBuf::from("/var/lib/odfs"), PathBuf::from("/run/odfs")),
            };
            let socket = socket.unwrap_or_else(|| match &state {
                Some(s) => s.join("odfs.sock"),
                None => PathBuf::from(DEFAULT_SOCKET),
            });
            let cfg = DaemonConfig {
                mountpoint,
                catalogs,
                state_dir,
                run_dir,
                socket,
                launcher: launcher.unwrap_or_else(|| sibling("odfs-launch")),
                agent: agent.unwrap_or_else(|| sibling("odfs-agent")),
                view,
                policy,
                engine,
                idle,
                share_dir,
                gc,
            };
            serve(cfg)
        }
        Command::Status { socket, json } => status(&socket, json),
        Command::Ls { socket, json } => list(&socket, None, json),
        Command::Show { command, socket, json } => list(&socket, Some(&command), json),
        Command::Add { command, image, path, socket } => done(ask(&socket, Request::Add { command, image, path })),
        Command::Rm { command, socket } => done(ask(&socket, Request::Remove { command })),
        Command::Stop { command, all: _, force, socket } => done(ask(&socket, Request::Stop { command, force })),
        Command::Prewarm { command, socket } => done(ask(&socket, Request::Prewarm { command })),
        Command::Pull { commands, socket } => done(ask(&socket, Request::Pull { commands })),
        Command::Update { commands, all: _, check, archive, socket } => done(ask(&socket, Request::Update { commands, check, archive })),
        Command::Restart { socket } => restart(&socket),
        Command::Gc { dry_run, max_age, budget, socket } => {
            let limits = max_age
                .as_deref()
                .map(|a| odfs::config::parse_secs("--max-age", a))
                .transpose()
                .and_then(|a| Ok((a, budget.as_deref().map(|b| odfs::config::parse_bytes("--budget", b)).transpose()?)));
            match limits {
                Ok((max_age_s, budget)) => done(ask(&socket, Request::Gc { dry_run, max_age_s, budget })),
                Err(e) => {
                    eprintln!("odfs: gc: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Doctor { socket, config } => doctor(&socket, config.as_deref()),
        Command::Scan { image, add, socket } => done(ask(&socket, Request::Scan { image, add })),
        Command::Import { format, dir, output } => import(format, &dir, output.as_deref()),
        Command::Hint { command, socket, mount } => return hint(&socket, &command, &mount),
        Command::Provides { command, socket } => done(ask(&socket, Request::Provides { command })),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "odfs", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
            .render(&mut std::io::stdout())
            .context("cannot write the man page"),
        Command::Stats { command, socket, json } => stats(&socket, command.as_deref(), json),
        Command::Simulate { trace, policies, cold, paused, warm, pause_after, idle_budget, idle_max_age, json } => {
            let opts = odfs::policy::sim::Options {
                pause_after,
                budget: odfs::policy::cache::Budget { max_idle: idle_budget, memory: None },
                idle_max_age,
            };
            simulate(&trace, policies, &opts, odfs::policy::Costs { cold, paused, warm }, json)
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

/// Print what an admin change did, or fail with the daemon's reason.
fn done(r: anyhow::Result<Response>) -> anyhow::Result<()> {
    match r? {
        Response::Done(text) => {
            println!("{text}");
            Ok(())
        }
        Response::Error(f) => anyhow::bail!("{f}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

pub(crate) fn ask(socket: &std::path::Path, req: Request) -> anyhow::Result<Response> {
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("daemon not reachable at {} (is `odfs mount` running?)", socket.display()))?;
    protocol::send(&conn, &req, &[])?;
    // An image fetched on the way (pull, prewarm) is shown as a call shows it.
    let subcommand = match req {
        Request::Pull { .. } => "pull",
        Request::Update { .. } => "update",
        Request::Prewarm { .. } => "prewarm",
        _ => "odfs",
    };
    let mut fetching = odfs_wire::progress::Fetching::new(subcommand, std::io::stderr().is_terminal(), Stderr(std::time::Instant::now()));
    if subcommand == "update" {
        fetching = fetching.again();
    }
    loop {
        match protocol::recv::<Response>(&conn)? {
            Some((Response::Progress(p), _)) => fetching.show(&p),
            Some((r, _)) => return Ok(r),
            None => anyhow::bail!("the daemon closed the connection without an answer"),
        }
    }
}

/// The fetch display (the one a call shows) on this process's stderr.
struct Stderr(std::time::Instant);

impl odfs_wire::progress::Screen for Stderr {
    fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
    fn write(&mut self, text: &str) {
        use std::io::Write;
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
    fn columns(&self) -> Option<usize> {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ fills the struct.
        (unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(usize::from(ws.ws_col))
    }
}
