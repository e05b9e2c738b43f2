//! `odfs gc`: root's run of the daemon's image collection
//! ([`collect`](crate::daemon::Daemon::collect), in `images.rs`, which its
//! own hourly runs share), with this run's limits.

use super::{failed, require_root, Answer};
use crate::backend::ContainerBackend;
use crate::daemon::call::Caller;
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn gc(&self, caller: &Caller, dry_run: bool, max_age_s: Option<u64>, budget: Option<u64>) -> Answer {
        require_root(caller, "gc")?;
        match self.collect(dry_run, max_age_s, budget).await {
            Ok(text) => Ok(Response::Done(text)),
            Err(e) => Err(failed(format!("gc: {e}"))),
        }
    }
}
