//! Keep-alive as a cache: idle containers stay within a budget (how many,
//! how much memory), and when it needs room the least valuable goes first,
//! by Greedy-Dual-Size-Frequency (Cao & Irani, 1997), the eviction FaasCache
//! (Fuerst & Sharma, ASPLOS'21) found to beat keep-alive timers at equal
//! memory. On one machine what a waiting container costs is the memory it
//! holds, not the seconds it waits.
//!
//! A container's priority is `clock + calls × cold start cost / size`: a
//! tool called often (recent calls counting most), slow to start and small
//! is kept; the clock rises to each evicted priority, so what was called
//! long ago ages against what is called now. Pure: the daemon's reaper and
//! `odfs simulate` share it.

use std::collections::HashMap;
use std::hash::Hash;

use super::{Plan, Secs};

/// What idle containers may hold at once; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub max_idle: Option<usize>,
    /// Bytes.
    pub memory: Option<u64>,
}

impl Budget {
    pub fn limits(&self) -> bool {
        self.max_idle.is_some() || self.memory.is_some()
    }
}

/// Under a budget `auto` keeps an idle container until the budget needs
/// room (or `max_age`): its window's time limit goes, and so does the
/// unloading ahead of a pre-warm (memory is the budget's to manage; a
/// period guessed from a person's calls is often wrong). A pre-warm stays:
/// it starts again a container the budget removed. A catalog
/// `pause_after` the window had cut off applies again.
pub fn unbounded(plan: &mut Plan, end: Secs, max_age: Option<Secs>, pause_after: Option<Secs>) {
    plan.unload = false;
    plan.remove_at = max_age.map_or(Secs::INFINITY, |a| end + a);
    if let Some(pa) = pause_after {
        plan.pause_at = Some(end + pa).filter(|&t| t < plan.remove_at);
    }
    plan.reason = format!("{}; kept within the idle budget", plan.reason);
}

/// What is left of an evicted container's plan: a pre-warm still ahead
/// (the periodic predictor's), which brings it back before its next
/// expected call. A pre-warm already due would only start it again.
pub fn after_eviction(plan: Option<Plan>, now: Secs) -> Option<Plan> {
    plan.filter(|p| p.prewarm_at.is_some_and(|t| t > now))
}

/// The daemon's idle settings (the config file's `[idle]`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdleConfig {
    pub budget: Budget,
    /// Remove an idle container after this anyway.
    pub max_age: Option<Secs>,
    /// Where memory pressure is read (PSI format); `None`: the kernel's
    /// `/proc/pressure/memory` and `MemAvailable`.
    pub pressure_file: Option<std::path::PathBuf>,
    /// `some avg10` (percent of time stalled on memory) from which idle
    /// containers are shed.
    pub pressure_avg10: f64,
}

/// `some avg10` from which memory counts as short, by default: a tenth of
/// the time stalled on memory.
pub const PRESSURE_AVG10: f64 = 10.0;

impl Default for IdleConfig {
    /// No budget; pressure read from the kernel.
    fn default() -> IdleConfig {
        IdleConfig { budget: Budget::default(), max_age: None, pressure_file: None, pressure_avg10: PRESSURE_AVG10 }
    }
}

/// The default memory budget: the smaller of 512 MiB and 5% of the RAM
/// (512 MiB when the RAM is not known).
pub fn default_memory(mem_total: u64) -> u64 {
    if mem_total == 0 {
        return 512 << 20;
    }
    (512u64 << 20).min(mem_total / 20)
}

/// Whether a PSI line set (`/proc/pressure/memory`) says memory is short:
/// `some avg10` at least `threshold` percent.
pub fn under_pressure(psi: &str, threshold: f64) -> bool {
    psi.lines()
        .filter(|l| l.starts_with("some "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix("avg10=")?.parse::<f64>().ok())
        .is_some_and(|v| v > 0.0 && v >= threshold)
}

/// An idle container (warm or frozen, no tool in it) as the budget sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle<K> {
    pub key: K,
    /// Bytes it holds; 0 when not measured (yet).
    pub memory: u64,
    /// How much of a cold start keeping it would save, 0 to 1: the
    /// predictors' word on its next call ([`expectation`]).
    pub expect: f64,
    /// Whose calls keep it (the uid of its last call), if known.
    pub owner: Option<u32>,
}

impl<K> Idle<K> {
    /// A container nothing predicts either way: plain GDSF.
    pub fn new(key: K, memory: u64) -> Idle<K> {
        Idle { key, memory, expect: 1.0, owner: None }
    }
}

/// How much of a cold start keeping an idle container is expected to save,
/// from 0 to 1: the periodic predictor's word. A pre-warm that will bring
/// the container back before its next expected call (`prewarm_in` seconds
/// from now, more than a start ahead) makes its eviction cost the caller
/// nothing if the period holds; it keeps [`COVERED`] of its value for when
/// it does not. (The sequence predictor's word counts as a fraction of a
/// call: [`Cache::expected`].)
///
/// The idle-gap histogram and the paper's ε were tried here too, as the
/// share of past gaps longer than the current one: on the tuning histories
/// they made eviction worse than frequency and recency alone
/// (docs/keep-alive.md), so they shape the windows of the policies without
/// a budget and not the budget's order.
pub fn expectation(prewarm_in: Option<Secs>, cold: Secs) -> f64 {
    if prewarm_in.is_some_and(|t| t > cold) {
        COVERED
    } else {
        1.0
    }
}

/// What an idle container a pre-warm will bring back is still worth: the
/// share of periods that are missed (a call early or late).
pub const COVERED: f64 = 0.1;

#[derive(Debug, Clone)]
struct Entry {
    /// Calls, the earlier ones weighing less ([`CALL_DECAY`]).
    calls: f64,
    /// Its cold start cost, seconds.
    cost: f64,
    /// The clock at its last call.
    since: f64,
}

impl Entry {
    /// GDSF's priority, with the size the container holds now and the
    /// share of a cold start it is expected to save.
    fn priority(&self, memory: u64, expect: f64) -> f64 {
        self.since + self.calls * self.cost * expect / size_mib(memory)
    }
}

/// How much each earlier call counts against the next one in a container's
/// call count: the last few calls weigh most, so a tool used heavily last
/// month does not outrank today's (plain GDSF counts every call alike).
/// Chosen on the tuning half of the real histories (docs/keep-alive.md).
pub const CALL_DECAY: f64 = 0.8;

/// The sizes priorities divide by are in MiB, at least 1, so that an
/// unmeasured container counts as a small one and not as free.
fn size_mib(memory: u64) -> f64 {
    (memory as f64 / (1u64 << 20) as f64).max(1.0)
}

/// Priorities of the containers a budget holds, keyed by profile.
#[derive(Debug, Clone)]
pub struct Cache<K> {
    clock: f64,
    entries: HashMap<K, Entry>,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache { clock: 0.0, entries: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone> Cache<K> {
    /// A call of `key`'s tool: one more call, priority renewed at the
    /// current clock. `cold` is what a cold start of it costs (seconds),
    /// `memory` what its container holds idle (bytes, 0 if unknown).
    pub fn called(&mut self, key: &K, cold: Secs) {
        let clock = self.clock;
        let e = self.entries.entry(key.clone()).or_insert(Entry { calls: 0.0, cost: 0.0, since: clock });
        e.calls = e.calls * CALL_DECAY + 1.0;
        e.cost = cold.max(1e-3);
        e.since = clock;
    }

    /// The sequence predictor expects a call of `key` with probability `p`
    /// (its command usually follows the one just called): that counts as
    /// `p` of a call, now. A container about to be needed is not the one to
    /// evict, and a prediction's start is admitted against what it is
    /// worth.
    pub fn expected(&mut self, key: &K, p: f64) {
        let clock = self.clock;
        let e = self.entries.entry(key.clone()).or_insert(Entry { calls: 0.0, cost: 0.0, since: clock });
        e.calls += p.clamp(0.0, 1.0);
        e.since = clock;
    }

    /// The priority of `idle` (the clock for one never called: it is worth
    /// least).
    pub fn priority(&self, idle: &Idle<K>) -> f64 {
        self.entries.get(&idle.key).map_or(self.clock, |e| e.priority(idle.memory, idle.expect))
    }

    /// Whether a container started ahead of a call (a prediction) may join
    /// `idle`: if the budget has room for one more, or if it is worth more
    /// than the least valuable there, which it would then push out. A guess
    /// must not evict a container the user is more likely to call.
    pub fn admits(&self, candidate: &Idle<K>, idle: &[Idle<K>], budget: &Budget) -> bool {
        let room = budget.max_idle.is_none_or(|m| idle.len() < m);
        room || idle.iter().any(|i| self.priority(i) < self.priority(candidate))
    }

    /// Which of `idle` to remove, least valuable first, so that the rest fit
    /// `budget`, and at least `shed` of them (memory pressure). When users
    /// share the budget, the containers of a user who holds more than an
    /// equal share of it go first: one user's many tools (an archive's
    /// packages, say) cannot push every other user's out. Changes nothing:
    /// the caller reports each one it did remove ([`Cache::evicted`]).
    pub fn victims(&self, idle: &[Idle<K>], budget: &Budget, shed: usize) -> Vec<K> {
        let mut left: Vec<&Idle<K>> = idle.iter().collect();
        left.sort_by(|a, b| self.priority(a).total_cmp(&self.priority(b)));
        let mut out = Vec::new();
        while !left.is_empty() {
            let memory: u64 = left.iter().map(|i| i.memory).sum();
            let over = budget.max_idle.is_some_and(|m| left.len() > m) || budget.memory.is_some_and(|m| memory > m);
            if !over && out.len() >= shed {
                break;
            }
            let at = over_share(&left, budget).unwrap_or(0);
            out.push(left.remove(at).key.clone());
        }
        out
    }

    /// `idle` was removed: the clock rises to its priority, and it starts
    /// its count again when it comes back (as GDSF does).
    pub fn evicted(&mut self, idle: &Idle<K>) {
        self.clock = self.clock.max(self.priority(idle));
        self.entries.remove(&idle.key);
    }

    /// Forget profiles that no longer exist.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

/// The place in `left` (least valuable first) of the least valuable
/// container whose owner holds more than an equal share of `budget` among
/// the owners there; `None` with fewer than two owners, or none over.
fn over_share<K>(left: &[&Idle<K>], budget: &Budget) -> Option<usize> {
    let mut held: HashMap<u32, (usize, u64)> = HashMap::new();
    for i in left {
        if let Some(o) = i.owner {
            let h = held.entry(o).or_default();
            h.0 += 1;
            h.1 += i.memory;
        }
    }
    let owners = held.len();
    if owners < 2 {
        return None;
    }
    let (count_share, memory_share) = (budget.max_idle.map(|m| m / owners), budget.memory.map(|m| m / owners as u64));
    left.iter().position(|i| {
        i.owner.is_some_and(|o| {
            let (count, memory) = held[&o];
            count_share.is_some_and(|s| count > s) || memory_share.is_some_and(|s| memory > s)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_s_many_containers_go_before_another_user_s_share() {
        let mut cache: Cache<&str> = Cache::default();
        // A's tools are called often, B's once: by value alone B's go first.
        for k in ["a1", "a2", "a3", "a4", "a5", "a6"] {
            for _ in 0..5 {
                cache.called(&k, 1.0);
            }
        }
        for k in ["b1", "b2"] {
            cache.called(&k, 1.0);
        }
        let idle: Vec<Idle<&str>> = ["a1", "a2", "a3", "a4", "a5", "a6", "b1", "b2"]
            .into_iter()
            .map(|k| Idle { owner: Some(if k.starts_with('a') { 1000 } else { 1001 }), ..Idle::new(k, 0) })
            .collect();
        let budget = Budget { max_idle: Some(4), memory: None };
        let mut gone = cache.victims(&idle, &budget, 0);
        gone.sort();
        assert_eq!(gone, ["a1", "a2", "a3", "a4"], "B keeps its share of 2");
        // Without owners, plain GDSF.
        let anonymous: Vec<Idle<&str>> = idle.iter().map(|i| Idle { owner: None, ..i.clone() }).collect();
        let gone = cache.victims(&anonymous, &budget, 0);
        assert!(gone.contains(&"b1") && gone.contains(&"b2"), "{gone:?}");
    }

    fn idle(keys: &[&'static str]) -> Vec<Idle<&'static str>> {
        keys.iter().map(|&key| Idle::new(key, 0)).collect()
    }

    /// Remove the victims, as the daemon does.
    fn evict(c: &mut Cache<&'static str>, idle: &[Idle<&'static str>], budget: &Budget, shed: usize) -> Vec<&'static str> {
        let v = c.victims(idle, budget, shed);
        for k in &v {
            c.evicted(idle.iter().find(|i| i.key == *k).unwrap());
        }
        v
    }

    #[test]
    fn the_least_called_goes_first_and_the_clock_ages_the_rest() {
        let mut c = Cache::default();
        for _ in 0..5 {
            c.called(&"jq", 0.2);
        }
        c.called(&"rg", 0.2);
        c.called(&"gdb", 0.2);
        c.called(&"gdb", 0.2);
        let budget = Budget { max_idle: Some(2), memory: None };
        assert_eq!(evict(&mut c, &idle(&["jq", "rg", "gdb"]), &budget, 0), vec!["rg"]);
        // The clock is now rg's priority: two calls from here on outrank
        // gdb's two calls of long ago (0.2 × 1.8).
        assert!((c.priority(&Idle::new("gdb", 0)) - 0.36).abs() < 1e-9);
        c.called(&"make", 0.2);
        c.called(&"make", 0.2);
        assert!(c.priority(&Idle::new("make", 0)) > c.priority(&Idle::new("gdb", 0)));
        assert_eq!(evict(&mut c, &idle(&["jq", "gdb", "make"]), &budget, 0), vec!["gdb"]);
        // Asking changes nothing.
        assert_eq!(c.victims(&idle(&["jq", "make", "rg"]), &budget, 0), c.victims(&idle(&["jq", "make", "rg"]), &budget, 0));
    }

    #[test]
    fn slow_starts_and_small_containers_are_worth_more() {
        let mut c = Cache::default();
        c.called(&"fast", 0.1);
        c.called(&"slow", 2.0);
        c.called(&"big", 2.0);
        let budget = Budget { max_idle: Some(1), memory: None };
        // Sizes as they are now, not as they were at the call.
        let held = vec![Idle::new("fast", 0), Idle::new("slow", 0), Idle::new("big", 400 << 20)];
        assert_eq!(c.victims(&held, &budget, 0), vec!["big", "fast"]);
    }

    #[test]
    fn the_predictors_word_moves_a_container_in_the_order() {
        let mut c = Cache::default();
        for k in ["cron", "jq", "rg"] {
            c.called(&k, 1.0);
        }
        let budget = Budget { max_idle: Some(2), memory: None };
        // rg usually follows the command just called: it is not the one to go.
        c.expected(&"rg", 0.9);
        assert_eq!(c.victims(&idle(&["cron", "jq", "rg"]), &budget, 0), vec!["cron"]);
        // A container a pre-warm will bring back goes before the others…
        let covered = Idle { key: "jq", memory: 0, expect: expectation(Some(600.0), 1.0), owner: None };
        assert_eq!(c.victims(&[Idle::new("cron", 0), covered.clone(), Idle::new("rg", 0)], &budget, 0), vec!["jq"]);
        // …unless the pre-warm is too close to start it again in time.
        assert_eq!(expectation(Some(0.5), 1.0), 1.0);
        assert_eq!(expectation(None, 1.0), 1.0);
        // What is predicted is admitted against what it is worth.
        let full = idle(&["cron", "jq"]);
        assert!(c.admits(&Idle::new("rg", 0), &full, &budget));
        assert!(!c.admits(&Idle::new("new", 0), &full, &budget));
    }

    #[test]
    fn pressure_is_read_from_psi_lines() {
        let psi = "some avg10=12.50 avg60=3.00 avg300=1.00 total=1\nfull avg10=2.00 avg60=0 avg300=0 total=0\n";
        assert!(under_pressure(psi, 10.0));
        assert!(!under_pressure(psi, 20.0));
        assert!(!under_pressure("garbage", 0.0));
        assert_eq!(default_memory(4 << 30), (4u64 << 30) / 20);
        assert_eq!(default_memory(64 << 30), 512 << 20);
        assert_eq!(default_memory(0), 512 << 20);
    }

    #[test]
    fn memory_budgets_and_pressure_remove_until_it_fits() {
        let mut c = Cache::default();
        for (k, n) in [("a", 1), ("b", 2), ("c", 3)] {
            for _ in 0..n {
                c.called(&k, 1.0);
            }
        }
        let sized = |m: u64| vec![Idle::new("a", m), Idle::new("b", m), Idle::new("c", m)];
        let budget = Budget { max_idle: None, memory: Some(250) };
        assert_eq!(c.victims(&sized(100), &budget, 0), vec!["a"]);
        assert!(c.victims(&sized(80), &budget, 0).is_empty());
        // Pressure sheds even within the budget, least valuable first.
        assert_eq!(c.victims(&sized(80), &budget, 2), vec!["a", "b"]);
        assert!(c.victims(&sized(80), &Budget::default(), 0).is_empty());
    }
}
