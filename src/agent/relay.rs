//! `odfs-agent relay`: one call on a remote engine. Started by the daemon
//! through the engine's exec API inside the call's container, it turns the
//! frames on its stdin and stdout ([`crate::protocol::relay`]) into a spawn
//! request to the container's agent, with pipes (and the agent's pty) where
//! a local call would pass the caller's fds.
//!
//! Its stdin is also its lifeline: when the stream ends without `InputEnd`
//! the daemon (or its connection) is gone, the relay exits, and the agent
//! kills the tool's session as it does for a killed launcher.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::protocol::relay::{frame, Decoder, RelayIn, RelayOut, CHUNK, PTY};
use crate::protocol::{self, AgentEvent, AgentRequest, SpawnRequest};

/// How long a new container's agent may take to listen.
const CONNECT_LIMIT: Duration = Duration::from_secs(20);
/// Report input taken by the tool once this much has gone (or all of it).
const CONSUMED_EVERY: u64 = 64 << 10;

/// Run one relayed request; returns the relay's exit status.
pub fn run(socket: &Path) -> i32 {
    let mut stdin = Input::default();
    match stdin.next() {
        Some(RelayIn::Status { token }) => match connect(socket).and_then(|c| status(&c, token)) {
            Ok(ev) => emit(&RelayOut::Event(ev)),
            Err(e) => fail(format!("the container's agent does not answer: {e}")),
        },
        Some(RelayIn::Spawn(req)) => call(socket, *req, stdin),
        _ => 0,
    }
}

/// Frames from the daemon on fd 0.
#[derive(Default)]
struct Input {
    decoder: Decoder,
    eof: bool,
}

impl Input {
    /// Read once (fd 0 is readable or the caller wants to block) and decode.
    fn fill(&mut self) {
        let mut buf = vec![0u8; CHUNK + 64];
        match nix::unistd::read(0, &mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.decoder.push(&buf[..n]),
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
            Err(_) => self.eof = true,
        }
    }

    /// The next message, blocking; `None` at the end of the stream.
    fn next(&mut self) -> Option<RelayIn> {
        loop {
            match self.decoder.next() {
                Ok(Some(m)) => return Some(m),
                Ok(None) if !self.eof => self.fill(),
                _ => return None,
            }
        }
    }
}

/// Send one frame to the daemon, at once: Rust's stdout holds back bytes
/// after the last newline, and a prompt has none.
fn emit(msg: &RelayOut) -> i32 {
    let sent = frame(msg).and_then(|f| {
        let mut out = std::io::stdout().lock();
        out.write_all(&f)?;
        Ok(out.flush()?)
    });
    match sent {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn fail(message: String) -> i32 {
    emit(&RelayOut::Event(AgentEvent::Failed(crate::protocol::Failure::new(message))));
    1
}

fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= CONNECT_LIMIT => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn status(conn: &UnixStream, token: String) -> std::io::Result<AgentEvent> {
    let bad = |e: protocol::FrameError| std::io::Error::other(e.to_string());
    protocol::send(conn, &AgentRequest::Status { token }, &[]).map_err(bad)?;
    protocol::recv::<AgentEvent>(conn).map_err(bad)?.map(|(ev, _)| ev).ok_or_else(|| std::io::Error::other("closed"))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
}

/// Read what `fd` has now into an output frame; `false` at its end.
fn pump(fd: RawFd, target: i32) -> bool {
    let mut buf = vec![0u8; CHUNK];
    // SAFETY: reading into a local buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return matches!(e, Some(libc::EINTR | libc::EAGAIN));
    }
    if n == 0 {
        return false;
    }
    buf.truncate(n as usize);
    emit(&RelayOut::Output { fd: target, data: buf }) == 0
}

/// Everything a running call holds.
struct Call {
    conn: UnixStream,
    /// Where input goes: the write end of the tool's stdin pipe, or the pty
    /// master; `None` once closed.
    input: Option<OwnedFd>,
    /// Input not yet taken by the tool: at most the daemon's window, which
    /// grows back as `consumed` is reported.
    pending: Vec<u8>,
    consumed: u64,
    input_ended: bool,
    /// Read ends of the tool's stdout/stderr pipes, by target fd.
    outputs: Vec<(i32, OwnedFd)>,
    master: Option<OwnedFd>,
}

fn call(socket: &Path, mut req: SpawnRequest, mut stdin: Input) -> i32 {
    // Pipes stand for the caller's standard fds off the terminal; higher
    // fds cannot cross machines.
    req.fds.retain(|fd| (0..=2).contains(fd));
    let mut attach = Vec::new();
    let mut input = None;
    let mut outputs = Vec::new();
    for &target in &req.fds {
        let Ok((r, w)) = pipe() else { return fail("cannot make a pipe".into()) };
        if target == 0 {
            set_nonblocking(w.as_raw_fd());
            attach.push(r);
            input = Some(w);
        } else {
            attach.push(w);
            outputs.push((target, r));
        }
    }
    let conn = match connect(socket) {
        Ok(c) => c,
        Err(e) => return fail(format!("the container's agent does not answer: {e}")),
    };
    let raw: Vec<RawFd> = attach.iter().map(|f| f.as_raw_fd()).collect();
    if let Err(e) = protocol::send(&conn, &AgentRequest::Spawn(Box::new(req)), &raw) {
        return fail(format!("cannot reach the container's agent: {e}"));
    }
    drop(attach);
    let master = match protocol::recv::<AgentEvent>(&conn) {
        Ok(Some((ev @ AgentEvent::Started { .. }, mut fds))) => {
            emit(&RelayOut::Event(ev));
            fds.pop()
        }
        Ok(Some((ev, _))) => return emit(&RelayOut::Event(ev)),
        _ => return fail("the container's agent closed the connection".into()),
    };
    if let Some(m) = &master {
        set_nonblocking(m.as_raw_fd());
        if input.is_none() {
            input = Some(m.try_clone().expect("dup the pty master"));
        }
    }
    let mut c = Call { conn, input, pending: Vec::new(), consumed: 0, input_ended: false, outputs, master };
    c.follow(&mut stdin)
}

impl Call {
    fn follow(&mut self, stdin: &mut Input) -> i32 {
        loop {
            // Always read: the daemon sends no more than its window, and
            // signals and the stream's end must be seen at once.
            let reading = !stdin.eof;
            let writing = !self.pending.is_empty() && self.input.is_some();
            // SAFETY: fd 0 stays open for the relay's lifetime.
            let fd0 = unsafe { BorrowedFd::borrow_raw(0) };
            let mut fds = vec![PollFd::new(self.conn.as_fd(), PollFlags::POLLIN)];
            fds.push(PollFd::new(fd0, if reading { PollFlags::POLLIN } else { PollFlags::empty() }));
            // The input fd only while there is something to write: a pipe
            // whose reader is gone reports POLLERR for ever.
            let input_fd = self.input.as_ref().filter(|_| writing).map(|f| f.as_raw_fd()).unwrap_or(-1);
            // SAFETY: `input`, when set, outlives this poll.
            let input_b = (input_fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(input_fd) });
            if let Some(b) = input_b {
                fds.push(PollFd::new(b, PollFlags::POLLOUT));
            }
            let outs: Vec<(i32, RawFd)> = self
                .outputs
                .iter()
                .map(|(t, f)| (*t, f.as_raw_fd()))
                .chain(self.master.as_ref().map(|m| (PTY, m.as_raw_fd())))
                .collect();
            for &(_, fd) in &outs {
                // SAFETY: the fds are owned by `self` and outlive this poll.
                fds.push(PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN));
            }
            if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
                if e != nix::Error::EINTR {
                    return fail(format!("poll: {e}"));
                }
                continue;
            }
            let ready: Vec<bool> = fds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
            drop(fds);
            let base = 2 + input_b.is_some() as usize;
            let mut closed = Vec::new();
            for (k, &(target, fd)) in outs.iter().enumerate() {
                if ready[base + k] && !pump(fd, target) {
                    closed.push(target);
                }
            }
            self.outputs.retain(|(t, _)| !closed.contains(t));
            if closed.contains(&PTY) {
                self.master = None;
            }
            if ready[1] {
                stdin.fill();
                while let Ok(Some(msg)) = stdin.decoder.next::<RelayIn>() {
                    self.take(msg);
                }
                if stdin.eof {
                    // The daemon is gone: dropping the agent connection makes
                    // the agent kill the tool's session.
                    return 1;
                }
            }
            if input_b.is_some() && ready[2] {
                self.flush_input();
            }
            if ready[0] {
                match protocol::recv::<AgentEvent>(&self.conn) {
                    Ok(Some((ev @ AgentEvent::Stopped(_), _))) => {
                        emit(&RelayOut::Event(ev));
                    }
                    Ok(Some((ev, _))) => {
                        self.drain();
                        return emit(&RelayOut::Event(ev));
                    }
                    _ => {
                        self.drain();
                        return fail("the container's agent went away while the tool ran".into());
                    }
                }
            }
        }
    }

    fn take(&mut self, msg: RelayIn) {
        let send = |req: AgentRequest| {
            let _ = protocol::send(&self.conn, &req, &[]);
        };
        match msg {
            RelayIn::Input(data) => {
                self.pending.extend_from_slice(&data);
                self.flush_input();
            }
            RelayIn::InputEnd => {
                self.input_ended = true;
                self.flush_input();
            }
            RelayIn::Signal(sig) => send(AgentRequest::Signal(sig)),
            RelayIn::Continue => send(AgentRequest::Continue),
            RelayIn::Resize { rows, cols } => {
                if let Some(m) = &self.master {
                    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                    // SAFETY: TIOCSWINSZ reads the struct; the kernel tells the tool.
                    unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            RelayIn::CloseOutput(fd) => self.outputs.retain(|(t, _)| *t != fd),
            RelayIn::Spawn(_) | RelayIn::Status { .. } => {}
        }
    }

    /// Write what the tool will take now; close its stdin once all is written
    /// after `InputEnd` (never the pty: a terminal has no end of input).
    fn flush_input(&mut self) {
        let Some(fd) = self.input.as_ref().map(|f| f.as_raw_fd()) else {
            self.pending.clear();
            return;
        };
        let mut taken = 0;
        while taken < self.pending.len() {
            // SAFETY: writing from our own buffer.
            let n = unsafe { libc::write(fd, self.pending[taken..].as_ptr().cast(), self.pending.len() - taken) };
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => break,
                    // The tool closed its stdin: what it did not read is
                    // dropped, as a pipe's writer would see.
                    _ => {
                        taken = self.pending.len();
                        self.input = None;
                        break;
                    }
                }
            } else {
                taken += n as usize;
            }
        }
        self.pending.drain(..taken);
        self.consumed += taken as u64;
        if self.consumed >= CONSUMED_EVERY || (self.pending.is_empty() && self.consumed > 0) {
            emit(&RelayOut::Consumed(std::mem::take(&mut self.consumed)));
        }
        if self.input_ended && self.pending.is_empty() && self.master.is_none() {
            self.input = None;
        }
    }

    /// Send what the tool wrote before it ended. Pipes hold all of it now
    /// (a background child may keep them open, so no waiting for their end);
    /// the pty may still be passing its last bytes: read until it hangs up.
    fn drain(&mut self) {
        for (target, fd) in &self.outputs {
            loop {
                let mut probe = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut probe, PollTimeout::ZERO), Ok(n) if n > 0) || !pump(fd.as_raw_fd(), *target) {
                    break;
                }
            }
        }
        if let Some(m) = self.master.take() {
            let limit = Instant::now() + Duration::from_secs(2);
            while Instant::now() < limit {
                let mut probe = [PollFd::new(m.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut probe, PollTimeout::from(200u16)), Ok(n) if n > 0) || !pump(m.as_raw_fd(), PTY) {
                    break;
                }
            }
        }
    }
}
