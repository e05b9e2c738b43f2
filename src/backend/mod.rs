//! Container engines behind one small trait: create a container that runs the
//! agent, list and remove the ones a mount owns. [`docker::Docker`] talks to
//! the Docker Engine API, [`cri::Cri`] to the CRI of a Kubernetes node's
//! containerd or CRI-O, [`any::AnyEngine`] is whichever the daemon was
//! given; [`fake::Fake`] records calls for pool logic tests.

pub mod any;
mod archive;
mod create;
pub mod cri;
pub mod docker;
pub mod engine;
pub mod freezer;
mod images;
pub mod job;
pub mod outbound;
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
pub use images::{statvfs, Holder, ImageInfo};
pub use job::{Job, JobOutput};

/// Labels every odfs container carries.
pub const LABEL_MANAGED: &str = "io.odfs.managed";
pub const LABEL_MOUNT: &str = "io.odfs.mount";
pub const LABEL_PROFILE: &str = "io.odfs.profile";
pub const LABEL_IMAGE: &str = "io.odfs.image";
/// The agent's token, so a restarted daemon can talk to adopted containers
/// (labels are visible only through the engine's API, that is, to root).
pub const LABEL_TOKEN: &str = "io.odfs.token";
/// On an image built from a recipe: a hash of the recipe's files and its
/// base images' ids, so `odfs update` rebuilds it when either changed.
pub const LABEL_RECIPE: &str = "io.odfs.recipe";
/// What the container's tools see of the host (see [`crate::view::View`]).
pub const LABEL_VIEW: &str = "io.odfs.view";
/// On a container made ahead of any call (created, not started): gc does
/// not take it for a crash's leftover, nor for a use of its image.
pub const LABEL_AHEAD: &str = "io.odfs.ahead";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
    /// Part of the host view: recursive, and a slave of the host's mounts
    /// (`rslave`), so submounts come along, later mounts appear and host
    /// unmounts go through. Needs the source's mount to be shared. Other
    /// binds are single, private mounts.
    pub follow_host: bool,
}

impl Bind {
    /// A single, private bind at the same path.
    pub fn plain(source: impl Into<PathBuf>, target: impl Into<PathBuf>, read_only: bool) -> Bind {
        Bind { source: source.into(), target: target.into(), read_only, follow_host: false }
    }
}

/// What a local image holds where the host view would cover it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// The image's id (filled in by whoever keeps facts per id).
    pub id: String,
    /// The top-level directories asked about that the image fills.
    pub filled: Vec<String>,
    /// Which top-level directories were asked about.
    pub asked: Vec<String>,
    /// The image's own `/etc/passwd` and `/etc/group` (empty when absent).
    pub passwd: String,
    pub group: String,
}

/// Everything needed to create one backing container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub labels: HashMap<String, String>,
    pub network: String,
    /// With `network = "none"`: the runtime makes the container's network
    /// namespace (loopback only) and the engine sets up no network, so its
    /// start runs no network hook (Docker's costs some 70 ms a start) and
    /// writes no /etc/hosts or resolv.conf; the binds bring those.
    pub loopback_only: bool,
    /// The only capabilities the container holds (every other is dropped,
    /// and no process in it gains privileges by exec: no-new-privileges).
    pub cap_add: Vec<String>,
    pub binds: Vec<Bind>,
    pub env: Vec<String>,
    pub limits: crate::catalog::Limits,
    /// A tar archive unpacked at `/` after the container is created and
    /// before it starts: the agent, on engines that cannot bind host files.
    pub preload: Option<bytes::Bytes>,
    /// The image's root is mounted read-only: a write outside the binds
    /// fails (EROFS) instead of landing in a container that will be removed.
    pub read_only_root: bool,
    /// Empty tmpfs mounts (`/run`, an image's declared scratch).
    pub tmpfs: Vec<PathBuf>,
    /// The container's host name (the host's own, so tools see the caller's),
    /// when it has a UTS namespace of its own.
    pub hostname: Option<String>,
    /// Join the host's pid, IPC and UTS namespaces: tools see and may
    /// signal the caller's processes, share its System V IPC and POSIX
    /// shared memory, and have its host name.
    pub host_namespaces: bool,
    /// Host device nodes, passed at the same path with their modes and
    /// owners (the cgroup allows them).
    pub devices: Vec<String>,
    /// Devices the engine finds by name: CDI names and GPUs.
    pub device_requests: Vec<DeviceAsk>,
}

/// A device the engine resolves itself (its device-request API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAsk {
    /// A CDI name (`vendor.com/class=name`).
    Cdi(String),
    /// GPUs, from the GPU runtime (NVIDIA's container toolkit).
    Gpus(crate::catalog::Gpus),
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
    /// The id of the image it runs.
    pub image_id: String,
    pub running: bool,
    pub paused: bool,
    pub token: String,
    /// Its host view, as labelled at creation ([`crate::view::View::to_label`]).
    pub view: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("container engine not reachable at {endpoint}: {reason} ({hint})")]
    Unreachable { endpoint: String, reason: String, hint: &'static str },
    #[error("image {reference} is not on this machine and could not be pulled: {reason} (check its registry, or give it a `build` recipe in the catalog)")]
    ImageMissing { reference: String, reason: String },
    #[error("image {reference} could not be built from its recipe {recipe}: {reason}")]
    BuildFailed { reference: String, recipe: String, reason: String },
    /// The engine answered with an error status.
    #[error("container engine error: {message} (HTTP {status})")]
    Answered { status: u16, message: String },
    #[error("container engine error: {0}")]
    Engine(String),
    /// The engine cannot give a container what its image asks for (GPUs,
    /// a CDI device).
    #[error("{0}")]
    Unsupported(String),
}

impl BackendError {
    /// The engine says the container is not there or not running (HTTP 404
    /// or 409): it must be replaced, as opposed to a passing failure.
    pub fn container_gone(&self) -> bool {
        matches!(self, BackendError::Answered { status: 404 | 409, .. })
    }
}

pub trait ContainerBackend: Send + Sync + 'static {
    /// Make sure the image exists locally, pulling it if it does not, with
    /// progress on `progress`. Returns whether it had to be pulled.
    fn ensure_image(&self, reference: &str, progress: &ProgressTx) -> impl Future<Output = Result<bool, BackendError>> + Send;
    /// Build an image from a recipe (a directory with a Dockerfile), with
    /// host networking so package managers reach their mirrors.
    fn build_image(&self, reference: &str, recipe: &Path, progress: &ProgressTx) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Create a container, not started; returns its id.
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = Result<String, BackendError>> + Send;
    /// Start the container `create` made of `spec`; one that fails to
    /// start is removed. Returns the id of the container started: `id`, or
    /// one made again on the engine's default runtime when the one chosen
    /// failed.
    fn start(&self, id: &str, spec: &ContainerSpec) -> impl Future<Output = Result<String, BackendError>> + Send;
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
    /// The id of a local image; `None` when it is not here.
    fn image_id(&self, reference: &str) -> impl Future<Output = Result<Option<String>, BackendError>> + Send;
    /// Which of the top-level directories `dirs` (names) a local image
    /// fills, and its own passwd and group files, found without running
    /// anything from it (like [`ContainerBackend::executables`]).
    fn image_facts(&self, reference: &str, dirs: &[String], mount_id: &str) -> impl Future<Output = Result<ImageFacts, BackendError>> + Send;
    /// The man pages and shell completions of `commands` in a local image
    /// (`crate::share`), read without running anything from it, bounded in
    /// size (`crate::share::MAX_FILE`, `MAX_IMAGE`).
    fn image_docs(&self, reference: &str, commands: &[String], mount_id: &str) -> impl Future<Output = Result<Vec<crate::share::Doc>, BackendError>> + Send;
    /// The links of a local image's `/etc/alternatives` (name → target),
    /// read without running anything from it.
    fn image_alternatives(&self, reference: &str, mount_id: &str) -> impl Future<Output = Result<HashMap<String, String>, BackendError>> + Send;
    /// Pull an image whether or not it is here (`odfs update`), from the
    /// site's mirrors first for Docker Hub images.
    fn pull(&self, reference: &str, progress: &ProgressTx) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// A local image by reference or id; `None` when it is not here.
    fn image_info(&self, reference: &str) -> impl Future<Output = Result<Option<ImageInfo>, BackendError>> + Send;
    /// The digest a registry gives for `reference` now (its manifest's),
    /// without pulling anything.
    fn registry_digest(&self, reference: &str) -> impl Future<Output = Result<String, BackendError>> + Send;
    /// Every local image.
    fn images(&self) -> impl Future<Output = Result<Vec<ImageInfo>, BackendError>> + Send;
    /// Every container on the engine (any mount's, and others'): what
    /// holds which image.
    fn holders(&self) -> impl Future<Output = Result<Vec<Holder>, BackendError>> + Send;
    /// Remove an image by id, never forced (an image in use stays).
    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Drop the engine's build cache; the bytes freed.
    fn prune_build_cache(&self, unused_s: u64) -> impl Future<Output = Result<u64, BackendError>> + Send;
    /// The engine's data root, its file system's free and total bytes
    /// (`None` on a remote engine).
    fn data_root_space(&self) -> impl Future<Output = Result<Option<(String, u64, u64)>, BackendError>> + Send;
    /// The stamp of a recipe and its base images (see [`LABEL_RECIPE`]).
    fn recipe_stamp(&self, recipe: &Path) -> impl Future<Output = std::io::Result<String>> + Send;
    /// The first line a version command prints in a throw-away container.
    fn version_of(&self, image: &str, argv: &[String], mount_id: &str) -> impl Future<Output = Result<String, BackendError>> + Send;
    /// Run a script to its end in a throw-away container with the host's
    /// network and read back the files it left (see [`job`]).
    fn run_job(&self, job: &Job) -> impl Future<Output = Result<JobOutput, BackendError>> + Send;
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

#[cfg(test)]
mod tests {
    use super::BackendError;

    #[test]
    fn a_container_is_gone_by_the_engine_s_status_not_by_its_words() {
        let answered = |status| BackendError::Answered { status, message: "x".into() };
        assert!(answered(404).container_gone() && answered(409).container_gone());
        assert!(!answered(500).container_gone());
        assert!(!BackendError::Engine("no such container (HTTP 404)".into()).container_gone());
        assert_eq!(answered(404).to_string(), "container engine error: x (HTTP 404)");
    }
}
