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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// Run one relayed request on the exec's stdin and stdout; returns the
/// relay's exit status.
pub fn run(socket: &Path) -> i32 {
    serve(socket, 0, Out(1))
}

/// Run one relayed request whose frames come in on `input` and go out on
/// `out`.
pub fn serve(socket: &Path, input: RawFd, out: Out) -> i32 {
    let mut stdin = Input { fd: input, decoder: Decoder::default(), eof: false };
    match stdin.next() {
        Some(RelayIn::Status { token }) => match connect(socket).and_then(|c| status(&c, token)) {
            Ok(ev) => out.emit(&RelayOut::Event(ev)),
            Err(e) => out.fail(format!("the container's agent does not answer: {e}")),
        },
        Some(RelayIn::Spawn(req)) => call(socket, *req, stdin, out),
        _ => 0,
    }
}

/// Frames from the daemon.
struct Input {
    fd: RawFd,
    decoder: Decoder,
    eof: bool,
}

impl Input {
    /// Read once (the fd is readable or the caller wants to block) and decode.
    fn fill(&mut self) {
        let mut buf = vec![0u8; CHUNK + 64];
        match nix::unistd::read(self.fd, &mut buf) {
            Ok(0) => self.eof = true,
            Ok(n) => self.decoder.push(&buf[..n]),
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
            Err(_) => self.eof = true,
        }
    }

    /// The next message, blocking; `None` at the end of the stream.
    fn next(&mut self) -> Option<RelayIn> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) => return Some(m),
                Ok(None) if !self.eof => self.fill(),
                _ => return None,
            }
        }
    }
}

/// Where frames for the daemon go (the exec's stdout).
#[derive(Clone, Copy)]
pub struct Out(pub RawFd);

impl Out {
    /// Send one frame to the daemon, at once and whole (no buffer that
    /// holds back a prompt without a newline).
    fn emit(self, msg: &RelayOut) -> i32 {
        // SAFETY: the fd stays open for the relay's lifetime; File does not
        // own it (ManuallyDrop).
        let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.0) });
        match frame(msg).and_then(|f| Ok(out.write_all(&f)?)) {
            Ok(()) => 0,
            Err(_) => 1,
        }
    }

    fn fail(self, message: String) -> i32 {
        self.emit(&RelayOut::Event(AgentEvent::Failed(crate::protocol::Failure::new(message))));
        1
    }

    /// Read what `fd` has now into an output frame; `false` at its end.
    fn pump(self, fd: RawFd, target: i32) -> bool {
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
        self.emit(&RelayOut::Output { fd: target, data: buf }) == 0
    }
}

fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    protocol::retry(CONNECT_LIMIT, || UnixStream::connect(socket))
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
    out: Out,
}

fn call(socket: &Path, mut req: SpawnRequest, mut stdin: Input, out: Out) -> i32 {
    // Pipes stand for the caller's standard fds off the terminal; higher
    // fds cannot cross machines.
    req.passed.fds.retain(|fd| (0..=2).contains(fd));
    let mut attach = Vec::new();
    let mut input = None;
    let mut outputs = Vec::new();
    for &target in &req.passed.fds {
        let Ok((r, w)) = pipe() else { return out.fail("cannot make a pipe".into()) };
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
        Err(e) => return out.fail(format!("the container's agent does not answer: {e}")),
    };
    let raw: Vec<RawFd> = attach.iter().map(|f| f.as_raw_fd()).collect();
    if let Err(e) = protocol::send(&conn, &AgentRequest::Spawn(Box::new(req)), &raw) {
        return out.fail(format!("cannot reach the container's agent: {e}"));
    }
    drop(attach);
    let master = match protocol::recv::<AgentEvent>(&conn) {
        Ok(Some((ev @ AgentEvent::Started { .. }, mut fds))) => {
            out.emit(&RelayOut::Event(ev));
            fds.pop()
        }
        Ok(Some((ev, _))) => return out.emit(&RelayOut::Event(ev)),
        _ => return out.fail("the container's agent closed the connection".into()),
    };
    if let Some(m) = &master {
        set_nonblocking(m.as_raw_fd());
        if input.is_none() {
            match m.try_clone() {
                Ok(copy) => input = Some(copy),
                Err(e) => return out.fail(format!("cannot relay the terminal: {e}")),
            }
        }
    }
    let mut c = Call { conn, input, pending: Vec::new(), consumed: 0, input_ended: false, outputs, master, out };
    c.follow(&mut stdin)
}

impl Call {
    fn follow(&mut self, stdin: &mut Input) -> i32 {
        loop {
            // Always read: the daemon sends no more than its window, and
            // signals and the stream's end must be seen at once.
            let reading = !stdin.eof;
            let writing = !self.pending.is_empty() && self.input.is_some();
            // SAFETY: the input fd stays open for the relay's lifetime.
            let fd0 = unsafe { BorrowedFd::borrow_raw(stdin.fd) };
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
                    return self.out.fail(format!("poll: {e}"));
                }
                continue;
            }
            let ready: Vec<bool> = fds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
            drop(fds);
            let base = 2 + input_b.is_some() as usize;
            let mut closed = Vec::new();
            for (k, &(target, fd)) in outs.iter().enumerate() {
                if ready[base + k] && !self.out.pump(fd, target) {
                    closed.push(target);
                }
            }
            self.outputs.retain(|(t, _)| !closed.contains(t));
            if closed.contains(&PTY) {
                self.master = None;
            }
            if ready[1] {
                stdin.fill();
                while let Ok(Some(msg)) = stdin.decoder.next_message::<RelayIn>() {
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
                        self.out.emit(&RelayOut::Event(ev));
                    }
                    Ok(Some((ev, _))) => {
                        self.drain();
                        return self.out.emit(&RelayOut::Event(ev));
                    }
                    _ => {
                        self.drain();
                        return self.out.fail("the container's agent went away while the tool ran".into());
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
            self.out.emit(&RelayOut::Consumed(std::mem::take(&mut self.consumed)));
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
                if !matches!(poll(&mut probe, PollTimeout::ZERO), Ok(n) if n > 0) || !self.out.pump(fd.as_raw_fd(), *target) {
                    break;
                }
            }
        }
        if let Some(m) = self.master.take() {
            let limit = Instant::now() + Duration::from_secs(2);
            while Instant::now() < limit {
                let mut probe = [PollFd::new(m.as_fd(), PollFlags::POLLIN)];
                if !matches!(poll(&mut probe, PollTimeout::from(200u16)), Ok(n) if n > 0) || !self.out.pump(m.as_raw_fd(), PTY) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The relay between frames and a (fake) agent, on pipes in-process.

    use super::*;
    use crate::agent::fake::FakeAgent;

    /// A relay serving in a thread: frames go in on `to`, come out on `from`.
    struct Relay {
        to: Option<std::fs::File>,
        from: std::fs::File,
        decoder: Decoder,
        done: std::thread::JoinHandle<i32>,
        agent: FakeAgent,
        _dir: tempfile::TempDir,
    }

    impl Relay {
        fn start() -> Relay {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("agent.sock");
            let agent = FakeAgent::serve(&socket).unwrap();
            let (in_r, in_w) = pipe().unwrap();
            let (out_r, out_w) = pipe().unwrap();
            let done = std::thread::spawn(move || {
                let status = serve(&socket, in_r.as_raw_fd(), Out(out_w.as_raw_fd()));
                drop((in_r, out_w));
                status
            });
            Relay { to: Some(in_w.into()), from: out_r.into(), decoder: Decoder::default(), done, agent, _dir: dir }
        }

        fn send(&mut self, msg: &RelayIn) {
            self.to.as_mut().unwrap().write_all(&frame(msg).unwrap()).unwrap();
        }

        fn next(&mut self) -> Option<RelayOut> {
            use std::io::Read;
            loop {
                if let Some(m) = self.decoder.next_message().unwrap() {
                    return Some(m);
                }
                let mut buf = [0u8; 4096];
                match self.from.read(&mut buf).unwrap() {
                    0 => return None,
                    n => self.decoder.push(&buf[..n]),
                }
            }
        }
    }

    fn spawn(fds: Vec<i32>) -> RelayIn {
        RelayIn::Spawn(Box::new(crate::agent::fake::spawn_request(fds)))
    }

    #[test]
    fn input_reaches_the_tool_and_its_output_and_end_come_back_in_order() {
        let mut r = Relay::start();
        r.send(&spawn(vec![0, 1, 7]));
        assert_eq!(r.next(), Some(RelayOut::Event(AgentEvent::Started { pid: 4242 })));
        r.send(&RelayIn::Input(b"abc".to_vec()));
        r.send(&RelayIn::InputEnd);
        let mut out = Vec::new();
        let end = loop {
            match r.next() {
                Some(RelayOut::Output { fd: 1, data }) => out.extend(data),
                Some(RelayOut::Consumed(n)) => assert!(n <= 3),
                Some(RelayOut::Event(ev)) => break ev,
                other => panic!("unexpected {other:?}"),
            }
        };
        // Output written before the end is sent before the end.
        assert_eq!((out.as_slice(), end), (&b"ABC"[..], AgentEvent::Exited(3)));
        assert_eq!(r.done.join().unwrap(), 0);
        // fd 7 cannot cross machines: only 0 and 1 reached the agent. The
        // fake agent notes the end on its own thread, maybe after sending it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while r.agent.seen().len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(r.agent.seen(), ["spawn upcase call=7 fds [0, 1]", "exited 3"]);
    }

    #[test]
    fn a_signal_is_passed_to_the_agent() {
        let mut r = Relay::start();
        r.send(&spawn(vec![0, 1]));
        assert_eq!(r.next(), Some(RelayOut::Event(AgentEvent::Started { pid: 4242 })));
        r.send(&RelayIn::Signal(libc::SIGINT));
        assert_eq!(r.next(), Some(RelayOut::Event(AgentEvent::Signaled(libc::SIGINT))));
        assert_eq!(r.done.join().unwrap(), 0);
    }

    #[test]
    fn the_end_of_the_daemon_s_stream_drops_the_agent_connection() {
        let mut r = Relay::start();
        r.send(&spawn(vec![0, 1]));
        assert_eq!(r.next(), Some(RelayOut::Event(AgentEvent::Started { pid: 4242 })));
        drop(r.to.take());
        assert_eq!(r.done.join().unwrap(), 1);
        for _ in 0..500 {
            if r.agent.seen().last().map(String::as_str) == Some("dropped") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the agent was not told: {:?}", r.agent.seen());
    }

    #[test]
    fn a_status_question_is_answered() {
        let mut r = Relay::start();
        r.send(&RelayIn::Status { token: "t".into() });
        assert_eq!(r.next(), Some(RelayOut::Event(AgentEvent::Status { running: 0, idle_ms: 0, finished: vec![], memory: 0 })));
        assert_eq!(r.done.join().unwrap(), 0);
    }
}
