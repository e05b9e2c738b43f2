//! The service manager's side: readiness and the file-descriptor store
//! (`sd_notify`), the fds it hands back at a restart (`LISTEN_FDS`), and
//! whether a stop is the first half of a restart. All of it is a no-op
//! outside systemd.

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Send a notification (`READY=1`, `FDSTORE=1`…), with fds attached.
/// `Ok(false)` when no service manager listens.
pub fn notify(state: &str, fds: &[RawFd]) -> io::Result<bool> {
    use nix::sys::socket::{sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let path = path.as_encoded_bytes();
    let addr = match path.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(path)?,
    };
    let sock = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let iov = [io::IoSlice::new(state.as_bytes())];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg(std::os::fd::AsRawFd::as_raw_fd(&sock), &iov, cmsgs, MsgFlags::empty(), Some(&addr))?;
    Ok(true)
}

/// Whether a service manager is listening for notifications.
pub fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Keep `fd` in the service's fd store under `name` (the unit needs
/// `FileDescriptorStoreMax=`). A duplicate of a stored fd is ignored.
pub fn store(name: &str, fd: RawFd) {
    match notify(&format!("FDSTORE=1\nFDNAME={name}"), &[fd]) {
        Ok(_) => {}
        Err(e) => tracing::warn!(name, "cannot keep the fd in the service manager's store: {e}"),
    }
}

/// Drop `name` from the fd store (a stop that is not a restart).
pub fn unstore(name: &str) {
    let _ = notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]);
}

/// The fds the service manager passed this process, by name (its fd store
/// after a restart), taken once: the variables are removed so that no
/// child inherits them.
pub fn take_listen_fds() -> HashMap<String, OwnedFd> {
    let mine = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count: usize = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    if !mine {
        return HashMap::new();
    }
    let mut out = HashMap::new();
    let mut names = names.split(':');
    for i in 0..count.min(64) {
        let fd = 3 + i as RawFd;
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        // SAFETY: the service manager gave us fds 3.. for this process alone.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names.next().unwrap_or("unknown").to_string();
        out.insert(name, owned);
    }
    out
}

/// The unit this process runs in (`odfs.service`), from its cgroup.
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup.lines().filter_map(|l| l.rsplit('/').next()).find(|u| u.ends_with(".service")).map(str::to_string)
}

/// Whether the service manager is stopping this unit to start it again
/// (`systemctl restart`, or a restart job queued behind the stop): then the
/// mount is left in the fd store for the next process instead of being
/// taken down. Asked of `systemctl` (2 s at most); unknown counts as no.
pub fn restart_pending() -> bool {
    let Some(unit) = own_unit() else { return false };
    let mut child = match std::process::Command::new("systemctl")
        .args(["list-jobs", "--no-legend", "--plain", "--no-pager"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut out = String::new();
    let _ = io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut out);
    jobs_restart(&out, &unit)
}

/// In `systemctl list-jobs` output (JOB UNIT TYPE STATE), whether `unit`
/// has a restart job or a start job waiting.
fn jobs_restart(listing: &str, unit: &str) -> bool {
    listing.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == unit && matches!(f[2], "restart" | "start" | "try-restart" | "reload-or-start")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_job_is_told_from_a_stop() {
        let restart = "4211 odfs.service restart running\n4212 other.service start waiting\n";
        assert!(jobs_restart(restart, "odfs.service"));
        assert!(!jobs_restart("4211 odfs.service stop running\n", "odfs.service"));
        assert!(!jobs_restart(restart, "odfs-other.service"));
        assert!(!jobs_restart("", "odfs.service"));
    }
}
