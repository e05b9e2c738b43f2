//! Calls on a remote engine. No fd crosses machines, so the daemon runs
//! `odfs-agent relay` in the container through the engine's exec API and
//! stands between it and the launcher: the caller's stdin goes out as
//! frames, the tool's output comes back into the caller's fds, and the
//! launcher gets a connection that speaks the agent's protocol (signals,
//! job control, resize, the end) as on the local path.
//!
//! Threads, not tasks, touch the caller's fds: they may be files, pipes or
//! terminals in blocking mode, and their flags are shared with the caller.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use futures_util::StreamExt;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::agent_client::AgentStatus;
use super::exec::{Refusal, StartError, Started};
use super::pool::{Ready, RelayedCall, AGENT_IN_CONTAINER, SOCKET_IN_CONTAINER};
use crate::backend::{ContainerBackend, ExecInput, ExecOutput};
use crate::protocol::relay::{frame, Decoder, RelayIn, RelayOut, CHUNK, PTY};
use crate::protocol::{self, AgentEvent, AgentRequest, SpawnRequest, EXIT_ODFS_ERROR};

fn relay_command() -> Vec<String> {
    [AGENT_IN_CONTAINER, "relay", "--socket", SOCKET_IN_CONTAINER].map(String::from).to_vec()
}

/// Read the relay's frames from an exec's output until one arrives; what
/// it writes on stderr is its own complaint, logged.
async fn next_out(output: &mut ExecOutput, decoder: &mut Decoder) -> std::io::Result<Option<RelayOut>> {
    loop {
        if let Some(m) = decoder.next().map_err(std::io::Error::other)? {
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
pub async fn status<B: ContainerBackend>(backend: &B, id: &str, token: String) -> std::io::Result<AgentStatus> {
    let mut stream = backend.exec_stream(id, relay_command()).await.map_err(std::io::Error::other)?;
    send(&mut stream.input, &RelayIn::Status { token }).await?;
    match next_out(&mut stream.output, &mut Decoder::default()).await? {
        Some(RelayOut::Event(AgentEvent::Status { running, idle_ms, finished })) => Ok(AgentStatus { running, idle_ms, finished }),
        Some(RelayOut::Event(AgentEvent::Failed { message, .. })) => Err(std::io::Error::other(message)),
        other => Err(std::io::Error::other(format!("unexpected answer from the relay: {other:?}"))),
    }
}

/// The caller's standard fds a relayed call serves, by number.
pub struct CallerFds {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Start a call through the relay; on `Started`, the launcher's end of a
/// connection the daemon serves until the tool ends.
pub async fn start<B: ContainerBackend>(backend: &B, ready: &Ready, mut spawn: SpawnRequest, fds: CallerFds) -> Result<Started, StartError> {
    let unreachable = |e: String| StartError::Unreachable(e);
    let mut stream = backend.exec_stream(&ready.id, relay_command()).await.map_err(|e| unreachable(e.to_string()))?;
    spawn.fds.retain(|fd| match fd {
        0 => fds.stdin.is_some(),
        1 => fds.stdout.is_some(),
        2 => fds.stderr.is_some(),
        _ => false,
    });
    let tty = spawn.tty.clone();
    send(&mut stream.input, &RelayIn::Spawn(Box::new(spawn))).await.map_err(|e| unreachable(e.to_string()))?;
    let mut decoder = Decoder::default();
    let pid = match next_out(&mut stream.output, &mut decoder).await {
        Ok(Some(RelayOut::Event(AgentEvent::Started { pid }))) => pid,
        Ok(Some(RelayOut::Event(AgentEvent::Failed { message, exit_code }))) => return Err(StartError::Refused(Refusal { message, exit_code })),
        Ok(other) => return Err(unreachable(format!("unexpected answer from the relay: {other:?}"))),
        Err(e) => return Err(unreachable(e.to_string())),
    };
    let fail = |e: std::io::Error| StartError::Refused(Refusal { message: format!("cannot set up the relay: {e}"), exit_code: EXIT_ODFS_ERROR });
    // In pty mode the launcher relays its terminal to a local pty; its
    // slave, raw, carries the bytes to and from the tool's real pty, whose
    // line discipline (the caller's settings) does the rest.
    let (master, slave) = match &tty {
        Some(t) => {
            let ws = nix::pty::Winsize { ws_row: t.rows, ws_col: t.cols, ws_xpixel: t.xpixel, ws_ypixel: t.ypixel };
            let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| fail(e.into()))?;
            let mut raw = nix::sys::termios::tcgetattr(&pty.slave).map_err(|e| fail(e.into()))?;
            nix::sys::termios::cfmakeraw(&mut raw);
            nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &raw).map_err(|e| fail(e.into()))?;
            (Some(pty.master), Some(pty.slave))
        }
        None => (None, None),
    };
    let (launcher, ours) = UnixStream::pair().map_err(fail)?;
    let call = ready.relayed_call(pid);
    tokio::spawn(follow(stream.output, stream.input, decoder, fds, ours, slave, call));
    Ok(Started { agent: launcher, pid, container: ready.container.clone(), pty_master: master, relayed: true })
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

/// Write what the call sends to the relay, control first. Its own task:
/// while it waits for the relay to take input, output keeps flowing the
/// other way (else a tool that reads and writes much, like `cat`, would
/// deadlock with the relay).
async fn write_input(mut input: ExecInput, mut control: mpsc::UnboundedReceiver<RelayIn>, mut data: mpsc::Receiver<RelayIn>) -> std::io::Error {
    loop {
        let msg = tokio::select! {
            biased;
            Some(m) = control.recv() => m,
            Some(m) = data.recv() => m,
            else => std::future::pending().await,
        };
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
    mut call: RelayedCall,
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
    if let Some(s) = &slave {
        let (tx, stop, s) = (to_relay.clone(), stop_r.clone(), s.try_clone().expect("dup the pty slave"));
        std::thread::spawn(move || read_input(&s, &stop, &tx, false));
    }
    {
        let (tx, stop, conn) = (to_relay.clone(), stop_r.clone(), launcher.try_clone().expect("dup the launcher connection"));
        std::thread::spawn(move || read_launcher(&conn, &stop, &tx));
    }
    let (out_tx, out_rx) = mpsc::channel::<Out>(64);
    let writer = {
        let targets = [(1, fds.stdout), (2, fds.stderr), (PTY, slave)];
        let tx = to_relay.clone();
        tokio::task::spawn_blocking(move || write_output(out_rx, targets, launcher, tx))
    };
    drop(to_relay);
    let mut inputs = tokio::spawn(write_input(input, control_rx, data_rx));
    let end = loop {
        tokio::select! {
            out = next_out(&mut output, &mut decoder) => match out {
                Ok(Some(RelayOut::Output { fd, data })) => {
                    if out_tx.send(Out::Data(fd, data.into())).await.is_err() {
                        break None;
                    }
                }
                Ok(Some(RelayOut::Event(ev @ AgentEvent::Stopped(_)))) => {
                    let _ = out_tx.send(Out::Event(ev)).await;
                }
                Ok(Some(RelayOut::Event(ev))) => break Some(ev),
                Ok(None) => break Some(lost("the relay ended without the tool's status")),
                Err(e) => break Some(lost(&e.to_string())),
            },
            failed = &mut inputs => break Some(lost(&failed.map_or_else(|e| e.to_string(), |e| e.to_string()))),
            _ = gone.recv() => break None,
        }
    };
    inputs.abort();
    if let Some(ev) = end {
        call.finish(match ev {
            AgentEvent::Exited(c) => c,
            AgentEvent::Signaled(s) | AgentEvent::Killed { signal: s, .. } => 128 + s,
            AgentEvent::Failed { exit_code, .. } => exit_code,
            _ => EXIT_ODFS_ERROR,
        });
        let _ = out_tx.send(Out::Event(ev)).await;
    }
    drop(out_tx);
    let _ = writer.await;
    // Ends the reader threads; dropping the streams closes the exec, so a
    // relay still running (its caller gone) kills the tool.
    drop(stop_w);
}

fn lost(why: &str) -> AgentEvent {
    AgentEvent::Failed { message: format!("lost the remote engine while the tool ran ({why})"), exit_code: EXIT_ODFS_ERROR }
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
            Ok(0) | Err(_) if ends => {
                let _ = tx.data.blocking_send(RelayIn::InputEnd);
                return;
            }
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
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
/// launcher, in order. A reader that went away gets the tool a SIGPIPE, as
/// its write would have natively.
fn write_output(mut rx: mpsc::Receiver<Out>, targets: [(i32, Option<OwnedFd>); 3], launcher: UnixStream, tx: ToRelay) {
    let mut broken = Vec::new();
    while let Some(out) = rx.blocking_recv() {
        match out {
            Out::Data(fd, data) => {
                let Some(file) = targets.iter().find(|(t, _)| *t == fd).and_then(|(_, f)| f.as_ref()) else { continue };
                if broken.contains(&fd) {
                    continue;
                }
                if let Err(e) = write_all(file.as_raw_fd(), &data) {
                    broken.push(fd);
                    if e.raw_os_error() == Some(libc::EPIPE) {
                        let _ = tx.control.send(RelayIn::Signal(libc::SIGPIPE));
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

fn write_all(fd: RawFd, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: the caller's fd stays open while the call runs; ManuallyDrop
    // keeps the File from closing it.
    let mut f = std::mem::ManuallyDrop::new(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    f.write_all(data)
}
