//! `odfs doctor`: the checks a user can run from their side, each a line.

use odfs::protocol::{Request, Response};

use super::ask;

/// The lines of a doctor run, and how many said FAIL.
#[derive(Default)]
struct Checks {
    broken: usize,
}

impl Checks {
    /// `ok`: `Some(true)` passes, `Some(false)` fails, `None` is a note.
    fn report(&mut self, ok: Option<bool>, what: String) {
        let tag = match ok {
            Some(true) => "ok  ",
            Some(false) => {
                self.broken += 1;
                "FAIL"
            }
            None => "note",
        };
        println!("{tag} {what}");
    }
}

/// Checks from the user's side; exit status 1 when something is broken.
pub(crate) fn doctor(socket: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut checks = Checks::default();
    checks.report(Some(std::path::Path::new("/dev/fuse").exists()), "FUSE device /dev/fuse".into());
    let remote = engine(&mut checks, socket, config)?;
    let commands = match ask(socket, Request::List) {
        Ok(Response::Commands(c)) => {
            checks.report(Some(true), format!("daemon at {} serves {} commands", socket.display(), c.len()));
            c
        }
        _ => {
            checks.report(Some(false), format!("daemon not reachable at {} (odfs mount, or systemctl start odfs)", socket.display()));
            vec![]
        }
    };
    let mounts = mounts(&mut checks);
    if !remote {
        view(&mut checks);
    }
    // Version pin files from here up that would be passed over, and why.
    if let Ok(cwd) = std::env::current_dir() {
        let uid = nix::unistd::getuid().as_raw();
        for i in odfs::daemon::pins::Pins::default().choose(&cwd, "", uid).1 {
            checks.report(Some(false), format!("{} is ignored: it is {} (a pin file must be the caller's or root's, and writable by no one else)", i.file.display(), i.why));
        }
    }
    path(&mut checks, &mounts, &commands);
    if checks.broken > 0 {
        anyhow::bail!("{} check(s) failed", checks.broken);
    }
    Ok(())
}

/// The running daemon's engine (without a daemon, the one it would use),
/// each container's exec path, and the site's proxy. Whether the engine is
/// remote.
fn engine(checks: &mut Checks, socket: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<bool> {
    let (engine, containers) = match ask(socket, Request::Status) {
        Ok(Response::Status { engine, containers, archive, .. }) => {
            for (ok, line) in archive {
                checks.report(ok, line);
            }
            (engine, containers)
        }
        _ => {
            let e = odfs::config::engine(None, config).map_err(|e| anyhow::anyhow!(e))?;
            let client = odfs::backend::any::AnyEngine::new(e, None);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            (rt.block_on(odfs::backend::ContainerBackend::engine_info(&client)), vec![])
        }
    };
    let place = if engine.remote { "remote" } else { "local" };
    match &engine.version {
        Ok(v) => checks.report(Some(true), format!("container engine {} ({place}, {v}, from {}): calls take the {} path", engine.host, engine.source, engine.exec_path.as_str())),
        Err(e) => checks.report(Some(false), format!("container engine {} ({place}, from {}): {e}", engine.host, engine.source)),
    }
    if let Some(socket) = engine.host.strip_prefix("cri+unix://") {
        if let Some(pid) = odfs::backend::cri::kubelet::managing(std::path::Path::new(socket)) {
            checks.report(Some(false), odfs::backend::cri::kubelet::refusal(std::path::Path::new(socket), pid));
        }
    }
    if engine.version.is_ok() {
        // The default runtime works; the faster one is advice, not a fault.
        checks.report(None, format!("OCI runtime: {}", engine.runtime));
    }
    for c in &containers {
        checks.report(None, format!("image {} ({}): exec path {}", c.image, c.state.as_str(), c.exec_path.as_str()));
    }
    // The site's proxy reaches builds and tools; pulls are the engine's own.
    if let Ok(e) = odfs::config::engine(None, config) {
        let site = e.outbound.https_proxy.clone().or(e.outbound.http_proxy.clone());
        if let (Some(site), false, false) = (site, engine.remote, e.is_cri()) {
            let docker = odfs::backend::docker::Docker::with_engine(e);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match rt.block_on(docker.engine_proxy()) {
                Ok(Some(p)) => checks.report(Some(true), format!("the engine pulls through the proxy {p}; builds and networked tools get {site}")),
                Ok(None) => checks.report(None, format!(
                    "builds and networked tools get the proxy {site}, but the engine pulls without one: set HTTPS_PROXY in its service's environment, or name registry_mirrors"
                )),
                Err(_) => {}
            }
        }
    }
    Ok(engine.remote)
}

/// Mounts of odfs in this namespace; a dead one answers ENOTCONN.
fn mounts(checks: &mut Checks) -> Vec<String> {
    let mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("odfs ") || l.split_whitespace().nth(2) == Some("fuse.odfs"))
        .filter_map(|l| l.split_whitespace().nth(1).map(|m| m.replace("\\040", " ")))
        .collect();
    for m in &mounts {
        match std::fs::read_dir(m) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                checks.report(Some(false), format!("stale mount at {m}: its daemon died (restarting odfs clears it, or umount -l {m})"))
            }
            _ => checks.report(Some(true), format!("mount at {m}")),
        }
    }
    mounts
}

/// What of the host tools see, and whether later host mounts reach them.
fn view(checks: &mut Checks) {
    let top = odfs::view::host_top_level(std::path::Path::new("/"));
    let (image, host): (Vec<String>, Vec<String>) = top.into_iter().map(|n| format!("/{n}")).partition(|p| odfs::view::IMAGE_OWNED.contains(&&p[1..]));
    checks.report(None, format!(
        "tools see the host's {} {} at the same paths (but a top-level directory an image fills; odfs show CMD tells); the image keeps {} read-only",
        host.join(" "),
        odfs::view::HOST_INSIDE_IMAGE.join(" "),
        image.join(" ")
    ));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let private: Vec<&str> = host.iter().filter(|p| !odfs::view::follows_host(&mountinfo, std::path::Path::new(p))).map(String::as_str).collect();
    if private.is_empty() {
        checks.report(Some(true), "host mounts are shared: mounts and unmounts on the host reach running tools".into());
    } else {
        checks.report(Some(false), format!(
            "host mounts holding {} are private: later mounts and submounts there do not reach tools (mount --make-rshared /, as systemd does at boot)",
            private.join(" ")
        ));
    }
}

/// Where the mount is on PATH, and the catalog's commands installed
/// natively (they run natively).
fn path(checks: &mut Checks, mounts: &[String], commands: &[odfs::protocol::CommandInfo]) {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path.split(':').filter(|d| !d.is_empty()).collect();
    match dirs.iter().position(|d| mounts.iter().any(|m| m == d)) {
        Some(i) if i + 1 == dirs.len() => checks.report(Some(true), format!("{} is last on PATH: installed tools win", dirs[i])),
        Some(i) => checks.report(None, format!("{} is on PATH before {}: shims hide installed tools there", dirs[i], dirs[i + 1..].join(":"))),
        None => checks.report(None, "no odfs mount on PATH (source /etc/profile.d/odfs.sh, or log in again)".into()),
    }
    let shadowed: Vec<String> = commands
        .iter()
        .filter(|c| dirs.iter().filter(|d| !mounts.iter().any(|m| m == *d)).any(|d| std::path::Path::new(d).join(&c.command).exists()))
        .map(|c| c.command.clone())
        .collect();
    if !shadowed.is_empty() {
        checks.report(None, format!("{} catalog command(s) are installed natively and run natively: {}", shadowed.len(), shadowed.join(" ")));
    }
}
