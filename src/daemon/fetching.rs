//! Whether a call may bring an archive package to this machine: the
//! archive's `fetch` policy, the caller's answer (asked by its own
//! launcher, on its own terminal), and each user's share of new packages
//! per hour. Only a package whose image is
//! missing gets here.

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::call::{CallError, Caller};
use crate::catalog::{ArchivePackage, FetchPolicy};
use crate::protocol::{self, Request, Response};

/// How long a question waits for its answer (the launcher's own limit).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// The window of the per-user limit.
const HOUR: Duration = Duration::from_secs(3600);

/// The packages each user brought within the last hour (root aside), and
/// each user's turn to build one.
#[derive(Default)]
pub struct Brought {
    by_uid: Mutex<HashMap<u32, VecDeque<(Instant, String)>>>,
    turns: Mutex<HashMap<u32, std::sync::Arc<tokio::sync::Semaphore>>>,
}

impl Brought {
    /// Wait for `uid`'s turn to bring a package: one at a time per user,
    /// so one user's many first calls hold at most one of the machine's
    /// builds and the others' calls get the rest.
    pub async fn turn(&self, uid: u32) -> tokio::sync::OwnedSemaphorePermit {
        self.turns_of(uid).acquire_owned().await.expect("never closed")
    }

    /// `uid`'s turn if no other fetch of theirs holds it.
    pub fn try_turn(&self, uid: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.turns_of(uid).try_acquire_owned().ok()
    }

    fn turns_of(&self, uid: u32) -> std::sync::Arc<tokio::sync::Semaphore> {
        self.turns.lock().unwrap().entry(uid).or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(1))).clone()
    }

    /// Count `package` (of a suite: `bookworm/htop`) against `uid`'s hour,
    /// or refuse it: a package already counted this hour (another call of
    /// it, a retry) is free. `take: false` only tells whether it would be
    /// refused (before the caller is asked).
    pub fn count(&self, uid: u32, package: &str, limit: u32, command: &str, take: bool) -> Result<(), CallError> {
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
        if take {
            mine.push_back((now, package.to_string()));
        }
        Ok(())
    }
}

/// Questions waiting for an answer at once, per user and in all: each
/// holds one of the daemon's blocking threads until it is answered.
const QUESTIONS_PER_USER: u32 = 2;
const QUESTIONS: u32 = 32;

/// How long an answer no call waits on is kept.
const ANSWER_STANDS: Duration = Duration::from_secs(120);

/// The questions waiting now, by user, and the answers given, by user and
/// package.
#[derive(Default)]
pub struct Questions {
    waiting: Mutex<HashMap<u32, u32>>,
    answers: Mutex<HashMap<(u32, String), std::sync::Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>>>,
}

/// A question's place, given back when it is answered.
struct Place<'a>(&'a Questions, u32);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut w = self.0.waiting.lock().unwrap();
        if let Some(n) = w.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.1);
            }
        }
    }
}

impl Questions {
    /// A place for a question of `uid`'s, or why there is none.
    fn place(&self, uid: u32) -> Result<Place<'_>, CallError> {
        let mut w = self.waiting.lock().unwrap();
        let total: u32 = w.values().sum();
        let mine = w.entry(uid).or_default();
        if *mine >= QUESTIONS_PER_USER {
            return Err(CallError::Request(format!("{QUESTIONS_PER_USER} questions of yours wait for an answer already; answer them first")));
        }
        if total >= QUESTIONS {
            return Err(CallError::Request(format!("{QUESTIONS} fetch questions wait for their answers on this machine; try again in a minute")));
        }
        *mine += 1;
        Ok(Place(self, uid))
    }

    /// The answer `uid` gives for `package`: one question at a time, whose
    /// answer the calls that waited for it share (`make -j8`).
    fn answer_of(&self, uid: u32, package: &str) -> std::sync::Arc<tokio::sync::Mutex<Option<(Instant, bool)>>> {
        let mut all = self.answers.lock().unwrap();
        // Answers no call waits on and too old to stand are forgotten.
        all.retain(|_, a| std::sync::Arc::strong_count(a) > 1 || a.try_lock().is_ok_and(|g| g.is_some_and(|(at, _)| at.elapsed() < ANSWER_STANDS)));
        all.entry((uid, package.to_string())).or_default().clone()
    }
}

/// May this call fetch `pkg`, whose image is missing? With `fetch = "ask"`
/// and a terminal (`asks`), the caller's launcher asks on it and answers
/// on `control`; without one, a script that calls a command means it.
pub async fn admit(policy: FetchPolicy, pkg: &ArchivePackage, command: &str, caller: &Caller, asks: bool, control: &UnixStream, questions: &Questions) -> Result<(), CallError> {
    match policy {
        FetchPolicy::Never if caller.uid != 0 => Err(CallError::NotFetched { command: command.to_string(), package: pkg.name.clone() }),
        FetchPolicy::Ask if asks => {
            let declined = || CallError::Declined { package: pkg.name.clone(), version: pkg.version.clone() };
            // Calls of the package that arrive together ask once.
            let answer = questions.answer_of(caller.uid, &format!("{}/{}", pkg.suite, pkg.name));
            let arrived = Instant::now();
            let mut answer = answer.lock().await;
            // Given while this call waited for it: this call's too. A later
            // call is asked again.
            if let Some((at, yes)) = *answer {
                if at >= arrived {
                    return if yes { Ok(()) } else { Err(declined()) };
                }
            }
            let place = questions.place(caller.uid)?;
            let question = format!(
                "odfs: {command}: fetch Debian package {} {} ({} kB, {} kB installed, from {}) to run it? [Y/n] ",
                pkg.name,
                pkg.version,
                pkg.download.div_ceil(1000),
                pkg.size_kib,
                pkg.suite
            );
            let control = control.try_clone().map_err(|e| CallError::Caller(format!("cannot ask: {e}")))?;
            let yes = tokio::task::spawn_blocking(move || ask(&control, question))
                .await
                .map_err(|e| CallError::Caller(format!("cannot ask: {e}")))??;
            drop(place);
            *answer = Some((Instant::now(), yes));
            if yes {
                Ok(())
            } else {
                Err(declined())
            }
        }
        _ => Ok(()),
    }
}

/// Send the question to the launcher and wait for its answer (the
/// launcher gives up first, and answers no): one small frame, whole within
/// the time, or the caller is taken as gone. A launcher that trickles
/// bytes holds nothing past the deadline.
fn ask(control: &UnixStream, question: String) -> Result<bool, CallError> {
    use std::os::fd::AsFd;
    let gone = || CallError::Caller("the caller hung up at the question".into());
    protocol::send(control, &Response::Ask(question), &[]).map_err(|_| gone())?;
    let deadline = Instant::now() + ANSWER_WITHIN + Duration::from_secs(5);
    // An answer is a few bytes: its frame's length and its body, here whole.
    const MAX_ANSWER: usize = 64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut fds = [nix::poll::PollFd::new(control.as_fd(), nix::poll::PollFlags::POLLIN)];
        let wait = nix::poll::PollTimeout::try_from(left.min(Duration::from_secs(1))).unwrap_or(nix::poll::PollTimeout::MAX);
        if nix::poll::poll(&mut fds, wait).unwrap_or(0) == 0 {
            continue;
        }
        let mut peek = [0u8; MAX_ANSWER];
        let n = nix::sys::socket::recv(std::os::fd::AsRawFd::as_raw_fd(control), &mut peek, nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT).unwrap_or(0);
        if n == 0 {
            return Err(gone());
        }
        let whole = n >= 4 && u32::from_le_bytes([peek[0], peek[1], peek[2], peek[3]]) as usize + 4 <= n;
        if !whole {
            if n == MAX_ANSWER || n >= 4 && u32::from_le_bytes([peek[0], peek[1], peek[2], peek[3]]) as usize + 4 > MAX_ANSWER {
                return Err(CallError::Request("the answer to the question is not one (is odfs-launch another version?)".into()));
            }
            // Part of it: the rest comes (or the deadline).
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        return match protocol::recv::<Request>(control) {
            Ok(Some((Request::Answer { yes }, _))) => Ok(yes),
            _ => Err(CallError::Request("the answer to the question is not one (is odfs-launch another version?)".into())),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_brings_at_most_the_limit_per_hour_and_a_package_counts_once() {
        let b = Brought::default();
        b.count(1000, "bookworm/htop", 2, "htop", true).unwrap();
        b.count(1000, "bookworm/htop", 2, "htop", true).unwrap();
        // Asking whether it would be refused takes nothing.
        b.count(1000, "bookworm/tree", 2, "tree", false).unwrap();
        b.count(1000, "bookworm/tree", 2, "tree", true).unwrap();
        let e = b.count(1000, "bookworm/figlet", 2, "figlet", false).unwrap_err();
        assert!(e.to_string().contains("2 new packages") && e.to_string().contains("odfs fetch figlet"), "{e}");
        assert_eq!(e.status(), crate::protocol::EXIT_ODFS_ERROR);
        // Another suite's is another package; another user's share is their own.
        assert!(b.count(1000, "trixie/htop", 2, "htop@trixie", true).is_err());
        b.count(1001, "bookworm/figlet", 2, "figlet", true).unwrap();
    }
}

#[cfg(test)]
mod question_tests {
    use super::*;

    #[test]
    fn questions_waiting_are_bounded_per_user_and_in_all() {
        let q = Questions::default();
        let (a, b) = (q.place(1000).unwrap(), q.place(1000).unwrap());
        assert!(q.place(1000).err().unwrap().to_string().contains("of yours"));
        assert!(q.place(1001).is_ok());
        drop(a);
        assert!(q.place(1000).is_ok());
        drop(b);
        let many: Vec<_> = (0..QUESTIONS).filter_map(|u| q.place(2000 + u).ok()).collect();
        assert_eq!(many.len(), QUESTIONS as usize);
        assert!(q.place(1).err().unwrap().to_string().contains("on this machine"));
    }
}
