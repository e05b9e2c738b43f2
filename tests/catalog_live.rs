//! The catalog is live: edits appear in the mount within a second, removed
//! commands vanish, running tools are not disturbed; shims carry xattrs.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn xattr(path: &Path, name: &str) -> Option<String> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: getxattr writes at most buf.len() bytes into buf.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

const EXTRA: &str = "[image.extra]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\ncommands = [\"wc\", \"sleep\"]\n";

#[test]
fn added_and_removed_commands_show_up_without_remount() {
    let m = TestMount::new(BUSYBOX_CATALOG.replace("\"wc\", ", "").replace("\"sleep\", ", "").as_str());
    // A miss is cached by the kernel (negative entry); the reload must drop it.
    assert!(!m.shim("wc").exists());
    std::fs::write(m.catalog.join("extra.toml"), EXTRA).unwrap();
    assert!(eventually(Duration::from_secs(3), || m.shim("wc").exists()), "wc never appeared");
    let listed: Vec<String> = std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(listed.contains(&"wc".to_string()), "{listed:?}");
    let o = m.sh(r#"printf abc | "$M/wc" -c"#);
    assert_eq!(stdout(&o).trim(), "3", "{}", stderr(&o));

    // A tool of a command about to be removed runs to its end.
    let running = Command::new(m.shim("sleep")).arg("3").current_dir(&m.work).stdout(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(m.catalog.join("extra.toml")).unwrap();
    assert!(eventually(Duration::from_secs(3), || !m.shim("wc").exists()), "wc never vanished");
    assert!(!std::fs::read_dir(&m.mnt).unwrap().any(|e| e.unwrap().file_name() == "wc"));
    assert!(running.wait_with_output().unwrap().status.success());
    // The rest kept serving.
    assert_eq!(stdout(&m.sh(r#""$M/echo" still"#)), "still\n");
}

#[test]
fn a_broken_edit_keeps_the_good_files_serving() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    std::fs::write(m.catalog.join("zz.toml"), "[image.bad\nref = 1\n").unwrap();
    assert!(eventually(Duration::from_secs(3), || m.log_text().contains("zz.toml:1")), "{}", m.log_text());
    assert!(m.shim("cat").exists());
    assert_eq!(stdout(&m.sh(r#"echo ok | "$M/cat""#)), "ok\n");
}

#[test]
fn shims_say_their_image_and_its_state_in_xattrs() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let shim = m.shim("true");
    assert_eq!(xattr(&shim, "user.odfs.image").as_deref(), Some(TEST_IMAGE));
    assert_eq!(xattr(&shim, "user.odfs.state").as_deref(), Some("absent"));
    assert!(m.sh(r#""$M/true""#).status.success());
    assert_eq!(xattr(&shim, "user.odfs.state").as_deref(), Some("warm"));
    assert_eq!(xattr(&shim, "user.other"), None);
}

/// A process's open-files limits, soft and hard, as `/proc/PID/limits` says.
fn open_files_limits(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("an open-files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

/// `prlimit --nofile=SOFT:HARD` of another process (util-linux).
fn set_open_files_limits(pid: i32, soft: &str, hard: &str) -> std::process::Output {
    Command::new("prlimit").arg(format!("--pid={pid}")).arg(format!("--nofile={soft}:{hard}")).output().expect("prlimit (util-linux)")
}

#[test]
fn a_reload_out_of_file_descriptors_keeps_every_command_and_the_next_one_serves_the_edit() {
    let m = TestMount::new(BUSYBOX_CATALOG);
    let listed = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    let before = listed();
    assert!(before.contains(&"cat".to_string()) && before.len() > 10, "{before:?}");
    let pid = m.daemon_pid();
    let (soft, hard) = open_files_limits(pid);
    // The daemon keeps the descriptors it holds (the mount's, the log's),
    // and every one it opens from now on fails with EMFILE, as when it
    // has run out of them. (The soft limit: a hard one lowered could not
    // be raised again without CAP_SYS_RESOURCE.)
    let o = set_open_files_limits(pid, "3", &hard);
    assert!(o.status.success(), "prlimit: {}", stderr(&o));
    let _restore = Defer(|| drop(set_open_files_limits(pid, &soft, &hard)));
    // An admin's edit: the daemon's poll sees the directory change, or
    // cannot look at it, and reloads.
    std::fs::write(m.catalog.join("extra.toml"), "[image.extra]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\ncommands = [\"odfs-new\"]\n").unwrap();
    assert!(eventually(Duration::from_secs(10), || m.log_text().contains("catalog not reloaded")), "{}", m.log_text());
    let log = m.log_text();
    let warning = log.lines().find(|l| l.contains("catalog not reloaded")).unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&format!("cannot read catalog directory {}: Too many open files", m.catalog.display())), "{warning}");
    assert!(warning.contains(&format!("the previous catalog, with {} commands, stays served", before.len())), "{warning}");
    // Every user still has every command, polls after polls.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(listed(), before);
    assert!(!m.log_text().contains("catalog reloaded"), "{}", m.log_text());
    assert_eq!(m.log_text().matches("catalog not reloaded").count(), 1, "one warning per cause:\n{}", m.log_text());

    let o = set_open_files_limits(pid, &soft, &hard);
    assert!(o.status.success(), "prlimit: {}", stderr(&o));
    assert!(eventually(Duration::from_secs(5), || m.shim("odfs-new").exists()), "the edit was never served:\n{}", m.log_text());
    assert!(m.log_text().contains("catalog readable again"), "{}", m.log_text());
    assert_eq!(listed().len(), before.len() + 1);
    assert_eq!(stdout(&m.sh(r#""$M/echo" after"#)), "after\n");
}
