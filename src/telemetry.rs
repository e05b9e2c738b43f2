//! Logging: `tracing` to stderr; `ODFS_LOG` sets the filter, e.g.
//! `ODFS_LOG=odfs=debug`. Under systemd, whose journal reads stderr, each
//! line carries its syslog priority (`<4>` for a warning, sd-daemon(3)), so
//! `journalctl -p warning` finds the warnings.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ODFS_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // The journal stamps each line itself, and knows its priority from the
    // prefix; a log file or a terminal gets the time. Colours only for a
    // person at a terminal: a file or the journal gets plain `key=value`
    // text that grep finds.
    let _ = if stderr_is_journal() {
        builder.with_ansi(false).event_format(Prioritised(format::Format::default().without_time())).try_init()
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// Whether stderr is the journal's stream: systemd names that stream in
/// `JOURNAL_STREAM` (`DEVICE:INODE`); a redirected stderr is another file.
fn stderr_is_journal() -> bool {
    let Ok(named) = std::env::var("JOURNAL_STREAM") else { return false };
    let Ok(st) = nix::sys::stat::fstat(libc::STDERR_FILENO) else { return false };
    named == format!("{}:{}", st.st_dev, st.st_ino)
}

/// The syslog priority journald reads from a line's `<N>` prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A line format that puts the event's priority in front of another's, and
/// keeps each event on one line: the journal takes every line of its stream
/// as an entry of its own, and a continuation would lose the priority.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writeln!(writer, "<{}>{}", priority(event.metadata().level()), one_line(&line))
    }
}

/// The text with its inner line breaks made "; ", its last one dropped.
fn one_line(text: &str) -> String {
    text.trim_end_matches('\n').replace('\n', "; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_syslogs() {
        assert_eq!([&Level::ERROR, &Level::WARN, &Level::INFO, &Level::DEBUG].map(priority), [3, 4, 6, 7]);
    }

    #[test]
    fn an_event_stays_on_one_line() {
        assert_eq!(one_line("catalog: x.toml:1: invalid table header\nexpected `.`\n"), "catalog: x.toml:1: invalid table header; expected `.`");
        assert_eq!(one_line("plain\n"), "plain");
    }
}
