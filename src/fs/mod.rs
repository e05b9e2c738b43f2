//! The shim filesystem as plain logic: one read-only directory holding one
//! executable text file per catalog command. No FUSE types here, so it is
//! tested without a kernel mount; [`crate::fuse`] only translates.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
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
    #[error("no such attribute")]
    NoData,
}

impl FsError {
    pub fn errno(self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NoData => libc::ENODATA,
        }
    }
}

/// Name ↔ inode table. Inodes are never reused for another name while the
/// mount lives, so a kernel cache entry can never point at the wrong shim.
#[derive(Default)]
struct Table {
    by_name: HashMap<Arc<str>, u64>,
    by_ino: HashMap<u64, Arc<str>>,
    /// What `readdir` lists, by name: a directory read resumes at its
    /// offset without walking what it already read (an archive lists
    /// tens of thousands of names).
    listing: Vec<(u64, Arc<str>)>,
    ever: HashMap<Arc<str>, u64>,
    next: u64,
}

impl Table {
    /// The inode of `name`, the one it had before if it had one.
    fn inode(&mut self, name: &str) -> (u64, Arc<str>) {
        if let Some((n, &i)) = self.ever.get_key_value(name) {
            return (i, n.clone());
        }
        let (i, n): (u64, Arc<str>) = (self.next, name.into());
        self.next += 1;
        self.ever.insert(n.clone(), i);
        (i, n)
    }

    fn add(&mut self, name: &str) -> u64 {
        let (ino, name) = self.inode(name);
        self.by_name.insert(name.clone(), ino);
        self.by_ino.insert(ino, name);
        ino
    }
}

/// Who made a request, as the kernel tells the file system: the process's
/// file-system uid and gid, and its pid (in the mount's pid namespace).
/// Supplementary groups are not told; they are the process's to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// What the shim directory asks of the daemon. Both are answered from
/// memory, without waiting: they run on FUSE threads.
pub trait Hooks: Send + Sync {
    /// A shim was opened by `by`: an exec is probably on its way, so its
    /// container can start warming now, if `by` may use it.
    fn opened(&self, command: &str, by: Requester);
    /// Extended attribute `name` of a command's shim, if it has one.
    fn xattr(&self, command: &str, name: &str) -> Option<Vec<u8>>;
    /// Whether a name the directory does not list is a command all the
    /// same (an archive's `NAME@SUITE`, or its names when not listed).
    fn knows(&self, command: &str) -> bool;
}

/// The extended attributes every shim has.
pub const XATTRS: [&str; 2] = ["user.odfs.image", "user.odfs.state"];

pub struct ShimFs {
    table: RwLock<Table>,
    /// `#!LAUNCHER SOCKET\n`, the same for every shim.
    text: Vec<u8>,
    mtime: SystemTime,
    hooks: Box<dyn Hooks>,
}

impl ShimFs {
    pub fn new(text: Vec<u8>, hooks: Box<dyn Hooks>) -> ShimFs {
        ShimFs { table: RwLock::new(Table { next: ROOT_INO + 1, ..Default::default() }), text, mtime: SystemTime::now(), hooks }
    }

    /// Replace the listed commands (catalog load or reload). Names a lookup
    /// found stay while the daemon still knows them. Returns the names that
    /// appeared or disappeared, whose kernel cache entries must go.
    pub fn set_commands<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut t = self.table.write().unwrap();
        let was_listed: std::collections::HashSet<Arc<str>> = t.listing.iter().map(|(_, n)| n.clone()).collect();
        let found: Vec<Arc<str>> = t.by_name.keys().filter(|n| !was_listed.contains(*n)).cloned().collect();
        t.by_name.clear();
        t.by_ino.clear();
        let mut listing = Vec::new();
        for name in names {
            let ino = t.add(name);
            listing.push((ino, t.by_ino[&ino].clone()));
        }
        listing.sort_by(|a, b| a.1.cmp(&b.1));
        listing.dedup_by(|a, b| a.1 == b.1);
        let now_listed: std::collections::HashSet<Arc<str>> = listing.iter().map(|(_, n)| n.clone()).collect();
        let mut changed: Vec<String> = was_listed.symmetric_difference(&now_listed).map(|n| n.to_string()).collect();
        for name in found.iter().filter(|n| !now_listed.contains(*n)) {
            if self.hooks.knows(name) {
                t.add(name);
            } else {
                changed.push(name.to_string());
            }
        }
        t.listing = listing;
        changed.sort();
        changed.dedup();
        changed
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
        if let Some(&ino) = self.table.read().unwrap().by_name.get(name) {
            return Ok(self.shim_attr(ino));
        }
        if !self.hooks.knows(name) {
            return Err(FsError::NotFound);
        }
        let mut t = self.table.write().unwrap();
        Ok(self.shim_attr(t.add(name)))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(self.dir_attr());
        }
        let t = self.table.read().unwrap();
        t.by_ino.contains_key(&ino).then(|| self.shim_attr(ino)).ok_or(FsError::NotFound)
    }

    /// At most `max` directory entries from `offset` on: `.`, `..`, then
    /// the listed shims by name.
    pub fn readdir(&self, ino: u64, offset: u64, max: usize) -> Result<Vec<(u64, Kind, Arc<str>)>, FsError> {
        if ino != ROOT_INO {
            return Err(if self.getattr(ino).is_ok() { FsError::NotDir } else { FsError::NotFound });
        }
        let t = self.table.read().unwrap();
        let dots = [(ROOT_INO, Kind::Dir, Arc::from(".")), (ROOT_INO, Kind::Dir, Arc::from(".."))];
        let offset = offset as usize;
        let shims = t.listing.get(offset.saturating_sub(2)..).unwrap_or(&[]).iter().map(|(i, n)| (*i, Kind::File, n.clone()));
        Ok(dots.into_iter().skip(offset).chain(shims).take(max).collect())
    }

    pub fn open(&self, ino: u64, write: bool, by: Requester) -> Result<(), FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        if ino == ROOT_INO {
            return Err(FsError::IsDir);
        }
        let name = self.table.read().unwrap().by_ino.get(&ino).cloned().ok_or(FsError::NotFound)?;
        self.hooks.opened(&name, by);
        Ok(())
    }

    fn name_of(&self, ino: u64) -> Result<Option<Arc<str>>, FsError> {
        if ino == ROOT_INO {
            return Ok(None);
        }
        self.table.read().unwrap().by_ino.get(&ino).cloned().map(Some).ok_or(FsError::NotFound)
    }

    /// Value of an extended attribute (`user.odfs.image`, `user.odfs.state`).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let command = self.name_of(ino)?.ok_or(FsError::NoData)?;
        let name = std::str::from_utf8(name).map_err(|_| FsError::NoData)?;
        if !XATTRS.contains(&name) {
            return Err(FsError::NoData);
        }
        self.hooks.xattr(&command, name).ok_or(FsError::NoData)
    }

    /// Attribute names, NUL-terminated each, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        Ok(match self.name_of(ino)? {
            None => Vec::new(),
            Some(_) => XATTRS.iter().flat_map(|n| n.bytes().chain(std::iter::once(0))).collect(),
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Recorder(Arc<Mutex<Vec<(String, Requester)>>>);

    impl Hooks for Recorder {
        fn opened(&self, command: &str, by: Requester) {
            self.0.lock().unwrap().push((command.to_string(), by));
        }
        fn xattr(&self, command: &str, name: &str) -> Option<Vec<u8>> {
            Some(format!("{command}:{name}").into_bytes())
        }
        fn knows(&self, command: &str) -> bool {
            command.ends_with("@trixie")
        }
    }

    fn fs() -> (ShimFs, Arc<Mutex<Vec<(String, Requester)>>>) {
        let opened = Arc::new(Mutex::new(Vec::new()));
        let fs = ShimFs::new(b"#!/l /s\n".to_vec(), Box::new(Recorder(opened.clone())));
        fs.set_commands(["jq", "cat", "sh"]);
        (fs, opened)
    }

    #[test]
    fn shims_carry_the_odfs_xattrs_and_nothing_else() {
        let (fs, _) = fs();
        let jq = fs.lookup(ROOT_INO, b"jq").unwrap().ino;
        assert_eq!(fs.getxattr(jq, b"user.odfs.image").unwrap(), b"jq:user.odfs.image");
        assert_eq!(fs.getxattr(jq, b"security.selinux"), Err(FsError::NoData));
        assert_eq!(fs.getxattr(ROOT_INO, b"user.odfs.image"), Err(FsError::NoData));
        assert_eq!(fs.listxattr(jq).unwrap(), b"user.odfs.image\0user.odfs.state\0");
        assert_eq!(fs.listxattr(ROOT_INO).unwrap(), b"");
        assert_eq!(fs.getxattr(999, b"user.odfs.image"), Err(FsError::NotFound));
    }

    #[test]
    fn lists_and_serves_every_command_as_an_executable_shim() {
        let (fs, opened) = fs();
        let names: Vec<String> = fs.readdir(ROOT_INO, 0, 100).unwrap().into_iter().map(|e| e.2.to_string()).collect();
        assert_eq!(names, [".", "..", "cat", "jq", "sh"]);
        assert_eq!(fs.readdir(ROOT_INO, 3, 100).unwrap().len(), 2);
        // Read in pieces, as the kernel does, each piece resumes at its offset.
        let pieces: Vec<String> = (0..5).flat_map(|o| fs.readdir(ROOT_INO, o, 1).unwrap()).map(|e| e.2.to_string()).collect();
        assert_eq!(pieces, names);
        let a = fs.lookup(ROOT_INO, b"jq").unwrap();
        assert_eq!((a.kind, a.perm, a.size), (Kind::File, 0o755, 8));
        assert_eq!(fs.read(a.ino, 0, 4096).unwrap(), b"#!/l /s\n");
        assert_eq!(fs.read(a.ino, 2, 2).unwrap(), b"/l");
        assert_eq!(fs.read(a.ino, 100, 2).unwrap(), b"");
        assert_eq!(fs.lookup(ROOT_INO, b"ls"), Err(FsError::NotFound));
        let by = Requester { uid: 1000, gid: 100, pid: 42 };
        fs.open(a.ino, false, by).unwrap();
        assert_eq!(fs.open(a.ino, true, by), Err(FsError::ReadOnly));
        // Who opened it goes with the name: the daemon decides whether
        // that one may warm the command's container.
        assert_eq!(*opened.lock().unwrap(), [("jq".to_string(), by)]);
    }

    #[test]
    fn reload_keeps_inodes_and_never_reuses_them() {
        let (fs, _) = fs();
        let jq = fs.lookup(ROOT_INO, b"jq").unwrap().ino;
        let sh = fs.lookup(ROOT_INO, b"sh").unwrap().ino;
        let mut changed = fs.set_commands(["jq", "awk"]);
        changed.sort();
        assert_eq!(changed, ["awk", "cat", "sh"]);
        assert_eq!(fs.lookup(ROOT_INO, b"jq").unwrap().ino, jq);
        assert_eq!(fs.getattr(sh), Err(FsError::NotFound));
        let awk = fs.lookup(ROOT_INO, b"awk").unwrap().ino;
        assert!(awk != sh && awk != jq);
        fs.set_commands(["sh"]);
        assert_eq!(fs.lookup(ROOT_INO, b"sh").unwrap().ino, sh);
    }

    #[test]
    fn names_the_daemon_knows_resolve_without_being_listed() {
        let (fs, _) = fs();
        let jq = fs.lookup(ROOT_INO, b"jq@trixie").unwrap().ino;
        assert_eq!(fs.lookup(ROOT_INO, b"jq@trixie").unwrap().ino, jq);
        assert_eq!(fs.lookup(ROOT_INO, b"jq@sid"), Err(FsError::NotFound));
        assert_eq!(fs.getattr(jq).unwrap().perm, 0o755);
        let listed: Vec<String> = fs.readdir(ROOT_INO, 0, 100).unwrap().into_iter().map(|e| e.2.to_string()).collect();
        assert!(!listed.iter().any(|n| n.contains('@')), "{listed:?}");
        // A reload keeps it while the daemon knows it: a call between its
        // lookup and its open still finds it.
        assert_eq!(fs.set_commands(["jq", "cat", "sh"]), Vec::<String>::new());
        assert_eq!(fs.getattr(jq).unwrap().ino, jq);
        // Names the daemon does not know cost nothing.
        for i in 0..1000 {
            assert_eq!(fs.lookup(ROOT_INO, format!("x{i}@sid").as_bytes()), Err(FsError::NotFound));
        }
        assert_eq!(fs.table.read().unwrap().ever.len(), 4);
    }
}
