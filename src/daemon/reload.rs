//! Catalog reload: the catalog directories polled for changes, a changed
//! catalog served without unmounting (or, when a directory or file of it
//! cannot be read, the previous one kept), and what the FUSE side asks of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Daemon;
use crate::backend::ContainerBackend;
use crate::catalog::{self, Unreadable};
use crate::fs::{Requester, ShimFs};

/// How often catalog directories are checked for changes.
const RELOAD_POLL: Duration = Duration::from_millis(400);

/// What the FUSE side asks the daemon, answered from memory.
pub(super) struct FsHooks<B> {
    pub daemon: std::sync::Weak<Daemon<B>>,
    /// Shims opened, and by whom (whether they may use the image is for
    /// the async side: it reads the opener's groups).
    pub prewarm: mpsc::UnboundedSender<(String, Requester)>,
}

impl<B: ContainerBackend> crate::fs::Hooks for FsHooks<B> {
    fn opened(&self, command: &str, by: Requester) {
        let _ = self.prewarm.send((command.to_string(), by));
    }

    fn knows(&self, command: &str) -> bool {
        self.daemon.upgrade().is_some_and(|d| d.snapshot().knows(command))
    }

    fn xattr(&self, command: &str, name: &str) -> Option<Vec<u8>> {
        let d = self.daemon.upgrade()?;
        let entry = d.snapshot().get(command)?;
        match name {
            "user.odfs.image" => Some(entry.image.reference.clone().into_bytes()),
            "user.odfs.state" => Some(d.pool.shown(&entry.image).as_str().as_bytes().to_vec()),
            _ => None,
        }
    }
}

/// The catalog as served: its commands, then the archive's from the
/// stored indexes (read now, without the network; what is missing said).
pub(super) fn served(catalog: &catalog::Catalog, state_dir: &Path) -> catalog::Snapshot {
    let archive = catalog.archive.clone().map(|spec| catalog::archive::Archive::load(spec, state_dir));
    for problem in archive.iter().flat_map(|a| &a.problems) {
        tracing::warn!("{problem}");
    }
    if let Some(a) = &archive {
        let commands: usize = a.indexes.suites().map(|i| i.len()).sum();
        tracing::info!(suites = a.spec.suites.join(","), commands, listed = a.spec.list, "archive loaded");
    }
    catalog::Snapshot::new(catalog).with_archive(archive)
}

/// Names, sizes and times of every catalog file, and of the archive's
/// stored indexes: a change in any means reload (a refreshed index is
/// served as an edited catalog is).
pub(super) type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// The fingerprint of the catalog directories and of the indexes in the
/// state directory; a catalog directory that cannot be listed fails it,
/// as it would fail the load (the indexes may be missing).
pub(super) fn catalog_fingerprint(dirs: &[PathBuf], state_dir: &Path) -> Result<Fingerprint, Unreadable> {
    let mut files = Vec::new();
    for dir in dirs {
        files.extend(catalog::catalog_files(dir)?);
    }
    let indexes = std::fs::read_dir(catalog::archive::dir(state_dir)).into_iter().flatten().flatten().map(|e| e.path());
    files.extend(indexes.filter(|p| p.extension().is_some_and(|x| x == "index" || x == "found")));
    let mut out: Fingerprint = files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            (p, meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()))
        })
        .collect();
    out.sort();
    Ok(out)
}

impl<B: ContainerBackend> Daemon<B> {
    /// Load the catalog again and serve it: new commands appear, removed ones
    /// vanish (the kernel's cached entries for them are dropped), running
    /// tools are not touched. A catalog directory or file that cannot be
    /// read changes nothing: what it holds is unknown, and serving the
    /// catalog without it would take its commands from every user.
    fn reload(&self, dirs: &[PathBuf], fs: &ShimFs, notifier: &crate::fuse::Notifier) -> Result<(), Unreadable> {
        let (catalog, errors) = catalog::load_dirs(dirs)?;
        for e in &errors {
            tracing::error!("catalog: {e} (file skipped)");
        }
        self.store.save_catalog(&catalog);
        let snapshot = Arc::new(served(&catalog, &self.state_dir));
        *self.snapshot.write().unwrap() = snapshot.clone();
        self.pool.catalog_is(catalog.images.values(), catalog.archive.is_some());
        let changed = fs.set_commands(snapshot.listed());
        let root = crate::fs::ROOT_INO;
        for name in &changed {
            if let Err(e) = notifier.inval_entry(root, name.as_bytes()) {
                tracing::debug!(name, "cache invalidation: {e}");
            }
        }
        let _ = notifier.inval_inode(root);
        tracing::info!(commands = snapshot.commands.len(), changed = changed.len(), "catalog reloaded");
        self.docs.wake.notify_one();
        Ok(())
    }

    /// Say once per cause that the catalog could not be read and the one
    /// served stays (`failing` holds the cause last said).
    fn keep_previous(&self, e: &Unreadable, failing: &mut Option<String>) {
        let cause = e.to_string();
        if failing.as_deref() != Some(cause.as_str()) {
            let commands = self.snapshot().commands.len();
            tracing::warn!("catalog not reloaded: {cause}; the previous catalog, with {commands} commands, stays served until it can be read");
            *failing = Some(cause);
        }
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
    // The cause of the last failed reload, until one succeeds. `seen`
    // stays what was last loaded, so a failed reload is tried again at
    // every poll and no edit made meanwhile is lost.
    let mut failing: Option<String> = None;
    while stop.run_until_cancelled(tick.tick()).await.is_some() {
        let result = catalog_fingerprint(&dirs, &daemon.state_dir).and_then(|now| {
            if now != seen {
                daemon.reload(&dirs, &fs, &notifier)?;
                seen = now;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!("catalog readable again");
                }
            }
            Err(e) => daemon.keep_previous(&e, &mut failing),
        }
    }
    let _ = seen_out.send(seen);
}
