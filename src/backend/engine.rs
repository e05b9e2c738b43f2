//! Which container engine a daemon talks to, and how: the endpoint chosen
//! from `--engine`, the config file, `DOCKER_HOST` or the local sockets, as
//! Docker's own clients choose it, and whether it is on this machine.

use std::path::{Path, PathBuf};

/// The local Docker socket, then Podman's (its Docker-compatible API).
pub const LOCAL_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/podman/podman.sock"];

/// An engine endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// `unix:///path`, `tcp://host:port` or `ssh://[user@]host[:port]`
    /// (the Docker Engine API), or `cri+unix:///path` (the Container
    /// Runtime Interface of containerd or CRI-O).
    pub host: String,
    /// Client certificates for `tcp://` with TLS: `ca.pem`, `cert.pem`,
    /// `key.pem` in this directory (Docker's `DOCKER_CERT_PATH` layout).
    pub tls: Option<PathBuf>,
    /// Where the choice came from, for `odfs doctor`.
    pub source: &'static str,
    /// The site's mirrors, proxies and CA bundle (`[engine]`).
    pub outbound: super::outbound::Outbound,
}

/// How calls reach tools on an engine: the wire's own type, so what
/// `odfs status` shows is what the daemon chose.
pub use crate::protocol::ExecPath;

/// The `[engine]` table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub host: Option<String>,
    #[serde(default)]
    pub tls_verify: bool,
    pub cert_path: Option<PathBuf>,
    /// Registries tried first for Docker Hub images.
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    /// Proxies for recipe builds and networked tools.
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: Option<String>,
    /// A PEM bundle the builds and networked tools trust.
    pub ca_bundle: Option<PathBuf>,
}

impl EngineSettings {
    pub fn outbound(&self) -> super::outbound::Outbound {
        super::outbound::Outbound {
            registry_mirrors: self.registry_mirrors.clone(),
            http_proxy: self.http_proxy.clone(),
            https_proxy: self.https_proxy.clone(),
            no_proxy: self.no_proxy.clone(),
            ca_bundle: self.ca_bundle.clone(),
        }
    }
}

/// The environment's say, as Docker's clients read it.
#[derive(Debug, Clone, Default)]
pub struct EngineEnv {
    pub docker_host: Option<String>,
    pub tls_verify: bool,
    pub cert_path: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl EngineEnv {
    pub fn from_process() -> EngineEnv {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        EngineEnv {
            docker_host: var("DOCKER_HOST"),
            // Docker's clients take any non-empty value as "verify".
            tls_verify: var("DOCKER_TLS_VERIFY").is_some_and(|v| v != "0"),
            cert_path: var("DOCKER_CERT_PATH").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
        }
    }
}

impl Engine {
    /// The engine to use: `--engine`, else the config file's `host`, else
    /// `DOCKER_HOST`, else the first local socket that exists (Docker's,
    /// then Podman's), else Docker's default path (reported unreachable on
    /// first use). TLS settings follow the same order.
    pub fn resolve(cli: Option<&str>, file: &EngineSettings, env: &EngineEnv, exists: impl Fn(&Path) -> bool) -> Result<Engine, String> {
        let (host, source) = if let Some(h) = cli {
            (h.to_string(), "--engine")
        } else if let Some(h) = &file.host {
            (h.clone(), "config file")
        } else if let Some(h) = &env.docker_host {
            (h.clone(), "DOCKER_HOST")
        } else if let Some(s) = LOCAL_SOCKETS.iter().find(|s| exists(Path::new(s))) {
            (format!("unix://{s}"), "local socket")
        } else {
            (format!("unix://{}", LOCAL_SOCKETS[0]), "default")
        };
        let tls_from_file = file.tls_verify || file.cert_path.is_some();
        // As with Docker's clients, TLS settings concern tcp:// only.
        let tls = if !host.starts_with("tcp://") {
            None
        } else if tls_from_file {
            Some(file.cert_path.clone().or_else(|| env.cert_path.clone()).or_else(|| env.home.as_ref().map(|h| h.join(".docker"))))
        } else if env.tls_verify {
            Some(env.cert_path.clone().or_else(|| env.home.as_ref().map(|h| h.join(".docker"))))
        } else {
            None
        };
        let tls = tls.map(|t| t.ok_or_else(|| "TLS is on but no certificate directory is set (set cert_path or DOCKER_CERT_PATH)".to_string())).transpose()?;
        let engine = Engine { host, tls, source, outbound: file.outbound() };
        engine.validate()?;
        Ok(engine)
    }

    fn validate(&self) -> Result<(), String> {
        let ok = match self.scheme() {
            "unix" | "cri+unix" => self.host.len() > self.scheme().len() + "://".len(),
            "tcp" | "ssh" => self.host.split_once("://").is_some_and(|(_, rest)| !rest.is_empty()),
            _ => false,
        };
        if !ok {
            return Err(format!("engine {:?} is not unix:///PATH, tcp://HOST:PORT, ssh://[USER@]HOST[:PORT] or cri+unix:///PATH", self.host));
        }
        Ok(())
    }

    pub fn scheme(&self) -> &str {
        self.host.split_once("://").map_or("", |(s, _)| s)
    }

    /// A unix socket is on this machine; tcp and ssh engines are treated as
    /// remote even on loopback: host paths and fds may not be theirs.
    pub fn is_local(&self) -> bool {
        matches!(self.scheme(), "unix" | "cri+unix")
    }

    /// The engine is reached through the Container Runtime Interface
    /// (a Kubernetes node's containerd or CRI-O), not the Docker API.
    pub fn is_cri(&self) -> bool {
        self.scheme() == "cri+unix"
    }

    pub fn exec_path(&self) -> ExecPath {
        if self.is_local() {
            ExecPath::Fd
        } else {
            ExecPath::Relay
        }
    }

    /// One line for `odfs doctor` and the log.
    pub fn describe(&self) -> String {
        let place = if self.is_local() { "local" } else { "remote" };
        let tls = if self.tls.is_some() { ", TLS" } else { "" };
        let api = if self.is_cri() { ", CRI" } else { "" };
        format!("{} ({place}{tls}{api}, exec path {}, from {})", self.host, self.exec_path().as_str(), self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(cli: Option<&str>, file: EngineSettings, env: EngineEnv, present: &[&str]) -> Result<Engine, String> {
        Engine::resolve(cli, &file, &env, |p| present.iter().any(|x| Path::new(x) == p))
    }

    #[test]
    fn the_flag_beats_the_file_beats_docker_host_beats_local_sockets() {
        let file = EngineSettings { host: Some("tcp://file:2375".into()), ..Default::default() };
        let env = EngineEnv { docker_host: Some("ssh://env".into()), ..Default::default() };
        assert_eq!(resolve(Some("unix:///x.sock"), file.clone(), env.clone(), &[]).unwrap().host, "unix:///x.sock");
        assert_eq!(resolve(None, file, env.clone(), &[]).unwrap().host, "tcp://file:2375");
        assert_eq!(resolve(None, EngineSettings::default(), env, &[]).unwrap().host, "ssh://env");
        let podman_only = resolve(None, EngineSettings::default(), EngineEnv::default(), &["/run/podman/podman.sock"]).unwrap();
        assert_eq!((podman_only.host.as_str(), podman_only.source), ("unix:///run/podman/podman.sock", "local socket"));
        let both = resolve(None, EngineSettings::default(), EngineEnv::default(), &LOCAL_SOCKETS).unwrap();
        assert_eq!(both.host, "unix:///var/run/docker.sock");
        assert_eq!(resolve(None, EngineSettings::default(), EngineEnv::default(), &[]).unwrap().source, "default");
    }

    #[test]
    fn unix_is_local_and_tcp_or_ssh_remote() {
        let e = |h: &str| resolve(Some(h), EngineSettings::default(), EngineEnv::default(), &[]).unwrap();
        assert_eq!(e("unix:///run/docker.sock").exec_path(), ExecPath::Fd);
        assert_eq!(e("tcp://127.0.0.1:2375").exec_path(), ExecPath::Relay);
        assert_eq!(e("ssh://root@build1").exec_path(), ExecPath::Relay);
        let cri = e("cri+unix:///run/containerd/containerd.sock");
        assert!(cri.is_cri() && cri.is_local() && !e("unix:///x").is_cri());
        assert_eq!(cri.exec_path(), ExecPath::Fd);
        for bad in ["http://x", "tcp://", "unix://", "cri+unix://", "cri+tcp://h:1", "docker.sock"] {
            assert!(resolve(Some(bad), EngineSettings::default(), EngineEnv::default(), &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_comes_from_the_file_or_dockers_variables() {
        let env = EngineEnv { tls_verify: true, cert_path: Some("/env/certs".into()), home: Some("/root".into()), ..Default::default() };
        let t = resolve(Some("tcp://h:2376"), EngineSettings::default(), env.clone(), &[]).unwrap();
        assert_eq!(t.tls.as_deref(), Some(Path::new("/env/certs")));
        let file = EngineSettings { tls_verify: true, cert_path: Some("/etc/odfs/certs".into()), ..Default::default() };
        assert_eq!(resolve(Some("tcp://h:2376"), file, env, &[]).unwrap().tls.as_deref(), Some(Path::new("/etc/odfs/certs")));
        let home = EngineEnv { tls_verify: true, home: Some("/root".into()), ..Default::default() };
        assert_eq!(resolve(Some("tcp://h:2376"), EngineSettings::default(), home.clone(), &[]).unwrap().tls.as_deref(), Some(Path::new("/root/.docker")));
        assert_eq!(resolve(Some("unix:///x"), EngineSettings::default(), home, &[]).unwrap().tls, None);
    }
}
