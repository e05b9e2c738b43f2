//! Handing a live mount from one daemon process to the next: the FUSE
//! connection (`/dev/fuse` fd), the control socket's listening fd and the
//! pool's state go over a root-only socket, so an upgrade or a restart
//! never unmounts, never refuses a connection, and starts no container.
//!
//! The exchange, one JSON frame each way (fds attached to `Handing`):
//! `Hello{version}` → the old daemon stops accepting, lets what is under
//! way finish, pauses its FUSE threads between requests → `Handing{state}`
//! with the fds → the new one serves → `Serving` → the old one exits without
//! unmounting. A new daemon of another takeover version gets `Incompatible`
//! and may ask for `Stop`: the old one then stops as for SIGTERM (unmount,
//! idle containers removed) and closes the socket when it is done, and the
//! new one mounts afresh. If the new one goes away before `Serving`, the
//! old one serves on.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::pool::Handed;
use crate::fuse::abi::Init;
use crate::protocol::framing::{read_frame, write_frame};

/// Bumped when `State` or the exchange changes incompatibly.
pub const VERSION: u32 = 1;

/// How long a new daemon waits for the old one to let go (its requests
/// under way finish first, 10 s at most).
const HANDING_LIMIT: Duration = Duration::from_secs(30);

/// How long the old daemon waits for the new one to serve before serving on.
pub const SERVING_LIMIT: Duration = Duration::from_secs(30);

/// What a daemon passes on besides its fds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The FUSE INIT agreed with the kernel (what the connection can do).
    pub init: Option<Init>,
    /// The key of `ODFS_CALLER` stamps, hex: running tools keep theirs.
    pub stamps: String,
    /// The pool's containers.
    pub containers: Vec<Handed>,
    /// The mountpoint served (a successor for another one is refused).
    pub mountpoint: PathBuf,
}

impl State {
    pub fn stamps_secret(&self) -> Option<[u8; 32]> {
        let bytes: Vec<u8> = (0..self.stamps.len() / 2).map(|i| u8::from_str_radix(self.stamps.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<_>>()?;
        bytes.try_into().ok()
    }

    pub fn with_secret(mut self, secret: [u8; 32]) -> State {
        self.stamps = secret.iter().map(|b| format!("{b:02x}")).collect();
        self
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Hello { version: u32, mountpoint: PathBuf },
    Incompatible { version: u32 },
    Refused { why: String },
    Handing { state: State },
    Serving,
    Stop,
}

fn send(sock: &UnixStream, msg: &Msg, fds: &[std::os::fd::RawFd]) -> anyhow::Result<()> {
    write_frame(sock, &serde_json::to_vec(msg)?, fds)?;
    Ok(())
}

fn recv(sock: &UnixStream) -> anyhow::Result<Option<(Msg, Vec<OwnedFd>)>> {
    let Some((body, fds)) = read_frame(sock)? else { return Ok(None) };
    Ok(Some((serde_json::from_slice(&body).context("a takeover message of another odfs")?, fds)))
}

/// The takeover socket beside the control socket's run dir: root's alone.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("takeover.sock")
}

/// What a new daemon took over.
pub struct Taken {
    pub fuse: OwnedFd,
    pub control: OwnedFd,
    pub state: State,
    /// Tell the old daemon once serving (it exits then).
    pub from: UnixStream,
}

impl Taken {
    pub fn serving(&self) {
        if let Err(e) = send(&self.from, &Msg::Serving, &[]) {
            tracing::warn!("the previous daemon did not hear that this one serves: {e}");
        }
    }
}

/// Ask a daemon serving `mountpoint` to hand it over. `Ok(None)`: nobody
/// listens (no daemon, or one that stopped, or one too old to hand over).
/// A daemon of another takeover version is asked to stop instead, and
/// `Ok(None)` comes once it has: the caller mounts afresh.
pub fn take(run_dir: &Path, mountpoint: &Path) -> anyhow::Result<Option<Taken>> {
    let path = socket_path(run_dir);
    let sock = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    sock.set_read_timeout(Some(HANDING_LIMIT))?;
    send(&sock, &Msg::Hello { version: VERSION, mountpoint: mountpoint.to_path_buf() }, &[])?;
    match recv(&sock)? {
        Some((Msg::Handing { state }, fds)) => {
            let [fuse, control]: [OwnedFd; 2] = fds.try_into().map_err(|_| anyhow::anyhow!("the previous daemon handed over the wrong fds"))?;
            Ok(Some(Taken { fuse, control, state, from: sock }))
        }
        Some((Msg::Incompatible { version }, _)) => {
            tracing::warn!(theirs = version, ours = VERSION, "the running daemon hands over another way: asking it to stop, then mounting afresh");
            send(&sock, &Msg::Stop, &[])?;
            sock.set_read_timeout(Some(Duration::from_secs(60)))?;
            // It closes the socket once stopped.
            let _ = recv(&sock);
            Ok(None)
        }
        Some((Msg::Refused { why }, _)) => bail!("the running daemon will not hand over: {why}"),
        Some(_) => bail!("unexpected takeover answer"),
        None => bail!("the running daemon closed the takeover socket without handing over (see its log)"),
    }
}

/// The old daemon's side of one takeover connection.
pub struct Offer {
    pub sock: UnixStream,
}

/// What a successor asked for.
pub enum Asked {
    /// Hand over (same version, same mountpoint).
    Handover(Offer),
    /// Stop as for SIGTERM, then close the socket.
    Stop(UnixStream),
    /// `odfs restart` under systemd: run the binary anew in this process,
    /// which stays the unit's main process; answer on this connection once
    /// the new image serves.
    InPlace(UnixStream),
}

/// Read a successor's hello on a connection the takeover listener accepted.
/// Only root may ask; a daemon for another mountpoint is refused.
pub fn hello(sock: UnixStream, mountpoint: &Path) -> anyhow::Result<Option<Asked>> {
    let peer = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)?;
    if peer.uid() != 0 {
        let _ = send(&sock, &Msg::Refused { why: "only root may take the mount over".into() }, &[]);
        return Ok(None);
    }
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let Some((msg, _)) = recv(&sock)? else { return Ok(None) };
    match msg {
        Msg::Hello { version, .. } if version != VERSION => {
            send(&sock, &Msg::Incompatible { version: VERSION }, &[])?;
            sock.set_read_timeout(Some(Duration::from_secs(60)))?;
            Ok(match recv(&sock)? {
                Some((Msg::Stop, _)) => Some(Asked::Stop(sock)),
                _ => None,
            })
        }
        Msg::Hello { mountpoint: theirs, .. } if theirs != mountpoint => {
            let why = format!("it serves {}, not {}", mountpoint.display(), theirs.display());
            send(&sock, &Msg::Refused { why }, &[])?;
            Ok(None)
        }
        Msg::Hello { .. } => Ok(Some(Asked::Handover(Offer { sock }))),
        _ => Ok(None),
    }
}

impl Offer {
    /// Send the state and fds, and wait for the successor to serve. False:
    /// it did not (gone, or silent past [`SERVING_LIMIT`]), so serve on.
    pub fn hand(&self, state: &State, fuse: &impl AsRawFd, control: &impl AsRawFd) -> bool {
        let sent = send(&self.sock, &Msg::Handing { state: state.clone() }, &[fuse.as_raw_fd(), control.as_raw_fd()]);
        if let Err(e) = sent {
            tracing::warn!("cannot hand over: {e}");
            return false;
        }
        let _ = self.sock.set_read_timeout(Some(SERVING_LIMIT));
        matches!(recv(&self.sock), Ok(Some((Msg::Serving, _))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamps_key_survives_its_text_form() {
        let s = State::default().with_secret([7; 32]);
        assert_eq!(s.stamps_secret(), Some([7; 32]));
        assert_eq!(State { stamps: "zz".into(), ..State::default() }.stamps_secret(), None);
    }

    #[test]
    fn a_successor_of_another_version_is_asked_to_stop_and_one_for_another_mount_is_refused() {
        let mount = Path::new("/opt/od/bin");
        let (a, b) = UnixStream::pair().unwrap();
        let new = std::thread::spawn(move || {
            send(&b, &Msg::Hello { version: VERSION + 1, mountpoint: mount.into() }, &[]).unwrap();
            let (m, _) = recv(&b).unwrap().unwrap();
            assert!(matches!(m, Msg::Incompatible { version: VERSION }));
            send(&b, &Msg::Stop, &[]).unwrap();
        });
        assert!(matches!(hello(a, mount).unwrap(), Some(Asked::Stop(_))));
        new.join().unwrap();

        let (a, b) = UnixStream::pair().unwrap();
        send(&b, &Msg::Hello { version: VERSION, mountpoint: "/elsewhere".into() }, &[]).unwrap();
        assert!(hello(a, mount).unwrap().is_none());
        assert!(matches!(recv(&b).unwrap().unwrap().0, Msg::Refused { .. }));
    }
}
