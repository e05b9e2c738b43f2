//! What the archive index's test and its validation share: bookworm's
//! index fetched for real, with its figures printed, and a script run in a
//! Debian container with the host's network.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use odfs::archive::alternatives;
use odfs::archive::fetch::{self, Fetched, Source};
use odfs::backend::docker::Docker;

pub const IMAGE: &str = "debian:bookworm-slim";

pub fn labels() -> HashMap<String, String> {
    HashMap::from([("io.odfs.test".to_string(), "1".to_string())])
}

pub async fn fetch_bookworm() -> Fetched {
    let docker = Docker::with_engine(odfs::config::engine(None, None).expect("an engine"));
    let started = Instant::now();
    let f = fetch::fetch(&docker, &Source::new("bookworm"), &alternatives::table(), labels()).await.unwrap();
    let s = &f.stats;
    eprintln!("fetch: {:.1}s in all, apt-get update {:.1}s", started.elapsed().as_secs_f64(), s.update_ms as f64 / 1000.0);
    for (kind, bytes, file) in &s.files {
        eprintln!("  {kind}: {bytes} bytes as apt keeps it, {file}");
    }
    eprintln!("  brought back: Contents {} bytes ({} lines), Packages {} bytes", s.contents_bytes, s.contents_lines, s.packages_bytes);
    eprintln!("  {:?}", s.build);
    eprintln!("  release: {:?}", f.index.meta);
    f
}

/// Run `script` in a container of the Debian image with the host's network.
pub fn in_debian(script: &str) -> String {
    let o = Command::new("docker")
        .args(["run", "--rm", "--label", "io.odfs.test=1", "--network", "host", IMAGE, "sh", "-c", script])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{script}\n{out}{}", String::from_utf8_lossy(&o.stderr));
    out
}

