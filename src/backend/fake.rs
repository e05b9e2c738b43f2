//! A recording backend for pool logic tests: "containers" are threads that
//! answer the agent's status request on the socket the pool waits for. Its
//! exec streams run the real `odfs-agent relay` code in a thread, against a
//! [`FakeAgent`], so the relay path is tested in-process on both sides.

use std::os::fd::{AsFd, AsRawFd};
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
    /// The agent socket an exec stream's relay talks to (a [`FakeAgent`]);
    /// without one, exec streams fail.
    pub relay_agent: Option<std::path::PathBuf>,
}

impl ContainerBackend for Fake {
    async fn ensure_image(&self, _reference: &str, _progress: &super::ProgressTx) -> Result<bool, BackendError> {
        Ok(false)
    }

    async fn build_image(&self, _reference: &str, _recipe: &std::path::Path, _progress: &super::ProgressTx) -> Result<(), BackendError> {
        Ok(())
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<String, BackendError> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.start_delay).await;
        let run = spec.binds.iter().find(|b| b.target.ends_with("run")).expect("run dir bind");
        let listener = UnixListener::bind(run.source.join("agent.sock")).map_err(|e| BackendError::Engine(e.to_string()))?;
        let running = self.running.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Ok(Some((AgentRequest::Status { .. }, _))) = protocol::recv::<AgentRequest>(&conn) {
                    let busy = running.load(Ordering::SeqCst);
                    let _ = protocol::send(&conn, &AgentEvent::Status { running: busy, idle_ms: 1_000_000, finished: vec![] }, &[]);
                }
            }
        });
        let id = format!("fake-{n}");
        self.live.lock().unwrap().push((spec.clone(), id.clone()));
        Ok(id)
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
            exec_path: "fd".into(),
            source: "test".into(),
            version: Ok("fake".into()),
        }
    }

    async fn list(&self, mount_id: &str) -> Result<Vec<Managed>, BackendError> {
        Ok(self
            .live
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s.labels.get(LABEL_MOUNT).map(String::as_str) == Some(mount_id))
            .map(|(s, id)| Managed { id: id.clone(), name: s.name.clone(), profile: s.labels[LABEL_PROFILE].clone(), running: true, paused: false, token: s.labels.get(super::LABEL_TOKEN).cloned().unwrap_or_default(), view: s.labels.get(super::LABEL_VIEW).cloned().unwrap_or_default() })
            .collect())
    }
}

/// An agent for relay tests, on a socket of its own. Its "tool" writes
/// its stdin back in upper case on its stdout and exits 3 at the end of its
/// input; a signal ends it as `Signaled`. What it was asked is in `seen`.
pub struct FakeAgent {
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl FakeAgent {
    pub fn serve(socket: &std::path::Path) -> std::io::Result<FakeAgent> {
        let listener = UnixListener::bind(socket)?;
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || fake_agent_connection(conn, &log));
            }
        });
        Ok(FakeAgent { seen })
    }

    /// What it has been asked so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn fake_agent_connection(conn: std::os::unix::net::UnixStream, log: &Mutex<Vec<String>>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::{Read, Write};
    let note = |s: String| log.lock().unwrap().push(s);
    let (req, fds) = match protocol::recv::<AgentRequest>(&conn) {
        Ok(Some(r)) => r,
        _ => return,
    };
    let spawn = match req {
        AgentRequest::Status { .. } => {
            note("status".into());
            let _ = protocol::send(&conn, &AgentEvent::Status { running: 0, idle_ms: 0, finished: vec![] }, &[]);
            return;
        }
        AgentRequest::Spawn(s) => s,
        other => return note(format!("unexpected {other:?}")),
    };
    note(format!("spawn {} fds {:?}", String::from_utf8_lossy(&spawn.program), spawn.fds));
    let mut by_target: std::collections::HashMap<i32, std::fs::File> =
        spawn.fds.iter().copied().zip(fds.into_iter().map(std::fs::File::from)).collect();
    let _ = protocol::send(&conn, &AgentEvent::Started { pid: 4242 }, &[]);
    let stdin = by_target.remove(&0);
    let mut stdout = by_target.remove(&1);
    loop {
        let mut polled = vec![PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
        if let Some(i) = &stdin {
            polled.push(PollFd::new(i.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut polled, PollTimeout::NONE).is_err() {
            return;
        }
        let ready: Vec<bool> = polled.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(polled);
        if ready[0] {
            match protocol::recv::<AgentRequest>(&conn) {
                Ok(Some((AgentRequest::Signal(sig), _))) => {
                    note(format!("signal {sig}"));
                    let _ = protocol::send(&conn, &AgentEvent::Signaled(sig), &[]);
                    return;
                }
                Ok(Some((other, _))) => note(format!("request {other:?}")),
                // The caller's side is gone: the agent kills the tool.
                _ => return note("dropped".into()),
            }
        }
        if ready.get(1) == Some(&true) {
            let mut buf = [0u8; 4096];
            match stdin.as_ref().expect("polled").read(&mut buf) {
                Ok(0) | Err(_) => {
                    drop(stdout.take());
                    let _ = protocol::send(&conn, &AgentEvent::Exited(3), &[]);
                    return note("exited 3".into());
                }
                Ok(n) => {
                    if let Some(o) = stdout.as_mut() {
                        let _ = o.write_all(&buf[..n].to_ascii_uppercase());
                    }
                }
            }
        }
    }
}
