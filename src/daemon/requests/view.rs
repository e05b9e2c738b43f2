//! `odfs show`: what a command's tool sees of the host (the view of its
//! container, or the one it would get now), and which version a call from
//! the caller's directory would run.

use std::path::PathBuf;

use super::{failed, Answer};
use crate::backend::ContainerBackend;
use crate::daemon::call::Caller;
use crate::daemon::pins::Choice;
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn view(&self, caller: &Caller, command: &str) -> Answer {
        let snapshot = self.snapshot();
        let Some(entry) = snapshot.get(command) else {
            return Err(failed(format!("{command} is not in the catalog (odfs ls lists what is)")));
        };
        let version = match snapshot.versions.get(command) {
            None => String::new(),
            Some(v) => {
                let cwd = self.local_cwd(caller)?;
                let (choice, ignored) = self.choose_pin(&cwd, command, caller).await?;
                let passed: String = ignored.iter().map(|i| format!("; {} ignored: {}", i.file.display(), i.why)).collect();
                match choice {
                    Choice::Default => format!("{} in {}: the catalog's default (it has {}){passed}", v.default, cwd.display(), v.all.join(", ")),
                    Choice::Pinned { file, version } if v.all.contains(&version) => {
                        format!("{version} in {}: pinned by {} (the default is {}; it has {}){passed}", cwd.display(), file.display(), v.default, v.all.join(", "))
                    }
                    Choice::Pinned { file, version } => {
                        format!("none in {}: {} pins {version}, which the catalog does not offer (it has {}){passed}", cwd.display(), file.display(), v.all.join(", "))
                    }
                }
            }
        };
        let package = snapshot.archive.as_ref().filter(|_| entry.image.package.is_some()).and_then(|a| a.describe(command)).unwrap_or_default();
        if entry.image.package.is_some() && self.pool.backend().image_id(&entry.image.reference).await.ok().flatten().is_none() {
            return Ok(Response::View(crate::protocol::ViewInfo { package, unfetched: true, ..Default::default() }));
        }
        let view = self.pool.view_of(&entry.image).await.map_err(|e| failed(format!("cannot tell what image {} has: {e}", entry.image.name)))?;
        let remote = self.pool.reach().remote();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let shown = |p: &PathBuf| p.display().to_string();
        let image = self.pool.host_top().iter().map(|n| PathBuf::from("/").join(n)).filter(|p| !view.sees_host(p)).map(|p| shown(&p)).collect();
        Ok(Response::View(crate::protocol::ViewInfo {
            host: view.host.iter().map(shown).collect(),
            image: if remote { vec![] } else { image },
            filled: view.filled.iter().map(|f| format!("/{f}")).collect(),
            private: if remote { vec![] } else { view.host.iter().filter(|p| !crate::view::follows_host(&mountinfo, p)).map(shown).collect() },
            remote,
            namespaces: namespaces_line(&entry.image, remote),
            environment: environment_line(&entry, &self.pool.inner().mountpoint, &self.outbound),
            version,
            devices: devices_line(&entry.image),
            package,
            unfetched: false,
        }))
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
/// (see [`crate::daemon::exec::tool_env`]).
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
