//! The daemon behind `odfs mount`. A call goes through one file per stage:
//! [`dispatch`] (who asks, which handler), [`exec`] (one exec request),
//! [`pool`] (its container), [`link`] (the way to the container's agent),
//! then the launcher. [`server`] runs it all in phases ([`boot`],
//! [`inherit`], rounds of serving, a stop that waits for every task);
//! [`reload`] serves catalog edits; [`requests`] answers the admin
//! requests, one file per request; [`images`] weighs and collects images.

mod accounts;
mod boot;
mod call;
mod dispatch;
mod docs;
mod exec;
mod facts;
mod fetching;
mod images;
mod inherit;
mod link;
mod listener;
mod paths;
pub mod pins;
pub mod pool;
mod reload;
mod requests;
mod stamps;
mod server;
mod systemd;
mod takeover;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::catalog::{Snapshot, Store};
use pool::Pool;

pub use boot::mount_id;
pub use server::run;

pub struct Daemon<B> {
    pool: Pool<B>,
    /// The archive packages each user brought within the hour.
    brought: fetching::Brought,
    /// Held while an archive index is fetched and stored.
    refreshing: tokio::sync::Mutex<()>,
    /// The fetch questions waiting for their answers.
    questions: fetching::Questions,
    /// The state directory (the database, the archive's indexes).
    state_dir: PathBuf,
    /// The catalog file `odfs add`/`odfs rm` manage (in the last catalog dir).
    cli_catalog: Option<PathBuf>,
    /// Command sequences within sessions, for prefetch.
    transitions: std::sync::Mutex<crate::policy::predict::Transitions>,
    snapshot: RwLock<Arc<Snapshot>>,
    store: Store,
    /// Executables on the PATH of each local image (by reference), for
    /// `odfs provides` and the command-not-found hint.
    index: dashmap::DashMap<String, Vec<String>>,
    /// (uid, image, cwd) already told their cwd is not on the remote engine.
    remote_notices: std::sync::Mutex<std::collections::HashSet<(u32, String, PathBuf)>>,
    /// Signs the caller into each tool's environment ([`stamps`]).
    stamps: stamps::Stamps,
    /// The daemon's own tasks (loops, prewarms): awaited at shutdown.
    tasks: tokio_util::task::TaskTracker,
    /// The man pages and completions beside the mount.
    docs: docs::Docs,
    /// Per-project version pins, as read so far.
    pins: Arc<pins::Pins>,
    /// The site's proxies and CA bundle, for networked tools.
    outbound: crate::backend::outbound::Outbound,
    /// What `odfs gc` keeps (`[gc]`).
    gc: crate::config::GcSettings,
    /// The images' lines of `odfs status`, as last read (any user may ask:
    /// the engine is asked at most once per [`requests::status::USAGE_FOR`]).
    image_usage: tokio::sync::Mutex<Option<(std::time::Instant, Vec<crate::protocol::ImageUsage>, String)>>,
    /// This daemon's command line, for `odfs restart` (a successor started
    /// with it takes the mount over).
    relaunch: Vec<std::ffi::OsString>,
    /// Where `odfs restart` under systemd asks the serving loop to run the
    /// binary anew in place (set once the loop runs).
    in_place: std::sync::OnceLock<tokio::sync::mpsc::Sender<takeover::Asked>>,
}

impl<B> Daemon<B> {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap().clone()
    }
}
