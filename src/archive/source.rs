//! Where a suite comes from: its archive's URL, whether its signatures are
//! checked, and the line of apt's sources that says so. A leaf: the
//! catalog checks it at load, the fetch and the package builds use it.

/// Where a suite's index comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub suite: String,
    /// The archive's URL, as in a sources.list line.
    pub mirror: String,
    /// The Debian image apt runs in (any recent one: its keyring must hold
    /// the suite's signing keys; bookworm's holds trixie's).
    pub image: String,
    /// Take the archive without checking its signature (`[trusted=yes]`):
    /// for a local repository that has no signing key.
    pub trusted: bool,
}

impl Source {
    pub fn new(suite: &str) -> Source {
        Source { suite: suite.into(), mirror: "http://deb.debian.org/debian".into(), image: "debian:bookworm-slim".into(), trusted: false }
    }

    /// Its line of apt's sources (checked by [`Source::validate`] first).
    pub fn line(&self) -> String {
        let trusted = if self.trusted { "[trusted=yes] " } else { "" };
        format!("deb {trusted}{} {} main", self.mirror, self.suite)
    }

    /// Suite and mirror go into a sources line: no spaces, nothing a shell
    /// or apt would read otherwise.
    pub fn validate(&self) -> Result<(), String> {
        let suite_ok = !self.suite.is_empty() && self.suite.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !suite_ok || self.suite.starts_with(['-', '.']) {
            return Err(format!("suite {:?} is not a suite name (letters, digits, - . _)", self.suite));
        }
        let rest = self.mirror.strip_prefix("http://").or_else(|| self.mirror.strip_prefix("https://"));
        let mirror_ok = rest.is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || "-._~:/%+@[]".contains(c)));
        if !mirror_ok {
            return Err(format!("mirror {:?} is not an http:// or https:// URL", self.mirror));
        }
        Ok(())
    }
}

