//! `odfs ls`: every command of the catalog, with its version, image,
//! program, keep-alive and the state of its container.

use super::Answer;
use crate::backend::ContainerBackend;
use crate::catalog::KeepAlive;
use crate::daemon::Daemon;
use crate::protocol::{CommandInfo, Response};

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) fn list(&self) -> Answer {
        let snapshot = self.snapshot();
        let commands = snapshot
            .commands
            .iter()
            .map(|(name, r)| CommandInfo {
                command: name.clone(),
                version: match snapshot.versions.get(name) {
                    Some(v) => {
                        let others: Vec<&str> = v.all.iter().filter(|x| **x != v.default).map(String::as_str).collect();
                        format!("{} (default; also {})", v.default, others.join(", "))
                    }
                    None => r.image.version.clone().unwrap_or_default(),
                },
                image: r.image.name.clone(),
                reference: r.image.reference.clone(),
                program: r.command.program().to_string(),
                args: r.command.args.clone(),
                network: r.image.network.as_str().to_string(),
                user: r.image.user.as_str().into(),
                keep_alive: match r.image.keep_alive {
                    KeepAlive::Auto => format!("auto ({})", self.pool.policy_for(&r.image)),
                    KeepAlive::Fixed(d) => humantime::format_duration(d).to_string(),
                },
                state: self.pool.shown(&r.image),
                origin: r.command.origin.clone(),
                source: self.outbound.describe(&r.image.reference, r.image.build.as_deref()),
            })
            .collect();
        Ok(Response::Commands(commands))
    }
}
