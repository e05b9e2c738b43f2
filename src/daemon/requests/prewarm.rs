//! `odfs prewarm`: start a command's container ahead of use, with the
//! fetch's progress to the client as a call would get it.

use std::os::unix::net::UnixStream;

use super::{failed, Answer};
use crate::backend::ContainerBackend;
use crate::daemon::call::Caller;
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn prewarm(&self, caller: &Caller, command: &str, client: &UnixStream) -> Answer {
        let Some(entry) = self.snapshot().get(command) else {
            return Err(failed(format!("{command} is not in the catalog")));
        };
        // Starting the container is a use of the image: those its
        // allow_groups leave out may not make it hold its capabilities.
        if let Err(f) = self.authorize(&entry, caller) {
            return Err(failed(format!("prewarm {command}: {}; only members of those groups may start its container", f)));
        }
        match self.with_progress(client, &entry.image, self.pool.warm_up(&entry.image, None)).await {
            Ok(()) => Ok(Response::Done(format!("{command}: container of image {} is {}", entry.image.name, self.pool.shown(&entry.image).as_str()))),
            Err(e) => Err(failed(format!("{command}: {e}"))),
        }
    }
}
