//! The engine a daemon was given, whichever API it speaks: the Docker
//! Engine API (Docker, Podman) or the CRI (containerd, CRI-O). One type for
//! the pool, so the rest of the daemon is written once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::cri::Cri;
use super::docker::Docker;
use super::engine::{Engine, ExecPath};
use super::{BackendError, ContainerBackend, ContainerSpec, ExecStream, Holder, ImageFacts, ImageInfo, Job, JobOutput, Managed, ProgressTx};

pub enum AnyEngine {
    Docker(Docker),
    Cri(Cri),
}

impl AnyEngine {
    /// A client of `engine`; `agent` (the agent binary) lets a CRI engine
    /// read images.
    pub fn new(engine: Engine, agent: Option<PathBuf>) -> AnyEngine {
        if engine.is_cri() {
            AnyEngine::Cri(Cri::new(engine, agent))
        } else {
            AnyEngine::Docker(Docker::with_engine(engine))
        }
    }
}

/// Each method of the trait, given to the engine's own client.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(async fn $name(&self $(, $arg: $ty)*) -> $ret {
            match self {
                AnyEngine::Docker(b) => ContainerBackend::$name(b $(, $arg)*).await,
                AnyEngine::Cri(b) => ContainerBackend::$name(b $(, $arg)*).await,
            }
        })*
    };
}

impl ContainerBackend for AnyEngine {
    delegate! {
        fn ensure_image(&self, reference: &str, progress: &ProgressTx) -> Result<bool, BackendError>;
        fn build_image(&self, reference: &str, recipe: &Path, progress: &ProgressTx) -> Result<(), BackendError>;
        fn create(&self, spec: &ContainerSpec) -> Result<String, BackendError>;
        fn start(&self, id: &str, spec: &ContainerSpec) -> Result<String, BackendError>;
        fn remove(&self, id: &str) -> Result<(), BackendError>;
        fn pause(&self, id: &str) -> Result<(), BackendError>;
        fn unpause(&self, id: &str) -> Result<(), BackendError>;
        fn executables(&self, reference: &str, mount_id: &str) -> Result<Vec<String>, BackendError>;
        fn image_id(&self, reference: &str) -> Result<Option<String>, BackendError>;
        fn image_facts(&self, reference: &str, dirs: &[String], mount_id: &str) -> Result<ImageFacts, BackendError>;
        fn image_docs(&self, reference: &str, commands: &[String], mount_id: &str) -> Result<Vec<crate::share::Doc>, BackendError>;
        fn image_alternatives(&self, reference: &str, mount_id: &str) -> Result<HashMap<String, String>, BackendError>;
        fn pull(&self, reference: &str, progress: &ProgressTx) -> Result<(), BackendError>;
        fn image_info(&self, reference: &str) -> Result<Option<ImageInfo>, BackendError>;
        fn registry_digest(&self, reference: &str) -> Result<String, BackendError>;
        fn images(&self) -> Result<Vec<ImageInfo>, BackendError>;
        fn holders(&self) -> Result<Vec<Holder>, BackendError>;
        fn remove_image(&self, id: &str) -> Result<(), BackendError>;
        fn prune_build_cache(&self, unused_s: u64) -> Result<u64, BackendError>;
        fn data_root_space(&self) -> Result<Option<(String, u64, u64)>, BackendError>;
        fn recipe_stamp(&self, recipe: &Path) -> std::io::Result<String>;
        fn version_of(&self, image: &str, argv: &[String], mount_id: &str) -> Result<String, BackendError>;
        fn run_job(&self, job: &Job) -> Result<JobOutput, BackendError>;
        fn local_images(&self) -> Result<Vec<String>, BackendError>;
        fn list(&self, mount_id: &str) -> Result<Vec<Managed>, BackendError>;
        fn exec_stream(&self, id: &str, cmd: Vec<String>) -> Result<ExecStream, BackendError>;
        fn engine_info(&self) -> crate::protocol::EngineInfo;
    }

    fn exec_path(&self) -> ExecPath {
        match self {
            AnyEngine::Docker(b) => b.exec_path(),
            AnyEngine::Cri(b) => b.exec_path(),
        }
    }
}
