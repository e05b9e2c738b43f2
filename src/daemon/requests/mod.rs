//! The admin requests of the control socket, one file per request or tight
//! family, named after it: [`dispatch`](super::dispatch) admits a
//! connection and its one table sends each request to its handler here.

mod add;
pub(super) mod archive;
pub(super) mod cli_catalog;
mod fetch;
mod gc;
mod list;
mod prewarm;
mod provides;
mod remove;
mod restart;
mod scan;
mod stats;
pub(super) mod status;
mod stop;
mod view;

use std::os::unix::net::UnixStream;

use super::call::Caller;
use super::Daemon;
use crate::backend::ContainerBackend;
use crate::protocol::{self, Failure, Response};

/// A handler's answer, or the one line and exit status its request fails
/// with: handlers return early with `?`, and the table sends either.
pub(super) type Answer = Result<Response, Failure>;

fn failed(message: impl Into<String>) -> Failure {
    Failure::with_status(message, 1)
}

/// A request that changes the system (the catalog, containers, images, the
/// daemon itself) is root's alone.
fn require_root(caller: &Caller, what: &str) -> Result<(), Failure> {
    if caller.uid == 0 {
        Ok(())
    } else {
        Err(Failure::new(format!("{what} changes the system and needs root (sudo odfs {what} …)")))
    }
}

impl<B: ContainerBackend> Daemon<B> {
    /// Send an admin answer from the blocking pool.
    pub(super) fn answer(&self, conn: UnixStream, r: Response) {
        tokio::task::spawn_blocking(move || protocol::send(&conn, &r, &[]));
    }
}
