//! The words every stage of a call shares (dispatch, exec, pool, link): who
//! calls, why a call did not start ([`CallError`], turned into what its
//! caller sees in one place: [`CallError::into_failure`]), what a started
//! tool is, and why a container could not serve. A leaf: it depends on
//! nothing else of the daemon.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{EXIT_NOT_FOUND, EXIT_ODFS_ERROR, PROTOCOL_VERSION};

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
    /// How its container came up for this call.
    pub up: crate::protocol::stages::UpStamps,
}

/// Why a tool did not start: its container's agent is gone (the container
/// is replaced, once), or this request is refused (the container serves on).
pub enum StartError {
    Unreachable(String),
    Refused(CallError),
}

/// Why a call did not start. Every stage returns it (exec, paths, pool,
/// link); the caller sees its text and [`CallError::status`], and the log
/// gets it at [`CallError::level`], both only through
/// [`CallError::into_failure`]. The caller's own mistakes are logged at
/// debug (a user can make them at will), odfs's and the engine's troubles
/// as throttled warnings.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No catalog entry: 127, as a shell's "command not found".
    #[error("not in the catalog of this mount (odfs status shows what runs)")]
    NotInCatalog,
    /// The image is for some groups, none of them the caller's.
    #[error("permission denied (allowed groups: {})", .groups.join(", "))]
    Denied { groups: Vec<String> },
    /// The nearest pin file names a version the catalog lacks.
    #[error("{} pins {command} to {version}, which this catalog does not offer (it has {}); change the pin, or add an image with version = \"{version}\"", .file.display(), .offered.join(", "))]
    BadPin { file: PathBuf, command: String, version: String, offered: Vec<String> },
    /// The launcher speaks another protocol: one of the two was upgraded.
    #[error("odfs-launch speaks protocol {launcher} but the daemon speaks {PROTOCOL_VERSION} (restart the daemon after an upgrade)")]
    Version { launcher: u32 },
    /// The call's stamp: missing inside a container, or nested too deep.
    #[error(transparent)]
    Stamp(#[from] super::stamps::StampRefusal),
    /// The request is refused as sent (its fds, its channel, its size).
    #[error("{0}")]
    Request(String),
    /// The caller cannot be followed: its working directory, or it exited.
    #[error("{0}")]
    Caller(String),
    /// The tool would not see, at a path the call names, the caller's file.
    #[error("{0}")]
    NotShared(String),
    /// A file system under the paths the call names does not answer.
    #[error("{0}")]
    Hung(String),
    /// No container could be had (the engine, a fetch, a setup step).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The container's agent is gone, and so was its replacement's.
    #[error("the container of image {image} does not answer: {cause}")]
    AgentGone { image: String, cause: String },
    /// The agent could not make the tool: its own answer, with its status
    /// (127 for a program the image lacks).
    #[error("{}", .0.message)]
    Spawn(Failure),
    /// Starting the tool failed on the way: the agent lost mid-start, no
    /// answer in time, the relay not set up.
    #[error("{0}")]
    Start(String),
    /// An archive package not on this machine, under `fetch = "never"`: 127.
    #[error("Debian package {package} is not on this machine, and this mount runs only what root fetched (fetch = \"never\"): ask root to run `odfs fetch {command}`")]
    NotFetched { command: String, package: String },
    /// The caller answered no to fetching the package: 127, nothing fetched.
    #[error("not fetched (Debian package {package} {version})")]
    Declined { package: String, version: String },
    /// The package would take the managed images past `[gc] image_budget`.
    /// (Sizes as people read them.)
    #[error("fetching Debian package {package} ({adds} installed) would take the images odfs manages past their budget ({held} held of {budget}): root can remove unused ones (odfs gc) or raise [gc] image_budget")]
    OverBudget { package: String, adds: String, held: String, budget: String },
    /// The caller brought its hour's share of new packages.
    #[error("you brought {limit} new packages to this machine within the hour (new_packages_per_hour of [archive.debian]): try again in {wait_min} min, or ask root to run `odfs fetch {command}`")]
    PackageQuota { command: String, limit: u32, wait_min: u64 },
}

impl CallError {
    /// The exit status the caller's launcher ends with.
    pub fn status(&self) -> i32 {
        match self {
            CallError::NotInCatalog | CallError::NotFetched { .. } | CallError::Declined { .. } => EXIT_NOT_FOUND,
            CallError::Spawn(f) => f.exit_code,
            _ => EXIT_ODFS_ERROR,
        }
    }

    /// How loud the daemon's log says it.
    pub fn level(&self) -> tracing::Level {
        match self {
            CallError::Pool(PoolError::Backoff { .. }) => tracing::Level::DEBUG,
            CallError::Pool(_) | CallError::AgentGone { .. } | CallError::Start(_) => tracing::Level::WARN,
            CallError::NotInCatalog
            | CallError::Version { .. }
            | CallError::Hung(_)
            | CallError::Denied { .. }
            | CallError::BadPin { .. }
            | CallError::Stamp(_)
            | CallError::Request(_)
            | CallError::Caller(_)
            | CallError::NotShared(_)
            | CallError::Spawn(_)
            | CallError::NotFetched { .. }
            | CallError::Declined { .. }
            | CallError::PackageQuota { .. }
            | CallError::OverBudget { .. } => tracing::Level::DEBUG,
        }
    }

    /// What the caller (of `uid`, where known) is told: the one place a
    /// call's failure becomes text and an exit status, logged here at its
    /// level (at debug, in the call's span, which names the call and its
    /// command).
    pub fn into_failure(self, uid: Option<u32>) -> Failure {
        let message = self.to_string();
        match self.level() {
            tracing::Level::WARN => CALL_TROUBLE.note(uid, &message),
            _ => tracing::debug!(uid, "call refused: {message}"),
        }
        Failure::with_status(message, self.status())
    }
}

/// Admin requests share the stages of a call (a pin, the caller's
/// directory): their failures reach the admin CLI the same way.
impl From<CallError> for Failure {
    fn from(e: CallError) -> Failure {
        e.into_failure(None)
    }
}

/// A warning that a flood could repeat without end: written at most every
/// 10 s, with how often it came meanwhile; the rest go to debug.
pub struct Throttled {
    /// When the last line was written, and notes since.
    since: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub const fn new() -> Throttled {
        Throttled { since: std::sync::Mutex::new((None, 0)) }
    }

    /// Note `why`, of a request of `uid` where known.
    pub fn note(&self, uid: Option<u32>, why: &str) {
        let mut s = self.since.lock().unwrap();
        s.1 += 1;
        if s.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(uid, times = s.1, "{why} (times since the last such line)");
            *s = (Some(Instant::now()), 0);
        } else {
            tracing::debug!(uid, "{why}");
        }
    }
}

/// Calls that failed for odfs's or the engine's reasons: any user can
/// repeat one at will while the engine is down.
static CALL_TROUBLE: Throttled = Throttled::new();

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_the_status_scripts_rely_on_and_a_level_a_user_cannot_raise() {
        let cases = [
            (CallError::NotInCatalog, EXIT_NOT_FOUND, tracing::Level::DEBUG),
            (CallError::Spawn(Failure::with_status("jq: not found in the image", EXIT_NOT_FOUND)), EXIT_NOT_FOUND, tracing::Level::DEBUG),
            (CallError::Denied { groups: vec!["video".into()] }, EXIT_ODFS_ERROR, tracing::Level::DEBUG),
            (CallError::Stamp(super::super::stamps::StampRefusal::TooDeep), EXIT_ODFS_ERROR, tracing::Level::DEBUG),
            (CallError::Pool(PoolError::Backoff { message: "pull failed".into(), wait_s: 4 }), EXIT_ODFS_ERROR, tracing::Level::DEBUG),
            (CallError::Pool(PoolError::setup("create /run/x", "denied")), EXIT_ODFS_ERROR, tracing::Level::WARN),
            (CallError::AgentGone { image: "i".into(), cause: "refused".into() }, EXIT_ODFS_ERROR, tracing::Level::WARN),
            (CallError::Version { launcher: 1 }, EXIT_ODFS_ERROR, tracing::Level::DEBUG),
            (CallError::Hung("a file system does not answer".into()), EXIT_ODFS_ERROR, tracing::Level::DEBUG),
            (CallError::Start("the agent went away".into()), EXIT_ODFS_ERROR, tracing::Level::WARN),
        ];
        for (e, status, level) in cases {
            assert_eq!((e.status(), e.level()), (status, level), "{e}");
            let text = e.to_string();
            let f = e.into_failure(Some(1000));
            assert_eq!((f.message, f.exit_code), (text, status));
        }
        let pin = CallError::BadPin { file: "/p/.tool-versions".into(), command: "jq".into(), version: "9".into(), offered: vec!["1.6".into(), "1.7".into()] };
        assert_eq!(pin.to_string(), "/p/.tool-versions pins jq to 9, which this catalog does not offer (it has 1.6, 1.7); change the pin, or add an image with version = \"9\"");
    }
}
