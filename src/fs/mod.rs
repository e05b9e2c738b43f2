//! The shim filesystem as plain logic: one read-only directory holding one
//! executable text file per catalog command. No fuser types here, so it is
//! tested without a kernel mount; [`crate::fuse`] only translates.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::SystemTime;

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes of one node; owner is always root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub mtime: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("read-only file system")]
    ReadOnly,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
}

impl FsError {
    pub fn errno(self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
        }
    }
}

/// Name ↔ inode table. Inodes are never reused for another name while the
/// mount lives, so a kernel cache entry can never point at the wrong shim.
#[derive(Default)]
struct Table {
    by_name: BTreeMap<String, u64>,
    by_ino: HashMap<u64, String>,
    ever: HashMap<String, u64>,
    next: u64,
}

pub struct ShimFs {
    table: RwLock<Table>,
    /// `#!LAUNCHER SOCKET\n`, the same for every shim.
    text: Vec<u8>,
    mtime: SystemTime,
    /// Called with the command name when a shim is opened: an exec is
    /// probably on its way, so its container can start warming now.
    on_open: Box<dyn Fn(&str) + Send + Sync>,
}

impl ShimFs {
    pub fn new(text: Vec<u8>, on_open: Box<dyn Fn(&str) + Send + Sync>) -> ShimFs {
        ShimFs { table: RwLock::new(Table { next: ROOT_INO + 1, ..Default::default() }), text, mtime: SystemTime::now(), on_open }
    }

    /// Replace the listed commands (catalog load or reload).
    pub fn set_commands<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut t = self.table.write().unwrap();
        t.by_name.clear();
        t.by_ino.clear();
        for name in names {
            let ino = match t.ever.get(name) {
                Some(&i) => i,
                None => {
                    let i = t.next;
                    t.next += 1;
                    t.ever.insert(name.to_string(), i);
                    i
                }
            };
            t.by_name.insert(name.to_string(), ino);
            t.by_ino.insert(ino, name.to_string());
        }
    }

    fn dir_attr(&self) -> Attr {
        Attr { ino: ROOT_INO, kind: Kind::Dir, size: 0, perm: 0o555, mtime: self.mtime }
    }

    fn shim_attr(&self, ino: u64) -> Attr {
        Attr { ino, kind: Kind::File, size: self.text.len() as u64, perm: 0o755, mtime: self.mtime }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        if parent != ROOT_INO {
            return Err(FsError::NotDir);
        }
        let name = std::str::from_utf8(name).map_err(|_| FsError::NotFound)?;
        let t = self.table.read().unwrap();
        t.by_name.get(name).map(|&ino| self.shim_attr(ino)).ok_or(FsError::NotFound)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(self.dir_attr());
        }
        let t = self.table.read().unwrap();
        t.by_ino.contains_key(&ino).then(|| self.shim_attr(ino)).ok_or(FsError::NotFound)
    }

    /// Directory entries from `offset` on: `.`, `..`, then shims by name.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<(u64, Kind, String)>, FsError> {
        if ino != ROOT_INO {
            return Err(if self.getattr(ino).is_ok() { FsError::NotDir } else { FsError::NotFound });
        }
        let t = self.table.read().unwrap();
        let dots = [(ROOT_INO, Kind::Dir, ".".to_string()), (ROOT_INO, Kind::Dir, "..".to_string())];
        let shims = t.by_name.iter().map(|(n, &i)| (i, Kind::File, n.clone()));
        Ok(dots.into_iter().chain(shims).skip(offset as usize).collect())
    }

    pub fn open(&self, ino: u64, write: bool) -> Result<(), FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        if ino == ROOT_INO {
            return Err(FsError::IsDir);
        }
        let name = self.table.read().unwrap().by_ino.get(&ino).cloned().ok_or(FsError::NotFound)?;
        (self.on_open)(&name);
        Ok(())
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8], FsError> {
        self.getattr(ino)?;
        if ino == ROOT_INO {
            return Err(FsError::IsDir);
        }
        let start = (offset as usize).min(self.text.len());
        let end = start.saturating_add(size as usize).min(self.text.len());
        Ok(&self.text[start..end])
    }

    /// Shim names (for tests and admin listings).
    pub fn names(&self) -> Vec<String> {
        self.table.read().unwrap().by_name.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn fs() -> (ShimFs, Arc<Mutex<Vec<String>>>) {
        let opened = Arc::new(Mutex::new(Vec::new()));
        let o = opened.clone();
        let fs = ShimFs::new(b"#!/l /s\n".to_vec(), Box::new(move |n| o.lock().unwrap().push(n.to_string())));
        fs.set_commands(["jq", "cat", "sh"]);
        (fs, opened)
    }

    #[test]
    fn lists_and_serves_every_command_as_an_executable_shim() {
        let (fs, opened) = fs();
        let names: Vec<String> = fs.readdir(ROOT_INO, 0).unwrap().into_iter().map(|e| e.2).collect();
        assert_eq!(names, [".", "..", "cat", "jq", "sh"]);
        assert_eq!(fs.readdir(ROOT_INO, 3).unwrap().len(), 2);
        let a = fs.lookup(ROOT_INO, b"jq").unwrap();
        assert_eq!((a.kind, a.perm, a.size), (Kind::File, 0o755, 8));
        assert_eq!(fs.read(a.ino, 0, 4096).unwrap(), b"#!/l /s\n");
        assert_eq!(fs.read(a.ino, 2, 2).unwrap(), b"/l");
        assert_eq!(fs.read(a.ino, 100, 2).unwrap(), b"");
        assert_eq!(fs.lookup(ROOT_INO, b"ls"), Err(FsError::NotFound));
        fs.open(a.ino, false).unwrap();
        assert_eq!(fs.open(a.ino, true), Err(FsError::ReadOnly));
        assert_eq!(*opened.lock().unwrap(), ["jq"]);
    }

    #[test]
    fn reload_keeps_inodes_and_never_reuses_them() {
        let (fs, _) = fs();
        let jq = fs.lookup(ROOT_INO, b"jq").unwrap().ino;
        let sh = fs.lookup(ROOT_INO, b"sh").unwrap().ino;
        fs.set_commands(["jq", "awk"]);
        assert_eq!(fs.lookup(ROOT_INO, b"jq").unwrap().ino, jq);
        assert_eq!(fs.getattr(sh), Err(FsError::NotFound));
        let awk = fs.lookup(ROOT_INO, b"awk").unwrap().ino;
        assert!(awk != sh && awk != jq);
        fs.set_commands(["sh"]);
        assert_eq!(fs.lookup(ROOT_INO, b"sh").unwrap().ino, sh);
    }
}
