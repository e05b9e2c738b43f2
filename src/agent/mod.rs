//! `odfs-agent`: the first process of every backing container (PID 1, or a
//! child subreaper in the host's pid namespace). Accepts spawn requests on a
//! unix socket, starts tools as the caller with the caller's fds, reaps every
//! child, and reports each tool's end to whoever holds the connection.
//!
//! Runs in any linux/amd64 image, `FROM scratch` included: the binary is
//! static and touches nothing in the image except `/etc/passwd` and
//! `/etc/group` (to make the caller known there).

mod cgroup;
#[cfg(test)]
pub mod fake;
mod identity;
mod inflight;
pub mod relay;
mod spawn;
mod starts;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::protocol::{self, AgentEvent, AgentRequest, SpawnRequest, PROTOCOL_VERSION};

/// Agent settings, from its command line.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub socket: PathBuf,
    /// Accept peers inside the agent's own pid namespace: on remote engines,
    /// where the relay (`odfs-agent relay`, run through the engine's exec
    /// API) is such a peer and the token alone guards requests, and for
    /// running the agent outside a container in tests. Locally it would let
    /// a root tool that learned the token ask the agent to start processes.
    pub allow_local_peers: bool,
    /// The secret every request must carry (from `ODFS_AGENT_TOKEN`, which
    /// the daemon sets per container); `None` accepts any (tests only).
    pub token: Option<String>,
    /// Appended to the image's PATH in every tool's environment (the
    /// mount's directory, so tools can run other catalog tools).
    pub path_tail: Option<Vec<u8>>,
}

pub use crate::protocol::TOKEN_ENV;

/// How a child changed, from `waitpid`. Not nix's `WaitStatus`: that one
/// cannot represent a death by a real-time signal (34–64), and a child
/// reaped into an error would be lost with its caller waiting forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Exited(i32, i32),
    Signaled(i32, i32),
    Stopped(i32, i32),
}

impl Wait {
    fn pid(self) -> i32 {
        match self {
            Wait::Exited(p, _) | Wait::Signaled(p, _) | Wait::Stopped(p, _) => p,
        }
    }

    /// The status a shell would show for an end (128 + signal for a death).
    fn status(self) -> i32 {
        match self {
            Wait::Exited(_, c) => c,
            Wait::Signaled(_, sig) => 128 + sig,
            Wait::Stopped(..) => -1,
        }
    }
}

/// Wait for any child, stops included; `None` when there is none.
fn wait_any() -> Option<Wait> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our local.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WUNTRACED) };
    if pid < 0 {
        return None;
    }
    Some(if libc::WIFEXITED(status) {
        Wait::Exited(pid, libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Wait::Signaled(pid, libc::WTERMSIG(status))
    } else {
        Wait::Stopped(pid, libc::WSTOPSIG(status))
    })
}

/// Tools in flight. Not held while a child starts (a child that blocks
/// before its exec must hold up no one but its own caller): what the reaper
/// sees of a pid not registered yet waits in `early` while a start is
/// under way, and the start takes it when it registers its child.
#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, (Arc<inflight::InFlight>, Instant)>,
    tally: crate::protocol::tally::Tally,
    /// Starts under way.
    starting: u32,
    /// Statuses of unknown pids seen while a start was under way (orphans
    /// reaped meanwhile too; dropped once no start is under way).
    early: HashMap<i32, Vec<(Wait, u64)>>,
}

impl Registry {
    /// Register a started child (`pid` > 0) with its flight; returns what the
    /// reaper saw of it already, which the caller hands to the flight.
    fn started(&mut self, pid: i32, flight: Arc<inflight::InFlight>) -> Vec<(Wait, u64)> {
        self.starting -= 1;
        let seen = if pid > 0 { self.early.remove(&pid).unwrap_or_default() } else { Vec::new() };
        if self.starting == 0 {
            self.early.clear();
        }
        if pid > 0 {
            self.tally.begin();
            match seen.iter().find(|(w, _)| !matches!(w, Wait::Stopped(..))) {
                Some((end, _)) => self.tally.end(pid, end.status(), 0),
                None => {
                    self.waiting.insert(pid, (flight, Instant::now()));
                }
            }
        }
        seen
    }
}

struct Agent {
    registry: Mutex<Registry>,
    children: Condvar,
    /// The image's PATH: tools are looked up on it and get it as their PATH.
    path: Vec<u8>,
    path_tail: Option<Vec<u8>>,
    allow_local_peers: bool,
    token: Option<String>,
    inherited: spawn::Inherited,
    /// Starts under way: each user's places, and the watch over them.
    starts: starts::Starts,
    /// The image's `tty` group, which owns the ptys of tools.
    tty_group: Option<u32>,
}

/// Run the agent until SIGTERM/SIGINT; never returns.
pub fn run(config: AgentConfig) -> ! {
    // Block the termination signals in every thread; one thread takes them
    // with sigwait. PID 1 gets no default action for them anyway.
    let mut term = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        term.add(s);
    }
    term.thread_block().expect("block termination signals");

    let path = std::env::var_os("PATH")
        .map(|p| p.into_encoded_bytes())
        .unwrap_or_else(|| protocol::DEFAULT_PATH.as_bytes().to_vec());
    let agent = Arc::new(Agent {
        registry: Mutex::new(Registry::default()),
        children: Condvar::new(),
        path,
        path_tail: config.path_tail,
        allow_local_peers: config.allow_local_peers,
        token: config.token,
        inherited: spawn::Inherited::read(),
        starts: starts::Starts::default(),
        tty_group: tty_group(&std::fs::read_to_string("/etc/group").unwrap_or_default()),
    });

    // In the host's pid namespace the agent is not PID 1: orphans of the
    // tools come to it all the same, to be reaped.
    // SAFETY: plain prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // Not dumpable, ever: a spawn's child shares the agent's memory until
    // its exec, already as its caller's uid, and may be held there (a cwd
    // that never answers). Were the agent dumpable then, a process of that
    // uid could read or write it (/proc/PID/mem, process_vm_readv) and take
    // its token and other callers' channels.
    // SAFETY: plain prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };

    std::thread::spawn(move || {
        let sig = term.wait().unwrap_or(Signal::SIGTERM);
        eprintln!("odfs-agent: {sig}: stopping every tool");
        // Only the container's processes: in the host's pid namespace
        // kill(-1) would reach the whole machine.
        let me = std::process::id() as i32;
        for pid in cgroup::container_pids().into_iter().filter(|&p| p != me) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: plain syscall.
        unsafe { libc::_exit(0) };
    });

    let reaper = agent.clone();
    std::thread::spawn(move || reaper.reap());
    let watch = agent.clone();
    std::thread::spawn(move || watch.starts.watch());

    let _ = std::fs::remove_file(&config.socket);
    let listener = match UnixListener::bind(&config.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("odfs-agent: cannot listen on {}: {e}", config.socket.display());
            std::process::exit(1);
        }
    };
    let _ = std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o600));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => serve_on_a_thread(&agent, stream),
            Err(e) => eprintln!("odfs-agent: accept: {e}"),
        }
    }
    std::process::exit(1)
}

/// Run `f` on a thread of its own, or give it back where no thread can be
/// had: in a container at its memory limit a thread's stacks are charged
/// to the container, and `std::thread::spawn` would panic, which would end
/// PID 1, and with it the container and every tool in it.
pub(crate) fn on_a_thread<F: FnOnce() + Send + 'static>(f: F) -> Result<(), F> {
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    let on_thread = shared.clone();
    let spawned = std::thread::Builder::new().spawn(move || {
        if let Some(f) = on_thread.lock().unwrap().take() {
            f();
        }
    });
    if spawned.is_ok() {
        return Ok(());
    }
    // Not spawned, so not run: it is still here.
    let back = shared.lock().unwrap().take();
    back.map_or(Ok(()), Err)
}

/// Serve one connection on a thread of its own, asking for one again for
/// a while (memory comes back as the OOM killer ends a tool), and only
/// then closing the connection.
fn serve_on_a_thread(agent: &std::sync::Arc<Agent>, stream: std::os::unix::net::UnixStream) {
    let agent = agent.clone();
    let mut serve: Box<dyn FnOnce() + Send> = Box::new(move || agent.serve(stream));
    for _ in 0..50 {
        match on_a_thread(serve) {
            Ok(()) => return,
            Err(back) => serve = back,
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!("odfs-agent: cannot serve a connection: no thread can be had");
}

impl Agent {
    /// Reap every child (PID 1 inherits orphans too) and route tool ends to
    /// their connections.
    fn reap(&self) {
        loop {
            // WUNTRACED: a stopped tool (Ctrl-Z) is reported so the launcher
            // can stop too, as a native job would.
            match wait_any() {
                Some(status) => {
                    let at = protocol::stages::now_ns();
                    let pid = status.pid();
                    let flight = {
                        let mut reg = self.registry.lock().unwrap();
                        let flight = if let Wait::Stopped(..) = status {
                            reg.waiting.get(&pid).cloned()
                        } else {
                            self.starts.reaped(pid);
                            reg.waiting.remove(&pid).inspect(|(_, started)| {
                                reg.tally.end(pid, status.status(), started.elapsed().as_millis() as u64);
                            })
                        };
                        if flight.is_none() && reg.starting > 0 {
                            reg.early.entry(pid).or_default().push((status, at));
                        }
                        flight
                    };
                    if let Some((f, _)) = flight {
                        f.waited(status, at);
                    }
                }
                None => {
                    // No child yet (ECHILD): sleep until a spawn says so.
                    let reg = self.registry.lock().unwrap();
                    let _ = self.children.wait_timeout(reg, Duration::from_millis(500)).unwrap();
                }
            }
        }
    }

    fn serve(&self, stream: UnixStream) {
        if !self.allow_local_peers && !peer_outside(&stream) {
            eprintln!("odfs-agent: refused a connection from inside the container");
            return;
        }
        let first = match protocol::recv::<AgentRequest>(&stream) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                eprintln!("odfs-agent: bad request: {e}");
                return;
            }
        };
        // A spawn's log lines name its call, as the daemon's log does.
        let (token, call) = match &first.0 {
            AgentRequest::Status { token } => (Some(token.as_str()), None),
            AgentRequest::Spawn(req) => (Some(req.token.as_str()), Some(req.call_id)),
            _ => (None, None),
        };
        if !self.token.as_deref().is_none_or(|ours| token.is_some_and(|t| same_secret(t, ours))) {
            match call {
                // Unverified: the id is whatever the request claims.
                Some(call) => eprintln!("odfs-agent: refused a request without this container's token (it claims call={call})"),
                None => eprintln!("odfs-agent: refused a request without this container's token"),
            }
            return;
        }
        match first {
            (AgentRequest::Status { .. }, _) => {
                let status = self.registry.lock().unwrap().tally.report(cgroup::memory());
                let _ = protocol::send(&stream, &status, &[]);
            }
            (AgentRequest::Spawn(req), fds) => self.run_tool(stream, *req, fds),
            (AgentRequest::Signal(_) | AgentRequest::Continue | AgentRequest::Resize { .. }, _) => {
                eprintln!("odfs-agent: signal before spawn ignored");
            }
        }
    }

    /// Start the tool, then follow its launcher: forward its signals, and
    /// end what the tool started if the connection drops (the launcher was
    /// killed). The reaper reports the tool's end ([`inflight`]). With the
    /// launcher's own channel, the launcher is followed there and the
    /// requester (the daemon) hears only that the tool started.
    fn run_tool(&self, stream: UnixStream, req: SpawnRequest, mut fds: Vec<std::os::fd::OwnedFd>) {
        let received = protocol::stages::now_ns();
        let refuse = |msg: String| {
            let _ = protocol::send(&stream, &AgentEvent::Failed(crate::protocol::Failure::new(msg)), &[]);
        };
        if req.version != PROTOCOL_VERSION {
            return refuse(format!("agent speaks protocol {PROTOCOL_VERSION}, request has {}", req.version));
        }
        identity::ensure_known(&req.identity, req.call_id);
        let channel = match req.passed.channel {
            false => None,
            true => match fds.pop() {
                Some(fd) if fds.len() == req.passed.fds.len() => {
                    let channel = UnixStream::from(fd);
                    // The caller holds the other end, and may hold a copy
                    // of this one and fill it: no send here waits long
                    // (one that cannot go counts as a launcher gone).
                    if let Err(e) = channel.set_write_timeout(Some(std::time::Duration::from_secs(5))) {
                        return refuse(format!("cannot use the call's channel: {e}"));
                    }
                    Some(channel)
                }
                _ => return refuse(format!("{} fds announced with a channel, {} received", req.passed.fds.len(), fds.len() + 1)),
            },
        };
        let follows = channel.as_ref().unwrap_or(&stream);
        let flight = match inflight::InFlight::new(follows, req.passed.tty.is_some(), req.passed.trace, received) {
            Ok(f) => Arc::new(f),
            Err(e) => return refuse(format!("cannot follow the tool: {e}")),
        };
        // A place of the tool's user, or a refusal; the agent's copies of
        // the caller's fds go into it, to be let go once the child has its own.
        let watch: Vec<i32> = [Some(stream.as_raw_fd()), channel.as_ref().map(|c| c.as_raw_fd())].into_iter().flatten().collect();
        let start = match self.starts.enter(req.identity.uid, fds, watch) {
            Ok(start) => start,
            Err(starts::NoPlace::Abandoned) => return,
            Err(starts::NoPlace::Full) => {
                return refuse(format!(
                    "{} tools of uid {} are already starting in this container, held before their exec (a working directory that does not answer, or stopped); end them or try again",
                    starts::STARTS_PER_UID,
                    req.identity.uid
                ))
            }
        };
        let spawned = spawn::spawn(self, &req, &start, flight.clone());
        self.starts.leave(&start);
        let spawn::Spawned { pid, master, forked, exec } = match spawned {
            Ok(spawned) => spawned,
            Err(failure) => {
                let _ = protocol::send(&stream, &failure, &[]);
                return;
            }
        };
        // The pty master goes to the launcher; the agent keeps no copy, so
        // when the launcher goes away the tool's terminal hangs up.
        let master_fd: Vec<i32> = master.iter().map(|m| m.as_raw_fd()).collect();
        flight.started(pid, forked, exec, &master_fd);
        drop(master);
        if channel.is_some() {
            // After the launcher has its `Started`: the daemon hands off only
            // once this arrives, and a launcher whose daemon dies meanwhile
            // finds the call on its channel.
            let _ = protocol::send(&stream, &AgentEvent::Started { pid }, &[]);
            drop(stream);
        }
        flight.follow(|request| match request {
            AgentRequest::Signal(sig) => {
                // Without a pty the tool leads its own session, an
                // orphaned process group where the kernel discards
                // SIGTSTP and friends: stop it for real instead.
                let sig = match sig {
                    libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU if !flight.pty => libc::SIGSTOP,
                    s => s,
                };
                // The tool we started (in pty mode, its session holder,
                // which passes it on).
                if let Some(t) = flight.tool() {
                    t.signal(sig);
                }
            }
            AgentRequest::Continue => {
                if let Some(t) = flight.tool() {
                    t.signal_group(libc::SIGCONT);
                }
            }
            _ => {}
        });
        flight.hang_up(pid);
    }
}

/// Whether the peer of a connection is outside this container (the daemon
/// on the host), never one of its tools: a root tool that learned the token
/// must not get processes started. Outside our pid namespace a peer shows
/// as pid 0; in the host's, its cgroup is not the container's, and it must
/// still be alive once that was read (its pid was not reused meanwhile).
fn peer_outside(stream: &UnixStream) -> bool {
    let Ok(peer) = protocol::peer::peer(stream.as_raw_fd()) else { return false };
    peer.pid == 0 || (cgroup::in_our_cgroup(peer.pid) == Some(false) && peer.alive())
}

/// The gid of the `tty` group in a group file.
fn tty_group(group: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some("tty")).then(|| f.nth(1)?.parse().ok()).flatten()
    })
}

/// Compare secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Overwrite the value of `name` where the kernel shows the environment
/// (`/proc/PID/environ` reads the original block, which `remove_var` does
/// not touch), so root in the container cannot read the token there.
fn scrub_env(name: &str) {
    extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: at start-up, before any thread exists; `environ` is the
    // NUL-terminated array libc keeps, its strings NUL-terminated and
    // writable (the initial block on the stack).
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = std::ffi::CStr::from_ptr(*entry).to_bytes();
            if text.len() > name.len() && text.starts_with(name.as_bytes()) && text[name.len()] == b'=' {
                std::ptr::write_bytes((*entry).add(name.len() + 1), b'0', text.len() - name.len() - 1);
            }
            entry = entry.add(1);
        }
    }
}

/// What the agent binary was started to do.
#[derive(Debug)]
pub enum Mode {
    /// PID 1 of a container: serve spawn requests.
    Serve(AgentConfig),
    /// One call on a remote engine, relayed over stdin/stdout ([`relay`]).
    Relay { socket: PathBuf },
    /// PID 1 of a container that is only read from the host, through its
    /// root (`/proc/PID/root`): it holds the image's files mounted while
    /// nothing of the image runs, until it is killed. A CRI engine has no
    /// API to read a container's files (see `backend::cri`).
    Hold,
}

/// Set the limits an engine without per-container rlimits could not give
/// (`nofile=SOFT:HARD,nproc=SOFT:HARD`, -1 for none) on the agent itself,
/// so every tool it spawns inherits them. Lowering needs no privilege; a
/// limit above what the agent already has stays where it is.
fn set_rlimits(spec: &str) {
    for (resource, soft, hard) in parse_rlimits(spec) {
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct; setrlimit reads it.
        unsafe {
            if libc::getrlimit(resource, &mut now) != 0 {
                continue;
            }
            let max = hard.min(now.rlim_max);
            let wanted = libc::rlimit { rlim_cur: soft.min(max), rlim_max: max };
            libc::setrlimit(resource, &wanted);
        }
    }
}

/// The limits of [`crate::protocol::RLIMITS_ENV`]'s value; unknown names
/// and malformed parts are left out.
fn parse_rlimits(spec: &str) -> Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)> {
    let value = |v: &str| v.parse::<i64>().ok().map(|n| if n < 0 { libc::RLIM_INFINITY } else { n as libc::rlim_t });
    spec.split(',')
        .filter_map(|part| {
            let (name, range) = part.split_once('=')?;
            let (soft, hard) = range.split_once(':')?;
            let resource = match name {
                "nofile" => libc::RLIMIT_NOFILE,
                "nproc" => libc::RLIMIT_NPROC,
                _ => return None,
            };
            Some((resource, value(soft)?, value(hard)?))
        })
        .collect()
}

/// Sleep until killed: as PID 1, no signal but SIGKILL ends it, which is
/// how the engine removes the container.
pub fn hold() -> ! {
    loop {
        // SAFETY: pause only waits for a signal.
        unsafe { libc::pause() };
    }
}

/// Parse the agent's command line: `odfs-agent [relay] --socket PATH
/// [--allow-local-peers] [--path-tail DIR]`; the token comes from the environment, which is
/// then cleared of it.
pub fn parse_args(args: impl Iterator<Item = String>) -> Result<Mode, String> {
    let mut socket = None;
    let mut path_tail = None;
    let mut allow_local_peers = false;
    let mut relay = false;
    let mut args = args.skip(1).peekable();
    if args.peek().map(String::as_str) == Some("hold") {
        return Ok(Mode::Hold);
    }
    if args.peek().map(String::as_str) == Some("relay") {
        relay = true;
        args.next();
    }
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from),
            "--path-tail" if !relay => path_tail = args.next().map(String::into_bytes),
            "--allow-local-peers" if !relay => allow_local_peers = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let socket = socket.ok_or("missing --socket PATH")?;
    if relay {
        return Ok(Mode::Relay { socket });
    }
    if let Ok(limits) = std::env::var(crate::protocol::RLIMITS_ENV) {
        set_rlimits(&limits);
        // SAFETY: called at start-up, before any thread exists.
        unsafe { std::env::remove_var(crate::protocol::RLIMITS_ENV) };
    }
    let token = std::env::var(TOKEN_ENV).ok();
    scrub_env(TOKEN_ENV);
    // SAFETY: called at start-up, before any thread exists.
    unsafe { std::env::remove_var(TOKEN_ENV) };
    Ok(Mode::Serve(AgentConfig { socket, allow_local_peers, token, path_tail }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rlimits_are_read_by_name_with_minus_one_for_none() {
        let got = super::parse_rlimits("nofile=1024:4096,nproc=-1:-1,core=0:0,bad,nofile=x:1");
        assert_eq!(got, vec![(libc::RLIMIT_NOFILE, 1024, 4096), (libc::RLIMIT_NPROC, libc::RLIM_INFINITY, libc::RLIM_INFINITY)]);
    }
}
