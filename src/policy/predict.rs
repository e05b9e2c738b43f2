//! Prediction from history: command sequences within a session (`tcpdump`
//! then `traceroute`) and periodic calls (cron).

use std::collections::HashMap;

use super::Secs;

/// A B call counts as following A when it comes this soon after A, in the
/// same session.
pub const SEQUENCE_GAP: Secs = 300.0;
/// Warm B on A when P(B|A) reaches this…
pub const SEQUENCE_THRESHOLD: f64 = 0.8;
/// …and A was followed by something at least this often.
pub const SEQUENCE_MIN_SUPPORT: u32 = 3;

/// First-order transitions between commands of one session.
#[derive(Debug, Default, Clone)]
pub struct Transitions {
    /// (A, B) → how often B followed A.
    pairs: HashMap<(String, String), u32>,
    /// A → how often anything followed A.
    from: HashMap<String, u32>,
    /// session → (last command, its time).
    last: HashMap<String, (String, Secs)>,
}

impl Transitions {
    /// Learn from one call (in time order).
    pub fn observe(&mut self, session: &str, command: &str, at: Secs) {
        if let Some((prev, t)) = self.last.get(session) {
            if at - t <= SEQUENCE_GAP {
                *self.pairs.entry((prev.clone(), command.to_string())).or_default() += 1;
                *self.from.entry(prev.clone()).or_default() += 1;
            }
        }
        self.last.insert(session.to_string(), (command.to_string(), at));
    }

    /// The last command of a session and when it was called.
    pub fn last(&self, session: &str) -> Option<(&str, Secs)> {
        self.last.get(session).map(|(c, t)| (c.as_str(), *t))
    }

    /// P(B | A) and the support behind it.
    pub fn probability(&self, a: &str, b: &str) -> (f64, u32) {
        let n = self.from.get(a).copied().unwrap_or(0);
        if n == 0 {
            return (0.0, 0);
        }
        let k = self.pairs.get(&(a.to_string(), b.to_string())).copied().unwrap_or(0);
        (k as f64 / n as f64, n)
    }

    /// Commands worth warming when `a` is called.
    pub fn likely_next(&self, a: &str) -> Vec<(String, f64)> {
        let n = self.from.get(a).copied().unwrap_or(0);
        if n < SEQUENCE_MIN_SUPPORT {
            return vec![];
        }
        let mut out: Vec<(String, f64)> = self
            .pairs
            .iter()
            .filter(|((x, _), _)| x == a)
            .map(|((_, b), &k)| (b.clone(), k as f64 / n as f64))
            .filter(|(_, p)| *p >= SEQUENCE_THRESHOLD)
            .collect();
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    }
}

/// A near-constant interval between call starts (coefficient of variation
/// under 10% over at least 4 intervals), e.g. a cron job.
pub fn period(starts: &[Secs]) -> Option<Secs> {
    let recent = &starts[starts.len().saturating_sub(21)..];
    if recent.len() < 5 {
        return None;
    }
    let iv: Vec<Secs> = recent.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = iv.iter().sum::<f64>() / iv.len() as f64;
    if mean <= 0.0 {
        return None;
    }
    let var = iv.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / iv.len() as f64;
    (var.sqrt() / mean < 0.1).then_some(mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_learned_per_session_within_the_gap() {
        let mut t = Transitions::default();
        for i in 0..4 {
            let s = format!("s{i}");
            let at = i as f64 * 1000.0;
            t.observe(&s, "tcpdump", at);
            t.observe(&s, "traceroute", at + 30.0);
        }
        // Another session interleaved does not count as a sequence…
        t.observe("x", "jq", 3000.0);
        // …nor does a call long after.
        t.observe("s0", "jq", 9000.0);
        assert_eq!(t.probability("tcpdump", "traceroute"), (1.0, 4));
        assert_eq!(t.likely_next("tcpdump"), vec![("traceroute".to_string(), 1.0)]);
        assert_eq!(t.probability("traceroute", "jq"), (0.0, 0));
        // One observation is not enough support.
        let mut u = Transitions::default();
        u.observe("a", "x", 0.0);
        u.observe("a", "y", 1.0);
        assert!(u.likely_next("x").is_empty());
    }

    #[test]
    fn periods_need_regular_intervals() {
        let cron: Vec<f64> = (0..10).map(|i| i as f64 * 900.0 + if i % 2 == 0 { 2.0 } else { -1.0 }).collect();
        assert!((period(&cron).unwrap() - 900.0).abs() < 1.0);
        let bursty = [0.0, 5.0, 6.0, 400.0, 410.0, 3000.0];
        assert_eq!(period(&bursty), None);
        assert_eq!(period(&cron[..3]), None);
    }
}
