//! The daemon's side of the agent socket: readiness and busy checks.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{self, AgentEvent, AgentRequest, Finished};

/// What an agent says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub running: u32,
    pub idle_ms: u64,
    pub finished: Vec<Finished>,
}

/// Ask an agent how many tools it runs and how long it has been idle.
/// Blocking; bounded by a short timeout so a frozen container cannot hang us.
pub fn status(socket: &Path, token: &str) -> std::io::Result<AgentStatus> {
    let conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let bad = |m: String| std::io::Error::other(m);
    protocol::send(&conn, &AgentRequest::Status { token: token.to_string() }, &[]).map_err(|e| bad(e.to_string()))?;
    match protocol::recv::<AgentEvent>(&conn).map_err(|e| bad(e.to_string()))? {
        Some((AgentEvent::Status { running, idle_ms, finished }, _)) => Ok(AgentStatus { running, idle_ms, finished }),
        other => Err(bad(format!("unexpected agent answer {other:?}"))),
    }
}

/// Wait until the agent at `socket` answers, up to `limit`.
pub fn wait_ready(socket: &Path, token: &str, limit: Duration) -> std::io::Result<AgentStatus> {
    let start = std::time::Instant::now();
    loop {
        match status(socket, token) {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
