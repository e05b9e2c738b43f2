//! `odfs rm`: unmap a command `odfs add` mapped, from the CLI's catalog file.

use super::{cli_catalog, failed, require_root, Answer};
use crate::backend::ContainerBackend;
use crate::daemon::call::Caller;
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) fn remove(&self, caller: &Caller, command: &str) -> Answer {
        require_root(caller, "rm")?;
        let file = self.cli_file()?;
        let Some(existing) = self.snapshot().get(command) else {
            return Err(failed(format!("{command} is not in the catalog")));
        };
        if !self.cli_defined(&existing.command.origin) {
            return Err(failed(format!("{command} is defined at {} (remove it there; odfs rm removes only what odfs add added)", existing.command.origin)));
        }
        cli_catalog::remove_entry(&file, command)?;
        Ok(Response::Done(format!("{command} removed")))
    }
}
