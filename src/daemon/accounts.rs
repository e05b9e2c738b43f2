//! The passwd and group files a container's tools see: generated in the
//! container's run dir and bound read-only over the image's, so the image's
//! root stays read-only. The image's own entries come first (its software
//! needs its users: Debian's tcpdump runs as `tcpdump`), then the host's that
//! do not clash with them, then callers the host knows only through NSS.
//! Files only grow, by appends to the same inode (a file bind pins it), so
//! a reader inside never sees one half written.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::backend::ImageFacts;

/// Appends to every container's files go one at a time.
static EDIT: Mutex<()> = Mutex::new(());

use crate::accounts::entries;

/// `image`, then the lines of `host` whose name and id the image does not use.
fn merge(image: &str, host: &str) -> String {
    let taken: Vec<(&str, u32)> = entries(image).collect();
    let mut out = String::from(image);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for line in host.lines() {
        let Some((name, id)) = entries(line).next() else { continue };
        if !taken.iter().any(|&(n, i)| n == name || i == id) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Write a new container's `passwd` and `group` into its run dir; returns
/// their paths.
pub fn seed(run: &Path, facts: &ImageFacts) -> std::io::Result<(PathBuf, PathBuf)> {
    let host = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let files = [("passwd", &facts.passwd, host("/etc/passwd")), ("group", &facts.group, host("/etc/group"))];
    let mut paths = Vec::new();
    for (name, image, host) in files {
        let path = run.join(name);
        let tmp = run.join(format!(".{name}.new"));
        std::fs::write(&tmp, merge(image, &host))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, &path)?;
        paths.push(path);
    }
    Ok((paths.remove(0), paths.remove(0)))
}

/// Make the caller known in a container whose run dir is `run`.
pub fn ensure_known(run: &Path, uid: u32, gid: u32, passwd_line: Option<&str>, group_line: Option<&str>) -> std::io::Result<()> {
    let _guard = EDIT.lock().unwrap();
    for (file, id, line) in [("passwd", uid, passwd_line), ("group", gid, group_line)] {
        if let Some(line) = line {
            crate::accounts::append_once(&run.join(file), id, line, false)?;
        }
    }
    Ok(())
}

/// A passwd or group field as the files allow: no separator, no line end.
pub fn valid_field(field: &str) -> bool {
    !field.contains([':', '\n', '\r', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_s_entries_come_first_and_clashing_host_ones_are_left_out() {
        let image = "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:110::/nonexistent:/usr/sbin/nologin";
        let host = "root:x:0:0:root:/root:/bin/bash\nsystemd-network:x:104:104::/:/bin/false\nalice:x:1000:1000::/home/alice:/bin/bash\ntcpdump:x:999:999::/:/bin/false\n";
        assert_eq!(merge(image, host), format!("{image}\nalice:x:1000:1000::/home/alice:/bin/bash\n"));
        assert_eq!(merge("", "a:x:5:5::/:/bin/sh\n"), "a:x:5:5::/:/bin/sh\n");
    }

    #[test]
    fn callers_are_appended_once_to_the_same_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let facts = ImageFacts { passwd: "root:x:0:0:root:/root:/bin/sh".into(), group: "root:x:0:".into(), ..Default::default() };
        let (passwd, _) = seed(dir.path(), &facts).unwrap();
        let inode = std::fs::metadata(&passwd).unwrap().ino();
        for _ in 0..2 {
            ensure_known(dir.path(), 4242, 4242, Some("ldapuser:x:4242:4242::/home/l:/bin/sh"), Some("ldapgroup:x:4242:")).unwrap();
        }
        let text = std::fs::read_to_string(&passwd).unwrap();
        assert!(text.starts_with("root:x:0:0:root:/root:/bin/sh\n"), "{text}");
        assert_eq!(text.matches("ldapuser").count(), 1, "{text}");
        assert_eq!(std::fs::metadata(&passwd).unwrap().ino(), inode, "appended in place");
        assert!(std::fs::read_to_string(dir.path().join("group")).unwrap().contains("ldapgroup:x:4242:\n"));
        assert!(!valid_field("a:b") && !valid_field("a\nroot") && valid_field("Alice Example"));
    }
}
