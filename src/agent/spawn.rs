//! Fork and exec one tool as the caller: identity, cwd, fds, clean signal
//! state. Everything the child needs is prepared before `fork`, because after
//! it only async-signal-safe calls are allowed (the agent is multithreaded).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;

use super::{Agent, ToolEvent};
use crate::protocol::{AgentEvent, SpawnRequest, EXIT_NOT_FOUND, EXIT_ODFS_ERROR};

/// Where the child failed, reported through the exec-error pipe.
const STAGE_IDENTITY: u8 = 1;
const STAGE_CWD: u8 = 2;
const STAGE_FDS: u8 = 3;
const STAGE_EXEC: u8 = 4;

/// Fds are first parked above this so that moving them onto their targets
/// cannot clobber one another.
const PARK_BASE: i32 = 1024;

fn cstring(bytes: &[u8]) -> Result<CString, AgentEvent> {
    CString::new(bytes.to_vec()).map_err(|_| AgentEvent::Failed {
        message: "argument or environment contains a NUL byte".into(),
        exit_code: EXIT_ODFS_ERROR,
    })
}

/// Candidate paths for `program`: itself when it has a slash, else each PATH entry.
fn candidates(program: &[u8], path: &[u8]) -> Vec<Vec<u8>> {
    if program.contains(&b'/') {
        return vec![program.to_vec()];
    }
    path.split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b".".as_slice() } else { dir };
            let mut p = dir.to_vec();
            p.push(b'/');
            p.extend_from_slice(program);
            p
        })
        .collect()
}

/// Fork, register the child with the reaper, exec. Returns the tool's pid, or
/// the `Failed` event to send back.
pub(super) fn spawn(
    agent: &Agent,
    req: &SpawnRequest,
    fds: &[OwnedFd],
    events: mpsc::Sender<ToolEvent>,
) -> Result<i32, AgentEvent> {
    if fds.len() != req.fds.len() {
        return Err(AgentEvent::Failed {
            message: format!("{} fds announced, {} received", req.fds.len(), fds.len()),
            exit_code: EXIT_ODFS_ERROR,
        });
    }
    let argv: Vec<CString> = req.argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = req
        .env
        .iter()
        .filter(|kv| !kv.starts_with(b"PATH="))
        .map(|kv| cstring(kv))
        .collect::<Result<_, _>>()?;
    let mut path_var = b"PATH=".to_vec();
    path_var.extend_from_slice(&agent.path);
    env.push(cstring(&path_var)?);
    let progs: Vec<CString> =
        candidates(&req.program, &agent.path).iter().map(|p| cstring(p)).collect::<Result<_, _>>()?;
    let cwd = cstring(&req.cwd)?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let groups: Vec<libc::gid_t> = req.identity.groups.clone();
    let sources: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let targets = req.fds.clone();
    let (uid, gid) = (req.identity.uid, req.identity.gid);

    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(failed(format!("cannot create pipe: {}", std::io::Error::last_os_error())));
    }
    let (err_r, err_w) = (pipe[0], pipe[1]);

    let pid = {
        let mut reg = agent.registry.lock().unwrap();
        // SAFETY: the child only makes async-signal-safe calls (see child()).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child, with everything prepared above.
            unsafe {
                child(err_w, uid, gid, &groups, &cwd, &sources, &targets, &progs, &argv_ptrs, &env_ptrs)
            }
        }
        if pid > 0 {
            reg.waiting.insert(pid, events);
            reg.running += 1;
            agent.children.notify_all();
        }
        pid
    };
    // SAFETY: closing our copy of the write end; the child has its own.
    unsafe { libc::close(err_w) };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the read end we own.
        unsafe { libc::close(err_r) };
        return Err(failed(format!("cannot fork: {e}")));
    }
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into the local buffer we own.
        let n = unsafe { libc::read(err_r, report[got..].as_mut_ptr().cast(), report.len() - got) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    // SAFETY: closing the read end we own.
    unsafe { libc::close(err_r) };
    if got == 0 {
        return Ok(pid); // the pipe closed on exec: the tool runs
    }
    let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
    let err = std::io::Error::from_raw_os_error(errno);
    let cwd = String::from_utf8_lossy(&req.cwd);
    let prog = String::from_utf8_lossy(&req.program);
    Err(match report[0] {
        STAGE_IDENTITY => failed(format!("cannot switch to uid {uid} gid {gid}: {err}")),
        STAGE_CWD => failed(format!("cannot enter working directory {cwd}: {err}")),
        STAGE_FDS => failed(format!("cannot pass file descriptors: {err}")),
        _ if errno == libc::ENOENT => AgentEvent::Failed {
            message: format!("{prog} not found in the image (searched {})", String::from_utf8_lossy(&agent.path)),
            exit_code: EXIT_NOT_FOUND,
        },
        _ => failed(format!("cannot execute {prog}: {err}")),
    })
}

fn failed(message: String) -> AgentEvent {
    AgentEvent::Failed { message, exit_code: EXIT_ODFS_ERROR }
}

/// The child between fork and exec. Only raw syscalls: no allocation, no locks.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    err_w: i32,
    uid: u32,
    gid: u32,
    groups: &[libc::gid_t],
    cwd: &CString,
    sources: &[i32],
    targets: &[i32],
    progs: &[CString],
    argv: &[*const libc::c_char],
    env: &[*const libc::c_char],
) -> ! {
    let fail = |stage: u8| -> ! {
        let errno = *libc::__errno_location();
        let e = errno.to_le_bytes();
        let msg = [stage, e[0], e[1], e[2], e[3]];
        libc::write(err_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_ODFS_ERROR);
    };

    // A session of its own: the tool leads its process group, so the group
    // can be signalled as a whole when the caller disappears.
    libc::setsid();

    if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
        fail(STAGE_IDENTITY);
    }
    // After dropping privileges, so the caller's own rights decide.
    if libc::chdir(cwd.as_ptr()) != 0 {
        fail(STAGE_CWD);
    }

    // Park every received fd high (close-on-exec), then place each on its target.
    let mut parked = [0i32; crate::protocol::MAX_FDS];
    for (i, &src) in sources.iter().enumerate() {
        let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, PARK_BASE);
        if fd < 0 {
            fail(STAGE_FDS);
        }
        parked[i] = fd;
    }
    // Standard fds the caller did not have stay closed, as they would natively.
    for std_fd in 0..3 {
        if !targets.contains(&std_fd) {
            libc::close(std_fd);
        }
    }
    for (i, &target) in targets.iter().enumerate() {
        if libc::dup2(parked[i], target) < 0 {
            fail(STAGE_FDS);
        }
    }

    // A clean signal state: the agent blocks some signals and Rust ignores
    // SIGPIPE; tools must see the defaults (`yes | head -1` must end).
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }

    let mut last_errno = libc::ENOENT;
    for prog in progs {
        libc::execve(prog.as_ptr(), argv.as_ptr(), env.as_ptr());
        let e = *libc::__errno_location();
        // Like execvp: keep looking past missing files and unreadable dirs,
        // but remember a permission problem to report it.
        if e == libc::EACCES || (last_errno != libc::EACCES && e != libc::ENOENT && e != libc::ENOTDIR) {
            last_errno = e;
        }
    }
    *libc::__errno_location() = last_errno;
    fail(STAGE_EXEC)
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn names_are_searched_on_path_and_paths_are_taken_as_is() {
        assert_eq!(candidates(b"jq", b"/usr/bin:/bin"), vec![b"/usr/bin/jq".to_vec(), b"/bin/jq".to_vec()]);
        assert_eq!(candidates(b"/opt/x", b"/usr/bin"), vec![b"/opt/x".to_vec()]);
        assert_eq!(candidates(b"x", b"::"), vec![b"./x".to_vec(); 3]);
    }
}
