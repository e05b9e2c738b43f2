//! The archive as its users meet it: a mount with `[archive.debian]` over
//! bookworm's real index (fetched once here, through apt in a container),
//! whose commands an unprivileged user runs on their first call: the
//! package's image built through apt, then the tool, with the output a
//! throwaway container of the suite gives. Each test forgets the packages
//! it brings, before and after, so a first call is a first call.

mod common;
#[path = "common/archive.rs"]
#[allow(dead_code)]
mod archive;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{docker, eventually, shell_status, stderr, stdout, Defer, TestMount, TestUser, Tmux};

/// bookworm's index, fetched once for the whole binary, kept in memory.
fn bookworm_index() -> &'static odfs::archive::Index {
    static INDEX: OnceLock<odfs::archive::Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        common::prepare();
        // Its own runtime, off any test's.
        std::thread::spawn(|| tokio::runtime::Runtime::new().unwrap().block_on(archive::fetch_bookworm())).join().unwrap().index
    })
}

/// A mount serving the archive (`fetch` policy, then more keys of its
/// section; bookworm alone unless they name the suites), with bookworm's
/// index dropped into its state directory as `odfs update --archive`
/// leaves it: the running daemon serves it.
fn archive_mount(fetch: &str, more: &str) -> TestMount {
    archive_mount_with(fetch, more, &[])
}

/// [`archive_mount`] with more arguments of the daemon.
fn archive_mount_with(fetch: &str, more: &str, args: &[&str]) -> TestMount {
    let index = bookworm_index();
    let suites = if more.contains("suites") { "" } else { "suites = [\"bookworm\"]\n" };
    let m = TestMount::with_files(&[("test.toml", &format!("[archive.debian]\n{suites}fetch = \"{fetch}\"\n{more}"))], args);
    let dir = m.state.join("archive");
    std::fs::create_dir_all(&dir).unwrap();
    index.save(&dir).unwrap();
    assert!(eventually(Duration::from_secs(10), || m.shim("htop").exists()), "the index was not served:\n{}", m.log_text());
    m
}

/// Remove the images of these packages (any version), so their next call
/// is a first one.
fn forget(packages: &[&str]) {
    for p in packages {
        let ids = stdout(&docker(&["images", "-q", "--filter", &format!("reference=odfs-archive/bookworm/{p}")]));
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(ids);
            docker(&args);
        }
    }
}

fn present(package: &str) -> bool {
    !stdout(&docker(&["images", "-q", "--filter", &format!("reference=odfs-archive/bookworm/{package}")])).trim().is_empty()
}

/// How many times the daemon built a package's image.
fn builds(m: &TestMount, package: &str) -> usize {
    m.log_text().lines().filter(|l| l.contains("building the image of an archive package") && l.contains(&format!("package=\"{package}\""))).count()
}

#[test]
fn every_command_is_listed_and_a_first_call_runs_the_package_as_the_caller() {
    let packages = ["tree", "figlet", "cowsay", "htop"];
    forget(&packages);
    let _forget = Defer(|| forget(&packages));
    let m = archive_mount("auto", "");

    let listed = std::fs::read_dir(&m.mnt).unwrap().count();
    eprintln!("the mount lists {listed} commands");
    assert!(listed >= 40_000, "{listed}");
    for name in ["htop", "tree", "cowsay", "figlet", "nc", "vi", "traceroute"] {
        assert!(m.shim(name).exists(), "{name} not listed");
    }

    // Files of the caller's, in a directory the tools share with the host.
    let user = TestUser::new();
    let dir = m.work.join("project");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("README"), "hi\n").unwrap();
    std::fs::write(dir.join("src/main.c"), "int main(){}\n").unwrap();
    let calls = [
        ("tree", vec!["-L".to_string(), "1".into(), dir.display().to_string()]),
        ("figlet", vec!["hi".into()]),
        ("cowsay", vec!["hi".into()]),
        ("htop", vec!["--version".into()]),
    ];
    // The same packages as Debian ships them, in a throwaway container of
    // the suite, with the same directory at the same path.
    let script: String = calls
        .iter()
        .map(|(c, args)| format!("echo '=== {c}'; {c} {}; echo \"=== status $?\"; ", args.join(" ")))
        .collect();
    let native = Command::new("docker")
        .args(["run", "--rm", "--label", "io.odfs.test=1", "--network", "host", "-e", "LANG=C.UTF-8", "-v"])
        .arg(format!("{}:{}:ro", dir.display(), dir.display()))
        .args([archive::IMAGE, "sh", "-c"])
        .arg(format!(
            "apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {} >/dev/null 2>&1 && export PATH=$PATH:/usr/games && {script}",
            packages.join(" ")
        ))
        .output()
        .unwrap();
    let native = stdout(&native);
    for (command, args) in &calls {
        let o = user.cmd(m.shim(command)).args(args).current_dir(&dir).env("LANG", "C.UTF-8").output().unwrap();
        let theirs = native.split(&format!("=== {command}\n")).nth(1).unwrap_or_else(|| panic!("{native}"));
        let (expected, status) = theirs.split_once("=== status ").unwrap();
        assert_eq!(stdout(&o), expected, "{command}: {}", stderr(&o));
        assert_eq!(shell_status(&o).to_string(), status.lines().next().unwrap(), "{command}: {}", stderr(&o));
        // Without a terminal: a line when the fetch starts and one when it ends.
        assert!(stderr(&o).contains("odfs-archive/bookworm/"), "{command}: {}", stderr(&o));
    }
    // Warm after: no fetch, no line.
    let again = user.cmd(m.shim("figlet")).arg("hi").output().unwrap();
    assert_eq!((shell_status(&again), stderr(&again)), (0, String::new()));

    // Names update-alternatives makes run on their first call too.
    for (name, args, says) in [("nc", "-h", "connect"), ("vi", "--version", "VIM"), ("traceroute", "--version", "traceroute")] {
        let o = user.cmd(m.shim(name)).arg(args).output().unwrap();
        assert!(format!("{}{}", stdout(&o), stderr(&o)).contains(says), "{name}: {}{}", stdout(&o), stderr(&o));
    }
    forget(&["netcat-traditional", "vim-tiny", "traceroute"]);

    // A name in no index is the shell's own "not found", and so is a suite
    // the catalog does not name.
    for name in ["no-such-command-odfs", "jq@trixie"] {
        let o = user.cmd("/bin/sh").arg("-c").arg(format!("PATH={}; {name}", m.mnt.display())).output().unwrap();
        assert_eq!(shell_status(&o), 127, "{name}");
        assert!(stderr(&o).contains("not found"), "{name}: {}", stderr(&o));
    }

    // odfs show names the package, its version, suite and other providers.
    let show = stdout(&m.odfs(&["show", "nc"]));
    assert!(show.contains("Debian package netcat-traditional") && show.contains("bookworm") && show.contains("netcat-openbsd"), "{show}");
    let status = stdout(&m.odfs(&["status"]));
    assert!(status.contains("archive index of bookworm"), "{status}");
}

#[test]
fn concurrent_first_calls_of_a_package_build_it_once() {
    forget(&["pv"]);
    let _forget = Defer(|| forget(&["pv"]));
    let m = archive_mount("auto", "");
    let user = TestUser::new();
    let children: Vec<_> = (0..16)
        .map(|_| user.cmd(m.shim("pv")).arg("--version").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for o in &outputs {
        assert_eq!(shell_status(o), 0, "{}", stderr(o));
        assert!(stdout(o).starts_with("pv 1."), "{}", stdout(o));
        assert_eq!(stdout(o), stdout(&outputs[0]));
    }
    assert_eq!(builds(&m, "pv"), 1, "{}", m.log_text());
}

#[test]
fn ask_fetches_on_enter_and_nothing_on_no() {
    forget(&["ncdu"]);
    let _forget = Defer(|| forget(&["ncdu"]));
    let m = archive_mount("ask", "");
    let user = TestUser::new();
    let t = Tmux::new(&m, &format!("setpriv --reuid={} --regid={} --init-groups", user.uid, user.gid));
    t.line("$M/ncdu --version; echo \"status=$?\"");
    assert!(t.wait_for("fetch Debian package ncdu", Duration::from_secs(20)), "{}", t.screen());
    // (The question may wrap at the window's width.)
    assert!(t.screen().replace('\n', "").contains("[Y/n]"), "{}", t.screen());
    t.line("n");
    assert!(t.wait_for("status=127", Duration::from_secs(20)), "{}", t.screen());
    assert!(t.screen().contains("not fetched"), "{}", t.screen());
    assert!(!present("ncdu"), "a no fetched it");

    // The first question off the screen before the second is looked for.
    t.line("clear");
    assert!(eventually(Duration::from_secs(10), || !t.screen().contains("to run it?")), "{}", t.screen());
    t.run("$M/ncdu --version; echo \"status=$?\"", "to run it?");
    t.keys(&["Enter"]);
    assert!(t.wait_for("status=0", Duration::from_secs(60)), "{}", t.screen());
    assert!(t.screen().contains("ncdu 1."), "{}", t.screen());
    assert!(present("ncdu"));
    t.assert_sane();

    // Calls that arrive together ask once, and share the answer.
    let forget_here = || {
        m.odfs(&["stop", "ncdu", "--force"]);
        forget(&["ncdu"]);
        assert!(!present("ncdu"), "its image stayed");
    };
    forget_here();
    t.line("clear");
    assert!(eventually(Duration::from_secs(10), || !t.screen().contains("to run it?")), "{}", t.screen());
    // (xargs -o gives each its terminal as stdin; `&` would give /dev/null.)
    t.run("seq 3 | xargs -o -P3 -I{} $M/ncdu --version; echo \"both=$?\"", "to run it?");
    t.keys(&["Enter"]);
    assert!(t.wait_for("both=0", Duration::from_secs(60)), "{}", t.screen());
    assert_eq!(t.screen().matches("to run it?").count(), 1, "{}", t.screen());
    assert_eq!(t.screen().lines().filter(|l| l.starts_with("ncdu 1.")).count(), 3, "{}", t.screen());

    // Without a terminal, a call means it: no question.
    forget_here();
    let o = user.cmd(m.shim("ncdu")).arg("--version").stdin(Stdio::null()).output().unwrap();
    assert_eq!(shell_status(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("to run it?"), "{}", stderr(&o));
}

#[test]
fn never_runs_only_what_root_fetched() {
    forget(&["units"]);
    let _forget = Defer(|| forget(&["units"]));
    let m = archive_mount("never", "");
    let user = TestUser::new();
    let o = user.cmd(m.shim("units")).arg("--version").output().unwrap();
    assert_eq!(shell_status(&o), 127, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("odfs fetch units"), "{}", stderr(&o));
    assert!(!present("units"));

    let fetched = m.odfs(&["fetch", "units"]);
    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let o = user.cmd(m.shim("units")).arg("--version").output().unwrap();
    assert_eq!(shell_status(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("GNU Units"), "{}", stdout(&o));
    // Only root fetches ahead.
    let refused = user.cmd(env!("CARGO_BIN_EXE_odfs")).args(["fetch", "htop", "--socket"]).arg(&m.socket).output().unwrap();
    assert!(!refused.status.success());
}

#[test]
fn each_user_brings_a_bounded_number_of_packages_and_others_are_not_held_up() {
    let packages = ["bc", "dc"];
    forget(&packages);
    let _forget = Defer(|| forget(&packages));
    let m = archive_mount("auto", "new_packages_per_hour = 1\n");
    let (a, b) = (TestUser::new(), TestUser::new());
    let o = a.cmd(m.shim("bc")).arg("--version").output().unwrap();
    assert_eq!(shell_status(&o), 0, "{}", stderr(&o));
    let refused = a.cmd(m.shim("dc")).arg("--version").output().unwrap();
    assert_eq!(shell_status(&refused), 126, "{}", stderr(&refused));
    assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("new_packages_per_hour"), "{}", stderr(&refused));
    assert!(!present("dc"));
    // Another user's first call in the same minute runs; then the package
    // is on the machine and the first user may run it too.
    let o = b.cmd(m.shim("dc")).arg("--version").output().unwrap();
    assert_eq!(shell_status(&o), 0, "{}", stderr(&o));
    let o = a.cmd(m.shim("dc")).arg("--version").output().unwrap();
    assert_eq!(shell_status(&o), 0, "{}", stderr(&o));
}

/// A Debian repository of one suite served on loopback: one package,
/// published again at another version by [`LocalRepo::publish`]. It has no
/// signing key: the catalog names it in `trusted`.
struct LocalRepo {
    root: PathBuf,
    url: String,
    server: std::process::Child,
}

impl LocalRepo {
    const SUITE: &'static str = "odfstest";

    fn start() -> LocalRepo {
        let root = PathBuf::from(format!("/tmp/odfs-test-repo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Command::new("/usr/bin/python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        assert!(eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()));
        LocalRepo { root, url, server }
    }

    /// The package `odfs-hello` at `version`: `/usr/bin/odfs-hello`
    /// prints `hello VERSION`. The suite's files made anew around it.
    fn publish(&self, version: &str) {
        let build = self.root.join(format!("build-{version}"));
        std::fs::create_dir_all(build.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(build.join("usr/bin")).unwrap();
        let control = format!("Package: odfs-hello\nVersion: {version}\nArchitecture: all\nMaintainer: odfs tests <root@localhost>\nSection: utils\nPriority: optional\nDescription: says hello\n");
        std::fs::write(build.join("DEBIAN/control"), &control).unwrap();
        let tool = build.join("usr/bin/odfs-hello");
        std::fs::write(&tool, format!("#!/bin/sh\necho hello {version}\n")).unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let pool = self.root.join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        let deb = format!("pool/odfs-hello_{version}_all.deb");
        let o = Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&build).arg(self.root.join(&deb)).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let bytes = std::fs::read(self.root.join(&deb)).unwrap();
        let packages = format!(
            "{}Installed-Size: 1\nFilename: {deb}\nSize: {}\nSHA256: {}\n\n",
            control,
            bytes.len(),
            sha256(&bytes)
        );
        let dists = self.root.join("dists").join(Self::SUITE);
        std::fs::create_dir_all(dists.join("main/binary-amd64")).unwrap();
        let contents = "usr/bin/odfs-hello                                      utils/odfs-hello\n";
        std::fs::write(dists.join("main/binary-amd64/Packages"), &packages).unwrap();
        std::fs::write(dists.join("main/Contents-amd64"), contents).unwrap();
        let entry = |text: &str, path: &str| format!(" {} {} {path}\n", sha256(text.as_bytes()), text.len());
        let release = format!(
            "Origin: odfs tests\nSuite: {s}\nCodename: {s}\nVersion: {version}\nDate: Sat, 01 Jan 2000 00:00:{:02} UTC\nArchitectures: amd64 all\nComponents: main\nSHA256:\n{}{}",
            version.len() + version.bytes().map(usize::from).sum::<usize>() % 50,
            entry(&packages, "main/binary-amd64/Packages"),
            entry(contents, "main/Contents-amd64"),
            s = Self::SUITE
        );
        std::fs::write(dists.join("Release"), release).unwrap();
    }
}

impl Drop for LocalRepo {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn update_archive_builds_again_a_package_the_archive_has_a_newer_version_of() {
    let repo = LocalRepo::start();
    repo.publish("1.0");
    let forget_hello = || {
        let ids = stdout(&docker(&["images", "-q", "--filter", "reference=odfs-archive/odfstest/*"]));
        let mut args = vec!["rmi", "-f"];
        args.extend(ids.split_whitespace());
        if args.len() > 2 {
            docker(&args);
        }
    };
    forget_hello();
    let _forget = Defer(forget_hello);
    // bookworm is the default suite; the local one is found as NAME@odfstest.
    let m = archive_mount(
        "auto",
        &format!("suites = [\"bookworm\", \"{s}\"]\nmirrors = {{ {s} = \"{}\" }}\ntrusted = [\"{s}\"]\n", repo.url, s = LocalRepo::SUITE),
    );
    let user = TestUser::new();
    let hello = format!("odfs-hello@{}", LocalRepo::SUITE);
    assert!(!m.shim(&hello).exists(), "found before the suite has an index");
    let said = stdout(&m.odfs(&["status"]));
    assert!(said.contains("MISSING: archive debian: no index of odfstest"), "{said}");

    let updated = m.odfs(&["update", "--archive"]);
    assert!(updated.status.success(), "{}{}", stdout(&updated), stderr(&updated));
    assert!(stdout(&updated).contains(&format!("index of {}: 1 commands", LocalRepo::SUITE)), "{}", stdout(&updated));
    assert!(eventually(Duration::from_secs(10), || m.shim(&hello).exists()), "{}", m.log_text());
    assert!(!std::fs::read_dir(&m.mnt).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with("@odfstest")), "NAME@SUITE is found, not listed");
    let o = user.cmd(m.shim(&hello)).output().unwrap();
    assert_eq!((shell_status(&o), stdout(&o)), (0, "hello 1.0\n".to_string()), "{}", stderr(&o));

    // The archive moves on: the refresh says so and builds the new version.
    repo.publish("1.1");
    let updated = m.odfs(&["update", "--archive"]);
    assert!(updated.status.success(), "{}{}", stdout(&updated), stderr(&updated));
    assert!(stdout(&updated).contains("odfs-hello (odfstest): 1.0 → 1.1, built"), "{}", stdout(&updated));
    assert!(eventually(Duration::from_secs(10), || stdout(&m.odfs(&["show", &hello])).contains("odfs-hello 1.1")));
    let o = user.cmd(m.shim(&hello)).output().unwrap();
    assert_eq!((shell_status(&o), stdout(&o)), (0, "hello 1.1\n".to_string()), "{}", stderr(&o));
    // Built ahead: the call after the refresh fetched nothing.
    assert_eq!(stderr(&o), "");
}

#[test]
fn a_fetched_package_s_man_page_is_served_even_through_its_alternatives_link() {
    forget(&["traceroute"]);
    let _forget = Defer(|| forget(&["traceroute"]));
    let share_root = PathBuf::from(format!("/tmp/odfs-test-archive-share-{}", std::process::id()));
    std::fs::create_dir_all(&share_root).unwrap();
    let _gone = Defer(|| {
        let _ = std::fs::remove_dir_all(&share_root);
    });
    std::fs::set_permissions(&share_root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let share = share_root.join("share");
    let m = archive_mount_with("auto", "", &["--share-dir", share.to_str().unwrap()]);
    let user = TestUser::new();
    let o = user.cmd(m.shim("traceroute")).arg("--version").output().unwrap();
    assert_eq!(shell_status(&o), 0, "{}", stderr(&o));
    // Debian names traceroute's page through update-alternatives
    // (traceroute.1.gz → /etc/alternatives/traceroute.1.gz → traceroute.db.1.gz).
    let man = || user.cmd("man").args(["-P", "cat", "traceroute"]).env("MANPATH", share.join("man")).env("MANWIDTH", "80").output().unwrap();
    assert!(eventually(Duration::from_secs(30), || man().status.success()), "{}\n{}", stderr(&man()), m.log_text());
    let page = stdout(&man());
    assert!(page.contains("traceroute") && page.contains("NAME"), "{page}");
}

#[test]
fn with_listing_off_names_are_found_and_the_hint_names_the_package() {
    let m = archive_mount("ask", "list = false\n");
    assert_eq!(std::fs::read_dir(&m.mnt).unwrap().count(), 0, "listing is off");
    assert!(m.shim("htop").exists() && m.shim("cowsay").exists());
    let user = TestUser::new();
    let hint = user.cmd(env!("CARGO_BIN_EXE_odfs")).args(["hint", "htop", "--socket"]).arg(&m.socket).arg("--mount").arg(&m.mnt).output().unwrap();
    assert!(stderr(&hint).contains("Debian package htop") && stderr(&hint).contains("bookworm"), "{}", stderr(&hint));
    let provides = stdout(&m.odfs(&["provides", "nc"]));
    assert!(provides.contains("netcat-traditional") && provides.contains("netcat-openbsd"), "{provides}");
    let doctor = stdout(&user.cmd(env!("CARGO_BIN_EXE_odfs")).args(["doctor", "--socket"]).arg(&m.socket).output().unwrap());
    assert!(doctor.contains("archive index of bookworm") && doctor.contains("found by name"), "{doctor}");
}

#[test]
fn a_package_that_would_pass_the_image_budget_is_refused_not_fetched() {
    forget(&["sl"]);
    let config = std::env::temp_dir().join(format!("odfs-test-budget-{}.toml", std::process::id()));
    std::fs::write(&config, "[gc]\nimage_budget = \"1KiB\"\n").unwrap();
    let _gone = Defer(|| {
        let _ = std::fs::remove_file(&config);
    });
    let m = archive_mount_with("auto", "", &["--config", config.to_str().unwrap()]);
    let user = TestUser::new();
    let o = user.cmd(m.shim("sl")).output().unwrap();
    assert_eq!(shell_status(&o), 126, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("image_budget") && stderr(&o).contains("Debian package sl"), "{}", stderr(&o));
    assert!(!present("sl"));
}
