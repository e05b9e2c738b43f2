//! `odfs scan`: the executables on an image's PATH, scanned afresh into the
//! index the command-not-found hook reads; with `--add`, mapped as commands.

use super::{failed, Answer};
use crate::backend::ContainerBackend;
use crate::catalog::validate_name;
use crate::daemon::call::Caller;
use crate::daemon::Daemon;
use crate::protocol::{Failure, Response};

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) async fn scan(&self, caller: &Caller, reference: &str, add: bool) -> Answer {
        // Root's, as the other admin requests: each scan exports a whole
        // image (disk and time), and it would list what any local image
        // holds, private ones included, to whoever asks.
        if caller.uid != 0 {
            return Err(Failure::new(format!(
                "scan reads any local image, private ones too, and needs root (sudo odfs scan {reference}{})",
                if add { " --add" } else { "" }
            )));
        }
        // Always scanned afresh (the image may have been rebuilt), and the
        // index the command-not-found hook reads is refreshed with it.
        let paths = self.pool.executables(reference).await.map_err(|e| failed(format!("scan {reference}: {e}")))?;
        self.index.insert(reference.to_string(), paths.clone());
        let mut text = paths.join("\n");
        if add {
            let snapshot = self.snapshot();
            let entries: Vec<(String, Option<String>)> = paths
                .iter()
                .filter_map(|p| {
                    let name = p.rsplit('/').next()?.to_string();
                    let free = snapshot.get(&name).is_none_or(|e| self.cli_defined(&e.command.origin));
                    (validate_name(&name).is_ok() && free).then(|| (name, Some(p.clone())))
                })
                .collect();
            self.add_entries(reference, &entries)?;
            text.push_str(&format!(
                "\nadded {} command(s); {} already defined elsewhere were left as they are",
                entries.len(),
                paths.len() - entries.len()
            ));
        }
        Ok(Response::Done(text))
    }
}
