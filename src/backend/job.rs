//! One shell script run to its end in a throw-away container, and the files
//! it leaves in a directory read back through the engine's archive API, so
//! it works on a remote engine as on a local one (no bind of a host path).
//! The archive index's fetch (apt in a Debian image) runs this way.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use futures_util::StreamExt;

use super::docker::Docker;
use super::BackendError;

/// A script to run and what to bring back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub image: String,
    /// Run by `sh -c`, as root.
    pub script: String,
    /// `NAME=value` pairs: how values reach the script without being
    /// spliced into its text.
    pub env: Vec<String>,
    /// The directory in the container whose regular files come back.
    pub out_dir: String,
    /// Labels of the container (the mount's, so one left behind by a crash
    /// is removed at the next start).
    pub labels: HashMap<String, String>,
    pub time_limit: Duration,
    /// Bytes of files brought back, at most.
    pub max_bytes: u64,
}

/// What a job left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOutput {
    /// (path relative to the out directory, content), in archive order.
    pub files: Vec<(String, Vec<u8>)>,
    /// The end of what it wrote on stdout and stderr.
    pub log: String,
}

/// Bytes of a job's output kept for its log.
const LOG_TAIL: usize = 4096;

/// The capabilities a job's script holds (root's, in the container).
const JOB_CAPS: [&str; 5] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"];

/// Processes a job's container may hold at once.
const JOB_PIDS: i64 = 256;

/// A job's container, removed (forced) when this is dropped with `id` set.
struct Removal {
    client: bollard::Docker,
    id: Option<String>,
}

impl Drop for Removal {
    fn drop(&mut self) {
        let (Some(id), Ok(rt)) = (self.id.take(), tokio::runtime::Handle::try_current()) else { return };
        let client = self.client.clone();
        rt.spawn(async move {
            let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).v(true).build();
            if let Err(e) = client.remove_container(&id, Some(opts)).await {
                tracing::warn!(container = id, "cannot remove a job's container: {e}");
            }
        });
    }
}

impl Docker {
    /// Run `job` with the host's network (a package manager reaching its
    /// mirror as the host does), wait for it, and read its files; the
    /// container is removed whatever happens. A non-zero exit is an error
    /// with the end of its output.
    pub(super) async fn job_run(&self, job: &Job) -> Result<JobOutput, BackendError> {
        let client = self.client().await?;
        let body = ContainerCreateBody {
            image: Some(job.image.clone()),
            entrypoint: Some(vec!["sh".into(), "-c".into(), job.script.clone()]),
            cmd: Some(vec![]),
            env: Some(job.env.clone()),
            user: Some("0:0".into()),
            labels: Some(job.labels.clone()),
            host_config: Some(HostConfig {
                network_mode: Some("host".into()),
                security_opt: Some(vec!["no-new-privileges".into()]),
                // On the host's network, no raw sockets and nothing but what
                // a package manager needs as root: its files' owners and
                // modes, and its download sandbox's user (apt's `_apt`).
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(JOB_CAPS.iter().map(|c| c.to_string()).collect()),
                pids_limit: Some(JOB_PIDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let limit = job.time_limit;
        let timed_out = || BackendError::Engine(format!("the script in {} did not finish within {}s (is the mirror it fetches from reachable?)", job.image, limit.as_secs()));
        let created = tokio::time::timeout(limit, client.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body))
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| self.classify(e))?;
        let id = created.id;
        // Removed however the job ends, a dropped future (the daemon
        // stopping, its caller gone) included: else the script would run on
        // as root on the host's network.
        let mut removal = Removal { client: client.clone(), id: Some(id.clone()) };
        let run = async {
            client.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await.map_err(|e| self.classify(e))?;
            // None until the engine says how it ended: a wait cut short
            // (a remote engine's connection lost) is no success.
            let mut status = None;
            let mut wait = client.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>);
            while let Some(r) = wait.next().await {
                match r {
                    Ok(w) => status = Some(w.status_code),
                    Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => status = Some(code),
                    Err(e) => return Err(self.classify(e)),
                }
            }
            let log = self.log_tail(&id).await;
            match status {
                Some(0) => {}
                Some(status) => return Err(BackendError::Engine(format!("the script in {} exited with {status}: {}", job.image, log.trim()))),
                None => return Err(BackendError::Engine(format!("the engine did not say how the script in {} ended: {}", job.image, log.trim()))),
            }
            let files = self.read_out_dir(&id, &job.out_dir, job.max_bytes).await?;
            Ok(JobOutput { files, log })
        };
        let result = tokio::time::timeout(limit, run).await.unwrap_or_else(|_| Err(timed_out()));
        removal.id = None;
        self.remove_quietly(&id).await;
        result
    }

    /// The last [`LOG_TAIL`] bytes a container wrote (empty when the engine
    /// keeps no log).
    async fn log_tail(&self, id: &str) -> String {
        let Ok(client) = self.client().await else { return String::new() };
        let opts = bollard::query_parameters::LogsOptionsBuilder::new().stdout(true).stderr(true).tail("40").build();
        let mut logs = client.logs(id, Some(opts));
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = logs.next().await {
            out.extend_from_slice(&chunk.into_bytes());
            // Forty lines may be long ones: keep only the tail as it comes.
            if out.len() > 4 * LOG_TAIL {
                out.drain(..out.len() - LOG_TAIL);
            }
        }
        let start = out.len().saturating_sub(LOG_TAIL);
        String::from_utf8_lossy(&out[start..]).into_owned()
    }

    /// The regular files under `dir` in a (stopped) container.
    async fn read_out_dir(&self, id: &str, dir: &str, max_bytes: u64) -> Result<Vec<(String, Vec<u8>)>, BackendError> {
        // The tar's headers and padding come on top of the files.
        let limit = max_bytes as usize + (1 << 20);
        let tar = match self.download_head(id, dir, limit).await? {
            None => return Err(BackendError::Engine(format!("the script left no {dir}"))),
            Some((_, true)) => return Err(BackendError::Engine(format!("the script left more than {max_bytes} bytes in {dir}"))),
            Some((tar, false)) => tar,
        };
        regular_files(&tar).map_err(|e| BackendError::Engine(format!("the archive of {dir}: {e}")))
    }
}

/// The regular files of a tar archive of one directory, their paths taken
/// relative to it (the archive API names them `DIR/...`).
fn regular_files(tar: &[u8]) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut archive = tar::Archive::new(tar);
    let mut files = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let relative = path.split_once('/').map_or(path.as_str(), |(_, rest)| rest).to_string();
        // The header's size is the engine's word: the bytes read decide.
        let mut content = Vec::with_capacity((entry.size() as usize).min(1 << 20));
        entry.read_to_end(&mut content)?;
        files.push((relative, content));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    #[test]
    fn files_come_back_relative_to_the_directory_and_only_regular_ones() {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_size(0);
        b.append_data(&mut dir, "out/", &[][..]).unwrap();
        for (path, text) in [("out/Contents", &b"usr/bin/x  a/x\n"[..]), ("out/sub/stats", b"update_ms 9\n")] {
            let mut h = tar::Header::new_gnu();
            h.set_size(text.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, text).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "out/link", "/etc/passwd").unwrap();
        let files = super::regular_files(&b.into_inner().unwrap()).unwrap();
        assert_eq!(files, [("Contents".to_string(), b"usr/bin/x  a/x\n".to_vec()), ("sub/stats".to_string(), b"update_ms 9\n".to_vec())]);
    }
}
