//! `odfs simulate`: replay a trace of calls under keep-alive policies.

use anyhow::Context;

/// A duration as `fixed(DURATION)` policies take it: 10m, 45s, 1h30m or seconds.
pub(crate) fn duration_secs(s: &str) -> Result<f64, String> {
    odfs::policy::humantime_secs(s).ok_or_else(|| format!("{s:?} is not a duration like 10m or 45s"))
}

/// A policy `odfs simulate` replays: the daemon's, or the clairvoyant bound.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SimPolicy {
    Daemon(odfs::policy::Policy),
    Oracle,
}

impl std::str::FromStr for SimPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<SimPolicy, String> {
        if s.trim() == "oracle" {
            return Ok(SimPolicy::Oracle);
        }
        s.parse().map(SimPolicy::Daemon).map_err(|e: String| format!("{e} (or oracle)"))
    }
}

pub(crate) fn simulate(trace: &std::path::Path, mut policies: Vec<SimPolicy>, opts: &odfs::policy::sim::Options, costs: odfs::policy::Costs, json: bool) -> anyhow::Result<()> {
    use odfs::policy::{sim, Policy};
    let text = std::fs::read_to_string(trace).with_context(|| format!("cannot read trace {}", trace.display()))?;
    let calls = sim::parse_trace(&text).map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
    if policies.is_empty() {
        policies = [Policy::Fixed(0.0), Policy::Fixed(600.0), Policy::Epsilon, Policy::Histogram, Policy::Auto]
            .map(SimPolicy::Daemon)
            .into_iter()
            .chain([SimPolicy::Oracle])
            .collect();
    }
    let reports: Vec<sim::Report> = policies
        .iter()
        .map(|p| match p {
            SimPolicy::Daemon(p) => sim::simulate_with(&calls, *p, opts, &costs),
            // At fixed(10m)'s idle time, without a budget: a bound on what
            // any keep-alive of that cost could do.
            SimPolicy::Oracle => {
                let fixed = sim::simulate_with(&calls, Policy::Fixed(600.0), &sim::Options { pause_after: opts.pause_after, ..Default::default() }, &costs);
                sim::oracle(&calls, &costs, fixed.idle())
            }
        })
        .collect();
    if json {
        let rows: Vec<_> = reports
            .iter()
            .map(|r| serde_json::json!({
                "policy": r.policy, "calls": r.calls, "cold": r.cold, "paused": r.paused, "warm": r.warm,
                "starts": r.starts, "cold_pct": r.cold_pct(), "paused_pct": r.paused_pct(),
                "idle_warm_s": r.idle_warm, "idle_paused_s": r.idle_paused, "idle_s": r.idle(),
                "mean_added_latency_ms": r.mean_latency_ms(),
                "sequence_calls": r.sequence_calls, "sequence_hits": r.sequence_hits,
                "first_calls": r.first_calls, "avoidable_cold": r.avoidable_cold(), "avoidable_cold_pct": r.avoidable_cold_pct(),
                "peak_idle": r.peak_idle, "idle_active_s": r.idle_active,
                "idle_budget": opts.budget.max_idle, "pause_after_s": opts.pause_after,
            }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let pause = opts.pause_after.map_or(String::new(), |p| format!("; pause_after {}", odfs::policy::format_secs(p)));
    let budget = opts.budget.max_idle.map_or(String::new(), |n| format!("; idle budget {n}"));
    let age = opts.idle_max_age.map_or(String::new(), |a| format!("; idle_max_age {}", odfs::policy::format_secs(a)));
    println!(
        "trace {}: {} calls, {} first calls; costs cold {}s, paused {}s, warm {}s{pause}{budget}{age}",
        trace.display(),
        calls.len(),
        reports.first().map_or(0, |r| r.first_calls),
        costs.cold,
        costs.paused,
        costs.warm
    );
    println!(
        "| {:<12} | {:>6} | {:>7} | {:>9} | {:>9} | {:>6} | {:>10} | {:>13} | {:>9} | {:>12} | {:>9} |",
        "policy", "calls", "cold %", "avoid. %", "paused %", "starts", "idle all h", "idle active h", "peak idle", "mean add ms", "seq hit %"
    );
    println!("|{:-<14}|{:-<8}|{:-<9}|{:-<11}|{:-<11}|{:-<8}|{:-<12}|{:-<15}|{:-<11}|{:-<14}|{:-<11}|", "", "", "", "", "", "", "", "", "", "", "");
    for r in &reports {
        let seq = if r.sequence_calls == 0 { "-".to_string() } else { format!("{:.0} ({}/{})", r.sequence_hit_pct(), r.sequence_hits, r.sequence_calls) };
        println!(
            "| {:<12} | {:>6} | {:>7.1} | {:>9.1} | {:>9.1} | {:>6} | {:>10.2} | {:>13.2} | {:>9} | {:>12.1} | {:>9} |",
            r.policy, r.calls, r.cold_pct(), r.avoidable_cold_pct(), r.paused_pct(), r.starts, r.idle() / 3600.0, r.idle_active / 3600.0, r.peak_idle, r.mean_latency_ms(), seq
        );
    }
    Ok(())
}
