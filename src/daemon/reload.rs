//! Catalog reload: the catalog directories polled for changes, a changed
//! catalog served without unmounting, and what the FUSE side asks of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Daemon;
use crate::backend::ContainerBackend;
use crate::catalog::{self, Snapshot};
use crate::fs::ShimFs;

/// How often catalog directories are checked for changes.
const RELOAD_POLL: Duration = Duration::from_millis(400);

/// What the FUSE side asks the daemon, answered from memory.
pub(super) struct FsHooks<B> {
    pub daemon: std::sync::Weak<Daemon<B>>,
    pub prewarm: mpsc::UnboundedSender<String>,
}

impl<B: ContainerBackend> crate::fs::Hooks for FsHooks<B> {
    fn opened(&self, command: &str) {
        let _ = self.prewarm.send(command.to_string());
    }

    fn xattr(&self, command: &str, name: &str) -> Option<Vec<u8>> {
        let d = self.daemon.upgrade()?;
        let entry = d.snapshot().get(command).cloned()?;
        match name {
            "user.odfs.image" => Some(entry.image.reference.clone().into_bytes()),
            "user.odfs.state" => Some(d.pool.shown(&entry.image).as_str().as_bytes().to_vec()),
            _ => None,
        }
    }
}

/// Names, sizes and times of every catalog file: a change in any means reload.
/// Names, sizes and times of every catalog file.
pub(super) type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

pub(super) fn catalog_fingerprint(dirs: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let meta = std::fs::metadata(&p).ok();
                out.push((p, meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok())));
            }
        }
    }
    out.sort();
    out
}

impl<B: ContainerBackend> Daemon<B> {
    /// Load the catalog again and serve it: new commands appear, removed ones
    /// vanish (the kernel's cached entries for them are dropped), running
    /// tools are not touched.
    fn reload(&self, dirs: &[PathBuf], fs: &ShimFs, notifier: &crate::fuse::Notifier) {
        let (catalog, errors) = catalog::load_dirs(dirs);
        for e in &errors {
            tracing::error!("catalog: {e} (file skipped)");
        }
        self.store.save_catalog(&catalog);
        let snapshot = Arc::new(Snapshot::new(&catalog));
        *self.snapshot.write().unwrap() = snapshot.clone();
        let changed = fs.set_commands(snapshot.commands.keys().map(String::as_str));
        let root = crate::fs::ROOT_INO;
        for name in &changed {
            if let Err(e) = notifier.inval_entry(root, name.as_bytes()) {
                tracing::debug!(name, "cache invalidation: {e}");
            }
        }
        let _ = notifier.inval_inode(root);
        tracing::info!(commands = snapshot.commands.len(), changed = changed.len(), "catalog reloaded");
        self.docs.wake.notify_one();
    }
}

/// Poll the catalog directories and serve what changed, until `stop`;
/// then say what was last seen (`seen_out`), for the next round.
pub(super) async fn watch_catalogs<B: ContainerBackend>(
    daemon: Arc<Daemon<B>>,
    dirs: Vec<PathBuf>,
    fs: Arc<ShimFs>,
    notifier: crate::fuse::Notifier,
    mut seen: Fingerprint,
    stop: tokio_util::sync::CancellationToken,
    seen_out: tokio::sync::oneshot::Sender<Fingerprint>,
) {
    let mut tick = tokio::time::interval(RELOAD_POLL);
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        let now = catalog_fingerprint(&dirs);
        if now != seen {
            seen = now;
            daemon.reload(&dirs, &fs, &notifier);
        }
    }
    let _ = seen_out.send(seen);
}
