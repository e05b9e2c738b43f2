//! Admin requests on the control socket: list, add and remove commands,
//! stop, prewarm and pull. Changes to the catalog go to one CLI-managed file
//! in the last catalog directory, so live reload serves them like any edit.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::call::Caller;
use super::Daemon;
use crate::backend::ContainerBackend;
use crate::catalog::{validate_name, validate_path};
use crate::protocol::{CommandInfo, Failure, Response};

/// Name of the file `odfs add` and `odfs rm` manage.
pub const CLI_CATALOG: &str = "zz-odfs-cli.toml";

fn error(message: impl Into<String>) -> Response {
    Response::Error(Failure::with_status(message, 1))
}

/// Write the CLI catalog by rename, so the live reload never reads half of it.
fn write_cli_catalog(path: &Path, doc: &toml::Table) -> Result<(), Response> {
    let text = format!("# Managed by `odfs add`, `odfs rm` and `odfs scan --add`.\n{}", toml::to_string(doc).unwrap_or_default());
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| error(format!("cannot write {}: {e}", path.display())))
}

/// An image name for a reference: `localhost:5000/tools/jq:1.7` → `cli-tools-jq-1-7`.
fn image_name_for(reference: &str) -> String {
    let tail = reference.rsplit('/').next().unwrap_or(reference);
    let mut name: String = tail.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    name.truncate(60);
    format!("cli-{}", name.trim_matches('-'))
}

impl<B: ContainerBackend> Daemon<B> {
    pub(super) fn require_root(caller: &Caller, what: &str) -> Result<(), Response> {
        if caller.uid == 0 {
            Ok(())
        } else {
            Err(Response::Error(Failure::new(format!("{what} changes the system and needs root (sudo odfs {what} …)"))))
        }
    }

    pub(super) fn list(&self) -> Vec<CommandInfo> {
        let snapshot = self.snapshot();
        snapshot
            .commands
            .iter()
            .map(|(name, r)| CommandInfo {
                command: name.clone(),
                version: match snapshot.versions.get(name) {
                    Some(v) => {
                        let others: Vec<&str> = v.all.iter().filter(|x| **x != v.default).map(String::as_str).collect();
                        format!("{} (default; also {})", v.default, others.join(", "))
                    }
                    None => r.image.version.clone().unwrap_or_default(),
                },
                image: r.image.name.clone(),
                reference: r.image.reference.clone(),
                program: r.command.program().to_string(),
                args: r.command.args.clone(),
                network: r.image.network.as_str().to_string(),
                user: r.image.user.as_str().into(),
                keep_alive: match r.image.keep_alive {
                    crate::catalog::KeepAlive::Auto => format!("auto ({})", self.pool.policy_for(&r.image)),
                    crate::catalog::KeepAlive::Fixed(d) => humantime::format_duration(d).to_string(),
                },
                state: self.pool.shown(&r.image).as_str().to_string(),
                origin: r.command.origin.clone(),
                source: self.outbound.describe(&r.image.reference, r.image.build.as_deref()),
            })
            .collect()
    }

    fn cli_file(&self) -> Result<PathBuf, Response> {
        self.cli_catalog
            .clone()
            .ok_or_else(|| error("this mount has no catalog directory to record changes in (start it with --catalog DIR)"))
    }

    pub(super) fn add(&self, caller: &Caller, command: &str, reference: &str, path: Option<&str>) -> Response {
        if let Err(r) = Self::require_root(caller, "add") {
            return r;
        }
        if let Err(e) = validate_name(command) {
            return error(format!("add: command {e}"));
        }
        if let Some(Err(e)) = path.map(validate_path) {
            return error(format!("add: --{e}"));
        }
        if let Some(existing) = self.snapshot().get(command) {
            if !self.cli_defined(&existing.command.origin) {
                return error(format!("{command} is already defined at {} (edit that file instead)", existing.command.origin));
            }
        }
        match self.add_entries(reference, &[(command.to_string(), path.map(String::from))]) {
            Ok(file) => Response::Done(format!("{command} → {reference} (recorded in {})", file.display())),
            Err(r) => r,
        }
    }

    fn cli_defined(&self, origin: &str) -> bool {
        self.cli_catalog.as_ref().is_some_and(|f| origin.starts_with(&f.display().to_string()))
    }

    /// Record commands of one image in the CLI catalog file, by atomic rename.
    fn add_entries(&self, reference: &str, entries: &[(String, Option<String>)]) -> Result<PathBuf, Response> {
        if reference.trim().is_empty() || reference.contains(char::is_whitespace) {
            return Err(error(format!("{reference:?} is not an image reference")));
        }
        let file = self.cli_file()?;
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut doc: toml::Table = toml::from_str(&text)
            .map_err(|e| error(format!("{} is not valid TOML ({e}); fix or remove it", file.display())))?;
        let image = image_name_for(reference);
        if let Some(t) = doc.entry("image").or_insert_with(|| toml::Value::Table(Default::default())).as_table_mut() {
            let mut img = toml::Table::new();
            img.insert("ref".into(), reference.into());
            t.entry(image.clone()).or_insert(toml::Value::Table(img));
        }
        if let Some(t) = doc.entry("command").or_insert_with(|| toml::Value::Table(Default::default())).as_table_mut() {
            for (command, path) in entries {
                let mut cmd = toml::Table::new();
                cmd.insert("image".into(), image.clone().into());
                if let Some(p) = path {
                    cmd.insert("path".into(), p.clone().into());
                }
                t.insert(command.clone(), toml::Value::Table(cmd));
            }
        }
        write_cli_catalog(&file, &doc)?;
        Ok(file)
    }

    pub(super) async fn scan(&self, caller: &Caller, reference: &str, add: bool) -> Response {
        // Root's, as the other admin requests: each scan exports a whole
        // image (disk and time), and it would list what any local image
        // holds, private ones included, to whoever asks.
        if caller.uid != 0 {
            return Response::Error(Failure::new(format!(
                "scan reads any local image, private ones too, and needs root (sudo odfs scan {reference}{})",
                if add { " --add" } else { "" }
            )));
        }
        // Always scanned afresh (the image may have been rebuilt), and the
        // index the command-not-found hook reads is refreshed with it.
        let paths = match self.pool.executables(reference).await {
            Ok(p) => p,
            Err(e) => return error(format!("scan {reference}: {e}")),
        };
        self.index.insert(reference.to_string(), paths.clone());
        let mut text = paths.join("\n");
        if add {
            let snapshot = self.snapshot();
            let entries: Vec<(String, Option<String>)> = paths
                .iter()
                .filter_map(|p| {
                    let name = p.rsplit('/').next()?.to_string();
                    let free = snapshot.get(&name).is_none_or(|e| self.cli_defined(&e.command.origin));
                    (validate_name(&name).is_ok() && free).then(|| (name, Some(p.clone())))
                })
                .collect();
            if let Err(r) = self.add_entries(reference, &entries) {
                return r;
            }
            text.push_str(&format!(
                "\nadded {} command(s); {} already defined elsewhere were left as they are",
                entries.len(),
                paths.len() - entries.len()
            ));
        }
        Response::Done(text)
    }

    /// Executables of an image, from the index or scanned (and indexed).
    async fn indexed_executables(&self, image: &str) -> Result<Vec<String>, crate::daemon::call::PoolError> {
        if let Some(paths) = self.index.get(image) {
            return Ok(paths.clone());
        }
        let paths = self.pool.executables(image).await?;
        self.index.insert(image.to_string(), paths.clone());
        Ok(paths)
    }

    /// The indexed images that have `command` on their PATH, as `IMAGE PATH`
    /// lines. For any user but root, only images the catalog names: the
    /// machine's other images may be someone's own.
    fn providers(&self, command: &str, caller: &Caller) -> Vec<String> {
        let listed: std::collections::HashSet<String> = self.snapshot().commands.values().map(|e| e.image.reference.clone()).collect();
        let mut lines: Vec<String> = self
            .index
            .iter()
            .filter(|e| caller.uid == 0 || listed.contains(e.key()))
            .flat_map(|e| {
                let image = e.key().clone();
                e.value().iter().filter(|p| p.rsplit('/').next() == Some(command)).map(move |p| format!("{image} {p}")).collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        lines
    }

    /// What a command's tool sees of the host: the view of its container,
    /// or the one it would get now.
    pub(super) async fn view(&self, command: &str, caller: &Caller) -> Response {
        let snapshot = self.snapshot();
        let Some(entry) = snapshot.get(command).cloned() else {
            return error(format!("{command} is not in the catalog (odfs ls lists what is)"));
        };
        let version = match snapshot.versions.get(command) {
            None => String::new(),
            Some(v) => {
                let cwd = match self.local_cwd(caller) {
                    Ok(c) => c,
                    Err(f) => return Response::Error(f),
                };
                let (choice, ignored) = match self.choose_pin(&cwd, command, caller).await {
                    Ok(chosen) => chosen,
                    Err(f) => return Response::Error(f),
                };
                let passed: String = ignored.iter().map(|i| format!("; {} ignored: {}", i.file.display(), i.why)).collect();
                match choice {
                    super::pins::Choice::Default => format!("{} in {}: the catalog's default (it has {}){passed}", v.default, cwd.display(), v.all.join(", ")),
                    super::pins::Choice::Pinned { file, version } if v.all.contains(&version) => {
                        format!("{version} in {}: pinned by {} (the default is {}; it has {}){passed}", cwd.display(), file.display(), v.default, v.all.join(", "))
                    }
                    super::pins::Choice::Pinned { file, version } => {
                        format!("none in {}: {} pins {version}, which the catalog does not offer (it has {}){passed}", cwd.display(), file.display(), v.all.join(", "))
                    }
                }
            }
        };
        let view = match self.pool.view_of(&entry.image).await {
            Ok(v) => v,
            Err(e) => return error(format!("cannot tell what image {} has: {e}", entry.image.name)),
        };
        let remote = self.pool.reach().remote();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let shown = |p: &PathBuf| p.display().to_string();
        let image = self.pool.host_top().iter().map(|n| PathBuf::from("/").join(n)).filter(|p| !view.sees_host(p)).map(|p| shown(&p)).collect();
        Response::View(crate::protocol::ViewInfo {
            host: view.host.iter().map(shown).collect(),
            image: if remote { vec![] } else { image },
            filled: view.filled.iter().map(|f| format!("/{f}")).collect(),
            private: if remote { vec![] } else { view.host.iter().filter(|p| !crate::view::follows_host(&mountinfo, p)).map(shown).collect() },
            remote,
            namespaces: namespaces_line(&entry.image, remote),
            environment: environment_line(&entry, &self.pool.inner().mountpoint, &self.outbound),
            version,
            devices: devices_line(&entry.image),
        })
    }

    pub(super) async fn provides(&self, command: &str, caller: &Caller) -> Response {
        let images = match self.pool.local_images().await {
            Ok(i) => i,
            Err(e) => return error(e.to_string()),
        };
        // Forget images that are gone; scan the new ones, for root only:
        // each scan exports a whole image, as `odfs scan` does.
        self.index.retain(|k, _| images.contains(k));
        if caller.uid == 0 {
            for image in images {
                if let Err(e) = self.indexed_executables(&image).await {
                    tracing::debug!(image, "cannot scan: {e}");
                }
            }
        }
        let lines = self.providers(command, caller);
        if lines.is_empty() {
            error(format!("no image on this machine has {command} on its PATH"))
        } else {
            Response::Done(lines.join("\n"))
        }
    }

    /// `provides` from the index alone: never waits on the engine.
    pub(super) fn hint(&self, command: &str, caller: &Caller) -> Response {
        let snapshot = self.snapshot();
        // The versions the catalog offers of this name (or of `NAME@V`'s).
        let base = command.split_once('@').map_or(command, |(b, _)| b);
        let versions = snapshot.versions.get(base).map(|v| format!("versions {base} {}", v.all.join(" ")));
        if let Some(e) = snapshot.get(command) {
            let lines: Vec<String> = std::iter::once(format!("catalog {} {}", e.image.reference, e.command.program())).chain(versions).collect();
            return Response::Done(lines.join("\n"));
        }
        if let Some(v) = versions {
            return Response::Done(v);
        }
        let lines = self.providers(command, caller);
        if lines.is_empty() {
            error(format!("no indexed image has {command}"))
        } else {
            Response::Done(lines.join("\n"))
        }
    }

    pub(super) fn remove(&self, caller: &Caller, command: &str) -> Response {
        if let Err(r) = Self::require_root(caller, "rm") {
            return r;
        }
        let file = match self.cli_file() {
            Ok(f) => f,
            Err(r) => return r,
        };
        let Some(existing) = self.snapshot().get(command).cloned() else {
            return error(format!("{command} is not in the catalog"));
        };
        if !self.cli_defined(&existing.command.origin) {
            return error(format!("{command} is defined at {} (remove it there; odfs rm removes only what odfs add added)", existing.command.origin));
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut doc: toml::Table = toml::from_str(&text).unwrap_or_default();
        if let Some(t) = doc.get_mut("command").and_then(|c| c.as_table_mut()) {
            t.remove(command);
        }
        match write_cli_catalog(&file, &doc) {
            Ok(()) => Response::Done(format!("{command} removed")),
            Err(r) => r,
        }
    }

    /// `odfs restart`: start a successor with this daemon's command line (the
    /// binary at its path now, so an upgrade takes effect), detached from
    /// this process; it takes the mount over through the takeover socket.
    pub(super) fn restart(&self, caller: &Caller) -> Response {
        use std::os::unix::process::CommandExt;
        if let Err(r) = Self::require_root(caller, "restart") {
            return r;
        }
        let Some((exe, args)) = self.relaunch.split_first() else { return error("this daemon's command line is unknown".to_string()) };
        let mut cmd = std::process::Command::new(exe);
        cmd.args(args).stdin(std::process::Stdio::null()).process_group(0);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                // Reaped by a thread of its own: it outlives this daemon.
                std::thread::spawn(move || drop(child.wait_with_output()));
                Response::Done(format!("pid {pid} takes the mount over from pid {}", std::process::id()))
            }
            Err(e) => error(format!("cannot start {}: {e}", exe.to_string_lossy())),
        }
    }

    pub(super) async fn stop(&self, caller: &Caller, command: Option<&str>, force: bool) -> Response {
        if let Err(r) = Self::require_root(caller, "stop") {
            return r;
        }
        let snapshot = self.snapshot();
        let images: Vec<_> = match command {
            Some(c) => match snapshot.get(c) {
                Some(r) => vec![r.image.clone()],
                None => return error(format!("{c} is not in the catalog")),
            },
            // Every profile, also those the catalog no longer names.
            None => self.pool.profiles(),
        };
        let (mut stopped, mut busy) = (Vec::new(), Vec::new());
        for image in images {
            match self.pool.stop(&image, force).await {
                Ok(true) => stopped.push(image.name.clone()),
                Ok(false) => {}
                Err(e @ super::call::PoolError::Busy { .. }) if command.is_none() => busy.push(e.to_string()),
                Err(e) => return error(e.to_string()),
            }
        }
        let mut text = if stopped.is_empty() { "nothing was running".to_string() } else { format!("stopped: {}", stopped.join(", ")) };
        if busy.is_empty() {
            return Response::Done(text);
        }
        for b in busy {
            text += &format!("\nleft: {b}");
        }
        error(text)
    }

    pub(super) async fn prewarm(&self, caller: &Caller, command: &str, client: &UnixStream) -> Response {
        let Some(entry) = self.snapshot().get(command).cloned() else {
            return error(format!("{command} is not in the catalog"));
        };
        // Starting the container is a use of the image: those its
        // allow_groups leave out may not make it hold its capabilities.
        if let Err(f) = self.authorize(&entry, caller) {
            return error(format!("prewarm {command}: {}; only members of those groups may start its container", f.message));
        }
        match self.with_progress(client, &entry.image, self.pool.warm_up(&entry.image, None)).await {
            Ok(()) => Response::Done(format!("{command}: container of image {} is {}", entry.image.name, self.pool.shown(&entry.image).as_str())),
            Err(e) => error(format!("{command}: {e}")),
        }
    }

    /// `odfs pull`: fetch the images of these commands (all when empty),
    /// with progress frames to the client as a call would get.
    pub(super) async fn pull(&self, caller: &Caller, commands: &[String], client: &UnixStream) -> Response {
        if let Err(r) = Self::require_root(caller, "pull") {
            return r;
        }
        let images = match self.images_of(commands) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let mut lines = Vec::new();
        let mut failed = false;
        for image in images {
            let r = &image.reference;
            match self.with_progress(client, &image, self.pool.pull(&image)).await {
                Ok(true) => lines.push(format!("{r}: fetched")),
                Ok(false) => lines.push(format!("{r}: present")),
                Err(e) => {
                    failed = true;
                    lines.push(format!("{r}: {e}"));
                }
            }
        }
        if failed {
            Response::Error(Failure::with_status(lines.join("\n"), 1))
        } else {
            Response::Done(lines.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::image_name_for;

    #[test]
    fn image_names_for_references_are_catalog_safe() {
        assert_eq!(image_name_for("localhost:5000/tools/jq:1.7"), "cli-jq-1-7");
        assert_eq!(image_name_for("odfs-test/busybox:latest"), "cli-busybox-latest");
        crate::catalog::validate_name(&image_name_for("a/b/c@sha256:abc")).unwrap();
    }
}

/// `odfs show`'s line on whose processes, IPC and host name a tool has.
fn namespaces_line(image: &crate::catalog::ImageSpec, remote: bool) -> String {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if remote {
        "the container's own processes and IPC (a remote engine)".into()
    } else if crate::view::shares_host_namespaces(image.host_namespaces(), &mountinfo) {
        "the host's processes (ps, kill, strace -p act as the caller may), System V IPC and shared memory, and host name".into()
    } else if image.host_namespaces() {
        "the container's own processes and IPC (this host's /proc hides other users' processes); the host's name".into()
    } else if image.pid == Some(crate::catalog::PidMode::Private) {
        "the container's own processes and IPC (pid = \"private\"); the host's name".into()
    } else {
        "the container's own processes and IPC (its tools run as root or hold a capability that reaches other users' processes); the host's name"
            .into()
    }
}

/// `odfs show`'s line on which of the caller's environment a tool gets
/// (see [`super::exec::tool_env`]).
fn environment_line(entry: &crate::catalog::Resolved, mountpoint: &std::path::Path, site: &crate::backend::outbound::Outbound) -> String {
    let path = format!("PATH is the image's, then {}", mountpoint.display());
    let privileged = entry.image.user == crate::catalog::RunAs::Root || !entry.image.cap_add.is_empty();
    let mut line = if privileged {
        let extra = if entry.command.env.is_empty() { String::new() } else { format!(", {}", entry.command.env.join(" ")) };
        format!("for callers other than root, an allowlist (the tool holds privileges they lack): TERM, the locale, TZ, HOME, USER and the like{extra}; never a loader or interpreter variable; {path}")
    } else {
        format!("the caller's, as it is; {path}")
    };
    line += match (entry.image.gui, privileged) {
        (false, _) => "; no display (DISPLAY, WAYLAND_DISPLAY, XAUTHORITY, PULSE_SERVER are kept out: the image is not graphical)",
        (true, false) => "; the caller's display and sound (a graphical image)",
        (true, true) => "; the caller's display as a number only (a graphical image whose tools hold privileges)",
    };
    if entry.image.network != crate::catalog::Network::None && !site.tool_env(true).is_empty() {
        line += "; the site's proxy and CA bundle where the caller sets none";
    }
    line
}

/// `odfs show`'s line on the devices and GPUs a tool gets.
fn devices_line(image: &crate::catalog::ImageSpec) -> String {
    let mut parts: Vec<String> = image.devices.iter().map(|d| d.to_string()).collect();
    parts.extend(image.gpus.as_ref().map(|g| format!("GPUs ({})", g.describe())));
    if parts.is_empty() {
        return String::new();
    }
    format!("{} (access by the caller's groups, as natively)", parts.join(", "))
}
