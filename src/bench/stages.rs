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
    fn crossed_stamps_count_as_no_time() {
        let mut c = call(1_000_000_000);
        // The tool ended before the agent's thread read the exec.
        c.stamps.agent.exec = c.stamps.agent.reaped + 5;
        let (stages, _, _) = breakdown(&[c]);
        assert_eq!(stages[7].summary.median, 0.0);
    }
}
