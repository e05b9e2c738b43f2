//! Fetching a suite's index: apt, in a container of a Debian image, fetches
//! and checks (against the archive's signed Release file) the suite's
//! Packages and Contents files; a shell script cuts them down to what the
//! index reads and leaves them in a directory that the engine's archive API
//! brings back ([`crate::backend::Job`]); the index is built from them here.
//!
//! Apt fetches Contents files when told to, as Debian's apt-file package
//! tells it (an `Acquire::IndexTargets` entry whose MetaKey is
//! `$(COMPONENT)/Contents-$(ARCHITECTURE)`): one for the image's
//! architecture and one for `all`. Apt keeps the Contents files
//! compressed (lz4 in Debian images) and Packages plain; `apt-helper
//! cat-file` reads any of them.
//!
//! Bookworm's main on amd64, measured (2 cores, Debian's CDN): `apt-get
//! update` of the suite alone takes 4.5 to 9.5 s for about 60 MB of
//! downloads; the whole fetch, container and index build included, 6.5 s.
//! Decompressed, Contents-all is 520 MB in 5.66 M lines, Contents-amd64
//! 148 MB in 1.66 M lines, Packages 50 MB in 1.17 M lines (63,436
//! packages). Only 46,593 Contents lines (3.5 MB) are under a command
//! directory, and the Packages fields read are 20.6 MB, so the script
//! filters in the container and the engine sends back 24 MB, not 720.

use std::collections::HashMap;
use std::time::Duration;

use super::alternatives::Alternative;
use super::contents::Commands;
use super::index::{BuildStats, Index, Meta};
use super::packages::{Packages, FIELDS};
use crate::backend::{ContainerBackend, Job, JobOutput};

pub use super::source::Source;

/// The directory the script leaves its files in.
const OUT: &str = "/odfs-archive";

/// Bytes the script may leave: bookworm leaves about 24 MB.
const MAX_BYTES: u64 = 256 << 20;

/// How long the whole run may take (a slow mirror, a big suite).
const TIME_LIMIT: Duration = Duration::from_secs(900);

/// The script run in the container. Suite, mirror and the output
/// directory come in its environment, never in its text.
pub fn script() -> String {
    let fields = FIELDS.join("|");
    format!(
        r#"set -eu
out=$ODFS_OUT
mkdir -p "$out"
# Only the suite asked for: the image's own sources would mix in its suite,
# its updates and its security archive.
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
echo "$ODFS_SOURCE" > /etc/apt/sources.list.d/odfs-archive.list
cat > /etc/apt/apt.conf.d/50odfs-archive <<'CONF'
// Contents files for each architecture apt knows (the native one and all),
// checked through the Release file like the Packages files.
Acquire::IndexTargets::deb::Contents-deb {{
    MetaKey "$(COMPONENT)/Contents-$(ARCHITECTURE)";
    ShortDescription "Contents-$(ARCHITECTURE)";
    Description "$(RELEASE)/$(COMPONENT) $(ARCHITECTURE) Contents (deb)";
    KeepCompressed "true";
}};
// Descriptions are not read past their first line, which Packages has.
Acquire::Languages "none";
CONF
start=$(date +%s%N)
apt-get update
end=$(date +%s%N)
echo "update_ms $(( (end - start) / 1000000 ))" > "$out/stats"
dpkg --print-architecture > "$out/architecture"
# Each index file of a kind, decompressed, one after the other; a file apt
# cannot read is named in $out/failed (a pipe would hide its status).
cat_all() {{
    apt-get indextargets --format '$(FILENAME)' "Created-By: $1" | while read -r f; do
        [ -e "$f" ] || continue
        echo "file $1 $(stat -c %s "$f") $f" >> "$out/stats"
        /usr/lib/apt/apt-helper cat-file "$f" || echo "$f" >> "$out/failed"
    done
}}
cat_all Contents-deb | grep -E '^(\./|/)?(usr/)?(s?bin|games)/' > "$out/Contents" || true
cat_all Packages | grep -E '^({fields}):|^[[:space:]]*$' > "$out/Packages" || true
if [ -e "$out/failed" ]; then echo "cannot read $(cat "$out/failed")" >&2; exit 1; fi
grep -q '^file Contents-deb' "$out/stats" || {{ echo "the archive has no Contents files for $ODFS_SUITE" >&2; exit 1; }}
grep -q '^file Packages' "$out/stats" || {{ echo "the archive has no Packages files for $ODFS_SUITE" >&2; exit 1; }}
release=$(ls /var/lib/apt/lists/*_InRelease /var/lib/apt/lists/*_Release 2>/dev/null | head -n 1)
/usr/lib/apt/apt-helper cat-file "$release" | grep -E '^(Origin|Label|Suite|Codename|Version|Date):' > "$out/Release" || true
"#
    )
}

/// The job that fetches `source`'s files, its container labelled `labels`.
pub fn job(source: &Source, labels: HashMap<String, String>) -> Job {
    Job {
        image: source.image.clone(),
        script: script(),
        env: vec![format!("ODFS_SUITE={}", source.suite), format!("ODFS_SOURCE={}", source.line()), format!("ODFS_OUT={OUT}")],
        out_dir: OUT.into(),
        labels,
        time_limit: TIME_LIMIT,
        max_bytes: MAX_BYTES,
    }
}

/// What a fetch measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// How long `apt-get update` took in the container.
    pub update_ms: u64,
    /// The index files apt kept: (kind, bytes as kept, lz4 or gz or plain, file).
    pub files: Vec<(String, u64, String)>,
    /// Bytes and lines of the cut-down Contents and Packages brought back.
    pub contents_bytes: u64,
    pub contents_lines: u64,
    pub packages_bytes: u64,
    pub build: BuildStats,
}

/// A fetched index and its figures.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub index: Index,
    pub stats: FetchStats,
}

/// Fetch `source`'s index through `backend`; the image must be on the
/// engine or pullable.
pub async fn fetch<B: ContainerBackend>(backend: &B, source: &Source, alternatives: &[Alternative], labels: HashMap<String, String>) -> Result<Fetched, String> {
    source.validate()?;
    let (progress, _) = tokio::sync::watch::channel(None);
    backend.ensure_image(&source.image, &progress).await.map_err(|e| format!("fetch {}: {e}", source.suite))?;
    let output = backend.run_job(&job(source, labels)).await.map_err(|e| format!("fetch {}: {e}", source.suite))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Parsing 50 k lines is CPU work: off the runtime's threads.
    let (owned, alternatives) = (source.clone(), alternatives.to_vec());
    tokio::task::spawn_blocking(move || from_output(&owned, &output, &alternatives, now))
        .await
        .map_err(|e| format!("fetch {}: the index build failed: {e}", source.suite))?
}

/// The index of what the script left (pure: the unit tests feed it).
pub fn from_output(source: &Source, output: &JobOutput, alternatives: &[Alternative], now_s: u64) -> Result<Fetched, String> {
    let file = |name: &str| output.files.iter().find(|(n, _)| n == name).map(|(_, c)| c.as_slice());
    let need = |name: &str| file(name).ok_or_else(|| format!("fetch {}: the script left no {name} file", source.suite));
    let contents = need("Contents")?;
    let packages = need("Packages")?;
    let mut stats = FetchStats {
        contents_bytes: contents.len() as u64,
        contents_lines: contents.iter().filter(|b| **b == b'\n').count() as u64,
        packages_bytes: packages.len() as u64,
        ..Default::default()
    };
    for line in String::from_utf8_lossy(need("stats")?).lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("update_ms"), Some(ms), _, _) => stats.update_ms = ms.parse().unwrap_or(0),
            (Some("file"), Some(kind), Some(bytes), Some(path)) => stats.files.push((kind.into(), bytes.parse().unwrap_or(0), path.into())),
            _ => {}
        }
    }
    let release = String::from_utf8_lossy(file("Release").unwrap_or_default()).into_owned();
    let field = |name: &str| release.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map_or(String::new(), |v| v.trim().to_string());
    let meta = Meta {
        suite: source.suite.clone(),
        release_suite: field("Suite"),
        codename: field("Codename"),
        release_date: field("Date"),
        architecture: String::from_utf8_lossy(file("architecture").unwrap_or_default()).trim().to_string(),
        mirror: source.mirror.clone(),
        fetched_s: now_s,
    };
    let io = |e: std::io::Error| format!("fetch {}: {e}", source.suite);
    let mut commands = Commands::default();
    commands.read(contents).map_err(io)?;
    let mut read = Packages::default();
    read.read(packages).map_err(io)?;
    let (index, build) = Index::build(meta, commands, read.finish(), alternatives);
    if index.is_empty() {
        return Err(format!("fetch {}: the archive's files name no command that its packages provide", source.suite));
    }
    stats.build = build;
    Ok(Fetched { index, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(files: &[(&str, &str)]) -> JobOutput {
        JobOutput { files: files.iter().map(|(n, c)| (n.to_string(), c.as_bytes().to_vec())).collect(), log: String::new() }
    }

    const STATS: &str = "update_ms 8123\n\
        file Contents-deb 19805039 /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_Contents-amd64.lz4\n\
        file Contents-deb 57308944 /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_Contents-all.lz4\n\
        file Packages 8790000 /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4\n";

    #[test]
    fn the_script_s_files_become_an_index_with_its_figures() {
        let out = output(&[
            ("stats", STATS),
            ("architecture", "amd64\n"),
            ("Release", "Origin: Debian\nSuite: oldstable\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n"),
            ("Contents", "usr/bin/htop   utils/htop\nbin/nc.openbsd  net/netcat-openbsd\n"),
            ("Packages", "Package: htop\nVersion: 3.2.2-2\nPriority: optional\n\nPackage: netcat-openbsd\nVersion: 1.219-1\nPriority: important\n"),
        ]);
        let alternatives = super::super::alternatives::parse("/bin/nc nc.openbsd nc.traditional\n");
        let f = from_output(&Source::new("bookworm"), &out, &alternatives, 1_700_000_000).unwrap();
        let m = &f.index.meta;
        assert_eq!(
            (m.suite.as_str(), m.release_suite.as_str(), m.codename.as_str(), m.release_date.as_str(), m.architecture.as_str()),
            ("bookworm", "oldstable", "bookworm", "Sat, 11 Jul 2026 10:16:37 UTC", "amd64")
        );
        assert_eq!((m.fetched_s, m.mirror.as_str()), (1_700_000_000, "http://deb.debian.org/debian"));
        assert_eq!(f.index.names().collect::<Vec<_>>(), ["htop", "nc", "nc.openbsd"]);
        assert_eq!((f.stats.update_ms, f.stats.files.len(), f.stats.contents_lines), (8123, 3, 2));
        assert_eq!(f.stats.files[1].1, 57308944);
        assert_eq!(f.stats.build.alternatives, 1);
    }

    #[test]
    fn missing_or_empty_files_are_errors_that_say_which() {
        let e = from_output(&Source::new("trixie"), &output(&[("stats", STATS), ("Packages", "")]), &[], 0).unwrap_err();
        assert_eq!(e, "fetch trixie: the script left no Contents file");
        let e = from_output(&Source::new("trixie"), &output(&[("stats", STATS), ("Packages", ""), ("Contents", "")]), &[], 0).unwrap_err();
        assert!(e.contains("name no command"), "{e}");
    }

    #[test]
    fn suite_and_mirror_are_checked_before_they_reach_a_sources_line() {
        assert!(Source::new("bookworm").validate().is_ok());
        assert!(Source { mirror: "https://mirror.example/debian/".into(), ..Source::new("trixie-backports") }.validate().is_ok());
        for bad in ["", "-o", "book worm", "x;y", "a\nb"] {
            assert!(Source::new(bad).validate().is_err(), "{bad:?}");
        }
        for bad in ["ftp://x", "http://", "http://a b", "http://x/$(id)", "file:///srv"] {
            assert!(Source { mirror: bad.into(), ..Source::new("bookworm") }.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_job_passes_values_in_the_environment_and_cuts_packages_to_the_fields_read() {
        let j = job(&Source::new("bookworm"), HashMap::from([("io.odfs.test".to_string(), "1".to_string())]));
        assert!(j.env.contains(&"ODFS_SUITE=bookworm".to_string()) && j.env.contains(&"ODFS_OUT=/odfs-archive".to_string()));
        assert!(!j.script.contains("bookworm"), "the suite is not spliced into the script");
        assert!(j.script.contains("^(Package|Version|Priority|Installed-Size|Size|Section|Architecture|Source|Description|Depends|Pre-Depends|Recommends):"));
        assert!(j.script.contains(r#"MetaKey "$(COMPONENT)/Contents-$(ARCHITECTURE)";"#));
        assert_eq!(j.out_dir, OUT);
    }

    #[tokio::test]
    async fn a_fetch_runs_one_job_on_the_backend_and_reports_its_failure() {
        let fake = crate::backend::fake::Fake::default();
        let e = fetch(&fake, &Source::new("bookworm"), &[], HashMap::new()).await.unwrap_err();
        assert_eq!(e, "fetch bookworm: container engine error: the fake has no job output");
        *fake.job_output.lock().unwrap() = Some(output(&[
            ("stats", STATS),
            ("Contents", "usr/games/sl  games/sl\n"),
            ("Packages", "Package: sl\nVersion: 5.02-1\n"),
        ]));
        let f = fetch(&fake, &Source::new("bookworm"), &[], HashMap::new()).await.unwrap();
        assert_eq!(f.index.resolve("sl").unwrap().path, "/usr/games/sl");
        assert_eq!(fake.jobs.lock().unwrap().len(), 2);
        let e = fetch(&fake, &Source::new("bad suite"), &[], HashMap::new()).await.unwrap_err();
        assert!(e.contains("not a suite name"), "{e}");
    }
}
