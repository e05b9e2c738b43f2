//! `odfs restart`: a successor with this daemon's command line takes the
//! mount over, run anew in place under systemd, else started beside it.

use std::os::unix::net::UnixStream;

use super::{failed, require_root, Answer};
use crate::backend::ContainerBackend;
use crate::daemon::call::Caller;
use crate::daemon::takeover::Asked;
use crate::daemon::{systemd, Daemon};
use crate::protocol::{Failure, Response};

impl<B: ContainerBackend> Daemon<B> {
    /// Takes `conn`: run anew in place, the successor is the one that
    /// answers on it.
    pub(in crate::daemon) async fn restart(&self, caller: &Caller, conn: UnixStream) {
        match self.in_place.get() {
            // Under systemd the unit's main process must stay its own:
            // the binary runs anew in it, and answers once it serves.
            Some(tx) if systemd::managed() && caller.uid == 0 => {
                if let Err(e) = tx.send(Asked::InPlace(conn)).await {
                    if let Asked::InPlace(conn) = e.0 {
                        self.answer(conn, Response::Error(Failure::new("restart: the daemon is stopping")));
                    }
                }
            }
            _ => self.answer(conn, self.start_successor(caller).unwrap_or_else(Response::Error)),
        }
    }

    /// Start a successor with this daemon's command line (the binary at its
    /// path now, so an upgrade takes effect), detached from this process; it
    /// takes the mount over through the takeover socket.
    fn start_successor(&self, caller: &Caller) -> Answer {
        use std::os::unix::process::CommandExt;
        require_root(caller, "restart")?;
        let Some((exe, args)) = self.relaunch.split_first() else { return Err(failed("this daemon's command line is unknown")) };
        let mut cmd = std::process::Command::new(exe);
        cmd.args(args).stdin(std::process::Stdio::null()).process_group(0);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                // Reaped by a thread of its own: it outlives this daemon.
                std::thread::spawn(move || drop(child.wait_with_output()));
                Ok(Response::Done(format!("pid {pid} takes the mount over from pid {}", std::process::id())))
            }
            Err(e) => Err(failed(format!("cannot start {}: {e}", exe.to_string_lossy()))),
        }
    }
}
