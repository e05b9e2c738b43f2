//! The mount's `share` directory (`crate::share`) kept in step with the
//! catalog and the images: built at start, after each catalog reload and
//! once a minute (an image pulled or updated meanwhile), from a cache in
//! the state directory keyed by image id and commands, so an unchanged
//! image is never read twice.
//!
//! The directory itself is a symlink to the current generation, a hidden
//! directory beside it (`.share.gen-N`: readable by every user whatever the
//! state directory's mode), replaced in one `rename`: a `man` or a
//! completion that reads it meanwhile sees the old tree or the new one,
//! never half of one. Its man pages are indexed for `man -k` without ever
//! giving man-db's `man` user a directory of it ([`index_in_place`]).
//!
//! A stop removes the symlink and keeps the generation, and the state
//! directory keeps what made it (`docs/served`): the next start serves it
//! again before the mount lists a command ([`Docs::restore`]), so `man` and
//! completion answer from the first call on, and the first refresh
//! replaces it only if the images or the catalog changed meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use std::os::unix::fs::MetadataExt;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::backend::ContainerBackend;
use crate::share::{Doc, Layout};

/// How often the images are looked at again without a reason.
const REFRESH: Duration = Duration::from_secs(60);

/// What a served generation was made of: a start that finds the catalog
/// still mapping the same commands to the same images serves it again.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Served {
    /// The generation's directory name, beside the share directory.
    generation: String,
    /// Each image's part, by image name.
    images: BTreeMap<String, Part>,
    /// Whether man-db's configuration mapped the share when it was made
    /// (its index is then in man-db's cache, else in the tree, if man-db
    /// is here at all).
    mapped: bool,
}

/// One image's part of a generation: what the catalog said of it, and the
/// cache file its documents came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Part {
    reference: String,
    completions: bool,
    commands: Vec<String>,
    cache: String,
}

impl Part {
    fn of(image: &crate::catalog::ImageSpec, commands: &[String]) -> Part {
        Part { reference: image.reference.clone(), completions: image.completions, commands: commands.to_vec(), cache: String::new() }
    }

    /// The same catalog entry (whatever its cache file).
    fn same_entry(&self, other: &Part) -> bool {
        (&self.reference, self.completions, &self.commands) == (&other.reference, other.completions, &other.commands)
    }
}

/// The catalog's images that have commands, each with its commands.
type Wanted = BTreeMap<String, (Arc<crate::catalog::ImageSpec>, Vec<String>)>;

fn wanted(snapshot: &crate::catalog::Snapshot) -> Wanted {
    let mut by_image: Wanted = BTreeMap::new();
    for (name, entry) in &snapshot.commands {
        by_image.entry(entry.image.name.clone()).or_insert_with(|| (entry.image.clone(), Vec::new())).1.push(name.clone());
    }
    by_image
}

/// An image's documents as the share serves them: its completions only
/// where its catalog entry allows them.
fn add_part(layout: &mut Layout, docs: Vec<Doc>, completions: bool) {
    docs.into_iter().filter(|d| completions || d.path.starts_with("man/")).for_each(|d| layout.add(d));
}

/// Where the share directory is served and where its pieces are kept.
pub(super) struct Docs {
    /// The share directory (a symlink we own); `None`: not served.
    pub dir: Option<PathBuf>,
    /// `STATE/docs`: an image's documents, by key.
    pub store: PathBuf,
    /// Asks for a refresh now (a catalog reload).
    pub wake: tokio::sync::Notify,
    /// What is served now: an unchanged tree is not written again.
    served: std::sync::Mutex<Option<Layout>>,
    /// What made the generation served now (kept in `STATE/docs/served`).
    made_of: std::sync::Mutex<BTreeMap<String, Part>>,
    /// The warning that the share is no system manpath of man-db was given.
    unmapped_said: std::sync::atomic::AtomicBool,
}


impl Docs {
    pub fn new(dir: Option<PathBuf>, state: &Path) -> Docs {
        Docs { dir, store: state.join("docs"), wake: tokio::sync::Notify::new(), served: Default::default(), made_of: Default::default(), unmapped_said: Default::default() }
    }

    fn cache_file(&self, image_id: &str, commands: &[String]) -> PathBuf {
        let mut h = sha2::Sha256::new();
        h.update(image_id.as_bytes());
        for c in commands {
            h.update(b"\n");
            h.update(c.as_bytes());
        }
        let key: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.store.join(key)
    }

    fn served_file(&self) -> PathBuf {
        self.store.join("served")
    }

    /// The documents of a cache file named in the store (a name of ours:
    /// hex digits).
    fn cached(&self, name: &str) -> Option<Vec<Doc>> {
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Docs::read_cache(&self.store.join(name))).flatten()
    }

    fn read_cache(file: &Path) -> Option<Vec<Doc>> {
        postcard::from_bytes(&std::fs::read(file).ok()?).ok()
    }

    fn write_cache(file: &Path, docs: &[Doc]) -> std::io::Result<()> {
        write_whole(file, &postcard::to_stdvec(docs).map_err(std::io::Error::other)?)
    }

    /// Serve `layout`: a new generation, the symlink moved to it, older
    /// generations removed. Returns the generation's name.
    fn publish(&self, dir: &Path, layout: &Layout) -> std::io::Result<String> {
        let (parent, name) = served_beside(dir)?;
        let prefix = format!(".{name}.gen-");
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let generation = format!("{prefix}{stamp}");
        let path = parent.join(&generation);
        layout.write(&path)?;
        // Where man-db keeps the index: its own cache for a manpath its
        // configuration maps (made once the tree is served, under the
        // share's name, which is what the map names), else the tree.
        let mapped = mapped(dir);
        if !mapped {
            if !self.unmapped_said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "{}/man is no system manpath of man-db: a mandb run as root over it (mandb -u, mandb {}/man) would give it to man-db's man user; add `MANDB_MAP {}/man /var/cache/man/odfs` to {}",
                    dir.display(),
                    dir.display(),
                    dir.display(),
                    crate::share::MANDB_CONFIG
                );
            }
            index_in_place(&path)?;
        }
        link(&parent, &name, &generation)?;
        if mapped {
            mandb(&dir.join("man"));
        }
        for e in std::fs::read_dir(&parent)?.flatten() {
            if e.file_name().to_string_lossy() != generation && e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(generation)
    }

    /// What is served now is `layout`, in `generation`, made of `parts`:
    /// kept for the next start.
    fn record(&self, layout: Layout, generation: String, parts: BTreeMap<String, Part>, mapped: bool) {
        let served = Served { generation, images: parts.clone(), mapped };
        let saved = postcard::to_stdvec(&served).map_err(std::io::Error::other).and_then(|b| write_whole(&self.served_file(), &b));
        if let Err(e) = saved {
            tracing::warn!("cannot keep what the share directory serves for the next start ({}): {e}", self.served_file().display());
        }
        // Documents of images no longer served (updated, dropped) go: the
        // store holds what the share serves, whatever the images' history.
        let keep: std::collections::HashSet<_> = parts.values().map(|p| p.cache.as_str()).chain(["served"]).collect();
        for e in std::fs::read_dir(&self.store).into_iter().flatten().flatten() {
            if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        *self.served.lock().unwrap() = Some(layout);
        *self.made_of.lock().unwrap() = parts;
    }

    /// At start, before the mount lists a command: serve again the
    /// generation the last run served, when the catalog still maps every
    /// image of it as it did. No engine is asked and nothing is written but
    /// a symlink; the first refresh brings what changed meanwhile (and
    /// builds a new generation where an image of it left the catalog).
    pub fn restore(&self, snapshot: &crate::catalog::Snapshot) {
        let Some(dir) = &self.dir else { return };
        let Some(served) = std::fs::read(self.served_file()).ok().and_then(|b| postcard::from_bytes::<Served>(&b).ok()) else { return };
        let wanted = wanted(snapshot);
        let mut layout = Layout::default();
        for (name, part) in &served.images {
            let still = wanted.get(name).is_some_and(|(image, commands)| Part::of(image, commands).same_entry(part));
            let Some(docs) = still.then(|| self.cached(&part.cache)).flatten() else { return };
            add_part(&mut layout, docs, part.completions);
        }
        let linked = served_beside(dir).and_then(|(parent, name)| {
            let stamp = served.generation.strip_prefix(&format!(".{name}.gen-")).unwrap_or_default();
            if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
                return Err(std::io::Error::other(format!("{:?} is no generation of odfs's", served.generation)));
            }
            let meta = std::fs::symlink_metadata(parent.join(&served.generation))?;
            if !meta.is_dir() || meta.uid() != 0 {
                return Err(std::io::Error::other(format!("{} is no generation of odfs's", served.generation)));
            }
            // Indexed where man-db now looks: in the tree for a manpath it
            // does not map, in its cache for one it does.
            if served.mapped != mapped(dir) {
                return Err(std::io::Error::other("man-db's map of the share changed"));
            }
            link(&parent, &name, &served.generation)
        });
        match linked {
            Ok(()) => {
                tracing::info!(files = layout.files.len(), dir = %dir.display(), "man pages and completions of the last run served again");
                *self.served.lock().unwrap() = Some(layout);
                *self.made_of.lock().unwrap() = served.images;
            }
            Err(e) => tracing::debug!(dir = %dir.display(), "the last run's man pages and completions are not served again: {e}"),
        }
    }

    /// Stop serving: the symlink goes; its generation and the cache stay
    /// for the next start (a directory only root can write, beside it).
    pub fn withdraw(&self) {
        let Some(dir) = &self.dir else { return };
        if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(dir);
        }
    }
}

/// Write `file` whole or not at all (a reader sees the old one or the new).
fn write_whole(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(file.parent().expect("in the store"))?;
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, file)
}

/// The directory that holds the share directory `dir` and the share's
/// name, once both are fit to serve it: `dir` is odfs's symlink or
/// nothing, and no one but root can plant a name beside it.
fn served_beside(dir: &Path) -> std::io::Result<(PathBuf, String)> {
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        if !meta.file_type().is_symlink() {
            return Err(std::io::Error::other(format!("{} exists and is not odfs's (odfs serves it as a symlink; move it away or give --share-dir)", dir.display())));
        }
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(std::io::Error::other(format!("{} cannot hold a share directory", dir.display())));
    };
    std::fs::create_dir_all(parent)?;
    // Root writes and removes trees here: no one else may plant a name.
    let meta = std::fs::metadata(parent)?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!("{} is not root's alone (owner uid {}, mode {:o}): a share directory there could be tampered with", parent.display(), meta.uid(), meta.mode() & 0o777)));
    }
    Ok((parent.to_path_buf(), name.to_string_lossy().into_owned()))
}

/// Whether man-db's configuration maps the share's `man` (its index is
/// then in man-db's cache, not in the tree).
fn mapped(dir: &Path) -> bool {
    let config = std::fs::read_to_string(crate::share::MANDB_CONFIG).unwrap_or_default();
    crate::share::mandb_maps(&config, &dir.join("man"))
}

/// Point the share directory `parent/name` at `generation`, in one rename.
fn link(parent: &Path, name: &str, generation: &str) -> std::io::Result<()> {
    let link = parent.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(generation, &link)?;
    std::fs::rename(&link, parent.join(name))
}

/// `man -k` and `apropos` read an index of the pages: made by man-db's
/// `mandb` where the host has it (nothing to index for otherwise).
fn mandb(man: &Path) {
    let Ok(out) = std::process::Command::new("mandb").arg("--quiet").arg("--no-straycats").arg(man).output() else { return };
    if !out.status.success() {
        tracing::warn!("mandb could not index {}: {}", man.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
}

/// Index a generation's man pages in the tree itself, where man-db looks
/// for the index of a manpath it does not map, and leave the tree root's
/// alone. Run as root on such a manpath, `mandb` gives the directory, and
/// the `catN` directories it makes in it, to its `man` user (its cache
/// directories are its own): so the generation is root's alone (0700)
/// while it runs, then every entry is root's again and the directories
/// mandb made are gone, before anyone else can reach the tree.
fn index_in_place(generation: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let man = generation.join("man");
    let ours: std::collections::HashSet<PathBuf> = tree(&man)?.into_iter().filter(|(_, dir)| *dir).map(|(p, _)| p).collect();
    std::fs::set_permissions(generation, std::fs::Permissions::from_mode(0o700))?;
    mandb(&man);
    for (path, dir) in tree(&man)?.into_iter().rev() {
        if dir && !ours.contains(&path) {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(0), Some(0))?;
        }
    }
    std::os::unix::fs::lchown(&man, Some(0), Some(0))?;
    std::fs::set_permissions(&man, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(generation, std::fs::Permissions::from_mode(0o755))
}

/// Every path under `dir` (not `dir` itself), parents before their
/// entries, and whether each is a directory (symlinks are not followed).
fn tree(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let is_dir = e.file_type()?.is_dir();
        out.push((e.path(), is_dir));
        if is_dir {
            out.extend(tree(&e.path())?);
        }
    }
    Ok(out)
}

impl<B: ContainerBackend> Daemon<B> {
    /// The images whose documents the share serves: the catalog's, and the
    /// archive's packages on this machine, of the default suite (a page
    /// has the bare name; another suite's `jq` would take bookworm's).
    async fn wanted_docs(&self) -> Wanted {
        let snapshot = self.snapshot();
        let mut wanted = wanted(&snapshot);
        let Some(archive) = snapshot.archive.clone() else { return wanted };
        let Ok(images) = self.pool.backend().images().await else { return wanted };
        let suite = archive.indexes.default_suite.clone();
        let here: Vec<(String, Arc<crate::catalog::ImageSpec>)> = images
            .iter()
            .flat_map(|i| &i.tags)
            .filter_map(|t| crate::catalog::archive::parse_reference(t))
            .filter(|(s, ..)| *s == suite)
            .filter_map(|(_, package, tag)| archive.image_of_tag(&suite, package, tag))
            .collect();
        if here.is_empty() {
            return wanted;
        }
        let mut commands = archive.commands_by_package(&suite);
        for (package, image) in here {
            // A command the catalog maps is the catalog's image's.
            let mine: Vec<String> = commands.remove(&package).unwrap_or_default().into_iter().filter(|c| !snapshot.commands.contains_key(c)).collect();
            if !mine.is_empty() {
                wanted.insert(image.name.clone(), (image, mine));
            }
        }
        wanted
    }

    /// One refresh: every local image's documents (from the cache, or read
    /// from the image), for the commands the catalog maps to it.
    async fn refresh_docs(&self) {
        let Some(dir) = self.docs.dir.clone() else { return };
        let mut layout = Layout::default();
        let mut parts = BTreeMap::new();
        for (name, (image, commands)) in self.wanted_docs().await {
            let id = match self.pool.backend().image_id(&image.reference).await {
                Ok(Some(id)) => id,
                // Not here yet: its pages come once it is pulled.
                Ok(None) => continue,
                Err(e) => {
                    // The engine does not answer now (starting, restarting):
                    // what was served of the image stays, cache and all.
                    tracing::debug!(image = image.name, "documentation: cannot inspect the image: {e}");
                    let before = self.docs.made_of.lock().unwrap().get(&name).filter(|p| p.same_entry(&Part::of(&image, &commands))).cloned();
                    if let Some((part, docs)) = before.and_then(|p| Some((p.clone(), self.docs.cached(&p.cache)?))) {
                        add_part(&mut layout, docs, image.completions);
                        parts.insert(name, part);
                    }
                    continue;
                }
            };
            let file = self.docs.cache_file(&id, &commands);
            let docs = match Docs::read_cache(&file) {
                Some(d) => d,
                None => match self.pool.backend().image_docs(&image.reference, &commands, self.pool.mount_id()).await {
                    Ok(d) => {
                        if let Err(e) = Docs::write_cache(&file, &d) {
                            tracing::warn!("documentation cache {}: {e}", file.display());
                        }
                        tracing::info!(image = image.name, files = d.len(), "documentation read from the image");
                        d
                    }
                    Err(e) => {
                        tracing::warn!(image = image.name, "cannot read the image's man pages and completions: {e}");
                        continue;
                    }
                },
            };
            // Completions are scripts the user's shell runs on the host: an
            // image whose catalog entry says `completions = false` gives
            // its man pages only.
            add_part(&mut layout, docs, image.completions);
            let cache = file.file_name().expect("a file of the store").to_string_lossy().into_owned();
            parts.insert(name, Part { cache, ..Part::of(&image, &commands) });
        }
        let unchanged = self.docs.served.lock().unwrap().as_ref() == Some(&layout);
        if unchanged {
            if let Ok(generation) = std::fs::read_link(&dir) {
                // The same tree, perhaps from other cache files (an image
                // rebuilt the same): the next start reads these.
                if *self.docs.made_of.lock().unwrap() != parts {
                    self.docs.record(layout, generation.to_string_lossy().into_owned(), parts, mapped(&dir));
                }
                tracing::debug!(dir = %dir.display(), "man pages and completions unchanged");
                return;
            }
        }
        let published = {
            let docs = &self.docs;
            tokio::task::block_in_place(|| docs.publish(&dir, &layout))
        };
        match published {
            Ok(generation) => {
                tracing::info!(files = layout.files.len(), dir = %dir.display(), store = %self.docs.store.display(), "man pages and completions served");
                self.docs.record(layout, generation, parts, mapped(&dir));
            }
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot serve man pages and completions: {e}"),
        }
    }
}

/// The share directory's task: refresh at start, on a catalog reload, and
/// every [`REFRESH`], until `stop`; then withdraw it.
pub(super) async fn keep_docs<B: ContainerBackend>(daemon: Arc<Daemon<B>>, stop: CancellationToken) {
    if daemon.docs.dir.is_none() {
        return;
    }
    let mut last_layout_check = tokio::time::Instant::now();
    loop {
        daemon.refresh_docs().await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = daemon.docs.wake.notified() => {}
            _ = tokio::time::sleep_until(last_layout_check + REFRESH) => {}
        }
        last_layout_check = tokio::time::Instant::now();
    }
    // Withdrawn at a stop, not at a hand-over: the successor serves it on.
}
