//! Per-project version pins: a `.odfs.toml` in a directory says which of
//! the catalog's versions a bare command name runs for callers whose cwd is
//! at or below it (`[pins] jq = "1.6"`), the nearest file naming the
//! command winning, as mise's and asdf's files do.
//!
//! A project file only chooses among the versions the catalog offers: it
//! names no image, capability, user, mount or environment. It is honoured
//! only when owned by the caller or root and writable by nobody else, so
//! another user cannot choose what a caller's `jq` runs. Parsed files are
//! cached by (device, inode, size, mtime); only commands that have
//! versions look for one at all.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file's name.
pub const FILE: &str = ".odfs.toml";
/// Files larger than this are not read (a pin file is a few lines).
const MAX_SIZE: u64 = 4 << 10;
/// Directories looked at from the cwd up: a cwd nested deeper costs no more.
const MAX_LEVELS: usize = 64;
/// Parsed files kept; the cache starts again when full.
const MAX_CACHED: usize = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PinFile {
    #[serde(default)]
    pins: BTreeMap<String, String>,
}

/// What decides the version of a command in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// No file pins it: the catalog's default.
    Default,
    /// `file` pins it to `version`.
    Pinned { file: PathBuf, version: String },
}

/// A pin file that was passed over, and why (for `odfs doctor` and `show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub file: PathBuf,
    pub why: String,
}

/// What tells a file's versions apart: device, inode, size, mtime.
type Key = (u64, u64, u64, i64, i64);
/// A file's pins, or why it binds nobody.
type Parsed = Result<BTreeMap<String, String>, String>;

#[derive(Default)]
pub struct Pins {
    parsed: Mutex<HashMap<PathBuf, (Key, Parsed)>>,
}

impl Pins {
    /// Which version of `command` a caller `uid` in `cwd` gets, and the
    /// files passed over on the way up.
    pub fn choose(&self, cwd: &Path, command: &str, uid: u32) -> (Choice, Vec<Ignored>) {
        let mut ignored = Vec::new();
        for dir in cwd.ancestors().take(MAX_LEVELS) {
            let file = dir.join(FILE);
            if std::fs::symlink_metadata(&file).is_err() {
                continue;
            }
            match self.read(&file, uid) {
                Ok(pins) => {
                    if let Some(v) = pins.get(command) {
                        return (Choice::Pinned { file, version: v.clone() }, ignored);
                    }
                }
                Err(why) => ignored.push(Ignored { file, why }),
            }
        }
        (Choice::Default, ignored)
    }

    /// The pins of one file, if the caller may be bound by it. Everything
    /// is decided on the file opened, never on its name again: not through
    /// a symlink, without waiting (a FIFO), from its own `fstat`, and no
    /// more than [`MAX_SIZE`] of it read.
    fn read(&self, file: &Path, uid: u32) -> Parsed {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY).open(file);
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err("a symlink".into()),
            Err(e) => return Err(format!("unreadable: {e}")),
        };
        let meta = f.metadata().map_err(|e| format!("unreadable: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("not a regular file".into());
        }
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(format!("owned by uid {}, neither the caller nor root", meta.uid()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!("writable by others (mode {:o})", meta.mode() & 0o777));
        }
        if meta.len() > MAX_SIZE {
            return Err(format!("larger than {} KiB", MAX_SIZE >> 10));
        }
        let key: Key = (meta.dev(), meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
        if let Some((k, pins)) = self.parsed.lock().unwrap().get(file) {
            if *k == key {
                return pins.clone();
            }
        }
        let mut text = String::new();
        let pins = f
            .by_ref()
            .take(MAX_SIZE)
            .read_to_string(&mut text)
            .map_err(|e| format!("unreadable: {e}"))
            .and_then(|_| toml::from_str::<PinFile>(&text).map_err(|_| "not a pin file ([pins] NAME = \"VERSION\")".to_string()))
            .map(|f| f.pins);
        let mut cache = self.parsed.lock().unwrap();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(file.to_path_buf(), (key, pins.clone()));
        pins
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_nearest_file_naming_the_command_wins_and_a_change_is_seen() {
        let root = tempfile::tempdir().unwrap();
        let (outer, inner) = (root.path().join("p"), root.path().join("p/sub/deep"));
        std::fs::create_dir_all(&inner).unwrap();
        write(&outer.join(FILE), "[pins]\njq = \"1.6\"\nrg = \"13\"\n", 0o644);
        write(&outer.join("sub").join(FILE), "[pins]\njq = \"1.7\"\n", 0o644);
        let pins = Pins::default();
        let me = nix::unistd::getuid().as_raw();
        let pinned = |dir: &Path, cmd: &str| match pins.choose(dir, cmd, me).0 {
            Choice::Pinned { version, .. } => Some(version),
            Choice::Default => None,
        };
        assert_eq!(pinned(&inner, "jq").as_deref(), Some("1.7"));
        assert_eq!(pinned(&inner, "rg").as_deref(), Some("13"));
        assert_eq!(pinned(&outer, "jq").as_deref(), Some("1.6"));
        assert_eq!(pinned(root.path(), "jq"), None);
        // Same size, new content: the cache follows the file.
        std::thread::sleep(std::time::Duration::from_millis(10));
        write(&outer.join(FILE), "[pins]\njq = \"1.5\"\nrg = \"13\"\n", 0o644);
        assert_eq!(pinned(&outer, "jq").as_deref(), Some("1.5"));
    }

    #[test]
    fn a_file_others_may_write_or_own_binds_nobody() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join(FILE), "[pins]\njq = \"1.6\"\n", 0o666);
        let pins = Pins::default();
        let (choice, ignored) = pins.choose(root.path(), "jq", 0);
        assert_eq!(choice, Choice::Default);
        assert!(ignored[0].why.contains("writable by others"), "{ignored:?}");
        std::fs::set_permissions(root.path().join(FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        // Owned by this test's user: binds that user (and root's own files bind everyone).
        let (_, ignored) = pins.choose(root.path(), "jq", 4242);
        let me = nix::unistd::getuid().as_raw();
        if me != 4242 && me != 0 {
            assert!(ignored[0].why.contains("neither the caller nor root"), "{ignored:?}");
        }
        write(&root.path().join(FILE), "pins = 3\n", 0o644);
        let (choice, ignored) = pins.choose(root.path(), "jq", me);
        assert_eq!(choice, Choice::Default);
        assert!(ignored[0].why.contains("not a pin file"), "{ignored:?}");
        // A FIFO is passed over at once, never waited on; a symlink is not
        // followed (to /dev/zero, to a file the caller cannot read).
        std::fs::remove_file(root.path().join(FILE)).unwrap();
        nix::unistd::mkfifo(&root.path().join(FILE), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        assert!(pins.choose(root.path(), "jq", me).1[0].why.contains("not a regular file"));
        std::fs::remove_file(root.path().join(FILE)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.path().join(FILE)).unwrap();
        assert_eq!(pins.choose(root.path(), "jq", me).1[0].why, "a symlink");
    }
}
