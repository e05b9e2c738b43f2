//! The words every stage of a call shares (dispatch, exec, pool, link): who
//! calls, how a call is refused ([`Failure`]), what a started tool is, and why a container
//! could not serve. A leaf: it depends on nothing else of the daemon but
//! the listener's peer.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// The caller as the kernel reported it when it connected (SO_PEERCRED,
/// SO_PEERGROUPS, SO_PEERPIDFD), never as it claims.
pub type Caller = Arc<crate::protocol::peer::Peer>;

pub use crate::protocol::Failure;

/// A tool the agent started: its connection (handed to the launcher; none
/// when the agent follows the launcher over the launcher's own channel),
/// pid and, in pty mode, the pty master. `relayed`: the connection is served
/// by the daemon for a call on a remote engine.
pub struct Started {
    pub agent: Option<UnixStream>,
    pub pid: i32,
    pub container: String,
    pub pty_master: Option<OwnedFd>,
    pub relayed: bool,
    /// When the spawn request went to the agent and its answer came back
    /// ([`crate::protocol::stages`]); 0 where not taken (the relay).
    pub sent_at: u64,
    pub started_at: u64,
}

/// Why a tool did not start: its container's agent is gone (the container
/// is replaced, once), or this request is refused (the container serves on).
pub enum StartError {
    Unreachable(String),
    Refused(Failure),
}

/// Why the pool could not give a call a container.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// The engine said no (its status and message kept as data).
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// The last fetch of the image failed; no new attempt until the backoff ends.
    #[error("{message} (next attempt in {wait_s}s)")]
    Backoff { message: String, wait_s: u64 },
    /// The container started but its agent never answered.
    #[error("the odfs agent did not come up in a container of image {image} within {limit_s}s (its output: docker logs {container})")]
    AgentSilent { image: String, limit_s: u64, container: String },
    /// Tools still run and the caller did not force the stop.
    #[error("{running} tool(s) still run in the container of image {image} (wait, or stop with --force to kill them)")]
    Busy { running: u32, image: String },
    /// A host-side step of the setup failed (a directory, a file, a token).
    #[error("cannot {what}: {cause}")]
    Setup { what: String, cause: String },
}

impl PoolError {
    /// A setup step that failed with an I/O error.
    pub fn setup(what: impl Into<String>, cause: impl std::fmt::Display) -> PoolError {
        PoolError::Setup { what: what.into(), cause: cause.to_string() }
    }
}
