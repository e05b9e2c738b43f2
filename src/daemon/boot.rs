//! A start's first phase: the binaries and directories checked, the
//! catalog loaded, the state database opened, the pool made and taught the
//! history, and the daemon and its file system built. Nothing here mounts
//! or listens: [`super::inherit`] decides how the mount is had, and
//! [`super::server`] serves it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use super::pool::{self, Pool, PoolConfig};
use super::reload::{catalog_fingerprint, Fingerprint, FsHooks};
use super::{requests, stamps, Daemon};
use crate::backend::any::AnyEngine;
use crate::backend::ContainerBackend;
use crate::catalog::{self, Catalog, Snapshot, Store};
use crate::config::DaemonConfig;
use crate::fs::{Requester, ShimFs};

/// The configuration made whole (absolute launcher, the site's CA bundle
/// shared), the binaries checked, the directories made; and the shim text.
pub(super) fn prepare(cfg: DaemonConfig) -> anyhow::Result<(DaemonConfig, Vec<u8>)> {
    // The shims' `#!` line names the launcher: the kernel resolves a
    // relative one against each caller's cwd, where it is not.
    let mut cfg = DaemonConfig { launcher: std::path::absolute(&cfg.launcher)?, ..cfg };
    // The site's CA bundle is named to networked tools at its host path:
    // shared at that path even under an image-owned directory (/etc/ssl).
    if let Some(ca) = cfg.engine.outbound.ca_bundle.clone().filter(|ca| !cfg.view.share.contains(ca)) {
        cfg.view.share.push(ca);
    }
    check_binaries(&cfg)?;
    let text = shim_text(&cfg)?;
    create_state_dir(&cfg.state_dir).with_context(|| format!("cannot create {}", cfg.state_dir.display()))?;
    std::fs::create_dir_all(&cfg.run_dir).with_context(|| format!("cannot create {}", cfg.run_dir.display()))?;
    std::fs::set_permissions(&cfg.run_dir, std::fs::Permissions::from_mode(0o755))?;
    if let Some(parent) = cfg.socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let containers_dir = containers_dir(&cfg);
    std::fs::create_dir_all(&containers_dir)?;
    std::fs::set_permissions(&containers_dir, std::fs::Permissions::from_mode(0o700))?;
    Ok((cfg, text))
}

/// The containers' run directories: root's alone.
fn containers_dir(cfg: &DaemonConfig) -> PathBuf {
    cfg.run_dir.join("containers")
}

/// The catalog, and the fingerprint of its files taken before it was read
/// (an edit made while we load or mount is then seen by the first poll
/// instead of being lost). A catalog directory or file that cannot be read
/// stops the start: a mount without its commands would look like a catalog
/// without them.
pub(super) fn load_catalog(cfg: &DaemonConfig) -> anyhow::Result<(Fingerprint, Catalog)> {
    let unreadable = |e: catalog::Unreadable| anyhow::anyhow!("mount: {e}; create it or make it readable, or leave it out of --catalog");
    let fingerprint = catalog_fingerprint(&cfg.catalogs, &cfg.state_dir).map_err(unreadable)?;
    let (catalog, errors) = catalog::load_dirs(&cfg.catalogs).map_err(unreadable)?;
    for e in &errors {
        tracing::error!("catalog: {e} (file skipped)");
    }
    Ok((fingerprint, catalog))
}

/// The state database, told the catalog, and the catalog as served.
pub(super) fn open_store(cfg: &DaemonConfig, catalog: &Catalog) -> anyhow::Result<(Store, Arc<Snapshot>)> {
    let store = Store::open(&cfg.state_dir.join("odfs.db")).context("cannot open the state database")?;
    store.save_catalog(catalog);
    let snapshot = Arc::new(super::reload::served(catalog, &cfg.state_dir));
    tracing::info!(commands = snapshot.commands.len(), images = snapshot.images.len(), "catalog loaded");
    Ok((store, snapshot))
}

/// A mountpoint of our own: a crashed daemon's stale mount cleared, the
/// directory made. Not for an inherited mount, which is not served until
/// this process serves it (a look at it now would wait on ourselves).
pub(super) fn fresh_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    if crate::fuse::clear_stale_mount(mountpoint)? {
        tracing::warn!(mountpoint = %mountpoint.display(), "cleared a stale mount left by a crashed daemon");
    }
    std::fs::create_dir_all(mountpoint).with_context(|| format!("cannot create {}", mountpoint.display()))
}

/// The pool on the configured engine, told the catalog's profiles.
pub(super) fn pool(cfg: &DaemonConfig, mountpoint: &Path, store: &Store, catalog: &Catalog) -> anyhow::Result<Pool<AnyEngine>> {
    tracing::info!(engine = cfg.engine.describe(), "container engine");
    let agent = std::fs::canonicalize(&cfg.agent)?;
    let engine = AnyEngine::new(cfg.engine.clone(), Some(agent.clone()));
    if let Some(line) = match &engine {
        AnyEngine::Cri(cri) => cri.kubelet_refusal(),
        AnyEngine::Docker(_) => None,
    } {
        anyhow::bail!(line);
    }
    let pool = Pool::new(
        Arc::new(engine),
        PoolConfig {
            mount_id: mount_id(mountpoint, !cfg.engine.is_local()),
            run_dir: containers_dir(cfg),
            agent,
            view: cfg.view.clone(),
            policy: cfg.policy,
            costs: crate::policy::Costs::default(),
            idle: cfg.idle.clone(),
            inner: pool::InnerCalls { mountpoint: mountpoint.to_path_buf(), launcher: cfg.launcher.clone(), socket: cfg.socket.clone() },
        },
        Some(store.clone()),
    );
    pool.catalog_is(catalog.images.values(), catalog.archive.is_some());
    Ok(pool)
}

/// The daemon, with what it learned from earlier runs (`transitions`)
/// and the stamps key it inherited (`secret`).
pub(super) fn daemon<B: ContainerBackend>(
    cfg: &DaemonConfig,
    mountpoint: &Path,
    pool: Pool<B>,
    store: Store,
    snapshot: Arc<Snapshot>,
    transitions: crate::policy::predict::Transitions,
    secret: Option<[u8; 32]>,
) -> Arc<Daemon<B>> {
    let daemon = Arc::new(Daemon {
        pool,
        state_dir: cfg.state_dir.clone(),
        brought: Default::default(),
        questions: Default::default(),
        refreshing: Default::default(),
        cli_catalog: cfg.catalogs.last().map(|d| d.join(requests::cli_catalog::CLI_CATALOG)),
        transitions: std::sync::Mutex::new(transitions),
        snapshot: RwLock::new(snapshot.clone()),
        store,
        index: Default::default(),
        remote_notices: Default::default(),
        stamps: secret.map_or_else(stamps::Stamps::new, stamps::Stamps::with_secret),
        tasks: tokio_util::task::TaskTracker::new(),
        pins: Default::default(),
        outbound: cfg.engine.outbound.clone(),
        gc: cfg.gc.clone(),
        image_usage: Default::default(),
        docs: super::docs::Docs::new(crate::share::share_dir(mountpoint, cfg.share_dir.as_deref()), &cfg.state_dir),
        relaunch: relaunch_command(),
        in_place: Default::default(),
    });
    // Before the mount lists a command: `man` and completion answer at once.
    daemon.docs.restore(&snapshot);
    daemon
}

/// The shims' file system, listing the catalog's commands; and where it
/// tells of each shim opened (a prewarm).
pub(super) fn shim_fs<B: ContainerBackend>(daemon: &Arc<Daemon<B>>, text: Vec<u8>) -> (Arc<ShimFs>, mpsc::UnboundedReceiver<(String, Requester)>) {
    let (prewarm_tx, prewarm_rx) = mpsc::unbounded_channel();
    let fs = Arc::new(ShimFs::new(text, Box::new(FsHooks { daemon: Arc::downgrade(daemon), prewarm: prewarm_tx })));
    fs.set_commands(daemon.snapshot().listed());
    (fs, prewarm_rx)
}

/// Calls an earlier run recorded in `odfs.db`, fed to the pool (each
/// profile's history) and to a fresh sequence model, so a restart keeps what
/// was learned. Calls of images no longer in the catalog are left out.
pub(super) fn learn_from_earlier_runs<B: ContainerBackend>(
    pool: &Pool<B>,
    store: &Store,
    snapshot: &Snapshot,
) -> crate::policy::predict::Transitions {
    let mut transitions = crate::policy::predict::Transitions::default();
    let past = match store.recent_calls(HISTORY_ON_START) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot read the call history: {e}");
            return transitions;
        }
    };
    let wall_now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let now = pool.now();
    let known: Vec<_> = past.into_iter().filter_map(|p| Some((snapshot.images.get(&p.image)?.clone(), p))).collect();
    for (_, p) in &known {
        let at = now - (wall_now_ms - p.started_ms) as f64 / 1000.0;
        let session = p.session.map_or_else(|| "unknown".to_string(), |s| s.to_string());
        transitions.observe(&session, &p.command, at);
    }
    pool.seed(&known, wall_now_ms);
    tracing::info!(calls = known.len(), "history of earlier runs loaded");
    transitions
}

/// Calls read back from `odfs.db` at start-up.
const HISTORY_ON_START: usize = 20_000;

/// A stable short id for a mountpoint: names and labels of its containers.
///
/// On a remote engine, which several hosts may share, the host name is part
/// of it: two hosts mounting the same path must not adopt or remove each
/// other's containers.
pub fn mount_id(mountpoint: &std::path::Path, remote: bool) -> String {
    use sha2::{Digest, Sha256};
    let mut key = mountpoint.as_os_str().as_encoded_bytes().to_vec();
    if remote {
        key.push(0);
        key.extend(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().as_bytes());
    }
    let h = Sha256::digest(&key);
    h.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The shim text: `#!LAUNCHER SOCKET`. The kernel reads at most 256 bytes of
/// it and splits the interpreter from its one argument at the first blank.
fn shim_text(cfg: &DaemonConfig) -> anyhow::Result<Vec<u8>> {
    let launcher = cfg.launcher.to_string_lossy();
    if launcher.contains(char::is_whitespace) {
        bail!("the launcher path {launcher:?} contains a blank, which a #! line cannot hold");
    }
    let text = format!("#!{} {}\n", launcher, cfg.socket.display());
    if text.len() > 255 {
        bail!("the shim line {text:?} is longer than the kernel's 255-byte #! limit (use shorter --socket or launcher paths)");
    }
    Ok(text.into_bytes())
}

/// Whether an ELF file asks for a dynamic loader (PT_INTERP). The agent must
/// not: it runs in images that have no libc at all.
fn needs_loader(path: &std::path::Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    let bad = || std::io::Error::other("not a 64-bit ELF file");
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let kind = data.get(o..o + 4).ok_or_else(bad)?;
        if u32::from_le_bytes(kind.try_into().unwrap()) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn check_binaries(cfg: &DaemonConfig) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let launcher = std::fs::metadata(&cfg.launcher).with_context(|| format!("launcher {}", cfg.launcher.display()))?;
    if launcher.mode() & 0o001 == 0 {
        bail!("launcher {} is not executable by every user (chmod 755 it)", cfg.launcher.display());
    }
    // Tools run other tools through the launcher, inside images that may
    // have no libc or another one.
    if needs_loader(&cfg.launcher).unwrap_or(false) {
        tracing::warn!(
            launcher = %cfg.launcher.display(),
            "the launcher is dynamically linked: tools in images without a matching libc cannot run other odfs tools (build it static: scripts/build)"
        );
    }
    match needs_loader(&cfg.agent) {
        Ok(false) => Ok(()),
        Ok(true) => bail!(
            "agent {} is dynamically linked and cannot run in images without libc; build it static (scripts/build)",
            cfg.agent.display()
        ),
        Err(e) => bail!("agent {}: {e}", cfg.agent.display()),
    }
}

/// The mountpoint as an absolute path with its parent resolved, without
/// touching the mountpoint itself (it may be a dead mount answering ENOTCONN).
pub(super) fn absolute_mountpoint(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        bail!("cannot mount on {}", abs.display());
    };
    let parent = std::fs::canonicalize(parent).with_context(|| format!("mountpoint parent {}", parent.display()))?;
    Ok(parent.join(name))
}

/// This process's command line with its binary's path as it is now: after
/// an upgrade, `odfs restart` runs the new binary with the same arguments.
fn relaunch_command() -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(exe) = std::fs::read_link("/proc/self/exe").ok().map(|p| {
        // A replaced binary shows as `PATH (deleted)`: the path is what counts.
        let s = p.to_string_lossy().trim_end_matches(" (deleted)").to_string();
        std::ffi::OsString::from(s)
    }) {
        if let Some(first) = argv.first_mut() {
            *first = exe;
        }
    }
    argv
}

/// The state directory, made 0711 when odfs makes it: other users may
/// pass through (the control socket may be in it, with `--state`) but not
/// list it. Its database is root's alone by its own mode (`Store::open`);
/// an existing directory keeps the mode its admin gave it.
fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_must_be_static() {
        assert!(needs_loader(std::path::Path::new("/bin/sh")).unwrap());
        assert!(!needs_loader(std::path::Path::new("/bin/busybox")).unwrap());
        assert!(needs_loader(std::path::Path::new("/etc/passwd")).is_err());
    }
}
