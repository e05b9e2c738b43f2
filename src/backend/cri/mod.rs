//! The Container Runtime Interface (containerd, CRI-O): a Kubernetes node's
//! engine, through its gRPC API. Each odfs container is a pod sandbox of its
//! own holding one container, so the pod's namespaces are the profile's
//! (host network, host pid and IPC, or a network of its own) and removing
//! the sandbox removes everything of it.
//!
//! What the CRI does not have, odfs does itself on the node: the pause tier
//! is the cgroup freezer ([`super::freezer`]), a network-less profile's pod
//! loses the interfaces the node's CNI gave it, and an image's files are
//! read through the root of a container whose only process is odfs's own
//! agent holding it ([`read`]). Images are never built here (no build API):
//! a recipe or an archive package gives one line naming where to build.

pub mod kubelet;
mod read;
mod spec;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use super::engine::{Engine, ExecPath};
use super::freezer::Freezer;
use super::{BackendError, ContainerBackend, ContainerSpec, ExecStream, ImageFacts, ImageInfo, Managed, ProgressTx, LABEL_MOUNT, LABEL_PROFILE};
use crate::protocol::ImageProgress;

/// How long a request may take to answer, a pull excepted.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);
/// How long the engine may take to say its version (`odfs doctor`, a
/// daemon's status): an engine that does not answer is said so quickly.
const VERSION_LIMIT: Duration = Duration::from_secs(10);
/// How long a pull may take.
const PULL_LIMIT: Duration = Duration::from_secs(30 * 60);
/// How long a container's processes may take to freeze.
const FREEZE_LIMIT: Duration = Duration::from_secs(2);
/// The pod namespace odfs's sandboxes are named in (the CRI's, not
/// Kubernetes': no API server knows them).
pub const POD_NAMESPACE: &str = "odfs";

pub struct Cri {
    engine: Engine,
    /// Connected on first use and kept; a failed connection is tried again
    /// on the next call, so odfs survives starting before the engine.
    channel: tokio::sync::OnceCell<Channel>,
    /// The agent binary on this machine: the only process of the containers
    /// an image is read through.
    agent: Option<PathBuf>,
    /// Containers this process froze, by id.
    frozen: dashmap::DashMap<String, Freezer>,
    /// The engine's runtime handlers (asked once): its default's name and
    /// OCI runtime, and whether it has one named [`FAST_HANDLER`].
    handlers: tokio::sync::OnceCell<Handlers>,
    /// Why [`FAST_HANDLER`] failed where the default worked: the default
    /// serves from then on.
    fast_failed: std::sync::Mutex<Option<String>>,
    /// When a kubelet was last looked for, and what was found.
    kubelet_checked: tokio::sync::Mutex<Option<(std::time::Instant, Option<String>)>>,
}

/// How long the look for a kubelet serves.
const KUBELET_RECHECK: Duration = Duration::from_secs(10);

/// The runtime handler sandboxes are asked to run on where the engine has
/// one by that name: crun starts a container in about half of runc's time.
const FAST_HANDLER: &str = "crun";

#[derive(Debug, Clone, Default)]
struct Handlers {
    default: String,
    /// The OCI runtime binary of the default handler, where the engine says.
    default_binary: String,
    fast: bool,
}

/// The runtime handlers in the engine's verbose status (containerd's
/// config; CRI-O says nothing there, and its default serves).
fn handlers(config: &serde_json::Value) -> Handlers {
    let c = &config["containerd"];
    let default = c["defaultRuntimeName"].as_str().unwrap_or_default().to_string();
    let binary = |name: &str| c["runtimes"][name]["options"]["BinaryName"].as_str().unwrap_or_default().to_string();
    Handlers { default_binary: binary(&default), fast: c["runtimes"].get(FAST_HANDLER).is_some(), default }
}

impl Cri {
    /// A client of `engine` (`cri+unix://PATH`); `agent` is needed to read
    /// images (the view, `odfs scan`).
    pub fn new(engine: Engine, agent: Option<PathBuf>) -> Cri {
        Cri {
            engine,
            channel: tokio::sync::OnceCell::new(),
            agent,
            frozen: Default::default(),
            handlers: tokio::sync::OnceCell::new(),
            fast_failed: std::sync::Mutex::new(None),
            kubelet_checked: tokio::sync::Mutex::new(None),
        }
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(self.engine.host.strip_prefix("cri+unix://").unwrap_or(&self.engine.host))
    }

    fn unreachable(&self, reason: String) -> BackendError {
        BackendError::Unreachable {
            endpoint: self.engine.host.clone(),
            reason,
            hint: "is containerd or CRI-O running, and is this its CRI socket? odfs needs root to use it",
        }
    }

    async fn channel(&self) -> Result<Channel, BackendError> {
        let connect = || async {
            let socket = self.socket();
            // The URI is required by the transport and unused: every
            // connection is to the socket.
            let endpoint = tonic::transport::Endpoint::from_static("http://cri.invalid").connect_timeout(Duration::from_secs(5));
            endpoint.connect_with_connector(UnixConnector(socket)).await.map_err(|e| self.unreachable(error_chain(&e)))
        };
        self.channel.get_or_try_init(connect).await.cloned()
    }

    async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>, BackendError> {
        Ok(RuntimeServiceClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    async fn images_client(&self) -> Result<ImageServiceClient<Channel>, BackendError> {
        Ok(ImageServiceClient::new(self.channel().await?).max_decoding_message_size(64 << 20))
    }

    /// One request, bounded in time, its error as odfs says it.
    async fn ask<T>(&self, what: &str, limit: Duration, call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, BackendError> {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(self.status_error(what, status)),
            Err(_) => Err(BackendError::Engine(format!("the CRI engine did not answer {what} within {}s", limit.as_secs()))),
        }
    }

    fn status_error(&self, what: &str, status: tonic::Status) -> BackendError {
        use tonic::Code;
        let message = format!("{what}: {}", super::create::one_line(status.message()));
        match status.code() {
            Code::Unavailable if status.message().contains("transport") || status.message().contains("connect") => self.unreachable(message),
            Code::NotFound => BackendError::Answered { status: 404, message },
            Code::AlreadyExists | Code::FailedPrecondition => BackendError::Answered { status: 409, message },
            _ => BackendError::Answered { status: 500, message },
        }
    }

    /// The verbose status of container `id`: its CRI status and the
    /// engine's info (the pid of its first process, its runtime spec).
    async fn container_status(&self, id: &str) -> Result<(cri::ContainerStatus, serde_json::Value), BackendError> {
        let req = cri::ContainerStatusRequest { container_id: id.to_string(), verbose: true };
        let r = self.ask("container status", REQUEST_LIMIT, self.runtime().await?.container_status(req)).await?;
        let info = r.info.get("info").and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
        Ok((r.status.unwrap_or_default(), info))
    }

    /// The host pid of container `id`'s first process (0: none runs).
    async fn pid(&self, id: &str) -> Result<i32, BackendError> {
        let (_, info) = self.container_status(id).await?;
        Ok(info.get("pid").and_then(serde_json::Value::as_i64).unwrap_or(0) as i32)
    }

    async fn freezer(&self, id: &str) -> Result<Freezer, BackendError> {
        let pid = self.pid(id).await?;
        if pid <= 0 {
            return Err(BackendError::Answered { status: 409, message: format!("container {id} is not running") });
        }
        Freezer::of(pid, id).map_err(|e| BackendError::Engine(e.to_string()))
    }

    /// The catalog's `pids` limit where the CRI cannot give it: it has a
    /// field for it on cgroup v2 only (`unified`), so on v1 the daemon
    /// writes the container's `pids.max` itself, before any call reaches
    /// the agent (which forks only for calls).
    async fn limit_pids(&self, id: &str, spec: &ContainerSpec) -> Result<(), BackendError> {
        let Some(max) = spec.limits.pids.filter(|_| !spec::cgroup_v2()) else { return Ok(()) };
        let pid = self.pid(id).await?;
        let dir = super::freezer::v1_dir(pid, id, "pids").map_err(|e| BackendError::Engine(e.to_string()))?;
        let Some(dir) = dir else { return Err(BackendError::Unsupported(format!("the machine has no pids controller: the limit of {max} processes cannot be kept"))) };
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("pids.max"))
            .and_then(|mut f| f.write_all(max.to_string().as_bytes()))
            .map_err(|e| BackendError::Engine(format!("cannot limit container {id} to {max} processes: {e}")))
    }

    /// The sandbox holding container `id` and the container's name
    /// (`None`: no such container).
    async fn sandbox_of(&self, id: &str) -> Result<Option<(String, String)>, BackendError> {
        let filter = cri::ContainerFilter { id: id.to_string(), ..Default::default() };
        let found = self.containers(filter).await?;
        Ok(found.into_iter().find(|c| c.id == id).map(|c| (c.pod_sandbox_id, c.metadata.map(|m| m.name).unwrap_or_default())))
    }

    async fn containers(&self, filter: cri::ContainerFilter) -> Result<Vec<cri::Container>, BackendError> {
        let req = cri::ListContainersRequest { filter: Some(filter) };
        Ok(self.ask("list containers", REQUEST_LIMIT, self.runtime().await?.list_containers(req)).await?.containers)
    }

    /// Stop and remove a sandbox and everything in it. Absent is fine.
    async fn remove_sandbox(&self, sandbox: &str) -> Result<(), BackendError> {
        let runtime = self.runtime().await?;
        let gone = |e: &BackendError| matches!(e, BackendError::Answered { status: 404, .. });
        let stop = cri::StopPodSandboxRequest { pod_sandbox_id: sandbox.to_string() };
        match self.ask("stop pod sandbox", REQUEST_LIMIT, runtime.clone().stop_pod_sandbox(stop)).await {
            Err(e) if !gone(&e) => return Err(e),
            _ => {}
        }
        let remove = cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox.to_string() };
        match self.ask("remove pod sandbox", REQUEST_LIMIT, runtime.clone().remove_pod_sandbox(remove)).await {
            Err(e) if !gone(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// The engine's runtime handlers (`None` while it does not answer).
    async fn handlers(&self) -> Option<&Handlers> {
        let ask = || async {
            let status = self.ask("status", REQUEST_LIMIT, self.runtime().await?.status(cri::StatusRequest { verbose: true })).await?;
            let config = status.info.get("config").and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
            Ok::<_, BackendError>(handlers(&config))
        };
        self.handlers.get_or_try_init(ask).await.ok()
    }

    /// The handler to ask for: [`FAST_HANDLER`] where the engine has it
    /// and it has not failed, else the default (empty).
    async fn handler(&self) -> &'static str {
        let failed = self.fast_failed.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        match self.handlers().await {
            Some(h) if h.fast && !failed => FAST_HANDLER,
            _ => "",
        }
    }

    /// One line for `odfs status` and `odfs doctor`: the runtime that runs
    /// the containers, and why.
    async fn runtime_line(&self) -> String {
        let Some(h) = self.handlers().await.cloned() else { return "unknown: the CRI engine does not answer".into() };
        let default = match (h.default.as_str(), h.default_binary.rsplit('/').next().unwrap_or_default()) {
            ("", _) => "the engine's default handler".to_string(),
            (name, "") => format!("the default handler {name}"),
            (name, binary) => format!("the default handler {name} ({binary})"),
        };
        if let Some(why) = self.fast_failed.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return format!("{default}: the engine's {FAST_HANDLER} handler failed ({why})");
        }
        if h.fast {
            format!("the {FAST_HANDLER} handler, asked per pod (faster to start than {default})")
        } else {
            format!("{default} (register a {FAST_HANDLER} handler with the engine for faster starts)")
        }
    }

    /// Refuse an engine a kubelet manages ([`kubelet`]).
    pub fn kubelet_refusal(&self) -> Option<String> {
        let socket = self.socket();
        kubelet::managing(&socket).map(|pid| kubelet::refusal(&socket, pid))
    }

    /// [`Cri::kubelet_refusal`] before a sandbox: a kubelet may start after
    /// the daemon. Its look through `/proc` runs off the async threads, and
    /// its answer serves for [`KUBELET_RECHECK`].
    async fn kubelet_refusal_now(&self) -> Option<String> {
        let mut last = self.kubelet_checked.lock().await;
        if let Some((at, answer)) = &*last {
            if at.elapsed() < KUBELET_RECHECK {
                return answer.clone();
            }
        }
        let socket = self.socket();
        let answer = tokio::task::spawn_blocking(move || kubelet::managing(&socket).map(|pid| kubelet::refusal(&socket, pid))).await.ok().flatten();
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }

    /// Run a sandbox for `spec` and create its container in it; returns
    /// the container's id. A sandbox left with the same name (a crash)
    /// is replaced.
    async fn create_in_sandbox(&self, spec: &ContainerSpec) -> Result<String, BackendError> {
        if let Some(line) = self.kubelet_refusal_now().await {
            return Err(BackendError::Unsupported(line));
        }
        let sandbox_config = spec::sandbox(spec);
        let handler = self.handler().await;
        let mut run = cri::RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: handler.into() };
        let sandbox = match self.ask("run pod sandbox", REQUEST_LIMIT, self.runtime().await?.run_pod_sandbox(run.clone())).await {
            Ok(r) => r.pod_sandbox_id,
            Err(e) => {
                if e.to_string().contains("reserved") {
                    // A sandbox a crash left with this name.
                    self.remove_named(&spec.name).await?;
                } else if handler.is_empty() || !runtime_refused(&e) {
                    return Err(e);
                } else {
                    tracing::warn!(error = %e, "the {FAST_HANDLER} runtime handler failed; the engine's default serves from now on");
                    *self.fast_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(super::create::one_line(&e.to_string()));
                    self.remove_named(&spec.name).await?;
                    run.runtime_handler.clear();
                }
                self.ask("run pod sandbox", REQUEST_LIMIT, self.runtime().await?.run_pod_sandbox(run)).await?.pod_sandbox_id
            }
        };
        let made = async {
            if spec.loopback_only {
                self.loopback_only(&sandbox).await?;
            }
            let create = cri::CreateContainerRequest { pod_sandbox_id: sandbox.clone(), config: Some(spec::container(spec)), sandbox_config: Some(sandbox_config) };
            Ok::<_, BackendError>(self.ask("create container", REQUEST_LIMIT, self.runtime().await?.create_container(create)).await?.container_id)
        }
        .await;
        if made.is_err() {
            let _ = self.remove_sandbox(&sandbox).await;
            spec::remove_scratch(&spec.name);
        }
        made
    }

    /// Remove the sandbox named `name` (one a crash left).
    async fn remove_named(&self, name: &str) -> Result<(), BackendError> {
        let req = cri::ListPodSandboxRequest { filter: None };
        let pods = self.ask("list pod sandboxes", REQUEST_LIMIT, self.runtime().await?.list_pod_sandbox(req)).await?.items;
        for pod in pods.into_iter().filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name && m.namespace == POD_NAMESPACE)) {
            self.remove_sandbox(&pod.id).await?;
        }
        Ok(())
    }

    /// Leave a sandbox's network namespace with its loopback only: the CRI
    /// gives every pod not on the node's network the node's pod network
    /// (CNI), and a profile with `network = "none"` must have none.
    async fn loopback_only(&self, sandbox: &str) -> Result<(), BackendError> {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: sandbox.to_string(), verbose: true };
        let r = self.ask("pod sandbox status", REQUEST_LIMIT, self.runtime().await?.pod_sandbox_status(req)).await?;
        let info: serde_json::Value = r.info.get("info").and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
        let pid = info.get("pid").and_then(serde_json::Value::as_i64).unwrap_or(0);
        if pid <= 0 {
            return Err(BackendError::Engine(format!("the CRI engine gives no process for sandbox {sandbox}: cannot take its network away")));
        }
        let netns = format!("/proc/{pid}/ns/net");
        // Never the daemon's own network (the host's): a pid that ended and
        // was reused by a host process would name it.
        if std::fs::read_link(&netns).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
            return Err(BackendError::Engine(format!("sandbox {sandbox} shares the host's network: its network cannot be taken away")));
        }
        let links = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).map_err(|e| BackendError::Engine(format!("cannot read the sandbox's interfaces: {e}")))?;
        for link in spec::interfaces(&links).into_iter().filter(|l| l != "lo") {
            let out = tokio::process::Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(["ip", "link", "delete", "dev", &link])
                .output()
                .await
                .map_err(|e| BackendError::Engine(format!("cannot run nsenter and ip (util-linux, iproute2) to take a sandbox's network away: {e}")))?;
            if !out.status.success() {
                return Err(BackendError::Engine(format!("cannot delete interface {link} of sandbox {sandbox}: {}", super::create::one_line(&String::from_utf8_lossy(&out.stderr)))));
            }
        }
        Ok(())
    }

    /// The engine's name and version, and its runtime's.
    pub async fn version(&self) -> Result<String, BackendError> {
        let req = cri::VersionRequest { version: "v1".into() };
        let v = self.ask("version", VERSION_LIMIT, self.runtime().await?.version(req)).await?;
        Ok(format!("{} {} (CRI {})", v.runtime_name, v.runtime_version, v.runtime_api_version))
    }

    /// The status and verbose info of a local image (`None`: not here).
    async fn image_status(&self, reference: &str) -> Result<Option<(cri::Image, serde_json::Value)>, BackendError> {
        let req = cri::ImageStatusRequest { image: Some(image_spec(reference)), verbose: true };
        let r = self.ask("image status", REQUEST_LIMIT, self.images_client().await?.image_status(req)).await?;
        let info = r.info.get("info").and_then(|i| serde_json::from_str(i).ok()).unwrap_or_default();
        Ok(r.image.map(|i| (i, info)))
    }

    fn build_refused(&self, what: &str) -> BackendError {
        BackendError::Unsupported(format!(
            "{what} cannot be built on this node: its engine ({}) is a CRI runtime, which builds no images; build it on a build host with Docker or Podman (odfs update there), push it to the registry this node pulls from, and name it by that reference in the catalog",
            self.engine.host
        ))
    }
}

/// Whether the engine's error is the runtime's refusal (the handler, or
/// its OCI runtime failing to create the sandbox), as opposed to the
/// sandbox's own (a name, a network).
fn runtime_refused(e: &BackendError) -> bool {
    let m = e.to_string().to_lowercase();
    m.contains("oci runtime") || m.contains("runtime handler") || m.contains(FAST_HANDLER)
}

fn image_spec(reference: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: reference.to_string(), ..Default::default() }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What a local image is, from its CRI status and the engine's verbose
/// info (its OCI config: labels, creation date).
fn image_info(image: cri::Image, info: &serde_json::Value) -> ImageInfo {
    let spec = info.get("imageSpec");
    let labels = spec
        .and_then(|s| s.pointer("/config/Labels"))
        .and_then(|l| serde_json::from_value::<HashMap<String, String>>(l.clone()).ok())
        .unwrap_or_default();
    let created_s = spec
        .and_then(|s| s.get("created"))
        .and_then(serde_json::Value::as_str)
        .and_then(|d| humantime::parse_rfc3339_weak(d.trim_end_matches('Z').split('.').next()?).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    ImageInfo { id: image.id, tags: image.repo_tags, digests: image.repo_digests, size: image.size, created_s, tagged_ms: None, labels }
}

/// Connections to the CRI socket, for tonic's transport.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<tonic::transport::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

impl ContainerBackend for Cri {
    async fn ensure_image(&self, reference: &str, progress: &ProgressTx) -> Result<bool, BackendError> {
        if self.image_status(reference).await?.is_some() {
            return Ok(false);
        }
        tracing::info!(image = reference, "image missing, pulling");
        self.pull(reference, progress).await?;
        Ok(true)
    }

    async fn build_image(&self, reference: &str, _recipe: &Path, _progress: &ProgressTx) -> Result<(), BackendError> {
        Err(self.build_refused(&format!("image {reference} has a build recipe and")))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, BackendError> {
        if spec.preload.is_some() {
            return Err(BackendError::Unsupported("a CRI engine is on this machine: the agent is bound, never copied in".into()));
        }
        if let Some(ask) = spec.device_requests.iter().find(|d| matches!(d, super::DeviceAsk::Gpus(_))) {
            let image = spec.labels.get(super::LABEL_IMAGE).map_or(spec.image.as_str(), String::as_str);
            return Err(BackendError::Unsupported(format!(
                "image {image} asks for GPUs ({ask:?}) and odfs asks a CRI engine for devices by CDI name only: name them in `devices` as CDI names (nvidia.com/gpu=0), with the node's CDI specs generated"
            )));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some((source, below)) = spec::held_submount(&spec.binds, &mountinfo) {
            return Err(BackendError::Unsupported(format!(
                "the host's mounts are private, and a CRI engine binds {} with everything mounted below it ({below}), which the tool's container would keep mounted after the host unmounts it: make the host's mounts shared (mount --make-rshared /)",
                source.display()
            )));
        }
        self.create_in_sandbox(spec).await
    }

    async fn start(&self, id: &str, spec: &ContainerSpec) -> Result<String, BackendError> {
        let req = cri::StartContainerRequest { container_id: id.to_string() };
        let started = async {
            self.ask("start container", REQUEST_LIMIT, self.runtime().await?.start_container(req)).await?;
            self.limit_pids(id, spec).await
        };
        if let Err(e) = started.await {
            let _ = self.remove(id).await;
            return Err(e);
        }
        Ok(id.to_string())
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        // Thawed first: a frozen process cannot act on SIGKILL under v1.
        match self.frozen.remove(id) {
            Some((_, f)) => drop(f.thaw()),
            None => {
                if let Ok(f) = self.freezer(id).await {
                    if f.frozen().unwrap_or(false) {
                        let _ = f.thaw();
                    }
                }
            }
        }
        let Some((sandbox, name)) = self.sandbox_of(id).await? else { return Ok(()) };
        self.remove_sandbox(&sandbox).await?;
        spec::remove_scratch(&name);
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        let f = self.freezer(id).await?;
        let at = f.clone();
        match tokio::task::spawn_blocking(move || at.freeze(FREEZE_LIMIT)).await {
            Ok(Ok(())) => {
                self.frozen.insert(id.to_string(), f);
                Ok(())
            }
            Ok(Err(e)) => Err(BackendError::Engine(format!("cannot freeze container {id}: {e}"))),
            Err(e) => Err(BackendError::Engine(e.to_string())),
        }
    }

    async fn unpause(&self, id: &str) -> Result<(), BackendError> {
        let f = match self.frozen.remove(id) {
            Some((_, f)) => f,
            None => self.freezer(id).await?,
        };
        f.thaw().map_err(|e| BackendError::Engine(format!("cannot thaw container {id}: {e}")))
    }

    async fn executables(&self, reference: &str, mount_id: &str) -> Result<Vec<String>, BackendError> {
        self.read_executables(reference, mount_id).await
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>, BackendError> {
        Ok(self.image_status(reference).await?.map(|(i, _)| i.id))
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

    async fn pull(&self, reference: &str, progress: &ProgressTx) -> Result<(), BackendError> {
        // The CRI's pull answers once, when it is over: the caller sees the
        // pull begin and end, not its layers.
        let mut shown = ImageProgress { reference: reference.to_string(), step: "pulling through the CRI".into(), ..Default::default() };
        progress.send_replace(Some(shown.clone()));
        let req = cri::PullImageRequest { image: Some(image_spec(reference)), auth: None, sandbox_config: None };
        let pulled = self.ask("pull image", PULL_LIMIT, self.images_client().await?.pull_image(req)).await;
        shown.done = true;
        shown.ok = pulled.is_ok();
        progress.send_replace(Some(shown));
        pulled.map(drop).map_err(|e| match e {
            BackendError::Answered { message, .. } => BackendError::ImageMissing { reference: reference.to_string(), reason: message },
            other => other,
        })
    }

    async fn image_info(&self, reference: &str) -> Result<Option<ImageInfo>, BackendError> {
        Ok(self.image_status(reference).await?.map(|(i, info)| image_info(i, &info)))
    }

    async fn registry_digest(&self, reference: &str) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(format!(
            "the CRI has no way to ask a registry for {reference}'s digest without pulling it: `odfs update` pulls it instead"
        )))
    }

    async fn images(&self) -> Result<Vec<ImageInfo>, BackendError> {
        let req = cri::ListImagesRequest { filter: None };
        let listed = self.ask("list images", REQUEST_LIMIT, self.images_client().await?.list_images(req)).await?.images;
        let mut out = Vec::with_capacity(listed.len());
        for image in listed {
            // Labels and dates are in the verbose status only.
            let info = match self.image_status(&image.id).await? {
                Some((_, info)) => info,
                None => continue,
            };
            out.push(image_info(image, &info));
        }
        Ok(out)
    }

    async fn holders(&self) -> Result<Vec<super::Holder>, BackendError> {
        let all = self.containers(cri::ContainerFilter::default()).await?;
        Ok(all
            .into_iter()
            .map(|c| super::Holder {
                managed: c.labels.contains_key(super::LABEL_MANAGED),
                mount: c.labels.get(LABEL_MOUNT).cloned().unwrap_or_default(),
                ahead: c.labels.contains_key(super::LABEL_AHEAD),
                running: c.state == cri::ContainerState::ContainerRunning as i32,
                created_s: c.created_at / 1_000_000_000,
                image_id: c.image_ref,
                id: c.id,
            })
            .collect())
    }

    async fn remove_image(&self, id: &str) -> Result<(), BackendError> {
        // The CRI removes an image in use; odfs never does.
        if self.holders().await?.iter().any(|h| h.image_id == id) {
            return Err(BackendError::Answered { status: 409, message: format!("image {id} is in use by a container") });
        }
        let req = cri::RemoveImageRequest { image: Some(image_spec(id)) };
        self.ask("remove image", REQUEST_LIMIT, self.images_client().await?.remove_image(req)).await.map(drop)
    }

    async fn prune_build_cache(&self, _unused_s: u64) -> Result<u64, BackendError> {
        // Nothing is built here, so there is no build cache.
        Ok(0)
    }

    async fn data_root_space(&self) -> Result<Option<(String, u64, u64)>, BackendError> {
        let fs = self.ask("image filesystem info", REQUEST_LIMIT, self.images_client().await?.image_fs_info(cri::ImageFsInfoRequest {})).await?;
        let Some(point) = fs.image_filesystems.into_iter().find_map(|f| f.fs_id.map(|i| i.mountpoint)) else { return Ok(None) };
        Ok(super::statvfs(Path::new(&point)).map(|(free, total)| (point, free, total)))
    }

    async fn recipe_stamp(&self, recipe: &Path) -> std::io::Result<String> {
        Err(std::io::Error::other(self.build_refused(&format!("the recipe {}", recipe.display())).to_string()))
    }

    async fn version_of(&self, image: &str, _argv: &[String], _mount_id: &str) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(format!(
            "odfs runs no version command of {image} on a CRI engine (it would read the container's log files); give the image's version in the catalog"
        )))
    }

    async fn run_job(&self, _job: &super::Job) -> Result<super::JobOutput, BackendError> {
        Err(self.build_refused("an archive package"))
    }

    async fn local_images(&self) -> Result<Vec<String>, BackendError> {
        let req = cri::ListImagesRequest { filter: None };
        let listed = self.ask("list images", REQUEST_LIMIT, self.images_client().await?.list_images(req)).await?.images;
        Ok(listed.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    async fn list(&self, mount_id: &str) -> Result<Vec<Managed>, BackendError> {
        let filter = cri::ContainerFilter { label_selector: HashMap::from([(LABEL_MOUNT.to_string(), mount_id.to_string())]), ..Default::default() };
        let mut out = Vec::new();
        let found = self.containers(filter).await?;
        let live: Vec<String> = found.iter().filter_map(|c| c.metadata.as_ref().map(|m| m.name.clone())).collect();
        spec::sweep_scratch(&format!("odfs-{mount_id}-"), &live);
        for c in found {
            let running = c.state == cri::ContainerState::ContainerRunning as i32;
            let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
            out.push(Managed {
                name: c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
                profile: label(LABEL_PROFILE),
                image_id: c.image_ref.clone(),
                token: label(super::LABEL_TOKEN),
                view: label(super::LABEL_VIEW),
                running,
                // The CRI pauses nothing: a container odfs froze is
                // running to the engine, as on a Docker engine.
                paused: false,
                id: c.id,
            });
        }
        Ok(out)
    }

    async fn exec_stream(&self, _id: &str, _cmd: Vec<String>) -> Result<ExecStream, BackendError> {
        Err(BackendError::Unsupported("a CRI engine is on this machine: calls take the fd path, never a relay".into()))
    }

    fn exec_path(&self) -> ExecPath {
        ExecPath::Fd
    }

    async fn engine_info(&self) -> crate::protocol::EngineInfo {
        let version = self.version().await.map_err(|e| e.to_string());
        // An engine that did not say its version is not asked more.
        let runtime = if version.is_ok() { self.runtime_line().await } else { "unknown: the CRI engine does not answer".into() };
        crate::protocol::EngineInfo {
            host: self.engine.host.clone(),
            remote: false,
            exec_path: ExecPath::Fd,
            source: self.engine.source.to_string(),
            version,
            runtime,
        }
    }
}
