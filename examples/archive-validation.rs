//! The archive index's provider rule against data it was not made from,
//! Debian's own tools (apt-file, command-not-found) and real installs: a
//! measurement of some minutes of downloads, not a check, so not a test.
//! `cargo run --release --example archive-validation`; its figures are in
//! docs/archive.md.

use std::collections::HashMap;

use odfs::archive::alternatives;

#[path = "../tests/common/archive.rs"]
mod archive;
use archive::{fetch_bookworm, in_debian};

/// A small fixed generator: the same sample on every run.
fn sample<'a>(names: &[&'a str], n: usize, mut seed: u64) -> Vec<&'a str> {
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < n.min(names.len()) {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        picked.insert(names[(seed >> 33) as usize % names.len()]);
    }
    picked.into_iter().collect()
}

/// The provider rule against data it was not made from: for a fixed random
/// sample of commands, the packages `apt-file` finds for the command's
/// paths and the first one Debian's `command-not-found` suggests; and, for
/// a smaller sample, whether installing the chosen package puts the file
/// where the index says (dpkg owns it). Prints the agreement.
#[tokio::main]
async fn main() {
    let f = fetch_bookworm().await;
    let index = &f.index;
    let names: Vec<&str> = index.names().collect();
    let picked = sample(&names, 300, 20240611);
    // Few commands have several providers (about 1 in 85), so a random
    // sample says little of the rule itself: a sample of those is added.
    let several: Vec<&str> = names.iter().copied().filter(|n| index.resolve(n).is_some_and(|r| !r.others.is_empty() && r.via.is_none())).collect();
    let picked_several = sample(&several, 100, 20240612);
    let mut asked: Vec<&str> = picked.iter().chain(&picked_several).copied().collect();
    asked.sort_unstable();
    asked.dedup();
    let patterns: Vec<String> = asked.iter().map(|n| format!("^/(usr/)?(s?bin|games)/{}$", regex_quote(n))).collect();
    let script = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/dev/null; apt-get install -y -qq --no-install-recommends apt-file command-not-found >/dev/null; \
         apt-get update -qq >/dev/null 2>&1; printf '%s\\n' {} > /tmp/p; apt-file search -x -f /tmp/p | sed 's/^/AF /'; \
         for n in {}; do printf 'CNF %s ' \"$n\"; /usr/lib/command-not-found --ignore-installed -- \"$n\" 2>&1 | grep -o 'apt install [^ ]*' | tr '\\n' ' '; echo; done",
        patterns.iter().map(|p| shell_quote(p)).collect::<Vec<_>>().join(" "),
        asked.iter().map(|n| shell_quote(n)).collect::<Vec<_>>().join(" ")
    );
    let out = in_debian(&script);
    let mut apt_file: HashMap<&str, Vec<String>> = HashMap::new();
    let mut cnf: HashMap<String, Vec<String>> = HashMap::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("AF ") {
            let Some((pkg, path)) = rest.split_once(": ") else { continue };
            let name = path.rsplit('/').next().unwrap_or("");
            if let Some(n) = asked.iter().find(|n| **n == name) {
                apt_file.entry(n).or_default().push(pkg.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("CNF ") {
            let (name, suggested) = rest.split_once(' ').unwrap_or((rest, ""));
            cnf.insert(name.to_string(), suggested.split_whitespace().filter(|w| *w != "apt" && *w != "install").map(String::from).collect());
        }
    }
    let report = |label: &str, sample: &[&str]| {
        let (mut in_apt_file, mut several, mut first_agrees, mut cnf_several, mut alternatives) = (0, 0, 0, 0, 0);
        for name in sample {
            let r = index.resolve(name).unwrap();
            alternatives += usize::from(r.via.is_some());
            let found = apt_file.get(name).cloned().unwrap_or_default();
            if found.contains(&r.package.name) {
                in_apt_file += 1;
            } else {
                eprintln!("{label}: apt-file disagrees: {name} -> {} via {:?} (apt-file: {found:?})", r.package.name, r.via);
            }
            if !r.others.is_empty() {
                several += 1;
                let suggested = cnf.get(*name).cloned().unwrap_or_default();
                cnf_several += usize::from(!suggested.is_empty());
                first_agrees += usize::from(suggested.first() == Some(&r.package.name));
                eprintln!("{label}: {name} -> {} (others {:?}; command-not-found: {suggested:?})", r.package.name, r.others.iter().map(|p| &p.name).collect::<Vec<_>>());
            }
        }
        eprintln!(
            "{label}: {} commands; chosen package among apt-file's for {in_apt_file}; several providers {several}, command-not-found suggests for {cnf_several}, its first is ours for {first_agrees}; alternatives {alternatives}",
            sample.len()
        );
    };
    report("random", &picked);
    report("several", &picked_several);

    // The alternatives against their own priorities (what update-alternatives
    // would pick with every candidate installed).
    let (mut resolved, mut same) = (0, 0);
    for alt in alternatives::table() {
        let Some(r) = index.resolve(&alt.name) else { continue };
        let Some(via) = r.via else { continue };
        resolved += 1;
        let best = alt.targets.iter().find(|t| index.get(t).is_some());
        if best.map(String::as_str) == Some(via) {
            same += 1;
        } else {
            eprintln!("alternative {}: ours {} ({via}), update-alternatives' highest {best:?}", alt.name, r.package.name);
        }
    }
    eprintln!("alternatives: {resolved} resolved, {same} through update-alternatives' highest-priority target");

    // Install check: the chosen package owns the file where the index says.
    let small: Vec<&str> = sample(&names, 40, 7).into_iter().filter(|n| index.resolve(n).unwrap().package.installed_size < 100_000).take(25).collect();
    let mut script = String::from("export DEBIAN_FRONTEND=noninteractive; apt-get update -qq >/dev/null; ");
    for n in &small {
        let r = index.resolve(n).unwrap();
        script.push_str(&format!(
            "if apt-get install -y -qq --no-install-recommends {pkg} >/dev/null 2>&1; then o=$(dpkg -S {path} 2>/dev/null | cut -d: -f1); \
             if [ -e {path} ]; then echo \"OK {n} {pkg} $o\"; else echo \"MISSING {n} {pkg}\"; fi; else echo \"NOINSTALL {n} {pkg}\"; fi; ",
            pkg = r.package.name,
            path = if r.path.starts_with('/') { r.path.clone() } else { format!("/usr/bin/{}", r.path) },
        ));
    }
    let out = in_debian(&script);
    let ok = out.lines().filter(|l| l.starts_with("OK ")).count();
    eprintln!("{out}install check: {ok}/{} chosen packages put the command where the index says", small.len());
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn regex_quote(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_string() } else { format!("\\{c}") }).collect()
}

