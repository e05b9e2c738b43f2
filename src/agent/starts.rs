//! Tool starts under way: each user's few places, the agent's copies of a
//! caller's fds let go the moment the child has its own, and the watch
//! that kills a child still short of its exec once nobody waits for it.
//!
//! Between its `setresuid` and its `execve` a child belongs to its caller,
//! who can stop it (SIGSTOP) or hold it in a `chdir` into a file system that
//! does not answer. The child holds no fd but its caller's from its first
//! instruction on (see `spawn::child`); what stays bounded here is what the
//! agent itself holds for such a start: one thread, one place of that user
//! ([`STARTS_PER_UID`]), and no fd once the clone has copied them.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Starts of one user (the uid a tool runs as) under way at once in one
/// container. A start takes well under a millisecond; only starts held
/// before their exec fill these.
pub const STARTS_PER_UID: usize = 16;

/// How long a start waits for a place of its user before it is refused:
/// less than the daemon's own limit for the whole start (30 s), so the
/// caller hears why.
const WAIT_FOR_PLACE: Duration = Duration::from_secs(20);

/// A child that has not reached its exec this long after its clone is
/// killed even if its requester still waits (the daemon gives up at 30 s
/// and hangs up, which kills it sooner).
const DEADLINE: Duration = Duration::from_secs(35);

/// How often the watch looks at the starts under way (only while there are some).
const TICK: Duration = Duration::from_millis(100);

/// One start under way.
pub(super) struct Start {
    uid: u32,
    /// The child's pid, written by the kernel at the clone
    /// (`CLONE_PARENT_SETTID`) or after a fork; 0 before, -1 once reaped.
    pid: AtomicI32,
    /// The agent's copies of the caller's fds, until the child has its own.
    fds: Mutex<Vec<OwnedFd>>,
    /// The requester's connection and the launcher's channel: when either
    /// hangs up, nobody waits for this start any more. Valid while the
    /// start is registered (their owner unregisters it before it drops them).
    watch: Vec<RawFd>,
    since: Instant,
    killed: AtomicBool,
}

impl Start {
    /// The caller's fds as the agent holds them, for the child to copy.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.lock().unwrap().iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Where the kernel writes the child's pid.
    pub fn pid_slot(&self) -> *mut libc::pid_t {
        self.pid.as_ptr()
    }

    /// The child exists (forked): note its pid.
    pub fn forked(&self, pid: i32) {
        let _ = self.pid.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst);
        self.release_fds();
    }

    /// The child has its own copies: the agent's go now.
    pub fn release_fds(&self) {
        drop(std::mem::take(&mut *self.fds.lock().unwrap()));
    }

    /// Whether the watch killed the child before its exec.
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Whether the requester or the launcher hung up.
    fn abandoned(&self) -> bool {
        let mut polls: Vec<libc::pollfd> = self.watch.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 }).collect();
        // SAFETY: the pollfds are ours; no wait.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
        n > 0 && polls.iter().any(|p| p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0)
    }
}

#[derive(Default)]
struct Inner {
    per_uid: HashMap<u32, usize>,
    under_way: Vec<Arc<Start>>,
}

/// The starts under way in this container.
#[derive(Default)]
pub(super) struct Starts {
    inner: Mutex<Inner>,
    /// A place came free, or a start was registered (wakes the watch).
    changed: Condvar,
}

/// Why a start got no place.
pub(super) enum NoPlace {
    /// Nobody waits for it any more.
    Abandoned,
    /// The user's places stayed taken.
    Full,
}

impl Starts {
    /// A place for a start as `uid` with the caller's `fds`, waiting while
    /// that user's places are taken, for as long as `watch` (the requester's
    /// connection, the launcher's channel) stays connected.
    pub fn enter(&self, uid: u32, fds: Vec<OwnedFd>, watch: Vec<RawFd>) -> Result<Arc<Start>, NoPlace> {
        let start = Arc::new(Start { uid, pid: AtomicI32::new(0), fds: Mutex::new(fds), watch, since: Instant::now(), killed: AtomicBool::new(false) });
        let mut inner = self.inner.lock().unwrap();
        let waited = Instant::now();
        while inner.per_uid.get(&uid).copied().unwrap_or(0) >= STARTS_PER_UID {
            if start.abandoned() {
                return Err(NoPlace::Abandoned);
            }
            if waited.elapsed() >= WAIT_FOR_PLACE {
                return Err(NoPlace::Full);
            }
            inner = self.changed.wait_timeout(inner, TICK).unwrap().0;
        }
        *inner.per_uid.entry(uid).or_default() += 1;
        inner.under_way.push(start.clone());
        self.changed.notify_all();
        Ok(start)
    }

    /// The start is over (the child ran its exec, or ended): its place is free.
    pub fn leave(&self, start: &Arc<Start>) {
        start.release_fds();
        let mut inner = self.inner.lock().unwrap();
        inner.under_way.retain(|s| !Arc::ptr_eq(s, start));
        if let Some(n) = inner.per_uid.get_mut(&start.uid) {
            *n -= 1;
            if *n == 0 {
                inner.per_uid.remove(&start.uid);
            }
        }
        self.changed.notify_all();
    }

    /// The reaper took `pid`: a start still registered with it must not
    /// signal that number again (it may be reused).
    pub fn reaped(&self, pid: i32) {
        let inner = self.inner.lock().unwrap();
        for s in inner.under_way.iter().filter(|s| s.pid.load(Ordering::SeqCst) == pid) {
            s.pid.store(-1, Ordering::SeqCst);
        }
    }

    /// The watch, on a thread of its own: the agent's copies of the fds of
    /// every cloned child go, and a child nobody waits for any more, or
    /// past [`DEADLINE`], is killed with everything it started. Sleeps
    /// while no start is under way.
    pub fn watch(&self) {
        let mut inner = self.inner.lock().unwrap();
        loop {
            if inner.under_way.is_empty() {
                inner = self.changed.wait(inner).unwrap();
                continue;
            }
            for s in &inner.under_way {
                let pid = s.pid.load(Ordering::SeqCst);
                if pid == 0 {
                    continue;
                }
                s.release_fds();
                if pid > 0 && !s.killed() && (s.since.elapsed() >= DEADLINE || s.abandoned()) {
                    s.killed.store(true, Ordering::SeqCst);
                    // The child, and in pty mode the tool its session holder
                    // forked (same session). A pid the reaper took is -1
                    // here (`reaped`): never another process's.
                    super::inflight::kill_session(pid, false);
                    // SAFETY: plain kill(2) of our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            inner = self.changed.wait_timeout(inner, TICK).unwrap().0;
        }
    }
}
