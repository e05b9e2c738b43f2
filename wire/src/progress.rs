//! What the caller sees while a missing image is fetched before its first
//! call: a bar redrawn in place when stderr is a terminal, otherwise one line
//! when the fetch starts and one when it ends (logs stay readable).

use alloc::format;
use alloc::string::{String, ToString};

use crate::ImageProgress;

/// Where the display goes: the caller's stderr, and a clock.
pub trait Screen {
    /// Seconds on a monotonic clock.
    fn now(&self) -> f64;
    /// Write `text` to stderr as it is.
    fn write(&mut self, text: &str);
    /// The width of the terminal on stderr.
    fn columns(&self) -> Option<usize>;
}

pub struct Fetching<S: Screen> {
    command: String,
    terminal: bool,
    screen: S,
    /// The fetch being shown: (reference, building), when it began, and
    /// whether a line of it is on screen.
    current: Option<((String, bool), f64)>,
    drawn: bool,
    /// The image is fetched again on purpose (`odfs update`), not because
    /// it is missing.
    again: bool,
}

impl<S: Screen> Fetching<S> {
    /// `terminal`: stderr is a terminal, so a bar is redrawn in place.
    pub fn new(command: &str, terminal: bool, screen: S) -> Fetching<S> {
        Fetching { command: command.to_string(), terminal, screen, current: None, drawn: false, again: false }
    }

    /// A display for images fetched again on purpose (`odfs update`).
    pub fn again(mut self) -> Fetching<S> {
        self.again = true;
        self
    }

    pub fn show(&mut self, p: &ImageProgress) {
        let key = (p.reference.clone(), p.building);
        let now = self.screen.now();
        let started = match &self.current {
            Some((k, at)) if *k == key => *at,
            _ => {
                self.current = Some((key, now));
                if !self.terminal {
                    let why = match (self.again, p.building) {
                        (true, true) => "from its recipe",
                        (true, false) => "for an update",
                        // A build is how an image with a recipe is had,
                        // not only a failed pull's fallback.
                        (false, _) => "not on this machine",
                    };
                    self.line(&format!("{} {} ({why})", verb(p, false), p.reference));
                }
                now
            }
        };
        let secs = now - started;
        let text = format!("{} {} {}", verb(p, p.done && p.ok), p.reference, summary(p, secs));
        if self.terminal {
            // A failed fetch's reason comes in the error line that follows.
            if p.done && !p.ok {
                self.screen.write("\r\x1b[K");
            } else {
                // One screen line, or `\r` could not take it back.
                let cols = self.screen.columns().map_or(80, |c| c.max(20));
                let line: String = format!("odfs: {}: {} {text}", self.command, bar(p)).chars().take(cols - 1).collect();
                self.screen.write(&format!("\r\x1b[K{line}{}", if p.done { "\n" } else { "" }));
            }
            self.drawn = !p.done;
        } else if p.done && p.ok {
            self.line(&text);
        }
        if p.done {
            self.current = None;
        }
    }

    fn line(&mut self, text: &str) {
        let line = format!("odfs: {}: {text}\n", self.command);
        self.screen.write(&line);
    }
}

impl<S: Screen> Drop for Fetching<S> {
    /// Whatever follows (the tool's output, an error) starts on a clean line.
    fn drop(&mut self) {
        if self.drawn {
            self.screen.write("\r\x1b[K");
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

    /// A screen that keeps what is written, on a clock the test moves.
    struct Kept(alloc::rc::Rc<core::cell::RefCell<(String, f64)>>);

    impl Screen for Kept {
        fn now(&self) -> f64 {
            self.0.borrow().1
        }
        fn write(&mut self, text: &str) {
            self.0.borrow_mut().0.push_str(text);
        }
        fn columns(&self) -> Option<usize> {
            Some(40)
        }
    }

    #[test]
    fn a_log_gets_a_line_at_the_start_and_one_at_the_end() {
        let kept = alloc::rc::Rc::new(core::cell::RefCell::new((String::new(), 1.0)));
        let mut f = Fetching::new("jq", false, Kept(kept.clone()));
        f.show(&p((0, 2), (0, 0)));
        kept.borrow_mut().1 = 3.5;
        f.show(&ImageProgress { done: true, ok: true, ..p((2, 2), (0, 0)) });
        drop(f);
        assert_eq!(kept.borrow().0, "odfs: jq: pulling r/x:1 (not on this machine)\nodfs: jq: pulled r/x:1 2/2 layers in 2.5s\n");
        // An update fetches what is here already, and says why.
        let kept_again = alloc::rc::Rc::new(core::cell::RefCell::new((String::new(), 0.0)));
        let mut f = Fetching::new("update", false, Kept(kept_again.clone())).again();
        f.show(&ImageProgress { building: true, ..p((0, 0), (0, 0)) });
        assert!(kept_again.borrow().0.starts_with("odfs: update: building r/x:1 (from its recipe)"), "{}", kept_again.borrow().0);
    }

    #[test]
    fn a_terminal_gets_one_line_redrawn_within_its_width_and_cleared() {
        let kept = alloc::rc::Rc::new(core::cell::RefCell::new((String::new(), 0.0)));
        let mut f = Fetching::new("jq", true, Kept(kept.clone()));
        f.show(&p((1, 2), (0, 0)));
        drop(f);
        let out = kept.borrow().0.clone();
        assert_eq!(out, format!("\r\x1b[K{}\r\x1b[K", "odfs: jq: [##########..........] pullin"));
    }

    #[test]
    fn a_build_shows_its_step() {
        let b = ImageProgress { building: true, ..p((1, 5), (0, 0)) };
        assert_eq!(summary(&b, 1.0), "step 2/5");
        let starting = ImageProgress { building: true, step: "building from images/x".into(), ..p((0, 0), (0, 0)) };
        assert_eq!(summary(&starting, 0.0), "building from images/x");
    }
}
