//! The admin CLI against a running mount: ls, show, add, rm, stop, prewarm,
//! pull, doctor, completions and man page.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn odfs(m: &TestMount, args: &[&str]) -> Output {
    m.odfs(args)
}

fn odfs_as_nobody(m: &TestMount, args: &[&str]) -> Output {
    as_nobody(env!("CARGO_BIN_EXE_odfs"))
        .args(args)
        .arg("--socket")
        .arg(&m.socket)
        .output()
        .unwrap()
}

#[test]
fn ls_and_show_describe_the_catalog() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let o = odfs(&m, &["ls"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).lines().any(|l| l.starts_with("cat ") && l.contains("bb") && l.contains("absent")), "{}", stdout(&o));
    let o = odfs(&m, &["show", "odfs-upper", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["program"].as_str(), v["args"][0].as_str()), (Some("/bin/busybox"), Some("tr")));
    assert!(v["origin"].as_str().unwrap().contains("test.toml:"), "{v}");
    let o = odfs(&m, &["show", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope is not in the catalog"), "{}", stderr(&o));
}

#[test]
fn add_and_rm_change_the_mount_within_a_second() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let o = odfs(&m, &["add", "odfs-date", "--image", TEST_IMAGE, "--path", "/bin/date"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(1), || m.shim("odfs-date").exists()), "not in the mount after 1 s");
    let o = m.sh(r#""$M/odfs-date" +%Y"#);
    assert!(o.status.success() && stdout(&o).trim().len() == 4, "{}{}", stdout(&o), stderr(&o));
    // Only root may change the catalog; only what `add` added can be removed.
    let o = odfs_as_nobody(&m, &["add", "x", "--image", TEST_IMAGE]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
    let o = odfs(&m, &["rm", "cat"]);
    assert!(stderr(&o).contains("is defined at") && stderr(&o).contains("test.toml"), "{}", stderr(&o));
    let o = odfs(&m, &["add", "cat", "--image", TEST_IMAGE]);
    assert!(stderr(&o).contains("already defined"), "{}", stderr(&o));
    let o = odfs(&m, &["rm", "odfs-date"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(1), || !m.shim("odfs-date").exists()), "still in the mount after 1 s");
    // A bare --path is searched on the image's PATH, as in catalog files.
    let o = odfs(&m, &["add", "odfs-upcase", "--image", TEST_IMAGE, "--path", "tr"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(1), || m.shim("odfs-upcase").exists()));
    assert_eq!(stdout(&m.sh(r#"echo abc | "$M/odfs-upcase" a-z A-Z"#)), "ABC\n");
    let o = odfs(&m, &["add", "odfs-bad", "--image", TEST_IMAGE, "--path", "bin/tr"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--path \"bin/tr\" must be absolute or a bare name"), "{}", stderr(&o));
}

#[test]
fn prewarm_and_stop_manage_containers() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let o = odfs(&m, &["prewarm", "cat"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(m.containers().len(), 1, "prewarm started nothing");
    let o = odfs(&m, &["stop", "cat"]);
    assert!(o.status.success() && stdout(&o).contains("stopped: bb"), "{}", stderr(&o));
    assert!(m.containers().is_empty());
    // A container with a running tool is kept unless forced.
    let mut child = Command::new(m.shim("sleep")).arg("30").current_dir(&m.work).stdout(Stdio::null()).spawn().unwrap();
    m.wait_running("sleep");
    let o = odfs(&m, &["stop", "--all"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("still run") && stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = odfs(&m, &["stop", "--all", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status = child.wait().unwrap();
    assert!(!status.success(), "the forced stop did not end the tool");
    assert!(m.containers().is_empty());
}

#[test]
fn pull_reports_present_and_unpullable_images() {
    let catalog = format!("{BUSYBOX_CATALOG}\n[image.gone]\nref = \"localhost:5999/odfs-test/none:1\"\ncommands = [\"ghost\"]\n");
    let m = TestMount::new(&catalog);
    let o = odfs(&m, &["pull", "cat"]);
    assert!(o.status.success() && stdout(&o).contains("odfs-test/busybox:latest: present"), "{}", stderr(&o));
    let o = odfs(&m, &["pull"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("localhost:5999/odfs-test/none:1: image"), "{}", stderr(&o));
}

#[test]
fn doctor_checks_the_setup_and_finds_stale_mounts() {
    let mut m = TestMount::new(BUSYBOX_CATALOG);
    let o = m.sh_cmd(&format!("PATH=/usr/bin:/bin:$M exec {} doctor --socket {}", env!("CARGO_BIN_EXE_odfs"), m.socket.display())).output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("ok   mount at {}", m.mnt.display())), "{out}");
    assert!(out.contains("is last on PATH"), "{out}");
    assert!(out.contains("installed natively"), "{out}");
    // What tools see of the host: /tmp and /home from it, /usr the image's;
    // setup makes the host's mounts shared, so later mounts reach tools.
    let view = out.lines().find(|l| l.contains("tools see the host's")).unwrap_or_else(|| panic!("no view line: {out}"));
    let (host, image) = view.split_once("the image keeps").unwrap();
    assert!(host.contains(" /tmp") && host.contains(" /home") && host.contains("/run/user"), "{view}");
    assert!(image.contains("/usr") && image.contains("/etc") && !image.contains("/tmp"), "{view}");
    assert!(out.contains("ok   host mounts are shared"), "{out}");
    // setup registers crun with the engine: containers ask for it.
    assert!(out.contains("note OCI runtime: crun, asked per container"), "{out}");
    assert!(m.sh(r#""$M/true""#).status.success());
    let c = m.containers()[0].clone();
    assert_eq!(stdout(&docker(&["inspect", "-f", "{{.HostConfig.Runtime}}", &c])).trim(), "crun");
    m.crash();
    let o = odfs(&m, &["doctor"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(&format!("FAIL stale mount at {}", m.mnt.display())), "{}", stdout(&o));
    m.start(&[]);
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["completions", "bash"]).output().unwrap();
    assert!(o.status.success() && stdout(&o).contains("prewarm"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).arg("man").output().unwrap();
    assert!(o.status.success() && stdout(&o).contains(".TH odfs"), "{}", stdout(&o));
}

#[test]
fn a_scan_container_left_by_a_crash_is_removed_at_the_next_start() {
    let mut m = TestMount::new(BUSYBOX_CATALOG);
    let name = format!("odfs-test-scan-left-{}", m.id);
    let mount_label = format!("io.odfs.mount={}", m.id);
    let o = docker(&[
        "create", "--name", &name, "--label", "io.odfs.managed=true", "--label", "io.odfs.scan=true", "--label", &mount_label,
        TEST_IMAGE, "/.odfs-scan-never-runs",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    m.crash();
    m.start(&[]);
    let left = || stdout(&docker(&["ps", "-aq", "--filter", &format!("name={name}")]));
    assert!(eventually(Duration::from_secs(10), || left().trim().is_empty()), "still there: {}", left());
}

#[test]
fn scan_lists_an_images_executables_without_running_it_and_can_map_them() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let o = odfs(&m, &["scan", TEST_IMAGE]);
    assert!(o.status.success(), "{}", stderr(&o));
    let paths: Vec<String> = stdout(&o).lines().map(String::from).collect();
    for p in ["/bin/sh", "/bin/busybox", "/usr/bin/awk"] {
        assert!(paths.contains(&p.to_string()), "{p} missing from {paths:?}");
    }
    // First PATH match only: `sh` is listed once.
    assert_eq!(paths.iter().filter(|p| p.ends_with("/sh")).count(), 1);
    // This mount goes on indexing its local images meanwhile, each scan
    // with a short-lived container: a leak is one that stays.
    let mine = format!("label=io.odfs.mount={}", m.id);
    let left = || stdout(&docker(&["ps", "-aq", "--filter", &mine, "--filter", "label=io.odfs.scan=true"]));
    assert!(eventually(Duration::from_secs(60), || left().trim().is_empty()), "the scan left containers: {}", left());
    assert!(!m.shim("awk").exists());
    // The scan fed the index the command-not-found hook reads.
    let o = odfs(&m, &["hint", "awk"]);
    assert!(stderr(&o).contains(&format!("awk is in image {TEST_IMAGE} (/usr/bin/awk)")), "{}", stderr(&o));
    let o = odfs(&m, &["scan", TEST_IMAGE, "--add"]);
    assert!(o.status.success() && stdout(&o).contains("already defined elsewhere"), "{}", stderr(&o));
    assert!(eventually(Duration::from_secs(1), || m.shim("awk").exists()));
    assert_eq!(stdout(&m.sh(r#""$M/awk" 'BEGIN{print 6*7}'"#)), "42\n");
    // Commands of the test catalog stay as that file defines them.
    let o = odfs(&m, &["show", "cat", "--json"]);
    assert!(stdout(&o).contains("test.toml"), "{}", stdout(&o));
    let o = odfs(&m, &["provides", "wc"]);
    assert!(stdout(&o).lines().any(|l| l == format!("{TEST_IMAGE} /usr/bin/wc")), "{}{}", stdout(&o), stderr(&o));
    let o = odfs(&m, &["provides", "definitely-not-a-tool"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn whalebrew_and_shpc_packages_import_into_a_catalog_the_mount_serves() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    // A whalebrew image whose labels and entry point say how it runs.
    let ctx = m.root.join("whalebrew-image");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM odfs-test/busybox:latest\nLABEL io.whalebrew.config.networks='[\"host\"]'\nENTRYPOINT [\"/bin/busybox\", \"echo\", \"hello\"]\n",
    )
    .unwrap();
    let built = docker(&["build", "-q", "-t", "odfs-test/whalebrew-hello:latest", ctx.to_str().unwrap()]);
    assert!(built.status.success(), "{}", stderr(&built));

    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let out = m.catalog.join("whalebrew.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_odfs"))
        .args(["import", "whalebrew"])
        .arg(data.join("whalebrew"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let notes = stderr(&o);
    assert!(notes.contains("volume \"~/.config/shout:/config\" is not mounted"), "{notes}");
    assert!(notes.contains("2 command(s)"), "{notes}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("network = \"host\""), "the image's label was not read:\n{text}");

    let o = Command::new(env!("CARGO_BIN_EXE_odfs"))
        .args(["import", "shpc"])
        .arg(data.join("shpc/registry"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no `docker:` image"), "{}", stderr(&o));
    std::fs::write(m.catalog.join("shpc.toml"), &o.stdout).unwrap();

    // The live catalog serves them: entry point, fixed args, mapped aliases.
    assert!(eventually(Duration::from_secs(5), || m.shim("hello").exists() && m.shim("shpc-wc").exists()), "{}", m.log_text());
    assert_eq!(stdout(&m.sh(r#""$M/hello" world"#)), "hello world\n");
    assert_eq!(stdout(&m.sh(r#"echo quiet | "$M/shout""#)), "QUIET\n");
    assert_eq!(stdout(&m.sh(r#"printf 'a b c' | "$M/shpc-wc" -w"#)).trim(), "3");
    // Nothing was found to import: a clear failure, nothing written.
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["import", "shpc"]).arg(&m.work).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no packages found"), "{}", stderr(&o));
    docker(&["rmi", "odfs-test/whalebrew-hello:latest"]);
}

#[test]
fn the_command_not_found_hook_names_the_image_or_the_mount_at_once() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let hook = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-units/profile.d/odfs-command-not-found.sh");
    let odfs_dir = std::path::Path::new(env!("CARGO_BIN_EXE_odfs")).parent().unwrap().to_path_buf();
    // A bash whose PATH holds odfs when the hook is sourced, and nothing after.
    let run = |line: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(format!(". {}; PATH=/nonexistent; {line}", hook.display()))
            .env("PATH", format!("{}:/usr/bin:/bin", odfs_dir.display()))
            .env("ODFS_SOCKET", &m.socket)
            .env("ODFS_MOUNT", &m.mnt)
            .output()
            .unwrap()
    };
    // An image on this machine has it, once `odfs provides` indexed them.
    assert!(odfs(&m, &["provides", "rev"]).status.success());
    let o = run("rev");
    assert_eq!(o.status.code(), Some(127));
    assert!(stderr(&o).contains("sudo odfs add rev --image odfs-test/busybox:latest --path /"), "{}", stderr(&o));
    assert!(stderr(&o).ends_with("rev: command not found\n"), "{}", stderr(&o));
    // The catalog has it, but the mount is not on PATH.
    let o = run("odfs-echo hi");
    assert!(stderr(&o).contains(&format!("odfs-echo is served by odfs (image {TEST_IMAGE}) at {}/odfs-echo", m.mnt.display())), "{}", stderr(&o));
    // Nobody has it: only the shell's usual line, and 127.
    let o = run("odfs-no-such-tool");
    assert_eq!((o.status.code(), stderr(&o)), (Some(127), "odfs-no-such-tool: command not found\n".to_string()));
    // No daemon: the same, at once.
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(". {}; PATH=/nonexistent; rev", hook.display()))
        .env("PATH", format!("{}:/usr/bin:/bin", odfs_dir.display()))
        .env("ODFS_SOCKET", m.root.join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!((o.status.code(), stderr(&o)), (Some(127), "rev: command not found\n".to_string()));
}

#[test]
fn scan_is_root_s_alone_and_says_so_in_one_line() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    for (args, shown) in [(vec!["scan", TEST_IMAGE], TEST_IMAGE.to_string()), (vec!["scan", TEST_IMAGE, "--add"], format!("{TEST_IMAGE} --add"))] {
        let o = odfs_as_nobody(&m, &args);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(stderr(&o), format!("odfs: scan reads any local image, private ones too, and needs root (sudo odfs scan {shown})\n"));
        assert_eq!(stdout(&o), "");
    }
    assert!(!m.shim("awk").exists(), "a refused scan --add maps nothing");
    let o = odfs(&m, &["scan", TEST_IMAGE]);
    assert!(o.status.success() && stdout(&o).lines().any(|l| l == "/bin/busybox"), "{}", stderr(&o));
}

/// A CRI engine a kubelet manages is refused at start and by doctor, in
/// one line: the kubelet would stop odfs's pod sandboxes mid-call. The
/// kubelet here is a stand-in process of that name with the flag a node's
/// has; the engine socket is a listening socket nobody serves, since the
/// check comes before any request.
#[test]
fn a_cri_engine_a_kubelet_manages_is_refused_with_one_line() {
    prepare();
    let dir = std::path::PathBuf::from(format!("/tmp/odfs-test-kubelet-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("catalog")).unwrap();
    std::fs::write(dir.join("catalog/t.toml"), BUSYBOX_CATALOG).unwrap();
    let _gone = Defer(|| drop(std::fs::remove_dir_all(&dir)));
    let socket = dir.join("containerd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let script = "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'kubelet', 0, 0, 0); sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(600)";
    let mut kubelet = Command::new("python3")
        .args(["-c", script, &format!("--container-runtime-endpoint=unix://{}", socket.display())])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(kubelet.stdout.take().unwrap()), &mut up).unwrap();
    let pid = kubelet.id();
    let _stop = Defer(|| {
        let _ = kubelet.kill();
        let _ = kubelet.wait();
    });
    let engine = format!("cri+unix://{}", socket.display());
    let mnt = dir.join("mnt");
    let o = Command::new(env!("CARGO_BIN_EXE_odfs"))
        .args(["mount", "--state"])
        .arg(dir.join("state"))
        .args(["--catalog"])
        .arg(dir.join("catalog"))
        .args(["--engine", &engine])
        .arg("--agent")
        .arg(agent())
        .arg("--launcher")
        .arg(launcher())
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(!o.status.success(), "odfs mount served an engine a kubelet manages");
    let err = stderr(&o);
    let line = format!("the kubelet on this node (pid {}) manages the CRI engine at {}", pid, socket.display());
    // The daemon's log goes to stderr too: the refusal is its last line.
    assert!(err.trim_end().lines().last().is_some_and(|l| l.starts_with(&format!("odfs: {line}"))), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_odfs")).args(["doctor", "--socket"]).arg(dir.join("none.sock")).env("DOCKER_HOST", &engine).output().unwrap();
    assert!(stdout(&o).lines().any(|l| l.starts_with("FAIL") && l.contains(&line)), "{}", stdout(&o));
}
