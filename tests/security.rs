//! The privilege boundary and hostile input: only the daemon may use an
//! agent, nothing inside a container may use the control socket, and
//! malformed names, frames and working directories are refused without
//! harm to the mount.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use odfs::protocol::{self, AgentEvent, AgentRequest, ExecRequest, Request, Response, PROTOCOL_VERSION};

/// A frame as the protocol writes it: little-endian length, then the body.
fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    protocol::frame(msg).unwrap()
}

/// Catalog of socat from the shipped netutils image, as the calling user
/// (root here, like a `user = "root"` image's tools).
const SOCAT_CATALOG: &str = "[image.nu]\nref = \"odfs/netutils:latest\"\nnetwork = \"none\"\ncommands = [\"socat\"]\n";

/// Send `bytes` to a unix socket from inside a container (socat through the
/// mount) and return what came back.
fn from_a_container(m: &TestMount, socket: &Path, bytes: &[u8]) -> Vec<u8> {
    std::fs::write(m.work.join("request.bin"), bytes).unwrap();
    // A peer refused at accept gets its answer and a closed socket at once:
    // the request goes out a moment after socat (warm by then) connects,
    // so that socat, which stops at a failed write, has the answer first.
    let o = m.sh(&format!(
        r#""$M/socat" -V >/dev/null; {{ sleep 0.5; cat request.bin; }} | "$M/socat" -t 3 - UNIX-CONNECT:{} > answer.bin"#,
        socket.display()
    ));
    let answer = std::fs::read(m.work.join("answer.bin")).unwrap();
    assert!(o.status.success() || !answer.is_empty(), "socat: {}", stderr(&o));
    answer
}

fn decode_response(bytes: &[u8]) -> Response {
    assert!(bytes.len() >= 4, "no answer: {bytes:?}");
    protocol::decode(&bytes[4..]).unwrap()
}

#[test]
fn root_inside_a_container_cannot_use_the_control_socket_as_root() {
    // The test state dir is under /tmp, which containers share: the socket
    // is reachable from inside. A process there (socat runs as this test's
    // root) without its tool's stamp is refused, for an admin request and
    // for a tool alike.
    let m = TestMount::new(SOCAT_CATALOG);
    let exec = Request::Exec(odfs::protocol::ExecRequest {
        version: odfs::protocol::PROTOCOL_VERSION,
        command: "socat".into(),
        args: vec![b"-V".to_vec()],
        env: vec![],
        passed: Default::default(),
    });
    for request in [Request::List, exec] {
        let answer = from_a_container(&m, &m.socket, &frame(&request));
        match decode_response(&answer) {
            Response::Error(odfs::protocol::Failure { message, exit_code }) => {
                assert_eq!(exit_code, 126);
                assert!(message.contains("inside a container, odfs serves only tools run from a tool odfs started"), "{message}");
            }
            other => panic!("answered {other:?}"),
        }
    }
}

#[test]
fn a_tool_inside_a_container_cannot_use_another_containers_agent() {
    let mut catalog = BUSYBOX_CATALOG.to_string();
    catalog.push_str(SOCAT_CATALOG);
    let m = TestMount::new(&catalog);
    // The busybox container, and its agent's socket (its run dir is in the
    // shared /tmp here, so the other container can reach it).
    assert!(m.sh(r#""$M/true""#).status.success());
    let agent = agent_sockets(&m.state);
    assert_eq!(agent.len(), 1, "{agent:?}");
    let guess = AgentRequest::Status { token: "0".repeat(32) };
    let answer = from_a_container(&m, &agent[0], &frame(&guess));
    assert!(answer.is_empty(), "the agent answered a request without its token: {answer:?}");
    // And it still serves the daemon.
    assert_eq!(stdout(&m.sh(r#""$M/echo" served"#)), "served\n");
    // The token is not left in the agent's environment block either, where
    // root in the container could read it (/proc/PID/environ).
    let c = m.containers()[0].clone();
    let token = stdout(&docker(&["inspect", "-f", "{{index .Config.Labels \"io.odfs.token\"}}", &c])).trim().to_string();
    assert_eq!(token.len(), 32, "{token:?}");
    // The agent is not dumpable either (a spawn's child shares its memory
    // as the caller's uid until its exec): root in the container, without
    // CAP_SYS_PTRACE, cannot open the block or the memory at all.
    for file in ["environ", "mem"] {
        let o = docker(&["exec", &c, "cat", &format!("{}/{file}", agent_proc(&c))]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success() && stderr(&o).contains("denied"), "the agent's /proc/PID/{file} is readable: {text:?} {}", stderr(&o));
        assert!(!text.contains(&token), "the token is readable in the agent's /proc/PID/{file}");
    }
}

fn agent_sockets(state: &Path) -> Vec<PathBuf> {
    let dir = state.join("run/containers");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path().join("agent.sock"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
}

#[test]
fn the_agent_answers_only_requests_with_its_token() {
    let dir = tempdir("agent-token");
    let socket = dir.join("agent.sock");
    let mut agent = Command::new(agent())
        .args(["--socket", socket.to_str().unwrap(), "--allow-local-peers"])
        .env(odfs::agent::TOKEN_ENV, "right-token")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || UnixStream::connect(&socket).is_ok()));
    let ask = |token: &str| {
        let conn = UnixStream::connect(&socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        protocol::send(&conn, &AgentRequest::Status { token: token.into() }, &[]).unwrap();
        protocol::recv::<AgentEvent>(&conn).unwrap().map(|(e, _)| e)
    };
    assert_eq!(ask("wrong-token"), None);
    assert_eq!(ask("right-tokem"), None);
    assert!(matches!(ask("right-token"), Some(AgentEvent::Status { .. })));
    // A spawn with a wrong token starts nothing.
    let conn = UnixStream::connect(&socket).unwrap();
    let spawn = host_spawn("wrong-token", b"/bin/touch", vec![b"touch".to_vec(), dir.join("pwned").into_os_string().into_encoded_bytes()]);
    protocol::send(&conn, &spawn, &[]).unwrap();
    assert!(protocol::recv::<AgentEvent>(&conn).unwrap().is_none());
    assert!(!dir.join("pwned").exists());
    agent.kill().unwrap();
    let mut err = String::new();
    agent.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    agent.wait().unwrap();
    assert!(err.contains("refused a request without this container's token"), "{err}");
    // The spawn's line names its call, to be found from the daemon's log.
    assert!(err.contains("odfs-agent: refused a request without this container's token (it claims call=1)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A spawn request of a host program as root in `/`, for an agent run on the host.
fn host_spawn(token: &str, program: &[u8], argv: Vec<Vec<u8>>) -> AgentRequest {
    AgentRequest::Spawn(Box::new(odfs::protocol::SpawnRequest {
        version: PROTOCOL_VERSION,
        call_id: 1,
        token: token.into(),
        program: program.to_vec(),
        argv,
        env: vec![],
        cwd: b"/".to_vec(),
        identity: odfs::protocol::Identity { uid: 0, gid: 0, groups: vec![], passwd_line: None, group_line: None, caps: 0 },
        passed: Default::default(),
    }))
}

/// The host's `/bin/sh -c SCRIPT` as root (an agent without a token).
fn sh_spawn(script: &str) -> AgentRequest {
    host_spawn("", b"/bin/sh", vec![b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()])
}

#[test]
fn a_launcher_that_does_not_read_holds_up_no_other_tool() {
    // One agent serves every caller of its container: a caller whose
    // launcher stops reading (stopped, or hostile) while its tool stops
    // over and over must not hold up the reports of anyone else's tools.
    let dir = tempdir("agent-unread");
    let socket = dir.join("agent.sock");
    /// The agent and the stopper's group, killed even when the test fails.
    struct Cleanup(std::process::Child, i32);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if self.1 > 0 {
                // SAFETY: plain kill(2) of the tool's group (it leads its session).
                unsafe { libc::kill(-self.1, libc::SIGKILL) };
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut running = Cleanup(Command::new(agent()).args(["--socket", socket.to_str().unwrap(), "--allow-local-peers"]).spawn().unwrap(), 0);
    assert!(eventually(Duration::from_secs(5), || UnixStream::connect(&socket).is_ok()));
    let unread = UnixStream::connect(&socket).unwrap();
    // Its tool stops itself 3000 times; a helper continues it each time.
    let script = "(while kill -CONT $$ 2>/dev/null; do :; done) & i=0; while [ $i -lt 3000 ]; do kill -STOP $$; i=$((i+1)); done; kill $!";
    protocol::send(&unread, &sh_spawn(script), &[]).unwrap();
    running.1 = match protocol::recv::<AgentEvent>(&unread).unwrap() {
        Some((AgentEvent::Started { pid }, _)) => pid,
        other => panic!("{other:?}"),
    };
    // Another caller's tool starts and its end arrives meanwhile, again and again.
    for _ in 0..20 {
        let conn = UnixStream::connect(&socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        protocol::send(&conn, &sh_spawn("exit 3"), &[]).unwrap();
        assert!(matches!(protocol::recv::<AgentEvent>(&conn).unwrap(), Some((AgentEvent::Started { .. }, _))));
        assert_eq!(protocol::recv::<AgentEvent>(&conn).unwrap().map(|(e, _)| e), Some(AgentEvent::Exited(3)));
    }
    // The stopper is still reported, in order, once its launcher reads.
    let mut stops = 0;
    unread.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let end = loop {
        match protocol::recv::<AgentEvent>(&unread).unwrap() {
            Some((AgentEvent::Stopped(_), _)) => stops += 1,
            other => break other.map(|(e, _)| e),
        }
    };
    assert!(stops >= 1, "no stop reported");
    assert_eq!(end, Some(AgentEvent::Exited(0)));
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/odfs-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn hostile_names_in_the_mount_are_just_not_there() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let long = "x".repeat(4096);
    let script = format!(
        r#"for n in ... ../cat 'a b' "$(printf 'caf\351')" "$(printf 'ca\001t')" {long}; do
             if [ -e "$M/$n" ]; then echo "exists: $n"; fi
           done"#
    );
    let o = m.sh(&script);
    assert_eq!(stdout(&o), "", "{}", stderr(&o));
    let names: Vec<String> = std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 18, "{names:?}");
    // Nothing can be created in the mount, under any name.
    let o = m.sh(r#"touch "$M/new" 2>&1; mkdir "$M/d" 2>&1; ln -s /bin/sh "$M/sh2" 2>&1; true"#);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    assert!(stdout(&o).lines().all(|l| l.contains("Read-only file system")), "{}", stdout(&o));
    assert_eq!(stdout(&m.sh(r#""$M/echo" still-fine"#)), "still-fine\n");
}

#[test]
fn hostile_frames_on_the_control_socket_are_dropped_and_the_daemon_serves_on() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let send_raw = |bytes: &[u8]| -> Vec<u8> {
        let mut conn = UnixStream::connect(&m.socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = conn.write_all(bytes);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        answer
    };
    // A length far beyond the limit, garbage inside a sane length, a
    // truncated frame, an empty connection: each is dropped unanswered.
    assert!(send_raw(&u32::MAX.to_le_bytes()).is_empty());
    let mut garbage = 64u32.to_le_bytes().to_vec();
    garbage.extend((0..64).map(|i| (i * 37 % 251) as u8));
    assert!(send_raw(&garbage).is_empty());
    assert!(send_raw(&100u32.to_le_bytes()[..]).is_empty());
    assert!(send_raw(&[]).is_empty());
    // Well-formed requests for names that cannot exist are refused as unknown.
    for command in ["../../bin/sh", "a/b", "nul\0byte", &"y".repeat(4096), ""] {
        let req = Request::Exec(ExecRequest {
            version: PROTOCOL_VERSION,
            command: command.to_string(),
            args: vec![],
            env: vec![],
            passed: Default::default(),
        });
        match decode_response(&send_raw(&frame(&req))) {
            Response::Error(odfs::protocol::Failure { exit_code: 127, .. }) => {}
            other => panic!("{command:?}: {other:?}"),
        }
    }
    // A frame that claims the largest size allowed and then stalls does not
    // hold up anyone else.
    let mut stalled = UnixStream::connect(&m.socket).unwrap();
    stalled.write_all(&(protocol::MAX_FRAME as u32).to_le_bytes()).unwrap();
    let o = m.sh(r#""$M/echo" served"#);
    assert_eq!(stdout(&o), "served\n", "{}", stderr(&o));
    drop(stalled);
    assert!(m.log_text().contains("bad request"), "{}", m.log_text());
}

#[test]
fn a_caller_tool_gets_the_environment_as_it_is_but_the_image_s_path() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let o = m.sh(r#"LD_LIBRARY_PATH=/tmp SECRET_TOKEN=1 TERM=xterm LC_ALL=C ODFS_CALLER=forged PATH="/evil:$PATH" "$M/env""#);
    let env = stdout(&o);
    for var in ["TERM=xterm", "LC_ALL=C", "SECRET_TOKEN=1", "LD_LIBRARY_PATH=/tmp"] {
        assert!(env.lines().any(|l| l == var), "{var} missing: {env}");
    }
    assert!(!env.contains("/evil") && !env.contains("ODFS_CALLER=forged"), "{env}");
    let path = format!("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{}", m.mnt.display());
    assert!(env.lines().any(|l| l == path), "{env}");
}

#[test]
fn a_working_directory_reached_through_a_symlink_counts_where_it_really_is() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    // /tmp is shared with containers, /etc is not: a link in /tmp to /etc
    // does not make /etc shared.
    let link = m.work.join("etc-link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let o = m.sh(r#"cd etc-link && "$M/cat" hostname"#);
    assert_eq!(shell_status(&o), 126);
    assert!(stderr(&o).starts_with("odfs: cat: working directory /etc is not shared with image bb"), "{}", stderr(&o));
}

#[test]
fn a_channel_that_is_not_a_socketpair_of_the_callers_is_refused_and_never_written_to() {
    use std::os::fd::AsRawFd;
    let m = TestMount::new(BUSYBOX_CATALOG);
    let exec = |channel: i32| -> Response {
        let conn = UnixStream::connect(&m.socket).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let req = Request::Exec(ExecRequest {
            version: PROTOCOL_VERSION,
            command: "true".into(),
            args: vec![],
            env: vec![],
            passed: odfs::protocol::Passed { channel: true, ..Default::default() },
        });
        protocol::send(&conn, &req, &[channel]).unwrap();
        protocol::recv::<Response>(&conn).unwrap().expect("an answer").0
    };
    let refused = |r: Response, what: &str| match r {
        Response::Error(f) => assert!(f.message.contains("channel") && f.exit_code == 126, "{what}: {f:?}"),
        other => panic!("{what}: {other:?}"),
    };
    // A pipe, and a listening socket (a connected socket of another user's
    // is refused by its peer's uid, which a socketpair gives its creator).
    let (pipe_r, pipe_w) = nix::unistd::pipe().unwrap();
    refused(exec(pipe_w.as_raw_fd()), "a pipe");
    drop(pipe_w);
    let mut left = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(pipe_r), &mut left).unwrap();
    assert!(left.is_empty(), "the daemon or the agent wrote to it: {left:?}");
    let dir = tempfile::tempdir().unwrap();
    let listening = std::os::unix::net::UnixListener::bind(dir.path().join("l.sock")).unwrap();
    refused(exec(listening.as_raw_fd()), "a listening socket");
    // The daemon serves on.
    assert_eq!(stdout(&m.sh(r#""$M/echo" served"#)), "served\n");
}
