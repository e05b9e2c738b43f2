//! A profile's container through its life. Each state carries what exists
//! only in it (a container's id, token and view exist only while there is a
//! container), and every change goes through [`transition`], which logs it:
//! `ODFS_LOG=info` shows each container's whole life, one line per step.

use std::sync::Arc;
use std::time::Instant;

use crate::policy::{Phase, Plan, Secs};
use crate::protocol::ContainerPhase;
use crate::view::View;

/// A container the pool knows: what a call needs to reach its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Its agent's token (see [`crate::protocol::TOKEN_ENV`]).
    pub token: String,
    /// What its tools see of the host.
    pub view: Arc<View>,
    /// The id of the image it runs (empty when the engine did not say).
    pub image: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Absent,
    /// Running since `since`; `fetched` if its image was pulled or built
    /// to start it.
    Warm { c: Container, since: Instant, fetched: bool },
    /// Frozen (cgroup freezer): no CPU, resumes in milliseconds.
    Paused { c: Container },
    /// Created ahead of a call, not started (`since` then): no process, no
    /// memory; a call only starts it. Its spec is what it was made of.
    Created { c: Container, spec: Arc<crate::backend::ContainerSpec>, since: Instant },
}

impl State {
    pub fn container(&self) -> Option<&Container> {
        match self {
            State::Absent => None,
            State::Warm { c, .. } | State::Paused { c } | State::Created { c, .. } => Some(c),
        }
    }
}

/// Change a profile's state, and say so: `container` is the profile's
/// container name, `why` the cause (a policy's reason, a failure).
pub fn transition(container: &str, state: &mut State, to: State, why: &str) {
    let (from, next) = (shown(state).as_str(), shown(&to).as_str());
    let id = to.container().or(state.container()).map_or("", |c| c.id.as_str());
    tracing::info!(container, id = short(id), from, to = next, "{why}");
    *state = to;
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A profile's state as `odfs status` and the `user.odfs.state` xattr show
/// it: the wire's [`ContainerPhase`], of which a state knows three (the
/// others, `starting` and `unreachable`, only the pool can tell).
pub fn shown(state: &State) -> ContainerPhase {
    match state {
        State::Absent => ContainerPhase::Absent,
        State::Warm { .. } => ContainerPhase::Warm,
        State::Paused { .. } => ContainerPhase::Paused,
        State::Created { .. } => ContainerPhase::Created,
    }
}

/// A profile's state as the lifecycle rule ([`crate::policy::decide`]) sees it;
/// `busy`: its tools running and its execs on their way in. A paused
/// container is not asked (its agent is frozen) and is never busy: a
/// container is paused only once idle, and a call resumes it first.
pub fn phase(state: &State, busy: u32) -> Phase {
    match state {
        State::Absent => Phase::Absent,
        State::Warm { .. } if busy > 0 => Phase::Busy,
        State::Warm { .. } => Phase::Idle,
        State::Paused { .. } => Phase::Paused,
        // To the lifecycle rule, no container: a pre-warm starts it.
        State::Created { .. } => Phase::Absent,
    }
}

/// What comes next for a profile, for `odfs status`: "pause in 25s (idle
/// p5 …)". `plan` is its idle plan, if it has one; `running` its busy tools.
pub fn next_action(plan: Option<&Plan>, shown: ContainerPhase, running: u32, now: Secs) -> String {
    let inn = |t: Secs| format!("{:.0}s", (t - now).max(0.0));
    // A plan without an end (a `keep_alive` of forever) removes nothing.
    let remove = |t: Secs| if t.is_finite() { format!("remove in {}", inn(t)) } else { "kept until the daemon stops".to_string() };
    if shown == ContainerPhase::Created {
        return "created ahead: the next call only starts it".into();
    }
    let Some(p) = plan else {
        return match (shown, running) {
            (_, r) if r > 0 => "busy: kept while tools run".into(),
            (ContainerPhase::Absent, _) => "none: starts on the next call".into(),
            _ => "planned once the current call ends".into(),
        };
    };
    if running > 0 {
        return "busy: kept while tools run".into();
    }
    let step = match shown {
        ContainerPhase::Absent => match p.prewarm_at {
            Some(t) if t < p.remove_at => format!("pre-warm in {}", inn(t)),
            _ => "none: starts on the next call".into(),
        },
        ContainerPhase::Paused => remove(p.remove_at),
        _ => match p.pause_at {
            Some(t) if t < p.remove_at && t > now && t.is_finite() => format!("pause in {}", inn(t)),
            _ => remove(p.remove_at),
        },
    };
    format!("{step} ({})", p.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(pause: Option<Secs>, remove: Secs, prewarm: Option<Secs>) -> Plan {
        Plan { prewarm_at: prewarm, unload: true, pause_at: pause, remove_at: remove, reason: "r".into() }
    }

    #[test]
    fn next_action_reads_from_the_state_and_the_plan() {
        let p = plan(Some(25.0), 100.0, None);
        assert_eq!(next_action(Some(&p), ContainerPhase::Warm, 0, 0.0), "pause in 25s (r)");
        assert_eq!(next_action(Some(&p), ContainerPhase::Warm, 0, 30.0), "remove in 70s (r)");
        assert_eq!(next_action(Some(&p), ContainerPhase::Paused, 0, 30.0), "remove in 70s (r)");
        assert_eq!(next_action(Some(&p), ContainerPhase::Warm, 2, 0.0), "busy: kept while tools run");
        assert_eq!(next_action(Some(&plan(None, 100.0, Some(40.0))), ContainerPhase::Absent, 0, 0.0), "pre-warm in 40s (r)");
        assert_eq!(next_action(None, ContainerPhase::Absent, 0, 0.0), "none: starts on the next call");
        assert_eq!(next_action(Some(&plan(None, f64::INFINITY, None)), ContainerPhase::Warm, 0, 0.0), "kept until the daemon stops (r)");
        assert_eq!(next_action(Some(&plan(Some(5.0), f64::INFINITY, None)), ContainerPhase::Paused, 0, 9.0), "kept until the daemon stops (r)");
        assert_eq!(next_action(None, ContainerPhase::Warm, 0, 0.0), "planned once the current call ends");
        assert_eq!(next_action(None, ContainerPhase::Warm, 1, 0.0), "busy: kept while tools run");
    }

    #[test]
    fn a_transition_replaces_the_state_and_keeps_the_container_s_data() {
        let c = Container { id: "abc".into(), token: "t".into(), view: Arc::default(), image: "".into() };
        let mut s = State::Absent;
        transition("x", &mut s, State::Warm { c: c.clone(), since: Instant::now(), fetched: false }, "started");
        transition("x", &mut s, State::Paused { c: c.clone() }, "idle");
        assert_eq!(s.container(), Some(&c));
        assert_eq!(shown(&s), ContainerPhase::Paused);
        transition("x", &mut s, State::Absent, "removed");
        assert_eq!(s.container(), None);
    }

    #[test]
    fn the_lifecycle_s_phase_is_the_state_with_its_busy_tools() {
        let c = Container { id: "abc".into(), token: "t".into(), view: Arc::default(), image: "".into() };
        let warm = State::Warm { c: c.clone(), since: Instant::now(), fetched: false };
        assert_eq!(phase(&State::Absent, 0), Phase::Absent);
        assert_eq!(phase(&warm, 0), Phase::Idle);
        assert_eq!(phase(&warm, 1), Phase::Busy);
        assert_eq!(phase(&State::Paused { c: c.clone() }, 0), Phase::Paused);
        // Nothing runs in a frozen container: its count changes nothing.
        assert_eq!(phase(&State::Paused { c }, 3), Phase::Paused);
        assert_eq!(phase(&State::Absent, 2), Phase::Absent);
    }
}
