//! One exec request: policy, identity, environment, container, spawn through
//! the agent, and the hand-off of the agent connection to the launcher.

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::call::{CallError, Caller, PoolError, Started};
use super::link::Launch;
use super::pool::Served;
use super::Daemon;
use crate::backend::ContainerBackend;
use crate::catalog::{ImageSpec, Invocation, Resolved, RunAs};
use crate::protocol::{self, ExecRequest, Identity, ImageProgress, Passed, Response, SpawnRequest, PROTOCOL_VERSION};

/// Bytes of a call's outcome kept in the history.
const MAX_OUTCOME: usize = 300;

/// Environment variables a tool holding capabilities its caller lacks gets
/// from the caller, besides the entry's own `env` list.
const PASSED_ENV: [&str; 12] =
    ["TERM", "COLORTERM", "NO_COLOR", "LANG", "LANGUAGE", "TZ", "HOME", "USER", "LOGNAME", "COLUMNS", "LINES", "TMPDIR"];

/// Variables that name the caller's display and sound server: passed to
/// the tools of `gui` images only.
pub const DISPLAY_ENV: [&str; 5] = ["DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "PULSE_SERVER", "PIPEWIRE_REMOTE"];

/// What an image adds to and takes from [`tool_env`]: a graphical image's
/// tools get the caller's display (privileged ones its number only); no
/// other image's tools do. A
/// networked image's tools get the site's proxies and CA bundle, where
/// their caller's environment names none.
pub fn image_env(env: &mut Vec<Vec<u8>>, caller_env: &[Vec<u8>], image: &crate::catalog::ImageSpec, privileged: bool, site: &[(String, String)]) {
    let key_of = |kv: &[u8]| kv.iter().position(|&b| b == b'=').map(|eq| kv[..eq].to_vec());
    if !image.gui {
        env.retain(|kv| key_of(kv).is_none_or(|k| !DISPLAY_ENV.iter().any(|d| d.as_bytes() == k.as_slice())));
    } else if privileged {
        // A tool holding privileges its caller lacks gets the display only
        // as a number (`:0`, `:1.0`): the others name files and sockets it
        // could open with those privileges.
        let plain = |kv: &Vec<u8>| kv.strip_prefix(b"DISPLAY=:").is_some_and(|n| !n.is_empty() && n.iter().all(|b| b.is_ascii_digit() || *b == b'.'));
        env.extend(caller_env.iter().filter(|kv| plain(kv)).cloned());
    }
    if image.network != crate::catalog::Network::None {
        // A caller that names a proxy in either spelling chose its own.
        for (k, v) in site {
            if !caller_env.iter().any(|kv| key_of(kv).is_some_and(|key| key.eq_ignore_ascii_case(k.as_bytes()))) {
                env.push(format!("{k}={v}").into_bytes());
            }
        }
    }
}

/// The caller's environment as the tool gets it, `stamp` (its caller, see
/// [`super::stamps`]) added. A tool that runs as its caller with nothing
/// added gets the environment as it is: it could be run with it anyway.
/// One that holds capabilities its caller lacks (`privileged`) gets an
/// allowlist, as sudo's `env_reset`: no loader or interpreter variable,
/// and no locale or time zone that names a file (`LC_ALL=/x`, `TZ=/x`
/// make libc read them), since no secure-execution mode protects it. PATH
/// is the image's, followed by the mount (the agent sets it).
pub fn tool_env(env: &[Vec<u8>], extra: &[String], privileged: bool, stamp: Option<&str>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = env
        .iter()
        .filter(|kv| {
            let Some(eq) = kv.iter().position(|&b| b == b'=') else { return false };
            let key = &kv[..eq];
            if key == super::stamps::CALLER_ENV.as_bytes() || key == crate::protocol::stages::STAGES_ENV.as_bytes() {
                return false;
            }
            if !privileged {
                return true;
            }
            let names_a_file = kv[eq + 1..].contains(&b'/');
            if names_a_file && (key.starts_with(b"LC_") || key == b"LANG" || key == b"LANGUAGE" || key == b"TZ") {
                return false;
            }
            if std::str::from_utf8(key).map_or(true, crate::catalog::code_loading_variable) {
                return false;
            }
            key.starts_with(b"LC_")
                || PASSED_ENV.iter().any(|k| k.as_bytes() == key)
                || extra.iter().any(|k| k.as_bytes() == key)
        })
        .cloned()
        .collect();
    out.extend(stamp.map(|s| format!("{}={s}", super::stamps::CALLER_ENV).into_bytes()));
    out
}

/// Calls served since the daemon started, for their spans' ids.
static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One exec request as the dispatch let it in: its id, its caller
/// (whether inside a container), and the dispatch's stage stamps,
/// completed and sent back if the caller traces.
pub(super) struct Call {
    /// The call's span's, and its spawn request's: the agent's log lines
    /// about it carry it too.
    pub id: u64,
    pub caller: Caller,
    pub inside: bool,
    pub stamps: crate::protocol::stages::DaemonStamps,
}

impl Call {
    /// A new call of `caller`'s, with the next id.
    pub fn new(caller: Caller, inside: bool, stamps: crate::protocol::stages::DaemonStamps) -> Call {
        Call { id: CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed), caller, inside, stamps }
    }

    /// The span of the call's request: every line logged while it is
    /// served (in exec, pool and link) carries the call's id, command,
    /// caller and, once known, its profile's container. Debug level: at the
    /// default level the warm path makes no span.
    pub fn span(&self, req: &ExecRequest) -> tracing::Span {
        // The command is the caller's bytes until the catalog says otherwise.
        let command = if crate::catalog::validate_name(&req.command).is_ok() { req.command.as_str() } else { "(invalid name)" };
        tracing::debug_span!("call", id = self.id, command, uid = self.caller.uid, pid = self.caller.pid, container = tracing::field::Empty)
    }
}

/// Send a small frame in place, from an async worker, only when the socket
/// has room: a client that does not read loses such frames (progress,
/// notices), and never holds the worker.
fn send_if_room(client: &UnixStream, r: &Response) {
    let mut pfd = libc::pollfd { fd: client.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one pollfd, no wait.
    if unsafe { libc::poll(&mut pfd, 1, 0) } == 1 && pfd.revents & libc::POLLOUT != 0 {
        let _ = protocol::send(client, r, &[]);
    }
}

/// Where a fetch's progress goes for `client`: [`Response::Progress`]
/// frames, sent when its socket has room.
fn progress_to(client: &UnixStream) -> impl Fn(ImageProgress) + '_ {
    move |p| send_if_room(client, &Response::Progress(p))
}

/// The caller's passwd and group lines, so the tool can look them up. An
/// entry with a field that would break the file (a `:` or a line end, which
/// NSS sources other than the files may hold) is left out.
fn identity_lines(uid: u32, gid: u32) -> (Option<String>, Option<String>) {
    use super::accounts::valid_field;
    let passwd = nix::unistd::User::from_uid(uid.into()).ok().flatten().and_then(|u| {
        let (gecos, dir, shell) = (u.gecos.to_string_lossy().into_owned(), u.dir.display().to_string(), u.shell.display().to_string());
        [&u.name, &gecos, &dir, &shell]
            .iter()
            .all(|f| valid_field(f))
            .then(|| format!("{}:x:{uid}:{}:{gecos}:{dir}:{shell}", u.name, u.gid))
    });
    let group = nix::unistd::Group::from_gid(gid.into()).ok().flatten().filter(|g| valid_field(&g.name)).map(|g| format!("{}:x:{gid}:", g.name));
    (passwd, group)
}

impl<B: ContainerBackend> Daemon<B> {
    /// Learn from this call, and warm what usually follows it in a session
    /// (`tcpdump` → `traceroute`). Prediction belongs to the `auto` policy:
    /// only images under it are warmed, and a wrong guess costs what
    /// [`crate::policy::predicted_plan`] bounds.
    fn predict_next(self: &Arc<Self>, command: &str, session: String) {
        let now = self.pool.now();
        let next = {
            let mut t = self.transitions.lock().unwrap();
            t.observe(&session, command, now);
            t.likely_next(command)
        };
        let snapshot = self.snapshot();
        for (cmd, p) in next {
            let Some(entry) = snapshot.get(&cmd) else { continue };
            // Within the idle budget, a guess may not push out a container
            // worth more than it.
            if self.pool.policy_for(&entry.image) != crate::policy::Policy::Auto || !self.pool.expected(&entry.image, p) {
                continue;
            }
            let d = self.clone();
            let plan = crate::policy::predicted_plan(now, format!("predicted after {command} (P = {p:.2})"));
            self.tasks.spawn(async move {
                if let Err(e) = d.pool.warm_up(&entry.image, Some(plan)).await {
                    tracing::debug!(command = cmd, "prediction could not warm: {e}");
                }
            });
        }
    }

    /// Run `work`, which may fetch `image`, while every change in that
    /// fetch's progress goes to `client` as a [`Response::Progress`] frame
    /// ([`super::pool::Pool::with_progress`]).
    pub(super) async fn with_progress<T>(&self, client: &UnixStream, image: &Arc<ImageSpec>, work: impl Future<Output = T>) -> T {
        self.pool.with_progress(image, progress_to(client), work).await
    }

    pub(super) fn authorize(&self, entry: &Resolved, caller: &Caller) -> Result<(), CallError> {
        let allowed = &entry.image.allow_groups;
        if allowed.is_empty() || caller.uid == 0 {
            return Ok(());
        }
        let member = allowed.iter().any(|name| {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .is_some_and(|g| g.gid.as_raw() == caller.gid || caller.groups.contains(&g.gid.as_raw()))
        });
        if member {
            Ok(())
        } else {
            Err(CallError::Denied { groups: allowed.clone() })
        }
    }

    /// The entry a call of `command` runs: for a bare name with versions,
    /// the one the nearest pin file of the caller's directory names, else
    /// the catalog's default.
    async fn resolve(&self, command: &str, caller: &Caller) -> Result<crate::catalog::Resolved, CallError> {
        let snapshot = self.snapshot();
        let entry = snapshot.get(command).ok_or(CallError::NotInCatalog)?;
        let Some(versions) = snapshot.versions.get(command) else { return Ok(entry) };
        let cwd = self.local_cwd(caller)?;
        match self.choose_pin(&cwd, command, caller).await?.0 {
            super::pins::Choice::Default => Ok(entry),
            super::pins::Choice::Pinned { file, version } => snapshot
                .get(&format!("{command}@{version}"))
                .ok_or_else(|| CallError::BadPin { file, command: command.to_string(), version, offered: versions.all.clone() }),
        }
    }

    /// A call of an archive package whose image is missing: may it bring
    /// it ([`super::fetching`])? What would refuse it is said before the
    /// caller is asked; root's calls count against no share.
    async fn admit_package(
        &self,
        image: &ImageSpec,
        pkg: &crate::catalog::ArchivePackage,
        command: &str,
        caller: &Caller,
        asks: bool,
        control: &UnixStream,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, CallError> {
        let here = || async {
            // A container of it, or a fetch of it under way: nothing to bring.
            Ok::<bool, CallError>(
                self.pool.shown(image) != crate::protocol::ContainerPhase::Absent
                    || self.pool.backend().image_id(&image.reference).await.map_err(PoolError::from)?.is_some(),
            )
        };
        if here().await? {
            return Ok(None);
        }
        let Some(archive) = self.snapshot().archive.clone() else { return Ok(None) };
        if let Some(failed) = self.pool.backoff(image) {
            return Err(failed.into());
        }
        let (key, limit) = (format!("{}/{}", pkg.suite, pkg.name), archive.spec.new_per_hour);
        if caller.uid != 0 {
            self.brought.count(caller.uid, &key, limit, command, false)?;
        }
        if let Some(budget) = self.gc.budget {
            let held: u64 = self.image_usage().await.0.iter().map(|u| u.size).sum();
            let adds = pkg.size_kib.saturating_mul(1024);
            if held.saturating_add(adds) > budget {
                let human = super::images::human_bytes;
                return Err(CallError::OverBudget { package: pkg.name.clone(), adds: human(adds), held: human(held), budget: human(budget) });
            }
        }
        super::fetching::admit(archive.spec.fetch, pkg, command, caller, asks, control, &self.questions).await?;
        let turn = match self.brought.try_turn(caller.uid) {
            Some(turn) => turn,
            None => {
                send_if_room(control, &Response::Notice(format!("Debian package {} waits while another fetch of yours finishes (one at a time)", pkg.name)));
                let turn = self.brought.turn(caller.uid).await;
                // Gone meanwhile (Ctrl-C): nothing to fetch for.
                if !caller.alive() {
                    return Err(CallError::Caller("the caller exited while it waited for its turn to fetch".into()));
                }
                turn
            }
        };
        // Another call brought it while this one waited its turn.
        if here().await? {
            return Ok(None);
        }
        if caller.uid != 0 {
            self.brought.count(caller.uid, &key, limit, command, true)?;
        }
        Ok(Some(turn))
    }

    /// The version the nearest pin file above `cwd` names for `command`, and
    /// the files passed over: read off the async workers, in bounded time
    /// ([`super::paths`]).
    pub(super) async fn choose_pin(&self, cwd: &std::path::Path, command: &str, caller: &Caller) -> Result<(super::pins::Choice, Vec<super::pins::Ignored>), CallError> {
        let place = super::paths::place(caller.uid).await?;
        let (pins, cwd, command, uid) = (self.pins.clone(), cwd.to_path_buf(), command.to_string(), caller.uid);
        super::paths::look(&place, "the pin files above the working directory", move || pins.choose(&cwd, &command, uid)).await
    }

    /// The caller's working directory, as the kernel has it (whether the
    /// tool may run there is for its container's view: [`check_view`]).
    pub(super) fn local_cwd(&self, caller: &Caller) -> Result<PathBuf, CallError> {
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", caller.pid)).map_err(|e| CallError::Caller(format!("cannot read the caller's working directory: {e}")))?;
        if !caller.alive() {
            return Err(CallError::Caller("the caller exited before its request was served".into()));
        }
        Ok(cwd)
    }

    /// Tell the caller that its working directory `cwd` is not on the
    /// remote engine its tool runs on ([`super::link::Reach::cwd`]), and
    /// why: once per user, image and directory.
    fn tell_not_there(&self, client: &UnixStream, caller: &Caller, image: &ImageSpec, cwd: &Path) {
        let first = {
            let mut told = self.remote_notices.lock().unwrap();
            // Bounded: after many directories, some callers hear it again.
            if told.len() >= 10_000 {
                told.clear();
            }
            told.insert((caller.uid, image.name.clone(), cwd.to_path_buf()))
        };
        if first {
            let dirs = if image.remote_dirs.is_empty() {
                "the image declares no remote_dirs".to_string()
            } else {
                format!("remote_dirs: {}", image.remote_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" "))
            };
            let text = format!("note: {} is not available on the remote engine ({dirs}); running in /", cwd.display());
            send_if_room(client, &Response::Notice(text));
        }
    }

    /// Handle an exec request: answer the launcher with a hand-off or a refusal.
    pub(super) async fn exec(self: Arc<Self>, control: UnixStream, req: ExecRequest, fds: Vec<OwnedFd>, call: Call) {
        let (caller, stamps) = (call.caller.clone(), call.stamps);
        let started = Instant::now();
        let trace = req.passed.trace;
        // Read now: the launcher is certainly alive while it waits for us.
        let session = crate::protocol::peer::session_of(caller.pid).filter(|_| caller.alive());
        let command = req.command.clone();
        let outcome = self.clone().run(&control, req, fds, &call, session).await;
        // The one place a call's failure becomes what its caller sees.
        let outcome = outcome.map_err(|e| e.into_failure(Some(caller.uid)));
        let (image, served, outcome_text, container, pid, image_id) = match &outcome {
            Ok((started, image, served, id)) => (image.clone(), served.as_str(), "started".to_string(), started.container.clone(), started.pid, id.to_string()),
            Err(r) => (String::new(), "none", r.message.clone(), String::new(), 0, String::new()),
        };
        let setup_us = started.elapsed().as_micros() as i64;
        tokio::task::spawn_blocking(move || {
            let sent = match outcome {
                Ok((started, _, _, _)) => {
                    // None on the launcher's channel: the agent reports there.
                    let mut fds: Vec<i32> = started.agent.iter().map(|a| a.as_raw_fd()).collect();
                    fds.extend(started.pty_master.as_ref().map(|m| m.as_raw_fd()));
                    let stamps = trace.then_some(crate::protocol::stages::DaemonStamps { agent: started.sent_at, started: started.started_at, up: started.up, ..stamps });
                    protocol::send(&control, &Response::Handoff { pid: started.pid, relayed: started.relayed, stamps }, &fds)
                }
                Err(r) => protocol::send(&control, &Response::Error(r), &[]),
            };
            // If the launcher vanished, dropping the agent connection here
            // makes the agent kill the tool nobody waits for.
            if let Err(e) = sent {
                tracing::debug!("launcher gone before the hand-off: {e}");
            }
        });
        let started_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        tracing::debug!(served, setup_us, "exec");
        // Only what is bounded goes to the history: a refused request may
        // carry any bytes as its command, and refusals quote paths.
        let command = if crate::catalog::validate_name(&command).is_ok() { command } else { "(invalid name)".to_string() };
        let mut outcome_text = outcome_text;
        if outcome_text.len() > MAX_OUTCOME {
            let mut cut = MAX_OUTCOME;
            while !outcome_text.is_char_boundary(cut) {
                cut -= 1;
            }
            outcome_text.truncate(cut);
        }
        self.store.record(Invocation {
            command,
            image,
            uid: caller.uid,
            started_ms,
            setup_us,
            served,
            session,
            container,
            pid,
            outcome: outcome_text,
            image_id,
        });
    }

    async fn run(
        self: Arc<Self>,
        control: &UnixStream,
        req: ExecRequest,
        fds: Vec<OwnedFd>,
        call: &Call,
        session: Option<i32>,
    ) -> Result<(Started, String, Served, Arc<str>), CallError> {
        let caller = &call.caller;
        if req.version != PROTOCOL_VERSION {
            return Err(CallError::Version { launcher: req.version });
        }
        let entry = self.resolve(&req.command, &caller).await?;
        // The call is the peer's, always; from inside a container only under
        // its tool's stamp for that very uid.
        let depth = self.stamps.depth(caller.uid, &req.env, call.inside)?;
        let groups = caller.groups.clone();
        self.authorize(&entry, &caller)?;
        // Where its tools run decides what of this host's the call gets.
        let reach = self.pool.reach();
        let (cwd, not_there) = reach.cwd(self.local_cwd(&caller), &entry.image)?;
        if let Some(asked) = not_there {
            self.tell_not_there(control, &caller, &entry.image, &asked);
        }
        let accounts = match entry.image.user {
            RunAs::Root => (None, None),
            RunAs::Caller => identity_lines(caller.uid, caller.gid),
        };
        let caps = entry.image.tool_caps(caller.uid);
        let identity = match entry.image.user {
            RunAs::Root => Identity { uid: 0, gid: 0, groups: vec![], passwd_line: None, group_line: None, caps },
            RunAs::Caller => Identity { uid: caller.uid, gid: caller.gid, groups, passwd_line: None, group_line: None, caps },
        };
        let mut argv = vec![entry.command.argv0().as_bytes().to_vec()];
        argv.extend(entry.command.args.iter().map(|a| a.as_bytes().to_vec()));
        argv.extend(req.args.iter().cloned());
        let mut spawn = SpawnRequest {
            version: PROTOCOL_VERSION,
            call_id: call.id,
            token: String::new(),
            program: entry.command.program().as_bytes().to_vec(),
            argv,
            env: tool_env(
                &req.env,
                &entry.command.env,
                caps != 0 && caller.uid != 0,
                // A tool that could take another uid or read other users'
                // environments gets none: its calls are refused.
                entry.image.shares_host_namespaces().then(|| self.stamps.sign(super::stamps::Stamp { uid: caller.uid, depth })).as_deref(),
            ),
            cwd: cwd.as_os_str().as_bytes().to_vec(),
            identity,
            // The channel is the link's to pass, or not.
            passed: Passed { channel: false, ..req.passed.clone() },
        };
        image_env(&mut spawn.env, &req.env, &entry.image, caps != 0 && caller.uid != 0, &reach.site_env(&self.outbound));
        let (fds, channel) = split_channel(fds, &req, &caller)?;
        let launch = Launch {
            spawn,
            fds: Arc::new(fds),
            args: req.args.clone(),
            image: entry.image.name.clone(),
            accounts,
            channel: channel.map(Arc::new),
            caller_uid: caller.uid,
        };
        // Held until the package is on the machine: its user's turn.
        let _turn = match &entry.image.package {
            Some(pkg) => self.admit_package(&entry.image, pkg, &req.command, caller, req.passed.tty.is_some(), control).await?,
            None => None,
        };
        let (started, served, image_id) = self.pool.run(&entry.image, &req.command, launch, progress_to(control)).await?;
        // A package just fetched brings its man pages and completions, and
        // the commands its install made.
        if served == Served::Pulled && entry.image.package.is_some() {
            self.docs.wake.notify_one();
            let (d, image) = (self.clone(), entry.image.clone());
            self.tasks.spawn(async move { d.learn_commands(&image).await });
        }
        self.predict_next(&req.command, session.map_or_else(|| format!("pid{}", caller.pid), |s| s.to_string()));
        Ok((started, entry.image.name.clone(), served, image_id))
    }
}

/// The caller's fds, and the launcher's channel when the request says the
/// last one is it. The agent speaks frames on that one: it must be what
/// odfs-launch makes, a connected Unix stream socket of the caller's own
/// (a socketpair's peer is its creator); anything else is refused, never
/// written to.
fn split_channel(mut fds: Vec<OwnedFd>, req: &ExecRequest, caller: &Caller) -> Result<(Vec<OwnedFd>, Option<OwnedFd>), CallError> {
    if !req.passed.channel {
        return Ok((fds, None));
    }
    match fds.pop() {
        Some(channel) if fds.len() == req.passed.fds.len() && is_callers_channel(&channel, caller.uid) => Ok((fds, Some(channel))),
        _ => Err(CallError::Request("the request's channel is missing or not a socketpair of the caller's (is odfs-launch another version?)".into())),
    }
}

fn is_callers_channel(fd: &OwnedFd, uid: u32) -> bool {
    use nix::sys::socket::{getsockopt, getsockname, sockopt, AddressFamily, SockType, SockaddrLike, UnixAddr};
    let unix = getsockname::<UnixAddr>(fd.as_raw_fd()).is_ok_and(|a| a.family() == Some(AddressFamily::Unix));
    unix && getsockopt(fd, sockopt::SockType) == Ok(SockType::Stream)
        && getsockopt(fd, sockopt::AcceptConn) == Ok(false)
        && getsockopt(fd, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(gui: bool, network: crate::catalog::Network) -> crate::catalog::ImageSpec {
        let text = format!("[image.i]\nref = \"r\"\ngui = {gui}\nnetwork = \"{}\"\ncommands = [\"x\"]\n", network.as_str());
        let cat = crate::catalog::parse_file(std::path::Path::new("t.toml"), &text).unwrap();
        cat.images["i"].clone()
    }

    #[test]
    fn a_display_is_passed_to_graphical_images_only() {
        use crate::catalog::Network;
        let caller: Vec<Vec<u8>> = ["DISPLAY=:1", "XAUTHORITY=/home/u/.Xauthority", "XDG_RUNTIME_DIR=/run/user/1000", "TERM=xterm", "WAYLAND_DISPLAY=wayland-0"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let shaped = |gui, privileged| {
            let mut env = tool_env(&caller, &[], privileged, None);
            image_env(&mut env, &caller, &image(gui, Network::None), privileged, &[]);
            env.iter().map(|v| String::from_utf8(v.clone()).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(shaped(false, false), ["XDG_RUNTIME_DIR=/run/user/1000", "TERM=xterm"]);
        assert_eq!(shaped(true, false).len(), 5);
        // A privileged graphical tool gets the display's number, no path.
        let p = shaped(true, true);
        assert_eq!(p, ["TERM=xterm", "DISPLAY=:1"]);
        assert!(!shaped(false, true).iter().any(|v| v.starts_with("DISPLAY=")));
    }

    #[test]
    fn the_site_s_proxy_reaches_networked_tools_unless_the_caller_chose_one() {
        use crate::catalog::Network;
        let site = [("http_proxy".to_string(), "http://p:3128".to_string()), ("HTTP_PROXY".to_string(), "http://p:3128".to_string())];
        let run = |caller: &[&str], network| {
            let caller: Vec<Vec<u8>> = caller.iter().map(|s| s.as_bytes().to_vec()).collect();
            let mut env = tool_env(&caller, &[], false, None);
            image_env(&mut env, &caller, &image(false, network), false, &site);
            env.iter().map(|v| String::from_utf8(v.clone()).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(&[], Network::Host), ["http_proxy=http://p:3128", "HTTP_PROXY=http://p:3128"]);
        assert_eq!(run(&["HTTP_PROXY=http://mine:1"], Network::Bridge), ["HTTP_PROXY=http://mine:1"]);
        assert!(run(&[], Network::None).is_empty());
    }

    #[test]
    fn caller_tools_get_the_environment_as_it_is_privileged_ones_an_allowlist() {
        let env: Vec<Vec<u8>> =
            ["TERM=xterm", "LC_ALL=C", "LD_PRELOAD=/x.so", "RIPGREP_CONFIG_PATH=/tmp/rgrc", "JQ_COLORS=1", "HOME=/root", "ODFS_CALLER=forged", "NOEQ"]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect();
        let text = |v: Vec<Vec<u8>>| -> Vec<String> { v.into_iter().map(|v| String::from_utf8(v).unwrap()).collect() };
        // As it is: only the stamp is ours, and a line without `=` is no variable.
        assert_eq!(
            text(tool_env(&env, &[], false, Some("S"))),
            ["TERM=xterm", "LC_ALL=C", "LD_PRELOAD=/x.so", "RIPGREP_CONFIG_PATH=/tmp/rgrc", "JQ_COLORS=1", "HOME=/root", "ODFS_CALLER=S"]
        );
        // Privileged: the allowlist and the entry's own names, never a loader variable.
        assert_eq!(text(tool_env(&env, &["JQ_COLORS".into(), "LD_PRELOAD".into()], true, Some("S"))), ["TERM=xterm", "LC_ALL=C", "JQ_COLORS=1", "HOME=/root", "ODFS_CALLER=S"]);
        let files: Vec<Vec<u8>> = ["LC_ALL=/tmp/x", "TZ=/etc/shadow", "LANG=C.UTF-8", "TZ=UTC", "GCONV_PATH=/tmp"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(text(tool_env(&files, &["GCONV_PATH".into()], true, Some("S"))), ["LANG=C.UTF-8", "TZ=UTC", "ODFS_CALLER=S"]);
        assert_eq!(tool_env(&files, &[], false, None).len(), 5);
    }

}
