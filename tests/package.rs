//! The Debian package of scripts/package, installed by apt in a clean
//! container of the offline `debian:bookworm-slim` (scripts/build-base),
//! its dependencies from the Debian mirror (host network): the binaries on
//! PATH, the man page, completions, unit and snippets where Debian looks for
//! them, nothing enabled; `odfs doctor` saying in one line each what the
//! container lacks; the daemon started as the packaged unit starts it,
//! `odfs ls` listing the shipped catalog; then a purge that leaves nothing.
//!
//! The package is made of the binaries already built (`scripts/package
//! --no-build`): cargo has just built `odfs` for this test, and the static
//! agent and launcher come from scripts/build, as for every other test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{docker, eventually, stderr, stdout};

const BASE: &str = "debian:bookworm-slim";

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A container of the base image with the package bind-mounted in /pkg;
/// removed on drop, even when the test fails.
struct PackageBox {
    name: String,
}

impl PackageBox {
    fn start(deb: &Path) -> PackageBox {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let b = PackageBox { name: format!("odfs-package-{}-{nanos}", std::process::id()) };
        let bind = format!("{}:/pkg/{}:ro", deb.display(), deb.file_name().unwrap().to_string_lossy());
        let run_label = format!("io.odfs.test.run={}", b.name);
        // /dev/fuse and SYS_ADMIN: the daemon mounts /opt/od/bin in here.
        // No engine socket: the tools' containers are none of this test's.
        let o = docker(&[
            "run", "-d", "--name", &b.name, "--label", "io.odfs.test=package", "--label", &run_label,
            "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
            "--security-opt", "apparmor=unconfined", "-v", &bind, BASE, "sleep", "infinity",
        ]);
        assert!(o.status.success(), "docker run {BASE}: {}", stderr(&o));
        b
    }

    /// A bash script in the container, as root.
    fn sh(&self, script: &str) -> Output {
        Command::new("docker").args(["exec", &self.name, "bash", "-c", script]).output().expect("run docker exec")
    }

    /// A script that must succeed; its stdout.
    fn ok(&self, what: &str, script: &str) -> String {
        let o = self.sh(script);
        assert!(o.status.success(), "{what} failed ({}):\n{}{}", o.status, tail(&stdout(&o), 40), tail(&stderr(&o), 40));
        stdout(&o)
    }
}

impl Drop for PackageBox {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| format!("{l}\n")).collect()
}

/// `odfs doctor`'s report: every line a check (`ok`, `note`, `FAIL`), the
/// failures exactly those named by `lacks` (each a needle of its own line),
/// nothing but the count on stderr, exit status 1 (0 when nothing lacks).
fn assert_doctor(o: &Output, lacks: &[&str], context: &str) {
    let (out, err) = (stdout(o), stderr(o));
    let shown = format!("{context}: odfs doctor said ({}):\n{out}{err}", o.status);
    for line in out.lines() {
        assert!(["ok   ", "note ", "FAIL "].iter().any(|t| line.starts_with(t)), "a line that is no check\n{shown}");
    }
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL ")).collect();
    for lack in lacks {
        assert_eq!(fails.iter().filter(|l| l.contains(lack)).count(), 1, "not one FAIL line with {lack:?}\n{shown}");
    }
    assert_eq!(fails.len(), lacks.len(), "FAIL lines other than {lacks:?}\n{shown}");
    let want_err = if lacks.is_empty() { String::new() } else { format!("odfs: {} check(s) failed\n", lacks.len()) };
    assert_eq!(err, want_err, "stderr\n{shown}");
    assert_eq!(o.status.code(), Some(if lacks.is_empty() { 0 } else { 1 }), "exit status\n{shown}");
}

#[test]
fn the_package_installs_in_a_clean_debian_enables_nothing_and_purges_clean() {
    let ok = docker(&["info"]);
    assert!(ok.status.success(), "the engine does not answer: run scripts/setup first");
    let base = Command::new(manifest().join("scripts/build-base")).output().expect("run scripts/build-base");
    assert!(base.status.success(), "scripts/build-base failed: {}", stderr(&base));
    let built = Command::new(manifest().join("scripts/package")).arg("--no-build").output().expect("run scripts/package");
    assert!(built.status.success(), "scripts/package --no-build failed:\n{}{}", stdout(&built), stderr(&built));
    // "package: target/debian/odfs_V_amd64.deb (5.1M)"
    let deb = stdout(&built).lines().find_map(|l| l.strip_prefix("package: ").and_then(|r| r.split_whitespace().next()).map(|p| manifest().join(p)));
    let deb = deb.unwrap_or_else(|| panic!("scripts/package named no package:\n{}", stdout(&built)));
    let file = deb.file_name().unwrap().to_string_lossy().into_owned();

    let b = PackageBox::start(&deb);
    b.ok(
        "apt-get install of the package",
        &format!("cd /pkg && export DEBIAN_FRONTEND=noninteractive && timeout 300 apt-get update -q && timeout 900 apt-get install -y -q ./{file}"),
    );

    // Where Debian looks, at the paths the packaged unit and odfs expect.
    let on_path = b.ok("odfs on PATH", "command -v odfs && odfs --version");
    assert_eq!(on_path, format!("/usr/bin/odfs\nodfs {}\n", env!("CARGO_PKG_VERSION")), "odfs on PATH");
    let files = [
        "-x /usr/lib/odfs/odfs", "-x /usr/lib/odfs/odfs-agent", "-x /usr/lib/odfs/odfs-launch",
        "-s /usr/share/man/man1/odfs.1.gz", "-s /usr/share/bash-completion/completions/odfs",
        "-s /usr/share/zsh/vendor-completions/_odfs", "-s /usr/share/fish/vendor_completions.d/odfs.fish",
        "-s /lib/systemd/system/odfs.service", "-s /etc/profile.d/odfs.sh", "-s /etc/profile.d/odfs-command-not-found.sh",
        "-s /usr/share/odfs/catalog/debian.toml", "-d /etc/odfs/catalog.d", "-d /opt/od/bin",
        "-s /usr/share/doc/odfs/copyright", "-s /usr/share/doc/odfs/changelog.Debian.gz",
    ];
    let check: String = files.iter().map(|f| format!("[ {f} ] || echo '{f}'; ")).collect();
    assert_eq!(b.ok("file checks", &check), "", "installed files missing (test operator, path)");
    let man = b.ok("the man page", "zcat /usr/share/man/man1/odfs.1.gz | grep '^.TH'");
    assert!(man.starts_with(".TH odfs 1"), "man page header: {man}");
    b.ok("bash completion of odfs", ". /usr/share/bash-completion/completions/odfs && complete -p odfs");
    let conffiles = b.ok("conffiles", "dpkg-query -W -f='${Conffiles}' odfs");
    assert!(conffiles.contains("/etc/profile.d/odfs.sh "), "conffiles: {conffiles}");
    b.ok("group netadmin", "getent group netadmin");
    // man-db (recommended) maps the share's man pages to its own cache,
    // whichever of the two apt configured first (DEBIAN/triggers).
    b.ok("MANDB_MAP of /opt/od/share/man in /etc/manpath.config", "grep -E '^MANDB_MAP[[:space:]]+/opt/od/share/man[[:space:]]' /etc/manpath.config");
    // The unit, at the packaged paths, and enabled by no one.
    let unit = b.ok("the unit", "cat /lib/systemd/system/odfs.service");
    assert!(!unit.contains("/usr/local"), "the packaged unit names /usr/local:\n{unit}");
    let enabled = b.ok("enabled units", "find /etc/systemd /etc/init.d /etc/rc?.d -name '*odfs*' 2>/dev/null || true");
    assert_eq!(enabled, "", "the package enabled odfs on its own");

    // Without FUSE, engine or daemon: one line each. No FUSE: an empty /dev
    // over the container's, in a mount namespace of the doctor's own (the
    // rest shared as it is, /dev private so the empty one stays there).
    let doctor = b.sh("unshare -m --propagation unchanged sh -c 'mount --make-private /dev && mount -t tmpfs none /dev && exec odfs doctor'");
    assert_doctor(&doctor, &["FUSE device /dev/fuse", "container engine", "daemon not reachable"], "no FUSE, no engine, no daemon");

    // The daemon as the unit starts it (no systemd in here), in the background.
    let start: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("ExecStartPre=").or(l.strip_prefix("ExecStart="))).collect();
    assert_eq!(start.len(), 2, "ExecStartPre and ExecStart in the unit:\n{unit}");
    b.ok("the unit's ExecStartPre", start[0]);
    b.ok("the unit's ExecStart", &format!("setsid {} >/var/log/odfs.log 2>&1 </dev/null & echo $! >/run/odfs-test.pid", start[1]));
    let up = eventually(Duration::from_secs(30), || b.sh("odfs ls >/dev/null 2>&1 && grep -q ' /opt/od/bin fuse' /proc/mounts").status.success());
    assert!(up, "the daemon did not serve /opt/od/bin:\n{}", b.ok("the daemon's log", "cat /var/log/odfs.log"));

    // `odfs ls` lists every command of the shipped catalog; each has a shim.
    let (catalog, errors) = odfs::catalog::load_dirs(&[manifest().join("catalog")]).expect("read catalog/");
    assert!(errors.is_empty(), "catalog/ has errors: {errors:?}");
    let listed = b.ok("odfs ls", "odfs ls");
    let names: Vec<&str> = listed.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let shims = b.ok("ls /opt/od/bin", "ls /opt/od/bin");
    let missing: Vec<&String> = catalog.commands.keys().filter(|c| !names.contains(&c.as_str()) || !shims.lines().any(|s| s == *c)).collect();
    assert!(missing.is_empty(), "shipped commands not listed by odfs ls or without a shim: {missing:?}\nodfs ls:\n{listed}");

    // A login shell (profile.d puts the mount last on PATH): only the engine lacks.
    let doctor = b.sh("bash -lc 'odfs doctor'");
    assert_doctor(&doctor, &["container engine"], "daemon serving, no engine");
    let out = stdout(&doctor);
    for good in ["ok   FUSE device /dev/fuse", "ok   mount at /opt/od/bin", "ok   /opt/od/bin is last on PATH"] {
        assert!(out.contains(good), "odfs doctor did not say {good:?}:\n{out}");
    }

    // Stopped, then purged: nothing of odfs remains but the group.
    b.ok("stopping the daemon", "kill -TERM $(cat /run/odfs-test.pid)");
    let down = eventually(Duration::from_secs(30), || !b.sh("grep -q ' /opt/od/bin fuse' /proc/mounts").status.success());
    assert!(down, "the daemon did not unmount on SIGTERM:\n{}", b.ok("the daemon's log", "cat /var/log/odfs.log"));
    b.ok("apt-get purge", "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q odfs");
    let left = b.ok(
        "leftovers",
        "for p in /usr/bin/odfs /usr/lib/odfs /var/lib/odfs /etc/odfs /etc/profile.d/odfs.sh; do [ ! -e $p ] || echo $p; done; \
         [ ! -e /opt/od ] || find /opt/od -ls; \
         grep -s /opt/od/share/man /etc/manpath.config || true",
    );
    assert_eq!(left, "", "left after purge");
}
