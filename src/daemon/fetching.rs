//! Whether a call may bring an archive package to this machine: the
//! archive's `fetch` policy, the caller's answer on its terminal, and each
//! user's share of new packages per hour. Only a package whose image is
//! missing gets here.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::call::{CallError, Caller};
use crate::catalog::{ArchivePackage, FetchPolicy};

/// How long a question waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// The window of the per-user limit.
const HOUR: Duration = Duration::from_secs(3600);

/// The packages each user brought within the last hour (root aside).
#[derive(Default)]
pub struct Brought {
    by_uid: Mutex<HashMap<u32, VecDeque<(Instant, String)>>>,
}

impl Brought {
    /// Count `package` against `uid`'s hour, or refuse it: a package
    /// already counted this hour (another call of it, a retry) is free.
    pub fn take(&self, uid: u32, package: &str, limit: u32, command: &str) -> Result<(), CallError> {
        let now = Instant::now();
        let mut all = self.by_uid.lock().unwrap();
        all.retain(|_, q| {
            while q.front().is_some_and(|(t, _)| now.duration_since(*t) >= HOUR) {
                q.pop_front();
            }
            !q.is_empty()
        });
        let mine = all.entry(uid).or_default();
        if mine.iter().any(|(_, p)| p == package) {
            return Ok(());
        }
        if mine.len() >= limit as usize {
            let oldest = mine.front().map_or(now, |(t, _)| *t);
            let wait_min = (HOUR.saturating_sub(now.duration_since(oldest)).as_secs() / 60) + 1;
            return Err(CallError::PackageQuota { command: command.to_string(), limit, wait_min });
        }
        mine.push_back((now, package.to_string()));
        Ok(())
    }
}

/// May this call fetch `pkg`, whose image is missing? `asks`: the caller's
/// stdin is a terminal (`fetch = "ask"` asks there; without one, a
/// script that calls a command means it).
pub async fn admit(policy: FetchPolicy, pkg: &ArchivePackage, command: &str, caller: &Caller, asks: bool) -> Result<(), CallError> {
    match policy {
        FetchPolicy::Never if caller.uid != 0 => Err(CallError::NotFetched { command: command.to_string(), package: pkg.name.clone() }),
        FetchPolicy::Ask if asks => {
            let question = format!(
                "odfs: {command}: fetch Debian package {} {} ({} kB installed, from {}) to run it? [Y/n] ",
                pkg.name, pkg.version, pkg.size_kib, pkg.suite
            );
            let caller = caller.clone();
            let yes = tokio::task::spawn_blocking(move || ask(&caller, &question))
                .await
                .map_err(|e| CallError::Caller(format!("cannot ask: {e}")))??;
            if yes {
                Ok(())
            } else {
                Err(CallError::Declined { package: pkg.name.clone(), version: pkg.version.clone() })
            }
        }
        _ => Ok(()),
    }
}

/// Ask on the caller's terminal, its stdin, while its launcher waits for
/// the answer to its request (the terminal is as the caller left it). A
/// caller in the background is not asked (the foreground job owns the
/// keys): it fetches, as without a terminal.
fn ask(caller: &Caller, question: &str) -> Result<bool, CallError> {
    let gone = || CallError::Caller("the caller exited before it answered".into());
    // The caller's own stdin, opened again: the request did not pass its
    // terminal fds (the tool gets a pty of its own).
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(format!("/proc/{}/fd/0", caller.pid))
        .map_err(|e| CallError::Caller(format!("cannot reach the caller's terminal to ask: {e}")))?;
    if !caller.alive() {
        return Err(gone());
    }
    if !nix::unistd::isatty(std::os::fd::AsRawFd::as_raw_fd(&tty)).unwrap_or(false) {
        return Ok(true);
    }
    if !in_foreground(caller.pid) {
        return Ok(true);
    }
    tty.write_all(question.as_bytes()).map_err(|_| gone())?;
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut answer = Vec::new();
    while !answer.contains(&b'\n') && answer.len() < 64 {
        if Instant::now() >= deadline {
            let _ = tty.write_all(b"\n");
            return Ok(false);
        }
        if !caller.alive() {
            return Err(gone());
        }
        let mut fds = [nix::poll::PollFd::new(tty.as_fd(), nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(500u16)).unwrap_or(0) == 0 {
            continue;
        }
        let mut buf = [0u8; 64];
        match tty.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Ok(yes(&answer))
}

/// Whether `pid`'s process group is its terminal's foreground group
/// (`/proc/PID/stat`: the daemon's own TIOCGPGRP would need the terminal
/// to be its controlling one).
fn in_foreground(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // After the command's name in parentheses (which may hold anything):
    // state, ppid, pgrp, session, tty_nr, tpgid.
    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    matches!((fields.get(2), fields.get(5)), (Some(pgrp), Some(tpgid)) if pgrp == tpgid)
}

/// Enter (or y, yes) fetches; anything else does not.
fn yes(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    matches!(text.trim().to_ascii_lowercase().as_str(), "" | "y" | "yes") && answer.contains(&b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_and_yes_fetch_anything_else_does_not() {
        for a in ["\n", "y\n", "Y\n", " yes \n"] {
            assert!(yes(a.as_bytes()), "{a:?}");
        }
        for a in ["n\n", "no\n", "q\n", "", "y"] {
            assert!(!yes(a.as_bytes()), "{a:?}");
        }
    }

    #[test]
    fn each_user_brings_at_most_the_limit_per_hour_and_a_package_counts_once() {
        let b = Brought::default();
        b.take(1000, "htop", 2, "htop").unwrap();
        b.take(1000, "htop", 2, "htop").unwrap();
        b.take(1000, "tree", 2, "tree").unwrap();
        let e = b.take(1000, "figlet", 2, "figlet").unwrap_err();
        assert!(e.to_string().contains("2 new packages") && e.to_string().contains("odfs fetch figlet"), "{e}");
        assert_eq!(e.status(), crate::protocol::EXIT_ODFS_ERROR);
        // Another user's share is their own.
        b.take(1001, "figlet", 2, "figlet").unwrap();
    }
}
