//! Start one tool as the caller: identity, cwd, fds, clean signal state.
//! Everything the child needs is prepared before it is cloned, because in
//! it only raw syscalls are allowed (the agent is multithreaded, and the
//! child shares its memory until the exec).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::inflight::InFlight;
use super::starts::Start;
use super::Agent;
use crate::protocol::{AgentEvent, SpawnRequest, TtyRequest, EXIT_NOT_FOUND, EXIT_ODFS_ERROR};

/// What the child reports through the exec-error pipe, in records of
/// [`RECORD`] bytes: the stage it failed at (then the errno), or, in a
/// traced call, that it is about to exec (`Ready`, then the time).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(u8)]
enum Stage {
    Ready = 0,
    Identity = 1,
    Cwd = 2,
    Fds = 3,
    Exec = 4,
    Tty = 5,
}

impl Stage {
    fn of(byte: u8) -> Option<Stage> {
        [Stage::Ready, Stage::Identity, Stage::Cwd, Stage::Fds, Stage::Exec, Stage::Tty].into_iter().find(|s| *s as u8 == byte)
    }
}

const RECORD: usize = 9;

/// What the exec-error pipe said before it closed.
enum Report {
    /// Closed on exec: the tool runs (`exec`: when the child was about to,
    /// in a traced call).
    Running { exec: Option<u64> },
    /// The child failed at a stage, with an errno, and exited.
    Failed(Stage, i32),
}


fn cstring(bytes: &[u8]) -> Result<CString, AgentEvent> {
    CString::new(bytes.to_vec()).map_err(|_| AgentEvent::Failed(crate::protocol::Failure::new("argument or environment contains a NUL byte")))
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

/// A pty for the tool, shaped like the caller's terminal. The slave belongs
/// to the caller and to the image's `tty` group, as a login terminal would
/// (mode 0620: `write` and `wall` reach it, no other user reads it); 0600
/// in an image without that group. Never the caller's primary group, which
/// other users may share. Both fds are close-on-exec from
/// birth (`O_CLOEXEC`, `TIOCGPTPEER`): another caller's spawn may fork at any
/// moment, and its tool must never inherit this one.
fn open_pty(tty: &TtyRequest, uid: u32, tty_group: Option<u32>) -> Result<(OwnedFd, OwnedFd), AgentEvent> {
    let (master, slave) = crate::protocol::pty::open().map_err(|e| failed(format!("cannot allocate a pty in the container: {e}")))?;
    // SAFETY: plain syscalls on the fds just made.
    unsafe {
        if tty.termios.len() == std::mem::size_of::<libc::termios>() {
            let mut term: libc::termios = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(tty.termios.as_ptr(), (&mut term as *mut libc::termios).cast(), tty.termios.len());
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &term);
        }
        let ws = libc::winsize { ws_row: tty.rows, ws_col: tty.cols, ws_xpixel: tty.xpixel, ws_ypixel: tty.ypixel };
        libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        // Mode first: once the caller owns it, changing it would need CAP_FOWNER.
        let (mode, gid) = match tty_group {
            Some(g) => (0o620, g),
            None => (0o600, 0),
        };
        libc::fchmod(slave.as_raw_fd(), mode);
        libc::fchown(slave.as_raw_fd(), uid, gid);
        Ok((master, slave))
    }
}

/// What of the agent's own process state a tool must not inherit, read
/// once at start-up (the agent changes neither afterwards), so the child
/// between fork and exec makes a syscall only where one changes something.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inherited {
    /// Signals the agent ignores or handles (bit N-1: signal N), to reset
    /// to their default in the child: an exec keeps an ignored signal
    /// ignored, and a handler of the agent's must not run in a child that
    /// shares its memory (a caller may signal it before its exec).
    pub ignored: u64,
    /// The agent's capability bounding set (bit N: capability N).
    pub bounding: u64,
}

impl Inherited {
    pub fn read() -> Inherited {
        let mut ignored = 0;
        for sig in 1..=libc::SIGRTMAX() {
            // SAFETY: sigaction with no new action only reads the old one.
            let old = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(sig, std::ptr::null(), &mut old) == 0).then_some(old)
            };
            if old.is_some_and(|o| o.sa_sigaction != libc::SIG_DFL) {
                ignored |= 1u64 << (sig - 1);
            }
        }
        // SAFETY: PR_CAPBSET_READ only reads; 1 means the capability is in the set.
        let bounding = (0..=LAST_CAP).filter(|&c| unsafe { libc::prctl(libc::PR_CAPBSET_READ, c as libc::c_ulong, 0, 0, 0) } == 1).fold(0, |m, c| m | 1u64 << c);
        Inherited { ignored, bounding }
    }
}

/// The highest capability number a bounding set can hold.
const LAST_CAP: u32 = 63;

/// A tool that runs.
pub(super) struct Spawned {
    pub pid: i32,
    /// In pty mode, the pty master.
    pub master: Option<OwnedFd>,
    /// When `fork` returned, and when the child was about to exec (traced
    /// calls; else when the agent saw the exec succeed): [`crate::protocol::stages`].
    pub forked: u64,
    pub exec: u64,
}

/// Fork, register the child with the reaper, exec, with the caller's fds
/// that `start` holds (it lets them go once the child has its own).
/// Returns the tool that runs, or the `Failed` event to send back.
pub(super) fn spawn(agent: &Agent, req: &SpawnRequest, start: &Start, flight: Arc<InFlight>) -> Result<Spawned, AgentEvent> {
    let call = Prepared::new(agent, req, start)?;
    let mut argv: Vec<*const libc::c_char> = call.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut env: Vec<*const libc::c_char> = call.env.iter().map(|a| a.as_ptr()).collect();
    env.push(std::ptr::null());
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(failed(format!("cannot create pipe: {}", std::io::Error::last_os_error())));
    }
    let (err_r, err_w) = (pipe[0], pipe[1]);
    let (uid, gid) = (req.identity.uid, req.identity.gid);
    let args = ChildArgs {
        err_w,
        ids: Ids { uid, gid, groups: &req.identity.groups, caps: req.identity.caps, bounding: agent.inherited.bounding },
        cwd: &call.cwd,
        pty_slave: call.pty.as_ref().map_or(-1, |(_, s)| s.as_raw_fd()),
        sources: &call.sources,
        targets: &call.targets,
        park_base: call.park_base,
        progs: &call.progs,
        argv: &argv,
        env: &env,
        ignored: agent.inherited.ignored,
        trace: req.passed.trace,
    };
    let cloned = clone_child(agent, &args, call.pty.is_some(), start, &flight);
    let forked = crate::protocol::stages::now_ns();
    // SAFETY: closing our copy of the write end; the child has its own (or
    // there is no child).
    unsafe { libc::close(err_w) };
    let report = match cloned {
        Ok(pid) => Ok((pid, read_report(err_r))),
        Err(e) => Err(failed(format!("cannot start the tool: {e}"))),
    };
    // SAFETY: closing the read end we own.
    unsafe { libc::close(err_r) };
    let (pid, report) = report?;
    if start.killed() {
        return Err(failed(format!(
            "the tool did not start: it was held before its exec (a working directory that does not answer, or a stopped process) until the call was given up; {} was ended",
            String::from_utf8_lossy(&req.program)
        )));
    }
    match report {
        // The pipe closed on exec: the tool runs. Our slave copy goes now.
        Report::Running { exec } => Ok(Spawned { pid, master: call.pty.map(|(master, _slave)| master), forked, exec: exec.unwrap_or_else(crate::protocol::stages::now_ns) }),
        Report::Failed(stage, errno) => Err(stage_failure(agent, req, stage, errno)),
    }
}

/// What a spawn needs, made before the child exists: in the child only
/// raw syscalls on memory prepared here are allowed.
struct Prepared {
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Where the program may be: itself, or each entry of the image's PATH.
    progs: Vec<CString>,
    cwd: CString,
    /// In pty mode, the master and the slave.
    pty: Option<(OwnedFd, OwnedFd)>,
    /// The fds to pass, and the numbers each gets in the tool.
    sources: Vec<i32>,
    targets: Vec<i32>,
    /// Fds are first parked from here up, above every target.
    park_base: i32,
}

impl Prepared {
    fn new(agent: &Agent, req: &SpawnRequest, start: &Start) -> Result<Prepared, AgentEvent> {
        let fds = start.raw_fds();
        if fds.len() != req.passed.fds.len() {
            return Err(AgentEvent::Failed(crate::protocol::Failure::new(format!("{} fds announced, {} received", req.passed.fds.len(), fds.len()))));
        }
        let argv: Vec<CString> = req.argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
        let mut env: Vec<CString> = req.env.iter().filter(|kv| !kv.starts_with(b"PATH=")).map(|kv| cstring(kv)).collect::<Result<_, _>>()?;
        // The image's PATH, then the mount's shims: a tool finds the image's
        // own programs first, and every other catalog tool after them.
        let mut path_var = b"PATH=".to_vec();
        path_var.extend_from_slice(&agent.path);
        if let Some(tail) = &agent.path_tail {
            path_var.push(b':');
            path_var.extend_from_slice(tail);
        }
        env.push(cstring(&path_var)?);
        let progs: Vec<CString> = candidates(&req.program, &agent.path).iter().map(|p| cstring(p)).collect::<Result<_, _>>()?;
        let cwd = cstring(&req.cwd)?;
        let pty = match &req.passed.tty {
            Some(tty) => Some(open_pty(tty, req.identity.uid, agent.tty_group)?),
            None => None,
        };
        // The pty slave stands in for each fd that was a terminal in the caller.
        let mut sources: Vec<i32> = fds;
        let mut targets = req.passed.fds.clone();
        if let (Some(tty), Some((_, slave))) = (&req.passed.tty, &pty) {
            for &t in &tty.targets {
                sources.push(slave.as_raw_fd());
                targets.push(t);
            }
        }
        if sources.len() > crate::protocol::MAX_FDS {
            return Err(failed("too many file descriptors".into()));
        }
        // Fds are first parked above every target, so that moving them onto
        // their targets cannot clobber one another; as low as that allows, to
        // stay within the container's open-files limit.
        let park_base = targets.iter().copied().max().unwrap_or(2).max(2) + 1;
        Ok(Prepared { argv, env, progs, cwd, pty, sources, targets, park_base })
    }
}

/// Start the child, and register it with the reaper (a failed start too:
/// the reaper counts starts under way); `start` lets go of the caller's fds,
/// which the child has its own copies of by then.
fn clone_child(agent: &Agent, args: &ChildArgs, pty: bool, start: &Start, flight: &Arc<InFlight>) -> std::io::Result<i32> {
    agent.registry.lock().unwrap().starting += 1;
    let pid = if pty {
        // The pty path forks once more in the child (its session holder),
        // which a child sharing our memory must not: a plain fork. It is the
        // interactive path, where a fork's cost is not felt.
        // SAFETY: the child only makes async-signal-safe calls (see child()).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child, with everything prepared above.
            unsafe { child(args) }
        }
        if pid > 0 {
            start.forked(pid);
        }
        pid
    } else {
        spawn_vfork(args, start.pid_slot())
    };
    let errno = std::io::Error::last_os_error();
    start.release_fds();
    let seen = agent.registry.lock().unwrap().started(pid, flight.clone());
    agent.children.notify_all();
    for (wait, at) in seen {
        flight.waited(wait, at);
    }
    if pid < 0 {
        return Err(errno);
    }
    Ok(pid)
}

/// Read the exec-error pipe to its end.
fn read_report(err_r: i32) -> Report {
    let mut exec = None;
    loop {
        let Some(r) = read_record(err_r) else { return Report::Running { exec } };
        let stage = Stage::of(r[0]).unwrap_or(Stage::Exec);
        if stage == Stage::Ready {
            exec = Some(u64::from_le_bytes(r[1..].try_into().unwrap_or_default()));
            continue;
        }
        return Report::Failed(stage, i32::from_le_bytes([r[1], r[2], r[3], r[4]]));
    }
}

/// The caller's line for a child that failed at `stage` with `errno`.
fn stage_failure(agent: &Agent, req: &SpawnRequest, stage: Stage, errno: i32) -> AgentEvent {
    let err = std::io::Error::from_raw_os_error(errno);
    let (uid, gid) = (req.identity.uid, req.identity.gid);
    let prog = String::from_utf8_lossy(&req.program);
    match stage {
        Stage::Identity => failed(format!("cannot switch to uid {uid} gid {gid}: {err}")),
        Stage::Cwd => failed(format!("cannot enter working directory {}: {err}", String::from_utf8_lossy(&req.cwd))),
        Stage::Fds => failed(format!("cannot pass file descriptors: {err}")),
        Stage::Tty => failed(format!("cannot make the pty the controlling terminal: {err}")),
        _ if errno == libc::ENOENT => AgentEvent::Failed(crate::protocol::Failure::with_status(format!("{prog} not found in the image (searched {})", String::from_utf8_lossy(&agent.path)), EXIT_NOT_FOUND)),
        _ => failed(format!("cannot execute {prog}: {err}")),
    }
}

/// One record from the exec-error pipe; `None` at its end (the exec closed it).
fn read_record(fd: i32) -> Option<[u8; RECORD]> {
    let mut record = [0u8; RECORD];
    let mut got = 0;
    while got < RECORD {
        // SAFETY: reading into the local buffer we own.
        let n = unsafe { libc::read(fd, record[got..].as_mut_ptr().cast(), RECORD - got) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    (got == RECORD).then_some(record)
}

fn failed(message: String) -> AgentEvent {
    AgentEvent::Failed(crate::protocol::Failure::new(message))
}

/// Start the child as `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)`,
/// on a stack of its own, this thread suspended until the child's exec (or
/// exit). No page tables are copied and no page is copied on write, which a
/// `fork` of the agent pays on every call. The child runs [`child`] in our
/// memory: raw syscalls only, touching nothing but its own stack; every
/// signal blocked until it resets the mask before the exec, so none of our
/// handlers runs in it. The kernel writes the child's pid at `pid_slot`
/// before the child runs (`CLONE_PARENT_SETTID`), so another thread can
/// end a child that is held before its exec while this one is suspended.
/// Returns the child's pid, or -1 (errno set).
fn spawn_vfork(args: &ChildArgs, pid_slot: *mut libc::pid_t) -> i32 {
    /// Enough for `child`'s frames (the fd table it parks is 1 KiB).
    const STACK: usize = 256 << 10;
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `ChildArgs` the parent keeps alive while it
        // is suspended; the child never returns from `child`.
        unsafe { child(&*(arg as *const ChildArgs)) }
    }
    let mut stack = vec![0u8; STACK];
    // SAFETY: the stack grows down from its 16-byte aligned top; signals
    // are blocked around the clone and restored after it, in this thread.
    unsafe {
        let top = (stack.as_mut_ptr().add(STACK) as usize & !15) as *mut libc::c_void;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            entry,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | libc::SIGCHLD,
            args as *const ChildArgs as *mut libc::c_void,
            pid_slot,
        );
        let errno = *libc::__errno_location();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        *libc::__errno_location() = errno;
        pid
    }
}

/// Everything [`child`] uses, prepared before the fork.
struct ChildArgs<'a> {
    err_w: i32,
    ids: Ids<'a>,
    cwd: &'a CString,
    pty_slave: i32,
    sources: &'a [i32],
    targets: &'a [i32],
    park_base: i32,
    progs: &'a [CString],
    argv: &'a [*const libc::c_char],
    env: &'a [*const libc::c_char],
    /// Signals to reset to their default ([`Inherited::ignored`]).
    ignored: u64,
    trace: bool,
}

/// Who the tool runs as.
struct Ids<'a> {
    uid: u32,
    gid: u32,
    groups: &'a [libc::gid_t],
    /// Capabilities it keeps (bit N: capability N).
    caps: u64,
    /// The bounding set it starts from ([`Inherited::bounding`]).
    bounding: u64,
}

/// Become the caller, holding exactly `ids.caps` and nothing that exec
/// could add: the bounding set emptied of every other capability (while
/// root still has CAP_SETPCAP), the ids switched keeping the permitted
/// set, then permitted = effective = inheritable = ambient = `caps`, and
/// no_new_privs, so a setuid or file-capability program runs with the
/// caller's privileges (as under `nosuid`). Raw syscalls only.
unsafe fn become_caller(ids: &Ids) -> Result<(), ()> {
    // SAFETY: in the child, before its exec: raw syscalls on the ids prepared before the clone (see the function's contract).
    unsafe {
        for cap in 0..=LAST_CAP {
            if ids.bounding & !ids.caps & (1u64 << cap) != 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                return Err(());
            }
        }
        // Raw syscalls, not libc's wrappers: those would change the ids of
        // every thread libc knows of, and a child sharing the agent's memory
        // (see `spawn_vfork`) would change the agent's threads'.
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::syscall(libc::SYS_setgroups, ids.groups.len(), ids.groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setresgid, ids.gid, ids.gid, ids.gid) != 0
            || libc::syscall(libc::SYS_setresuid, ids.uid, ids.uid, ids.uid) != 0
        {
            return Err(());
        }
        // struct __user_cap_header_struct / __user_cap_data_struct, version 3.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header { version: 0x2008_0522, pid: 0 };
        let half = |shift: u32| {
            let bits = (ids.caps >> shift) as u32;
            Data { effective: bits, permitted: bits, inheritable: bits }
        };
        let data = [half(0), half(32)];
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(());
        }
        for cap in 0..=LAST_CAP {
            if ids.caps & (1u64 << cap) != 0
                && libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, cap as libc::c_ulong, 0, 0) != 0
            {
                return Err(());
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(());
        }
        Ok(())
    }
}

/// The child between fork and exec. Only raw syscalls: no allocation, no
/// locks, no write to memory but its own stack (it may share the agent's:
/// see [`spawn_vfork`]).
unsafe fn child(a: &ChildArgs) -> ! {
    // SAFETY: in the child only, which shares the agent's memory until its exec: raw, async-signal-safe syscalls on memory prepared before the clone; it never returns.
    unsafe {
        let ChildArgs { err_w, ref ids, cwd, pty_slave, sources, targets, park_base, progs, argv, env, ignored, trace } = *a;
        // First, while still root (no caller can stop or hold it yet): this
        // call's fds parked high (close-on-exec), and every other fd of the
        // agent's table closed, other callers' pipes, channels and ptys among
        // them. From here on the child holds nothing but its own caller's.
        let mut parked = [0i32; crate::protocol::MAX_FDS];
        let (err_w, pty_slave) = match park(err_w, pty_slave, sources, park_base, &mut parked) {
            Some(kept) => kept,
            None => libc::_exit(EXIT_ODFS_ERROR),
        };
        let fail = |stage: Stage| -> ! { fail_at(err_w, stage) };

        // A session of its own, so everything the tool starts can be found and
        // ended as a whole when the caller disappears.
        libc::setsid();
        if pty_slave >= 0 {
            take_terminal(pty_slave, err_w);
        }

        if become_caller(ids).is_err() {
            fail(Stage::Identity);
        }
        // After dropping privileges, so the caller's own rights decide.
        if libc::chdir(cwd.as_ptr()) != 0 {
            fail(Stage::Cwd);
        }

        // Each parked fd onto its target. Standard fds the caller did not have
        // stay closed (`park` closed them), as they would natively.
        for (i, &target) in targets.iter().enumerate() {
            if libc::dup2(parked[i], target) < 0 {
                fail(Stage::Fds);
            }
        }

        default_signals(ignored);

        if trace {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
            let t = (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).to_le_bytes();
            let msg: [u8; RECORD] = [Stage::Ready as u8, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]];
            libc::write(err_w, msg.as_ptr().cast(), msg.len());
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
        fail(Stage::Exec)
    }
}

/// Report why the child could not become the tool (`stage` and errno, one
/// record on `err_w`) and end it. Raw syscalls and the stack only.
unsafe fn fail_at(err_w: i32, stage: Stage) -> ! {
    // SAFETY: in the child: errno is the thread's own; one write of a stack buffer, then _exit.
    unsafe {
        let e = (*libc::__errno_location()).to_le_bytes();
        let msg: [u8; RECORD] = [stage as u8, e[0], e[1], e[2], e[3], 0, 0, 0, 0];
        libc::write(err_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_ODFS_ERROR)
    }
}

/// Make `pty_slave` the new session's controlling terminal and run the tool
/// in its foreground group, this process staying behind as the session's
/// holder ([`session_holder`]). Returns in the tool's process only. Raw
/// syscalls and the stack only.
unsafe fn take_terminal(pty_slave: i32, err_w: i32) {
    // SAFETY: in the child, after setsid: raw syscalls on its own fds and stack; the holder never returns.
    unsafe {
        // The pty becomes the session's controlling terminal: /dev/tty works,
        // Ctrl-C, Ctrl-Z and window changes reach the tool.
        if libc::ioctl(pty_slave, libc::TIOCSCTTY, 0) != 0 {
            fail_at(err_w, Stage::Tty);
        }
        // Like a shell, this process stays as session leader and runs the
        // tool in its own foreground process group. A tool that led the
        // session itself would sit in an orphaned process group (its parent,
        // the agent, is in another session), and the kernel discards Ctrl-Z
        // (SIGTSTP) for those.
        let tool = libc::fork();
        if tool < 0 {
            fail_at(err_w, Stage::Tty);
        }
        if tool > 0 {
            session_holder(tool, err_w);
        }
        // The tool: its own group, in the terminal's foreground. SIGTTOU is
        // blocked for tcsetpgrp (the mask is reset before exec).
        let mut ttou: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut ttou);
        libc::sigaddset(&mut ttou, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &ttou, std::ptr::null_mut());
        libc::setpgid(0, 0);
        if libc::tcsetpgrp(pty_slave, libc::getpid()) != 0 {
            fail_at(err_w, Stage::Tty);
        }
    }
}

/// The signal state a tool expects: default dispositions for those the
/// agent ignores (`ignored`, a bit per signal), and nothing blocked. Raw
/// syscalls and the stack only.
unsafe fn default_signals(ignored: u64) {
    // SAFETY: in the child: sigaction and sigprocmask on its own state, a set on its stack.
    unsafe {
        // A clean signal state: the agent blocks some signals, Rust ignores
        // SIGPIPE and handles SIGSEGV and SIGBUS; tools must see the defaults
        // (`yes | head -1` must end). Dispositions first, then the mask.
        for sig in 1..=64 {
            if ignored & (1u64 << (sig - 1)) != 0 {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Keep only this call's fds in the child's table: `err_w`, the pty slave
/// and every source, each parked at or above `park_base` (above every
/// target, close-on-exec; `parked[i]` is `sources[i]`'s copy), and close
/// every other fd. Returns where `err_w` and the slave went, or `None`.
/// Raw syscalls and the stack only.
unsafe fn park(err_w: i32, pty_slave: i32, sources: &[i32], park_base: i32, parked: &mut [i32; crate::protocol::MAX_FDS]) -> Option<(i32, i32)> {
    // SAFETY: in the child, while still root: raw syscalls on fds this call owns and a buffer of the child's stack.
    unsafe {
        let up = |fd: i32| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, park_base);
        let err = up(err_w);
        let slave = if pty_slave >= 0 { up(pty_slave) } else { -1 };
        if err < 0 || (pty_slave >= 0 && slave < 0) {
            return None;
        }
        for (i, &src) in sources.iter().enumerate() {
            parked[i] = up(src);
            if parked[i] < 0 {
                return None;
            }
        }
        // The fds to keep, in order, then closed around: every gap is one close_range.
        let mut keep = [0i32; crate::protocol::MAX_FDS + 2];
        let n = sources.len() + 2;
        keep[..sources.len()].copy_from_slice(&parked[..sources.len()]);
        keep[sources.len()] = err;
        keep[sources.len() + 1] = slave;
        let keep = &mut keep[..n];
        for i in 1..n {
            let mut j = i;
            while j > 0 && keep[j - 1] > keep[j] {
                keep.swap(j - 1, j);
                j -= 1;
            }
        }
        let mut low: u32 = 0;
        for &fd in keep.iter().filter(|&&fd| fd >= 0) {
            let fd = fd as u32;
            if fd > low {
                libc::syscall(libc::SYS_close_range, low, fd - 1, 0);
            }
            low = low.max(fd + 1);
        }
        libc::syscall(libc::SYS_close_range, low, u32::MAX, 0);
        Some((err, slave))
    }
}

/// Pid of the tool, for the session holder's signal handlers.
static TOOL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn pass_to_tool(sig: libc::c_int) {
    let tool = TOOL.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: kill(2) is async-signal-safe.
    unsafe {
        if sig == libc::SIGCONT {
            libc::kill(-tool, libc::SIGCONT);
        } else {
            libc::kill(tool, sig);
        }
    }
}

/// The session leader of a pty-mode tool (a child of the agent, so the
/// agent's reaper sees it in the tool's place). Forwards signals to the tool,
/// mirrors its stops by stopping itself (SIGSTOP: stop signals are discarded
/// in its own orphaned group) and ends exactly as the tool ended.
/// Only raw syscalls: it runs in a fork of the multithreaded agent.
unsafe fn session_holder(tool: i32, err_w: i32) -> ! {
    // SAFETY: in the pty path's child, a fork of its own: raw syscalls waiting for the tool it forked.
    unsafe {
        TOOL.store(tool, std::sync::atomic::Ordering::Relaxed);
        // The tool reports exec errors itself; this copy must not hold the pipe
        // open, nor any of the caller's fds.
        libc::close(err_w);
        libc::close_range(3, u32::MAX, 0);
        libc::setpgid(tool, tool);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCONT] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = pass_to_tool as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        loop {
            let mut status = 0;
            if libc::waitpid(tool, &mut status, libc::WUNTRACED) < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(EXIT_ODFS_ERROR);
            }
            if libc::WIFSTOPPED(status) {
                libc::kill(libc::getpid(), libc::SIGSTOP);
            } else if libc::WIFEXITED(status) {
                libc::_exit(libc::WEXITSTATUS(status));
            } else if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(sig, libc::SIG_DFL);
                libc::kill(libc::getpid(), sig);
                libc::_exit(128 + sig);
            }
        }
    }
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
