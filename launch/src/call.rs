//! One call: send the exec request with the caller's fds to the daemon,
//! take over the agent connection it gets back, forward signals to the
//! tool and end exactly as the tool ended.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use odfs_wire::progress::{Fetching, Screen};
use odfs_wire::stages::{CallStamps, STAGES_ENV};
use odfs_wire::{AgentEvent, AgentRequest, ExecRequest, Failure, Passed, Request, Response, EXIT_ODFS_ERROR, MAX_FDS, PROTOCOL_VERSION};

use crate::frame;
use crate::sys::{self, Fd, Pollfd, POLLIN};
use crate::tty::{self, Bridge};

const SIGHUP: i32 = 1;
const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGKILL: i32 = 9;
const SIGUSR1: i32 = 10;
const SIGUSR2: i32 = 12;
const SIGPIPE: i32 = 13;
const SIGTERM: i32 = 15;
const SIGCONT: i32 = 18;
const SIGTSTP: i32 = 20;
const SIGTTIN: i32 = 21;
const SIGTTOU: i32 = 22;
const SIGWINCH: i32 = 28;

/// Signals the launcher passes on to the tool instead of acting on them.
const FORWARDED: [i32; 7] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGTSTP];
/// Signals the launcher acts on itself: terminal size, and resuming after a stop.
const HANDLED: [i32; 2] = [SIGWINCH, SIGCONT];

/// Write end of the self-pipe the signal handler writes signal numbers to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
/// Set by a SIGCONT: the launcher was stopped and is continued.
static CONTINUED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: i32) {
    if sig == SIGCONT {
        CONTINUED.store(true, Ordering::Relaxed);
    }
    // A raw write(2): async-signal-safe, and no errno to save.
    let _ = sys::write(SIGNAL_PIPE.load(Ordering::Relaxed), &[sig as u8]);
}

fn catch(sig: i32) {
    sys::set_handler(sig, on_signal as *const () as usize);
}

/// How the launcher process ends.
enum Outcome {
    Exit(i32),
    Signal(i32),
}

fn fail(message: String) -> Failure {
    Failure::new(message)
}

/// Print `odfs: CMD: text` on stderr.
fn say(command: &str, text: &str) {
    sys::write_all(2, format!("odfs: {command}: {text}\n").as_bytes());
}

/// `odfs-launch SOCKET SHIM [ARGS...]`, as the kernel runs a `#!`
/// interpreter, with the environment the kernel gave.
pub fn main(args: &[&[u8]], env: &[&[u8]]) -> ! {
    // Stage stamps only when the caller asks for them (odfs_wire::stages).
    let trace_to = env.iter().find_map(|e| e.strip_prefix(STAGES_ENV.as_bytes())?.strip_prefix(b"="));
    let mut stamps = trace_to.map(|_| CallStamps { main: sys::now_ns(), ..Default::default() });
    if args.len() < 3 {
        sys::write_all(2, b"odfs-launch: usage: odfs-launch SOCKET SHIM [ARGS...] (it is run by the shims of an odfs mount)\n");
        sys::exit(EXIT_ODFS_ERROR);
    }
    let command = command_name(args[2]);
    // A write to a closed stderr must fail, not end the launcher before it
    // ends as the tool did (SIG_IGN is not passed on: the tool runs
    // elsewhere). Internal fds must not take the numbers of closed stdio,
    // or a line for stderr would land in one of them.
    sys::set_handler(SIGPIPE, sys::SIG_IGN);
    let closed: Vec<i32> = (0..3).filter(|&fd| sys::fcntl(fd, sys::F_GETFD).is_err()).collect();
    // Each takes the lowest free number: the closed ones, in order.
    let placeholders: Vec<Fd> = closed.iter().filter_map(|_| sys::open(b"/dev/null\0", sys::O_RDWR | sys::O_CLOEXEC, 0).ok().map(Fd)).collect();
    let outcome = run(args[1], &command, &args[3..], env, &mut stamps, &closed).unwrap_or_else(|f| {
        say(&command, &f.message);
        Outcome::Exit(f.exit_code)
    });
    if let (Some(s), Some(path)) = (stamps.as_mut(), trace_to) {
        s.exit = sys::now_ns();
        append(path, &s.line());
    }
    drop(placeholders);
    finish(outcome)
}

/// A path as a C string.
fn c_path(path: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(path.len() + 1);
    p.extend_from_slice(path);
    p.push(0);
    p
}

/// Append the stamps line to the caller's file (opened with the caller's
/// rights); a failure is the trace's, never the call's.
fn append(path: &[u8], line: &str) {
    if let Ok(fd) = sys::open(&c_path(path), sys::O_WRONLY | sys::O_CREAT | sys::O_APPEND | sys::O_CLOEXEC, 0o666) {
        let fd = Fd(fd);
        sys::write_all(fd.0, format!("{line}\n").as_bytes());
    }
}

/// The command is the name the shim's symlinks lead to, so a symlink to a
/// shim (`~/bin/myjq -> /opt/od/bin/jq`) runs `jq`. Only the last
/// component's links matter for a name: directories' links move the
/// directory, not the name.
fn command_name(shim: &[u8]) -> String {
    let mut path: Vec<u8> = shim.to_vec();
    let mut buf = [0u8; 4096];
    // As many links as the kernel follows (ELOOP past 40).
    for _ in 0..40 {
        let Ok(n) = sys::readlink(&c_path(&path), &mut buf) else { break };
        let target = &buf[..n];
        if target.first() == Some(&b'/') {
            path = target.to_vec();
        } else {
            // Relative to the link's directory.
            let dir = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            path.truncate(dir);
            path.extend_from_slice(target);
        }
    }
    let trimmed = path.strip_suffix(b"/").unwrap_or(&path);
    let name = trimmed.rsplit(|&b| b == b'/').next().unwrap_or(trimmed);
    String::from_utf8_lossy(name).into_owned()
}

/// Every fd the launcher inherited: the tool gets all of them at the same
/// numbers (`diff <(a) <(b)`, `cat /dev/fd/3 3<file`).
fn inherited_fds() -> Vec<i32> {
    let mut fds = Vec::new();
    let Ok(dir) = sys::open(b"/proc/self/fd\0", sys::O_RDONLY | sys::O_DIRECTORY | sys::O_CLOEXEC, 0) else {
        return (0..3).filter(|&fd| sys::fcntl(fd, sys::F_GETFD).is_ok()).collect();
    };
    let dir = Fd(dir);
    let mut buf = [0u8; 8192];
    while let Ok(n) = sys::getdents64(dir.0, &mut buf) {
        if n == 0 {
            break;
        }
        // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name.
        let mut at = 0;
        while at + 19 < n {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen < 19 || at + reclen > n {
                break;
            }
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(fd) = core::str::from_utf8(name).ok().and_then(|s| s.parse::<i32>().ok()) {
                if fd != dir.0 {
                    fds.push(fd);
                }
            }
            at += reclen;
        }
    }
    fds.sort_unstable();
    fds
}

fn install_signal_forwarding() -> Result<Fd, Failure> {
    let [read, write] = sys::pipe2(sys::O_CLOEXEC | sys::O_NONBLOCK).map_err(|e| fail(format!("cannot create a pipe: {e}")))?;
    SIGNAL_PIPE.store(write, Ordering::Relaxed);
    for sig in FORWARDED.into_iter().chain(HANDLED) {
        // `nohup tool`, `tool &` in a script: what the caller ignores
        // never reaches the tool.
        if !sys::ignored(sig) {
            catch(sig);
        }
    }
    Ok(Fd(read))
}

/// Stop the launcher itself, with the signal's default action, as the
/// shell expects of a job whose tool stopped: it reports the job stopped
/// and `fg`/`bg` continue it. SIGTTIN and SIGTTOU as the tool got them,
/// SIGTSTP for any other stop (a pty-mode tool's holder stops by SIGSTOP,
/// whatever stopped the tool). Returns false if the launcher did not stop:
/// the kernel discards these in an orphaned process group (no shell left
/// to continue it), as it would have for the tool run natively, so the
/// tool must go on.
fn stop_self(sig: i32) -> bool {
    let sig = if matches!(sig, SIGTTIN | SIGTTOU) { sig } else { SIGTSTP };
    CONTINUED.store(false, Ordering::Relaxed);
    let old = sys::action(sig);
    sys::set_handler(sig, sys::SIG_DFL);
    // Execution resumes here on SIGCONT, whose handler has run by then.
    sys::kill_self(sig);
    sys::restore(sig, &old);
    CONTINUED.load(Ordering::Relaxed)
}

/// How often a request the daemon dropped unanswered, before any agent took
/// its channel, is sent again (about 30 s in all, enough for a service
/// manager's restart).
const LOST_RETRIES: i32 = 70;

fn connect(socket: &[u8]) -> Result<Fd, sys::Errno> {
    let mut addr = sys::SockaddrUn { family: sys::AF_UNIX as u16, path: [0; 108] };
    if socket.len() >= addr.path.len() {
        return Err(sys::Errno(36));
    }
    addr.path[..socket.len()].copy_from_slice(socket);
    let fd = Fd(sys::socket(sys::AF_UNIX, sys::SOCK_STREAM | sys::SOCK_CLOEXEC)?);
    sys::connect(fd.0, &addr, 2 + socket.len() + 1)?;
    Ok(fd)
}

/// The fetch display on the caller's stderr.
struct Stderr;

impl Screen for Stderr {
    fn now(&self) -> f64 {
        sys::now_ns() as f64 / 1e9
    }
    fn write(&mut self, text: &str) {
        sys::write_all(2, text.as_bytes());
    }
    fn columns(&self) -> Option<usize> {
        tty::winsize(2).map(|w| usize::from(w.cols))
    }
}

fn run(socket: &[u8], command: &str, args: &[&[u8]], env: &[&[u8]], stamps: &mut Option<CallStamps>, closed: &[i32]) -> Result<Outcome, Failure> {
    let (fds, terminals) = passed_fds(closed)?;
    let term = terminals.first().copied();
    let tty = term.map(|t| tty::request(t, terminals.clone()));
    // Handlers first: a signal that arrives while the daemon starts the
    // container is kept and delivered to the tool once it runs.
    let signals = install_signal_forwarding()?;
    let req = Request::Exec(ExecRequest {
        version: PROTOCOL_VERSION,
        command: command.into(),
        args: args.iter().map(|a| a.to_vec()).collect(),
        env: env.iter().map(|e| e.to_vec()).collect(),
        passed: Passed { fds: fds.clone(), tty, trace: stamps.is_some(), channel: true },
    });
    let answer = ask(socket, command, &req, &fds, &signals, stamps)?;
    drop(req);
    if let (Some(s), Some(daemon)) = (stamps.as_mut(), answer.daemon) {
        s.handoff = sys::now_ns();
        s.daemon = daemon.unwrap_or_default();
    }
    let bridge = match (term, answer.master) {
        (Some(t), Some(master)) => Some(Bridge::new(t, terminals.iter().copied().find(|&fd| tty::writable(fd)).unwrap_or(t), master)),
        _ => None,
    };
    follow(command, &answer.agent, &signals, bridge, answer.relayed, stamps)
    // The bridge, if any, has restored the terminal by now.
}

/// The fds the tool gets, and the terminals it gets a pty in place of.
///
/// Pty mode when stdin is a terminal, as for an interactive program: the
/// terminal fds are not passed, the tool gets a pty of its own in their
/// place (a real controlling terminal in its container), and every other
/// fd goes straight to the tool. With stdin elsewhere (`jq . < f | less`)
/// even a terminal stderr is passed as it is: the launcher must not put
/// the terminal in raw mode and read keys another program is waiting for.
fn passed_fds(closed: &[i32]) -> Result<(Vec<i32>, Vec<i32>), Failure> {
    let mut fds = inherited_fds();
    // The placeholders of closed stdio are the launcher's, not the caller's.
    fds.retain(|fd| !closed.contains(fd));
    let terminals: Vec<i32> = if tty::isatty(0) { fds.iter().copied().filter(|&fd| tty::isatty(fd)).collect() } else { Vec::new() };
    fds.retain(|fd| !terminals.contains(fd));
    // The tool gets every fd or does not run: one that could not pass
    // would be a file its caller gave it and it does not have. One place
    // of a call is its channel's; in pty mode the pty takes the terminals'
    // places among the fds the agent sets up.
    let passed = fds.len() + terminals.len();
    if passed > MAX_FDS - 1 {
        return Err(fail(format!(
            "{passed} open files are passed to it, more than the {} a call can pass; close the others, or mark them close-on-exec, before running it",
            MAX_FDS - 1
        )));
    }
    Ok((fds, terminals))
}

/// Where the tool's end will be reported, once a daemon took the request.
struct Answer {
    /// The agent's end: the call's channel, or a relayed call's connection.
    agent: Fd,
    /// The pty master, in pty mode.
    master: Option<Fd>,
    relayed: bool,
    /// The daemon's stamps: they come with a hand-off, not after a lost
    /// request.
    daemon: Option<Option<odfs_wire::stages::DaemonStamps>>,
}

/// What a call's channel said first.
enum Channel {
    /// An agent started the tool (with the pty master in pty mode).
    Started(Option<Fd>),
    /// It hung up without a word: no agent ever held it, nothing ran.
    HungUp,
}

/// One try: the daemon's connection, the call's channel, and what the
/// daemon answered (after any progress and notices).
type Sent = (Fd, Fd, Result<Option<(Response, Vec<Fd>)>, frame::Error>);

/// How long a question waits for its answer (then: no).
const ANSWER_WITHIN_MS: u64 = 120_000;

/// Ask the daemon's `question` on the caller's terminal and read the
/// answer, a line of stdin as the caller types it (the call has not begun:
/// the terminal is as the caller left it). Enter, `y` or `yes` is yes;
/// anything else, end of input or no answer in time is no. Not asked (yes,
/// as a call without a terminal): a job in the background, which does not
/// own the keys, or one whose stderr is not the terminal (the question
/// would not be seen). Ctrl-C ends the launcher by its signal, as it would
/// end the tool; Ctrl-Z stops it, and the question is asked again on `fg`.
fn answer(question: &str, signals: &Fd) -> bool {
    if !tty::isatty(2) || !tty::in_foreground(0) {
        return true;
    }
    sys::write_all(2, question.as_bytes());
    let deadline = sys::now_ns() + ANSWER_WITHIN_MS * 1_000_000;
    let (mut line, mut kept) = (Vec::new(), Vec::new());
    let yes = loop {
        if line.len() >= 256 || line.iter().any(|b| *b == b'\n' || *b == b'\r') {
            let text = core::str::from_utf8(&line).unwrap_or("").trim();
            break text.is_empty() || text.eq_ignore_ascii_case("y") || text.eq_ignore_ascii_case("yes");
        }
        let left = deadline.saturating_sub(sys::now_ns()) / 1_000_000;
        if left == 0 {
            sys::write_all(2, b"\n");
            break false;
        }
        let mut pfds = [Pollfd { fd: 0, events: POLLIN, revents: 0 }, Pollfd { fd: signals.0, events: POLLIN, revents: 0 }];
        if sys::poll(&mut pfds, left.min(i32::MAX as u64) as i32).is_err() {
            continue;
        }
        if pfds[1].revents != 0 {
            let mut buf = [0u8; 16];
            let n = sys::read(signals.0, &mut buf).unwrap_or(0);
            for &sig in &buf[..n] {
                let sig = i32::from(sig);
                if [SIGINT, SIGTERM, SIGHUP, SIGQUIT].contains(&sig) {
                    sys::write_all(2, b"\n");
                    finish(Outcome::Signal(sig));
                } else if [SIGTSTP, SIGTTIN, SIGTTOU].contains(&sig) {
                    if stop_self(sig) {
                        sys::write_all(2, question.as_bytes());
                    }
                } else {
                    kept.push(sig as u8);
                }
            }
        }
        if pfds[0].revents != 0 {
            let mut buf = [0u8; 64];
            match sys::read(0, &mut buf) {
                Ok(0) | Err(_) => break false,
                Ok(n) => line.extend_from_slice(&buf[..n]),
            }
        }
    };
    // Signals for the tool wait for it, as before the question.
    let _ = sys::write(SIGNAL_PIPE.load(Ordering::Relaxed), &kept);
    yes
}

/// Send the request, again to the daemon that comes next when one went
/// away without it, until one answers or the agent reports on the channel.
fn ask(socket: &[u8], command: &str, req: &Request, fds: &[i32], signals: &Fd, stamps: &mut Option<CallStamps>) -> Result<Answer, Failure> {
    // Progress frames come first when the image has to be fetched.
    let mut fetching = Fetching::new(command, tty::isatty(2), Stderr);
    let mut lost = 0;
    loop {
        let (_control, channel, answer) = send(socket, command, req, fds, stamps, &mut fetching, signals, lost < LOST_RETRIES)?;
        // A daemon that went away with the request unanswered (killed, and
        // restarted by its service manager on the same listening socket;
        // killed before it read the request, the connection is reset).
        // If an agent holds the channel, the tool started: follow it there.
        // If not, nothing ran: ask the daemon that comes next.
        use odfs_wire::frame::Error as F;
        if matches!(answer, Ok(None) | Err(frame::Error::Frame(F::Io(_) | F::Truncated))) {
            match started_on(&channel, signals)? {
                Channel::Started(master) => return Ok(Answer { agent: channel, master, relayed: false, daemon: None }),
                Channel::HungUp if lost < LOST_RETRIES => {
                    lost += 1;
                    let _ = sys::poll(&mut [], 20 * lost.min(25));
                    continue;
                }
                Channel::HungUp => {}
            }
        }
        return match answer {
            // A hand-off without an agent connection: the agent reports on
            // the channel, starting with `Started` (and the pty master).
            Ok(Some((Response::Handoff { stamps, .. }, got))) if got.is_empty() => match started_on(&channel, signals)? {
                Channel::Started(master) => Ok(Answer { agent: channel, master, relayed: false, daemon: Some(stamps) }),
                Channel::HungUp => Err(fail("the tool's channel closed before it started (see the daemon's log)".into())),
            },
            Ok(Some((Response::Handoff { relayed, stamps, .. }, mut got))) => {
                let agent = got.remove(0);
                Ok(Answer { agent, master: got.pop(), relayed, daemon: Some(stamps) })
            }
            Ok(Some((Response::Error(f), _))) => Err(f),
            Ok(Some(_)) => Err(fail("unexpected answer from the daemon (is it another version of odfs?)".into())),
            Ok(None) => Err(fail("the daemon closed the connection without an answer (see its log)".into())),
            Err(e) => Err(fail(format!("bad answer from the daemon: {e}"))),
        };
    }
}

/// Send the request once, with the caller's fds and the call's channel,
/// and read the daemon's answer. A request that cannot be sent whole is
/// the caller's one line at once; one the daemon may not have read is
/// `Ok(None)` while `retry` allows another try.
#[allow(clippy::too_many_arguments)]
fn send(
    socket: &[u8],
    command: &str,
    req: &Request,
    fds: &[i32],
    stamps: &mut Option<CallStamps>,
    fetching: &mut Fetching<Stderr>,
    signals: &Fd,
    retry: bool,
) -> Result<Sent, Failure> {
    let control = connect(socket)
        .map_err(|e| fail(format!("daemon not reachable at {} ({e}; start it with `odfs mount` or `systemctl start odfs`)", String::from_utf8_lossy(socket))))?;
    // The call's channel: the agent gets the other end. Ours hangs up
    // with no word on it only if no agent ever held that end, which
    // tells a lost request (safe to send again) from a started tool.
    let [ours, theirs] = sys::socketpair(sys::AF_UNIX, sys::SOCK_STREAM | sys::SOCK_CLOEXEC).map_err(|e| fail(format!("cannot create a socket pair: {e}")))?;
    let (channel, theirs) = (Fd(ours), Fd(theirs));
    if let Some(s) = stamps.as_mut() {
        s.sent = sys::now_ns();
    }
    let mut attached = fds.to_vec();
    attached.push(theirs.0);
    let sent = frame::send(control.0, req, &attached);
    drop(theirs);
    let answer = match sent {
        Ok(()) => loop {
            match frame::recv::<Response>(control.0) {
                Ok(Some((Response::Progress(p), _))) => fetching.show(&p),
                Ok(Some((Response::Notice(text), _))) => say(command, &text),
                Ok(Some((Response::Ask(question), _))) => {
                    let yes = answer(&question, signals);
                    if frame::send(control.0, &Request::Answer { yes }, &[]).is_err() {
                        break Ok(None);
                    }
                }
                other => break other,
            }
        },
        // Too large to be a frame: nothing was sent, and nothing will
        // come back (the daemon waits for a request that never comes).
        // As execve would answer E2BIG: one line, at once.
        Err(frame::Error::Frame(odfs_wire::frame::Error::TooLarge(n))) => {
            return Err(fail(format!(
                "argument list too long: the arguments and environment take {n} bytes, more than the {} a call can pass; pass fewer or shorter ones",
                odfs_wire::MAX_FRAME
            )))
        }
        Err(e @ frame::Error::Encode) => return Err(fail(format!("cannot send the request to the daemon: {e}"))),
        // The daemon may have refused this connection before reading it
        // (too many requests of this user, another namespace): its one
        // line is waiting to be read.
        Err(e) => match frame::recv::<Response>(control.0) {
            Ok(Some((Response::Error(f), _))) => return Err(f),
            _ if retry => Ok(None),
            _ => return Err(fail(format!("cannot send the request to the daemon: {e}"))),
        },
    };
    Ok((control, channel, answer))
}

/// The first word on a call's channel: `Started` (with the pty master in pty
/// mode), or a hang-up without one: no agent took it, the tool never
/// started. An agent that refused the tool says why. A terminating
/// signal that comes first (the tool's start hangs, the daemon that would
/// have timed it out is gone) ends the call; the agent kills a tool that
/// starts after, its channel gone. Other signals wait for the tool.
fn started_on(channel: &Fd, signals: &Fd) -> Result<Channel, Failure> {
    let mut kept = Vec::new();
    let ended = loop {
        let mut pfds = [Pollfd { fd: channel.0, events: POLLIN, revents: 0 }, Pollfd { fd: signals.0, events: POLLIN, revents: 0 }];
        if sys::poll(&mut pfds, -1).is_err() || pfds[0].revents != 0 {
            break None;
        }
        let mut buf = [0u8; 16];
        let n = sys::read(signals.0, &mut buf).unwrap_or(0);
        if let Some(&sig) = buf[..n].iter().find(|&&s| [SIGINT, SIGTERM, SIGHUP, SIGQUIT].contains(&i32::from(s))) {
            break Some(i32::from(sig));
        }
        kept.extend_from_slice(&buf[..n]);
    };
    let _ = sys::write(SIGNAL_PIPE.load(Ordering::Relaxed), &kept);
    if let Some(sig) = ended {
        return Err(Failure { message: format!("signal {sig} before the tool started"), exit_code: 128 + sig });
    }
    match frame::recv::<AgentEvent>(channel.0) {
        Ok(Some((AgentEvent::Started { .. }, mut got))) => Ok(Channel::Started(got.pop())),
        Ok(Some((AgentEvent::Failed(f), _))) => Err(f),
        Ok(Some(_)) => Err(fail("unexpected first word from the agent (is it another version of odfs?)".into())),
        Ok(None) => Ok(Channel::HungUp),
        Err(e) => Err(fail(format!("bad word from the agent: {e}"))),
    }
}

/// Bridge signals (and, in pty mode, terminal bytes) until the agent reports
/// the tool's end.
fn follow(command: &str, agent: &Fd, signals: &Fd, mut bridge: Option<Bridge>, relayed: bool, stamps: &mut Option<CallStamps>) -> Result<Outcome, Failure> {
    let mut master_open = bridge.is_some();
    // Until the terminal hangs up (a read of it gives its end).
    let mut term_open = true;
    loop {
        let reading_input = term_open && bridge.as_ref().is_some_and(|r| r.reading_input());
        let mut pfds = [Pollfd { fd: agent.0, events: POLLIN, revents: 0 }, Pollfd { fd: signals.0, events: POLLIN, revents: 0 }, Pollfd { fd: -1, events: POLLIN, revents: 0 }, Pollfd { fd: -1, events: POLLIN, revents: 0 }];
        // A negative fd is skipped by poll(2).
        if let Some(r) = &bridge {
            if master_open {
                pfds[2].fd = r.master.0;
            }
            if reading_input {
                pfds[3].fd = r.term;
            }
        }
        match sys::poll(&mut pfds, -1) {
            Ok(_) | Err(sys::Errno(sys::EINTR)) => {}
            Err(e) => return Err(fail(format!("poll: {e}"))),
        }
        let ready = pfds.map(|p| p.fd >= 0 && p.revents != 0);
        if let Some(r) = &bridge {
            if ready[2] {
                master_open = Bridge::pump(r.master.0, r.out);
            }
            if ready[3] {
                term_open = Bridge::pump(r.term, r.master.0);
            }
        }
        if ready[1] {
            forward_signals(signals, agent, bridge.as_mut(), relayed);
        }
        if ready[0] {
            let event = frame::recv::<AgentEvent>(agent.0);
            if let Ok(Some((AgentEvent::Stamps(a), _))) = event {
                if let Some(s) = stamps.as_mut() {
                    s.agent = a;
                }
                continue;
            }
            if let Some(s) = stamps.as_mut() {
                s.event = sys::now_ns();
            }
            if let Ok(Some((AgentEvent::Stopped(sig), _))) = event {
                if let Some(r) = bridge.as_mut() {
                    r.leave();
                }
                if !stop_self(sig) {
                    if let Some(r) = bridge.as_mut() {
                        r.enter();
                    }
                    let _ = frame::send(agent.0, &AgentRequest::Continue, &[]);
                }
                continue;
            }
            if let Some(r) = &bridge {
                if master_open {
                    r.drain(2000);
                }
            }
            drop(bridge);
            return ended(command, event, relayed);
        }
    }
}

/// Pass the signals the launcher caught to the tool, and act on those it
/// handles itself (terminal size, resuming after a stop).
fn forward_signals(signals: &Fd, agent: &Fd, mut bridge: Option<&mut Bridge>, relayed: bool) {
    let mut buf = [0u8; 64];
    let n = sys::read(signals.0, &mut buf).unwrap_or(0);
    for &sig in &buf[..n] {
        let sig = i32::from(sig);
        match sig {
            SIGWINCH => {
                if let Some(ws) = bridge.as_ref().and_then(|r| r.sync_size()) {
                    // A relayed call's pty is on another machine.
                    if relayed {
                        let _ = frame::send(agent.0, &AgentRequest::Resize { rows: ws.rows, cols: ws.cols }, &[]);
                    }
                }
            }
            SIGCONT => {
                // Resumed (`fg` or `bg`): take the terminal back if we are
                // in the foreground now, and resume the tool.
                if let Some(r) = bridge.as_mut() {
                    r.enter();
                }
                let _ = frame::send(agent.0, &AgentRequest::Continue, &[]);
            }
            // A failed send means the agent is gone; the read of its
            // connection says how.
            _ => {
                let _ = frame::send(agent.0, &AgentRequest::Signal(sig), &[]);
            }
        }
    }
}

/// How the call ends, from the agent's last word (or its silence).
fn ended(command: &str, event: Result<Option<(AgentEvent, Vec<Fd>)>, frame::Error>, relayed: bool) -> Result<Outcome, Failure> {
    match event {
        Ok(Some((AgentEvent::Exited(code), _))) => Ok(Outcome::Exit(code)),
        Ok(Some((AgentEvent::Signaled(sig), _))) => Ok(Outcome::Signal(sig)),
        Ok(Some((AgentEvent::Killed { signal, reason }, _))) => {
            say(command, &reason);
            Ok(Outcome::Signal(signal))
        }
        Ok(Some((AgentEvent::Failed(f), _))) => Err(f),
        Ok(Some(_)) => Err(fail("unexpected message from the agent (is it another version of odfs?)".into())),
        Ok(None) | Err(_) if relayed => Err(Failure::with_status(
            "the odfs daemon relaying this call to the remote engine stopped (restarted?); the tool there was stopped",
            128 + SIGKILL,
        )),
        Ok(None) | Err(_) => Err(Failure::with_status("the tool's container stopped while the tool ran (removed or killed?)", 128 + SIGKILL)),
    }
}

/// End the launcher the way the tool ended, so `$?` is the tool's: an exit
/// code, or death by the same signal (`128+N` in the shell).
fn finish(outcome: Outcome) -> ! {
    match outcome {
        Outcome::Exit(code) => sys::exit(code),
        Outcome::Signal(sig) => {
            // The tool already dumped core where it ran; a core of the
            // launcher would only mislead.
            sys::set_rlimit_zero(sys::RLIMIT_CORE);
            sys::set_handler(sig, sys::SIG_DFL);
            sys::unblock(sig);
            sys::kill_self(sig);
            // Signals whose default is to ignore or stop: report as a shell would.
            sys::exit(128 + sig)
        }
    }
}
