//! Make the caller known inside the image: append their passwd and group
//! lines when the image lacks that uid or gid. The image's own entries are
//! never replaced (Debian's tcpdump, for one, needs its `tcpdump` user).

use std::io::Write;
use std::sync::Mutex;

use crate::protocol::Identity;

static EDIT: Mutex<()> = Mutex::new(());

/// Whether an `/etc/passwd`- or `/etc/group`-style file has an entry with this id.
fn has_id(content: &str, id: u32) -> bool {
    content
        .lines()
        .filter_map(|l| l.split(':').nth(2))
        .any(|field| field.parse::<u32>().ok() == Some(id))
}

fn ensure_line(file: &str, id: u32, line: &Option<String>) {
    let Some(line) = line else { return };
    let content = std::fs::read_to_string(file).unwrap_or_default();
    if has_id(&content, id) {
        return;
    }
    let _ = std::fs::create_dir_all("/etc");
    let result = std::fs::OpenOptions::new().create(true).append(true).open(file).and_then(|mut f| {
        let sep = if content.is_empty() || content.ends_with('\n') { "" } else { "\n" };
        writeln!(f, "{sep}{line}")
    });
    if let Err(e) = result {
        eprintln!("odfs-agent: cannot add uid/gid {id} to {file}: {e}");
    }
}

pub(super) fn ensure_known(identity: &Identity) {
    let _guard = EDIT.lock().unwrap();
    ensure_line("/etc/passwd", identity.uid, &identity.passwd_line);
    ensure_line("/etc/group", identity.gid, &identity.group_line);
}

#[cfg(test)]
mod tests {
    use super::has_id;

    #[test]
    fn finds_ids_in_the_third_field_only() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:110::/nonexistent:/usr/sbin/nologin\n";
        assert!(has_id(passwd, 0));
        assert!(has_id(passwd, 104));
        assert!(!has_id(passwd, 110));
        assert!(!has_id("", 0));
    }
}
