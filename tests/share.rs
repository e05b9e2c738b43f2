//! Feels installed: the catalog's man pages and completions beside the
//! mount, read by the host's man-db and bash-completion; versions side by
//! side and per-project pins. Real engine, real mount, real users.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// ripgrep from Debian (man page, bash and zsh completions), jq from
/// Debian (a man page), and one command in two versions.
const CATALOG: &str = r#"
[image.text]
ref = "odfs/text:latest"
network = "none"
commands = ["rg"]

[image.data]
ref = "odfs/data:latest"
network = "none"
commands = ["jq"]

[image.v16]
ref = "odfs-test/busybox:latest"
network = "none"
version = "1.6"

[command.vtool]
image = "v16"
path = "/bin/echo"
args = ["vtool 1.6"]

[image.v17]
ref = "odfs-test/busybox:latest"
network = "none"
version = "1.7"
pids = 4107

[command.vtool]
image = "v17"
path = "/bin/echo"
args = ["vtool 1.7"]
"#;

/// A mount whose share directory is `ROOT/share`, with `ROOT/bin` (a link
/// to the mountpoint) for PATH: the layout of /opt/od/{bin,share}.
fn mount() -> (Cleanup, TestMount, PathBuf, PathBuf) {
    // One file per image section pair: a file may define a command once.
    let (a, b) = CATALOG.split_at(CATALOG.find("[image.v17]").unwrap());
    let share_root = PathBuf::from(format!("/tmp/odfs-test-share-{}-{}", std::process::id(), SEQ_SHARE.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    let share = share_root.join("share");
    std::fs::create_dir_all(&share_root).unwrap();
    std::fs::set_permissions(&share_root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = TestMount::with_files(&[("a.toml", a), ("b.toml", b)], &["--share-dir", share.to_str().unwrap()]);
    let bin = share_root.join("bin");
    std::os::unix::fs::symlink(&m.mnt, &bin).unwrap();
    (Cleanup(share_root.clone()), m, share_root, share)
}

static SEQ_SHARE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn served(share: &Path, file: &str) -> bool {
    eventually(Duration::from_secs(60), || share.join(file).exists())
}

/// `man` as a user would run it, with the mount's bin last on PATH.
fn man(root: &Path, args: &[&str]) -> Output {
    Command::new("man")
        .args(args)
        .env_remove("MANPATH")
        .env("PATH", format!("/usr/bin:/bin:{}", root.join("bin").display()))
        .env("MANWIDTH", "80")
        .current_dir("/tmp")
        .output()
        .unwrap()
}

#[test]
fn man_finds_the_catalog_s_pages_from_the_path_entry_and_apropos_indexes_them() {
    let (_c, _m, root, share) = mount();
    assert!(served(&share, "man/man1/rg.1.gz"), "no rg page: {:?}", std::fs::read_dir(&share).map(|d| d.count()));
    // ripgrep is not installed here: its page is the image's.
    let o = man(&root, &["-w", "rg"]);
    assert_eq!(stdout(&o).trim(), share.join("man/man1/rg.1.gz").display().to_string(), "{}", stderr(&o));
    let o = man(&root, &["-P", "cat", "rg"]);
    assert!(stdout(&o).contains("recursively search"), "{}{}", stdout(&o), stderr(&o));
    let o = man(&root, &["-k", "recursively search"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("rg (1)")), "{}{}", stdout(&o), stderr(&o));
    let o = Command::new("apropos").arg("recursively").env_remove("MANPATH").env("PATH", format!("/usr/bin:/bin:{}", root.join("bin").display())).output().unwrap();
    assert!(stdout(&o).contains("rg (1)"), "{}{}", stdout(&o), stderr(&o));
    // jq is also native here: with its own MANPATH the caller reads the
    // image's page (from the catalog's jq), the same manual.
    assert!(served(&share, "man/man1/jq.1.gz"));
    let o = Command::new("man").args(["-P", "cat", "jq"]).env("MANPATH", share.join("man")).env("MANWIDTH", "80").output().unwrap();
    assert!(stdout(&o).contains("jq - Command-line JSON processor"), "{}{}", stdout(&o), stderr(&o));
    // Only commands the catalog maps: the image's other pages stay out.
    assert!(!share.join("man/man1/fdfind.1.gz").exists() && !share.join("man/man1/mlr.1.gz").exists());
    // Readable by everyone, writable by no one but root.
    let mode = std::fs::metadata(share.join("man/man1/rg.1.gz")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
}

#[test]
fn a_bash_with_the_profile_snippet_completes_a_wrapped_tool() {
    let (_c, _m, root, share) = mount();
    assert!(served(&share, "bash-completion/completions/rg"));
    assert!(share.join("zsh/site-functions/_rg").is_file(), "zsh's too");
    // The shipped snippet, pointed at this mount instead of /opt/od.
    let snippet = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mount-units/profile.d/odfs.sh")).unwrap();
    let profile = root.join("profile.sh");
    std::fs::write(&profile, snippet.replace("/opt/od", root.to_str().unwrap())).unwrap();
    let user = TestUser::new();
    let script = format!(
        ". {}; . /usr/share/bash-completion/bash_completion; __load_completion rg; complete -p rg; COMP_WORDS=(rg --hidd); COMP_CWORD=1; COMP_LINE='rg --hidd'; COMP_POINT=9; _rg rg --hidd rg; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        profile.display()
    );
    let o = user.cmd("bash").args(["--norc", "--noprofile", "-c", &script]).env_remove("XDG_DATA_DIRS").current_dir("/tmp").output().unwrap();
    let out = stdout(&o);
    assert!(out.contains("-F _rg rg") && out.lines().any(|l| l == "--hidden"), "{out}{}", stderr(&o));
}

#[test]
fn versions_side_by_side_and_the_bare_name_runs_the_highest() {
    let (_c, m, _root, _share) = mount();
    let run = |name: &str| stdout(&m.sh(&format!(r#""$M/{name}""#)));
    assert_eq!(run("vtool@1.6"), "vtool 1.6\n");
    assert_eq!(run("vtool@1.7"), "vtool 1.7\n");
    assert_eq!(run("vtool"), "vtool 1.7\n");
    let ls = stdout(&m.odfs(&["ls"]));
    for (name, version) in [("vtool", "1.7"), ("vtool@1.6", "1.6"), ("vtool@1.7", "1.7")] {
        assert!(ls.lines().any(|l| l.split_whitespace().next() == Some(name) && l.split_whitespace().nth(2) == Some(version)), "{name}: {ls}");
    }
    assert!(stdout(&m.odfs(&["show", "vtool"])).contains("version:    1.7 (default; also 1.6)"));
    // The command-not-found hint names what there is.
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["hint", "--socket"]).arg(&m.socket).args(["--", "vtool@2.0"]).output().unwrap();
    assert!(stderr(&o).contains("vtool@1.6, vtool@1.7"), "{}", stderr(&o));
}

#[test]
fn a_pin_file_picks_the_version_in_its_tree_only_and_only_when_it_is_safe() {
    let (_c, m, _root, _share) = mount();
    let user = TestUser::new();
    let project = user.home.join("project");
    let deep = project.join("src/deep");
    std::fs::create_dir_all(&deep).unwrap();
    for d in [&project, &project.join("src"), &deep] {
        std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid)).unwrap();
    }
    let pin = project.join(".odfs.toml");
    std::fs::write(&pin, "[pins]\nvtool = \"1.6\"\n").unwrap();
    std::os::unix::fs::chown(&pin, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |dir: &Path| user.cmd(m.shim("vtool")).current_dir(dir).output().unwrap();
    assert_eq!(stdout(&run(&deep)), "vtool 1.6\n", "{}", stderr(&run(&deep)));
    assert_eq!(stdout(&run(&user.home)), "vtool 1.7\n");
    // NAME@V is always that version.
    assert_eq!(stdout(&user.cmd(m.shim("vtool@1.7")).current_dir(&deep).output().unwrap()), "vtool 1.7\n");
    let show = user.cmd(env!("CARGO_BIN_EXE_odfs")).args(["show", "vtool", "--socket"]).arg(&m.socket).current_dir(&deep).output().unwrap();
    assert!(stdout(&show).contains(&format!("runs here: 1.6 in {}: pinned by {}", deep.display(), pin.display())), "{}{}", stdout(&show), stderr(&show));

    // A change is seen at the next call; a version the catalog lacks is one
    // line and exit 126.
    std::fs::write(&pin, "[pins]\nvtool = \"2.0\"\n").unwrap();
    let o = run(&deep);
    assert_eq!(o.status.code(), Some(126), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("odfs: vtool: {} pins vtool to 2.0, which this catalog does not offer (it has 1.6, 1.7)", pin.display())), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Writable by others: ignored (the default runs), and doctor says why.
    std::fs::write(&pin, "[pins]\nvtool = \"1.6\"\n").unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(stdout(&run(&deep)), "vtool 1.7\n");
    let doctor = user.cmd(env!("CARGO_BIN_EXE_odfs")).args(["doctor", "--socket"]).arg(&m.socket).current_dir(&deep).output().unwrap();
    assert!(stdout(&doctor).contains(&format!("{} is ignored: it is writable by others", pin.display())), "{}", stdout(&doctor));
    // Another user's file binds nobody else.
    let other = TestUser::new();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&pin, Some(other.uid), Some(other.gid)).unwrap();
    assert_eq!(stdout(&run(&deep)), "vtool 1.7\n");
}

/// What is wrong with `dir` as a tree root's alone, if anything: every
/// entry root's (uid and gid 0) and writable by no one else, and none of
/// the `catN` directories man-db makes in what it takes for its own cache.
fn not_root_s_alone(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).unwrap();
    if (meta.uid(), meta.gid()) != (0, 0) || meta.mode() & 0o022 != 0 {
        return Some(format!("{}: owner {}:{}, mode {:o}", dir.display(), meta.uid(), meta.gid(), meta.mode() & 0o7777));
    }
    let name = dir.file_name().unwrap().to_string_lossy();
    if name.len() == 4 && name.starts_with("cat") && name.ends_with(|c: char| c.is_ascii_digit()) {
        return Some(format!("{}: a cat directory", dir.display()));
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            if let Some(wrong) = not_root_s_alone(&e.unwrap().path()) {
                return Some(wrong);
            }
        }
    }
    None
}

/// The share's `man` as a system manpath of man-db, its index and cat
/// pages in a cache directory of man-db's (what scripts/install does for
/// /opt/od/share/man); taken out of the configuration again on drop.
struct SystemManpath {
    line: String,
    cache: PathBuf,
}

const MANPATH_CONFIG: &str = "/etc/manpath.config";

impl SystemManpath {
    fn add(man: &Path) -> SystemManpath {
        let cache = PathBuf::from(format!("/var/cache/man/odfs-test-{}", std::process::id()));
        let line = format!("MANDB_MAP\t{}\t{}\n", man.display(), cache.display());
        let mut config = std::fs::OpenOptions::new().append(true).open(MANPATH_CONFIG).unwrap();
        std::io::Write::write_all(&mut config, line.as_bytes()).unwrap();
        SystemManpath { line, cache }
    }
}

impl Drop for SystemManpath {
    fn drop(&mut self) {
        let text = std::fs::read_to_string(MANPATH_CONFIG).unwrap_or_default();
        let tmp = format!("{MANPATH_CONFIG}.odfs-test");
        if std::fs::write(&tmp, text.replace(&self.line, "")).is_ok() {
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
            let _ = std::fs::rename(&tmp, MANPATH_CONFIG);
        }
        let _ = std::fs::remove_dir_all(&self.cache);
    }
}

#[test]
fn mandb_run_as_root_never_gives_the_share_to_man_db_s_user_and_man_still_finds_the_pages() {
    let (_c, mut m, root, share) = mount();
    assert!(served(&share, "man/man1/rg.1.gz"));
    // Unmapped, the daemon indexes the tree in place (`man -k` reads the
    // index there) and leaves it root's, and says how to map it.
    let generation = std::fs::canonicalize(&share).unwrap();
    assert!(generation.join("man/index.db").is_file());
    assert_eq!(not_root_s_alone(&generation), None);
    assert!(stdout(&man(&root, &["-k", "recursively search"])).lines().any(|l| l.starts_with("rg (1)")));
    let said = format!("{}/man is no system manpath of man-db", share.display());
    assert!(m.log_text().contains(&said), "{}", m.log_text());

    // Mapped, as the installed /opt/od/share/man is: its index goes to
    // man-db's cache, and no mandb run as root touches the share.
    m.stop();
    let map = SystemManpath::add(&share.join("man"));
    m.start(&["--share-dir", share.to_str().unwrap()]);
    assert!(served(&share, "man/man1/rg.1.gz"));
    assert!(eventually(Duration::from_secs(30), || map.cache.join("index.db").is_file()), "no index in {}:\n{}", map.cache.display(), m.log_text());
    let path = format!("/usr/bin:/bin:{}", root.join("bin").display());
    let man_dir = share.join("man");
    for args in [vec!["--quiet"], vec!["--quiet", "--user-db"], vec!["--quiet", man_dir.to_str().unwrap()]] {
        let o = Command::new("mandb").args(&args).env("PATH", &path).env_remove("MANPATH").current_dir("/tmp").output().unwrap();
        assert!(o.status.success(), "mandb {args:?}: {}", stderr(&o));
        assert_eq!(not_root_s_alone(&std::fs::canonicalize(&share).unwrap()), None, "after mandb {args:?}");
    }
    assert!(!std::fs::canonicalize(&share).unwrap().join("man/index.db").exists(), "the index is man-db's, in its cache");
    let o = man(&root, &["-w", "rg"]);
    assert_eq!(stdout(&o).trim(), share.join("man/man1/rg.1.gz").display().to_string(), "{}", stderr(&o));
    assert!(stdout(&man(&root, &["-P", "cat", "rg"])).contains("recursively search"));
    let o = man(&root, &["-k", "recursively search"]);
    assert!(stdout(&o).lines().any(|l| l.starts_with("rg (1)")), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(m.log_text().matches(&said).count(), 1, "said once, before it was mapped");
}

#[test]
fn man_finds_pages_that_debian_names_through_its_alternatives() {
    let share_root = PathBuf::from(format!("/tmp/odfs-test-share-{}-{}", std::process::id(), SEQ_SHARE.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    let _c = Cleanup(share_root.clone());
    let share = share_root.join("share");
    std::fs::create_dir_all(&share_root).unwrap();
    std::fs::set_permissions(&share_root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // traceroute.1.gz and nc.1.gz are links to /etc/alternatives, which
    // links to traceroute.db.1.gz and nc_openbsd.1.gz.
    let catalog = "[image.nu]\nref = \"odfs/netutils:latest\"\nnetwork = \"none\"\ncommands = [\"traceroute\", \"nc\"]\n";
    let m = TestMount::with_files(&[("n.toml", catalog)], &["--share-dir", share.to_str().unwrap()]);
    std::os::unix::fs::symlink(&m.mnt, share_root.join("bin")).unwrap();
    for (tool, words) in [("traceroute", "print the route packets trace"), ("nc", "arbitrary TCP and UDP connections")] {
        assert!(served(&share, &format!("man/man1/{tool}.1.gz")), "no {tool} page");
        let o = man(&share_root, &["-P", "cat", tool]);
        assert!(stdout(&o).contains(words), "{tool}: {}{}", stdout(&o), stderr(&o));
    }
}

#[test]
fn a_restarted_mount_serves_the_last_share_before_it_lists_a_command_and_nothing_of_a_dropped_image() {
    let (_c, mut m, root, share) = mount();
    assert!(served(&share, "man/man1/rg.1.gz") && served(&share, "man/man1/jq.1.gz"));
    let generation = std::fs::read_link(&share).unwrap();
    m.stop();
    assert!(std::fs::symlink_metadata(&share).is_err(), "a stopped mount serves no share");
    let store = m.state.join("docs");
    let kept = || std::fs::read_dir(&store).unwrap().count();
    let kept_before = kept();

    // The mount is up (it lists rg) and, from that moment, man and bash
    // completion find rg: the same generation, served before the mount,
    // with no engine asked.
    m.start(&["--share-dir", share.to_str().unwrap()]);
    assert!(m.shim("rg").exists());
    let o = man(&root, &["-w", "rg"]);
    assert_eq!(stdout(&o).trim(), share.join("man/man1/rg.1.gz").display().to_string(), "{}\n{}", stderr(&o), m.log_text());
    assert!(share.join("bash-completion/completions/rg").is_file());
    assert!(stdout(&man(&root, &["-k", "recursively search"])).lines().any(|l| l.starts_with("rg (1)")), "its index too");
    assert_eq!(std::fs::read_link(&share).unwrap(), generation);
    // The first refresh finds the images unchanged: nothing is rewritten.
    assert!(eventually(Duration::from_secs(30), || m.log_text().contains("man pages and completions unchanged")), "{}", m.log_text());
    assert_eq!(std::fs::read_link(&share).unwrap(), generation, "{}", m.log_text());

    // An image left the catalog while the mount was stopped: its pages are
    // not served again, not even for a moment.
    m.stop();
    let without_jq = CATALOG.split_at(CATALOG.find("[image.v17]").unwrap()).0.replace("[image.data]\nref = \"odfs/data:latest\"\nnetwork = \"none\"\ncommands = [\"jq\"]\n", "");
    assert!(!without_jq.contains("jq"));
    std::fs::write(m.catalog.join("a.toml"), without_jq).unwrap();
    m.start(&["--share-dir", share.to_str().unwrap()]);
    assert!(!m.shim("jq").exists());
    assert!(!share.join("man/man1/jq.1.gz").exists(), "a dropped image's page served again");
    assert!(served(&share, "man/man1/rg.1.gz"));
    assert!(!share.join("man/man1/jq.1.gz").exists());
    // And the state directory keeps no documents of it.
    assert!(eventually(Duration::from_secs(30), || kept() == kept_before - 1), "{kept_before} → {}", kept());
}
