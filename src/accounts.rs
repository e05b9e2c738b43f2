//! passwd- and group-style files as both the daemon (the files it binds
//! into a container) and the agent (an image's own files) edit them: their
//! entries, and a caller's line appended once, to the same inode.

use std::io::Write;
use std::path::Path;

/// (name, id) of each entry of a passwd- or group-style file.
pub fn entries(content: &str) -> impl Iterator<Item = (&str, u32)> {
    content.lines().filter_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse().ok()?;
        Some((name, id))
    })
}

/// Append `line` for `id` to the file at `path` unless an entry has that
/// id; a missing file is made when `create` says so. An append, never a
/// rewrite: a reader sees the file before or after, and a bind of the file
/// keeps seeing it.
pub fn append_once(path: &Path, id: u32, line: &str, create: bool) -> std::io::Result<()> {
    // Read as bytes: a name or comment field need not be UTF-8, and the
    // ids that matter here are ASCII.
    let content = match std::fs::read(path) {
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other?,
    };
    let content = String::from_utf8_lossy(&content);
    if entries(&content).any(|(_, i)| i == id) {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new().create(create).append(true).open(path)?;
    let sep = if content.is_empty() || content.ends_with('\n') { "" } else { "\n" };
    f.write_all(format!("{sep}{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_third_field_only() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ntcpdump:x:104:110::/nonexistent:/usr/sbin/nologin\n";
        let ids: Vec<u32> = entries(passwd).map(|(_, id)| id).collect();
        assert_eq!(ids, [0, 104]);
        assert_eq!(entries("").count(), 0);
    }

    #[test]
    fn a_line_is_appended_once_and_a_file_made_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        assert!(append_once(&file, 1000, "u:x:1000:1000::/home/u:/bin/sh", false).is_err());
        append_once(&file, 1000, "u:x:1000:1000::/home/u:/bin/sh", true).unwrap();
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"v:x:1001:1001::/:/bin/sh").unwrap();
        append_once(&file, 1000, "again:x:1000:1000::/:/bin/sh", false).unwrap();
        append_once(&file, 1002, "w:x:1002:1002::/:/bin/sh", false).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "u:x:1000:1000::/home/u:/bin/sh\nv:x:1001:1001::/:/bin/sh\nw:x:1002:1002::/:/bin/sh\n");
        // A Latin-1 comment field does not stop the append.
        std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"l:x:1003:1003:Jos\xe9:/:/bin/sh\n").unwrap();
        append_once(&file, 1004, "m:x:1004:1004::/:/bin/sh", false).unwrap();
        assert!(std::fs::read(&file).unwrap().ends_with(b"m:x:1004:1004::/:/bin/sh\n"));
    }
}
