//! `odfs simulate`: replay an invocation trace against a policy in virtual
//! time, with the measured costs of a cold start, a resume and a warm call.
//!
//! Discrete events: calls from the trace, call ends, container starts
//! finishing, and wake-ups at the times of a container's plan, where
//! [`decide`] (the daemon's own lifecycle rule) says what to do. Each
//! container carries an epoch; a new call bumps it, which cancels whatever
//! was planned for the idle period.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::cache::{after_eviction, expectation, unbounded, Budget, Cache, Idle, COVERED};
use super::predict::{Transitions, SEQUENCE_GAP, SEQUENCE_MIN_SUPPORT, SEQUENCE_THRESHOLD};
use super::{decide, plan_times, plan_with, predicted_plan, Action, Call, Costs, Phase, Plan, Policy, Secs};

/// A user counts as active this long after each of their calls
/// ([`Report::idle_active`]).
pub const ACTIVE: Secs = 1800.0;
/// Idle time is counted up to this long after the trace's last call ends:
/// a container kept without a time limit would otherwise idle forever.
pub const TAIL: Secs = 600.0;

/// One line of a trace: `time,command,session,run_time[,profile]` (seconds).
/// Without a profile column each command is its own image profile.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceCall {
    pub at: Secs,
    pub command: String,
    pub session: String,
    pub run: Secs,
    pub profile: String,
}

pub fn parse_trace(text: &str) -> Result<Vec<TraceCall>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("time")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |what: &str| format!("line {}: {what} in {line:?}", i + 1);
        if f.len() < 4 {
            return Err(bad("expected time,command,session,run_time[,profile]"));
        }
        let at: Secs = f[0].parse().map_err(|_| bad("bad time"))?;
        let run: Secs = f[3].parse().map_err(|_| bad("bad run time"))?;
        if !at.is_finite() || !run.is_finite() || run < 0.0 {
            return Err(bad("times must be finite, run time not negative"));
        }
        let profile = f.get(4).filter(|p| !p.is_empty()).unwrap_or(&f[1]).to_string();
        out.push(TraceCall { at, command: f[1].into(), session: f[2].into(), run, profile });
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    Ok(out)
}

/// What a policy did on a trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub policy: String,
    pub calls: u32,
    pub cold: u32,
    pub paused: u32,
    pub warm: u32,
    /// Container starts, including pre-warms and predictions.
    pub starts: u32,
    /// Seconds containers sat running with nothing to do.
    pub idle_warm: Secs,
    /// Seconds containers sat frozen.
    pub idle_paused: Secs,
    /// Sum of added latency over all calls.
    pub latency: Secs,
    /// Calls B right after A in a session with P(B|A) ≥ threshold, and how
    /// many of them found a warm or paused container.
    pub sequence_calls: u32,
    pub sequence_hits: u32,
    /// Calls that were their profile's first: cold under any keep-alive.
    pub first_calls: u32,
    /// The most idle containers (warm or frozen) at once.
    pub peak_idle: u32,
    /// Idle container-seconds while the user was active (a call within the
    /// last [`ACTIVE`]): the memory a user at work feels.
    pub idle_active: Secs,
}

impl Report {
    fn pct(n: u32, d: u32) -> f64 {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    }
    pub fn cold_pct(&self) -> f64 {
        Self::pct(self.cold, self.calls)
    }
    pub fn paused_pct(&self) -> f64 {
        Self::pct(self.paused, self.calls)
    }
    pub fn idle(&self) -> Secs {
        self.idle_warm + self.idle_paused
    }
    pub fn mean_latency_ms(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            1000.0 * self.latency / self.calls as f64
        }
    }
    pub fn sequence_hit_pct(&self) -> f64 {
        Self::pct(self.sequence_hits, self.sequence_calls)
    }
    /// Cold starts a keep-alive could have avoided: all but first calls.
    pub fn avoidable_cold(&self) -> u32 {
        self.cold.saturating_sub(self.first_calls)
    }
    pub fn avoidable_cold_pct(&self) -> f64 {
        Self::pct(self.avoidable_cold(), self.calls)
    }
}

/// How a replay runs besides its policy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Options {
    /// A catalog `pause_after` on every profile.
    pub pause_after: Option<Secs>,
    /// The idle budget ([`super::cache`]); under `auto` it replaces the
    /// time limit of the idle window.
    pub budget: Budget,
    /// With a budget: remove an idle container after this anyway.
    pub idle_max_age: Option<Secs>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Absent,
    Starting { ready: Secs },
    Warm,
    Paused,
}

#[derive(Debug)]
struct Container {
    state: State,
    epoch: u64,
    busy: u32,
    idle_since: Secs,
    predicted: bool,
    plan: Option<Plan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call(usize),
    End,
    /// Look at the container again under its plan.
    Wake(u64),
    Ready(u64),
}

struct Event {
    at: Secs,
    seq: u64,
    profile: usize,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    /// Earliest first (BinaryHeap is a max-heap); ties in insertion order.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

struct Sim<'a> {
    trace: &'a [TraceCall],
    policy: Policy,
    opts: Options,
    cache: Cache<usize>,
    /// Merged intervals in which the user is active, in time order.
    active: Vec<(Secs, Secs)>,
    horizon: Secs,
    costs: Costs,
    predict: bool,
    queue: BinaryHeap<Event>,
    seq: u64,
    boxes: Vec<Container>,
    history: Vec<Vec<Call>>,
    profile_of: HashMap<String, usize>,
    transitions: Transitions,
    report: Report,
    last_call: Secs,
}

impl Sim<'_> {
    fn push(&mut self, at: Secs, profile: usize, kind: Kind) {
        self.seq += 1;
        self.queue.push(Event { at, seq: self.seq, profile, kind });
    }

    /// Count the idle time of a container up to `now` (and the horizon).
    fn settle(&mut self, p: usize, now: Secs) {
        let b = &mut self.boxes[p];
        let (from, to) = (b.idle_since.min(self.horizon), now.min(self.horizon));
        if b.busy == 0 && matches!(b.state, State::Warm | State::Paused) {
            match b.state {
                State::Warm => self.report.idle_warm += to - from,
                _ => self.report.idle_paused += to - from,
            }
            self.report.idle_active += overlap(&self.active, from, to);
        }
        b.idle_since = now;
    }

    fn idle(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.boxes.len()).filter(|&p| self.boxes[p].busy == 0 && matches!(self.boxes[p].state, State::Warm | State::Paused))
    }

    /// `p`'s idle container as the budget sees it at `now`, as the daemon's
    /// reaper sees its own: what the predictors expect of its next call.
    fn as_idle(&self, p: usize, now: Secs) -> Idle<usize> {
        let prewarm_in = self.boxes[p].plan.as_ref().and_then(|pl| pl.prewarm_at).map(|t| t - now);
        Idle { key: p, memory: 0, expect: expectation(prewarm_in, self.costs.cold), owner: None }
    }

    fn idle_now(&self, now: Secs) -> Vec<Idle<usize>> {
        self.idle().map(|p| self.as_idle(p, now)).collect()
    }

    /// Whether the budget lets a prediction start `q`'s container.
    fn admits(&self, q: usize, now: Secs) -> bool {
        if !self.opts.budget.limits() {
            return true;
        }
        self.cache.admits(&Idle::new(q, 0), &self.idle_now(now), &self.opts.budget)
    }

    /// Make room within the budget, as the daemon's reaper does.
    fn enforce(&mut self, now: Secs) {
        if !self.opts.budget.limits() {
            return;
        }
        let idle = self.idle_now(now);
        for p in self.cache.victims(&idle, &self.opts.budget, 0) {
            self.cache.evicted(idle.iter().find(|i| i.key == p).expect("a victim is idle"));
            self.settle(p, now);
            let b = &mut self.boxes[p];
            b.state = State::Absent;
            b.epoch += 1;
            if let Some(plan) = after_eviction(b.plan.take(), now) {
                self.follow(p, now, plan);
            }
        }
    }

    fn start(&mut self, p: usize, now: Secs, epoch: u64) {
        self.boxes[p].state = State::Starting { ready: now + self.costs.cold };
        self.report.starts += 1;
        self.push(now + self.costs.cold, p, Kind::Ready(epoch));
    }

    fn call(&mut self, i: usize, now: Secs) {
        let c = &self.trace[i];
        let p = self.profile_of[&c.profile];
        let (command, session, run) = (c.command.clone(), c.session.clone(), c.run);
        self.settle(p, now);
        let b = &mut self.boxes[p];
        let latency = match b.state {
            State::Warm => {
                self.report.warm += 1;
                self.costs.warm
            }
            State::Paused => {
                self.report.paused += 1;
                self.costs.paused
            }
            State::Starting { ready } => {
                // A start already under way (pre-warm, prediction): the call
                // waits for the rest of it.
                self.report.cold += 1;
                ready - now + self.costs.warm
            }
            State::Absent => {
                self.report.cold += 1;
                self.report.starts += 1;
                self.costs.cold
            }
        };
        let hit = matches!(b.state, State::Warm | State::Paused);
        if self.history[p].is_empty() {
            self.report.first_calls += 1;
        }
        self.cache.called(&p, self.costs.cold);
        b.state = State::Warm;
        b.epoch += 1;
        b.busy += 1;
        b.predicted = false;
        b.plan = None;
        self.report.calls += 1;
        self.report.latency += latency;
        self.history[p].push(Call { at: now, setup: latency, run });
        self.push(now + latency + run, p, Kind::End);

        if self.sequence_predictable(&session, &command, now) {
            self.report.sequence_calls += 1;
            self.report.sequence_hits += hit as u32;
        }
        self.transitions.observe(&session, &command, now);
        if self.predict {
            for (next, prob) in self.transitions.likely_next(&command) {
                let Some(q) = self.trace.iter().find(|t| t.command == next).map(|t| self.profile_of[&t.profile]) else {
                    continue;
                };
                self.cache.expected(&q, prob);
                if self.boxes[q].state == State::Absent && self.admits(q, now) {
                    self.boxes[q].epoch += 1;
                    self.boxes[q].predicted = true;
                    let epoch = self.boxes[q].epoch;
                    self.start(q, now, epoch);
                }
            }
        }
    }

    /// Whether this call is a B that followed A in its session with P(B|A)
    /// already at the threshold (learned from earlier calls only).
    fn sequence_predictable(&self, session: &str, command: &str, now: Secs) -> bool {
        let Some((prev, t)) = self.transitions.last(session) else { return false };
        let (p, support) = self.transitions.probability(prev, command);
        now - t <= SEQUENCE_GAP && p >= SEQUENCE_THRESHOLD && support >= SEQUENCE_MIN_SUPPORT
    }

    fn end(&mut self, p: usize, now: Secs) {
        let b = &mut self.boxes[p];
        b.busy -= 1;
        if b.busy > 0 {
            return;
        }
        b.idle_since = now;
        b.epoch += 1;
        let mut plan = plan_with(self.policy, self.opts.pause_after, &self.history[p], now, &self.costs);
        if self.opts.budget.limits() && self.policy == Policy::Auto {
            unbounded(&mut plan, now, self.opts.idle_max_age, self.opts.pause_after);
        }
        self.follow(p, now, plan);
        self.enforce(now);
    }

    /// Give a container a plan: act on it now, and wake up at its times.
    fn follow(&mut self, p: usize, now: Secs, plan: Plan) {
        let epoch = self.boxes[p].epoch;
        for at in plan_times(&plan).filter(|&t| t > now && t.is_finite()) {
            self.push(at, p, Kind::Wake(epoch));
        }
        self.boxes[p].plan = Some(plan);
        self.wake(p, now);
    }

    /// Apply [`decide`] to a container, as the daemon's reaper does.
    fn wake(&mut self, p: usize, now: Secs) {
        let b = &self.boxes[p];
        let phase = match b.state {
            _ if b.busy > 0 => Phase::Busy,
            State::Starting { .. } => Phase::Busy,
            State::Warm => Phase::Idle,
            State::Paused => Phase::Paused,
            State::Absent => Phase::Absent,
        };
        match decide(phase, b.plan.as_ref(), now) {
            Action::Nothing => {}
            Action::Pause => {
                self.settle(p, now);
                self.boxes[p].state = State::Paused;
            }
            Action::Remove => {
                self.settle(p, now);
                self.boxes[p].state = State::Absent;
            }
            Action::Prewarm => {
                if let Some(plan) = self.boxes[p].plan.as_mut() {
                    plan.prewarm_at = None;
                }
                // The periodic predictor expects its call now: a container
                // it brings back is not the next to evict.
                self.cache.expected(&p, 1.0 - COVERED);
                // Past the trace's last call nothing can use a pre-warm.
                if now <= self.last_call {
                    let epoch = self.boxes[p].epoch;
                    self.start(p, now, epoch);
                }
            }
        }
    }

    fn run(mut self) -> Report {
        for (i, c) in self.trace.iter().enumerate() {
            self.seq += 1;
            self.queue.push(Event { at: c.at, seq: self.seq, profile: self.profile_of[&c.profile], kind: Kind::Call(i) });
        }
        while let Some(ev) = self.queue.pop() {
            let (p, now) = (ev.profile, ev.at);
            let current = self.boxes[p].epoch;
            match ev.kind {
                Kind::Call(i) => self.call(i, now),
                Kind::End => self.end(p, now),
                Kind::Wake(e) if e == current => self.wake(p, now),
                Kind::Ready(e) if e == current => {
                    if let State::Starting { .. } = self.boxes[p].state {
                        self.boxes[p].state = State::Warm;
                        self.boxes[p].idle_since = now;
                        if self.boxes[p].predicted {
                            self.follow(p, now, predicted_plan(now, "predicted".into()));
                        } else {
                            // The daemon's reaper looks at a pre-warmed
                            // container on its next tick: a freeze (or a
                            // removal) that fell due while it started
                            // happens then, before the call it was for.
                            self.wake(p, now);
                        }
                        self.enforce(now);
                    }
                }
                _ => {}
            }
            let idle = self.idle().count() as u32;
            self.report.peak_idle = self.report.peak_idle.max(idle);
        }
        // What is still idle idles up to the horizon.
        for p in 0..self.boxes.len() {
            self.settle(p, self.horizon);
        }
        self.report
    }
}

/// The length of `[from, to]` inside the merged intervals `active`.
fn overlap(active: &[(Secs, Secs)], from: Secs, to: Secs) -> Secs {
    if to <= from {
        return 0.0;
    }
    let first = active.partition_point(|&(_, e)| e <= from);
    active[first..].iter().take_while(|&&(s, _)| s < to).map(|&(s, e)| e.min(to) - s.max(from)).filter(|d| *d > 0.0).sum()
}

/// The intervals in which a user with these calls is active, merged.
fn active_intervals(trace: &[TraceCall]) -> Vec<(Secs, Secs)> {
    let mut out: Vec<(Secs, Secs)> = Vec::new();
    for c in trace {
        match out.last_mut() {
            Some(last) if c.at <= last.1 => last.1 = last.1.max(c.at + ACTIVE),
            _ => out.push((c.at, c.at + ACTIVE)),
        }
    }
    out
}

/// Replay `trace` under `policy`, with `pause_after` on every profile as a
/// catalog's `pause_after` would be. Prediction (sequence prefetch) belongs
/// to `auto`; the other policies are the baselines as published.
pub fn simulate(trace: &[TraceCall], policy: Policy, pause_after: Option<Secs>, costs: &Costs) -> Report {
    simulate_with(trace, policy, &Options { pause_after, ..Default::default() }, costs)
}

/// [`simulate`] with an idle budget and the other [`Options`].
pub fn simulate_with(trace: &[TraceCall], policy: Policy, opts: &Options, costs: &Costs) -> Report {
    let mut profile_of = HashMap::new();
    for c in trace {
        let n = profile_of.len();
        profile_of.entry(c.profile.clone()).or_insert(n);
    }
    let n = profile_of.len();
    let sim = Sim {
        trace,
        policy,
        opts: *opts,
        cache: Cache::default(),
        active: active_intervals(trace),
        horizon: trace.iter().map(|c| c.at + c.run).fold(0.0, Secs::max) + costs.cold + TAIL,
        costs: *costs,
        predict: policy == Policy::Auto,
        queue: BinaryHeap::new(),
        seq: 0,
        boxes: (0..n).map(|_| Container { state: State::Absent, epoch: 0, busy: 0, idle_since: 0.0, predicted: false, plan: None }).collect(),
        last_call: trace.last().map_or(0.0, |c| c.at),
        history: vec![Vec::new(); n],
        profile_of,
        transitions: Transitions::default(),
        report: Report { policy: policy.to_string(), ..Default::default() },
    };
    sim.run()
}

/// A clairvoyant keep-alive, as a bound: knowing every call ahead, it keeps
/// a container exactly over the idle gaps cheapest to bridge (the shortest)
/// until they add up to `idle_budget` container-seconds (`fixed(10m)`'s
/// idle time, for a bound at that policy's cost). Every other gap, and each
/// profile's first call, is cold.
pub fn oracle(trace: &[TraceCall], costs: &Costs, idle_budget: Secs) -> Report {
    let mut r = Report { policy: "oracle".into(), calls: trace.len() as u32, ..Default::default() };
    let mut last_end: HashMap<&str, Secs> = HashMap::new();
    // (gap start, gap end) of each idle gap between two calls of a profile.
    let mut gaps: Vec<(Secs, Secs)> = Vec::new();
    for c in trace {
        match last_end.get(c.profile.as_str()) {
            None => r.first_calls += 1,
            Some(&end) if c.at <= end => r.warm += 1,
            Some(&end) => gaps.push((end, c.at)),
        }
        let end = last_end.entry(&c.profile).or_insert(0.0);
        *end = end.max(c.at + c.run);
    }
    gaps.sort_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)));
    let mut spent = 0.0;
    let mut kept = Vec::new();
    for (from, to) in gaps.iter().copied() {
        if spent + (to - from) > idle_budget {
            r.cold += 1;
        } else {
            spent += to - from;
            r.warm += 1;
            kept.push((from, to));
        }
    }
    r.cold += r.first_calls;
    r.starts = r.cold;
    r.idle_warm = spent;
    let active = active_intervals(trace);
    r.idle_active = kept.iter().map(|&(a, b)| overlap(&active, a, b)).sum();
    let mut edges: Vec<(Secs, i32)> = kept.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    edges.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let mut now = 0i32;
    for (_, d) in edges {
        now += d;
        r.peak_idle = r.peak_idle.max(now.max(0) as u32);
    }
    r.latency = r.cold as f64 * costs.cold + r.warm as f64 * costs.warm;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(lines: &str) -> Vec<TraceCall> {
        parse_trace(lines).unwrap()
    }

    const COSTS: Costs = Costs { cold: 1.0, paused: 0.1, warm: 0.0 };

    #[test]
    fn fixed_window_by_hand() {
        // Calls at 0, 5, 100 (run 1 s), fixed 10 s: cold, warm, cold.
        let t = trace("time,command,session,run_time\n0,jq,a,1\n5,jq,a,1\n100,jq,a,1\n");
        let r = simulate(&t, Policy::Fixed(10.0), None, &COSTS);
        assert_eq!((r.calls, r.cold, r.warm, r.paused), (3, 2, 1, 0));
        // Ends at 2 (0+1 cold+1 run); warm idle 2→5 = 3 s; second ends at 6,
        // idle 10 s to its removal at 16; third ends at 102 and idles 10 s.
        assert!((r.idle_warm - 23.0).abs() < 1e-9, "{r:?}");
        assert!((r.latency - 2.0).abs() < 1e-9);
        assert_eq!(r.starts, 2);
    }

    #[test]
    fn zero_keep_alive_is_cold_every_time_with_no_idle() {
        let t = trace("0,jq,a,1\n5,jq,a,1\n6,jq,a,1\n");
        let r = simulate(&t, Policy::Fixed(0.0), None, &COSTS);
        // The third call overlaps the second's run (ends at 7): warm.
        assert_eq!((r.cold, r.warm), (2, 1));
        assert_eq!(r.idle(), 0.0);
    }

    #[test]
    fn auto_pauses_then_removes_and_resumes_from_paused() {
        // Steady gaps of ~60 s: auto keeps, frozen after PAUSE_AFTER.
        let lines: String = (0..12).map(|i| format!("{},jq,a,0\n", i * 60)).collect();
        let r = simulate(&trace(&lines), Policy::Auto, None, &Costs { cold: 1.0, paused: 0.1, warm: 0.0 });
        assert!(r.paused >= 5, "{r:?}");
        assert!(r.idle_paused > 0.0);
    }

    #[test]
    fn sequences_are_prefetched_by_auto_only() {
        // Ten sessions, each: tcpdump then traceroute 10 s later; sessions 1 h apart.
        let lines: String = (0..10).map(|i| format!("{},tcpdump,s{i},2\n{},traceroute,s{i},1\n", i * 3600, i * 3600 + 10)).collect();
        let t = trace(&lines);
        let auto = simulate(&t, Policy::Auto, None, &COSTS);
        let fixed = simulate(&t, Policy::Fixed(5.0), None, &COSTS);
        // Predictable from the 4th session on (support 3): 7 calls.
        assert_eq!(auto.sequence_calls, 7);
        assert_eq!(auto.sequence_hits, 7, "{auto:?}");
        assert_eq!(fixed.sequence_hits, 0);
    }

    #[test]
    fn periodic_calls_are_prewarmed_by_auto() {
        let lines: String = (0..40).map(|i| format!("{},backup,cron,3\n", i * 900)).collect();
        let t = trace(&lines);
        let auto = simulate(&t, Policy::Auto, None, &COSTS);
        let fixed = simulate(&t, Policy::Fixed(600.0), None, &COSTS);
        assert_eq!(fixed.cold, 40);
        // A period shows after 5 starts; until then the fallback window
        // (frozen after 30 s) still misses the 15-minute gaps.
        assert_eq!((auto.cold, auto.warm), (5, 35), "{auto:?}");
        // Each later call: ready 5 s + 1 s cold before it, 6 s of warm idle
        // (none after the last call, whose pre-warm would come after the trace).
        assert!((auto.idle_warm - (30.0 * 4.0 + 34.0 * 6.0 - 29.0)).abs() < 30.0, "{auto:?}");
        assert!(auto.idle() < fixed.idle() / 5.0, "{auto:?} vs {fixed:?}");
    }

    #[test]
    fn a_catalog_pause_after_shorter_than_the_gaps_serves_calls_paused() {
        // A call a minute, kept 10 min: warm every time, unless frozen 5 s in.
        let lines: String = (0..10).map(|i| format!("{},jq,a,0\n", i * 60)).collect();
        let t = trace(&lines);
        let warm = simulate(&t, Policy::Fixed(600.0), None, &COSTS);
        assert_eq!((warm.cold, warm.paused, warm.warm), (1, 0, 9), "{warm:?}");
        let frozen = simulate(&t, Policy::Fixed(600.0), Some(5.0), &COSTS);
        assert_eq!((frozen.cold, frozen.paused, frozen.warm), (1, 9, 0), "{frozen:?}");
        assert!((frozen.latency - (COSTS.cold + 9.0 * COSTS.paused)).abs() < 1e-9, "{frozen:?}");
        // Warm 5 s after each of the 10 calls, frozen the rest of the time.
        assert!((frozen.idle_warm - 50.0).abs() < 1e-6, "{frozen:?}");
        assert!(frozen.idle_paused > 0.0);
        // A freeze due only after the removal is none.
        let late = simulate(&t, Policy::Fixed(600.0), Some(600.0), &COSTS);
        assert_eq!((late.paused, late.warm), (0, 9), "{late:?}");
    }

    #[test]
    fn a_prewarmed_container_past_its_pause_after_is_frozen_before_the_call() {
        // As the daemon's reaper does on its next tick: the catalog's freeze
        // fell due long before the pre-warm, so the call finds it paused.
        let lines: String = (0..40).map(|i| format!("{},backup,cron,3\n", i * 900)).collect();
        let r = simulate(&trace(&lines), Policy::Auto, Some(1.0), &COSTS);
        assert_eq!((r.cold, r.paused, r.warm), (5, 35, 0), "{r:?}");
    }

    #[test]
    fn a_budget_keeps_idle_containers_without_a_time_limit_and_evicts_the_least_called() {
        // Three tools: jq called often, rg and gdb once each an hour; gaps
        // of an hour are far beyond any window, but within a budget of two
        // idle containers jq and the more recent one stay.
        let mut lines = String::new();
        for h in 0..6 {
            let t = h * 3600;
            lines += &format!("{t},jq,s,1\n{},jq,s,1\n{},rg,s,1\n{},gdb,s,1\n", t + 10, t + 20, t + 30);
        }
        let t = trace(&lines);
        let opts = Options { budget: Budget { max_idle: Some(2), memory: None }, ..Default::default() };
        let r = simulate_with(&t, Policy::Auto, &opts, &COSTS);
        assert_eq!(r.first_calls, 3);
        assert!(r.peak_idle <= 2, "{r:?}");
        // jq's first call of each hour finds it: 5 of those, plus the 6 second calls.
        assert!(r.warm + r.paused >= 11, "{r:?}");
        let unlimited = simulate_with(&t, Policy::Auto, &Options { budget: Budget { max_idle: Some(10), memory: None }, ..Default::default() }, &COSTS);
        assert_eq!(unlimited.avoidable_cold(), 0, "{unlimited:?}");
        assert_eq!(unlimited.peak_idle, 3);
        // Idle time stops at the horizon (TAIL after the last end).
        assert!(unlimited.idle() < 3.0 * (6.0 * 3600.0 + TAIL), "{unlimited:?}");
        let aged = Options { idle_max_age: Some(600.0), ..opts };
        assert!(simulate_with(&t, Policy::Auto, &aged, &COSTS).cold > r.cold);
    }

    #[test]
    fn a_periodic_container_the_budget_evicts_is_pre_warmed_for_each_run() {
        // A cron job every 15 min and a tool called 3–10 min after each run,
        // with room for one idle container: the tool's end pushes the job's
        // container out (a pre-warm will bring it back, so it is worth
        // least), and the pre-warm brings it back for every run once the
        // period shows (after 5 runs), pushing the tool out in turn.
        let lines: String = (0..40).map(|i| format!("{},backup,cron,3\n{},jq,s,1\n", i * 900, i * 900 + 200 + (i * 137) % 400)).collect();
        let t = trace(&lines);
        let opts = Options { budget: Budget { max_idle: Some(1), memory: None }, ..Default::default() };
        let r = simulate_with(&t, Policy::Auto, &opts, &COSTS);
        assert!(r.peak_idle <= 1, "{r:?}");
        assert_eq!(r.calls - r.cold, 35, "{r:?}");
        assert!(r.starts >= 35 + 40, "{r:?}");
    }

    #[test]
    fn the_oracle_bridges_the_shortest_gaps_within_its_idle_budget() {
        // jq ends at 1, 11, 111; gaps 9 s (1→10) and 89 s (12→101)… with a
        // 50 s budget only the short one is bridged.
        let t = trace("0,jq,a,1\n10,jq,a,2\n101,jq,a,1\n102,jq,a,5\n");
        let r = oracle(&t, &COSTS, 50.0);
        assert_eq!((r.first_calls, r.cold, r.warm), (1, 2, 2), "{r:?}");
        assert!((r.idle_warm - 9.0).abs() < 1e-9);
        assert_eq!(r.peak_idle, 1);
        assert_eq!(oracle(&t, &COSTS, 1000.0).cold, 1);
    }

    #[test]
    fn idle_counts_while_the_user_is_active_only_within_the_active_window() {
        let active = active_intervals(&trace("0,a,s,0\n100,a,s,0\n5000,a,s,0\n"));
        assert_eq!(active, vec![(0.0, 1900.0), (5000.0, 6800.0)]);
        assert_eq!(overlap(&active, 1800.0, 5100.0), 200.0);
        assert_eq!(overlap(&active, 2000.0, 4000.0), 0.0);
    }

    #[test]
    fn traces_parse_with_optional_profile_and_report_errors() {
        let t = trace("# comment\n1.5,tcpdump,s,2,net\n0,jq,s,0.1\n");
        assert_eq!(t[0].command, "jq");
        assert_eq!(t[1].profile, "net");
        assert!(parse_trace("x,jq,s,1\n").unwrap_err().contains("line 1"));
        assert!(parse_trace("1,jq\n").is_err());
    }
}
