//! Calls on a remote engine. No fd crosses machines, so the daemon runs
//! `odfs-agent relay` in the container through the engine's exec API and
//! stands between it and the launcher: the caller's stdin goes out as
//! frames, the tool's output comes back into the caller's fds, and the
//! launcher gets a connection that speaks the agent's protocol (signals,
//! job control, resize, the end) as on the local path.
//!
//! Threads, not tasks, touch the caller's fds: they may be files, pipes or
//! terminals in blocking mode, and their flags are shared with the caller.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{AgentStatus, Launch, Setup, Target, AGENT_IN_CONTAINER, SOCKET_IN_CONTAINER};
use crate::backend::{Bind, ContainerBackend, ContainerSpec, ExecInput, ExecOutput};
use crate::catalog::ImageSpec;
use crate::daemon::call::{CallError, PoolError, StartError, Started};
use crate::view::View;
use crate::protocol::tally::Tally;
use crate::protocol::relay::{frame, Decoder, RelayIn, RelayOut, CHUNK, PTY};
use crate::protocol::{self, AgentEvent, AgentRequest, SpawnRequest, EXIT_ODFS_ERROR};

/// How long the relay may take to start the tool (engine exec start, the
/// agent's spawn).
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A profile's container as the relay reaches it, and its calls: the
/// agent there cannot be asked cheaply, and every call passes through the
/// daemon, so the daemon counts them.
#[derive(Debug, Default)]
pub struct RelayLink {
    calls: Calls,
}

impl RelayLink {
    /// What a container of `image` sees: its `remote_dirs`, nothing else
    /// of this host.
    pub fn plan_view(&self, image: &ImageSpec) -> View {
        View { host: image.remote_dirs.clone(), filled: vec![] }
    }

    /// The relay's parts of a container's spec: the agent copied in (host
    /// files do not exist there), its socket kept inside and reached from
    /// inside, the image's `remote_dirs` bound.
    pub fn prepare<B>(&self, setup: &Setup<'_, B>, image: &ImageSpec, spec: &mut ContainerSpec) -> Result<View, PoolError> {
        if image.gui {
            return Err(PoolError::Backend(crate::backend::BackendError::Unsupported(format!(
                "image {} is graphical (gui = true) and the container engine is remote: its tools cannot reach this machine's display (run it on a local engine)",
                image.name
            ))));
        }
        let archive = match setup.archive.get() {
            Some(a) => a.clone(),
            None => {
                let a = agent_archive(setup.agent).map_err(|e| PoolError::setup(format!("read the agent {}", setup.agent.display()), e))?;
                setup.archive.get_or_init(|| a).clone()
            }
        };
        spec.preload = Some(archive);
        spec.entrypoint.push("--allow-local-peers".into());
        spec.binds = image.remote_dirs.iter().map(|p| Bind::plain(p.clone(), p.clone(), false)).collect();
        Ok(self.plan_view(image))
    }

    /// A new (or adopted) container has had no call yet: idle since now.
    pub fn started(&self) {
        self.calls.0.lock().unwrap().reset_idle();
    }

    /// How busy the container is, from the daemon's own count; the ends
    /// of calls since the last question are handed over once.
    pub fn status(&self) -> AgentStatus {
        AgentStatus::of(self.calls.0.lock().unwrap().report(0)).expect("a tally reports a status")
    }

    /// Ask the agent in the container, through the engine, within `limit`.
    pub async fn probe<B: ContainerBackend>(&self, backend: &B, id: &str, token: &str, limit: Duration) -> std::io::Result<AgentStatus> {
        tokio::time::timeout(limit + Duration::from_secs(5), remote_status(backend, id, token.to_string()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer through the engine"))?
    }

    /// Start a tool through the relay; the daemon serves its connection
    /// until the tool ends.
    pub async fn start<B: ContainerBackend>(&self, backend: &B, to: &Target, launch: Launch) -> Result<Started, StartError> {
        let fds = CallerFds::of(&launch);
        let mut spawn = launch.spawn;
        // On the fd path the account files are the daemon's (the image's
        // root is read-only); the agent appends them only on remote engines.
        (spawn.identity.passwd_line, spawn.identity.group_line) = launch.accounts;
        // The agent's clock is ours only on the fd path.
        spawn.passed.trace = false;
        start(backend, to, spawn, fds, &self.calls).await
    }
}

/// The relayed calls of one container.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<Tally>>);

impl Calls {
    /// A call of pid `pid` (in the container) has started.
    fn begin(&self, pid: i32) -> Call {
        self.0.lock().unwrap().begin();
        Call { calls: self.clone(), pid, started: Instant::now(), status: None }
    }
}

/// One relayed call in flight: counts as a running tool until dropped.
struct Call {
    calls: Calls,
    pid: i32,
    started: Instant,
    status: Option<i32>,
}

impl Call {
    /// The tool ended with this status (exit code, or 128 + signal).
    fn finish(&mut self, status: i32) {
        self.status = Some(status);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A call cut off (daemon stopping, stream lost) counts as killed.
        let status = self.status.unwrap_or(128 + libc::SIGKILL);
        self.calls.0.lock().unwrap().end(self.pid, status, self.started.elapsed().as_millis() as u64);
    }
}

/// The agent binary as a tar for `/`: `.odfs/odfs-agent` and an empty,
/// root-only `.odfs/run` for its socket.
fn agent_archive(agent: &std::path::Path) -> std::io::Result<bytes::Bytes> {
    let agent = std::fs::read(agent)?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8], kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, path, data)
    };
    add(".odfs/", 0o755, &[], tar::EntryType::Directory)?;
    add(".odfs/run/", 0o700, &[], tar::EntryType::Directory)?;
    add(".odfs/odfs-agent", 0o755, &agent, tar::EntryType::Regular)?;
    Ok(bytes::Bytes::from(tar.into_inner()?))
}

fn relay_command() -> Vec<String> {
    [AGENT_IN_CONTAINER, "relay", "--socket", SOCKET_IN_CONTAINER].map(String::from).to_vec()
}

/// Read the relay's frames from an exec's output until one arrives; what
/// it writes on stderr is its own complaint, logged.
async fn next_out(output: &mut ExecOutput, decoder: &mut Decoder) -> std::io::Result<Option<RelayOut>> {
    loop {
        if let Some(m) = decoder.next_message().map_err(std::io::Error::other)? {
            return Ok(Some(m));
        }
        match output.next().await {
            Some(Ok((1, bytes))) => decoder.push(&bytes),
            Some(Ok((_, bytes))) => tracing::warn!("relay: {}", String::from_utf8_lossy(&bytes).trim_end()),
            Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            None => return Ok(None),
        }
    }
}

async fn send(input: &mut ExecInput, msg: &RelayIn) -> std::io::Result<()> {
    input.write_all(&frame(msg).map_err(std::io::Error::other)?).await?;
    input.flush().await
}

/// Ask the agent of a remote container how busy it is (and so, that it is up).
async fn remote_status<B: ContainerBackend>(backend: &B, id: &str, token: String) -> std::io::Result<AgentStatus> {
    let mut stream = backend.exec_stream(id, relay_command()).await.map_err(std::io::Error::other)?;
    send(&mut stream.input, &RelayIn::Status { token }).await?;
    match next_out(&mut stream.output, &mut Decoder::default()).await? {
        Some(RelayOut::Event(AgentEvent::Failed(crate::protocol::Failure { message, .. }))) => Err(std::io::Error::other(message)),
        Some(RelayOut::Event(ev)) => AgentStatus::of(ev).map_err(|ev| std::io::Error::other(format!("unexpected answer from the relay: {ev:?}"))),
        other => Err(std::io::Error::other(format!("unexpected answer from the relay: {other:?}"))),
    }
}

/// The caller's standard fds a relayed call serves, by number.
struct CallerFds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl CallerFds {
    /// Copies of the caller's fds 0, 1 and 2 among those it passed.
    fn of(launch: &Launch) -> CallerFds {
        let standard = |n: i32| launch.spawn.passed.fds.iter().position(|&t| t == n).and_then(|i| launch.fds.get(i)?.try_clone().ok());
        CallerFds { stdin: standard(0), stdout: standard(1), stderr: standard(2) }
    }
}

/// Start a call through the relay; on `Started`, the launcher's end of a
/// connection the daemon serves until the tool ends.
async fn start<B: ContainerBackend>(backend: &B, to: &Target, mut spawn: SpawnRequest, fds: CallerFds, calls: &Calls) -> Result<Started, StartError> {
    // Only a container the engine no longer has is replaced: any other
    // failure may be passing, and the container serves other calls.
    let refused = |message: String| StartError::Refused(CallError::Start(message));
    let mut stream = match backend.exec_stream(&to.id, relay_command()).await {
        Ok(s) => s,
        Err(e) if e.container_gone() => return Err(StartError::Unreachable(e.to_string())),
        Err(e) => return Err(refused(e.to_string())),
    };
    spawn.passed.fds.retain(|fd| match fd {
        0 => fds.stdin.is_some(),
        1 => fds.stdout.is_some(),
        2 => fds.stderr.is_some(),
        _ => false,
    });
    let tty = spawn.passed.tty.clone();
    let mut decoder = Decoder::default();
    let started = tokio::time::timeout(START_LIMIT, async {
        send(&mut stream.input, &RelayIn::Spawn(Box::new(spawn))).await?;
        next_out(&mut stream.output, &mut decoder).await
    });
    let pid = match started.await {
        Ok(Ok(Some(RelayOut::Event(AgentEvent::Started { pid })))) => pid,
        Ok(Ok(Some(RelayOut::Event(AgentEvent::Failed(f))))) => return Err(StartError::Refused(CallError::Spawn(f))),
        Ok(Ok(other)) => return Err(refused(format!("the relay in the container answered {other:?} instead of starting the tool"))),
        Ok(Err(e)) => return Err(refused(format!("lost the remote engine while starting the tool: {e}"))),
        Err(_) => return Err(refused(format!("the remote engine did not start the tool within {}s", START_LIMIT.as_secs()))),
    };
    let fail = |e: std::io::Error| StartError::Refused(CallError::Start(format!("cannot set up the relay: {e}")));
    // In pty mode the launcher relays its terminal to a local pty; its
    // slave, raw, carries the bytes to and from the tool's real pty, whose
    // line discipline (the caller's settings) does the rest.
    let (master, slave) = match &tty {
        Some(t) => {
            let ws = nix::pty::Winsize { ws_row: t.rows, ws_col: t.cols, ws_xpixel: t.xpixel, ws_ypixel: t.ypixel };
            // Close-on-exec from birth: the daemon starts processes (ssh)
            // from other threads.
            let (master, slave) = crate::protocol::pty::open().map_err(fail)?;
            // SAFETY: TIOCSWINSZ with a winsize on an fd we own.
            unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            let mut raw = nix::sys::termios::tcgetattr(&slave).map_err(|e| fail(e.into()))?;
            nix::sys::termios::cfmakeraw(&mut raw);
            nix::sys::termios::tcsetattr(&slave, nix::sys::termios::SetArg::TCSANOW, &raw).map_err(|e| fail(e.into()))?;
            (Some(master), Some(slave))
        }
        None => (None, None),
    };
    let (launcher, ours) = UnixStream::pair().map_err(fail)?;
    let call = calls.begin(pid);
    let follow = follow(stream.output, stream.input, decoder, fds, ours, slave, call);
    tokio::spawn(tracing::Instrument::instrument(follow, tracing::Span::current()));
    Ok(Started { agent: Some(launcher), pid, container: to.name.clone(), pty_master: master, relayed: true, sent_at: 0, started_at: 0, up: Default::default() })
}

/// Messages for the relay, from the threads around the caller and the
/// launcher. Input data goes through a bounded channel (memory stays
/// bounded when the tool reads slower than the caller writes); signals,
/// stops and resizes through their own, so they never wait behind it.
struct ToRelay {
    data: mpsc::Sender<RelayIn>,
    control: mpsc::UnboundedSender<RelayIn>,
    /// The launcher's connection closed: nobody waits for the tool.
    gone: mpsc::UnboundedSender<()>,
}

impl Clone for ToRelay {
    fn clone(&self) -> ToRelay {
        ToRelay { data: self.data.clone(), control: self.control.clone(), gone: self.gone.clone() }
    }
}

/// Input chunks in flight to the relay, at most (64 KiB each).
const INPUT_QUEUE: usize = 16;

/// Output for the writer thread, in the order it came.
enum Out {
    Data(i32, bytes::Bytes),
    Event(AgentEvent),
}

/// Input bytes the relay may hold not yet taken by the tool. The daemon
/// sends more only as the relay reports what the tool took (`Consumed`), so
/// a signal or a resize never queues behind more than this, and the relay
/// can always read its stdin (also its lifeline).
const WINDOW: usize = 1 << 20;

/// Write what the call sends to the relay, control first. Its own task:
/// while it waits for the relay to take input, output keeps flowing the
/// other way (else a tool that reads and writes much, like `cat`, would
/// deadlock with the relay).
async fn write_input(
    mut input: ExecInput,
    mut control: mpsc::UnboundedReceiver<RelayIn>,
    mut data: mpsc::Receiver<RelayIn>,
    mut credit: mpsc::UnboundedReceiver<u64>,
) -> std::io::Error {
    let mut outstanding = 0usize;
    loop {
        let msg = tokio::select! {
            biased;
            Some(m) = control.recv() => m,
            Some(n) = credit.recv() => {
                outstanding = outstanding.saturating_sub(n as usize);
                continue;
            }
            Some(m) = data.recv(), if outstanding < WINDOW => m,
            else => std::future::pending().await,
        };
        if let RelayIn::Input(d) = &msg {
            outstanding += d.len();
        }
        if let Err(e) = send(&mut input, &msg).await {
            return e;
        }
    }
}

/// Serve one relayed call until its end (or its caller's).
async fn follow(
    mut output: ExecOutput,
    input: ExecInput,
    mut decoder: Decoder,
    fds: CallerFds,
    launcher: UnixStream,
    slave: Option<OwnedFd>,
    call: Call,
) {
    let (data_tx, data_rx) = mpsc::channel(INPUT_QUEUE);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let to_relay = ToRelay { data: data_tx, control: control_tx, gone: gone_tx };
    // Closing `stop_w` wakes and ends every reader thread.
    let Ok((stop_r, stop_w)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else { return };
    let stop_r = std::sync::Arc::new(stop_r);
    if let Some(stdin) = fds.stdin {
        let (tx, stop) = (to_relay.clone(), stop_r.clone());
        std::thread::spawn(move || read_input(&stdin, &stop, &tx, true));
    }
    // Out of fds, the call ends (its launcher sees the connection close),
    // never the daemon.
    let copies = (slave.as_ref().map(|s| s.try_clone()).transpose(), launcher.try_clone());
    let (Ok(slave_copy), Ok(conn)) = copies else {
        tracing::warn!("cannot relay the call: out of file descriptors");
        return;
    };
    if let Some(s) = slave_copy {
        let (tx, stop) = (to_relay.clone(), stop_r.clone());
        std::thread::spawn(move || read_input(&s, &stop, &tx, false));
    }
    {
        let (tx, stop) = (to_relay.clone(), stop_r.clone());
        std::thread::spawn(move || read_launcher(&conn, &stop, &tx));
    }
    let (out_tx, out_rx) = mpsc::channel::<Out>(64);
    // A thread, not the blocking pool: a call may last for days, and the
    // pool's threads serve every request.
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    {
        let targets = [(1, fds.stdout), (2, fds.stderr), (PTY, slave)];
        let (tx, stop) = (to_relay.clone(), stop_r.clone());
        std::thread::spawn(move || {
            write_output(out_rx, targets, launcher, &stop, tx);
            let _ = done_tx.send(());
        });
    }
    drop(to_relay);
    let (credit_tx, credit_rx) = mpsc::unbounded_channel();
    let mut inputs = tokio::spawn(write_input(input, control_rx, data_rx, credit_rx));
    let mut input_open = true;
    let end = loop {
        tokio::select! {
            out = next_out(&mut output, &mut decoder) => {
                let out = match out {
                    Ok(Some(RelayOut::Output { fd, data })) => Out::Data(fd, data.into()),
                    Ok(Some(RelayOut::Event(ev @ AgentEvent::Stopped(_)))) => Out::Event(ev),
                    Ok(Some(RelayOut::Consumed(n))) => {
                        let _ = credit_tx.send(n);
                        continue;
                    }
                    Ok(Some(RelayOut::Event(ev))) => break Some(ev),
                    Ok(None) => break Some(lost("the relay ended without the tool's status")),
                    Err(e) => break Some(lost(&e.to_string())),
                };
                // Output waits for the writer, and the writer for the
                // caller's reader: the launcher's end must be heard meanwhile.
                tokio::select! {
                    sent = out_tx.send(out) => if sent.is_err() { break None },
                    _ = gone.recv() => break None,
                }
            }
            // The tool may end without reading all its input; the relay's
            // last frames are still to come on the output side.
            failed = &mut inputs, if input_open => {
                input_open = false;
                tracing::debug!("relay input closed: {}", failed.map_or_else(|e| e.to_string(), |e| e.to_string()));
            }
            _ = gone.recv() => break None,
        }
    };
    inputs.abort();
    end_call(end, call, output, out_tx, done, stop_w).await;
}

/// The end of a relayed call: the tool's last word passed on (`Some`) and
/// the writer let finish, or, with no one waiting for the tool (`None`),
/// the exec closed so the relay kills it and the writer stopped even if a
/// reader that reads no more holds it.
async fn end_call(end: Option<AgentEvent>, mut call: Call, output: ExecOutput, out_tx: mpsc::Sender<Out>, done: tokio::sync::oneshot::Receiver<()>, stop_w: OwnedFd) {
    match end {
        Some(ev) => {
            call.finish(ev.status().unwrap_or(EXIT_ODFS_ERROR));
            let _ = out_tx.send(Out::Event(ev)).await;
            drop(out_tx);
            let _ = done.await;
            drop(stop_w);
        }
        None => {
            drop(output);
            drop(out_tx);
            drop(stop_w);
            let _ = done.await;
        }
    }
}

fn lost(why: &str) -> AgentEvent {
    AgentEvent::Failed(crate::protocol::Failure::new(format!("lost the remote engine while the tool ran ({why})")))
}

/// Wait until `fd` is readable; false when told to stop.
fn readable(fd: BorrowedFd, stop: &OwnedFd) -> bool {
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) if fds[1].revents().is_some_and(|r| !r.is_empty()) => return false,
            Ok(_) => return true,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// The caller's stdin (or the local pty) to the tool. Reads only when data
/// is there, so the thread ends with the call even if stdin never does.
fn read_input(fd: &OwnedFd, stop: &OwnedFd, tx: &ToRelay, ends: bool) {
    let mut buf = vec![0u8; CHUNK];
    while readable(fd.as_fd(), stop) {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
            Ok(0) | Err(_) if ends => {
                let _ = tx.data.blocking_send(RelayIn::InputEnd);
                return;
            }
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.data.blocking_send(RelayIn::Input(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Signals, job control and resizes from the launcher.
fn read_launcher(conn: &UnixStream, stop: &OwnedFd, tx: &ToRelay) {
    while readable(conn.as_fd(), stop) {
        let msg = match protocol::recv::<AgentRequest>(conn) {
            Ok(Some((AgentRequest::Signal(s), _))) => RelayIn::Signal(s),
            Ok(Some((AgentRequest::Continue, _))) => RelayIn::Continue,
            Ok(Some((AgentRequest::Resize { rows, cols }, _))) => RelayIn::Resize { rows, cols },
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                let _ = tx.gone.send(());
                return;
            }
        };
        if tx.control.send(msg).is_err() {
            return;
        }
    }
}

/// The tool's output into the caller's fds, then its events to the
/// launcher, in order. A reader that went away closes that output at the
/// relay, so the tool's next write fails as it would natively (EPIPE, or
/// SIGPIPE where not ignored). `stop` ends it even mid-write.
fn write_output(mut rx: mpsc::Receiver<Out>, targets: [(i32, Option<OwnedFd>); 3], launcher: UnixStream, stop: &OwnedFd, tx: ToRelay) {
    let mut broken = Vec::new();
    while let Some(out) = rx.blocking_recv() {
        match out {
            Out::Data(fd, data) => {
                let Some(file) = targets.iter().find(|(t, _)| *t == fd).and_then(|(_, f)| f.as_ref()) else { continue };
                if broken.contains(&fd) {
                    continue;
                }
                match write_all(file, &data, stop) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        broken.push(fd);
                        if e.raw_os_error() == Some(libc::EPIPE) {
                            let _ = tx.control.send(RelayIn::CloseOutput(fd));
                        }
                    }
                }
            }
            Out::Event(ev) => {
                let last = !matches!(ev, AgentEvent::Stopped(_));
                if protocol::send(&launcher, &ev, &[]).is_err() || last {
                    return;
                }
            }
        }
    }
}

/// Write all of `data` to a caller's fd, which may be blocking or not, in
/// pieces that fit when poll says there is room (a blocking pipe write of
/// more than PIPE_BUF could wait forever on a reader that stopped reading).
/// `Ok(false)`: told to stop.
fn write_all(fd: &OwnedFd, mut data: &[u8], stop: &OwnedFd) -> std::io::Result<bool> {
    let regular = nix::sys::stat::fstat(fd.as_raw_fd()).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    let piece = if regular { CHUNK } else { libc::PIPE_BUF };
    while !data.is_empty() {
        if !regular {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) if fds[1].revents().is_some_and(|r| !r.is_empty()) => return Ok(false),
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        match nix::unistd::write(fd, &data[..data.len().min(piece)]) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    //! The daemon's side of a relayed call against the fake engine, whose
    //! exec stream runs the real `odfs-agent relay` code against a fake agent.

    use super::*;
    use crate::agent::fake::{spawn_request, FakeAgent};
    use crate::backend::fake::Fake;
    use std::io::{Read, Write};

    /// What the agent is asked for a call of [`start_call`].
    const SPAWNED: &str = "spawn upcase call=7 fds [0, 1] + u:x:1000:1000::/:/bin/sh + u:x:1000:";

    /// A relayed call under way: its link, the launcher's end, the caller's
    /// stdin (to write) and stdout (to read), and the agent behind it.
    struct Running {
        link: RelayLink,
        launcher: UnixStream,
        stdin: Option<std::fs::File>,
        stdout: std::fs::File,
        agent: FakeAgent,
        _dir: tempfile::TempDir,
    }

    async fn start_call() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let agent = FakeAgent::serve(&socket).unwrap();
        let fake = Fake { relay_agent: Some(socket), ..Default::default() };
        let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let target = Target { id: "fake-0".into(), name: "c".into(), token: "t".into(), view: Arc::default() };
        // Asked to trace, with the caller's account lines beside the request:
        // the relay does not trace, and the lines go to the agent.
        let mut spawn = spawn_request(vec![0, 1]);
        spawn.passed.trace = true;
        let accounts = (Some("u:x:1000:1000::/:/bin/sh".to_string()), Some("u:x:1000:".to_string()));
        let launch = Launch { spawn, fds: Arc::new(vec![in_r, out_w]), args: vec![], image: "i".into(), accounts, channel: None, caller_uid: 1000 };
        let link = RelayLink::default();
        link.started();
        let started = match link.start(&fake, &target, launch).await {
            Ok(s) => s,
            Err(StartError::Refused(f)) => panic!("refused: {f}"),
            Err(StartError::Unreachable(e)) => panic!("unreachable: {e}"),
        };
        assert!(started.relayed);
        assert_eq!((started.pid, started.container.as_str()), (4242, "c"));
        Running { link, launcher: started.agent.unwrap(), stdin: Some(in_w.into()), stdout: out_r.into(), agent, _dir: dir }
    }

    /// Wait (a few seconds at most) until the link counts no running call.
    async fn settled(link: &RelayLink) -> AgentStatus {
        let mut finished = Vec::new();
        for _ in 0..500 {
            let s = link.status();
            finished.extend(s.finished);
            if s.running == 0 && !finished.is_empty() {
                return AgentStatus { running: 0, idle_ms: s.idle_ms, finished, memory: 0, beside: 0 };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the relayed call is still counted as running");
    }

    async fn next_event(launcher: &UnixStream) -> Option<AgentEvent> {
        let conn = launcher.try_clone().unwrap();
        tokio::task::spawn_blocking(move || protocol::recv::<AgentEvent>(&conn).unwrap().map(|(ev, _)| ev)).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relayed_call_carries_input_output_and_the_exit_status() {
        let mut c = start_call().await;
        assert_eq!(c.link.status().running, 1, "a call under way is busy");
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(b"hello relay").unwrap();
        drop(stdin);
        assert_eq!(next_event(&c.launcher).await, Some(AgentEvent::Exited(3)));
        let mut out = String::new();
        c.stdout.read_to_string(&mut out).unwrap();
        assert_eq!(out, "HELLO RELAY");
        let s = settled(&c.link).await;
        assert_eq!(s.finished.iter().map(|f| (f.pid, f.status)).collect::<Vec<_>>(), [(4242, 3)]);
        assert_eq!(c.agent.seen(), [SPAWNED, "exited 3"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signal_from_the_launcher_reaches_the_tool_and_its_death_comes_back() {
        let c = start_call().await;
        protocol::send(&c.launcher, &AgentRequest::Signal(libc::SIGTERM), &[]).unwrap();
        assert_eq!(next_event(&c.launcher).await, Some(AgentEvent::Signaled(libc::SIGTERM)));
        let s = settled(&c.link).await;
        assert_eq!(s.finished[0].status, 128 + libc::SIGTERM);
        assert_eq!(c.agent.seen(), [SPAWNED, format!("signal {}", libc::SIGTERM).as_str()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_launcher_that_goes_away_ends_the_call_there_and_counts_it_killed() {
        let c = start_call().await;
        // The caller's stdin stays open: only the launcher's end tells.
        drop(c.launcher);
        let s = settled(&c.link).await;
        assert_eq!(s.finished[0].status, 128 + libc::SIGKILL);
        for _ in 0..500 {
            if c.agent.seen().contains(&"dropped".to_string()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the agent still serves a call nobody follows: {:?}", c.agent.seen());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_asks_the_agent_through_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let agent = FakeAgent::serve(&socket).unwrap();
        let fake = Fake { relay_agent: Some(socket), ..Default::default() };
        let s = RelayLink::default().probe(&fake, "fake-0", "t", Duration::from_secs(5)).await.unwrap();
        assert_eq!((s.running, s.idle_ms), (0, 0));
        assert_eq!(agent.seen(), ["status"]);
        let none = Fake::default();
        assert!(RelayLink::default().probe(&none, "fake-0", "t", Duration::ZERO).await.is_err());
    }
}
