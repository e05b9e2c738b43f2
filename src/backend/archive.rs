//! Reading an image's files without running anything of it: a container
//! is created, never started, read through the engine's archive and export
//! APIs, and removed. Its executables (`odfs scan`), its account files and
//! top-level directories (the view), and its man pages and completions
//! (the share directory).

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use futures_util::StreamExt;

use super::docker::{is_not_found, Docker, LABEL_SCAN};
use super::{BackendError, ContainerBackend, ImageFacts, LABEL_MOUNT};

/// Bytes of an image's passwd or group file odfs reads.
const MAX_ACCOUNTS_FILE: usize = 1 << 20;

impl Docker {
    /// The executables on the image's PATH, from an export of a container
    /// made of it (`odfs scan`, `odfs provides`).
    pub(super) async fn read_executables(&self, reference: &str, mount_id: &str) -> Result<Vec<String>, BackendError> {
        let client = self.client().await?;
        let image = client.inspect_image(reference).await.map_err(|e| self.classify(e))?;
        let path = image
            .config
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .find_map(|e| e.strip_prefix("PATH=").map(String::from))
            .unwrap_or_else(|| crate::protocol::DEFAULT_PATH.into());
        // Any user may ask (`odfs provides`): exports take disk and time,
        // so a few at once, each into a file no one else can open.
        static EXPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _permit = EXPORTS.acquire().await.map_err(|e| BackendError::Engine(e.to_string()))?;
        let created = self.scratch(reference, mount_id).await?;
        let result = async {
            let io = |e: std::io::Error| BackendError::Engine(format!("cannot keep the image's export: {e}"));
            let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(io)?);
            let mut stream = client.export_container(&created);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.classify(e))?;
                tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await.map_err(io)?;
            }
            tokio::io::AsyncSeekExt::rewind(&mut file).await.map_err(io)?;
            let file = file.into_std().await;
            tokio::task::spawn_blocking(move || executables_in(file, &path))
                .await
                .map_err(|e| BackendError::Engine(e.to_string()))?
                .map_err(|e| BackendError::Engine(format!("reading the image's files: {e}")))
        }
        .await;
        let _ = self.remove(&created).await;
        result
    }

    /// What the view needs of an image: its account files, and which of
    /// `dirs` it fills.
    pub(super) async fn read_facts(&self, reference: &str, dirs: &[String], mount_id: &str) -> Result<ImageFacts, BackendError> {
        let created = self.scratch(reference, mount_id).await?;
        let result = async {
            let mut facts = ImageFacts { asked: dirs.to_vec(), ..Default::default() };
            // A file's archive is a tar of that one file; a directory's is
            // the whole tree, of which the first two entries tell enough.
            for (path, out) in [("/etc/passwd", &mut facts.passwd), ("/etc/group", &mut facts.group)] {
                let entries = self.archive_head(&created, path, MAX_ACCOUNTS_FILE).await?;
                *out = entries.into_iter().next().map(|(_, data)| String::from_utf8_lossy(&data).into_owned()).unwrap_or_default();
            }
            for dir in dirs {
                let entries = self.archive_head(&created, &format!("/{dir}"), 16 << 10).await?;
                if entries.len() >= 2 {
                    facts.filled.push(dir.clone());
                }
            }
            Ok(facts)
        }
        .await;
        let _ = self.remove(&created).await;
        result
    }

    /// The image's `/etc/alternatives` links, read from a created container.
    pub(super) async fn read_alternatives(&self, reference: &str, mount_id: &str) -> Result<HashMap<String, String>, BackendError> {
        let client = self.client().await?;
        let created = self.scratch(reference, mount_id).await?;
        let read = self.download(client, &created, "/etc/alternatives", 1 << 20, reference).await;
        let _ = self.remove(&created).await;
        let (file, _) = read?;
        tokio::task::spawn_blocking(move || alternatives_in(file)).await.map_err(|e| BackendError::Engine(e.to_string()))
    }

    /// The man pages and completions of `commands` in the image.
    pub(super) async fn read_docs(&self, reference: &str, commands: &[String], mount_id: &str) -> Result<Vec<crate::share::Doc>, BackendError> {
        static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _permit = READS.acquire().await.map_err(|e| BackendError::Engine(e.to_string()))?;
        let client = self.client().await?;
        let created = self.scratch(reference, mount_id).await?;
        let result = docs_of(commands, |dir, limit| self.download(client, &created, dir, limit, reference)).await;
        let _ = self.remove(&created).await;
        result
    }

    /// Copy `dir` of the container `created` (a tar) into an unnamed file,
    /// at most `limit` bytes (the rest is left out, with a warning); an
    /// empty file when the image has no such directory. Returns the file,
    /// at its start, and its size.
    async fn download(&self, client: &bollard::Docker, created: &str, dir: &str, limit: u64, reference: &str) -> Result<(std::fs::File, u64), BackendError> {
        let io = |e: std::io::Error| BackendError::Engine(format!("cannot keep the image's documentation: {e}"));
        let opts = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new().path(dir).build();
        let mut stream = client.download_from_container(created, Some(opts));
        let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(io)?);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if is_not_found(&e) => break,
                Err(e) => return Err(self.classify(e)),
            };
            size += chunk.len() as u64;
            if size > limit {
                tracing::warn!(image = reference, dir, "{dir} beyond {} KiB left out", limit >> 10);
                break;
            }
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await.map_err(io)?;
        }
        tokio::io::AsyncSeekExt::rewind(&mut file).await.map_err(io)?;
        Ok((file.into_std().await, size))
    }

    /// A container of `reference` that is created to be read and removed,
    /// never started: nothing from the image runs. It carries the mount's
    /// label, so one left behind by a crash is removed at the next start.
    async fn scratch(&self, reference: &str, mount_id: &str) -> Result<String, BackendError> {
        let body = ContainerCreateBody {
            image: Some(reference.to_string()),
            entrypoint: Some(vec!["/.odfs-scan-never-runs".into()]),
            labels: Some(HashMap::from([
                (super::LABEL_MANAGED.to_string(), "true".to_string()),
                (LABEL_SCAN.to_string(), "true".to_string()),
                (LABEL_MOUNT.to_string(), mount_id.to_string()),
            ])),
            ..Default::default()
        };
        let client = self.client().await?;
        let created = client.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await.map_err(|e| self.classify(e))?;
        Ok(created.id)
    }

    /// The first entries (path, content) of the archive of `path` in a
    /// container, reading at most `limit` bytes of it; no entries when the
    /// path is absent.
    async fn archive_head(&self, container: &str, path: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        Ok(self.download_head(container, path, limit).await?.map_or_else(Vec::new, |(tar, _)| tar_entries(&tar)))
    }

    /// The tar archive of `path` in a container, its first `limit` bytes
    /// and whether there was more (`None`: the path is absent).
    pub(super) async fn download_head(&self, container: &str, path: &str, limit: usize) -> Result<Option<(Vec<u8>, bool)>, BackendError> {
        let opts = bollard::query_parameters::DownloadFromContainerOptionsBuilder::new().path(path).build();
        let mut stream = self.client().await?.download_from_container(container, Some(opts));
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => buf.extend_from_slice(&bytes),
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(self.classify(e)),
            }
            if buf.len() >= limit {
                return Ok(Some((buf, true)));
            }
        }
        Ok(Some((buf, false)))
    }
}

/// The man pages and completions of `commands` in an image whose
/// directories `download` gives as tar archives (entries named under the
/// directory's own name), each at most the bytes it is given: the files
/// of [`crate::share::SOURCES`] within the share's bounds.
pub(super) async fn docs_of<F, Fut>(commands: &[String], download: F) -> Result<Vec<crate::share::Doc>, BackendError>
where
    F: Fn(&'static str, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(std::fs::File, u64), BackendError>>,
{
    let mut docs = Vec::new();
    let mut budget = crate::share::MAX_IMAGE;
    let mut room = Room { bytes: crate::share::MAX_IMAGE, files: crate::share::MAX_FILES };
    // Debian names many pages through its alternatives
    // (`nc.1.gz` → `/etc/alternatives/nc.1.gz` → `nc_openbsd.1.gz`).
    let (file, _) = download("/etc/alternatives", 1 << 20).await?;
    let alternatives = tokio::task::spawn_blocking(move || alternatives_in(file)).await.map_err(|e| BackendError::Engine(e.to_string()))?;
    let alternatives = std::sync::Arc::new(alternatives);
    for (dir, kind) in crate::share::SOURCES {
        let (file, size) = download(dir, budget).await?;
        budget = budget.saturating_sub(size);
        let (commands, alternatives) = (commands.to_vec(), alternatives.clone());
        let (found, left) = tokio::task::spawn_blocking(move || docs_in(file, kind, dir, &commands, &alternatives, room))
            .await
            .map_err(|e| BackendError::Engine(e.to_string()))?
            .map_err(|e| BackendError::Engine(format!("reading the image's {dir}: {e}")))?;
        room = left;
        docs.extend(found);
    }
    Ok(docs)
}

/// The entries of a tar archive that may be cut short: as many as it
/// holds whole headers for (content cut to what is there).
fn tar_entries(buf: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(buf);
    let Ok(entries) = archive.entries() else { return out };
    for entry in entries {
        let Ok(mut entry) = entry else { break };
        let path = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let mut data = Vec::new();
        let _ = entry.read_to_end(&mut data);
        out.push((path, data));
    }
    out
}

/// The documentation of `commands` in the archive of one of
/// [`crate::share::SOURCES`] (its entries named under the directory's own
/// name): regular files, and symlinks to another file of the same archive
/// (Debian links one man page to another), by where [`crate::share::place`]
/// puts them. The archive may be cut short.
/// The links of an image's `/etc/alternatives` (a tar of it), by name,
/// each target an absolute path; at most 10,000.
pub(super) fn alternatives_in(tar_file: std::fs::File) -> HashMap<String, String> {
    let mut found = HashMap::new();
    let mut archive = tar::Archive::new(std::io::BufReader::new(tar_file));
    let Ok(entries) = archive.entries() else { return found };
    for entry in entries.take(10_000) {
        let Ok(entry) = entry else { break };
        if entry.header().entry_type() != tar::EntryType::Symlink {
            continue;
        }
        let (Ok(path), Ok(Some(target))) = (entry.path(), entry.link_name()) else { continue };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let target = std::path::Path::new("/etc/alternatives").join(target);
        found.insert(name.to_string(), target.to_string_lossy().into_owned());
    }
    found
}

/// Where a link at `base` in the tree of `dir` leads, as a path in that
/// tree: a relative target as it is; an absolute one when it is under
/// `dir`, directly or through the image's alternatives (up to 8 links).
fn within(dir: &str, base: &std::path::Path, target: &std::path::Path, alternatives: &HashMap<String, String>) -> Option<String> {
    let mut target = target.to_path_buf();
    for _ in 0..8 {
        if target.is_relative() {
            return Some(normalize(&base.join(&target)));
        }
        if let Ok(rest) = target.strip_prefix(dir) {
            return Some(normalize(rest));
        }
        let name = target.strip_prefix("/etc/alternatives").ok()?.to_str()?;
        target = std::path::PathBuf::from(alternatives.get(name)?);
    }
    None
}

fn docs_in(
    tar_file: std::fs::File,
    kind: crate::share::Kind,
    dir: &str,
    commands: &[String],
    alternatives: &HashMap<String, String>,
    room: Room,
) -> std::io::Result<(Vec<crate::share::Doc>, Room)> {
    use std::io::{Read, Seek};
    let mut tar_file = tar_file;
    let mut room = room;
    let inside = |p: &std::path::Path| -> String { p.components().skip(1).map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/") };
    let place = |rel: &str| commands.iter().find_map(|c| crate::share::place(kind, rel, c));
    // First pass: the files wanted, and links wanted with what they name.
    let mut docs = Vec::new();
    let mut links: HashMap<String, Vec<String>> = HashMap::new();
    {
        let mut archive = tar::Archive::new(std::io::BufReader::new(&mut tar_file));
        for entry in archive.entries()? {
            let Ok(mut entry) = entry else { break };
            let Ok(path) = entry.path().map(|p| inside(&p)) else { continue };
            let Some(to) = place(&path) else { continue };
            match entry.header().entry_type() {
                tar::EntryType::Regular if entry.size() <= crate::share::MAX_FILE => {
                    if !room.take(entry.size()) {
                        break;
                    }
                    let mut data = Vec::new();
                    if entry.read_to_end(&mut data).is_ok() {
                        docs.push(crate::share::Doc { path: to, data });
                    }
                }
                tar::EntryType::Symlink => {
                    let Ok(Some(target)) = entry.link_name() else { continue };
                    let base = std::path::Path::new(&path).parent().unwrap_or(std::path::Path::new(""));
                    if let Some(at) = within(dir, base, &target, alternatives) {
                        links.entry(at).or_default().push(to);
                    }
                }
                _ => {}
            }
        }
    }
    if links.is_empty() {
        return Ok((docs, room));
    }
    tar_file.rewind()?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(tar_file));
    for entry in archive.entries()? {
        let Ok(mut entry) = entry else { break };
        let Ok(path) = entry.path().map(|p| inside(&p)) else { continue };
        if entry.header().entry_type() != tar::EntryType::Regular || entry.size() > crate::share::MAX_FILE {
            continue;
        }
        let Some(wanted) = links.remove(&path) else { continue };
        let mut data = Vec::new();
        if entry.read_to_end(&mut data).is_err() {
            continue;
        }
        // Each copy counts: many links to one page are as many pages.
        for to in wanted {
            if !room.take(data.len() as u64) {
                return Ok((docs, room));
            }
            docs.push(crate::share::Doc { path: to, data: data.clone() });
        }
    }
    Ok((docs, room))
}

/// What one image's documentation may still take: bytes and files.
#[derive(Debug, Clone, Copy)]
struct Room {
    bytes: u64,
    files: usize,
}

impl Room {
    /// Take one file of `size` bytes; `false` (taking nothing) when it
    /// does not fit.
    fn take(&mut self, size: u64) -> bool {
        if self.files == 0 || size > self.bytes {
            return false;
        }
        self.files -= 1;
        self.bytes -= size;
        true
    }
}

/// `a/b/../c` as `a/c`, without touching any filesystem.
fn normalize(p: &std::path::Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}

/// Executables in the PATH directories of an exported filesystem: regular
/// files with an execute bit, and symlinks (busybox applets), by the first
/// PATH directory that has each name.
pub fn executables_in(tar_file: std::fs::File, path: &str) -> std::io::Result<Vec<String>> {
    let dirs: Vec<&str> = path.split(':').filter(|d| d.starts_with('/')).collect();
    let mut found: Vec<(usize, String, String)> = Vec::new();
    let mut archive = tar::Archive::new(std::io::BufReader::new(tar_file));
    for entry in archive.entries()? {
        let entry = entry?;
        let header = entry.header();
        let kind = header.entry_type();
        let executable = (kind.is_file() && header.mode().unwrap_or(0) & 0o111 != 0) || kind.is_symlink();
        if !executable {
            continue;
        }
        let full = format!("/{}", entry.path()?.to_string_lossy().trim_start_matches("./").trim_start_matches('/'));
        let Some((dir, name)) = full.rsplit_once('/') else { continue };
        if let Some(rank) = dirs.iter().position(|d| d.trim_end_matches('/') == dir) {
            found.push((rank, name.to_string(), full.clone()));
        }
    }
    found.sort();
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = found.into_iter().filter(|(_, name, _)| seen.insert(name.clone())).map(|(_, _, full)| full).collect();
    out.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::within;
    use std::collections::HashMap;
    use std::path::Path;

    #[test]
    fn a_page_named_through_debian_s_alternatives_is_found_in_the_tree() {
        let alt: HashMap<String, String> = [
            ("nc.1.gz", "/usr/share/man/man1/nc_openbsd.1.gz"),
            ("loop.1.gz", "/etc/alternatives/loop.1.gz"),
            ("away.1.gz", "/opt/elsewhere/away.1.gz"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let dir = "/usr/share/man";
        let at = |target: &str| within(dir, Path::new("man1"), Path::new(target), &alt);
        assert_eq!(at("/etc/alternatives/nc.1.gz").as_deref(), Some("man1/nc_openbsd.1.gz"));
        assert_eq!(at("jq.1.gz").as_deref(), Some("man1/jq.1.gz"));
        assert_eq!(at("/usr/share/man/man8/x.8.gz").as_deref(), Some("man8/x.8.gz"));
        // Outside the tree, unknown, or a loop of links: nothing.
        for nowhere in ["/etc/alternatives/away.1.gz", "/etc/alternatives/none.1.gz", "/etc/alternatives/loop.1.gz", "/etc/passwd"] {
            assert_eq!(at(nowhere), None, "{nowhere}");
        }
    }
}
