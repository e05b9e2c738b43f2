//! Framing of the messages between launcher, daemon and agent over unix
//! sockets, for the std side (daemon, agent, CLI). The messages themselves,
//! and their encoding, are `odfs_wire`'s, re-exported here: the launcher,
//! which runs without libc, speaks the same crate.

pub(crate) mod framing;
pub mod peer;
pub mod pty;
pub mod relay;
pub mod stages;
pub mod tally;

pub use framing::{read_frame, recv_some, write_frame, Frame, FrameError};
pub use odfs_wire::{
    AgentEvent, AgentRequest, CommandInfo, CommandStats, ContainerPhase, ContainerStatus, EngineInfo, ExecPath, ExecRequest, ImageUsage, Failure, Finished,
    Identity, ImageProgress, Passed, Request, Response, SpawnRequest, TtyRequest, ViewInfo, DEFAULT_PATH, EXIT_NOT_FOUND,
    EXIT_ODFS_ERROR, MAX_FDS, MAX_FRAME, PROTOCOL_VERSION, RLIMITS_ENV, TOKEN_ENV,
};

use serde::{Deserialize, Serialize};

/// One frame as bytes, for a stream that carries no fds (the relay, a
/// refusal written straight to a socket): length (u32, little endian) and body.
pub fn frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = encode(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Try `attempt` every 5 ms until it succeeds or `limit` has passed (then
/// its last error): for an agent whose socket may not listen yet.
pub fn retry<T, E>(limit: std::time::Duration, mut attempt: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let start = std::time::Instant::now();
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}

/// Encode a message body (framing adds the length).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    odfs_wire::encode(msg).map_err(|e| FrameError::Encode(e.to_string()))
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FrameError> {
    odfs_wire::decode(bytes).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Send one message with optional fds.
pub fn send<T: Serialize>(
    sock: &std::os::unix::net::UnixStream,
    msg: &T,
    fds: &[std::os::fd::RawFd],
) -> Result<(), FrameError> {
    write_frame(sock, &encode(msg)?, fds)
}

/// Receive one message and the fds that came with it. `Ok(None)` on a clean EOF.
pub fn recv<T: for<'a> Deserialize<'a>>(
    sock: &std::os::unix::net::UnixStream,
) -> Result<Option<(T, Vec<std::os::fd::OwnedFd>)>, FrameError> {
    match read_frame(sock)? {
        None => Ok(None),
        Some((body, fds)) => Ok(Some((decode(&body)?, fds))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::fd::AsRawFd;

    /// The launcher reads a terminal's settings with TCGETS (it has no libc);
    /// the agent gives them to glibc's tcsetattr. Pinned against glibc on a
    /// real pty, in raw mode too.
    #[test]
    fn the_launchers_termios_is_glibcs() {
        use odfs_wire::tty::{libc_termios, make_raw, KERNEL_TERMIOS, LIBC_TERMIOS};
        assert_eq!(std::mem::size_of::<libc::termios>(), LIBC_TERMIOS);
        let pty = nix::pty::openpty(None, None).unwrap();
        let fd = pty.slave.as_raw_fd();
        let glibc = |fd| {
            // SAFETY: tcgetattr fills the zeroed struct, viewed as bytes after.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                assert_eq!(libc::tcgetattr(fd, &mut t), 0);
                std::slice::from_raw_parts((&t as *const libc::termios).cast::<u8>(), LIBC_TERMIOS).to_vec()
            }
        };
        let kernel = |fd| {
            let mut k = [0u8; KERNEL_TERMIOS];
            // SAFETY: TCGETS fills the kernel's struct termios.
            assert_eq!(unsafe { libc::ioctl(fd, libc::TCGETS, k.as_mut_ptr()) }, 0);
            k
        };
        assert_eq!(libc_termios(&kernel(fd)).to_vec(), glibc(fd));
        let mut raw = kernel(fd);
        make_raw(&mut raw);
        // SAFETY: as above; cfmakeraw edits the struct glibc filled.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(fd, &mut t);
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        assert_eq!(kernel(fd), raw);
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..64)
    }

    proptest! {
        #[test]
        fn exec_request_round_trips(command in "[a-z0-9._+-]{1,40}",
                                    args in proptest::collection::vec(bytes(), 0..8),
                                    env in proptest::collection::vec(bytes(), 0..8),
                                    fds in proptest::collection::vec(0i32..1024, 0..4)) {
            let tty = (fds.len() % 2 == 0).then(|| TtyRequest { targets: vec![0, 1], rows: 24, cols: 80, xpixel: 0, ypixel: 0, termios: vec![1; 60] });
            let passed = Passed { channel: args.len() % 2 == 0, trace: fds.len() % 3 == 0, fds, tty };
            let req = Request::Exec(ExecRequest { version: PROTOCOL_VERSION, command, args, env, passed });
            let back: Request = decode(&encode(&req).unwrap()).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn byte_strings_encode_as_sequences_of_bytes_did(args in proptest::collection::vec(bytes(), 0..8)) {
            // The wire format of older builds: a list of sequences of u8.
            #[derive(Serialize)]
            struct Plain<'a> { args: &'a Vec<Vec<u8>>, env: &'a Vec<Vec<u8>> }
            let req = ExecRequest { version: 1, command: "c".into(), args: args.clone(), env: args.clone(), passed: Passed { channel: true, ..Default::default() } };
            let plain = postcard::to_stdvec(&(1u32, "c", Plain { args: &args, env: &args }, Vec::<i32>::new(), Option::<TtyRequest>::None, false, true)).unwrap();
            prop_assert_eq!(encode(&req).unwrap(), plain);
        }

        #[test]
        fn spawn_round_trips_through_a_socket(program in bytes(), argv in proptest::collection::vec(bytes(), 0..6),
                                              uid in any::<u32>(), groups in proptest::collection::vec(any::<u32>(), 0..5)) {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let msg = AgentRequest::Spawn(Box::new(SpawnRequest {
                version: PROTOCOL_VERSION, call_id: uid as u64, token: "t".into(), program, argv, env: vec![], cwd: b"/tmp".to_vec(),
                identity: Identity { uid, gid: uid, groups, passwd_line: None, group_line: None, caps: 0 },
                passed: Passed { fds: vec![0], trace: uid % 2 == 0, ..Default::default() },
            }));
            send(&a, &msg, &[0]).unwrap();
            send(&a, &AgentRequest::Signal(15), &[]).unwrap();
            let (got, fds) = recv::<AgentRequest>(&b).unwrap().unwrap();
            prop_assert_eq!(got, msg);
            prop_assert_eq!(fds.len(), 1);
            let (second, fds) = recv::<AgentRequest>(&b).unwrap().unwrap();
            prop_assert_eq!(second, AgentRequest::Signal(15));
            prop_assert!(fds.is_empty());
            drop(a);
            prop_assert!(recv::<AgentRequest>(&b).unwrap().is_none());
        }
    }
}
