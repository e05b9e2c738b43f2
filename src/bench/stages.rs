//! Where a warm call's time goes: traced calls' stamps (see
//! [`crate::protocol::stages`]) cut into the stages of the report (pure).

use super::stats::Measured;
use crate::protocol::stages::CallStamps;

/// One traced call: when the caller spawned the shim, the call's stamps,
/// and when the caller's `wait` returned (ns, `CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy)]
pub struct Traced {
    pub spawn: u64,
    pub stamps: CallStamps,
    pub done: u64,
}

/// A stage: its name, and the stamps it runs between.
type Stage = (&'static str, fn(&Traced) -> (u64, u64));

/// The stages of a call in the order they happen, each from one stamp to
/// the next, so that they add up to the whole call.
const STAGES: [Stage; 9] = [
    ("exec of the shim: kernel `#!`, launcher start", |t| (t.spawn, t.stamps.main)),
    ("launcher: fds, signals, connect", |t| (t.stamps.main, t.stamps.sent)),
    ("daemon: wake-up, accept, admission", |t| (t.stamps.sent, t.stamps.daemon.accepted)),
    ("daemon: read the request", |t| (t.stamps.daemon.accepted, t.stamps.daemon.read)),
    ("daemon: credentials, policy, pool, spawn request", |t| (t.stamps.daemon.read, t.stamps.daemon.agent)),
    ("agent: accept, peer check, read", |t| (t.stamps.daemon.agent, t.stamps.agent.received)),
    ("agent: fork, caller's identity and fds, to execve", |t| (t.stamps.agent.received, t.stamps.agent.exec)),
    ("tool: execve to exit", |t| (t.stamps.agent.exec, t.stamps.agent.reaped)),
    ("exit: agent's reap to the caller's wait", |t| (t.stamps.agent.reaped, t.done)),
];

/// What happens meanwhile, in parallel with the tool: not part of the sum.
const ALONGSIDE: [Stage; 3] = [
    ("agent's `Started` back to the daemon", |t| (t.stamps.daemon.agent, t.stamps.daemon.started)),
    ("hand-off: daemon to launcher", |t| (t.stamps.daemon.started, t.stamps.handoff)),
    ("exit event read to launcher's exit", |t| (t.stamps.event, t.stamps.exit)),
];

/// How the container of a traced call came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Created and started for it (or for the open of its shim just before).
    Started,
    /// Thawed for it.
    Thawed,
}

/// A stamp of a call brought up: the moment a stage ends.
type Mark = (&'static str, fn(&Traced) -> u64);

/// The stages of a call brought up, up to the pool: the same for both kinds.
const ARRIVE: [Mark; 2] = [
    ("exec of the shim, the launcher to its request", |t| t.stamps.sent),
    ("daemon: accept, read, credentials, policy, to the pool", |t| t.stamps.daemon.up.pool),
];

/// What bringing a started container up takes, each stage named by what
/// runs up to its stamp.
const STARTED: [Mark; 4] = [
    ("pool: the image's id, the view, the run directory", |t| t.stamps.daemon.up.prepared),
    ("engine: create", |t| t.stamps.daemon.up.created),
    ("engine: start (its shim, the runtime, namespaces, mounts)", |t| t.stamps.daemon.up.launched),
    ("agent: from the start to its first answer", |t| t.stamps.daemon.up.ready),
];

/// What bringing a thawed container up takes.
const THAWED: [Mark; 1] = [("thaw (the cgroup freezer, or the engine's unpause)", |t| t.stamps.daemon.up.thawed)];

/// The stages of a call brought up, from its container running to the
/// caller's wait.
const SPAWN: [Mark; 4] = [
    ("daemon: the caller's paths, the spawn request", |t| t.stamps.daemon.agent),
    ("agent: accept to execve", |t| t.stamps.agent.exec),
    ("tool: execve to exit", |t| t.stamps.agent.reaped),
    ("exit: agent's reap to the caller's wait", |t| t.done),
];

/// The stages of calls whose container came up as `kind`, and their whole
/// duration. Each stage runs from the previous stamp (or the shim's
/// spawn) to its own; a stamp earlier than the one before it (the
/// container was started on the shim's open, before the request) ends its
/// stage at once, so the stages always add up to the call.
pub fn brought_up(calls: &[Traced], kind: Kind) -> (Vec<Measured>, Measured) {
    let up: &[Mark] = match kind {
        Kind::Started => &STARTED,
        Kind::Thawed => &THAWED,
    };
    let marks: Vec<Mark> = ARRIVE.iter().chain(up).chain(&SPAWN).copied().collect();
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); marks.len()];
    for t in calls {
        let mut at = t.spawn;
        for (i, (_, mark)) in marks.iter().enumerate() {
            let end = mark(t).max(at);
            columns[i].push(span_ms((at, end)));
            at = end;
        }
    }
    let stages = marks.iter().zip(columns).map(|((name, _), v)| Measured::new(name, v)).collect();
    (stages, Measured::new("whole call (traced)", calls.iter().map(|t| span_ms((t.spawn, t.done))).collect()))
}

/// ms from `a` to `b`; a stage whose stamps crossed (taken on two cores a
/// few µs apart) counts as 0.
fn span_ms((a, b): (u64, u64)) -> f64 {
    b.saturating_sub(a) as f64 / 1e6
}

fn measure(calls: &[Traced], stages: &[Stage]) -> Vec<Measured> {
    stages.iter().map(|(name, f)| Measured::new(name, calls.iter().map(|t| span_ms(f(t))).collect())).collect()
}

/// The stages of `calls`, in order (they add up to the call), then what
/// runs alongside them, and the calls' whole duration.
pub fn breakdown(calls: &[Traced]) -> (Vec<Measured>, Vec<Measured>, Measured) {
    let whole = Measured::new("whole call (traced)", calls.iter().map(|t| span_ms((t.spawn, t.done))).collect());
    (measure(calls, &STAGES), measure(calls, &ALONGSIDE), whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::stages::{AgentStamps, DaemonStamps};

    fn call(base: u64) -> Traced {
        let ms = |n: u64| base + n * 1_000_000;
        Traced {
            spawn: ms(0),
            stamps: CallStamps {
                main: ms(1),
                sent: ms(2),
                daemon: DaemonStamps { accepted: ms(3), read: ms(4), agent: ms(5), started: ms(8), ..Default::default() },
                agent: AgentStamps { received: ms(6), forked: ms(6), exec: ms(7), reaped: ms(10) },
                handoff: ms(9),
                event: ms(11),
                exit: ms(12),
            },
            done: ms(13),
        }
    }

    #[test]
    fn stages_follow_one_another_and_add_up_to_the_call() {
        let calls = [call(5_000_000_000), call(9_000_000_000)];
        let (stages, alongside, whole) = breakdown(&calls);
        let medians: Vec<f64> = stages.iter().map(|m| m.summary.median).collect();
        assert_eq!(medians, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0]);
        assert_eq!(medians.iter().sum::<f64>(), whole.summary.median);
        assert_eq!(alongside.iter().map(|m| m.summary.median).collect::<Vec<_>>(), [3.0, 1.0, 1.0]);
        assert_eq!(whole.summary.n, 2);
    }

    #[test]
    fn a_started_call_s_stages_add_up_even_when_the_start_began_on_the_open() {
        use crate::protocol::stages::UpStamps;
        let mut c = call(1_000_000_000);
        let ms = |n: u64| 1_000_000_000 + n * 1_000_000;
        // Started on the shim's open: the pool's stamps precede the request.
        c.stamps.daemon.up = UpStamps { pool: ms(0), prepared: ms(1), created: ms(2), launched: ms(4), ready: ms(5), thawed: 0 };
        c.stamps.daemon.agent = ms(6);
        let (stages, whole) = brought_up(&[c], Kind::Started);
        let medians: Vec<f64> = stages.iter().map(|m| m.summary.median).collect();
        assert_eq!(medians, [2.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 3.0, 3.0]);
        assert_eq!(medians.iter().sum::<f64>(), whole.summary.median);
        // A thawed call: the thaw between the pool and the spawn request.
        c.stamps.daemon.up = UpStamps { pool: ms(3), thawed: ms(4), ..Default::default() };
        c.stamps.daemon.agent = ms(5);
        let (stages, _) = brought_up(&[c], Kind::Thawed);
        assert_eq!(stages.iter().map(|m| m.summary.median).collect::<Vec<_>>(), [2.0, 1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
    }

    #[test]
    fn crossed_stamps_count_as_no_time() {
        let mut c = call(1_000_000_000);
        // The tool ended before the agent's thread read the exec.
        c.stamps.agent.exec = c.stamps.agent.reaped + 5;
        let (stages, _, _) = breakdown(&[c]);
        assert_eq!(stages[7].summary.median, 0.0);
    }
}
