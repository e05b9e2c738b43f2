//! The documentation beside the shims: the man pages and shell completions
//! of the catalog's commands, taken from their images, laid out as a
//! `share` directory next to the mount's `bin`, where man-db (which turns
//! a PATH entry `DIR/bin` into the manpath `DIR/share/man`),
//! bash-completion (which looks in `../share/bash-completion/completions`
//! beside a command and in `XDG_DATA_DIRS`), zsh (`fpath`) and fish
//! (`XDG_DATA_DIRS`) find them.
//!
//! Which file of an image goes where is pure ([`place`]); building a tree
//! ([`Layout::write`]) is plain files. The daemon fetches and refreshes
//! (`daemon::docs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What kind of file, by the image directory it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// The image directories read, and the kind of what is in each. Debian
/// puts zsh's in `vendor-completions`, upstream in `site-functions`; fish
/// packages use either of its two.
pub const SOURCES: [(&str, Kind); 6] = [
    ("/usr/share/man", Kind::Man),
    ("/usr/share/bash-completion/completions", Kind::Bash),
    ("/usr/share/zsh/vendor-completions", Kind::Zsh),
    ("/usr/share/zsh/site-functions", Kind::Zsh),
    ("/usr/share/fish/vendor_completions.d", Kind::Fish),
    ("/usr/share/fish/completions", Kind::Fish),
];

/// A file taken from an image: where it goes under `share/`, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Doc {
    pub path: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// No single file larger than this is taken (a man page is kilobytes).
pub const MAX_FILE: u64 = 4 << 20;
/// Nor more than this from one image in all, links' copies included…
pub const MAX_IMAGE: u64 = 64 << 20;
/// …nor more files than this.
pub const MAX_FILES: usize = 2000;

/// Where a file of an image's `kind` directory, at `rel` inside it (as the
/// engine's archive names it, under the directory's own name), goes under
/// `share/`, if it documents `command`; `None` for anything else. Only
/// plain names pass: nothing an image names can leave the tree.
pub fn place(kind: Kind, rel: &str, command: &str) -> Option<String> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.iter().any(|p| *p == ".." || p.starts_with('.')) {
        return None;
    }
    let file = *parts.last()?;
    match kind {
        Kind::Man => {
            // [locale/]manN/NAME.N[suffix][.gz|.bz2|.xz|.zst]
            let (dirs, _) = parts.split_at(parts.len() - 1);
            let section_dir = *dirs.last()?;
            let section = section_dir.strip_prefix("man")?;
            if section.is_empty() || dirs.len() > 2 {
                return None;
            }
            let plain = [".gz", ".bz2", ".xz", ".zst"].iter().find_map(|z| file.strip_suffix(z)).unwrap_or(file);
            let (name, page_section) = plain.rsplit_once('.')?;
            let first = section.chars().next()?;
            if name != command || !page_section.starts_with(first) {
                return None;
            }
            Some(format!("man/{}", dirs.iter().chain([&file]).copied().collect::<Vec<_>>().join("/")))
        }
        Kind::Bash => (parts.len() == 1 && file == command).then(|| format!("bash-completion/completions/{file}")),
        Kind::Zsh => (parts.len() == 1 && file.strip_prefix('_') == Some(command)).then(|| format!("zsh/site-functions/{file}")),
        Kind::Fish => (parts.len() == 1 && file.strip_suffix(".fish") == Some(command)).then(|| format!("fish/vendor_completions.d/{file}")),
    }
}

/// The whole `share/` tree: what each path holds. Earlier entries win (a
/// command's own image's file over another's of the same name).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Layout {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Layout {
    pub fn add(&mut self, doc: Doc) {
        self.files.entry(doc.path).or_insert(doc.data);
    }

    /// Write the tree into `dir` (made, or emptied of what was there), with
    /// root's own modes: readable by all, writable by none but root.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        for sub in ["man", "bash-completion/completions", "zsh/site-functions", "fish/vendor_completions.d"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for (path, data) in &self.files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, data)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
        }
        set_dir_modes(dir)
    }
}

fn set_dir_modes(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

/// man-db's configuration, where a site makes a manpath a system one.
pub const MANDB_CONFIG: &str = "/etc/manpath.config";

/// Whether man-db takes `man` (a manpath) as a system one: a `MANDB_MAP`
/// line of its configuration (`config`) names it or a directory above it
/// (man-db's own test: that line's directory is a prefix of the path).
/// Then man-db keeps its index and cat pages in the cache directory the
/// line gives. Any other manpath is its own cache directory to man-db, and
/// `mandb` run as root gives it, with the cat directories it makes there,
/// to man-db's `man` user.
pub fn mandb_maps(config: &str, man: &Path) -> bool {
    let man = man.to_string_lossy();
    config.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("MANDB_MAP") && words.next().is_some_and(|dir| man.starts_with(dir)) && words.next().is_some()
    })
}

/// Where a mount serves its `share`: beside it when it is a `bin`
/// directory, else where `--share-dir` says (`None`: nowhere).
pub fn share_dir(mountpoint: &Path, given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(d) => Some(d.to_path_buf()),
        None if mountpoint.file_name().is_some_and(|n| n == "bin") => mountpoint.parent().map(|p| p.join("share")),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_of_the_command_in_every_section_and_locale() {
        assert_eq!(place(Kind::Man, "man1/jq.1.gz", "jq").as_deref(), Some("man/man1/jq.1.gz"));
        assert_eq!(place(Kind::Man, "de/man1/jq.1.gz", "jq").as_deref(), Some("man/de/man1/jq.1.gz"));
        assert_eq!(place(Kind::Man, "man8/tcpdump.8.gz", "tcpdump").as_deref(), Some("man/man8/tcpdump.8.gz"));
        assert_eq!(place(Kind::Man, "man3/printf.3posix.gz", "printf").as_deref(), Some("man/man3/printf.3posix.gz"));
        assert_eq!(place(Kind::Man, "man1/python3.11.1.gz", "python3.11").as_deref(), Some("man/man1/python3.11.1.gz"));
        // Another command's page, a page in the wrong section's directory,
        // a name that only starts like it: none of these.
        assert_eq!(place(Kind::Man, "man1/jqx.1.gz", "jq"), None);
        assert_eq!(place(Kind::Man, "man1/jq.5.gz", "jq"), None);
        assert_eq!(place(Kind::Man, "man1/jq", "jq"), None);
        assert_eq!(place(Kind::Man, "a/b/man1/jq.1", "jq"), None);
        assert_eq!(place(Kind::Man, "manä/jq.ä", "jq").as_deref(), Some("man/manä/jq.ä"));
        assert_eq!(place(Kind::Man, "man\u{fffd}/jq.1", "jq"), None);
    }

    #[test]
    fn completions_by_each_shell_s_naming() {
        assert_eq!(place(Kind::Bash, "rg", "rg").as_deref(), Some("bash-completion/completions/rg"));
        assert_eq!(place(Kind::Zsh, "_rg", "rg").as_deref(), Some("zsh/site-functions/_rg"));
        assert_eq!(place(Kind::Fish, "rg.fish", "rg").as_deref(), Some("fish/vendor_completions.d/rg.fish"));
        assert_eq!(place(Kind::Bash, "rgx", "rg"), None);
        assert_eq!(place(Kind::Zsh, "rg", "rg"), None);
    }

    #[test]
    fn nothing_an_image_names_leaves_the_tree() {
        for rel in ["../man1/jq.1", "man1/../../jq.1", ".hidden/man1/jq.1", "/etc/man1/jq.1/.."] {
            assert_eq!(place(Kind::Man, rel, "jq"), None, "{rel}");
        }
        assert_eq!(place(Kind::Bash, "../jq", "jq"), None);
    }

    #[test]
    fn a_tree_is_written_readable_by_all_and_rewritten_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        let mut l = Layout::default();
        l.add(Doc { path: "man/man1/jq.1.gz".into(), data: b"first".to_vec() });
        l.add(Doc { path: "man/man1/jq.1.gz".into(), data: b"second".to_vec() });
        l.write(&share).unwrap();
        assert_eq!(std::fs::read(share.join("man/man1/jq.1.gz")).unwrap(), b"first");
        assert_eq!(std::fs::metadata(share.join("man/man1")).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(share.join("fish/vendor_completions.d").is_dir());
        Layout::default().write(&share).unwrap();
        assert!(!share.join("man/man1/jq.1.gz").exists());
    }

    #[test]
    fn a_manpath_is_a_system_one_when_a_mandb_map_line_names_it_or_a_directory_above() {
        let config = "# MANDB_MAP\t/opt/od/share/man\t/x\nMANDATORY_MANPATH\t/usr/share/man\nMANDB_MAP\t/usr/share/man\t/var/cache/man\n";
        assert!(!mandb_maps(config, Path::new("/opt/od/share/man")), "a comment registers nothing");
        assert!(mandb_maps(config, Path::new("/usr/share/man")) && mandb_maps(config, Path::new("/usr/share/man/de")));
        let registered = format!("{config}MANDB_MAP   /opt/od/share/man   /var/cache/man/odfs\n");
        assert!(mandb_maps(&registered, Path::new("/opt/od/share/man")));
        assert!(!mandb_maps(&registered, Path::new("/srv/doc/man")));
        assert!(!mandb_maps("MANDB_MAP /opt/od/share/man\n", Path::new("/opt/od/share/man")), "no cache directory: no map");
    }

    #[test]
    fn the_share_directory_is_beside_a_bin_mount() {
        assert_eq!(share_dir(Path::new("/opt/od/bin"), None), Some(PathBuf::from("/opt/od/share")));
        assert_eq!(share_dir(Path::new("/srv/tools"), None), None);
        assert_eq!(share_dir(Path::new("/srv/tools"), Some(Path::new("/srv/doc"))), Some(PathBuf::from("/srv/doc")));
    }
}
