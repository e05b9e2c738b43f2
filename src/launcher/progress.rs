//! What the caller sees while a missing image is fetched before its first
//! call: a bar redrawn in place when stderr is a terminal, otherwise one line
//! when the fetch starts and one when it ends (logs stay readable).

use std::io::Write;
use std::time::Instant;

use crate::protocol::ImageProgress;

pub struct Fetching {
    command: String,
    terminal: bool,
    /// The fetch being shown: (reference, building), when it began, and
    /// whether a line of it is on screen.
    current: Option<((String, bool), Instant)>,
    drawn: bool,
}

impl Fetching {
    pub fn new(command: &str, terminal: bool) -> Fetching {
        Fetching { command: command.to_string(), terminal, current: None, drawn: false }
    }

    pub fn show(&mut self, p: &ImageProgress) {
        let key = (p.reference.clone(), p.building);
        let started = match &self.current {
            Some((k, at)) if *k == key => *at,
            _ => {
                let now = Instant::now();
                self.current = Some((key, now));
                if !self.terminal {
                    self.line(&format!("{} {} ({})", verb(p, false), p.reference, if p.building { "cannot be pulled" } else { "not on this machine" }));
                }
                now
            }
        };
        let secs = started.elapsed().as_secs_f64();
        let text = format!("{} {} {}", verb(p, p.done && p.ok), p.reference, summary(p, secs));
        if self.terminal {
            let mut err = std::io::stderr().lock();
            // A failed fetch's reason comes in the error line that follows.
            let _ = if p.done && !p.ok {
                write!(err, "\r\x1b[K")
            } else {
                // One screen line, or `\r` could not take it back.
                let cols = super::tty::winsize(2).map_or(80, |w| usize::from(w.ws_col).max(20));
                let line: String = format!("odfs: {}: {} {text}", self.command, bar(p)).chars().take(cols - 1).collect();
                write!(err, "\r\x1b[K{line}{}", if p.done { "\n" } else { "" })
            };
            self.drawn = !p.done;
        } else if p.done && p.ok {
            self.line(&text);
        }
        if p.done {
            self.current = None;
        }
    }

    fn line(&self, text: &str) {
        eprintln!("odfs: {}: {text}", self.command);
    }
}

impl Drop for Fetching {
    /// Whatever follows (the tool's output, an error) starts on a clean line.
    fn drop(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[K");
        }
    }
}

fn verb(p: &ImageProgress, finished: bool) -> &'static str {
    match (p.building, finished) {
        (false, false) => "pulling",
        (false, true) => "pulled",
        (true, false) => "building",
        (true, true) => "built",
    }
}

/// `3/5 layers, 12.3/45.6 MB, 4.5 MB/s` (a build: `step 3/5: RUN …`), and
/// the time taken once it is done.
pub fn summary(p: &ImageProgress, secs: f64) -> String {
    let mut s = if p.building {
        if p.layers_total > 0 {
            format!("step {}/{}", (p.layers_done + 1).min(p.layers_total), p.layers_total)
        } else {
            p.step.clone()
        }
    } else {
        format!("{}/{} layers", p.layers_done, p.layers_total)
    };
    if p.bytes_total > 0 {
        s += &format!(", {:.1}/{}", p.bytes_done as f64 / 1e6, mb(p.bytes_total));
        if secs > 0.0 && !p.done {
            s += &format!(", {}/s", mb((p.bytes_done as f64 / secs) as u64));
        }
    }
    if p.done {
        s += &format!(" in {secs:.1}s");
    }
    s
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `[#######.............]`: bytes when the engine reported sizes, else
/// layers (or build steps).
fn bar(p: &ImageProgress) -> String {
    const WIDTH: usize = 20;
    let fraction = if p.done && p.ok {
        1.0
    } else if p.bytes_total > 0 {
        p.bytes_done as f64 / p.bytes_total as f64
    } else if p.layers_total > 0 {
        f64::from(p.layers_done) / f64::from(p.layers_total)
    } else {
        0.0
    };
    let filled = ((fraction.clamp(0.0, 1.0)) * WIDTH as f64) as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(layers: (u32, u32), bytes: (u64, u64)) -> ImageProgress {
        ImageProgress {
            reference: "r/x:1".into(),
            layers_done: layers.0,
            layers_total: layers.1,
            bytes_done: bytes.0,
            bytes_total: bytes.1,
            ..Default::default()
        }
    }

    #[test]
    fn a_pull_shows_layers_bytes_and_rate() {
        assert_eq!(summary(&p((1, 4), (2_000_000, 8_000_000)), 2.0), "1/4 layers, 2.0/8.0 MB, 1.0 MB/s");
        assert_eq!(bar(&p((1, 4), (2_000_000, 8_000_000))), format!("[{}{}]", "#".repeat(5), ".".repeat(15)));
        let done = ImageProgress { done: true, ok: true, ..p((4, 4), (8_000_000, 8_000_000)) };
        assert_eq!(summary(&done, 4.0), "4/4 layers, 8.0/8.0 MB in 4.0s");
        assert_eq!(bar(&done), format!("[{}]", "#".repeat(20)));
    }

    #[test]
    fn a_pull_without_sizes_uses_layers() {
        assert_eq!(bar(&p((1, 2), (0, 0))), format!("[{}{}]", "#".repeat(10), ".".repeat(10)));
        assert_eq!(summary(&p((0, 0), (0, 0)), 0.0), "0/0 layers");
    }

    #[test]
    fn a_build_shows_its_step() {
        let b = ImageProgress { building: true, ..p((1, 5), (0, 0)) };
        assert_eq!(summary(&b, 1.0), "step 2/5");
        let starting = ImageProgress { building: true, step: "building from images/x".into(), ..p((0, 0), (0, 0)) };
        assert_eq!(summary(&starting, 0.0), "building from images/x");
    }
}
