//! The benchmark's measurements, against the real engine and a mount of its
//! own: each section alternates its candidates round by round, so drift on
//! a shared machine hits them all alike.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::stats::Measured;
use crate::protocol::stages::{now_ns, STAGES_ENV};
use super::stats::Summary;

/// How many samples each section takes.
#[derive(Debug, Clone)]
pub struct Counts {
    pub warm_rounds: usize,
    /// Every how many warm rounds `docker run --rm` joins (it is slow).
    pub docker_run_every: usize,
    pub paused: usize,
    pub cold: usize,
    pub stdio_bytes: u64,
    pub stdio_rounds: usize,
    pub burst: usize,
    pub catalog_size: usize,
    pub ls_runs: usize,
    pub miss_runs: usize,
    pub launcher_runs: usize,
    /// Rounds of the remote-engine section, and calls per concurrent caller.
    pub remote_rounds: usize,
    pub remote_parallel_calls: usize,
    /// Rounds of the loops section, and calls per loop.
    pub loop_rounds: usize,
    pub loop_calls: usize,
    /// Traced warm calls of the stage breakdown.
    pub stage_rounds: usize,
}

impl Counts {
    pub fn full() -> Counts {
        Counts {
            warm_rounds: 300,
            docker_run_every: 10,
            paused: 20,
            cold: 15,
            stdio_bytes: 1 << 30,
            stdio_rounds: 3,
            burst: 256,
            catalog_size: 10_000,
            ls_runs: 30,
            miss_runs: 200,
            launcher_runs: 5,
            remote_rounds: 100,
            remote_parallel_calls: 50,
            loop_rounds: 3,
            loop_calls: 1000,
            stage_rounds: 300,
        }
    }

    /// Tiny counts: every code path, in seconds (the test command runs it).
    pub fn smoke() -> Counts {
        Counts {
            warm_rounds: 4,
            docker_run_every: 2,
            paused: 1,
            cold: 1,
            stdio_bytes: 4 << 20,
            stdio_rounds: 1,
            burst: 8,
            catalog_size: 200,
            ls_runs: 2,
            miss_runs: 3,
            launcher_runs: 1,
            remote_rounds: 2,
            remote_parallel_calls: 2,
            loop_rounds: 1,
            loop_calls: 4,
            stage_rounds: 3,
        }
    }
}

/// Everything one run found.
#[derive(Debug, Clone)]
pub struct Results {
    pub warm: Vec<Measured>,
    /// Paused calls, and warm calls after the same wait.
    pub paused: Vec<Measured>,
    pub cold: Vec<Measured>,
    /// MB/s.
    pub stdio: Vec<Measured>,
    pub burst: Burst,
    pub discovery: Discovery,
    /// Instructions per warm call of the launcher, if valgrind is here.
    pub launcher_instructions: Option<u64>,
    /// The relay path against the local fd path, when a remote engine was given.
    pub remote: Option<RemoteResults>,
    /// Calls in loops, ms per call: each way of looping, natively and through the shim.
    pub loops: Vec<LoopResult>,
    pub stages: Stages,
    /// Where a cold call's time goes: its container created and started.
    pub cold_stages: Brought,
    /// Where a paused call's time goes: its container thawed.
    pub paused_stages: Brought,
    pub held: Held,
}

/// What an idle container holds: a frozen one, and one made ahead.
#[derive(Debug, Clone)]
pub struct Held {
    /// A frozen container's memory as the idle budget counts it: its
    /// cgroup and the engine's process beside it.
    pub frozen_bytes: u64,
    /// One made ahead: its memory as the budget counts it, and its
    /// writable layer on the engine's disk (bytes).
    pub made_ahead: (u64, u64),
}

/// The stages of calls whose container was brought up for them, each
/// traced (their stages add up to the call; medians do not, exactly).
#[derive(Debug, Clone)]
pub struct Brought {
    pub whole: Measured,
    pub stages: Vec<Measured>,
}

/// Where a warm call's time goes (see [`super::stages`]), beside native
/// calls of the same rounds.
#[derive(Debug, Clone)]
pub struct Stages {
    pub native: Measured,
    pub whole: Measured,
    /// In order; they add up to the call.
    pub stages: Vec<Measured>,
    /// In parallel with the tool.
    pub alongside: Vec<Measured>,
}

/// One way of looping over calls, natively and through a shim.
#[derive(Debug, Clone)]
pub struct LoopResult {
    pub how: String,
    /// Calls in one loop.
    pub calls: usize,
    pub native: Measured,
    pub odfs: Measured,
}

#[derive(Debug, Clone)]
pub struct RemoteResults {
    pub engine: String,
    /// Warm `true`: local fd path, remote relay path, `docker exec` on the remote engine.
    pub warm: Vec<Measured>,
    /// MB/s through `cat`: local, remote.
    pub stdio: Vec<Measured>,
    /// Calls per second with `parallel` callers: local, remote.
    pub calls_per_s: Vec<(String, f64)>,
    pub parallel: usize,
}

/// A remote engine to measure the relay path on: its URL and, for TLS, the
/// directory of `ca.pem`, `cert.pem`, `key.pem`.
#[derive(Debug, Clone)]
pub struct RemoteEngine {
    pub url: String,
    pub certs: Option<PathBuf>,
}

impl RemoteEngine {
    /// Not on this machine: its mounts are told apart from local ones.
    fn is_remote(&self) -> bool {
        !self.url.starts_with("unix://") && !self.url.starts_with("cri+unix://")
    }

    /// Environment that gives a daemon or the docker CLI this engine's TLS.
    fn tls_env(&self) -> Vec<(&'static str, String)> {
        self.certs.iter().flat_map(|c| [("DOCKER_TLS_VERIFY", "1".to_string()), ("DOCKER_CERT_PATH", c.display().to_string())]).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Burst {
    pub callers: usize,
    pub wall_ms: f64,
    pub containers: usize,
    pub failures: usize,
}

#[derive(Debug, Clone)]
pub struct Discovery {
    pub commands: usize,
    pub ls: Measured,
    pub miss_mount: Measured,
    pub miss_empty: Measured,
    pub rss_kib: u64,
}

/// Paths of the binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub odfs: PathBuf,
    pub launcher: PathBuf,
    pub agent: PathBuf,
}

pub const IMAGE: &str = "odfs-test/busybox:latest";
/// Label on the containers the benchmark starts itself, for clean-up; its
/// value is the pid of the run that started them.
const LABEL: &str = "io.odfs.bench";

/// A mount of its own: temp dir, catalog, daemon; gone on drop.
pub struct Mount {
    pub root: PathBuf,
    pub mnt: PathBuf,
    pub id: String,
    daemon: Child,
    remote: Option<RemoteEngine>,
}

impl Mount {
    pub fn start(bins: &Binaries, name: &str, catalog: &str) -> std::io::Result<Mount> {
        Self::start_on(bins, name, catalog, None)
    }

    /// A mount whose daemon uses `remote` as its engine, or the local one.
    pub(super) fn start_on(bins: &Binaries, name: &str, catalog: &str, remote: Option<&RemoteEngine>) -> std::io::Result<Mount> {
        let root = PathBuf::from(format!("/tmp/odfs-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["mnt", "state", "catalog", "work"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::write(root.join("catalog/bench.toml"), catalog)?;
        let mnt = root.join("mnt");
        let log = std::fs::File::create(root.join("daemon.log"))?;
        let daemon = Command::new(&bins.odfs)
            .arg("mount")
            .arg("--catalog")
            .arg(root.join("catalog"))
            .arg("--state")
            .arg(root.join("state"))
            .arg("--agent")
            .arg(&bins.agent)
            .arg("--launcher")
            .arg(&bins.launcher)
            .args(remote.iter().flat_map(|r| ["--engine".to_string(), r.url.clone()]))
            .envs(remote.map(RemoteEngine::tls_env).unwrap_or_default())
            .arg(&mnt)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let id = crate::daemon::mount_id(&mnt, remote.is_some_and(RemoteEngine::is_remote));
        let m = Mount { root, mnt, id, daemon, remote: remote.cloned() };
        let socket = m.root.join("state/odfs.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(std::os::unix::net::UnixStream::connect(&socket).is_ok() && std::fs::read_dir(&m.mnt)?.next().is_some()) {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("the bench mount did not come up; see {}/daemon.log", m.root.display())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(m)
    }

    pub fn shim(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.id()
    }

    /// What the container of `image` holds, as `odfs status` reports it.
    fn held(&self, bins: &Binaries, image: &str) -> std::io::Result<u64> {
        let o = Command::new(&bins.odfs).args(["status", "--json", "--socket"]).arg(self.root.join("state/odfs.sock")).output()?;
        let status: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(std::io::Error::other)?;
        let row = status["containers"].as_array().and_then(|rows| rows.iter().find(|r| r["image"] == image).cloned());
        Ok(row.and_then(|r| r["memory"].as_u64()).unwrap_or(0))
    }

    /// The container of `image` made ahead: its memory (none: it has no
    /// process) and its writable layer's size.
    fn made_ahead(&self, image: &str) -> std::io::Result<(u64, u64)> {
        let mut args = vec!["ps".to_string(), "-aq".into(), "--filter".into(), "status=created".into()];
        args.extend(["--filter".into(), format!("label=io.odfs.mount={}", self.id), "--filter".into(), format!("label=io.odfs.image={image}")]);
        let o = docker_on(self.remote.as_ref()).args(&args).output()?;
        let id = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string();
        let o = docker_on(self.remote.as_ref()).args(["inspect", "--size", "-f", "{{.SizeRw}}", &id]).output()?;
        Ok((0, String::from_utf8_lossy(&o.stdout).trim().parse().unwrap_or(0)))
    }

    /// Containers of this mount's `image` that exist now, with `status`
    /// (`paused`…) if given.
    fn containers_of(&self, image: &str, status: Option<&str>) -> usize {
        let mut args = vec!["ps".to_string(), "-q".into(), "--filter".into(), format!("label=io.odfs.mount={}", self.id)];
        args.extend(["--filter".into(), format!("label=io.odfs.image={image}")]);
        args.extend(status.map(|s| ["--filter".to_string(), format!("status={s}")]).into_iter().flatten());
        let o = docker_on(self.remote.as_ref()).args(&args).output().expect("docker");
        String::from_utf8_lossy(&o.stdout).lines().count()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let docker = |args: &[&str]| docker_on(self.remote.as_ref()).args(args).output().expect("docker");
        let o = docker(&["ps", "-aq", "--filter", &format!("label=io.odfs.mount={}", self.id)]);
        for id in String::from_utf8_lossy(&o.stdout).lines() {
            let _ = docker(&["rm", "-f", id]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The docker CLI for the local engine, or for `remote` with its TLS.
fn docker_on(remote: Option<&RemoteEngine>) -> Command {
    let mut c = Command::new("docker");
    if let Some(r) = remote {
        c.args(["-H", &r.url]).envs(r.tls_env());
    }
    c
}

/// Wall time of one run of a command with stdio to /dev/null, in ms; a
/// failure is an error (a benchmark of failures measures nothing).
pub(super) fn time_ms(cmd: &mut Command) -> std::io::Result<f64> {
    let start = Instant::now();
    let status = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        return Err(std::io::Error::other(format!("{cmd:?} failed: {status}")));
    }
    Ok(ms)
}

/// The main mount's catalog: one warm profile, one that freezes after 1 s,
/// one removed after every call, one for the burst. Profiles differ by
/// their `pids` limit, so each has a container of its own.
fn catalog() -> String {
    let mut text = format!("[image.warm]\nref = \"{IMAGE}\"\nnetwork = \"none\"\nkeep_alive = \"1h\"\ncommands = [\"true\", \"cat\"]\n");
    for (image, command, keep, pids) in [
        ("frozen", "paused-true", "keep_alive = \"1h\"\npause_after = \"1s\"", 4097),
        ("cold", "cold-true", "keep_alive = \"0s\"", 4098),
        ("burst", "burst-true", "keep_alive = \"1h\"", 4099),
        // Two versions of one command: the warm call of a bare name that a
        // project's pin file resolves (`PINNED`).
        ("pinned-1", "\"ptrue@1\"", "keep_alive = \"1h\"\nversion = \"1\"", 4100),
        ("pinned-2", "\"ptrue@2\"", "keep_alive = \"1h\"\nversion = \"2\"", 4101),
    ] {
        text += &format!(
            "\n[image.{image}]\nref = \"{IMAGE}\"\nnetwork = \"none\"\n{keep}\npids = {pids}\n\n[command.{command}]\nimage = \"{image}\"\npath = \"/bin/true\"\n"
        );
    }
    text
}

/// Run candidates `0..n` once each, in an order of their own every round
/// (a shuffle seeded by the round), so that none is always first nor
/// always after the same one. A rotation kept the cyclic order: the
/// candidate after `docker exec`, which leaves the engine busy for a while
/// after it returns, was always the same one and paid for it.
pub(super) fn shuffled(round: usize, n: usize, mut each: impl FnMut(usize) -> std::io::Result<()>) -> std::io::Result<()> {
    shuffle_order(round, n).into_iter().try_for_each(&mut each)
}

/// `0..n` in round `round`'s order (xorshift64*, Fisher-Yates).
fn shuffle_order(round: usize, n: usize) -> Vec<usize> {
    let mut state = (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    order
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_candidate_follows_every_other_about_as_often() {
        let n = 4;
        let mut after = vec![vec![0u32; n]; n];
        let mut prev: Option<usize> = None;
        for round in 0..4000 {
            for c in super::shuffle_order(round, n) {
                if let Some(p) = prev {
                    after[p][c] += 1;
                }
                prev = Some(c);
            }
        }
        // 12,000 steps within rounds over the 12 ordered pairs of different
        // candidates (1,000 each), and 3,999 across rounds' edges over all
        // 16 pairs (about 250 each).
        for (p, row) in after.iter().enumerate() {
            for (c, &k) in row.iter().enumerate() {
                let expected = if p == c { 150..=350 } else { 1100..=1400 };
                assert!(expected.contains(&k), "{c} after {p}: {k} times");
            }
        }
    }
}

/// A plain container of the test image for `docker exec` (what distrobox
/// and toolbox do per call), on the local engine or `remote`.
struct ExecTarget {
    name: String,
    remote: Option<RemoteEngine>,
}

impl ExecTarget {
    fn start(remote: Option<&RemoteEngine>) -> std::io::Result<ExecTarget> {
        remove_leftovers(remote);
        let name = format!("odfs-bench-exec-{}", std::process::id());
        let docker = |args: &[&str]| docker_on(remote).args(args).output();
        let _ = docker(&["rm", "-f", &name]);
        let label = format!("{LABEL}={}", std::process::id());
        let o = docker(&["run", "-d", "--name", &name, "--label", &label, "--network", "none", IMAGE, "sleep", "1d"])?;
        if !o.status.success() {
            return Err(std::io::Error::other(format!("docker run: {}", String::from_utf8_lossy(&o.stderr))));
        }
        Ok(ExecTarget { name, remote: remote.cloned() })
    }

    /// `docker exec` of `cmd` in it.
    fn exec(&self, cmd: &str) -> Command {
        let mut c = docker_on(self.remote.as_ref());
        c.args(["exec", &self.name, cmd]);
        c
    }
}

/// Removes the containers of benchmark runs that died before their own
/// clean-up (killed, or the machine stopped under them): a run's label
/// names its pid, and a pid that is no longer an odfs-bench is dead.
fn remove_leftovers(remote: Option<&RemoteEngine>) {
    let Ok(o) = docker_on(remote).args(["ps", "-a", "--filter", &format!("label={LABEL}"), "--format", &format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}")]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some((id, pid)) = line.split_once(' ') else { continue };
        let alive = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "odfs-bench");
        if !alive {
            let _ = docker_on(remote).args(["rm", "-f", id]).output();
        }
    }
}

impl Drop for ExecTarget {
    fn drop(&mut self) {
        let _ = docker_on(self.remote.as_ref()).args(["rm", "-f", &self.name]).output();
    }
}

/// Run every section; `progress` hears what is being measured.
pub fn run(bins: &Binaries, counts: &Counts, remote: Option<&RemoteEngine>, progress: &mut dyn FnMut(&str)) -> std::io::Result<Results> {
    let main = Mount::start(bins, "main", &catalog())?;
    let exec = ExecTarget::start(None)?;
    let work = main.work();
    let native = |cmd: &str| {
        let mut c = Command::new(cmd);
        c.current_dir(&work);
        c
    };

    progress("warm calls of true: native, odfs, odfs pinned, docker exec, docker run --rm");
    // The work directory pins the versioned `ptrue` to its older version,
    // so each of its calls looks for and reads a pin file.
    std::fs::write(work.join(".odfs.toml"), "[pins]\nptrue = \"1\"\n")?;
    time_ms(&mut native(main.shim("true").to_str().unwrap()))?;
    time_ms(&mut native(main.shim("ptrue").to_str().unwrap()))?;
    time_ms(&mut native(main.shim("ptrue@1").to_str().unwrap()))?;
    let mut warm: [Vec<f64>; 6] = Default::default();
    for round in 0..counts.warm_rounds {
        shuffled(round, 5, |k| {
            // Candidates 3 and 4: the pinned bare name, and the same
            // version by its full name (same container, no pin to look
            // for), kept after docker run's slot.
            let (i, ms) = match k {
                0 => (0, time_ms(&mut native("/bin/true"))?),
                1 => (1, time_ms(&mut native(main.shim("true").to_str().unwrap()))?),
                2 => (2, time_ms(&mut exec.exec("true"))?),
                3 => (4, time_ms(&mut native(main.shim("ptrue").to_str().unwrap()))?),
                _ => (5, time_ms(&mut native(main.shim("ptrue@1").to_str().unwrap()))?),
            };
            warm[i].push(ms);
            Ok(())
        })?;
        if round % counts.docker_run_every == 0 {
            warm[3].push(time_ms(native("docker").args(["run", "--rm", "--network", "none", IMAGE, "true"]))?);
        }
    }
    let warm = vec![
        Measured::new("native /bin/true", std::mem::take(&mut warm[0])),
        Measured::new("odfs shim (warm)", std::mem::take(&mut warm[1])),
        Measured::new("docker exec", std::mem::take(&mut warm[2])),
        Measured::new("docker run --rm", std::mem::take(&mut warm[3])),
        Measured::new("odfs shim, pinned version (warm)", std::mem::take(&mut warm[4])),
        Measured::new("odfs shim, NAME@VERSION (warm)", std::mem::take(&mut warm[5])),
    ];

    progress("stages of a warm call (traced calls)");
    let stages = stages(&main, counts)?;

    progress("paused calls (traced)");
    let frozen_trace = main.root.join("stages-paused");
    let paused_shim = main.shim("paused-true");
    time_ms(&mut native(paused_shim.to_str().unwrap()))?;
    // Beside each, a warm call after the same wait: what a call costs
    // when the machine has been idle as long, with no thaw.
    let (mut paused, mut idle_warm, mut around) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..counts.paused {
        wait_until(Duration::from_secs(10), || shown_state(&paused_shim).as_deref() == Some("paused"))?;
        shuffled(round, 2, |i| {
            if i == 0 {
                let spawn = now_ns();
                paused.push(time_ms(native(paused_shim.to_str().unwrap()).env(STAGES_ENV, &frozen_trace))?);
                around.push((spawn, now_ns()));
            } else {
                idle_warm.push(time_ms(&mut native(main.shim("true").to_str().unwrap()))?);
            }
            Ok(())
        })?;
    }
    let paused_stages = traced(&frozen_trace, &around, super::stages::Kind::Thawed)?;
    wait_until(Duration::from_secs(10), || shown_state(&paused_shim).as_deref() == Some("paused"))?;
    let frozen_bytes = main.held(bins, "frozen")?;
    let paused = vec![Measured::new("odfs shim (paused)", paused), Measured::new("odfs shim (warm, after the same wait)", idle_warm)];

    progress("cold calls: odfs against docker run --rm (traced)");
    let cold_trace = main.root.join("stages-cold");
    let (mut cold_odfs, mut cold_run, mut around) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..counts.cold {
        wait_until(Duration::from_secs(20), || main.containers_of("cold", None) == 0)?;
        shuffled(round, 2, |i| {
            if i == 0 {
                let spawn = now_ns();
                cold_odfs.push(time_ms(native(main.shim("cold-true").to_str().unwrap()).env(STAGES_ENV, &cold_trace))?);
                around.push((spawn, now_ns()));
            } else {
                cold_run.push(time_ms(native("docker").args(["run", "--rm", "--network", "none", IMAGE, "true"]))?);
            }
            Ok(())
        })?;
    }
    let cold_stages = traced(&cold_trace, &around, super::stages::Kind::Started)?;
    wait_until(Duration::from_secs(20), || shown_state(&main.shim("cold-true")).as_deref() == Some("created"))?;
    let made_ahead = main.made_ahead("cold")?;
    let cold = vec![Measured::new("odfs shim (cold)", cold_odfs), Measured::new("docker run --rm", cold_run)];

    progress("stdio throughput through cat");
    let mb = counts.stdio_bytes as f64 / 1e6;
    let count = (counts.stdio_bytes >> 20).max(1);
    let pipeline = |sink: String| {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(format!("dd if=/dev/zero bs=1M count={count} status=none | {sink} >/dev/null")).current_dir(&work);
        c
    };
    let sinks = [
        ("native cat", "cat".to_string()),
        ("odfs shim cat", main.shim("cat").display().to_string()),
        ("docker exec -i cat", format!("docker exec -i {} cat", exec.name)),
    ];
    let mut stdio: [Vec<f64>; 3] = Default::default();
    for round in 0..counts.stdio_rounds {
        shuffled(round, 3, |i| {
            let ms = time_ms(&mut pipeline(sinks[i].1.clone()))?;
            stdio[i].push(mb / (ms / 1e3));
            Ok(())
        })?;
    }
    let stdio = sinks.iter().zip(stdio).map(|((name, _), s)| Measured::new(name, s)).collect();

    progress("burst of first calls");
    let start = Instant::now();
    let children: Vec<Child> = (0..counts.burst)
        .map(|_| native(main.shim("burst-true").to_str().unwrap()).stdout(Stdio::null()).stderr(Stdio::null()).spawn())
        .collect::<Result<_, _>>()?;
    let failures = children.into_iter().map(|mut c| c.wait()).filter(|s| !s.as_ref().is_ok_and(|s| s.success())).count();
    let burst = Burst { callers: counts.burst, wall_ms: start.elapsed().as_secs_f64() * 1e3, containers: main.containers_of("burst", None), failures };

    progress("loops of calls: a shell loop, xargs -n1 -P1 and -P8");
    let loops = loops(&main, counts)?;
    drop(main);

    progress("discovery in a large catalog");
    let discovery = discovery(bins, counts)?;

    progress("launcher instructions per warm call");
    let launcher_instructions = launcher_instructions(bins, counts)?;
    drop(exec);
    let remote = match remote {
        Some(r) => {
            progress("remote engine: the relay path against the local fd path");
            Some(remote_section(bins, counts, r)?)
        }
        None => None,
    };
    let held = Held { frozen_bytes, made_ahead };
    Ok(Results { warm, paused, cold, stdio, burst, discovery, launcher_instructions, remote, loops, stages, cold_stages, paused_stages, held })
}

/// Warm calls traced stage by stage (`ODFS_STAGES`), each beside a native
/// call, with the caller's own stamps around each: when it spawned the
/// shim and when its `wait` returned.
fn stages(main: &Mount, counts: &Counts) -> std::io::Result<Stages> {
    use crate::protocol::stages::CallStamps;
    let trace = main.root.join("stages");
    let _ = std::fs::remove_file(&trace);
    let mut native = Vec::new();
    let mut around = Vec::new();
    for round in 0..counts.stage_rounds {
        shuffled(round, 2, |i| {
            if i == 0 {
                native.push(time_ms(Command::new("/bin/true").current_dir(main.work()))?);
            } else {
                let spawn = now_ns();
                time_ms(Command::new(main.shim("true")).current_dir(main.work()).env(STAGES_ENV, &trace))?;
                around.push((spawn, now_ns()));
            }
            Ok(())
        })?;
    }
    let lines = std::fs::read_to_string(&trace)?;
    let stamps: Vec<CallStamps> = lines.lines().filter_map(CallStamps::parse).collect();
    if stamps.len() != around.len() {
        return Err(std::io::Error::other(format!("{} traced calls wrote {} stage lines to {}", around.len(), stamps.len(), trace.display())));
    }
    let calls: Vec<super::stages::Traced> =
        around.iter().zip(stamps).map(|(&(spawn, done), stamps)| super::stages::Traced { spawn, stamps, done }).collect();
    let (stages, alongside, whole) = super::stages::breakdown(&calls);
    Ok(Stages { native: Measured::new("native /bin/true", native), whole, stages, alongside })
}

/// The calls traced into `trace`, spawned and waited for at `around`,
/// cut into the stages of a container brought up as `kind`.
fn traced(trace: &Path, around: &[(u64, u64)], kind: super::stages::Kind) -> std::io::Result<Brought> {
    use crate::protocol::stages::CallStamps;
    let lines = std::fs::read_to_string(trace)?;
    let stamps: Vec<CallStamps> = lines.lines().filter_map(CallStamps::parse).collect();
    if stamps.len() != around.len() {
        return Err(std::io::Error::other(format!("{} traced calls wrote {} stage lines to {}", around.len(), stamps.len(), trace.display())));
    }
    let calls: Vec<super::stages::Traced> =
        around.iter().zip(stamps).map(|(&(spawn, done), stamps)| super::stages::Traced { spawn, stamps, done }).collect();
    let (stages, whole) = super::stages::brought_up(&calls, kind);
    Ok(Brought { whole, stages })
}

/// The state the mount shows for a shim's container (`user.odfs.state`).
fn shown_state(shim: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(shim.as_os_str().as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated; the buffer is ours and its
    // length is given.
    let n = unsafe { libc::getxattr(path.as_ptr(), c"user.odfs.state".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

/// What a `make` recipe, `find -exec` or a script pays per file: calls of
/// `true` in a shell loop and through `xargs -n1` one and eight at a time,
/// natively and through the shim, in ms per call (wall time of the loop
/// over its calls), the candidates alternated round by round.
fn loops(main: &Mount, counts: &Counts) -> std::io::Result<Vec<LoopResult>> {
    let n = counts.loop_calls;
    let shim = main.shim("true").display().to_string();
    let ways = [
        ("shell loop", format!("i=0; while [ $i -lt {n} ]; do \"$T\"; i=$((i+1)); done")),
        ("xargs -n1 -P1", format!("seq {n} | xargs -n1 -P1 \"$T\"")),
        ("xargs -n1 -P8", format!("seq {n} | xargs -n1 -P8 \"$T\"")),
    ];
    let mut out = Vec::new();
    for (how, script) in ways {
        let mut per_call: [Vec<f64>; 2] = Default::default();
        for round in 0..counts.loop_rounds {
            shuffled(round, 2, |i| {
                let tool = if i == 0 { "/bin/true" } else { shim.as_str() };
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(&script).env("T", tool).current_dir(main.work());
                per_call[i].push(time_ms(&mut c)? / n as f64);
                Ok(())
            })?;
        }
        let [native, odfs] = per_call;
        out.push(LoopResult {
            how: how.to_string(),
            calls: n,
            native: Measured::new(&format!("native, {how}"), native),
            odfs: Measured::new(&format!("odfs shim, {how}"), odfs),
        });
    }
    Ok(out)
}

/// Warm latency, stdio throughput and concurrent calls per second of the
/// same tools on a local mount (fd path) and a remote-engine mount (relay).
fn remote_section(bins: &Binaries, counts: &Counts, engine: &RemoteEngine) -> std::io::Result<RemoteResults> {
    let catalog = format!("[image.warm]\nref = \"{IMAGE}\"\nnetwork = \"none\"\nkeep_alive = \"1h\"\ncommands = [\"true\", \"cat\"]\n");
    let local = Mount::start(bins, "local", &catalog)?;
    let remote = Mount::start_on(bins, "remote", &catalog, Some(engine))?;
    let exec = ExecTarget::start(Some(engine))?;
    let mounts = [&local, &remote];
    let run = |m: &Mount, tool: &str| {
        let mut c = Command::new(m.shim(tool));
        c.current_dir(m.work());
        c
    };
    for m in mounts {
        time_ms(&mut run(m, "true"))?;
    }
    let mut warm: [Vec<f64>; 3] = Default::default();
    let result = (|| {
        for round in 0..counts.remote_rounds {
            shuffled(round, 3, |i| {
                warm[i].push(match i {
                    2 => time_ms(&mut exec.exec("true"))?,
                    _ => time_ms(&mut run(mounts[i], "true"))?,
                });
                Ok(())
            })?;
        }
        let count = (counts.stdio_bytes >> 20).max(1);
        let mb = (count << 20) as f64 / 1e6;
        let mut stdio: [Vec<f64>; 2] = Default::default();
        for round in 0..counts.stdio_rounds {
            shuffled(round, 2, |i| {
                let script = format!("dd if=/dev/zero bs=1M count={count} status=none | {} >/dev/null", mounts[i].shim("cat").display());
                let ms = time_ms(Command::new("/bin/sh").args(["-c", &script]).current_dir(mounts[i].work()))?;
                stdio[i].push(mb / (ms / 1e3));
                Ok(())
            })?;
        }
        let parallel = 8;
        let mut calls_per_s = Vec::new();
        for (name, m) in [("local (fd path)", &local), ("remote (relay path)", &remote)] {
            let start = Instant::now();
            let workers: Vec<_> = (0..parallel)
                .map(|_| {
                    let (shim, work) = (m.shim("true"), m.work());
                    let n = counts.remote_parallel_calls;
                    std::thread::spawn(move || (0..n).try_for_each(|_| time_ms(Command::new(&shim).current_dir(&work)).map(|_| ())))
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| std::io::Error::other("a caller thread panicked"))??;
            }
            calls_per_s.push((name.to_string(), (parallel * counts.remote_parallel_calls) as f64 / start.elapsed().as_secs_f64()));
        }
        Ok(RemoteResults {
            engine: engine.url.clone(),
            warm: vec![
                Measured::new("local engine, fd path", std::mem::take(&mut warm[0])),
                Measured::new("remote engine, relay path", std::mem::take(&mut warm[1])),
                Measured::new("docker exec on the remote engine", std::mem::take(&mut warm[2])),
            ],
            stdio: vec![Measured::new("local cat, fd path", std::mem::take(&mut stdio[0])), Measured::new("remote cat, relay path", std::mem::take(&mut stdio[1]))],
            calls_per_s,
            parallel,
        })
    })();
    drop(exec);
    result
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> std::io::Result<()> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(std::io::Error::other("timed out waiting for a container state"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn discovery(bins: &Binaries, counts: &Counts) -> std::io::Result<Discovery> {
    let names: Vec<String> = (0..counts.catalog_size).map(|i| format!("\"tool{i:05}\"")).collect();
    let catalog = format!("[image.many]\nref = \"{IMAGE}\"\nnetwork = \"none\"\ncommands = [{}]\n", names.join(", "));
    let m = Mount::start(bins, "many", &catalog)?;
    let empty = m.root.join("empty");
    std::fs::create_dir_all(&empty)?;
    let ls = (0..counts.ls_runs)
        .map(|_| time_ms(Command::new("ls").arg(&m.mnt)))
        .collect::<std::io::Result<Vec<f64>>>()?;
    let (miss_mount, miss_empty) = path_misses(&m.mnt, &empty, counts.miss_runs)?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", m.daemon_pid()))?;
    Ok(Discovery {
        commands: counts.catalog_size,
        ls: Measured::new("ls of the mount", ls),
        miss_mount,
        miss_empty,
        rss_kib: super::parse::rss_kib(&status).unwrap_or(0),
    })
}

/// A shell's search for a command no directory has, with `mount` on PATH
/// and with `empty` there instead, alternated round by round.
pub(super) fn path_misses(mount: &Path, empty: &Path, runs: usize) -> std::io::Result<(Measured, Measured)> {
    let miss = |dir: &Path| {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg("command -v nosuchtool || true").env("PATH", format!("/usr/bin:/bin:{}", dir.display()));
        c
    };
    let (mut on_mount, mut on_empty) = (Vec::new(), Vec::new());
    for round in 0..runs {
        shuffled(round, 2, |i| {
            let (dir, into) = if i == 0 { (mount, &mut on_mount) } else { (empty, &mut on_empty) };
            into.push(time_ms(&mut miss(dir))?);
            Ok(())
        })?;
    }
    Ok((Measured::new("PATH miss, mount on PATH", on_mount), Measured::new("PATH miss, empty dir on PATH", on_empty)))
}

/// Instructions the launcher executes for one warm call (valgrind's
/// callgrind, so the figure does not depend on the machine's load).
fn launcher_instructions(bins: &Binaries, counts: &Counts) -> std::io::Result<Option<u64>> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Ok(None);
    }
    let m = Mount::start(bins, "launcher", &format!("[image.warm]\nref = \"{IMAGE}\"\nnetwork = \"none\"\ncommands = [\"true\"]\n"))?;
    let socket = m.root.join("state/odfs.sock");
    time_ms(Command::new(m.shim("true")).current_dir(m.work()))?;
    let mut counts_seen = Vec::new();
    for _ in 0..counts.launcher_runs {
        let o = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&bins.launcher)
            .arg(&socket)
            .arg(m.shim("true"))
            .current_dir(m.work())
            .output()?;
        if let Some(n) = super::parse::callgrind_instructions(&String::from_utf8_lossy(&o.stderr)) {
            counts_seen.push(n as f64);
        }
    }
    Ok(Summary::of(&counts_seen).map(|s| s.median as u64))
}
