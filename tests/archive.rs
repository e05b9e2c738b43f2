//! The command index against the real archive: apt in a container fetches
//! bookworm's files from Debian's mirror through the engine, and the index
//! answers for well-known commands, loads fast, and the packages it names
//! do provide them once installed. The provider rule's validation against
//! Debian's own tools is `cargo run --release --example archive-validation`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use odfs::archive::Index;

/// Counts the heap in use, to measure what a loaded index holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a
// counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr came from alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[path = "common/archive.rs"]
mod archive;
use archive::{fetch_bookworm, in_debian};

#[tokio::test(flavor = "multi_thread")]
async fn bookworm_s_commands_resolve_to_the_packages_that_provide_them() {
    let f = fetch_bookworm().await;
    let index = &f.index;
    assert_eq!((index.meta.codename.as_str(), index.meta.architecture.is_empty()), ("bookworm", false));
    assert!(!index.meta.release_date.is_empty());
    assert!((30_000..80_000).contains(&index.len()), "{} commands", index.len());

    let expected: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("htop", &["htop"][..]),
        ("tree", &["tree"]),
        ("figlet", &["figlet", "toilet"]),
        ("ncdu", &["ncdu"]),
        ("pv", &["pv"]),
        ("units", &["units"]),
        ("cowsay", &["cowsay"]),
        ("sl", &["sl"]),
        ("nc", &["netcat-openbsd", "netcat-traditional"]),
        ("traceroute", &["traceroute", "inetutils-traceroute"]),
        ("vi", &["vim-tiny", "vim", "nvi", "neovim", "vim-nox"]),
        ("jq", &["jq"]),
        ("awk", &["mawk", "gawk"]),
        ("ping", &["iputils-ping"]),
        ("python3", &["python3-minimal"]),
    ]);
    let mut chosen = BTreeMap::new();
    for (name, sensible) in &expected {
        let r = index.resolve(name).unwrap_or_else(|| panic!("{name} is not in the index"));
        eprintln!("{name} -> {} {} ({}, via {:?}), also {:?}", r.package.name, r.package.version, r.path, r.via, r.others.iter().map(|p| &p.name).collect::<Vec<_>>());
        assert!(sensible.contains(&r.package.name.as_str()), "{name} -> {}", r.package.name);
        chosen.insert(*name, (r.package.name.clone(), r.path.clone()));
    }
    assert_eq!(chosen["cowsay"].1, "/usr/games/cowsay");
    let nc = index.resolve("nc").unwrap();
    let via = if nc.package.name == "netcat-openbsd" { "nc.openbsd" } else { "nc.traditional" };
    assert_eq!(nc.via, Some(via));

    // Stored and loaded as the daemon will at start.
    let dir = tempfile::tempdir().unwrap();
    let path = index.save(dir.path()).unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let loaded = Index::load(&path).unwrap();
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let held = LIVE.load(Ordering::Relaxed) - before;
    eprintln!("stored: {bytes} bytes; load {load_ms:.1} ms; {:.1} MiB of heap for {} commands, {} packages", held as f64 / 1048576.0, loaded.len(), loaded.packages().len());
    assert_eq!(&loaded, index);
    let started = Instant::now();
    let names: Vec<&str> = loaded.names().collect();
    for name in &names {
        assert!(loaded.get(name).is_some());
    }
    eprintln!("{} lookups in {:.1} ms", names.len(), started.elapsed().as_secs_f64() * 1000.0);
    assert!(load_ms < 2000.0, "loading took {load_ms} ms");

    // Installing the chosen packages makes the names, alternatives included
    // (their postinst runs update-alternatives).
    let packages: Vec<&str> = ["figlet", "nc", "traceroute", "vi", "cowsay"].iter().map(|n| chosen[n].0.as_str()).collect();
    let checks: Vec<String> = ["figlet", "nc", "traceroute", "vi", "cowsay"].iter().map(|n| format!("test -x {} && echo found {n}", chosen[n].1)).collect();
    let out = in_debian(&format!(
        "apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {} >/dev/null && {}",
        packages.join(" "),
        checks.join(" && ")
    ));
    assert_eq!(out.lines().filter(|l| l.starts_with("found ")).count(), 5, "{out}");
}

