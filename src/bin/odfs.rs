//! `odfs`: `odfs mount` runs the daemon; the other subcommands are the admin
//! CLI, talking to a daemon over its control socket.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use odfs::config::{sibling, DaemonConfig};
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
    /// Make sure the images of these commands (default: all) are on this machine.
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportFormat {
    Whalebrew,
    Shpc,
}

/// `odfs import`: read the packages, map them, write a catalog file that is
/// checked to load. Notes on what did not carry over go to stderr.
fn import(format: ImportFormat, dir: &std::path::Path, output: Option<&std::path::Path>) -> anyhow::Result<()> {
    use odfs::catalog::import;
    let files: Vec<PathBuf> = match format {
        ImportFormat::Whalebrew => std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.is_file())
            .collect(),
        ImportFormat::Shpc => walk(dir, "container.yaml").with_context(|| format!("cannot read {}", dir.display()))?,
    };
    let mut texts = Vec::new();
    for f in files {
        // Binaries and other non-text files are simply not packages.
        if let Ok(text) = std::fs::read_to_string(&f) {
            texts.push((f, text));
        }
    }
    let imported = match format {
        ImportFormat::Whalebrew => {
            let named: Vec<(String, String)> = texts.iter().map(|(p, t)| (p.display().to_string(), t.clone())).collect();
            let mut facts = std::collections::HashMap::new();
            let images: Vec<String> = named
                .iter()
                .filter(|(_, t)| import::is_whalebrew_package(t))
                .filter_map(|(_, t)| import::parse_whalebrew(t).ok().map(|p| p.image))
                .collect();
            if !images.is_empty() {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let docker = odfs::backend::docker::Docker::with_engine(odfs::config::engine(None, None).map_err(|e| anyhow::anyhow!(e))?);
                for image in images {
                    match rt.block_on(docker.image_facts(&image)) {
                        Ok(Some(f)) => {
                            facts.insert(image, f);
                        }
                        Ok(None) => {}
                        Err(e) => eprintln!("odfs: import: cannot read labels of {image}: {e}"),
                    }
                }
            }
            import::import_whalebrew(&named, &facts)
        }
        ImportFormat::Shpc => import::import_shpc(&texts),
    };
    if imported.command.is_empty() {
        for n in &imported.notes {
            eprintln!("odfs: import: {n}");
        }
        anyhow::bail!("no packages found in {} (nothing written)", dir.display());
    }
    let text = imported.to_toml(&dir.display().to_string()).map_err(|e| anyhow::anyhow!("the imported catalog does not load: {e}"))?;
    match output {
        Some(path) => std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    for n in &imported.notes {
        eprintln!("odfs: import: note: {n}");
    }
    eprintln!("odfs: import: {} command(s) in {} image(s)", imported.command.len(), imported.image.len());
    Ok(())
}

/// Every file named `name` below `dir`, in a stable order.
fn walk(dir: &std::path::Path, name: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name() == name {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime").and_then(|rt| {
                let result = rt.block_on(odfs::daemon::run(cfg));
                // A blocking send to a launcher that never reads must not
                // keep a stopped daemon's process alive.
                rt.shutdown_timeout(std::time::Duration::from_secs(2));
                result
            })
        }
        Command::Status { socket, json } => status(&socket, json),
        Command::Ls { socket, json } => list(&socket, None, json),
        Command::Show { command, socket, json } => list(&socket, Some(&command), json),
        Command::Add { command, image, path, socket } => done(ask(&socket, Request::Add { command, image, path })),
        Command::Rm { command, socket } => done(ask(&socket, Request::Remove { command })),
        Command::Stop { command, all: _, force, socket } => done(ask(&socket, Request::Stop { command, force })),
        Command::Prewarm { command, socket } => done(ask(&socket, Request::Prewarm { command })),
        Command::Pull { commands, socket } => done(ask(&socket, Request::Pull { commands })),
        Command::Update { commands, all: _, check, socket } => done(ask(&socket, Request::Update { commands, check })),
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

fn list(socket: &std::path::Path, only: Option<&str>, json: bool) -> anyhow::Result<()> {
    let Response::Commands(mut list) = ask(socket, Request::List)? else { anyhow::bail!("unexpected answer from the daemon") };
    if let Some(c) = only {
        list.retain(|i| i.command == c);
        if list.is_empty() {
            anyhow::bail!("{c} is not in the catalog (odfs ls lists what is)");
        }
    }
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|i| serde_json::json!({"command": i.command, "image": i.image, "ref": i.reference, "program": i.program,
                "args": i.args, "network": i.network, "user": i.user, "keep_alive": i.keep_alive, "state": i.state, "origin": i.origin, "version": i.version, "source": i.source}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&if only.is_some() { rows[0].clone() } else { serde_json::Value::Array(rows) })?);
    } else if let (Some(_), Some(i)) = (only, list.first()) {
        let args = if i.args.is_empty() { String::new() } else { format!(" {}", i.args.join(" ")) };
        println!("command:    {}\nimage:      {} ({})\nsource:     {}\nruns:       {}{}\nnetwork:    {}\nuser:       {}\nkeep-alive: {}\nstate:      {}\ndefined at: {}",
            i.command, i.image, i.reference, i.source, i.program, args, i.network, i.user, i.keep_alive, i.state, i.origin);
        if !i.version.is_empty() {
            println!("version:    {}", i.version);
        }
        print_view(socket, &i.command)?;
    } else {
        println!("{:<20} {:<16} {:<10} {:<10} REF", "COMMAND", "IMAGE", "VERSION", "STATE");
        for i in list {
            let version = i.version.split(' ').next().unwrap_or("");
            println!("{:<20} {:<16} {:<10} {:<10} {}", i.command, i.image, if version.is_empty() { "-" } else { version }, i.state, i.reference);
        }
    }
    Ok(())
}

/// `odfs show`'s lines on what the tool sees of the host.
fn print_view(socket: &std::path::Path, command: &str) -> anyhow::Result<()> {
    let v = match ask(socket, Request::View { command: command.to_string() })? {
        Response::View(v) => v,
        Response::Error(f) => anyhow::bail!(f.message),
        _ => anyhow::bail!("unexpected answer from the daemon"),
    };
    let list = |l: &[String]| if l.is_empty() { "(none)".to_string() } else { l.join(" ") };
    if !v.version.is_empty() {
        println!("runs here: {}", v.version);
    }
    if v.remote {
        println!("host view:  {} (the remote host's remote_dirs; nothing else of this host)", list(&v.host));
        println!("processes:  {}", v.namespaces);
        println!("environment: {}", v.environment);
        if !v.devices.is_empty() {
            println!("devices:    {}", v.devices);
        }
        return Ok(());
    }
    println!("host view:  {} (same paths, the caller's permissions)", list(&v.host));
    let filled = if v.filled.is_empty() { String::new() } else { format!("; the image fills {}", v.filled.join(" ")) };
    println!("image's own: {} (read-only; a host path named there is refused{filled})", list(&v.image));
    if !v.private.is_empty() {
        println!("note: later mounts under {} do not reach the tool: their host mount is private (mount --make-rshared /)", v.private.join(" "));
    }
    println!("processes:  {}", v.namespaces);
    println!("environment: {}", v.environment);
    if !v.devices.is_empty() {
        println!("devices:    {}", v.devices);
    }
    Ok(())
}

/// Checks from the user's side; exit status 1 when something is broken.
fn doctor(socket: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut broken = 0;
    let mut report = |ok: Option<bool>, what: String| {
        let tag = match ok {
            Some(true) => "ok  ",
            Some(false) => {
                broken += 1;
                "FAIL"
            }
            None => "note",
        };
        println!("{tag} {what}");
    };
    report(Some(std::path::Path::new("/dev/fuse").exists()), "FUSE device /dev/fuse".into());
    // The running daemon's engine; without a daemon, the one it would use.
    let engine = match ask(socket, Request::Status) {
        Ok(Response::Status { engine, containers, .. }) => Some((engine, containers)),
        _ => None,
    };
    let (engine, containers) = match engine {
        Some((e, c)) => (e, c),
        None => {
            let e = odfs::config::engine(None, config).map_err(|e| anyhow::anyhow!(e))?;
            let docker = odfs::backend::docker::Docker::with_engine(e);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            (rt.block_on(odfs::backend::ContainerBackend::engine_info(&docker)), vec![])
        }
    };
    let place = if engine.remote { "remote" } else { "local" };
    match &engine.version {
        Ok(v) => report(Some(true), format!("container engine {} ({place}, {v}, from {}): calls take the {} path", engine.host, engine.source, engine.exec_path)),
        Err(e) => report(Some(false), format!("container engine {} ({place}, from {}): {e}", engine.host, engine.source)),
    }
    for c in &containers {
        report(None, format!("image {} ({}): exec path {}", c.image, c.state, c.exec_path));
    }
    // The site's proxy reaches builds and tools; pulls are the engine's own.
    if let Ok(e) = odfs::config::engine(None, config) {
        let site = e.outbound.https_proxy.clone().or(e.outbound.http_proxy.clone());
        if let (Some(site), false) = (site, engine.remote) {
            let docker = odfs::backend::docker::Docker::with_engine(e);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match rt.block_on(docker.engine_proxy()) {
                Ok(Some(p)) => report(Some(true), format!("the engine pulls through the proxy {p}; builds and networked tools get {site}")),
                Ok(None) => report(None, format!(
                    "builds and networked tools get the proxy {site}, but the engine pulls without one: set HTTPS_PROXY in its service's environment, or name registry_mirrors"
                )),
                Err(_) => {}
            }
        }
    }
    let commands = match ask(socket, Request::List) {
        Ok(Response::Commands(c)) => {
            report(Some(true), format!("daemon at {} serves {} commands", socket.display(), c.len()));
            c
        }
        _ => {
            report(Some(false), format!("daemon not reachable at {} (odfs mount, or systemctl start odfs)", socket.display()));
            vec![]
        }
    };
    // Mounts of odfs in this namespace; a dead one answers ENOTCONN.
    let mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("odfs ") || l.split_whitespace().nth(2) == Some("fuse.odfs"))
        .filter_map(|l| l.split_whitespace().nth(1).map(|m| m.replace("\\040", " ")))
        .collect();
    for m in &mounts {
        match std::fs::read_dir(m) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                report(Some(false), format!("stale mount at {m}: its daemon died (restarting odfs clears it, or umount -l {m})"))
            }
            _ => report(Some(true), format!("mount at {m}")),
        }
    }
    if !engine.remote {
        let top = odfs::view::host_top_level(std::path::Path::new("/"));
        let (image, host): (Vec<String>, Vec<String>) =
            top.into_iter().map(|n| format!("/{n}")).partition(|p| odfs::view::IMAGE_OWNED.contains(&&p[1..]));
        report(None, format!(
            "tools see the host's {} {} at the same paths (but a top-level directory an image fills; odfs show CMD tells); the image keeps {} read-only",
            host.join(" "),
            odfs::view::HOST_INSIDE_IMAGE.join(" "),
            image.join(" ")
        ));
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let private: Vec<&String> = host.iter().filter(|p| !odfs::view::follows_host(&mountinfo, std::path::Path::new(p))).collect();
        if private.is_empty() {
            report(Some(true), "host mounts are shared: mounts and unmounts on the host reach running tools".into());
        } else {
            let private: Vec<&str> = private.iter().map(|s| s.as_str()).collect();
            report(Some(false), format!(
                "host mounts holding {} are private: later mounts and submounts there do not reach tools (mount --make-rshared /, as systemd does at boot)",
                private.join(" ")
            ));
        }
    }
    // Version pin files from here up that would be passed over, and why.
    if let Ok(cwd) = std::env::current_dir() {
        let uid = nix::unistd::getuid().as_raw();
        for i in odfs::daemon::pins::Pins::default().choose(&cwd, "", uid).1 {
            report(Some(false), format!("{} is ignored: it is {} (a pin file must be the caller's or root's, and writable by no one else)", i.file.display(), i.why));
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path.split(':').filter(|d| !d.is_empty()).collect();
    match dirs.iter().position(|d| mounts.iter().any(|m| m == d)) {
        Some(i) if i + 1 == dirs.len() => report(Some(true), format!("{} is last on PATH: installed tools win", dirs[i])),
        Some(i) => report(None, format!("{} is on PATH before {}: shims hide installed tools there", dirs[i], dirs[i + 1..].join(":"))),
        None => report(None, "no odfs mount on PATH (source /etc/profile.d/odfs.sh, or log in again)".into()),
    }
    let shadowed: Vec<String> = commands
        .iter()
        .filter(|c| dirs.iter().filter(|d| !mounts.iter().any(|m| m == *d)).any(|d| std::path::Path::new(d).join(&c.command).exists()))
        .map(|c| c.command.clone())
        .collect();
    if !shadowed.is_empty() {
        report(None, format!("{} catalog command(s) are installed natively and run natively: {}", shadowed.len(), shadowed.join(" ")));
    }
    if broken > 0 {
        anyhow::bail!("{broken} check(s) failed");
    }
    Ok(())
}

/// `odfs hint`: one suggestion per provider on stderr, or silence and 1.
fn hint(socket: &std::path::Path, command: &str, mount: &std::path::Path) -> ExitCode {
    let answer = (|| -> anyhow::Result<Response> {
        let conn = std::os::unix::net::UnixStream::connect(socket)?;
        // A hook must never hang the shell: answer within a second or not at all.
        conn.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        protocol::send(&conn, &Request::Hint { command: command.to_string() }, &[])?;
        protocol::recv::<Response>(&conn)?.map(|(r, _)| r).ok_or_else(|| anyhow::anyhow!("no answer"))
    })();
    let Ok(Response::Done(text)) = answer else { return ExitCode::from(1) };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("versions ") {
            let mut words = rest.split(' ');
            let base = words.next().unwrap_or_default();
            let offered: Vec<String> = words.map(|v| format!("{base}@{v}")).collect();
            eprintln!("odfs: the catalog offers {} (a .odfs.toml [pins] entry picks one per project; odfs show {base})", offered.join(", "));
            continue;
        }
        let mut f = line.splitn(3, ' ');
        match (f.next(), f.next(), f.next()) {
            (Some("catalog"), Some(image), _) => eprintln!(
                "odfs: {command} is served by odfs (image {image}) at {}; add it to the end of PATH: . /etc/profile.d/odfs.sh",
                mount.join(command).display()
            ),
            (Some(image), Some(path), None) => eprintln!(
                "odfs: {command} is in image {image} ({path}) on this machine; to use it: sudo odfs add {command} --image {image} --path {path}"
            ),
            _ => {}
        }
    }
    ExitCode::SUCCESS
}

/// One request to a running daemon, one answer.
/// `odfs restart`: ask for a successor, then wait for the daemon that
/// answered (the control socket's peer) to hand over and exit. Under
/// systemd the daemon runs its binary anew in place and answers once it
/// serves again.
fn restart(socket: &std::path::Path) -> anyhow::Result<()> {
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("daemon not reachable at {} (is `odfs mount` running?)", socket.display()))?;
    let old = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)?.pid();
    drop(conn);
    let text = match ask(socket, Request::Restart)? {
        Response::Done(text) => text,
        Response::Restarted(text) => {
            println!("{text}");
            return Ok(());
        }
        Response::Error(f) => anyhow::bail!("{f}"),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Gone, or a zombie its parent has not reaped yet.
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    while running(old) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("restart: the daemon (pid {old}) has not handed over after 60 s; see its log");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ask(socket, Request::Status).context("restart: the new daemon does not answer; see its log")?;
    println!("{text}");
    Ok(())
}

fn ask(socket: &std::path::Path, req: Request) -> anyhow::Result<Response> {
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

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let Response::Status { engine, containers: list, idle: budget, images, disk } = ask(socket, Request::Status)? else {
        anyhow::bail!("unexpected answer from the daemon")
    };
    if json {
        let rows: Vec<_> = list
            .iter()
            .map(|c| serde_json::json!({"image": c.image, "container": c.container, "state": c.state,
                                        "running_tools": c.running_tools, "idle_ms": c.idle_ms, "next": c.next,
                                        "exec_path": c.exec_path, "memory": c.memory}))
            .collect();
        let engine = serde_json::json!({"host": engine.host, "remote": engine.remote, "exec_path": engine.exec_path,
                                        "source": engine.source, "version": engine.version.as_ref().ok(),
                                        "error": engine.version.as_ref().err()});
        let images: Vec<_> = images
            .iter()
            .map(|i| serde_json::json!({"references": i.references, "id": i.id, "size": i.size, "last_used_ms": i.last_used_ms,
                                        "containers": i.containers, "needed": i.needed}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"engine": engine, "containers": rows, "idle_budget": budget, "images": images, "disk": disk}))?
        );
    } else {
        let place = if engine.remote { "remote" } else { "local" };
        let answer = engine.version.unwrap_or_else(|e| format!("NOT REACHABLE: {e}"));
        println!("engine: {} ({place}, exec path {}, from {}): {answer}", engine.host, engine.exec_path, engine.source);
        println!("idle: {budget}");
        println!("{:<16} {:<12} {:>7} {:>7} {:>9} {:<5}  {:<40} NEXT", "IMAGE", "STATE", "RUNNING", "IDLE", "MEMORY", "EXEC", "CONTAINER");
        for c in list {
            let idle = format!("{}s", c.idle_ms / 1000);
            let memory = if c.memory == 0 { "-".to_string() } else { format!("{:.1}M", c.memory as f64 / (1u64 << 20) as f64) };
            println!("{:<16} {:<12} {:>7} {:>7} {:>9} {:<5}  {:<40} {}", c.image, c.state, c.running_tools, idle, memory, c.exec_path, c.container, c.next);
        }
        println!();
        println!("disk: {disk}");
        println!("{:<14} {:>10} {:>10} {:<8} REFERENCE", "IMAGE ID", "SIZE", "LAST USED", "NEEDED");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        for i in images {
            let used = i.last_used_ms.map_or("never".to_string(), |t| format!("{}d ago", (now - t).max(0) / 86_400_000));
            let id = i.id.strip_prefix("sha256:").unwrap_or(&i.id);
            let names = if i.references.is_empty() { "(untagged)".to_string() } else { i.references.join(", ") };
            let size = format!("{:.1}M", i.size as f64 / (1u64 << 20) as f64);
            println!("{:<14} {:>10} {:>10} {:<8} {names}", &id[..id.len().min(12)], size, used, if i.needed { "catalog" } else { "-" });
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

/// A duration as `fixed(DURATION)` policies take it: 10m, 45s, 1h30m or seconds.
fn duration_secs(s: &str) -> Result<f64, String> {
    odfs::policy::humantime_secs(s).ok_or_else(|| format!("{s:?} is not a duration like 10m or 45s"))
}

/// A policy `odfs simulate` replays: the daemon's, or the clairvoyant bound.
#[derive(Debug, Clone, Copy)]
enum SimPolicy {
    Daemon(odfs::policy::Policy),
    Oracle,
}

impl std::str::FromStr for SimPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<SimPolicy, String> {
        if s.trim() == "oracle" {
            return Ok(SimPolicy::Oracle);
        }
        s.parse().map(SimPolicy::Daemon).map_err(|e: String| format!("{e} (or oracle)"))
    }
}

fn simulate(trace: &std::path::Path, mut policies: Vec<SimPolicy>, opts: &odfs::policy::sim::Options, costs: odfs::policy::Costs, json: bool) -> anyhow::Result<()> {
    use odfs::policy::{sim, Policy};
    let text = std::fs::read_to_string(trace).with_context(|| format!("cannot read trace {}", trace.display()))?;
    let calls = sim::parse_trace(&text).map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
    if policies.is_empty() {
        policies = [Policy::Fixed(0.0), Policy::Fixed(600.0), Policy::Epsilon, Policy::Histogram, Policy::Auto]
            .map(SimPolicy::Daemon)
            .into_iter()
            .chain([SimPolicy::Oracle])
            .collect();
    }
    let reports: Vec<sim::Report> = policies
        .iter()
        .map(|p| match p {
            SimPolicy::Daemon(p) => sim::simulate_with(&calls, *p, opts, &costs),
            // At fixed(10m)'s idle time, without a budget: a bound on what
            // any keep-alive of that cost could do.
            SimPolicy::Oracle => {
                let fixed = sim::simulate_with(&calls, Policy::Fixed(600.0), &sim::Options { pause_after: opts.pause_after, ..Default::default() }, &costs);
                sim::oracle(&calls, &costs, fixed.idle())
            }
        })
        .collect();
    if json {
        let rows: Vec<_> = reports
            .iter()
            .map(|r| serde_json::json!({
                "policy": r.policy, "calls": r.calls, "cold": r.cold, "paused": r.paused, "warm": r.warm,
                "starts": r.starts, "cold_pct": r.cold_pct(), "paused_pct": r.paused_pct(),
                "idle_warm_s": r.idle_warm, "idle_paused_s": r.idle_paused, "idle_s": r.idle(),
                "mean_added_latency_ms": r.mean_latency_ms(),
                "sequence_calls": r.sequence_calls, "sequence_hits": r.sequence_hits,
                "first_calls": r.first_calls, "avoidable_cold": r.avoidable_cold(), "avoidable_cold_pct": r.avoidable_cold_pct(),
                "peak_idle": r.peak_idle, "idle_active_s": r.idle_active,
                "idle_budget": opts.budget.max_idle, "pause_after_s": opts.pause_after,
            }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let pause = opts.pause_after.map_or(String::new(), |p| format!("; pause_after {}", odfs::policy::format_secs(p)));
    let budget = opts.budget.max_idle.map_or(String::new(), |n| format!("; idle budget {n}"));
    let age = opts.idle_max_age.map_or(String::new(), |a| format!("; idle_max_age {}", odfs::policy::format_secs(a)));
    println!(
        "trace {}: {} calls, {} first calls; costs cold {}s, paused {}s, warm {}s{pause}{budget}{age}",
        trace.display(),
        calls.len(),
        reports.first().map_or(0, |r| r.first_calls),
        costs.cold,
        costs.paused,
        costs.warm
    );
    println!(
        "| {:<12} | {:>6} | {:>7} | {:>9} | {:>9} | {:>6} | {:>10} | {:>13} | {:>9} | {:>12} | {:>9} |",
        "policy", "calls", "cold %", "avoid. %", "paused %", "starts", "idle all h", "idle active h", "peak idle", "mean add ms", "seq hit %"
    );
    println!("|{:-<14}|{:-<8}|{:-<9}|{:-<11}|{:-<11}|{:-<8}|{:-<12}|{:-<15}|{:-<11}|{:-<14}|{:-<11}|", "", "", "", "", "", "", "", "", "", "", "");
    for r in &reports {
        let seq = if r.sequence_calls == 0 { "-".to_string() } else { format!("{:.0} ({}/{})", r.sequence_hit_pct(), r.sequence_hits, r.sequence_calls) };
        println!(
            "| {:<12} | {:>6} | {:>7.1} | {:>9.1} | {:>9.1} | {:>6} | {:>10.2} | {:>13.2} | {:>9} | {:>12.1} | {:>9} |",
            r.policy, r.calls, r.cold_pct(), r.avoidable_cold_pct(), r.paused_pct(), r.starts, r.idle() / 3600.0, r.idle_active / 3600.0, r.peak_idle, r.mean_latency_ms(), seq
        );
    }
    Ok(())
}
