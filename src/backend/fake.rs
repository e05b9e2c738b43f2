//! A recording backend for pool logic tests: "containers" are threads that
//! answer the agent's status request on the socket the pool waits for. Its
//! exec streams run the real `odfs-agent relay` code in a thread, against
//! an agent socket of the test's (`agent::fake::FakeAgent`), so the relay
//! path is tested in-process on both sides.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BackendError, ContainerBackend, ContainerSpec, Managed, LABEL_MOUNT, LABEL_PROFILE};
use crate::protocol::{self, AgentEvent, AgentRequest};

#[derive(Default)]
pub struct Fake {
    pub starts: AtomicUsize,
    pub removed: Mutex<Vec<String>>,
    pub paused: Mutex<Vec<String>>,
    pub live: Mutex<Vec<(ContainerSpec, String)>>,
    /// Reported busy tools, for keep-alive tests.
    pub running: Arc<AtomicU32>,
    pub start_delay: Duration,
    /// Image facts asked for.
    pub facts: AtomicUsize,
    /// The agent socket an exec stream's relay talks to (a fake agent);
    /// without one, exec streams fail.
    pub relay_agent: Option<std::path::PathBuf>,
    /// Jobs run, and what the next one answers (an error when unset).
    pub jobs: Mutex<Vec<super::Job>>,
    pub job_output: Mutex<Option<super::JobOutput>>,
}

impl ContainerBackend for Fake {
    async fn ensure_image(&self, _reference: &str, _progress: &super::ProgressTx) -> Result<bool, BackendError> {
        Ok(false)
    }

    async fn build_image(&self, _reference: &str, _recipe: &std::path::Path, _progress: &super::ProgressTx) -> Result<(), BackendError> {
        Ok(())
    }

    async fn pull(&self, _reference: &str, _progress: &super::ProgressTx) -> Result<(), BackendError> {
        Ok(())
    }

    async fn image_info(&self, reference: &str) -> Result<Option<super::ImageInfo>, BackendError> {
        Ok(Some(super::ImageInfo { id: format!("sha256:{reference}"), tags: vec![reference.to_string()], ..Default::default() }))
    }

    async fn registry_digest(&self, reference: &str) -> Result<String, BackendError> {
        Ok(format!("sha256:{reference}"))
    }

    async fn images(&self) -> Result<Vec<super::ImageInfo>, BackendError> {
        Ok(vec![])
    }

    async fn holders(&self) -> Result<Vec<super::Holder>, BackendError> {
        Ok(vec![])
    }

    async fn remove_image(&self, _id: &str) -> Result<(), BackendError> {
        Ok(())
    }

    async fn prune_build_cache(&self, _unused_s: u64) -> Result<u64, BackendError> {
        Ok(0)
    }

    async fn data_root_space(&self) -> Result<Option<(String, u64, u64)>, BackendError> {
        Ok(None)
    }

    async fn recipe_stamp(&self, _recipe: &std::path::Path) -> std::io::Result<String> {
        Ok(String::new())
    }

    async fn version_of(&self, _image: &str, _argv: &[String], _mount_id: &str) -> Result<String, BackendError> {
        Ok(String::new())
    }

    async fn run_job(&self, job: &super::Job) -> Result<super::JobOutput, BackendError> {
        self.jobs.lock().unwrap().push(job.clone());
        self.job_output.lock().unwrap().take().ok_or_else(|| BackendError::Engine("the fake has no job output".into()))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, BackendError> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        let id = format!("fake-{n}");
        self.live.lock().unwrap().push((spec.clone(), id.clone()));
        Ok(id)
    }

    async fn start(&self, id: &str, spec: &ContainerSpec) -> Result<String, BackendError> {
        tokio::time::sleep(self.start_delay).await;
        let run = spec.binds.iter().find(|b| b.target.ends_with("run")).expect("run dir bind");
        let listener = UnixListener::bind(run.source.join("agent.sock")).map_err(|e| BackendError::Engine(e.to_string()))?;
        let running = self.running.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Ok(Some((AgentRequest::Status { .. }, _))) = protocol::recv::<AgentRequest>(&conn) {
                    let busy = running.load(Ordering::SeqCst);
                    let _ = protocol::send(&conn, &AgentEvent::Status { running: busy, idle_ms: 1_000_000, finished: vec![], memory: 0 }, &[]);
                }
            }
        });
        Ok(id.to_string())
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        self.removed.lock().unwrap().push(id.to_string());
        self.live.lock().unwrap().retain(|(_, i)| i != id);
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        self.paused.lock().unwrap().push(id.to_string());
        Ok(())
    }

    async fn unpause(&self, id: &str) -> Result<(), BackendError> {
        self.paused.lock().unwrap().retain(|i| i != id);
        Ok(())
    }

    async fn executables(&self, _reference: &str, _mount_id: &str) -> Result<Vec<String>, BackendError> {
        Ok(vec!["/bin/sh".into(), "/usr/bin/jq".into()])
    }

    async fn image_id(&self, _reference: &str) -> Result<Option<String>, BackendError> {
        Ok(Some("sha256:fake".into()))
    }

    async fn image_facts(&self, _reference: &str, dirs: &[String], _mount_id: &str) -> Result<super::ImageFacts, BackendError> {
        self.facts.fetch_add(1, Ordering::SeqCst);
        Ok(super::ImageFacts {
            asked: dirs.to_vec(),
            passwd: "root:x:0:0:root:/root:/bin/sh\n".into(),
            ..Default::default()
        })
    }

    async fn image_docs(&self, _reference: &str, _commands: &[String], _mount_id: &str) -> Result<Vec<crate::share::Doc>, BackendError> {
        Ok(vec![])
    }

    async fn image_alternatives(&self, _reference: &str, _mount_id: &str) -> Result<std::collections::HashMap<String, String>, BackendError> {
        Ok(Default::default())
    }

    async fn local_images(&self) -> Result<Vec<String>, BackendError> {
        Ok(vec!["test/b".into()])
    }

    async fn exec_stream(&self, _id: &str, _cmd: Vec<String>) -> Result<super::ExecStream, BackendError> {
        let Some(socket) = self.relay_agent.clone() else { return Err(BackendError::Engine("the fake engine runs nothing".into())) };
        let io = |e: std::io::Error| BackendError::Engine(e.to_string());
        let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io(e.into()))?;
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io(e.into()))?;
        std::thread::spawn(move || {
            crate::agent::relay::serve(&socket, in_r.as_raw_fd(), crate::agent::relay::Out(out_w.as_raw_fd()));
            // The exec ends with the relay: both ends close.
            drop((in_r, out_w));
        });
        let input = tokio::net::unix::pipe::Sender::from_owned_fd(in_w).map_err(io)?;
        let output = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r).map_err(io)?;
        let output = futures_util::stream::unfold(output, |mut r| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 64 << 10];
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok((1u8, bytes::Bytes::from(buf))), r))
                }
                Err(e) => Some((Err(BackendError::Engine(e.to_string())), r)),
            }
        });
        Ok(super::ExecStream { output: Box::pin(output), input: Box::pin(input) })
    }

    fn exec_path(&self) -> super::ExecPath {
        super::ExecPath::Fd
    }

    async fn engine_info(&self) -> crate::protocol::EngineInfo {
        crate::protocol::EngineInfo {
            host: "fake://".into(),
            remote: false,
            exec_path: super::ExecPath::Fd,
            source: "test".into(),
            version: Ok("fake".into()),
            runtime: "fake".into(),
        }
    }

    async fn list(&self, mount_id: &str) -> Result<Vec<Managed>, BackendError> {
        Ok(self
            .live
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s.labels.get(LABEL_MOUNT).map(String::as_str) == Some(mount_id))
            .map(|(s, id)| Managed { id: id.clone(), name: s.name.clone(), profile: s.labels[LABEL_PROFILE].clone(), image_id: s.image.clone(), running: true, paused: false, token: s.labels.get(super::LABEL_TOKEN).cloned().unwrap_or_default(), view: s.labels.get(super::LABEL_VIEW).cloned().unwrap_or_default() })
            .collect())
    }
}
