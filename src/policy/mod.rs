//! Keep-alive and prediction, as pure functions of (history, now): no
//! clocks, no I/O. The daemon's reaper and `odfs simulate` both drive them,
//! so what the simulator measures is what the daemon does.
//!
//! Times are seconds (`f64`) on any clock the caller chooses.

pub mod cache;
pub mod predict;
pub mod sim;

use std::fmt;
use std::str::FromStr;

pub type Secs = f64;

/// What a call costs in added latency, by how its container was found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    pub cold: Secs,
    pub paused: Secs,
    pub warm: Secs,
}

impl Default for Costs {
    /// Medians measured on the reference 2-core VM with the busybox test
    /// image (docs/keep-alive.md): cold call with the image present 233 ms,
    /// call to a paused container 17 ms, warm call 4.0 ms.
    fn default() -> Costs {
        Costs { cold: 0.233, paused: 0.017, warm: 0.004 }
    }
}

/// Keep-alive policies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Keep warm for a fixed time after each call (OpenWhisk, AWS: 10 min).
    /// `Fixed(0.0)` removes after each call (the paper's baseline).
    Fixed(Secs),
    /// Kanso & Youssef: ε = MTBC − MTTS − MTTE, the expected idle time
    /// before the next call; keep warm a margin beyond it.
    Epsilon,
    /// Shahrad et al. (ATC'20): keep alive to the 99th percentile of idle
    /// times (+10%), unload and pre-warm at the 5th (−10%) when that gap is
    /// worth it; a fixed window while the history is not representative.
    Histogram,
    /// The default: idle-time histogram with the window chosen by cost (a
    /// cold start against idle container time) and a pause tier.
    Auto,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        let s = s.trim();
        let fixed = s.strip_prefix("fixed(").and_then(|x| x.strip_suffix(')')).or_else(|| s.strip_prefix("fixed:"));
        if let Some(d) = fixed {
            let d = humantime_secs(d).ok_or_else(|| format!("policy {s:?}: {d:?} is not a duration like 10m or 45s"))?;
            return Ok(Policy::Fixed(d));
        }
        match s {
            "epsilon" => Ok(Policy::Epsilon),
            "histogram" => Ok(Policy::Histogram),
            "auto" => Ok(Policy::Auto),
            _ => Err(format!("unknown policy {s:?} (fixed(DURATION), epsilon, histogram, auto)")),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Fixed(d) => write!(f, "fixed({})", format_secs(*d)),
            Policy::Epsilon => f.write_str("epsilon"),
            Policy::Histogram => f.write_str("histogram"),
            Policy::Auto => f.write_str("auto"),
        }
    }
}

/// `10m`, `45s`, `1h30m`, `0s`, or plain seconds.
pub fn humantime_secs(s: &str) -> Option<Secs> {
    if let Ok(v) = s.parse::<f64>() {
        return (v >= 0.0).then_some(v);
    }
    let mut total = 0.0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += v * match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

pub fn format_secs(s: Secs) -> String {
    if s >= 3600.0 && s % 3600.0 == 0.0 {
        format!("{}h", s / 3600.0)
    } else if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}

/// One call, as the policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub at: Secs,
    pub setup: Secs,
    pub run: Secs,
}

impl Call {
    pub fn end(&self) -> Secs {
        self.at + self.setup + self.run
    }
}

/// Idle times of one profile: from the end of each call to the start of the
/// next (overlapping calls give no idle time). Most recent last.
pub fn idle_gaps(calls: &[Call]) -> Vec<Secs> {
    let mut gaps = Vec::new();
    let mut busy_until = f64::NEG_INFINITY;
    for c in calls {
        if busy_until.is_finite() && c.at > busy_until {
            gaps.push(c.at - busy_until);
        }
        busy_until = busy_until.max(c.end());
    }
    gaps
}

/// The paper's measures over a command's calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epsilon {
    /// Mean time between calls (start to start).
    pub mtbc: Secs,
    /// Mean time to set up (container found, started or resumed).
    pub mtts: Secs,
    /// Mean time to execute.
    pub mtte: Secs,
    pub epsilon: Secs,
}

pub fn epsilon(calls: &[Call]) -> Option<Epsilon> {
    if calls.len() < 2 {
        return None;
    }
    let n = calls.len() as f64;
    let mtbc = (calls[calls.len() - 1].at - calls[0].at) / (n - 1.0);
    let mtts = calls.iter().map(|c| c.setup).sum::<f64>() / n;
    let mtte = calls.iter().map(|c| c.run).sum::<f64>() / n;
    Some(Epsilon { mtbc, mtts, mtte, epsilon: mtbc - mtts - mtte })
}

/// Fewer idle samples than this and a histogram says nothing yet.
pub const MIN_SAMPLES: usize = 5;
/// Idle samples considered (the most recent).
pub const MAX_SAMPLES: usize = 500;
/// Longest keep-alive any adaptive policy chooses (Shahrad et al.: 4 h).
pub const MAX_WINDOW: Secs = 4.0 * 3600.0;
/// Window while a history is not representative.
pub const FALLBACK: Secs = 600.0;
/// The measured cold start (`Costs::default().cold`, a quarter second of
/// waiting at a prompt) weighs as much as this many seconds of an idle
/// container: the exchange rate `auto` uses between latency and memory. A
/// slower or faster start weighs in proportion ([`cold_weight`]).
pub const COLD_WEIGHT: Secs = 300.0;
/// Unloading between calls pays only when the container would otherwise
/// sit idle at least this long (a start costs CPU and I/O too).
pub const MIN_UNLOAD: Secs = 60.0;
/// `auto` freezes a container idle this long (bounded by its window): a
/// resume costs milliseconds, and a frozen container uses no CPU.
pub const PAUSE_AFTER: Secs = 30.0;

/// What to do with an idle container, in seconds after its last call ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Remove right away and start again this long after the end (`None`:
    /// stay warm from the end).
    pub prewarm_after: Option<Secs>,
    /// Freeze when idle this long.
    pub pause_after: Option<Secs>,
    /// Remove when idle this long.
    pub keep: Secs,
    /// Why, for `odfs status`.
    pub reason: String,
}

fn percentile(sorted: &[Secs], p: f64) -> Secs {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted_recent(gaps: &[Secs]) -> Vec<Secs> {
    let mut g: Vec<Secs> = gaps[gaps.len().saturating_sub(MAX_SAMPLES)..].to_vec();
    g.sort_by(|a, b| a.partial_cmp(b).unwrap());
    g
}

/// The window `policy` picks for a profile with these idle gaps and calls.
pub fn window(policy: Policy, calls: &[Call], costs: &Costs) -> Window {
    let gaps = idle_gaps(calls);
    match policy {
        Policy::Fixed(d) => Window { prewarm_after: None, pause_after: None, keep: d, reason: format!("fixed {}", format_secs(d)) },
        Policy::Epsilon => match epsilon(calls) {
            // Keep warm through the expected idle time, with a 50% margin.
            Some(e) if calls.len() > MIN_SAMPLES => {
                let keep = (1.5 * e.epsilon.max(0.0)).clamp(costs.cold, MAX_WINDOW);
                Window { prewarm_after: None, pause_after: None, keep, reason: format!("ε = {:.1}s", e.epsilon) }
            }
            _ => fallback("few calls yet"),
        },
        Policy::Histogram => {
            if gaps.len() < MIN_SAMPLES {
                return fallback("few idle samples yet");
            }
            let g = sorted_recent(&gaps);
            let (p5, p99) = (percentile(&g, 5.0), percentile(&g, 99.0));
            if p99 * 1.1 > MAX_WINDOW {
                return fallback("idle times beyond the histogram's range");
            }
            let head = p5 * 0.9;
            Window {
                // Unloading pays only when the container would sit idle
                // much longer than a start takes.
                prewarm_after: (head >= MIN_UNLOAD.max(costs.cold)).then_some(head),
                pause_after: None,
                keep: p99 * 1.1,
                reason: format!("idle p5 {:.0}s p99 {:.0}s", p5, p99),
            }
        }
        Policy::Auto => auto(&gaps, costs),
    }
}

fn fallback(why: &str) -> Window {
    Window {
        prewarm_after: None,
        pause_after: Some(PAUSE_AFTER.min(FALLBACK)),
        keep: FALLBACK,
        reason: format!("{why}: fixed {}", format_secs(FALLBACK)),
    }
}

/// What a cold start of `costs.cold` weighs in seconds of idle container.
/// At the measured cost it is exactly [`COLD_WEIGHT`], so the windows the
/// default costs give (and docs/keep-alive.md's results) stay as they were.
fn cold_weight(costs: &Costs) -> Secs {
    COLD_WEIGHT * (costs.cold / Costs::default().cold)
}

/// Expected cost per idle gap of unloading `h` after the end (0: never
/// unload) and removing `w` after it: a gap ending before `h` or after `w`
/// pays a cold start (`cold`, in idle seconds); the container idles from `h`
/// to the next call or to `w`.
fn expected_cost(sorted: &[Secs], h: Secs, w: Secs, cold: Secs) -> Secs {
    let total: Secs = sorted
        .iter()
        .map(|&g| {
            if g <= h && h > 0.0 {
                cold
            } else if g <= w {
                g - h
            } else {
                cold + (w - h).max(0.0)
            }
        })
        .sum();
    total / sorted.len() as f64
}

/// Histogram with the window chosen by expected cost instead of a fixed
/// percentile: among "stay warm" and "unload, pre-warm at the 5th
/// percentile (−10%)", and every observed gap as the end of the window,
/// take the cheapest by [`expected_cost`], a cold start weighed by its
/// cost. A window longer than [`PAUSE_AFTER`] without pre-warm freezes the
/// container first.
fn auto(gaps: &[Secs], costs: &Costs) -> Window {
    if gaps.len() < MIN_SAMPLES {
        return fallback("few idle samples yet");
    }
    let g = sorted_recent(gaps);
    let p5 = percentile(&g, 5.0);
    let cold = cold_weight(costs);
    let mut heads = vec![0.0];
    // As for `histogram`: unloading pays only when the container would sit
    // idle much longer than a start takes.
    if p5 * 0.9 >= MIN_UNLOAD.max(costs.cold) {
        heads.push(p5 * 0.9);
    }
    let mut best = (expected_cost(&g, 0.0, 0.0, cold), 0.0, 0.0);
    for &h in &heads {
        for &gap in g.iter().filter(|&&x| x > h && x <= MAX_WINDOW) {
            let cost = expected_cost(&g, h, gap, cold);
            if cost < best.0 {
                best = (cost, h, gap);
            }
        }
    }
    let (_, h, w) = best;
    if w == 0.0 {
        return Window { prewarm_after: None, pause_after: None, keep: 0.0, reason: "calls too far apart to keep warm".into() };
    }
    let keep = (w * 1.1).min(MAX_WINDOW);
    let prewarm_after = (h > 0.0).then_some(h);
    let pause_after = (prewarm_after.is_none() && keep > PAUSE_AFTER).then_some(PAUSE_AFTER);
    Window { prewarm_after, pause_after, keep, reason: format!("idle p5 {:.0}s, window {:.0}s by cost", p5, keep) }
}

/// The next steps for a profile whose last call ended at `end`, in absolute
/// times. `auto` also follows a detected period: start again just before the
/// next expected call.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Start again then, if it is not running; unloaded until then when
    /// `unload` is set.
    pub prewarm_at: Option<Secs>,
    /// Remove an idle container ahead of its pre-warm (not under an idle
    /// budget, where memory is the budget's to manage).
    pub unload: bool,
    pub pause_at: Option<Secs>,
    pub remove_at: Secs,
    pub reason: String,
}

pub fn plan(policy: Policy, calls: &[Call], end: Secs, costs: &Costs) -> Plan {
    if policy == Policy::Auto {
        let starts: Vec<Secs> = calls.iter().map(|c| c.at).collect();
        if let (Some(p), Some(last)) = (predict::period(&starts), starts.last()) {
            let next = last + p;
            let start = next - costs.cold - PERIODIC_LEAD;
            if start - end >= MIN_UNLOAD {
                return Plan {
                    prewarm_at: Some(start),
                    unload: true,
                    pause_at: None,
                    remove_at: last + 1.1 * p,
                    reason: format!("periodic every {:.0}s: warm again just before the next call", p),
                };
            }
        }
    }
    let w = window(policy, calls, costs);
    Plan {
        prewarm_at: w.prewarm_after.filter(|h| *h < w.keep).map(|h| end + h),
        unload: true,
        pause_at: w.pause_after.filter(|p| *p < w.keep).map(|p| end + p),
        remove_at: end + w.keep,
        reason: w.reason,
    }
}

/// [`plan`] for an image whose catalog sets `pause_after`: that overrides
/// the policy's pause tier, whatever the policy (a freeze due only at or
/// after the removal is none). The daemon and the simulator both plan
/// through here, so a catalog's freeze is replayed as it is served.
pub fn plan_with(policy: Policy, pause_after: Option<Secs>, calls: &[Call], end: Secs, costs: &Costs) -> Plan {
    let mut plan = plan(policy, calls, end, costs);
    if let Some(pa) = pause_after {
        plan.pause_at = Some(end + pa).filter(|&t| t < plan.remove_at);
    }
    plan
}

/// How long before a periodic call its container should be ready.
pub const PERIODIC_LEAD: Secs = 5.0;

/// A predicted container nobody calls is frozen after this (as `auto`
/// freezes any idle container)…
pub const PREDICTED_PAUSE: Secs = PAUSE_AFTER;
/// …and removed after this: what a wrong guess can cost.
pub const PREDICTED_KEEP: Secs = 120.0;

/// The plan for a container warmed by a prediction at `now`.
pub fn predicted_plan(now: Secs, reason: String) -> Plan {
    Plan { prewarm_at: None, unload: true, pause_at: Some(now + PREDICTED_PAUSE), remove_at: now + PREDICTED_KEEP, reason }
}

/// A container as the lifecycle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Absent,
    /// Running, no tool in it and none on its way in.
    Idle,
    /// Running a tool, or about to: never touched.
    Busy,
    Paused,
}

/// One lifecycle step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Pause,
    Remove,
    Prewarm,
}

/// The lifecycle rule, applied by the daemon's reaper and by `odfs
/// simulate` alike: what to do now with a container in `phase` under `plan`
/// (made by [`plan`] when its last call ended, or by a prediction).
pub fn decide(phase: Phase, plan: Option<&Plan>, now: Secs) -> Action {
    match (phase, plan) {
        (Phase::Busy, _) | (Phase::Idle, None) | (Phase::Absent, None) => Action::Nothing,
        // A paused container nobody planned for is never resumed by a call
        // the policy expects: remove it.
        (Phase::Paused, None) => Action::Remove,
        (Phase::Idle, Some(p)) => {
            // Past the window, or unloading ahead of a pre-warm.
            if now >= p.remove_at || (p.unload && p.prewarm_at.is_some_and(|t| now < t)) {
                Action::Remove
            } else if p.pause_at.is_some_and(|t| now >= t) {
                Action::Pause
            } else {
                Action::Nothing
            }
        }
        (Phase::Paused, Some(p)) => {
            if now >= p.remove_at {
                Action::Remove
            } else {
                Action::Nothing
            }
        }
        (Phase::Absent, Some(p)) => {
            if p.prewarm_at.is_some_and(|t| now >= t && now < p.remove_at) {
                Action::Prewarm
            } else {
                Action::Nothing
            }
        }
    }
}

/// The times at which [`decide`] may answer differently under `plan`: where
/// an event-driven caller (the simulator) must look again.
pub fn plan_times(plan: &Plan) -> impl Iterator<Item = Secs> {
    [plan.prewarm_at, plan.pause_at, Some(plan.remove_at)].into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(starts: &[Secs], run: Secs) -> Vec<Call> {
        starts.iter().map(|&at| Call { at, setup: 0.0, run }).collect()
    }

    fn at(prewarm: Option<Secs>, pause: Option<Secs>, remove: Secs) -> Plan {
        Plan { prewarm_at: prewarm, unload: true, pause_at: pause, remove_at: remove, reason: String::new() }
    }

    #[test]
    fn decide_freezes_then_removes_an_idle_container_on_the_plans_clock() {
        let p = at(None, Some(30.0), 600.0);
        assert_eq!(decide(Phase::Idle, Some(&p), 29.9), Action::Nothing);
        assert_eq!(decide(Phase::Idle, Some(&p), 30.0), Action::Pause);
        assert_eq!(decide(Phase::Paused, Some(&p), 599.0), Action::Nothing);
        assert_eq!(decide(Phase::Paused, Some(&p), 600.0), Action::Remove);
        // A busy container is never touched, whatever its plan says.
        assert_eq!(decide(Phase::Busy, Some(&p), 10_000.0), Action::Nothing);
        // Without a plan an idle one waits for one; a paused one goes.
        assert_eq!(decide(Phase::Idle, None, 10_000.0), Action::Nothing);
        assert_eq!(decide(Phase::Paused, None, 0.0), Action::Remove);
    }

    #[test]
    fn decide_unloads_before_a_prewarm_and_starts_again_in_time() {
        let p = at(Some(270.0), None, 330.0);
        assert_eq!(decide(Phase::Idle, Some(&p), 1.0), Action::Remove);
        assert_eq!(decide(Phase::Absent, Some(&p), 269.0), Action::Nothing);
        assert_eq!(decide(Phase::Absent, Some(&p), 270.0), Action::Prewarm);
        // Started and still unused: kept until the window ends.
        let started = Plan { prewarm_at: None, ..p.clone() };
        assert_eq!(decide(Phase::Idle, Some(&started), 300.0), Action::Nothing);
        assert_eq!(decide(Phase::Idle, Some(&started), 330.0), Action::Remove);
        // A pre-warm whose window has passed does not happen.
        assert_eq!(decide(Phase::Absent, Some(&p), 330.0), Action::Nothing);
        assert_eq!(plan_times(&p).collect::<Vec<_>>(), [270.0, 330.0]);
    }

    #[test]
    fn a_wrong_prediction_costs_a_bounded_plan() {
        let p = predicted_plan(100.0, "guess".into());
        assert_eq!(decide(Phase::Idle, Some(&p), 100.0 + PREDICTED_PAUSE), Action::Pause);
        assert_eq!(decide(Phase::Paused, Some(&p), 100.0 + PREDICTED_KEEP), Action::Remove);
    }

    #[test]
    fn fixed_windows_plan_exactly_their_duration_and_zero_removes_at_once() {
        let c = calls(&[0.0, 50.0], 1.0);
        let p = plan(Policy::Fixed(600.0), &c, 51.0, &Costs::default());
        assert_eq!((p.prewarm_at, p.pause_at, p.remove_at), (None, None, 651.0));
        let p = plan(Policy::Fixed(0.0), &c, 51.0, &Costs::default());
        assert_eq!(decide(Phase::Idle, Some(&p), 51.0), Action::Remove);
    }

    #[test]
    fn epsilon_keeps_one_and_a_half_times_the_expected_idle_time() {
        // Calls every 100 s, no setup, 10 s runs: ε = 90 s, window 135 s.
        let c = calls(&(0..10).map(|i| i as f64 * 100.0).collect::<Vec<_>>(), 10.0);
        let w = window(Policy::Epsilon, &c, &Costs::default());
        assert!((w.keep - 135.0).abs() < 1e-9, "{w:?}");
        assert_eq!((w.prewarm_after, w.pause_after), (None, None));
        // Too few calls: the fallback window.
        assert_eq!(window(Policy::Epsilon, &c[..3], &Costs::default()).keep, FALLBACK);
        // Calls closer than their own run time: at least a cold start's worth.
        let busy = calls(&(0..10).map(|i| i as f64).collect::<Vec<_>>(), 5.0);
        assert_eq!(window(Policy::Epsilon, &busy, &Costs::default()).keep, Costs::default().cold);
    }

    #[test]
    fn auto_follows_a_period_and_warms_just_before_the_next_call() {
        // Every 15 minutes, 3 s runs (cron).
        let c = calls(&(0..10).map(|i| i as f64 * 900.0).collect::<Vec<_>>(), 3.0);
        let end = 8100.0 + 3.0;
        let p = plan(Policy::Auto, &c, end, &Costs::default());
        let next = 9000.0;
        assert_eq!(p.prewarm_at, Some(next - Costs::default().cold - PERIODIC_LEAD));
        assert!((p.remove_at - (8100.0 + 1.1 * 900.0)).abs() < 1e-9, "{p:?}");
        assert_eq!(decide(Phase::Idle, Some(&p), end), Action::Remove);
        assert_eq!(decide(Phase::Absent, Some(&p), next - 1.0), Action::Prewarm);
    }

    #[test]
    fn policies_parse_and_print() {
        assert_eq!("fixed(10m)".parse::<Policy>(), Ok(Policy::Fixed(600.0)));
        assert_eq!("fixed:0s".parse::<Policy>(), Ok(Policy::Fixed(0.0)));
        assert_eq!("auto".parse::<Policy>(), Ok(Policy::Auto));
        assert!("sometimes".parse::<Policy>().is_err());
        assert_eq!(Policy::Fixed(600.0).to_string(), "fixed(10m)");
        assert_eq!(humantime_secs("1h30m"), Some(5400.0));
    }

    #[test]
    fn idle_gaps_run_from_end_to_next_start() {
        let c = vec![Call { at: 0.0, setup: 1.0, run: 2.0 }, Call { at: 10.0, setup: 0.0, run: 5.0 }, Call { at: 12.0, setup: 0.0, run: 1.0 }, Call { at: 20.0, setup: 0.0, run: 1.0 }];
        // 3 → 10: 7 s; 15 (busy until) → 20: 5 s; the overlap gives nothing.
        assert_eq!(idle_gaps(&c), vec![7.0, 5.0]);
    }

    #[test]
    fn epsilon_is_mtbc_minus_setup_and_run() {
        let c = vec![Call { at: 0.0, setup: 1.0, run: 3.0 }, Call { at: 60.0, setup: 0.0, run: 1.0 }, Call { at: 120.0, setup: 0.0, run: 2.0 }];
        let e = epsilon(&c).unwrap();
        assert_eq!((e.mtbc, e.mtts, e.mtte), (60.0, 1.0 / 3.0, 2.0));
        assert!((e.epsilon - (60.0 - 1.0 / 3.0 - 2.0)).abs() < 1e-9);
    }

    #[test]
    fn histogram_keeps_to_p99_and_prewarms_periodic_calls() {
        // Every 15 minutes, 3 s runs: idle 897 s each time.
        let c = calls(&(0..20).map(|i| i as f64 * 900.0).collect::<Vec<_>>(), 3.0);
        let w = window(Policy::Histogram, &c, &Costs::default());
        assert!((w.keep - 897.0 * 1.1).abs() < 1e-6, "{w:?}");
        assert!((w.prewarm_after.unwrap() - 897.0 * 0.9).abs() < 1e-6, "{w:?}");
        // Too few samples: the fixed fallback.
        let w = window(Policy::Histogram, &c[..3], &Costs::default());
        assert_eq!(w.keep, FALLBACK);
    }

    /// Call starts in 10 bursts of 10 calls 10 s apart, 1 or 2 h between bursts.
    fn bursts() -> Vec<f64> {
        let mut starts = Vec::new();
        let mut t = 0.0;
        for burst in 0..10 {
            for _ in 0..10 {
                starts.push(t);
                t += 10.0;
            }
            t += if burst % 2 == 0 { 7200.0 } else { 3600.0 };
        }
        starts
    }

    #[test]
    fn auto_covers_bursts_and_gives_up_on_rare_calls() {
        let w = window(Policy::Auto, &calls(&bursts(), 0.0), &Costs::default());
        assert!(w.keep >= 10.0 && w.keep < 60.0, "{w:?}");
        assert_eq!(w.prewarm_after, None);
        // A tool used twice a week: keeping it warm never pays.
        let rare = calls(&(0..8).map(|i| i as f64 * 3.5 * 86400.0).collect::<Vec<_>>(), 10.0);
        let w = window(Policy::Auto, &rare, &Costs::default());
        assert_eq!(w.keep, 0.0, "{w:?}");
        // Calls every 5 minutes: unload, and start again just before the next.
        let steady = calls(&(0..50).map(|i| i as f64 * 300.0).collect::<Vec<_>>(), 1.0);
        let w = window(Policy::Auto, &steady, &Costs::default());
        assert_eq!((w.prewarm_after, w.pause_after), (Some(299.0 * 0.9), None), "{w:?}");
        assert!((w.keep - 299.0 * 1.1).abs() < 1e-6);
        // Gaps of 20 s to 4 min: stay, but frozen after PAUSE_AFTER.
        let spread: Vec<f64> = (0..40).scan(0.0, |t, i| { *t += 20.0 + (i % 8) as f64 * 30.0; Some(*t) }).collect();
        let w = window(Policy::Auto, &calls(&spread, 0.0), &Costs::default());
        assert_eq!((w.prewarm_after, w.pause_after), (None, Some(PAUSE_AFTER)), "{w:?}");
    }

    #[test]
    fn auto_keeps_longer_when_a_cold_start_costs_more() {
        // Bursts of 10 s gaps, 1–2 h apart: at the measured cost, bridging the
        // pauses between bursts never pays; at a 100 times slower start (a
        // 23 s start weighs 8 h of idle container) it does.
        let c = calls(&bursts(), 0.0);
        let cheap = window(Policy::Auto, &c, &Costs::default());
        let slow = Costs { cold: 100.0 * Costs::default().cold, ..Costs::default() };
        let dear = window(Policy::Auto, &c, &slow);
        assert!(cheap.keep < 60.0, "{cheap:?}");
        // Kept through the longest pause (7210 s from the burst's last call).
        assert!((dear.keep - 7210.0 * 1.1).abs() < 1e-6, "{dear:?}");
        // Same gaps, same shape of plan: warm, then frozen.
        assert_eq!((dear.prewarm_after, dear.pause_after), (None, Some(PAUSE_AFTER)));
    }
}
