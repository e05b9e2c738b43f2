//! `odfs stop`: remove containers now, one command's or every profile's.

use super::{failed, require_root, Answer};
use crate::backend::ContainerBackend;
use crate::daemon::call::{Caller, PoolError};
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn stop(&self, caller: &Caller, command: Option<&str>, force: bool) -> Answer {
        require_root(caller, "stop")?;
        let snapshot = self.snapshot();
        let images: Vec<_> = match command {
            Some(c) => match snapshot.get(c) {
                Some(r) => vec![r.image.clone()],
                None => return Err(failed(format!("{c} is not in the catalog"))),
            },
            // Every profile, also those the catalog no longer names.
            None => self.pool.profiles(),
        };
        let (mut stopped, mut busy) = (Vec::new(), Vec::new());
        for image in images {
            match self.pool.stop(&image, force).await {
                Ok(true) => stopped.push(image.name.clone()),
                Ok(false) => {}
                // Stopping them all, one busy profile leaves the rest to stop.
                Err(e @ PoolError::Busy { .. }) if command.is_none() => busy.push(e.to_string()),
                Err(e) => return Err(failed(e.to_string())),
            }
        }
        let mut text = if stopped.is_empty() { "nothing was running".to_string() } else { format!("stopped: {}", stopped.join(", ")) };
        if busy.is_empty() {
            return Ok(Response::Done(text));
        }
        for b in busy {
            text += &format!("\nleft: {b}");
        }
        Err(failed(text))
    }
}
