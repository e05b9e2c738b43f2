//! A tool in flight: what its connection's thread and the reaper share. The
//! reaper reports the tool's stops and end on the launcher's connection
//! itself, the moment `waitpid` returns them (no hop through another
//! thread), but never before the connection's thread has sent `Started`,
//! and never waiting: what the socket has no room for (a launcher that does
//! not read) waits in an outbox that the connection's thread sends, so one
//! caller cannot hold the reaper that serves every tool of the container.
//! The connection's thread reads the launcher's signals and, if the
//! launcher goes away, ends what the tool started.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{cgroup, Wait};
use crate::protocol::{self, stages::AgentStamps, AgentEvent, AgentRequest};

/// Where a tool's report stands.
enum Phase {
    /// `Started` is not sent yet: what the reaper saw waits here.
    Starting(Vec<(Wait, u64)>),
    /// Started: the reaper reports as it reaps.
    Running,
    /// The end is reported (or nobody is left to hear it).
    Over,
}

/// Reports the launcher's socket had no room for, in order. Bounded: a
/// stop the launcher has not read yet is not queued twice, and a tool ends
/// once.
#[derive(Default)]
struct Outbox {
    /// Frames (or what is left of one), each with whether it is a whole stop.
    frames: VecDeque<(Vec<u8>, bool)>,
    /// The connection's thread is sending frames taken from here.
    draining: bool,
    /// The end is among them: shut the connection once all is sent.
    close: bool,
}

pub(super) struct InFlight {
    /// A clone of the launcher's connection, for the reaper's reports.
    conn: UnixStream,
    outbox: Mutex<Outbox>,
    /// Wakes the connection's thread when the outbox holds frames (eventfd).
    wake: OwnedFd,
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
        // SAFETY: eventfd returns a new fd, owned at once.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd of ours.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        Ok(InFlight {
            conn: conn.try_clone()?,
            outbox: Mutex::new(Outbox::default()),
            wake,
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
    pub fn started(self: &Arc<Self>, pid: i32, forked: u64, exec: u64, master: &[i32]) {
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

    /// What the reaper saw of the tool (`at`: when). Never waits.
    pub fn waited(self: &Arc<Self>, wait: Wait, at: u64) {
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
                self.deliver(&AgentEvent::Stopped(sig), false);
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
                let me = self.clone();
                let report = move || {
                    me.report_end(match cgroup::oom_reason(me.oom_before) {
                        Some(reason) => AgentEvent::Killed { signal: libc::SIGKILL, reason },
                        None => AgentEvent::Signaled(libc::SIGKILL),
                    })
                };
                // Where no thread can be had, the reaper finds out itself.
                if let Err(report) = super::on_a_thread(report) {
                    report();
                }
            }
            Wait::Signaled(_, sig) => self.report_end(AgentEvent::Signaled(sig)),
            Wait::Exited(_, code) => self.report_end(AgentEvent::Exited(code)),
            Wait::Stopped(..) => unreachable!("handled above"),
        }
    }

    /// Report the end (a traced call's stamps first), then shut the
    /// connection, which also ends its thread's read.
    fn report_end(&self, event: AgentEvent) {
        if !self.hung_up.load(Ordering::SeqCst) {
            if let Some(s) = &self.stamps {
                let stamps = *s.lock().unwrap();
                self.deliver(&AgentEvent::Stamps(stamps), false);
            }
        }
        self.deliver(&event, true);
    }

    /// Send a report now if the socket has room, else leave it in the
    /// outbox for the connection's thread; `last`: shut the connection after it.
    fn deliver(&self, event: &AgentEvent, last: bool) {
        let shut = || {
            let _ = nix::sys::socket::shutdown(self.conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        };
        let hung_up = self.hung_up.load(Ordering::SeqCst);
        let frame = match protocol::frame(event) {
            Ok(f) if !hung_up => f,
            _ => return if last { shut() },
        };
        let stop = matches!(event, AgentEvent::Stopped(_));
        let mut out = self.outbox.lock().unwrap();
        let mut rest = &frame[..];
        if out.frames.is_empty() && !out.draining {
            // SAFETY: sends from a buffer we own; never waits.
            let n = unsafe { libc::send(self.conn.as_raw_fd(), rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n == rest.len() as isize {
                return if last { shut() };
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    // The launcher is gone: its thread sees the hang-up.
                    return if last { shut() };
                }
            } else {
                rest = &rest[n as usize..];
            }
        } else if stop && out.frames.back().is_some_and(|&(_, whole_stop)| whole_stop) {
            // The launcher has not read the last stop yet: one says it.
            return;
        }
        out.frames.push_back((rest.to_vec(), stop && rest.len() == frame.len()));
        out.close |= last;
        drop(out);
        // SAFETY: writes 8 bytes to our eventfd (it never blocks: EFD_NONBLOCK).
        unsafe { libc::write(self.wake.as_raw_fd(), (&1u64 as *const u64).cast(), 8) };
    }

    /// Send what waits in the outbox; on the connection's thread, which may
    /// wait for the launcher to read.
    fn drain(&self) {
        let mut wakes = 0u64;
        // SAFETY: reads the eventfd's counter into a local.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut wakes as *mut u64).cast(), 8) };
        loop {
            let frames = {
                let mut out = self.outbox.lock().unwrap();
                if out.frames.is_empty() {
                    out.draining = false;
                    if out.close {
                        let _ = nix::sys::socket::shutdown(self.conn.as_raw_fd(), nix::sys::socket::Shutdown::Both);
                    }
                    return;
                }
                out.draining = true;
                std::mem::take(&mut out.frames)
            };
            for (frame, _) in frames {
                // A failure means the launcher is gone: the read says so.
                let _ = (&self.conn).write_all(&frame);
            }
        }
    }

    /// Follow the launcher until its connection ends (the end was reported
    /// and the connection shut, or the launcher is gone): its requests go
    /// to `request`, and the outbox is sent whenever it holds frames.
    pub fn follow(&self, mut request: impl FnMut(AgentRequest)) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let mut pfds = [PollFd::new(self.conn.as_fd(), PollFlags::POLLIN), PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
            match poll(&mut pfds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(_) => return,
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            let (launcher, wake) = (ready(&pfds[0]), ready(&pfds[1]));
            if wake {
                self.drain();
            }
            if launcher {
                match protocol::recv::<AgentRequest>(&self.conn) {
                    Ok(Some((r, _))) => request(r),
                    Ok(None) | Err(_) => return,
                }
            }
        }
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
pub(super) fn kill_session(sid: i32, leader_alive: bool) {
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
