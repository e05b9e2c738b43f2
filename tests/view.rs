//! The host view end to end: tools see the caller's files at the caller's
//! paths with the caller's permissions, never the image's file in their
//! place, and never write where the caller will not find it.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CATALOG: &str = r#"
[image.bb]
ref = "odfs-test/busybox:latest"
network = "none"
commands = ["sh", "cat", "ls", "touch", "id", "whoami", "true", "sleep", "stat", "head"]

[image.data]
ref = "odfs/data:latest"
network = "none"
scratch = ["/var/cache/odfs-scratch"]
commands = ["sqlite3"]

# Debian's shell, in an image with a full /usr and /var.
[command.dsh]
image = "data"
path = "/bin/sh"
"#;

/// Tests that add a top-level directory to the host change every image's
/// view (the next call gets a new container); tests that watch one warm
/// container wait for them.
static TOP_LEVEL: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A host path made for one test, removed on drop (unmounted first if a
/// test mounted something there).
struct HostPath(PathBuf);

impl HostPath {
    fn dir(path: String, owner: Option<&TestUser>) -> HostPath {
        let p = PathBuf::from(path);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        if let Some(u) = owner {
            std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
        }
        HostPath(p)
    }
}

impl Drop for HostPath {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn pid() -> u32 {
    std::process::id()
}

#[test]
fn a_non_root_caller_s_writes_outside_the_old_shared_set_land_on_the_host() {
    let m = TestMount::new(CATALOG);
    let u = TestUser::new();
    let opt = HostPath::dir(format!("/opt/odfs-test-{}", pid()), Some(&u));
    let db = opt.0.join("app.db");
    let o = u.cmd(m.shim("sqlite3")).arg(&db).arg("create table t(a); insert into t values(42)").current_dir("/tmp").output().unwrap();
    assert!(o.status.success(), "{}\n{}", stderr(&o), m.log_text());
    let meta = std::fs::metadata(&db).expect("the database is on the host");
    assert_eq!((meta.uid(), meta.gid()), (u.uid, u.gid));
    let native = Command::new("sqlite3").arg(&db).arg("select a from t").output().unwrap();
    assert_eq!(stdout(&native), "42\n", "{}", stderr(&native));

    // A top-level directory that appears on the host after the image's
    // container is warm: the next call gets a container that has it.
    let o = u.cmd(m.shim("true")).current_dir("/tmp").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let _top = TOP_LEVEL.write().unwrap_or_else(|e| e.into_inner());
    let data = HostPath::dir(format!("/odfs-data-x-{}", pid()), Some(&u));
    let file = data.0.join("f");
    let o = u.cmd(m.shim("sh")).arg("-c").arg("echo new > \"$1\" && cat \"$1\"").arg("sh").arg(&file).current_dir(&data.0).output().unwrap();
    assert_eq!(stdout(&o), "new\n", "{}\n{}", stderr(&o), m.log_text());
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), std::fs::read_to_string(&file).unwrap().as_str()), (u.uid, "new\n"));
}

#[test]
fn host_paths_under_image_owned_directories_are_refused_never_replaced() {
    let m = TestMount::new(CATALOG);
    let only_host = HostPath(PathBuf::from(format!("/etc/odfs-test-{}.json", pid())));
    std::fs::write(&only_host.0, "{\"host\": true}\n").unwrap();
    let name = only_host.0.display().to_string();
    let depth = m.work.components().count() - 1;
    let relative = format!("{}etc/hostname", "../".repeat(depth));
    for args in [vec![name.clone()], vec!["/etc/hostname".into()], vec![format!("--file={name}")], vec![relative]] {
        let o = Command::new(m.shim("cat")).args(&args).current_dir(&m.work).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(126), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed the image's file: {}", stdout(&o));
        assert!(
            err.starts_with("odfs: cat: /etc/") && err.ends_with("is a host path that image bb does not share (the tool would see the image's own /etc); copy it into a shared directory or add it to shared\n"),
            "{args:?}: {err}"
        );
    }
    // The same file through a symlink in a shared directory.
    std::os::unix::fs::symlink("/etc", m.work.join("etc")).unwrap();
    let o = Command::new(m.shim("cat")).arg("etc/hostname").current_dir(&m.work).output().unwrap();
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    // What is the same in every container passes.
    let o = m.sh(r#"echo piped | "$M/cat" /dev/stdin /dev/null && "$M/head" -c 5 /proc/self/status"#);
    assert_eq!(stdout(&o), "piped\nName:", "{}", stderr(&o));
}

#[test]
fn the_image_root_is_read_only_even_for_root() {
    let m = TestMount::new(CATALOG);
    let tag = format!("odfs-test-{}", pid());
    // Paths inside a script are not seen by odfs: the kernel refuses the write.
    let o = m.sh(&format!(r#""$M/dsh" -c 'echo x > /usr/local/{tag}; echo x > /etc/{tag}; mkdir /var/lib/{tag}' 2>&1"#));
    let out = stdout(&o);
    assert_eq!(out.matches("Read-only file system").count(), 3, "{out}");
    let o = m.sh(&format!(r#""$M/dsh" -c 'ls /usr/local/{tag} /etc/{tag} /var/lib/{tag}' 2>&1"#));
    assert_eq!(stdout(&o).matches("No such file").count(), 3, "{}", stdout(&o));
    // The runtime directory is a tmpfs of the container's own, and so is
    // the scratch directory the catalog names.
    let o = m.sh(&format!(r#""$M/sh" -c 'touch /run/{tag} && echo ok'"#));
    assert_eq!(stdout(&o), "ok\n", "{}", stderr(&o));
    let o = m.sh(r#""$M/dsh" -c 'echo x > /var/cache/odfs-scratch/f && cat /var/cache/odfs-scratch/f'"#);
    assert_eq!(stdout(&o), "x\n", "{}", stderr(&o));
}

#[test]
fn share_and_hide_extend_and_narrow_the_view() {
    let shared = HostPath::dir(format!("/etc/odfs-test-share-{}", pid()), None);
    std::fs::write(shared.0.join("f"), "shared\n").unwrap();
    let _top = TOP_LEVEL.read().unwrap_or_else(|e| e.into_inner());
    let hidden = HostPath::dir(format!("/srv/odfs-test-hide-{}", pid()), None);
    std::fs::write(hidden.0.join("f"), "hidden\n").unwrap();
    let m = TestMount::with_files(&[("t.toml", CATALOG)], &["--share", shared.0.to_str().unwrap(), "--hide", "/srv"]);
    let o = Command::new(m.shim("cat")).arg(shared.0.join("f")).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), "shared\n", "{}", stderr(&o));
    let o = Command::new(m.shim("cat")).arg(hidden.0.join("f")).current_dir(&m.work).output().unwrap();
    assert_eq!(o.status.code(), Some(126));
    assert!(stderr(&o).contains("(the tool would see the image's own /srv)"), "{}", stderr(&o));
    let o = m.odfs(&["show", "cat"]);
    let out = stdout(&o);
    let host = out.lines().find(|l| l.starts_with("host view:")).unwrap_or_else(|| panic!("{out}"));
    assert!(host.contains(&shared.0.display().to_string()) && !host.split_whitespace().any(|w| w == "/srv"), "{out}");
}

#[test]
fn host_mounts_made_after_the_container_started_come_and_go() {
    let m = TestMount::new(CATALOG);
    let _top = TOP_LEVEL.read().unwrap_or_else(|e| e.into_inner());
    let dir = HostPath::dir(format!("/mnt/odfs-test-{}", pid()), None);
    let o = Command::new(m.shim("true")).current_dir(&m.work).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let before = m.containers();
    let o = Command::new("mount").args(["-t", "tmpfs", "odfs-test", dir.0.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "mount: {}", stderr(&o));
    std::fs::write(dir.0.join("on-the-stick"), "hello\n").unwrap();
    let o = Command::new(m.shim("cat")).arg(dir.0.join("on-the-stick")).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), "hello\n", "{}", stderr(&o));
    assert_eq!(m.containers(), before, "the warm container served it");
    let o = Command::new("umount").arg(&dir.0).output().unwrap();
    assert!(o.status.success(), "the container held the unmount back: {}", stderr(&o));
    let o = Command::new(m.shim("ls")).arg("-A").arg(&dir.0).current_dir(&m.work).output().unwrap();
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("", Some(0)), "{}", stderr(&o));
    // A bind mount comes and goes the same way.
    let o = Command::new("mount").args(["--bind", m.work.to_str().unwrap(), dir.0.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "mount --bind: {}", stderr(&o));
    std::fs::write(m.work.join("bound"), "bound\n").unwrap();
    let o = Command::new(m.shim("cat")).arg(dir.0.join("bound")).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), "bound\n", "{}", stderr(&o));
    let o = Command::new("umount").arg(&dir.0).output().unwrap();
    assert!(o.status.success(), "the container held the unmount back: {}", stderr(&o));
    let o = Command::new(m.shim("ls")).arg("-A").arg(&dir.0).current_dir(&m.work).output().unwrap();
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("", Some(0)), "{}", stderr(&o));
    assert_eq!(m.containers(), before, "the warm container served it all");
}

#[test]
fn another_mount_under_tmp_unmounts_while_containers_bind_tmp() {
    let first = TestMount::new(CATALOG);
    let mut second = TestMount::new(CATALOG);
    // A container of the first mount made while the second is mounted
    // (its bind of /tmp holds a copy of the second's FUSE mount), one of
    // the second's own, and the first's busy with a tool.
    let mut busy = Command::new(first.shim("sleep")).arg("60").current_dir(&first.work).spawn().unwrap();
    first.wait_running("sleep");
    let o = Command::new(second.shim("true")).current_dir(&second.work).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let container = first.containers()[0].clone();
    let inside = |needle: &Path| stdout(&docker(&["exec", &container, "cat", "/proc/mounts"])).contains(&format!(" {} fuse", needle.display()));
    assert!(inside(&second.mnt), "the bind of /tmp did not bring the second mount along");
    let asked = Instant::now();
    let status = second.stop();
    assert!(status.success(), "{status}");
    assert!(asked.elapsed() < Duration::from_secs(5), "stopping took {:?}", asked.elapsed());
    assert!(!second.mounted(), "the second mount is still there");
    assert!(eventually(Duration::from_secs(2), || !inside(&second.mnt)), "the unmount did not reach the container");
    busy.kill().unwrap();
    busy.wait().unwrap();
}

#[test]
fn the_caller_s_permissions_hold_inside() {
    let m = TestMount::new(CATALOG);
    let (owner, other) = (TestUser::new(), TestUser::new());
    let secret = owner.home.join("secret");
    std::fs::write(&secret, "mine\n").unwrap();
    std::os::unix::fs::chown(&secret, Some(owner.uid), Some(owner.gid)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let roots = HostPath(PathBuf::from(format!("/root/odfs-test-{}", pid())));
    std::fs::write(&roots.0, "root's\n").unwrap();
    std::fs::set_permissions(&roots.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    for file in [&secret, &roots.0] {
        let native = other.cmd("cat").arg(file).current_dir("/tmp").output().unwrap();
        let tool = other.cmd(m.shim("cat")).arg(file).current_dir("/tmp").output().unwrap();
        assert!(!native.status.success() && stderr(&native).contains("Permission denied"), "{}", stderr(&native));
        assert!(!tool.status.success() && stderr(&tool).contains("Permission denied"), "{}: {}", file.display(), stderr(&tool));
        assert!(tool.stdout.is_empty());
    }
    let o = owner.cmd(m.shim("cat")).arg(&secret).current_dir(&owner.home).output().unwrap();
    assert_eq!(stdout(&o), "mine\n", "{}", stderr(&o));
}

#[test]
fn the_caller_s_runtime_directory_and_its_sockets_are_the_host_s() {
    // /run/user/UID holds the ssh agent's and the display's sockets: under
    // the image's /run, it is the host's, and only its owner gets in.
    let _top = TOP_LEVEL.read().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all("/run/user").unwrap();
    let m = TestMount::new(CATALOG);
    let (owner, other) = (TestUser::new(), TestUser::new());
    let dir = HostPath::dir(format!("/run/user/{}", owner.uid), Some(&owner));
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.0.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::chown(&sock, Some(owner.uid), Some(owner.gid)).unwrap();
    let script = format!("test -S {} && echo socket", sock.display());
    let o = owner.cmd(m.shim("sh")).args(["-c", &script]).current_dir("/tmp").output().unwrap();
    assert_eq!(stdout(&o), "socket\n", "{}", stderr(&o));
    let o = other.cmd(m.shim("ls")).arg(&dir.0).current_dir("/tmp").output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    drop(listener);
}

#[test]
fn the_caller_s_names_are_known_with_a_read_only_root() {
    let m = TestMount::new(CATALOG);
    let u = TestUser::new();
    std::fs::write(u.home.join("f"), "x").unwrap();
    std::os::unix::fs::chown(u.home.join("f"), Some(u.uid), Some(u.gid)).unwrap();
    // (busybox's ls -l cuts names to 8 characters: stat shows them whole.)
    let o = u.cmd(m.shim("sh")).args(["-c", "id -un; whoami; id -gn; stat -c %U f; stat -c %G f"]).current_dir(&u.home).output().unwrap();
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, [u.name.as_str(); 5], "{out}\n{}", stderr(&o));
    // Debian's coreutils `ls -l` shows them whole, as the host's does.
    let o = u.cmd(m.shim("dsh")).args(["-c", "ls -l f"]).current_dir(&u.home).output().unwrap();
    let native = u.cmd("ls").args(["-l", "f"]).current_dir(&u.home).output().unwrap();
    let owner = |o: &std::process::Output| stdout(o).split_whitespace().skip(2).take(2).collect::<Vec<_>>().join(" ");
    assert!(owner(&o).starts_with(&format!("{} ", u.name)), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(owner(&o), owner(&native));
    // The container's /run is root's, as on the host: no caller can plant
    // a socket there for the next one.
    let o = u.cmd(m.shim("sh")).args(["-c", "touch /run/planted 2>&1; ls -ld /run"]).current_dir(&u.home).output().unwrap();
    let out = stdout(&o);
    assert!(out.contains("Permission denied") && out.contains("drwxr-xr-x"), "{out}");
    // The image's own accounts stay first; the root it runs on is read-only.
    let o = m.sh(r#""$M/sh" -c 'head -1 /etc/passwd; echo x >> /etc/passwd' 2>&1"#);
    let out = stdout(&o);
    assert!(out.starts_with("root:x:0:0:") && out.contains("Read-only file system"), "{out}");
}

#[test]
fn show_says_what_a_tool_sees() {
    let m = TestMount::new(CATALOG);
    let o = m.odfs(&["show", "cat"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let host = out.lines().find(|l| l.trim_start().starts_with("host view:")).unwrap_or_else(|| panic!("{out}"));
    for dir in ["/home", "/tmp", "/root", "/opt", "/var/tmp"] {
        assert!(host.split_whitespace().any(|w| w == dir), "{dir} missing: {out}");
    }
    let image = out.lines().find(|l| l.trim_start().starts_with("image's own:")).unwrap_or_else(|| panic!("{out}"));
    assert!(image.contains("/etc") && image.contains("/usr") && !image.contains("/home"), "{out}");
}

/// An image with software of its own under /opt (as conda's images have
/// /opt/conda), built once per test run on the engine under test.
const OPT_IMAGE: &str = "odfs-test/opt-filled:latest";

fn opt_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = PathBuf::from(format!("/tmp/odfs-test-optimage-{}", pid()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), format!("FROM {TEST_IMAGE}\nRUN mkdir -p /opt/tool && echo image > /opt/tool/data\n")).unwrap();
        let o = docker(&["build", "-q", "-t", OPT_IMAGE, dir.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(o.status.success(), "docker build: {}", stderr(&o));
    });
}

#[test]
fn an_image_that_fills_opt_keeps_it_and_a_host_path_there_is_refused() {
    opt_image();
    let _top = TOP_LEVEL.read().unwrap_or_else(|e| e.into_inner());
    let catalog = format!("{CATALOG}\n[image.opt]\nref = \"{OPT_IMAGE}\"\nnetwork = \"none\"\n\n[command.opt-cat]\nimage = \"opt\"\npath = \"/bin/cat\"\n");
    let m = TestMount::new(&catalog);
    let host = HostPath::dir(format!("/opt/odfs-test-filled-{}", pid()), None);
    std::fs::write(host.0.join("host.txt"), "host\n").unwrap();
    // The image's own software tree is what the container is for…
    let o = Command::new(m.shim("opt-cat")).arg("/opt/tool/data").current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), "image\n", "{}", stderr(&o));
    // …so a host file under /opt named to it is refused, never replaced…
    let o = Command::new(m.shim("opt-cat")).arg(host.0.join("host.txt")).current_dir(&m.work).output().unwrap();
    assert_eq!(o.status.code(), Some(126), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(err.starts_with("odfs: opt-cat: /opt") && err.contains("is a host path") && err.lines().count() == 1, "{err}");
    // …while an image without /opt of its own sees the host's.
    let o = Command::new(m.shim("cat")).arg(host.0.join("host.txt")).current_dir(&m.work).output().unwrap();
    assert_eq!(stdout(&o), "host\n", "{}", stderr(&o));
    let o = m.odfs(&["show", "opt-cat"]);
    let out = stdout(&o);
    let image = out.lines().find(|l| l.trim_start().starts_with("image's own:")).unwrap_or_else(|| panic!("{out}"));
    assert!(image.split_whitespace().any(|w| w == "/opt"), "{out}");
}

#[test]
fn a_tool_without_a_network_has_loopback_up_and_names_localhost() {
    let m = TestMount::new(CATALOG);
    let u = TestUser::new();
    // Its own namespace: loopback only, up, and the host's name.
    let o = u.cmd(m.shim("sh")).args(["-c", "ip -o link | cut -d: -f2; ip -o addr show lo | grep -c 127.0.0.1; hostname"]).output().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(stdout(&o), format!(" lo\n1\n{}", host), "{}", stderr(&o));
    // The files the engine would write for a network are the host's, as
    // the caller has them, and read-only.
    let o = m.sh(r#""$M/sh" -c "cat /etc/hosts; echo x >> /etc/hosts 2>&1; cat /etc/resolv.conf""#);
    let host = ["/etc/hosts", "/etc/resolv.conf"].map(|f| std::fs::read_to_string(f).unwrap_or_default()).concat();
    assert_eq!(stdout(&o), host, "{}", stderr(&o));
    assert!(stderr(&o).contains("Read-only file system"), "{}", stderr(&o));
    // And a Debian tool resolves localhost through it, as on the host.
    let o = u.cmd(m.shim("dsh")).args(["-c", "getent hosts localhost"]).output().unwrap();
    assert!(stdout(&o).starts_with("127.0.0.1") || stdout(&o).starts_with("::1"), "{}{}", stdout(&o), stderr(&o));
}
