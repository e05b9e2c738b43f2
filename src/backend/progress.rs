//! Turns the engine's pull and build event streams into one
//! [`ImageProgress`]: layers, bytes and the current step.

use std::collections::BTreeMap;

use crate::protocol::ImageProgress;

/// Where a fetch reports its progress: the pool's per-profile channel, so
/// every caller waiting on one image sees the same fetch.
pub type ProgressTx = tokio::sync::watch::Sender<Option<ImageProgress>>;

#[derive(Debug, Default, Clone, Copy)]
struct Layer {
    current: u64,
    total: u64,
    done: bool,
}

/// Sums the per-layer events of a pull (`Pulling fs layer`, `Downloading`
/// with byte counts, `Pull complete`, `Already exists`…).
#[derive(Debug)]
pub struct PullTracker {
    layers: BTreeMap<String, Layer>,
    progress: ImageProgress,
}

impl PullTracker {
    pub fn new(reference: &str) -> PullTracker {
        PullTracker { layers: BTreeMap::new(), progress: ImageProgress { reference: reference.into(), ..Default::default() } }
    }

    /// One event of the pull stream; returns the progress so far.
    pub fn observe(&mut self, id: Option<&str>, status: &str, current: Option<i64>, total: Option<i64>) -> &ImageProgress {
        let layer_event = matches!(
            status,
            "Pulling fs layer" | "Waiting" | "Downloading" | "Verifying Checksum" | "Download complete" | "Extracting" | "Pull complete" | "Already exists"
        ) || status.starts_with("Retrying");
        match id {
            Some(id) if layer_event => {
                let layer = self.layers.entry(id.to_string()).or_default();
                match status {
                    "Downloading" => {
                        layer.current = current.unwrap_or(0).max(0) as u64;
                        layer.total = total.map_or(layer.total, |t| t.max(0) as u64);
                    }
                    "Download complete" | "Extracting" | "Verifying Checksum" => layer.current = layer.total,
                    "Pull complete" => {
                        layer.current = layer.total;
                        layer.done = true;
                    }
                    "Already exists" => layer.done = true,
                    _ => {}
                }
            }
            _ => self.progress.step = status.to_string(),
        }
        let p = &mut self.progress;
        p.layers_total = self.layers.len() as u32;
        p.layers_done = self.layers.values().filter(|l| l.done).count() as u32;
        p.bytes_done = self.layers.values().map(|l| l.current).sum();
        p.bytes_total = self.layers.values().map(|l| l.total).sum();
        p
    }
}

/// Follows a build's output: `Step N/M : …` lines become the steps done.
#[derive(Debug)]
pub struct BuildTracker {
    progress: ImageProgress,
    /// The last line a step's program wrote, and the last of apt's errors.
    last: Option<String>,
    apt_error: Option<String>,
}

impl BuildTracker {
    pub fn new(reference: &str) -> BuildTracker {
        BuildTracker { progress: ImageProgress { reference: reference.into(), building: true, ..Default::default() }, last: None, apt_error: None }
    }

    pub fn progress(&self) -> &ImageProgress {
        &self.progress
    }

    /// Why a failed build failed, in its program's words: apt's error
    /// (`E: Unable to locate package x`), else the last line it wrote.
    pub fn cause(&self) -> Option<&str> {
        self.apt_error.as_deref().or(self.last.as_deref())
    }

    /// One line of build output; `None` when it says nothing new.
    pub fn observe(&mut self, line: &str) -> Option<&ImageProgress> {
        // The engine colours what a step writes on stderr (`ESC[91m`).
        let plain = strip_colours(line);
        let line = plain.trim();
        let builder_own = ["Step ", "---> ", "Removing intermediate", "Successfully ", " ---> "].iter().any(|p| line.starts_with(p));
        if !line.is_empty() && !builder_own {
            let kept: String = line.chars().take(300).collect();
            // apt's first error is the cause; the later ones are dpkg's
            // and apt's own aftermath ("Sub-process ... returned an error").
            if line.starts_with("E: ") && self.apt_error.is_none() {
                self.apt_error = Some(kept.clone());
            }
            self.last = Some(kept);
        }
        let (counts, _) = line.strip_prefix("Step ")?.split_once(" :")?;
        let (n, m) = counts.split_once('/')?;
        let (n, m): (u32, u32) = (n.parse().ok()?, m.parse().ok()?);
        // Step N has begun: N - 1 are done.
        self.progress.layers_done = n.saturating_sub(1);
        self.progress.layers_total = m;
        self.progress.step = line.to_string();
        Some(&self.progress)
    }
}

/// `line` without terminal sequences (CSI: `ESC [` … a final byte in
/// `@`..`~`; OSC: `ESC ]` … BEL or `ESC \\`) and other control characters.
fn strip_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            '\x1b' if chars.peek() == Some(&']') => {
                while let Some(d) = chars.next() {
                    if d == '\x07' || (d == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// The images a Dockerfile builds `FROM` (its base images), skipping
/// `scratch` and the names of its own earlier stages.
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages = Vec::new();
    let mut bases = Vec::new();
    for line in dockerfile.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !words.first().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let rest: Vec<&str> = words[1..].iter().copied().filter(|w| !w.starts_with("--")).collect();
        let Some(image) = rest.first() else { continue };
        if *image != "scratch" && !stages.iter().any(|s: &String| s.eq_ignore_ascii_case(image)) {
            bases.push(image.to_string());
        }
        if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("AS") {
            stages.push(rest[2].to_string());
        }
    }
    bases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_sums_layers_and_bytes() {
        let mut t = PullTracker::new("r:5000/x:1");
        t.observe(Some("1"), "Pulling from x", None, None);
        t.observe(Some("a"), "Pulling fs layer", None, None);
        t.observe(Some("b"), "Already exists", None, None);
        let p = t.observe(Some("a"), "Downloading", Some(100), Some(400)).clone();
        assert_eq!((p.layers_done, p.layers_total, p.bytes_done, p.bytes_total), (1, 2, 100, 400));
        assert_eq!(p.step, "Pulling from x");
        t.observe(Some("a"), "Download complete", None, None);
        let p = t.observe(Some("a"), "Pull complete", None, None).clone();
        assert_eq!((p.layers_done, p.layers_total, p.bytes_done, p.bytes_total), (2, 2, 400, 400));
        let p = t.observe(None, "Status: Downloaded newer image for r:5000/x:1", None, None);
        assert!(p.step.starts_with("Status: Downloaded"));
        assert!(!p.building && !p.done);
    }

    #[test]
    fn a_build_counts_its_steps() {
        let mut t = BuildTracker::new("odfs/x:latest");
        assert!(t.observe(" ---> Running in 1234\n").is_none());
        assert!(t.observe("Step x/y : nonsense").is_none());
        let p = t.observe("Step 2/5 : RUN apt-get install -y jq\n").unwrap();
        assert_eq!((p.layers_done, p.layers_total), (1, 5));
        assert_eq!(p.step, "Step 2/5 : RUN apt-get install -y jq");
        assert!(p.building);
    }

    #[test]
    fn a_failed_build_s_cause_is_apt_s_first_error_without_colours() {
        let mut t = BuildTracker::new("odfs-archive/bookworm/x:1");
        for line in ["Step 2/2 : RUN apt-get install x", "Reading package lists...", "\x1b[91mE: Unable to locate package x\n", "\x1b[0m", "\x1b[91mE: Sub-process returned an error code (1)\x1b[0m"] {
            t.observe(line);
        }
        assert_eq!(t.cause(), Some("E: Unable to locate package x"));
        let mut plain = BuildTracker::new("odfs/x:1");
        plain.observe("make: *** [all] Error 2");
        plain.observe("\x1b[0m");
        assert_eq!(plain.cause(), Some("make: *** [all] Error 2"));
        assert_eq!(strip_colours("\x1b]0;title\x07done \x1b[1;31mred\x1b[0m"), "done red");
    }

    #[test]
    fn base_images_skip_scratch_stages_and_flags() {
        let df = "# comment\nFROM --platform=linux/amd64 debian:bookworm-slim AS build\nRUN make\n\
                  from build as test\nFROM scratch\nFROM alpine:3\nCOPY --from=build /x /x\n";
        assert_eq!(base_images(df), ["debian:bookworm-slim", "alpine:3"]);
    }
}
