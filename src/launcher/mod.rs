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

use crate::protocol::{self, AgentEvent, AgentRequest, ExecRequest, Request, Response, EXIT_ODFS_ERROR, PROTOCOL_VERSION};

/// Signals the launcher passes on to the tool instead of acting on them.
const FORWARDED: [i32; 6] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

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

/// An odfs failure (not the tool's): one line on stderr, then this status.
struct Failure {
    message: String,
    code: i32,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure { message: message.into(), code: EXIT_ODFS_ERROR }
}

/// Entry point: `odfs-launch SOCKET SHIM [ARGS...]` (as the kernel runs a
/// `#!` interpreter). Never returns.
pub fn main(args: Vec<OsString>) -> ! {
    if args.len() < 3 {
        eprintln!("odfs-launch: usage: odfs-launch SOCKET SHIM [ARGS...] (it is run by the shims of an odfs mount)");
        std::process::exit(EXIT_ODFS_ERROR);
    }
    let command = command_name(Path::new(&args[2]));
    let outcome = run(Path::new(&args[1]), &command, &args[3..]);
    finish(match outcome {
        Ok(o) => o,
        Err(f) => {
            eprintln!("odfs: {command}: {}", f.message);
            Outcome::Exit(f.code)
        }
    })
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

fn install_signal_forwarding() -> Result<OwnedFd, Failure> {
    let mut p = [0; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(fail(format!("cannot create a pipe: {}", std::io::Error::last_os_error())));
    }
    SIGNAL_PIPE.store(p[1], Ordering::Relaxed);
    for sig in FORWARDED {
        // SAFETY: installs an async-signal-safe handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: p[0] is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(p[0]) })
}

fn run(socket: &Path, command: &str, args: &[OsString]) -> Result<Outcome, Failure> {
    let fds = inherited_fds();
    // Handlers first: a signal that arrives while the daemon starts the
    // container is kept and delivered to the tool once it runs.
    let signals = install_signal_forwarding()?;
    let control = UnixStream::connect(socket).map_err(|e| {
        fail(format!("daemon not reachable at {} ({e}; start it with `odfs mount` or `systemctl start odfs`)", socket.display()))
    })?;
    let env = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            kv
        })
        .collect();
    let req = Request::Exec(ExecRequest {
        version: PROTOCOL_VERSION,
        command: command.to_string(),
        args: args.iter().map(|a| a.clone().into_vec()).collect(),
        env,
        fds: fds.clone(),
    });
    protocol::send(&control, &req, &fds).map_err(|e| fail(format!("cannot send the request to the daemon: {e}")))?;
    let agent = match protocol::recv::<Response>(&control) {
        Ok(Some((Response::Handoff { .. }, mut got))) if got.len() == 1 => UnixStream::from(got.remove(0)),
        Ok(Some((Response::Error { message, exit_code }, _))) => return Err(Failure { message, code: exit_code }),
        Ok(Some(other)) => return Err(fail(format!("unexpected answer from the daemon: {other:?}"))),
        Ok(None) => return Err(fail("the daemon closed the connection without an answer (see its log)")),
        Err(e) => return Err(fail(format!("bad answer from the daemon: {e}"))),
    };
    drop(control);
    follow(&agent, &signals)
}

/// Relay signals to the tool until the agent reports its end.
fn follow(agent: &UnixStream, signals: &OwnedFd) -> Result<Outcome, Failure> {
    use std::os::fd::AsFd;
    loop {
        let mut pfds = [PollFd::new(agent.as_fd(), PollFlags::POLLIN), PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(fail(format!("poll: {e}"))),
        }
        let sig_ready = pfds[1].revents().is_some_and(|r| !r.is_empty());
        let agent_ready = pfds[0].revents().is_some_and(|r| !r.is_empty());
        if sig_ready {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a local buffer from our own pipe.
            let n = unsafe { libc::read(signals.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            for &sig in &buf[..n.max(0) as usize] {
                // A failed send means the agent is gone; the read below says how.
                let _ = protocol::send(agent, &AgentRequest::Signal(sig as i32), &[]);
            }
        }
        if agent_ready {
            return match protocol::recv::<AgentEvent>(agent) {
                Ok(Some((AgentEvent::Exited(code), _))) => Ok(Outcome::Exit(code)),
                Ok(Some((AgentEvent::Signaled(sig), _))) => Ok(Outcome::Signal(sig)),
                Ok(Some((AgentEvent::Failed { message, exit_code }, _))) => Err(Failure { message, code: exit_code }),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => Err(Failure {
                    message: "the tool's container stopped while the tool ran (removed or killed?)".into(),
                    code: 128 + libc::SIGKILL,
                }),
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
