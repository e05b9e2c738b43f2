//! `odfs add`: map a command to an image, in the CLI's catalog file.

use super::{failed, require_root, Answer};
use crate::backend::ContainerBackend;
use crate::catalog::{validate_name, validate_path};
use crate::daemon::call::Caller;
use crate::daemon::Daemon;
use crate::protocol::Response;

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) fn add(&self, caller: &Caller, command: &str, reference: &str, path: Option<&str>) -> Answer {
        require_root(caller, "add")?;
        validate_name(command).map_err(|e| failed(format!("add: command {e}")))?;
        if let Some(Err(e)) = path.map(validate_path) {
            return Err(failed(format!("add: --{e}")));
        }
        if let Some(existing) = self.snapshot().get(command) {
            if !self.cli_defined(&existing.command.origin) {
                return Err(failed(format!("{command} is already defined at {} (edit that file instead)", existing.command.origin)));
            }
        }
        let file = self.add_entries(reference, &[(command.to_string(), path.map(String::from))])?;
        Ok(Response::Done(format!("{command} → {reference} (recorded in {})", file.display())))
    }
}
