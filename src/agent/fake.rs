//! A fake agent for relay tests: the other end of `odfs-agent relay`, on a
//! socket of the test's, with a "tool" whose behaviour the tests know.

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use crate::protocol::{self, AgentEvent, AgentRequest};

/// A spawn request for the fake agent's tool, `upcase`, with the caller's
/// fds `fds`.
pub fn spawn_request(fds: Vec<i32>) -> protocol::SpawnRequest {
    protocol::SpawnRequest {
        version: protocol::PROTOCOL_VERSION,
        call_id: 7,
        token: "t".into(),
        program: b"upcase".to_vec(),
        argv: vec![b"upcase".to_vec()],
        env: vec![],
        cwd: b"/".to_vec(),
        identity: protocol::Identity { uid: 1000, gid: 1000, groups: vec![], passwd_line: None, group_line: None, caps: 0 },
        passed: protocol::Passed { fds, ..Default::default() },
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
            let _ = protocol::send(&conn, &AgentEvent::Status { running: 0, idle_ms: 0, finished: vec![], memory: 0 }, &[]);
            return;
        }
        AgentRequest::Spawn(s) => s,
        other => return note(format!("unexpected {other:?}")),
    };
    // Account lines to append, and a request to trace, only where asked.
    let id = &spawn.identity;
    let extra: String = [&id.passwd_line, &id.group_line].into_iter().flatten().map(|l| format!(" + {l}")).chain(spawn.passed.trace.then(|| " traced".into())).collect();
    note(format!("spawn {} call={} fds {:?}{extra}", String::from_utf8_lossy(&spawn.program), spawn.call_id, spawn.passed.fds));
    let mut by_target: std::collections::HashMap<i32, std::fs::File> =
        spawn.passed.fds.iter().copied().zip(fds.into_iter().map(std::fs::File::from)).collect();
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
