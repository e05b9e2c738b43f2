//! Container engines behind one small trait: create a container that runs the
//! agent, list and remove the ones a mount owns. [`docker::Docker`] talks to
//! the Docker Engine API; [`fake::Fake`] records calls for pool logic tests.

pub mod docker;
pub mod engine;
#[cfg(test)]
pub mod fake;
pub mod progress;
mod transport;

pub use progress::ProgressTx;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

pub use engine::ExecPath;

/// Labels every odfs container carries.
pub const LABEL_MANAGED: &str = "io.odfs.managed";
pub const LABEL_MOUNT: &str = "io.odfs.mount";
pub const LABEL_PROFILE: &str = "io.odfs.profile";
pub const LABEL_IMAGE: &str = "io.odfs.image";
/// The agent's token, so a restarted daemon can talk to adopted containers
/// (labels are visible only through the engine's API, that is, to root).
pub const LABEL_TOKEN: &str = "io.odfs.token";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to create one backing container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub labels: HashMap<String, String>,
    pub network: String,
    pub cap_add: Vec<String>,
    pub binds: Vec<Bind>,
    pub env: Vec<String>,
    pub limits: crate::catalog::Limits,
    /// A tar archive unpacked at `/` after the container is created and
    /// before it starts: the agent, on engines that cannot bind host files.
    pub preload: Option<bytes::Bytes>,
}

/// What an attached exec writes: (1 for stdout or 2 for stderr, bytes).
pub type ExecOutput = Pin<Box<dyn futures_util::Stream<Item = Result<(u8, bytes::Bytes), BackendError>> + Send>>;
/// An attached exec's stdin.
pub type ExecInput = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// The attached streams of an exec.
pub struct ExecStream {
    pub output: ExecOutput,
    pub input: ExecInput,
}

/// A container found on the engine with this mount's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub id: String,
    pub name: String,
    pub profile: String,
    pub running: bool,
    pub paused: bool,
    pub token: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("container engine not reachable at {endpoint}: {reason} ({hint})")]
    Unreachable { endpoint: String, reason: String, hint: &'static str },
    #[error("image {reference} is not on this machine and could not be pulled: {reason} (check its registry, or give it a `build` recipe in the catalog)")]
    ImageMissing { reference: String, reason: String },
    #[error("image {reference} could not be built from its recipe {recipe}: {reason}")]
    BuildFailed { reference: String, recipe: String, reason: String },
    #[error("container engine error: {0}")]
    Engine(String),
}

impl BackendError {
    /// The engine says the container is not there or not running (HTTP 404
    /// or 409): it must be replaced, as opposed to a passing failure.
    pub fn container_gone(&self) -> bool {
        matches!(self, BackendError::Engine(m) if m.ends_with("(HTTP 404)") || m.ends_with("(HTTP 409)"))
    }
}

pub trait ContainerBackend: Send + Sync + 'static {
    /// Make sure the image exists locally, pulling it if it does not, with
    /// progress on `progress`. Returns whether it had to be pulled.
    fn ensure_image(&self, reference: &str, progress: &ProgressTx) -> impl Future<Output = Result<bool, BackendError>> + Send;
    /// Build an image from a recipe (a directory with a Dockerfile), with
    /// host networking so package managers reach their mirrors.
    fn build_image(&self, reference: &str, recipe: &Path, progress: &ProgressTx) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Create and start a container; returns its id.
    fn start(&self, spec: &ContainerSpec) -> impl Future<Output = Result<String, BackendError>> + Send;
    /// Remove a container, killing what still runs in it. Absent is fine.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Freeze every process of a container (cgroup freezer), and thaw it.
    fn pause(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;
    fn unpause(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Executables on the image's PATH (absolute paths, first PATH match of
    /// each name), found without running anything from the image. The
    /// scratch container carries the mount's label, so one left behind by a
    /// crash is removed at the next start.
    fn executables(&self, reference: &str, mount_id: &str) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;
    /// References (repo:tag) of the images on this machine.
    fn local_images(&self) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;
    /// Containers labelled with this mount id.
    fn list(&self, mount_id: &str) -> impl Future<Output = Result<Vec<Managed>, BackendError>> + Send;
    /// Run `cmd` as root in a running container with stdin, stdout and
    /// stderr attached (no tty): the relay of a call on a remote engine.
    fn exec_stream(&self, id: &str, cmd: Vec<String>) -> impl Future<Output = Result<ExecStream, BackendError>> + Send;
    /// How calls reach tools on this engine.
    fn exec_path(&self) -> ExecPath;
    /// The engine, and whether (and as what) it answers.
    fn engine_info(&self) -> impl Future<Output = crate::protocol::EngineInfo> + Send;
}
