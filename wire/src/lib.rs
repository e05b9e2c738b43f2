//! The messages between launcher, daemon and agent, and how they are
//! encoded (postcard): one crate without `std`, so that the launcher, which
//! runs without libc, speaks exactly the daemon's protocol.
//!
//! Three parties speak on two kinds of connection:
//! - control socket: `odfs-launch` (or the admin CLI) → daemon: one [`Request`],
//!   answered by one [`Response`];
//! - agent socket: daemon → `odfs-agent`: an [`AgentRequest::Spawn`], answered by
//!   [`AgentEvent::Started`]; the daemon then hands that very connection to the
//!   launcher, which sends [`AgentRequest::Signal`]s and receives the final
//!   [`AgentEvent::Exited`] / [`AgentEvent::Signaled`].
//!
//! Byte strings (`Vec<u8>`) carry arguments, paths and environment because
//! none of them is guaranteed to be UTF-8. Framing (a u32 length, fds on the
//! first byte) is each side's own: see `odfs::protocol`.
#![no_std]

extern crate alloc;

pub mod frame;
pub mod progress;
pub mod stages;
pub mod tty;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// Largest frame accepted: argv plus environment are bounded by ARG_MAX (2 MiB
/// by default), so 4 MiB leaves room and still stops a runaway peer.
pub const MAX_FRAME: usize = 4 << 20;
/// Most fds one frame may carry (every open fd of a caller, within reason).
pub const MAX_FDS: usize = 250;

/// The PATH of an image that sets none, as the engines give it; the agent
/// and the image index search it alike.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bumped whenever a message changes shape; both ends check it on connect.
pub const PROTOCOL_VERSION: u32 = 14;

/// Exit status of the launcher when odfs itself (not the tool) failed, like a
/// shell's "found but could not be executed".
pub const EXIT_ODFS_ERROR: i32 = 126;
/// Exit status when the command does not exist in its image, like a shell's
/// "command not found".
pub const EXIT_NOT_FOUND: i32 = 127;

/// First message on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Run a command. The fds listed in `fds` travel with this frame.
    Exec(ExecRequest),
    /// Describe the daemon's containers (admin CLI).
    Status,
    /// Call figures per command (admin CLI).
    Stats,
    /// Every command with its image and state.
    List,
    /// Map a command to an image (root only).
    Add { command: String, image: String, path: Option<String> },
    /// Unmap a command added with `Add` (root only).
    Remove { command: String },
    /// Remove containers now: one command's, or all (root only). Containers
    /// running tools are left alone unless `force`.
    Stop { command: Option<String>, force: bool },
    /// Start a command's container ahead of use.
    Prewarm { command: String },
    /// Pull the images of these commands (all when empty) (root only).
    Pull { commands: Vec<String> },
    /// List the executables on an image's PATH without running it; with
    /// `add`, map them all as commands (root only).
    Scan { image: String, add: bool },
    /// Which local images have this command on their PATH.
    Provides { command: String },
    /// The same, from what the daemon has already indexed only: an instant
    /// answer for a shell's command-not-found hook.
    Hint { command: String },
    /// What a command's tool sees of the host.
    View { command: String },
    /// Fetch the images of these commands again (all when empty) and move
    /// their containers to what changed; with `check`, only report; with
    /// `archive`, refresh the archive's indexes instead, and build again
    /// the images of packages they have in a newer version (root only).
    Update { commands: Vec<String>, check: bool, archive: bool },
    /// Remove images odfs manages that are unused or over the budget, and
    /// leftovers; with `dry_run`, only list. The limits override the
    /// config for this run (root only).
    Gc { dry_run: bool, max_age_s: Option<u64>, budget: Option<u64> },
    /// Start a new daemon with this one's command line (its binary as it is
    /// now), which takes the mount over; this one then exits (root only).
    Restart,
    /// The launcher's answer to [`Response::Ask`], on the exec request's
    /// connection: whether the caller said yes.
    Answer { yes: bool },
}

/// A local image odfs manages, for `odfs status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUsage {
    /// Its names (empty: an image an update left behind).
    pub references: Vec<String>,
    pub id: String,
    pub size: u64,
    /// When a tool last ran in it (Unix ms), if ever.
    pub last_used_ms: Option<i64>,
    /// Containers that hold it.
    pub containers: u32,
    /// A catalog entry names it.
    pub needed: bool,
}

/// What a tool sees of the host (`odfs show`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewInfo {
    /// Host paths it sees at the same path.
    pub host: Vec<String>,
    /// Top-level directories that are the image's own (read-only).
    pub image: Vec<String>,
    /// Of those, the ones the host has too but the image fills.
    pub filled: Vec<String>,
    /// Host paths whose later mounts and unmounts do not reach the container
    /// (their host mount is private).
    pub private: Vec<String>,
    /// The tools run on a remote engine: the paths are the remote host's.
    pub remote: bool,
    /// Whose processes, IPC and host name the tool has, in a line.
    pub namespaces: String,
    /// Which of the caller's environment it gets, in a line.
    pub environment: String,
    /// Which version the asking caller gets in their directory, and why
    /// (empty for a command without versions).
    pub version: String,
    /// The devices and GPUs it is given, in a line (empty: none).
    pub devices: String,
    /// For an archive command: its package, version, suite and other
    /// providers, a line each (empty for the catalog's).
    pub package: Vec<String>,
    /// The view is not known yet: the package's image is not on this
    /// machine (the other fields are empty).
    pub unfetched: bool,
}

/// One command as `odfs ls` and `odfs show` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    pub command: String,
    pub image: String,
    pub reference: String,
    pub program: String,
    pub args: Vec<String>,
    pub network: String,
    pub user: String,
    pub keep_alive: String,
    pub state: ContainerPhase,
    /// `file:line` of its definition.
    pub origin: String,
    /// Its image's version; for a bare name with versions, the default one
    /// and the others (empty: no versions).
    pub version: String,
    /// Where its image comes from when it is missing, in words: "built from
    /// its recipe at PATH (never pulled)", "pulled from REF", …
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub version: u32,
    /// Command name (basename of the shim).
    pub command: String,
    /// Arguments after the command name.
    #[serde(with = "byte_strings")]
    pub args: Vec<Vec<u8>>,
    /// The launcher's environment as `KEY=VALUE` strings; the daemon filters it.
    #[serde(with = "byte_strings")]
    pub env: Vec<Vec<u8>>,
    /// The caller's fds, terminal and channel, passed on as they are in
    /// the daemon's [`SpawnRequest`].
    pub passed: Passed,
}

/// What a call passes its tool besides arguments and environment: the
/// same from the launcher to the daemon ([`ExecRequest`]) as from the
/// daemon to the agent ([`SpawnRequest`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passed {
    /// Fd numbers in the caller (the tool's too) that the attached fds
    /// stand for, in order. Terminal fds are not among them: see `tty`.
    pub fds: Vec<i32>,
    /// Set when the caller has a terminal: the tool gets a pty of its own.
    pub tty: Option<TtyRequest>,
    /// The caller asked for stage stamps ([`stages`]); the agent sends
    /// [`AgentEvent::Stamps`] before the tool's end.
    pub trace: bool,
    /// The last attached fd, not among `fds`, is the launcher's end of the
    /// call's channel (a socketpair): the agent sends `Started` (with the
    /// pty master) and every later event there, and takes signals from it;
    /// the daemon hears only `Started` or `Failed`. A daemon that dies
    /// before the agent holds it leaves the launcher's end hung up, so the
    /// launcher knows the tool never started and may ask again; once the
    /// agent holds it, the call survives the daemon.
    pub channel: bool,
}

/// The caller's terminal, for a pty inside the container that looks the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyRequest {
    /// Fd numbers of the tool to connect to the pty (those that were
    /// terminals in the caller).
    pub targets: Vec<i32>,
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
    /// The caller's terminal settings (`struct termios`, as bytes), so erase,
    /// interrupt and the other special characters stay the user's.
    pub termios: Vec<u8>,
}

/// The environment variable the daemon passes the agent's token in. The
/// environment of PID 1 is readable only by root inside its own container
/// (a command line would be readable by every user there).
pub const TOKEN_ENV: &str = "ODFS_AGENT_TOKEN";

/// The environment variable an engine without per-container rlimits (the
/// CRI) passes the agent its tools' limits in: `nofile=SOFT:HARD,
/// nproc=SOFT:HARD`, -1 for no limit. The agent sets them on itself at
/// start, so every tool it spawns has them.
pub const RLIMITS_ENV: &str = "ODFS_AGENT_RLIMITS";

/// A failure of odfs, not of the tool, as its caller meets it: one line
/// (`odfs: CMD: message`, naming the cause and the fix) and the exit status
/// scripts rely on (126, or 127 for a command not in the catalog). The same
/// value goes from the agent and the daemon to the launcher and the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    pub exit_code: i32,
}

impl Failure {
    /// A failure with odfs's own exit status, [`EXIT_ODFS_ERROR`].
    pub fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), exit_code: EXIT_ODFS_ERROR }
    }

    pub fn with_status(message: impl Into<String>, exit_code: i32) -> Failure {
        Failure { message: message.into(), exit_code }
    }
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The daemon's answer on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The image is being fetched (pulled or built) before the answer: any
    /// number of these may come first, the last one with `done` set.
    Progress(ImageProgress),
    /// Something the caller should know before the tool runs: printed as
    /// `odfs: CMD: text`.
    Notice(String),
    /// The tool runs; the attached fds are the agent connection to follow
    /// and, in pty mode, the pty master; none when the agent reports on the
    /// launcher's channel ([`ExecRequest::channel`]). `relayed`: the
    /// connection is the daemon's, relaying a call on a remote engine.
    Handoff { pid: i32, relayed: bool, stamps: Option<stages::DaemonStamps> },
    /// odfs could not run the tool (or do what was asked).
    Error(Failure),
    /// `idle`: the idle budget and what of it is in use, in a line.
    Status {
        engine: EngineInfo,
        containers: Vec<ContainerStatus>,
        idle: String,
        images: Vec<ImageUsage>,
        disk: String,
        /// The archive's indexes, a line each: `Some(true)` fine,
        /// `Some(false)` missing or unreadable, `None` a note (stale).
        archive: Vec<(Option<bool>, String)>,
    },
    Stats(Vec<CommandStats>),
    Commands(Vec<CommandInfo>),
    /// A change was made; the text says what.
    Done(String),
    View(ViewInfo),
    /// `odfs restart` under systemd: the daemon ran its binary anew in
    /// place (same pid, the unit's main process) and serves again.
    Restarted(String),
    /// A question for the caller before the call goes on (fetch an archive
    /// package?): the launcher asks it on its own terminal, the caller's,
    /// and sends [`Request::Answer`] on the same connection.
    Ask(String),
}

/// How far the fetch of a missing image has come, for everyone waiting on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageProgress {
    pub reference: String,
    /// Built from the catalog's recipe (its steps are the "layers"), not pulled.
    pub building: bool,
    pub layers_done: u32,
    pub layers_total: u32,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The engine's latest status line (a build step, an error).
    pub step: String,
    /// The fetch is over; `ok` says how it ended.
    pub done: bool,
    pub ok: bool,
}

/// The daemon's container engine, as `odfs status` and `odfs doctor` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// `unix:///…`, `tcp://…`, `ssh://…`.
    pub host: String,
    pub remote: bool,
    /// How calls reach tools: `fd` (local) or `relay` (remote).
    pub exec_path: ExecPath,
    /// Where the choice came from (`--engine`, config file, DOCKER_HOST…).
    pub source: String,
    /// Product and version, or why the engine does not answer.
    pub version: Result<String, String>,
    /// The OCI runtime containers run on, and why.
    pub runtime: String,
}

/// A profile's container as `odfs status`, `odfs ls` and the
/// `user.odfs.state` xattr show it. One type on both ends, so the daemon
/// cannot send a state the CLI does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerPhase {
    /// No container: the next call starts one.
    Absent,
    /// Someone holds the profile's lock to start or change its container.
    Starting,
    Warm,
    /// Frozen by the engine (cgroup freezer): no CPU, resumes in milliseconds.
    Paused,
    /// Warm, but its agent does not answer.
    Unreachable,
    /// Created ahead and not started: holds no memory; a call only starts it.
    Created,
}

impl ContainerPhase {
    /// The word users and scripts read (`odfs status`, its `--json`, the xattr).
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerPhase::Absent => "absent",
            ContainerPhase::Starting => "starting",
            ContainerPhase::Warm => "warm",
            ContainerPhase::Paused => "paused",
            ContainerPhase::Unreachable => "unreachable",
            ContainerPhase::Created => "created",
        }
    }
}

/// How calls reach tools on an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecPath {
    /// The caller's fds go to the agent over a unix socket bind-mounted into
    /// the container: zero copies, and calls outlive a daemon restart.
    Fd,
    /// Frames over the engine's exec API, relayed by the daemon (remote
    /// engines, where no fd and no host path can cross).
    Relay,
}

impl ExecPath {
    /// The word `odfs status` and `odfs doctor` show.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecPath::Fd => "fd",
            ExecPath::Relay => "relay",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub image: String,
    pub container: String,
    pub state: ContainerPhase,
    pub running_tools: u32,
    pub idle_ms: u64,
    /// The next lifecycle step and why.
    pub next: String,
    /// How calls reach its tools.
    pub exec_path: ExecPath,
    /// Memory the container holds with the engine's process beside it, as
    /// the idle budget counts it (bytes; 0 when absent).
    pub memory: u64,
}

/// Per-command figures for `odfs stats` (seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandStats {
    pub command: String,
    pub image: String,
    pub calls: u32,
    pub warm: u32,
    pub paused: u32,
    pub cold: u32,
    pub mtbc: Option<f64>,
    pub mtts: Option<f64>,
    pub mtte: Option<f64>,
    pub epsilon: Option<f64>,
    /// The keep-alive its profile currently follows, and why.
    pub window: String,
}

/// Who the tool runs as, and the passwd/group lines that make that user known
/// inside the image (`id -un`, `whoami`, git and ssh look it up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// `/etc/passwd` line to add when the image lacks this uid.
    pub passwd_line: Option<String>,
    /// `/etc/group` line to add when the image lacks this gid.
    pub group_line: Option<String>,
    /// Capabilities the tool holds (bit N: capability N), as ambient
    /// capabilities under its uid; every other one leaves its bounding set.
    pub caps: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub version: u32,
    /// The daemon's id of the call (its log's `call` span): the agent's log
    /// lines about this spawn carry it, so one call can be followed from
    /// the daemon's log into the container's.
    pub call_id: u64,
    /// The container's agent token: only the daemon knows it.
    pub token: String,
    /// Program: an absolute path, or a name looked up on the agent's own PATH
    /// (the image's PATH).
    #[serde(with = "serde_bytes")]
    pub program: Vec<u8>,
    /// argv, including argv[0].
    #[serde(with = "byte_strings")]
    pub argv: Vec<Vec<u8>>,
    /// Complete environment of the tool (`KEY=VALUE`), except PATH, which the
    /// agent sets to the image's own.
    #[serde(with = "byte_strings")]
    pub env: Vec<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub cwd: Vec<u8>,
    pub identity: Identity,
    /// The caller's fds (their numbers in the tool), terminal and channel.
    pub passed: Passed,
}

/// Messages to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    Spawn(Box<SpawnRequest>),
    /// Deliver this signal to the tool of this connection.
    Signal(i32),
    /// Continue the tool's process group after a stop (job control `fg`/`bg`).
    Continue,
    /// How busy is the agent (for keep-alive: never remove a busy container).
    Status { token: String },
    /// The caller's terminal changed size. A local agent needs nothing (the
    /// launcher sizes the pty master itself); a relayed call passes it on.
    Resize { rows: u16, cols: u16 },
}

/// Messages from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentEvent {
    /// In pty mode the pty master is attached.
    Started { pid: i32 },
    /// The tool stopped (Ctrl-Z, SIGTSTP…): the launcher stops too.
    Stopped(i32),
    /// The tool could not be started (or was lost).
    Failed(Failure),
    Exited(i32),
    Signaled(i32),
    /// Died of `signal` for a reason the caller should hear (the OOM killer).
    Killed { signal: i32, reason: String },
    /// Busy tools, idle time, the tools that ended since the last status
    /// request (each reported once), and the memory the container holds
    /// (its cgroup's, bytes; 0 if unknown).
    Status { running: u32, idle_ms: u64, finished: Vec<Finished>, memory: u64 },
    /// A traced call's agent stamps, just before its end event.
    Stamps(stages::AgentStamps),
}

impl AgentEvent {
    /// The exit status the caller sees for an event that ends a call (an
    /// exit code, or 128 + signal as a shell says it); `None` for the others.
    pub fn status(&self) -> Option<i32> {
        match self {
            AgentEvent::Exited(c) => Some(*c),
            AgentEvent::Signaled(s) | AgentEvent::Killed { signal: s, .. } => Some(128 + s),
            AgentEvent::Failed(f) => Some(f.exit_code),
            AgentEvent::Started { .. } | AgentEvent::Stopped(_) | AgentEvent::Status { .. } | AgentEvent::Stamps(_) => None,
        }
    }
}

/// A tool's end, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub pid: i32,
    /// Exit code, or 128 + signal number.
    pub status: i32,
    pub run_ms: u64,
}

/// Encode a message body (framing adds the length).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, postcard::Error> {
    // Most frames fit at once; a large one grows from there.
    postcard::to_extend(msg, Vec::with_capacity(4096))
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Lists of byte strings (arguments, environment) serialized as lists of
/// bytes: one copy each instead of one call per byte. With postcard the
/// encoding is the same as a list of sequences of u8.
mod byte_strings {
    use alloc::vec::Vec;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<serde_bytes::ByteBuf>::deserialize(d)?.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_s_status_round_trips_with_its_words_unchanged() {
        let status = ContainerStatus {
            image: "jq".into(),
            container: "odfs-jq".into(),
            state: ContainerPhase::Unreachable,
            running_tools: 0,
            idle_ms: 5,
            next: "none".into(),
            exec_path: ExecPath::Relay,
            memory: 0,
        };
        assert_eq!(decode::<ContainerStatus>(&encode(&status).unwrap()).unwrap(), status);
        // Scripts read these words in `odfs status --json`.
        let phases = [ContainerPhase::Absent, ContainerPhase::Starting, ContainerPhase::Warm, ContainerPhase::Paused, ContainerPhase::Unreachable];
        assert_eq!(phases.map(ContainerPhase::as_str), ["absent", "starting", "warm", "paused", "unreachable"]);
        assert_eq!([ExecPath::Fd, ExecPath::Relay].map(ExecPath::as_str), ["fd", "relay"]);
    }
}
