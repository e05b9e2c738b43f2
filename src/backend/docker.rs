//! The Docker Engine API through bollard (also Podman's compatible socket).

use std::collections::HashMap;

use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::path::Path;

use super::create::{create_body, devices_unsupported, one_line};
pub use super::create::raise_nofile;
use super::freezer::Freezer;
use super::progress::{BuildTracker, PullTracker};
use super::engine::{Engine, ExecPath};
use super::{BackendError, ContainerBackend, ContainerSpec, ExecStream, ImageFacts, Managed, ProgressTx, LABEL_MOUNT, LABEL_PROFILE};
use crate::protocol::ImageProgress;

/// Label of the never-started containers `executables` exports.
pub const LABEL_SCAN: &str = "io.odfs.scan";

pub struct Docker {
    /// Connected on first use and kept; a failed connection is retried on the
    /// next call, so odfs survives starting before the engine.
    client: tokio::sync::OnceCell<bollard::Docker>,
    pub(super) engine: Engine,
    /// The engine is Podman (asked once): its API ignores device requests
    /// and takes CDI names among the devices instead.
    podman: tokio::sync::OnceCell<bool>,
    /// Containers this process froze through their cgroup (a local engine):
    /// the engine still sees them running, and they are thawed the same way.
    frozen: dashmap::DashMap<String, Freezer>,
    /// The engine's default OCI runtime and whether it has [`FAST_RUNTIME`]
    /// registered (asked once).
    runtimes: tokio::sync::OnceCell<(String, bool)>,
    /// Why [`FAST_RUNTIME`] failed where the default worked: the default
    /// serves from then on.
    fast_failed: std::sync::Mutex<Option<String>>,
}

/// The OCI runtime containers are asked to run on where the engine has it
/// registered: crun starts one in about half of runc's time (a C program,
/// no re-exec of itself to set up the namespaces).
const FAST_RUNTIME: &str = "crun";

/// Whether the engine's error is its OCI runtime's refusal (the runtime
/// missing, or failing to create the container), as opposed to a refusal
/// of the container itself (a device, a mount, a name).
fn runtime_refused(e: &BackendError) -> bool {
    let m = e.to_string().to_lowercase();
    m.contains("oci runtime") || m.contains(FAST_RUNTIME)
}

/// How long a container's processes may take to freeze.
const FREEZE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Seconds an engine request may take to answer (streams may then run on).
const REQUEST_TIMEOUT: u64 = 120;

impl Docker {
    /// A client of `engine` (chosen by [`crate::config::engine`]).
    pub fn with_engine(engine: Engine) -> Docker {
        Docker {
            client: tokio::sync::OnceCell::new(),
            engine,
            podman: tokio::sync::OnceCell::new(),
            frozen: Default::default(),
            runtimes: tokio::sync::OnceCell::new(),
            fast_failed: std::sync::Mutex::new(None),
        }
    }

    /// Labels and entry point of a local image; `None` when it is not here.
    pub async fn image_facts(&self, reference: &str) -> Result<Option<crate::catalog::import::ImageFacts>, BackendError> {
        match self.client().await?.inspect_image(reference).await {
            Ok(img) => {
                let config = img.config.unwrap_or_default();
                Ok(Some(crate::catalog::import::ImageFacts {
                    labels: config.labels.unwrap_or_default(),
                    entrypoint: config.entrypoint.unwrap_or_default(),
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.classify(e)),
        }
    }

    /// The proxy the engine itself pulls through (its `HTTPS_PROXY`, else
    /// `HTTP_PROXY`), for `odfs doctor`.
    pub async fn engine_proxy(&self) -> Result<Option<String>, BackendError> {
        let info = self.client().await?.info().await.map_err(|e| self.classify(e))?;
        Ok(info.https_proxy.filter(|p| !p.is_empty()).or(info.http_proxy.filter(|p| !p.is_empty())))
    }

    /// The engine's version line, for `odfs doctor`.
    pub async fn version(&self) -> Result<String, BackendError> {
        let v = self.client().await?.version().await.map_err(|e| self.classify(e))?;
        let product = v.components.unwrap_or_default().into_iter().map(|c| c.name).find(|n| n.contains("Podman")).unwrap_or_else(|| "Docker Engine".into());
        Ok(format!("{product} {} (API {})", v.version.unwrap_or_default(), v.api_version.unwrap_or_default()))
    }

    fn unreachable(&self, reason: String) -> BackendError {
        let hint = match self.engine.scheme() {
            "unix" if self.engine.host.contains("podman") => "is `podman system service` running?",
            "unix" => "is dockerd running?",
            _ => "is the remote engine up and reachable from here?",
        };
        BackendError::Unreachable { endpoint: self.engine.host.clone(), reason, hint }
    }

    /// The client, after agreeing on an API version: Debian's dockerd speaks
    /// 1.41, older than bollard's default.
    pub(super) async fn client(&self) -> Result<&bollard::Docker, BackendError> {
        let unreachable = |e: bollard::errors::Error| self.unreachable(e.to_string());
        self.client
            .get_or_try_init(|| async {
                let e = &self.engine;
                let version = bollard::API_DEFAULT_VERSION;
                let client = match e.scheme() {
                    "tcp" => super::transport::connect(&e.host, e.tls.as_deref(), REQUEST_TIMEOUT).map_err(|r| self.unreachable(r))?,
                    "ssh" => super::transport::connect_ssh(&e.host, REQUEST_TIMEOUT).map_err(|r| self.unreachable(r))?,
                    _ => bollard::Docker::connect_with_unix(&e.host, REQUEST_TIMEOUT, version).map_err(unreachable)?,
                };
                client.negotiate_version().await.map_err(unreachable)
            })
            .await
    }

    pub(super) fn classify(&self, e: bollard::errors::Error) -> BackendError {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError { status_code, message } => BackendError::Answered { status: status_code, message },
            other => {
                let text = other.to_string();
                if text.contains("onnect") || text.contains("No such file") || text.contains("refused") {
                    self.unreachable(text)
                } else {
                    BackendError::Engine(text)
                }
            }
        }
    }
}

/// The last word of a fetch: everyone waiting sees how it ended.
fn finish(progress: &ProgressTx, last: &ImageProgress, ok: bool) {
    progress.send_replace(Some(ImageProgress { done: true, ok, ..last.clone() }));
}

/// A recipe's build context: its directory, with the site's CA bundle
/// added to it and to its Dockerfile (see [`super::outbound::Outbound::dockerfile`]).
fn build_context(dir: &Path, outbound: &super::outbound::Outbound) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let Some(ca) = &outbound.ca_bundle else {
        tar.append_dir_all(".", dir)?;
        return tar.into_inner();
    };
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == "Dockerfile" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            tar.append_dir_all(entry.file_name(), &path)?;
        } else {
            tar.append_path_with_name(&path, entry.file_name())?;
        }
    }
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile"))?;
    add("Dockerfile", outbound.dockerfile(&dockerfile).as_bytes())?;
    add(super::outbound::CA_IN_CONTEXT, &std::fs::read(ca).map_err(|e| std::io::Error::new(e.kind(), format!("the CA bundle {}: {e}", ca.display())))?)?;
    tar.into_inner()
}

/// `repo:tag` of a reference (`latest` when it names none).
fn split_tag(reference: &str) -> (String, String) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (reference[..slash + i].to_string(), reference[slash + i + 1..].to_string()),
        None => (reference.to_string(), "latest".to_string()),
    }
}

pub(super) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

impl Docker {
    /// Whether the engine is Podman (its version's components say).
    async fn is_podman(&self) -> bool {
        // An engine that does not answer is asked again next time.
        match self.podman.get_or_try_init(|| async { self.version().await.map(|v| v.contains("Podman")) }).await {
            Ok(p) => *p,
            Err(_) => false,
        }
    }

    /// The cgroup freezer of local container `id`, and whether the engine
    /// itself paused it (then the engine must be the one to resume it).
    async fn freezer(&self, id: &str) -> Result<(bool, Freezer), BackendError> {
        if !self.local() {
            return Err(BackendError::Unsupported("the engine is not on this machine".into()));
        }
        let info = self.client().await?.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>).await.map_err(|e| self.classify(e))?;
        let state = info.state.unwrap_or_default();
        let pid = state.pid.filter(|&p| p > 0).ok_or_else(|| BackendError::Engine(format!("container {id} is not running")))?;
        let f = Freezer::of(pid as i32, info.id.as_deref().unwrap_or(id)).map_err(|e| BackendError::Engine(e.to_string()))?;
        Ok((state.paused.unwrap_or(false), f))
    }

    /// Create a container of `spec` on `runtime` (the engine's default if
    /// none).
    async fn create_on(&self, spec: &ContainerSpec, runtime: Option<&str>) -> Result<String, BackendError> {
        // Podman takes GPUs and CDI devices as CDI names among the devices.
        let podman = !spec.device_requests.is_empty() && self.is_podman().await;
        let body = create_body(spec, podman, runtime);
        let opts = CreateContainerOptionsBuilder::new().name(&spec.name).build();
        let client = self.client().await?;
        let asked = |e: BackendError| devices_unsupported(spec, e);
        let created = match client.create_container(Some(opts.clone()), body.clone()).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {
                // A leftover with our name (from a crash): it is ours to replace.
                self.remove(&spec.name).await?;
                client.create_container(Some(opts), body).await.map_err(|e| asked(self.classify(e)))?
            }
            Err(e) => return Err(asked(self.classify(e))),
        };
        if let Some(tar) = &spec.preload {
            let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::new().path("/").build();
            if let Err(e) = client.upload_to_container(&created.id, Some(opts), bollard::body_full(tar.clone())).await {
                let _ = self.remove(&created.id).await;
                return Err(self.classify(e));
            }
        }
        Ok(created.id)
    }

    /// Start created container `id`; one that fails to start is removed.
    async fn start_created(&self, id: &str, spec: &ContainerSpec) -> Result<(), BackendError> {
        let client = self.client().await?;
        if let Err(e) = client.start_container(id, None::<bollard::query_parameters::StartContainerOptions>).await {
            let _ = self.remove(id).await;
            return Err(devices_unsupported(spec, self.classify(e)));
        }
        Ok(())
    }

    /// The engine's default runtime and whether it has [`FAST_RUNTIME`].
    async fn runtimes(&self) -> Option<&(String, bool)> {
        let ask = || async {
            let info = self.client().await?.info().await.map_err(|e| self.classify(e))?;
            let fast = info.runtimes.is_some_and(|r| r.contains_key(FAST_RUNTIME));
            Ok::<_, BackendError>((info.default_runtime.unwrap_or_else(|| "runc".into()), fast))
        };
        self.runtimes.get_or_try_init(ask).await.ok()
    }

    /// [`FAST_RUNTIME`], where containers must ask for it: the engine has
    /// it, it is not the default already, and it has not failed here.
    async fn fast_runtime(&self) -> Option<&'static str> {
        // Podman's compatible API takes no runtime per container.
        if self.fast_failed.lock().unwrap().is_some() || self.is_podman().await {
            return None;
        }
        self.runtimes().await.filter(|(default, fast)| *fast && default != FAST_RUNTIME).map(|_| FAST_RUNTIME)
    }

    fn fast_failed(&self, e: BackendError) {
        let why = one_line(&e.to_string());
        tracing::warn!("{FAST_RUNTIME} failed where the engine's default runtime works ({why}); the default serves from now on");
        *self.fast_failed.lock().unwrap() = Some(why);
    }

    /// Which OCI runtime containers run on, for `odfs status` and `odfs doctor`.
    pub async fn runtime_line(&self) -> String {
        let failed = self.fast_failed.lock().unwrap().clone();
        match (self.runtimes().await, failed) {
            (None, _) => "unknown (the engine does not answer)".into(),
            (Some((default, _)), Some(why)) => format!("{default}, the engine's default ({FAST_RUNTIME} failed here: {why})"),
            (Some((default, _)), None) if default == FAST_RUNTIME => format!("{FAST_RUNTIME}, the engine's default"),
            (Some((default, _)), None) if self.is_podman().await => format!(
                "{default}, the engine's default (Podman's API takes no runtime per container: start its service with --runtime {FAST_RUNTIME}, as scripts/setup does)"
            ),
            (Some((default, true)), None) => format!("{FAST_RUNTIME}, asked per container (the engine's default is {default})"),
            (Some((default, false)), None) => format!(
                "{default}, the engine's default ({FAST_RUNTIME}, which starts containers faster, is not registered with the engine: install it and add it to the engine's runtimes, as scripts/setup does)"
            ),
        }
    }

    /// Whether the engine is on this machine.
    pub(super) fn local(&self) -> bool {
        self.exec_path() == ExecPath::Fd
    }

    /// Remove a container, errors only logged.
    pub(super) async fn remove_quietly(&self, id: &str) {
        if let Err(e) = ContainerBackend::remove(self, id).await {
            tracing::warn!(container = id, "cannot remove: {e}");
        }
    }

    /// Pull `from`, shown as the fetch of `reference`; a failure is shown
    /// only on the `last` attempt (a mirror that misses is not the caller's news).
    async fn pull_one(&self, from: &str, reference: &str, progress: &ProgressTx, last: bool) -> Result<(), BackendError> {
        let finish = |progress: &ProgressTx, p: &ImageProgress, ok: bool| {
            if ok || last {
                finish(progress, p, ok);
            }
        };
        let mut tracker = PullTracker::new(reference);
        progress.send_replace(Some(tracker.observe(None, "pulling", None, None).clone()));
        let opts = CreateImageOptionsBuilder::new().from_image(from).build();
        let mut pull = self.client().await?.create_image(Some(opts), None, None);
        while let Some(item) = pull.next().await {
            let reason = match item {
                Ok(info) if info.error_detail.is_none() && info.error.is_none() => {
                    let detail = info.progress_detail.unwrap_or_default();
                    let p = tracker.observe(info.id.as_deref(), info.status.as_deref().unwrap_or(""), detail.current, detail.total);
                    progress.send_replace(Some(p.clone()));
                    continue;
                }
                Ok(info) => info.error_detail.and_then(|d| d.message).or(info.error).unwrap_or_default(),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => message,
                Err(bollard::errors::Error::DockerStreamError { error }) => error,
                Err(other) => {
                    let e = self.classify(other);
                    finish(progress, tracker.observe(None, &e.to_string(), None, None), false);
                    return Err(e);
                }
            };
            finish(progress, tracker.observe(None, &reason, None, None), false);
            return Err(BackendError::ImageMissing { reference: reference.to_string(), reason });
        }
        finish(progress, tracker.observe(None, "pulled", None, None), true);
        Ok(())
    }
}

impl ContainerBackend for Docker {
    async fn ensure_image(&self, reference: &str, progress: &ProgressTx) -> Result<bool, BackendError> {
        match self.client().await?.inspect_image(reference).await {
            Ok(_) => return Ok(false),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.classify(e)),
        }
        tracing::info!(image = reference, "image missing, pulling");
        self.pull(reference, progress).await?;
        Ok(true)
    }

    async fn pull(&self, reference: &str, progress: &ProgressTx) -> Result<(), BackendError> {
        // Docker Hub's images from the site's mirrors first, as the engine's
        // own `registry-mirrors` would (Podman's API has no such setting):
        // pulled under the mirror's name, then tagged as the catalog names it.
        for mirrored in self.engine.outbound.mirrored(reference) {
            match self.pull_one(&mirrored, reference, progress, false).await {
                Ok(()) => {
                    let client = self.client().await?;
                    let (repo, tag) = split_tag(reference);
                    let opts = bollard::query_parameters::TagImageOptionsBuilder::new().repo(&repo).tag(&tag).build();
                    if let Err(e) = client.tag_image(&mirrored, Some(opts)).await {
                        tracing::warn!(image = reference, mirror = mirrored, "pulled from a mirror but cannot tag it: {}", self.classify(e));
                        let _ = client.remove_image(&mirrored, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
                        continue;
                    }
                    // Only the mirror's name goes; the image stays under the catalog's.
                    let _ = client.remove_image(&mirrored, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
                    tracing::info!(image = reference, mirror = mirrored, "pulled from a registry mirror");
                    return Ok(());
                }
                Err(e) => tracing::info!(image = reference, mirror = mirrored, "not from this mirror: {e}"),
            }
        }
        self.pull_one(reference, reference, progress, true).await
    }

    async fn build_image(&self, reference: &str, recipe: &Path, progress: &ProgressTx) -> Result<(), BackendError> {
        let failed = |reason: String| BackendError::BuildFailed {
            reference: reference.to_string(),
            recipe: recipe.display().to_string(),
            reason,
        };
        tracing::info!(image = reference, recipe = %recipe.display(), "building image from its recipe");
        let mut tracker = BuildTracker::new(reference);
        progress.send_replace(Some(ImageProgress { step: format!("building from {}", recipe.display()), ..tracker.progress().clone() }));
        let client = self.client().await?;
        let stamp = self.stamp_of(recipe).await.map_err(|e| failed(format!("cannot read the recipe: {e}")))?;
        let (dir, outbound) = (recipe.to_path_buf(), self.engine.outbound.clone());
        let context = tokio::task::spawn_blocking(move || build_context(&dir, &outbound))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(format!("cannot read the recipe: {e}")))?;
        let labels = HashMap::from([(super::LABEL_RECIPE.to_string(), stamp)]);
        let opts = BuildImageOptionsBuilder::new()
            .t(reference)
            .networkmode("host")
            .rm(true)
            .forcerm(true)
            .buildargs(&self.engine.outbound.build_args())
            .labels(&labels)
            .build();
        let mut build = client.build_image(opts, None, Some(bollard::body_full(bytes::Bytes::from(context))));
        let mut error = None;
        while let Some(item) = build.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error_detail.and_then(|d| d.message).or(info.error) {
                        error = Some(e);
                    } else if let Some(text) = info.stream.as_deref() {
                        // A message may hold several lines.
                        let step = text.lines().filter_map(|line| tracker.observe(line).cloned()).last();
                        if let Some(p) = step {
                            progress.send_replace(Some(p));
                        }
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error: e }) => error = Some(e),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => error = Some(message),
                Err(other) => error = Some(self.classify(other).to_string()),
            }
            if error.is_some() {
                break;
            }
        }
        let Some(reason) = error else {
            finish(progress, tracker.progress(), true);
            return Ok(());
        };
        finish(progress, &ImageProgress { step: reason.clone(), ..tracker.progress().clone() }, false);
        // The usual cause offline: the recipe's base image was never made.
        let dockerfile = std::fs::read_to_string(recipe.join("Dockerfile")).unwrap_or_default();
        for base in super::progress::base_images(&dockerfile) {
            if matches!(client.inspect_image(&base).await, Err(ref e) if is_not_found(e)) {
                return Err(failed(format!(
                    "its base image {base} is not on this machine (pull it, or make it offline with scripts/build-base)"
                )));
            }
        }
        Err(failed(tracker.cause().unwrap_or(reason.trim()).to_string()))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, BackendError> {
        match self.fast_runtime().await {
            // Podman lists runtimes it may not have: the default then serves.
            Some(fast) => match self.create_on(spec, Some(fast)).await {
                Err(e) if runtime_refused(&e) => {
                    let id = self.create_on(spec, None).await?;
                    self.fast_failed(e);
                    Ok(id)
                }
                created => created,
            },
            None => self.create_on(spec, None).await,
        }
    }

    async fn start(&self, id: &str, spec: &ContainerSpec) -> Result<String, BackendError> {
        match self.start_created(id, spec).await {
            Ok(()) => Ok(id.to_string()),
            // A runtime the engine has may still fail where its default
            // works (crun refuses hybrid cgroups with controllers left in
            // v2): once the default starts it, the default serves.
            Err(e) if runtime_refused(&e) && self.fast_runtime().await.is_some() => {
                let again = self.create_on(spec, None).await?;
                self.start_created(&again, spec).await?;
                self.fast_failed(e);
                Ok(again)
            }
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        // Thawed first: a frozen process cannot act on SIGKILL under v1,
        // and not every engine thaws what it did not freeze. One this
        // process did not freeze (handed over, or left by a crash) is
        // looked up.
        match self.frozen.remove(id) {
            Some((_, f)) => drop(f.thaw()),
            None => {
                if let Ok((false, f)) = self.freezer(id).await {
                    if f.frozen().unwrap_or(false) {
                        let _ = f.thaw();
                    }
                }
            }
        }
        let opts = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.client().await?.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // Removal already in progress (another path got there first).
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        // Frozen through its cgroup where the engine is here: its thaw is
        // then one write on the call's path, not the engine's round trip.
        if let Ok((false, f)) = self.freezer(id).await {
            let at = f.clone();
            match tokio::task::spawn_blocking(move || at.freeze(FREEZE_LIMIT)).await {
                Ok(Ok(())) => {
                    self.frozen.insert(id.to_string(), f);
                    return Ok(());
                }
                Ok(Err(e)) => return Err(BackendError::Engine(format!("cannot freeze container {id}: {e}"))),
                Err(e) => return Err(BackendError::Engine(e.to_string())),
            }
        }
        self.client().await?.pause_container(id).await.map_err(|e| self.classify(e))
    }

    async fn unpause(&self, id: &str) -> Result<(), BackendError> {
        let thaw = |f: Freezer| f.thaw().map_err(|e| BackendError::Engine(format!("cannot thaw container {id}: {e}")));
        if let Some((_, f)) = self.frozen.remove(id) {
            return thaw(f);
        }
        // Frozen by the daemon this one took over from.
        if let Ok((false, f)) = self.freezer(id).await {
            if f.frozen().unwrap_or(false) {
                return thaw(f);
            }
        }
        self.client().await?.unpause_container(id).await.map_err(|e| self.classify(e))
    }

    async fn executables(&self, reference: &str, mount_id: &str) -> Result<Vec<String>, BackendError> {
        self.read_executables(reference, mount_id).await
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>, BackendError> {
        match self.client().await?.inspect_image(reference).await {
            Ok(img) => Ok(img.id),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn image_facts(&self, reference: &str, dirs: &[String], mount_id: &str) -> Result<ImageFacts, BackendError> {
        self.read_facts(reference, dirs, mount_id).await
    }

    async fn image_docs(&self, reference: &str, commands: &[String], mount_id: &str) -> Result<Vec<crate::share::Doc>, BackendError> {
        self.read_docs(reference, commands, mount_id).await
    }

    async fn image_alternatives(&self, reference: &str, mount_id: &str) -> Result<HashMap<String, String>, BackendError> {
        self.read_alternatives(reference, mount_id).await
    }

    async fn image_info(&self, reference: &str) -> Result<Option<super::ImageInfo>, BackendError> {
        self.inspect_info(reference).await
    }

    async fn registry_digest(&self, reference: &str) -> Result<String, BackendError> {
        // Docker Hub's names through the first mirror that answers.
        for name in self.engine.outbound.mirrored(reference).iter().map(String::as_str).chain([reference]) {
            match self.client().await?.inspect_registry_image(name, None).await {
                Ok(d) if d.descriptor.digest.is_some() => return Ok(d.descriptor.digest.unwrap_or_default()),
                Ok(_) => continue,
                Err(e) if name != reference => tracing::info!(image = reference, mirror = name, "not from this mirror: {e}"),
                Err(e) => return Err(self.classify(e)),
            }
        }
        Err(BackendError::Engine(format!("the registry of {reference} gave no digest")))
    }

    async fn images(&self) -> Result<Vec<super::ImageInfo>, BackendError> {
        self.list_image_infos().await
    }

    async fn holders(&self) -> Result<Vec<super::Holder>, BackendError> {
        Docker::holders(self).await
    }

    async fn remove_image(&self, id: &str) -> Result<(), BackendError> {
        self.remove_image_id(id).await
    }

    async fn prune_build_cache(&self, unused_s: u64) -> Result<u64, BackendError> {
        self.prune_builds(unused_s).await
    }

    async fn data_root_space(&self) -> Result<Option<(String, u64, u64)>, BackendError> {
        Docker::data_root_space(self).await
    }

    async fn recipe_stamp(&self, recipe: &Path) -> std::io::Result<String> {
        self.stamp_of(recipe).await
    }

    async fn version_of(&self, image: &str, argv: &[String], mount_id: &str) -> Result<String, BackendError> {
        self.version_output(image, argv, mount_id).await
    }

    async fn run_job(&self, job: &super::Job) -> Result<super::JobOutput, BackendError> {
        self.job_run(job).await
    }

    async fn local_images(&self) -> Result<Vec<String>, BackendError> {
        let images = self
            .client()
            .await?
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .map_err(|e| self.classify(e))?;
        let mut refs: Vec<String> = images.into_iter().flat_map(|i| i.repo_tags).filter(|t| t != "<none>:<none>").collect();
        refs.sort();
        Ok(refs)
    }

    async fn exec_stream(&self, id: &str, cmd: Vec<String>) -> Result<ExecStream, BackendError> {
        use bollard::container::LogOutput;
        let client = self.client().await?;
        let config = bollard::exec::CreateExecOptions {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            user: Some("0:0".to_string()),
            // An exec inherits the container's environment: keep the agent's
            // token out of the relay's (it gets it on its stdin).
            env: Some(vec![format!("{}=", crate::protocol::TOKEN_ENV)]),
            cmd: Some(cmd),
            ..Default::default()
        };
        let exec = client.create_exec(id, config).await.map_err(|e| self.classify(e))?;
        let opts = bollard::exec::StartExecOptions { detach: false, tty: false, output_capacity: Some(crate::protocol::relay::CHUNK * 2) };
        let started = client.start_exec(&exec.id, Some(opts)).await.map_err(|e| self.classify(e))?;
        if !self.engine.is_local() {
            // The start took its connection over for the exec's streams:
            // open the next call's now (a TLS or ssh handshake is most of a
            // remote call's cost), and hand it back to the pool.
            let client = client.clone();
            tokio::spawn(async move {
                let _ = client.ping().await;
            });
        }
        match started {
            bollard::exec::StartExecResults::Attached { output, input } => {
                let output = output.filter_map(|item| async move {
                    match item {
                        Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => Some(Ok((1, message))),
                        Ok(LogOutput::StdErr { message }) => Some(Ok((2, message))),
                        Ok(LogOutput::StdIn { .. }) => None,
                        Err(e) => Some(Err(BackendError::Engine(format!("exec stream: {e}")))),
                    }
                });
                Ok(ExecStream { output: Box::pin(output), input })
            }
            bollard::exec::StartExecResults::Detached => Err(BackendError::Engine("the engine detached an attached exec".into())),
        }
    }

    fn exec_path(&self) -> ExecPath {
        self.engine.exec_path()
    }

    async fn engine_info(&self) -> crate::protocol::EngineInfo {
        crate::protocol::EngineInfo {
            host: self.engine.host.clone(),
            remote: !self.engine.is_local(),
            exec_path: self.engine.exec_path(),
            source: self.engine.source.to_string(),
            version: self.version().await.map_err(|e| e.to_string()),
            runtime: self.runtime_line().await,
        }
    }

    async fn list(&self, mount_id: &str) -> Result<Vec<Managed>, BackendError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MOUNT}={mount_id}")])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let found = self.client().await?.list_containers(Some(opts)).await.map_err(|e| self.classify(e))?;
        Ok(found
            .into_iter()
            .map(|c| Managed {
                id: c.id.unwrap_or_default(),
                name: c.names.unwrap_or_default().first().map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default(),
                profile: c.labels.as_ref().and_then(|l| l.get(LABEL_PROFILE)).cloned().unwrap_or_default(),
                image_id: c.image_id.clone().unwrap_or_default(),
                token: c.labels.as_ref().and_then(|l| l.get(super::LABEL_TOKEN)).cloned().unwrap_or_default(),
                view: c.labels.as_ref().and_then(|l| l.get(super::LABEL_VIEW)).cloned().unwrap_or_default(),
                running: c.state.as_ref().is_some_and(|s| matches!(s.to_string().as_str(), "running" | "paused")),
                paused: c.state.is_some_and(|s| s.to_string() == "paused"),
            })
            .collect())
    }
}
