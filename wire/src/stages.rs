//! Stage stamps of one call, for the benchmark's breakdown: opt-in by the
//! caller (`ODFS_STAGES=FILE` in its environment), taken on
//! `CLOCK_MONOTONIC`, which the host and its containers share (odfs makes
//! no time namespace), and written by the launcher as one line per call.
//!
//! Off, a call pays one environment look-up in the launcher and a clock read
//! per connection in the daemon and per tool end in the agent.

use alloc::string::String;

use serde::{Deserialize, Serialize};

/// The caller's variable naming the file the launcher appends its line to.
/// The daemon takes it out of the tool's environment: a tool that runs
/// another catalog tool must not write into the caller's trace.
pub const STAGES_ENV: &str = "ODFS_STAGES";

/// The daemon's stamps of a traced call, sent with the hand-off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStamps {
    /// The control connection was accepted.
    pub accepted: u64,
    /// The request was read whole.
    pub read: u64,
    /// The spawn request was written to the agent.
    pub agent: u64,
    /// The agent's `Started` was read; the hand-off goes next.
    pub started: u64,
    /// How the profile's container came up for this call (all 0 when it
    /// was running).
    pub up: UpStamps,
}

/// The daemon's stamps of a container brought up for a call: started
/// (`prepared` to `ready`) or thawed (`thawed`); a stage that did not
/// happen is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpStamps {
    /// The pool holds the profile's lock: the call is the one to bring it up.
    pub pool: u64,
    /// Its image found and its view prepared; the engine is asked next.
    pub prepared: u64,
    /// The engine created the container.
    pub created: u64,
    /// The engine started it (shim, runtime, namespaces).
    pub launched: u64,
    /// Its agent answered.
    pub ready: u64,
    /// A frozen container thawed.
    pub thawed: u64,
}

/// The agent's stamps of a traced call, sent just before the tool's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStamps {
    /// The spawn request was read.
    pub received: u64,
    /// `fork` returned in the agent.
    pub forked: u64,
    /// The child, set up as the caller, is about to `execve` the tool.
    pub exec: u64,
    /// `waitpid` returned the tool's end.
    pub reaped: u64,
}

/// Every stamp of one call, in order; the launcher's own are `main` (its
/// first instruction of Rust), `sent` (the request about to be sent), `handoff`
/// (the agent connection in hand), `event` (the end event read) and `exit`
/// (just before it exits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStamps {
    pub main: u64,
    pub sent: u64,
    pub daemon: DaemonStamps,
    pub agent: AgentStamps,
    pub handoff: u64,
    pub event: u64,
    pub exit: u64,
}

/// The names of a line's fields, in its order.
const FIELDS: [&str; 19] = [
    "main", "sent", "accepted", "read", "pool", "prepared", "created", "launched", "ready", "thawed", "agent", "started", "received", "forked",
    "exec", "reaped", "handoff", "event", "exit",
];

impl CallStamps {
    fn values(&self) -> [u64; 19] {
        let (d, a, u) = (&self.daemon, &self.agent, &self.daemon.up);
        [
            self.main, self.sent, d.accepted, d.read, u.pool, u.prepared, u.created, u.launched, u.ready, u.thawed, d.agent, d.started, a.received,
            a.forked, a.exec, a.reaped, self.handoff, self.event, self.exit,
        ]
    }

    /// One line: `odfs-stages main=NS sent=NS …` (no newline).
    pub fn line(&self) -> String {
        use core::fmt::Write;
        let mut s = String::from("odfs-stages");
        for (name, v) in FIELDS.iter().zip(self.values()) {
            let _ = write!(s, " {name}={v}");
        }
        s
    }

    /// Parse a line [`CallStamps::line`] wrote; `None` for any other.
    pub fn parse(line: &str) -> Option<CallStamps> {
        let mut words = line.split_whitespace();
        if words.next() != Some("odfs-stages") {
            return None;
        }
        let mut v = [0u64; FIELDS.len()];
        let mut seen = 0;
        for (i, word) in words.enumerate() {
            let (name, value) = word.split_once('=')?;
            if FIELDS.get(i) != Some(&name) {
                return None;
            }
            v[i] = value.parse().ok()?;
            seen += 1;
        }
        if seen != FIELDS.len() {
            return None;
        }
        let [main, sent, accepted, read, pool, prepared, created, launched, ready, thawed, agent, started, received, forked, exec, reaped, handoff, event, exit] =
            v;
        let up = UpStamps { pool, prepared, created, launched, ready, thawed };
        Some(CallStamps {
            main,
            sent,
            daemon: DaemonStamps { accepted, read, agent, started, up },
            agent: AgentStamps { received, forked, exec, reaped },
            handoff,
            event,
            exit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back_as_written_and_nothing_else_parses() {
        let s = CallStamps {
            main: 1,
            sent: 2,
            daemon: DaemonStamps { accepted: 3, read: 4, agent: 5, started: 6, up: UpStamps { pool: 14, prepared: 15, created: 16, launched: 17, ready: 18, thawed: 19 } },
            agent: AgentStamps { received: 7, forked: 8, exec: 9, reaped: 10 },
            handoff: 11,
            event: 12,
            exit: 13,
        };
        assert_eq!(CallStamps::parse(&s.line()), Some(s));
        assert_eq!(CallStamps::parse("odfs-stages sent=1"), None);
        assert_eq!(CallStamps::parse("odfs-stages main=1"), None);
        assert_eq!(CallStamps::parse("odfs-stages main=x"), None);
        assert_eq!(CallStamps::parse("other main=1"), None);
    }
}
