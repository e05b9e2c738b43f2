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
