//! `odfs-launch`: the shim interpreter. Sends the exec request with the
//! caller's fds to the daemon, takes over the agent connection it gets back,
//! forwards signals to the tool and ends exactly as the tool ended.
//!
//! Blocking and tiny: no async runtime, no allocation-heavy setup, because it
//! runs on every single call.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub mod progress;
mod tty;

use crate::protocol::stages::{self, CallStamps};
use crate::protocol::{self, AgentEvent, AgentRequest, ExecRequest, Failure, Request, Response, EXIT_ODFS_ERROR, PROTOCOL_VERSION};
use tty::Bridge;

/// Signals the launcher passes on to the tool instead of acting on them.
const FORWARDED: [i32; 7] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGTSTP];
/// Signals the launcher acts on itself: terminal size, and resuming after a stop.
const HANDLED: [i32; 2] = [libc::SIGWINCH, libc::SIGCONT];

/// Write end of the self-pipe the signal handler writes signal numbers to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; errno is saved and restored.
    unsafe {
        let saved = *libc::__errno_location();
        libc::write(fd, (&b as *const u8).cast(), 1);
        *libc::__errno_location() = saved;
    }
}

/// How the launcher process ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Exit(i32),
    Signal(i32),
}

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(message)
}

/// Entry point: `odfs-launch SOCKET SHIM [ARGS...]` (as the kernel runs a
/// `#!` interpreter). Never returns.
pub fn main(args: Vec<OsString>) -> ! {
    // Stage stamps only when the caller asks for them (see `stages`).
    let trace_to = std::env::var_os(stages::STAGES_ENV);
    let mut stamps = trace_to.as_ref().map(|_| CallStamps { main: stages::now_ns(), ..Default::default() });
    if args.len() < 3 {
        eprintln!("odfs-launch: usage: odfs-launch SOCKET SHIM [ARGS...] (it is run by the shims of an odfs mount)");
        std::process::exit(EXIT_ODFS_ERROR);
    }
    let command = command_name(Path::new(&args[2]));
    let outcome = run(Path::new(&args[1]), &command, &args[3..], &mut stamps);
    let outcome = match outcome {
        Ok(o) => o,
        Err(f) => {
            eprintln!("odfs: {command}: {}", f.message);
            Outcome::Exit(f.exit_code)
        }
    };
    if let (Some(s), Some(path)) = (stamps.as_mut(), &trace_to) {
        s.exit = stages::now_ns();
        s.append_to(path);
    }
    finish(outcome)
}

/// The command is the basename of the shim's real path, so a symlink to a shim
/// (`~/bin/myjq -> /opt/od/bin/jq`) runs `jq`.
pub fn command_name(shim: &Path) -> String {
    let real = std::fs::canonicalize(shim).unwrap_or_else(|_| shim.to_path_buf());
    real.file_name().unwrap_or(real.as_os_str()).to_string_lossy().into_owned()
}

/// Every fd the launcher inherited: the tool gets all of them at the same
/// numbers (`diff <(a) <(b)`, `cat /dev/fd/3 3<file`).
fn inherited_fds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => (0..3).collect(),
    };
    // The directory handle itself was in the listing and is closed by now.
    // SAFETY: F_GETFD only queries the fd table.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    fds.sort_unstable();
    fds.truncate(protocol::MAX_FDS);
    fds
}

/// The environment as the kernel gave it, `KEY=VALUE` byte strings, one
/// copy each (`std::env::vars_os` makes three).
fn environment() -> Vec<Vec<u8>> {
    extern "C" {
        static environ: *const *const libc::c_char;
    }
    let mut out = Vec::new();
    // SAFETY: `environ` is libc's NUL-terminated array of C strings; this
    // process changes its environment nowhere.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            out.push(std::ffi::CStr::from_ptr(*entry).to_bytes().to_vec());
            entry = entry.add(1);
        }
    }
    out
}

fn set_handler(sig: i32, handler: libc::sighandler_t) {
    // SAFETY: installs an async-signal-safe handler (or a default).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Stop the launcher itself, as the shell expects of a job whose tool
/// stopped: by SIGTSTP with its default action, so the shell reports it as
/// stopped and `fg`/`bg` continue it.
fn stop_self() {
    set_handler(libc::SIGTSTP, libc::SIG_DFL);
    // SAFETY: raise(2); execution resumes here on SIGCONT.
    unsafe { libc::raise(libc::SIGTSTP) };
    set_handler(libc::SIGTSTP, on_signal as extern "C" fn(libc::c_int) as usize);
}

fn install_signal_forwarding() -> Result<OwnedFd, Failure> {
    let mut p = [0; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(fail(format!("cannot create a pipe: {}", std::io::Error::last_os_error())));
    }
    SIGNAL_PIPE.store(p[1], Ordering::Relaxed);
    for sig in FORWARDED.into_iter().chain(HANDLED) {
        set_handler(sig, on_signal as extern "C" fn(libc::c_int) as usize);
    }
    // SAFETY: p[0] is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(p[0]) })
}

fn run(socket: &Path, command: &str, args: &[OsString], stamps: &mut Option<CallStamps>) -> Result<Outcome, Failure> {
    let mut fds = inherited_fds();
    // Pty mode when stdin is a terminal, as for an interactive program: the
    // terminal fds are not passed, the tool gets a pty of its own in their
    // place (a real controlling terminal in its container), and every other
    // fd goes straight to the tool. With stdin elsewhere (`jq . < f | less`)
    // even a terminal stderr is passed as it is: the launcher must not put
    // the terminal in raw mode and read keys another program is waiting for.
    let terminals: Vec<i32> =
        if tty::isatty(0) { fds.iter().copied().filter(|&fd| tty::isatty(fd)).collect() } else { Vec::new() };
    fds.retain(|fd| !terminals.contains(fd));
    let term = terminals.first().copied();
    let tty = term.map(|t| tty::request(t, terminals.clone()));
    // Handlers first: a signal that arrives while the daemon starts the
    // container is kept and delivered to the tool once it runs.
    let signals = install_signal_forwarding()?;
    let control = UnixStream::connect(socket).map_err(|e| {
        fail(format!("daemon not reachable at {} ({e}; start it with `odfs mount` or `systemctl start odfs`)", socket.display()))
    })?;
    let env = environment();
    let req = Request::Exec(ExecRequest {
        version: PROTOCOL_VERSION,
        command: command.to_string(),
        args: args.iter().map(|a| a.clone().into_vec()).collect(),
        env,
        fds: fds.clone(),
        tty,
        trace: stamps.is_some(),
    });
    if let Some(s) = stamps.as_mut() {
        s.sent = stages::now_ns();
    }
    if let Err(e) = protocol::send(&control, &req, &fds) {
        // The daemon may have refused this connection before reading it
        // (too many requests of this user, another namespace): its one
        // line is waiting to be read.
        return Err(match protocol::recv::<Response>(&control) {
            Ok(Some((Response::Error(f), _))) => f,
            _ => fail(format!("cannot send the request to the daemon: {e}")),
        });
    }
    // Progress frames come first when the image has to be fetched.
    let mut fetching = progress::Fetching::new(command, tty::isatty(2));
    let answer = loop {
        match protocol::recv::<Response>(&control) {
            Ok(Some((Response::Progress(p), _))) => fetching.show(&p),
            Ok(Some((Response::Notice(text), _))) => eprintln!("odfs: {command}: {text}"),
            other => break other,
        }
    };
    drop(fetching);
    let (agent, bridge, relayed) = match answer {
        Ok(Some((Response::Handoff { relayed, stamps: daemon, .. }, mut got))) if !got.is_empty() => {
            if let Some(s) = stamps.as_mut() {
                s.handoff = stages::now_ns();
                s.daemon = daemon.unwrap_or_default();
            }
            let agent = UnixStream::from(got.remove(0));
            let bridge = match (term, got.pop()) {
                (Some(t), Some(master)) => Some(Bridge::new(t, master)),
                _ => None,
            };
            (agent, bridge, relayed)
        }
        Ok(Some((Response::Error(f), _))) => return Err(f),
        Ok(Some(other)) => return Err(fail(format!("unexpected answer from the daemon: {other:?}"))),
        Ok(None) => return Err(fail("the daemon closed the connection without an answer (see its log)")),
        Err(e) => return Err(fail(format!("bad answer from the daemon: {e}"))),
    };
    drop(control);
    follow(command, &agent, &signals, bridge, relayed, stamps)
    // The bridge, if any, has restored the terminal by now.
}

/// Bridge signals (and, in pty mode, terminal bytes) until the agent reports
/// the tool's end.
fn follow(
    command: &str,
    agent: &UnixStream,
    signals: &OwnedFd,
    mut bridge: Option<Bridge>,
    relayed: bool,
    stamps: &mut Option<CallStamps>,
) -> Result<Outcome, Failure> {
    use std::os::fd::AsFd;
    let mut master_open = bridge.is_some();
    loop {
        let reading_input = bridge.as_ref().is_some_and(|r| r.reading_input());
        let mut pfds = vec![PollFd::new(agent.as_fd(), PollFlags::POLLIN), PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if let Some(r) = &bridge {
            if master_open {
                pfds.push(PollFd::new(r.master.as_fd(), PollFlags::POLLIN));
            }
            if reading_input {
                // SAFETY: the terminal fd stays open for the launcher's lifetime.
                pfds.push(PollFd::new(unsafe { std::os::fd::BorrowedFd::borrow_raw(r.term()) }, PollFlags::POLLIN));
            }
        }
        match poll(&mut pfds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(fail(format!("poll: {e}"))),
        }
        let ready: Vec<bool> = pfds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(pfds);
        if let Some(r) = &bridge {
            let mut k = 2;
            if master_open {
                if ready[k] {
                    master_open = Bridge::pump(r.master.as_raw_fd(), r.term());
                }
                k += 1;
            }
            if reading_input && ready[k] {
                Bridge::pump(r.term(), r.master.as_raw_fd());
            }
        }
        if ready[1] {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a local buffer from our own pipe.
            let n = unsafe { libc::read(signals.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            for &sig in &buf[..n.max(0) as usize] {
                let sig = sig as i32;
                match sig {
                    libc::SIGWINCH => {
                        if let Some(ws) = bridge.as_ref().and_then(|r| r.sync_size()) {
                            // A relayed call's pty is on another machine.
                            if relayed {
                                let _ = protocol::send(agent, &AgentRequest::Resize { rows: ws.ws_row, cols: ws.ws_col }, &[]);
                            }
                        }
                    }
                    libc::SIGCONT => {
                        // Resumed (`fg` or `bg`): take the terminal back if
                        // we are in the foreground now, and resume the tool.
                        if let Some(r) = bridge.as_mut() {
                            r.enter();
                        }
                        let _ = protocol::send(agent, &AgentRequest::Continue, &[]);
                    }
                    // A failed send means the agent is gone; the read below says how.
                    _ => {
                        let _ = protocol::send(agent, &AgentRequest::Signal(sig), &[]);
                    }
                }
            }
        }
        if ready[0] {
            let event = protocol::recv::<AgentEvent>(agent);
            if let Ok(Some((AgentEvent::Stamps(a), _))) = event {
                if let Some(s) = stamps.as_mut() {
                    s.agent = a;
                }
                continue;
            }
            if let Some(s) = stamps.as_mut() {
                s.event = stages::now_ns();
            }
            if let Ok(Some((AgentEvent::Stopped(_), _))) = event {
                if let Some(r) = bridge.as_mut() {
                    r.leave();
                }
                stop_self();
                continue;
            }
            if let Some(r) = &bridge {
                if master_open {
                    r.drain(std::time::Duration::from_secs(2));
                }
            }
            drop(bridge);
            return match event {
                Ok(Some((AgentEvent::Exited(code), _))) => Ok(Outcome::Exit(code)),
                Ok(Some((AgentEvent::Signaled(sig), _))) => Ok(Outcome::Signal(sig)),
                Ok(Some((AgentEvent::Killed { signal, reason }, _))) => {
                    eprintln!("odfs: {command}: {reason}");
                    Ok(Outcome::Signal(signal))
                }
                Ok(Some((AgentEvent::Failed(f), _))) => Err(f),
                Ok(Some((other, _))) => Err(fail(format!("unexpected message from the agent: {other:?}"))),
                Ok(None) | Err(_) if relayed => Err(Failure::with_status(
                    "the odfs daemon relaying this call to the remote engine stopped (restarted?); the tool there was stopped",
                    128 + libc::SIGKILL,
                )),
                Ok(None) | Err(_) => Err(Failure::with_status(
                    "the tool's container stopped while the tool ran (removed or killed?)",
                    128 + libc::SIGKILL,
                )),
            };
        }
    }
}

/// End the launcher the way the tool ended, so `$?` is the tool's: an exit
/// code, or death by the same signal (`128+N` in the shell).
fn finish(outcome: Outcome) -> ! {
    match outcome {
        Outcome::Exit(code) => std::process::exit(code),
        Outcome::Signal(sig) => {
            // SAFETY: plain libc calls to restore defaults and re-raise.
            unsafe {
                // The tool already dumped core where it ran; a core of the
                // launcher would only mislead.
                let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(sig, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(sig);
            }
            // Signals whose default is to ignore or stop: report as a shell would.
            std::process::exit(128 + sig)
        }
    }
}
