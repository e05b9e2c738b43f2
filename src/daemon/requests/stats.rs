//! `odfs stats`: call figures per command from the pool's history, and
//! what is left of each keep-alive window.

use super::Answer;
use crate::backend::ContainerBackend;
use crate::daemon::pool::Served;
use crate::daemon::Daemon;
use crate::protocol::Response;

/// What is left of a keep-alive window, as `odfs stats` says it: `2m left`,
/// `45s left` (whole seconds, never negative).
fn time_left(secs: f64) -> String {
    format!("{} left", crate::policy::format_secs(secs.max(0.0).round()))
}

impl<B: ContainerBackend> Daemon<B> {
    pub(in crate::daemon) fn stats(&self) -> Answer {
        use crate::policy::{epsilon, Call};
        let mut out = Vec::new();
        for (image, seen, plan) in self.pool.history() {
            let mut commands: Vec<&str> = seen.iter().map(|s| s.command.as_str()).collect();
            commands.sort();
            commands.dedup();
            for cmd in commands {
                let mine: Vec<_> = seen.iter().filter(|s| s.command == cmd).collect();
                let calls: Vec<Call> = mine.iter().map(|s| s.call.clone()).collect();
                let count = |w: Served| mine.iter().filter(|s| s.served == w).count() as u32;
                let e = epsilon(&calls);
                let window = match &plan {
                    Some(p) => format!("{} ({})", time_left(p.remove_at - self.pool.now()), p.reason),
                    None => "decided when the container goes idle".into(),
                };
                out.push(crate::protocol::CommandStats {
                    command: cmd.to_string(),
                    image: image.clone(),
                    calls: mine.len() as u32,
                    warm: count(Served::Warm),
                    paused: count(Served::Paused),
                    cold: count(Served::Cold) + count(Served::Pulled),
                    mtbc: e.map(|e| e.mtbc),
                    mtts: e.map(|e| e.mtts).or_else(|| calls.first().map(|c| c.setup)),
                    mtte: e.map(|e| e.mtte).or_else(|| calls.first().map(|c| c.run)),
                    epsilon: e.map(|e| e.epsilon),
                    window,
                });
            }
        }
        out.sort_by(|a, b| a.command.cmp(&b.command));
        Ok(Response::Stats(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_as_a_duration() {
        assert_eq!(time_left(120.0), "2m left");
        assert_eq!(time_left(119.6), "2m left");
        assert_eq!(time_left(45.2), "45s left");
        assert_eq!(time_left(3600.0), "1h left");
        assert_eq!(time_left(125.0), "125s left");
        assert_eq!(time_left(-3.0), "0s left");
    }
}
