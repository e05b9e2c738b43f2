//! A container's busy count as its agent reports it: tools running, since
//! when none has, and the tools' ends not yet reported (bounded). The agent
//! keeps one; the daemon keeps one per container on a remote engine, whose
//! agent it cannot ask cheaply but whose every call it relays.

use std::collections::VecDeque;
use std::time::Instant;

use super::{AgentEvent, Finished};

/// Ends kept between two status questions; the oldest go first.
const FINISHED_KEPT: usize = 1000;

#[derive(Debug)]
pub struct Tally {
    running: u32,
    idle_since: Instant,
    finished: VecDeque<Finished>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally { running: 0, idle_since: Instant::now(), finished: VecDeque::new() }
    }
}

impl Tally {
    /// A tool started.
    pub fn begin(&mut self) {
        self.running += 1;
    }

    /// A tool ended with `status` (exit code, or 128 + signal).
    pub fn end(&mut self, pid: i32, status: i32, run_ms: u64) {
        self.running = self.running.saturating_sub(1);
        if self.running == 0 {
            self.idle_since = Instant::now();
        }
        if self.finished.len() >= FINISHED_KEPT {
            self.finished.pop_front();
        }
        self.finished.push_back(Finished { pid, status, run_ms });
    }

    /// Nothing ran yet: idle from now (a container just started).
    pub fn reset_idle(&mut self) {
        if self.running == 0 {
            self.idle_since = Instant::now();
        }
    }

    /// The answer to a status question; each end is reported once.
    /// `memory`: what the container holds, if the asker knows.
    pub fn report(&mut self, memory: u64) -> AgentEvent {
        let idle_ms = if self.running == 0 { self.idle_since.elapsed().as_millis() as u64 } else { 0 };
        AgentEvent::Status { running: self.running, idle_ms, finished: self.finished.drain(..).collect(), memory }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_reported_once_and_idle_counts_only_without_tools() {
        let mut t = Tally::default();
        t.begin();
        t.begin();
        t.end(7, 0, 5);
        assert!(matches!(t.report(0), AgentEvent::Status { running: 1, idle_ms: 0, ref finished, .. } if finished.len() == 1));
        t.end(8, 137, 9);
        match t.report(0) {
            AgentEvent::Status { running: 0, finished, .. } => assert_eq!(finished, [Finished { pid: 8, status: 137, run_ms: 9 }]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.report(0), AgentEvent::Status { ref finished, .. } if finished.is_empty()));
        for pid in 0..(FINISHED_KEPT as i32 + 5) {
            t.begin();
            t.end(pid, 0, 0);
        }
        assert!(matches!(t.report(0), AgentEvent::Status { running: 0, ref finished, .. } if finished.len() == FINISHED_KEPT && finished[0].pid == 5));
    }
}
