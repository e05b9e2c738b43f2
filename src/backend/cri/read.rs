//! Reading an image's files on a CRI engine, which has no archive or export
//! API: a container of the image is started whose only process is odfs's
//! agent, bound in from the host and holding it (`odfs-agent hold`), so
//! nothing of the image runs; its root is read from the host through
//! `/proc/PID/root`, never following the image's symlinks; the container
//! is removed. The trees read are put in the same tar form the Docker
//! backend reads ([`super::super::archive`]).

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;

use super::{Cri, REQUEST_LIMIT};
use crate::backend::archive::{alternatives_in, docs_of, executables_in};
use crate::backend::{BackendError, ContainerSpec, ImageFacts};

/// Bytes of an image's passwd or group file odfs reads.
const MAX_ACCOUNTS_FILE: u64 = 1 << 20;
/// Where the agent is bound in a container that is only read.
const HOLDER: &str = "/.odfs-hold";

/// A started container of an image, held by the agent, and its root as the
/// host reaches it.
struct Held {
    id: String,
    root: PathBuf,
}

impl Cri {
    /// Start a container of `reference` held by the agent. It carries the
    /// mount's label and a scan label, so one a crash left is removed at
    /// the next start.
    async fn hold(&self, reference: &str, mount_id: &str) -> Result<Held, BackendError> {
        let agent = self.agent.clone().ok_or_else(|| BackendError::Engine("no agent binary to read an image's files with".into()))?;
        let unique = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        let spec = ContainerSpec {
            name: format!("odfs-read-{unique}"),
            image: reference.to_string(),
            entrypoint: vec![HOLDER.into(), "hold".into()],
            labels: HashMap::from([
                (crate::backend::LABEL_MANAGED.to_string(), "true".to_string()),
                (crate::backend::docker::LABEL_SCAN.to_string(), "true".to_string()),
                (crate::backend::LABEL_MOUNT.to_string(), mount_id.to_string()),
            ]),
            // The node's network: a sandbox costs no network setup, and
            // the agent holding it opens no socket.
            network: "host".into(),
            loopback_only: false,
            cap_add: vec![],
            binds: vec![crate::backend::Bind::plain(agent, HOLDER, true)],
            env: vec![],
            limits: crate::catalog::Limits { memory: Some(16 << 20), nano_cpus: None, pids: Some(8) },
            preload: None,
            read_only_root: true,
            tmpfs: vec![],
            hostname: None,
            host_namespaces: false,
            devices: vec![],
            device_requests: vec![],
        };
        let id = self.create_in_sandbox(&spec).await?;
        let held = async {
            self.ask("start container", REQUEST_LIMIT, self.runtime().await?.start_container(cri::StartContainerRequest { container_id: id.clone() })).await?;
            let pid = self.pid(&id).await?;
            if pid <= 0 {
                return Err(BackendError::Engine(format!("the container image {reference} is read through did not start")));
            }
            Ok(PathBuf::from(format!("/proc/{pid}/root")))
        }
        .await;
        match held {
            Ok(root) => Ok(Held { id, root }),
            Err(e) => {
                let _ = crate::backend::ContainerBackend::remove(self, &id).await;
                Err(e)
            }
        }
    }

    /// Run `read` on a held container of `reference`, and remove it.
    async fn with_held<T, F, Fut>(&self, reference: &str, mount_id: &str, read: F) -> Result<T, BackendError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        // Any user may ask (`odfs provides`): a few at once.
        static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _permit = READS.acquire().await.map_err(|e| BackendError::Engine(e.to_string()))?;
        let held = self.hold(reference, mount_id).await?;
        let result = read(held.root.clone()).await;
        let _ = crate::backend::ContainerBackend::remove(self, &held.id).await;
        result
    }

    /// The image's PATH, from its config.
    async fn image_path(&self, reference: &str) -> Result<String, BackendError> {
        let (_, info) = self.image_status(reference).await?.ok_or_else(|| BackendError::ImageMissing { reference: reference.into(), reason: "not on this node".into() })?;
        let env = info.pointer("/imageSpec/config/Env").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
        Ok(env.iter().filter_map(serde_json::Value::as_str).find_map(|e| e.strip_prefix("PATH=").map(String::from)).unwrap_or_else(|| crate::protocol::DEFAULT_PATH.into()))
    }

    pub(super) async fn read_executables(&self, reference: &str, mount_id: &str) -> Result<Vec<String>, BackendError> {
        let path = self.image_path(reference).await?;
        self.with_held(reference, mount_id, |root| {
            blocking(move || {
                // Each PATH directory's entries, named by their full path,
                // headers only: what the export gives on Docker.
                let mut tar = tar::Builder::new(tempfile::tempfile()?);
                for dir in path.split(':').filter(|d| d.starts_with('/')) {
                    if let Some(at) = inside(&root, dir) {
                        append_tree(&mut tar, &at, dir.trim_start_matches('/'), 1, &mut Budget::headers())?;
                    }
                }
                let mut file = tar.into_inner()?;
                file.rewind()?;
                executables_in(file, &path)
            })
        })
        .await
    }

    pub(super) async fn read_facts(&self, reference: &str, dirs: &[String], mount_id: &str) -> Result<ImageFacts, BackendError> {
        let dirs = dirs.to_vec();
        self.with_held(reference, mount_id, |root| {
            blocking(move || {
                let mut facts = ImageFacts { asked: dirs.clone(), ..Default::default() };
                facts.passwd = read_file(&root, "/etc/passwd", MAX_ACCOUNTS_FILE)?;
                facts.group = read_file(&root, "/etc/group", MAX_ACCOUNTS_FILE)?;
                for dir in dirs {
                    let filled = inside(&root, &format!("/{dir}")).filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_dir()));
                    if filled.is_some_and(|p| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some())) {
                        facts.filled.push(dir);
                    }
                }
                Ok(facts)
            })
        })
        .await
    }

    pub(super) async fn read_alternatives(&self, reference: &str, mount_id: &str) -> Result<HashMap<String, String>, BackendError> {
        self.with_held(reference, mount_id, |root| async move {
            let (file, _) = tree(root, "/etc/alternatives", 1 << 20).await?;
            blocking(move || Ok(alternatives_in(file))).await
        })
        .await
    }

    pub(super) async fn read_docs(&self, reference: &str, commands: &[String], mount_id: &str) -> Result<Vec<crate::share::Doc>, BackendError> {
        self.with_held(reference, mount_id, |root| async move { docs_of(commands, |dir, limit| tree(root.clone(), dir, limit)).await }).await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::Engine(e.to_string()))?
        .map_err(|e| BackendError::Engine(format!("reading the image's files: {e}")))
}

/// The tree at `dir` of the image, as the Docker API's archive of it gives
/// it: entries named under the directory's own name, contents at most
/// `limit` bytes (the rest left out); empty when the image has no such
/// directory. The file, at its start, and the bytes of contents in it.
async fn tree(root: PathBuf, dir: &'static str, limit: u64) -> Result<(std::fs::File, u64), BackendError> {
    blocking(move || {
        let mut tar = tar::Builder::new(tempfile::tempfile()?);
        let mut budget = Budget { left: limit, used: 0, contents: true };
        if let Some(at) = inside(&root, dir) {
            let name = Path::new(dir).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            append_tree(&mut tar, &at, &name, usize::MAX, &mut budget)?;
        }
        let mut file = tar.into_inner()?;
        file.rewind()?;
        Ok((file, budget.used))
    })
    .await
}

/// What a tree's files may still put in an archive.
struct Budget {
    left: u64,
    used: u64,
    /// With the files' contents (else their headers only).
    contents: bool,
}

impl Budget {
    fn headers() -> Budget {
        Budget { left: u64::MAX, used: 0, contents: false }
    }
}

/// `path` of the image under `root`, when no part of it is a symlink:
/// the host resolves an absolute link against its own root, not the
/// image's, so a link is never followed; `None` when absent.
fn inside(root: &Path, path: &str) -> Option<PathBuf> {
    let mut at = root.to_path_buf();
    for part in Path::new(path).components() {
        match part {
            std::path::Component::Normal(name) => at.push(name),
            std::path::Component::RootDir => continue,
            _ => return None,
        }
        if at.symlink_metadata().ok()?.file_type().is_symlink() {
            return None;
        }
    }
    Some(at)
}

/// Append `path` as `name`, and what is below it down to `depth` levels:
/// directories, symlinks as links, regular files. Returns false once the
/// budget is spent (the rest is left out).
fn append_tree<W: std::io::Write>(tar: &mut tar::Builder<W>, path: &Path, name: &str, depth: usize, budget: &mut Budget) -> std::io::Result<bool> {
    let meta = path.symlink_metadata()?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    let kind = meta.file_type();
    if kind.is_symlink() {
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        tar.append_link(&mut header, name, std::fs::read_link(path)?)?;
    } else if kind.is_dir() {
        header.set_size(0);
        tar.append_data(&mut header, name, std::io::empty())?;
        if depth > 0 {
            let mut children: Vec<_> = std::fs::read_dir(path)?.filter_map(Result::ok).map(|e| e.file_name()).collect();
            children.sort();
            for child in children {
                let child_name = format!("{name}/{}", child.to_string_lossy());
                if !append_tree(tar, &path.join(&child), &child_name, depth - 1, budget)? {
                    return Ok(false);
                }
            }
        }
    } else if kind.is_file() {
        if !budget.contents {
            header.set_size(0);
            tar.append_data(&mut header, name, std::io::empty())?;
            return Ok(true);
        }
        if meta.len() > budget.left {
            tracing::warn!(file = name, "the image's files beyond {} KiB left out", (budget.used + budget.left) >> 10);
            return Ok(false);
        }
        let Some(file) = open_regular(path)? else { return Ok(true) };
        header.set_size(meta.len());
        header.set_mode(meta.permissions().mode());
        tar.append_data(&mut header, name, file.take(meta.len()))?;
        budget.left -= meta.len();
        budget.used += meta.len();
    }
    Ok(true)
}

/// `path` opened for reading when it is a regular file (`None`: anything
/// else). Never a link, and never blocking on open: the daemon reads as
/// root from outside the container's device rules, so an image's device
/// node or FIFO at a path it reads must not be read, nor hold it.
fn open_regular(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(file.metadata()?.file_type().is_file().then_some(file))
}

/// A file of the image, at most `limit` bytes; empty when absent, a link,
/// or not a regular file.
fn read_file(root: &Path, path: &str, limit: u64) -> std::io::Result<String> {
    let Some(at) = inside(root, path) else { return Ok(String::new()) };
    let mut data = Vec::new();
    match open_regular(&at) {
        Ok(Some(f)) => f.take(limit).read_to_end(&mut data)?,
        _ => return Ok(String::new()),
    };
    Ok(String::from_utf8_lossy(&data).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_anywhere_in_the_path_is_never_followed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/share/man/man1")).unwrap();
        std::fs::write(root.path().join("usr/share/man/man1/ls.1"), "page").unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("share")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.path().join("passwd")).unwrap();
        assert!(inside(root.path(), "/usr/share/man").is_some());
        assert!(inside(root.path(), "/share/x").is_none());
        assert!(inside(root.path(), "/usr/../etc").is_none());
        assert_eq!(read_file(root.path(), "/passwd", 100).unwrap(), "");
        assert_eq!(read_file(root.path(), "/usr/share/man/man1/ls.1", 2).unwrap(), "pa");
        // A FIFO is never opened for reading (it would block), a device never read.
        nix::unistd::mkfifo(&root.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(read_file(root.path(), "/fifo", 100).unwrap(), "");
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(&root.path().join("zero"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o644), makedev(1, 5)).unwrap();
        assert_eq!(read_file(root.path(), "/zero", 100).unwrap(), "");
    }

    #[test]
    fn a_tree_reads_as_the_engine_s_archive_of_it_within_its_budget() {
        let root = tempfile::tempdir().unwrap();
        let man = root.path().join("man");
        std::fs::create_dir_all(man.join("man1")).unwrap();
        std::fs::write(man.join("man1/a.1"), "aaaa").unwrap();
        std::fs::write(man.join("man1/b.1"), "bbbb").unwrap();
        std::os::unix::fs::symlink("a.1", man.join("man1/c.1")).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut budget = Budget { left: 6, used: 0, contents: true };
        assert!(!append_tree(&mut tar, &man, "man", usize::MAX, &mut budget).unwrap());
        let bytes = tar.into_inner().unwrap();
        let names: Vec<String> = tar::Archive::new(&bytes[..]).entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["man", "man/man1", "man/man1/a.1"]);
        assert_eq!(budget.used, 4);
    }
}
