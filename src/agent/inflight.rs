//! A tool in flight: what its connection's thread and the reaper share. The
//! reaper reports the tool's stops and end on the launcher's connection
//! itself, the moment `waitpid` returns them (no hop through another
//! thread), but never before the connection's thread has sent `Started`;
//! the connection's thread reads the launcher's signals and, if the
//! launcher goes away, ends what the tool started.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use super::{cgroup, Wait};
use crate::protocol::{self, stages::AgentStamps, AgentEvent};

/// Where a tool's report stands.
enum Phase {
    /// `Started` is not sent yet: what the reaper saw waits here.
    Starting(Vec<(Wait, u64)>),
    /// Started: the reaper reports as it reaps.
    Running,
    /// The end is reported (or nobody is left to hear it).
    Over,
}

pub(super) struct InFlight {
    /// A clone of the launcher's connection, for the reaper's reports.
    conn: UnixStream,
    /// The tool itself, once it is known.
    tool: OnceLock<Tool>,
    /// In pty mode (a terminal's job control applies).
    pub pty: bool,
    /// The launcher is gone: nobody hears of the tool any more.
    hung_up: AtomicBool,
    phase: Mutex<Phase>,
    /// OOM kills in the container when the tool started.
    oom_before: Option<u64>,
    /// A traced call's stamps so far (see [`crate::protocol::stages`]).
    stamps: Option<Mutex<AgentStamps>>,
}

impl InFlight {
    pub fn new(conn: &UnixStream, pty: bool, trace: bool, received: u64) -> std::io::Result<InFlight> {
        Ok(InFlight {
            conn: conn.try_clone()?,
            tool: OnceLock::new(),
            pty,
            hung_up: AtomicBool::new(false),
            phase: Mutex::new(Phase::Starting(Vec::new())),
            oom_before: cgroup::oom_kills(),
            stamps: trace.then(|| Mutex::new(AgentStamps { received, ..Default::default() })),
        })
    }

    pub fn tool(&self) -> Option<&Tool> {
        self.tool.get()
    }

    /// The tool started (`pid`, `forked` and `exec` stamps): send `Started`
    /// with the pty master, then what the reaper saw meanwhile.
    pub fn started(&self, pid: i32, forked: u64, exec: u64, master: &[i32]) {
        let _ = self.tool.set(Tool::open(pid));
        if let Some(s) = &self.stamps {
            let mut s = s.lock().unwrap();
            (s.forked, s.exec) = (forked, exec);
        }
        if protocol::send(&self.conn, &AgentEvent::Started { pid }, master).is_err() {
            self.hung_up.store(true, Ordering::SeqCst);
        }
        let seen = {
            let mut phase = self.phase.lock().unwrap();
            match &mut *phase {
                Phase::Starting(seen) => {
                    let seen = std::mem::take(seen);
                    *phase = Phase::Running;
                    seen
                }
                _ => Vec::new(),
            }
        };
        for (wait, at) in seen {
            self.waited(wait, at);
        }
    }

    /// What the reaper saw of the tool (`at`: when).
    pub fn waited(&self, wait: Wait, at: u64) {
        let mut phase = self.phase.lock().unwrap();
        match &mut *phase {
            Phase::Starting(seen) => return seen.push((wait, at)),
            Phase::Over => return,
            Phase::Running => {}
        }
        if let Wait::Stopped(_, sig) = wait {
            drop(phase);
            if self.hung_up.load(Ordering::SeqCst) {
                // Nobody can continue it: let the kill take effect.
                if let Some(t) = self.tool() {
                    t.signal_group(libc::SIGCONT);
                }
            } else {
                let _ = protocol::send(&self.conn, &AgentEvent::Stopped(sig), &[]);
            }
            return;
        }
        *phase = Phase::Over;
        drop(phase);
        if let Some(s) = &self.stamps {
            s.lock().unwrap().reaped = at;
        }
        match wait {
            // Whether the OOM killer struck may take a few ms to show:
            // found out off the reaper's thread.
            Wait::Signaled(_, libc::SIGKILL) => {
                let (end, before) = (self.end(), self.oom_before);
                std::thread::spawn(move || {
                    end.report(match cgroup::oom_reason(before) {
                        Some(reason) => AgentEvent::Killed { signal: libc::SIGKILL, reason },
                        None => AgentEvent::Signaled(libc::SIGKILL),
                    })
                });
            }
            Wait::Signaled(_, sig) => self.end().report(AgentEvent::Signaled(sig)),
            Wait::Exited(_, code) => self.end().report(AgentEvent::Exited(code)),
            Wait::Stopped(..) => unreachable!("handled above"),
        }
    }

    fn stamps(&self) -> Option<AgentStamps> {
        self.stamps.as_ref().map(|s| *s.lock().unwrap())
    }

    fn end(&self) -> Ended {
        Ended { conn: self.conn.try_clone().ok(), hung_up: self.hung_up.load(Ordering::SeqCst), stamps: self.stamps() }
    }

    /// The launcher hung up (its connection ended): unless the tool's end
    /// was reported, nobody will see its output or status, so end all it
    /// started (its session).
    pub fn hang_up(&self, pid: i32) {
        self.hung_up.store(true, Ordering::SeqCst);
        if !matches!(*self.phase.lock().unwrap(), Phase::Over) {
            kill_session(pid, self.tool().is_some_and(Tool::alive));
        }
    }
}

/// A tool's end, to report on its connection.
struct Ended {
    conn: Option<UnixStream>,
    hung_up: bool,
    stamps: Option<AgentStamps>,
}

impl Ended {
    /// Send the end (a traced call's stamps first), then shut the
    /// connection, which also ends its thread's read.
    fn report(&self, event: AgentEvent) {
        let Some(conn) = &self.conn else { return };
        if !self.hung_up {
            if let Some(s) = self.stamps {
                let _ = protocol::send(conn, &AgentEvent::Stamps(s), &[]);
            }
            let _ = protocol::send(conn, &event, &[]);
        }
        let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// A started tool, held by a pidfd: its pid may be reused once it is
/// reaped, the pidfd never.
pub(super) struct Tool {
    pid: i32,
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Tool {
    fn open(pid: i32) -> Tool {
        Tool { pid, pidfd: protocol::peer::pidfd_open(pid) }
    }

    /// Whether it has not exited yet (a process group it leads is its own
    /// while it lives).
    fn alive(&self) -> bool {
        self.pidfd.as_ref().is_some_and(protocol::peer::running)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(fd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on our own pidfd, no siginfo.
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) };
        }
    }

    /// Signal its process group, while it leads one that is surely its own.
    pub fn signal_group(&self, sig: i32) {
        if self.alive() {
            // SAFETY: plain kill(2) on the group of a live leader.
            unsafe { libc::kill(-self.pid, sig) };
        }
    }
}

/// SIGKILL every process of session `sid` (the tool's session: the tool,
/// its process group, its background jobs), among the container's; its
/// group at once when the tool, its leader, still lives (`leader_alive`).
fn kill_session(sid: i32, leader_alive: bool) {
    if leader_alive {
        // SAFETY: plain kill(2); the session leader's group first, then the rest.
        unsafe { libc::kill(-sid, libc::SIGKILL) };
    }
    for pid in cgroup::container_pids() {
        if protocol::peer::session_of(pid) == Some(sid) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
