//! Images over time on the Docker Engine API: what is here and how big,
//! which containers hold which image, removing images and the build cache,
//! the engine's free space, a recipe's stamp, and a version command run in
//! a throw-away container. `odfs update`, `odfs gc` and `odfs status` use it.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::docker::Docker;
use super::BackendError;

/// A local image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    /// `repo:tag` names (none for an image an update left untagged).
    pub tags: Vec<String>,
    /// `repo@sha256:…` names, where it came from a registry.
    pub digests: Vec<String>,
    pub size: u64,
    /// When it was built (Unix seconds).
    pub created_s: i64,
    /// When it was last pulled or tagged here (Unix ms), if the engine says.
    pub tagged_ms: Option<i64>,
    pub labels: HashMap<String, String>,
}

/// A container on the engine, as gc needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub id: String,
    pub image_id: String,
    /// Made by odfs (any mount's).
    pub managed: bool,
    /// The mount that made it (empty: not odfs's).
    pub mount: String,
    pub running: bool,
    /// When it was created (Unix seconds).
    pub created_s: i64,
    /// Made ahead of a call by odfs ([`super::LABEL_AHEAD`]).
    pub ahead: bool,
}

/// Bytes of a version command's output kept.
const MAX_VERSION_OUTPUT: usize = 4096;
/// How long a version command may run.
const VERSION_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

fn millis(date: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(date.trim_end_matches('Z').split('.').next()?)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

impl Docker {
    pub(super) async fn inspect_info(&self, reference: &str) -> Result<Option<ImageInfo>, BackendError> {
        let img = match self.client().await?.inspect_image(reference).await {
            Ok(i) => i,
            Err(e) if super::docker::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.classify(e)),
        };
        Ok(Some(ImageInfo {
            id: img.id.unwrap_or_default(),
            tags: img.repo_tags.unwrap_or_default(),
            digests: img.repo_digests.unwrap_or_default(),
            size: img.size.unwrap_or(0).max(0) as u64,
            created_s: img.created.as_deref().and_then(millis).map_or(0, |ms| ms / 1000),
            tagged_ms: img.metadata.and_then(|m| m.last_tag_time).as_deref().and_then(millis).filter(|&ms| ms > 0),
            labels: img.config.and_then(|c| c.labels).unwrap_or_default(),
        }))
    }

    pub(super) async fn list_image_infos(&self) -> Result<Vec<ImageInfo>, BackendError> {
        let found = self
            .client()
            .await?
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .map_err(|e| self.classify(e))?;
        Ok(found
            .into_iter()
            .map(|i| ImageInfo {
                id: i.id,
                tags: i.repo_tags.into_iter().filter(|t| t != "<none>:<none>").collect(),
                digests: i.repo_digests.into_iter().filter(|t| t != "<none>@<none>").collect(),
                size: i.size.max(0) as u64,
                created_s: i.created,
                tagged_ms: None,
                labels: i.labels,
            })
            .collect())
    }

    pub(super) async fn holders(&self) -> Result<Vec<Holder>, BackendError> {
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).build();
        let found = self.client().await?.list_containers(Some(opts)).await.map_err(|e| self.classify(e))?;
        Ok(found
            .into_iter()
            .map(|c| Holder {
                id: c.id.unwrap_or_default(),
                image_id: c.image_id.unwrap_or_default(),
                managed: c.labels.as_ref().is_some_and(|l| l.contains_key(super::LABEL_MANAGED)),
                mount: c.labels.as_ref().and_then(|l| l.get(super::LABEL_MOUNT)).cloned().unwrap_or_default(),
                running: c.state.is_some_and(|s| matches!(s.to_string().as_str(), "running" | "paused" | "restarting")),
                created_s: c.created.unwrap_or(0),
                ahead: c.labels.as_ref().is_some_and(|l| l.contains_key(super::LABEL_AHEAD)),
            })
            .collect())
    }

    /// Remove an image by id, never forced: the engine refuses one a
    /// container still uses. Absent is fine.
    pub(super) async fn remove_image_id(&self, id: &str) -> Result<(), BackendError> {
        // Every name of it goes (an untagged image has none).
        match self.client().await?.remove_image(id, None::<bollard::query_parameters::RemoveImageOptions>, None).await {
            Ok(_) => Ok(()),
            Err(e) if super::docker::is_not_found(&e) => Ok(()),
            // In use, or under several names (someone else's too): it stays.
            Err(e) => Err(self.classify(e)),
        }
    }

    /// Drop the engine's build cache unused for `unused_s`; the bytes it
    /// freed, when it says.
    pub(super) async fn prune_builds(&self, unused_s: u64) -> Result<u64, BackendError> {
        let filters = HashMap::from([("until".to_string(), vec![format!("{unused_s}s")])]);
        let opts = bollard::query_parameters::PruneBuildOptions { filters: Some(filters), ..Default::default() };
        match self.client().await?.prune_build(Some(opts)).await {
            Ok(r) => Ok(r.space_reclaimed.unwrap_or(0).max(0) as u64),
            // Engines without a build cache API (Podman's compat layer).
            Err(e) if super::docker::is_not_found(&e) => Ok(0),
            Err(e) => Err(self.classify(e)),
        }
    }

    /// The engine's data root and its file system's free and total bytes,
    /// when it is on this machine.
    pub(super) async fn data_root_space(&self) -> Result<Option<(String, u64, u64)>, BackendError> {
        if !self.local() {
            return Ok(None);
        }
        let info = self.client().await?.info().await.map_err(|e| self.classify(e))?;
        let Some(root) = info.docker_root_dir.filter(|r| !r.is_empty()) else { return Ok(None) };
        Ok(statvfs(Path::new(&root)).map(|(free, total)| (root, free, total)))
    }

    /// A recipe's stamp: its files (names and contents, in order), the ids
    /// of the base images its Dockerfile names, and the CA bundle a build
    /// adds. Any change gives another stamp.
    pub(super) async fn stamp_of(&self, recipe: &Path) -> std::io::Result<String> {
        let dir = recipe.to_path_buf();
        let ca = self.engine.outbound.ca_bundle.clone();
        let (mut h, dockerfile) = tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256, String)> {
            let mut h = Sha256::new();
            let mut files = Vec::new();
            collect_files(&dir, &dir, &mut files)?;
            files.sort();
            for rel in &files {
                h.update(rel.as_bytes());
                h.update([0]);
                h.update(std::fs::read(dir.join(rel))?);
                h.update([0]);
            }
            if let Some(ca) = ca {
                h.update(std::fs::read(ca)?);
            }
            Ok((h, std::fs::read_to_string(dir.join("Dockerfile"))?))
        })
        .await
        .map_err(std::io::Error::other)??;
        for base in super::progress::base_images(&dockerfile) {
            let id = self.inspect_info(&base).await.ok().flatten().map(|i| i.id).unwrap_or_else(|| "absent".into());
            h.update(format!("{base}={id}\0").as_bytes());
        }
        Ok(h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect())
    }

    /// Run `argv` in a throw-away container of `image` and give its first
    /// line of output: no network, no capability, as nobody, bounded in
    /// time, memory and output. It carries the mount's label, so one left
    /// behind by a crash is removed at the next start.
    pub(super) async fn version_output(&self, image: &str, argv: &[String], mount_id: &str) -> Result<String, BackendError> {
        let client = self.client().await?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(argv.to_vec()),
            cmd: Some(vec![]),
            user: Some("65534:65534".into()),
            labels: Some(HashMap::from([
                (super::LABEL_MANAGED.to_string(), "true".to_string()),
                (super::LABEL_MOUNT.to_string(), mount_id.to_string()),
            ])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(true),
                memory: Some(256 << 20),
                pids_limit: Some(64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = client.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await.map_err(|e| self.classify(e))?;
        let id = created.id;
        let run = async {
            client.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await.map_err(|e| self.classify(e))?;
            let mut wait = client.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
            while let Some(r) = wait.next().await {
                // A non-zero exit is an answer too: its output says why.
                if let Err(e) = r {
                    if !matches!(e, bollard::errors::Error::DockerContainerWaitError { .. }) {
                        return Err(self.classify(e));
                    }
                }
            }
            let opts = bollard::query_parameters::LogsOptionsBuilder::new().stdout(true).stderr(true).build();
            let mut logs = client.logs(&id, Some(opts));
            let mut out = Vec::new();
            while let Some(Ok(chunk)) = logs.next().await {
                out.extend_from_slice(&chunk.into_bytes());
                if out.len() >= MAX_VERSION_OUTPUT {
                    break;
                }
            }
            out.truncate(MAX_VERSION_OUTPUT);
            let text = String::from_utf8_lossy(&out);
            let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            Ok(line.chars().filter(|c| !c.is_control()).take(200).collect())
        };
        let result = match tokio::time::timeout(VERSION_LIMIT, run).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Engine(format!("{} did not finish within {}s", argv.join(" "), VERSION_LIMIT.as_secs()))),
        };
        self.remove_quietly(&id).await;
        result
    }
}

/// Free and total bytes of the file system holding `path`.
pub fn statvfs(path: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain data, for which all zeroes is a value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a buffer of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_bavail as u64 * s.f_frsize as u64, s.f_blocks as u64 * s.f_frsize as u64))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        // Followed as the build context's tar follows links.
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn engine_dates_become_unix_milliseconds() {
        assert_eq!(super::millis("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(super::millis("2026-12-02T03:03:00.123456789Z"), Some(1_796_180_580_000));
        assert_eq!(super::millis("0001-01-01T00:00:00Z"), None);
        assert_eq!(super::millis("garbage"), None);
    }
}
