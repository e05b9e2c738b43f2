//! SQLite state (`odfs.db`, WAL): the catalog as loaded, and the history of
//! invocations. Writes go through one thread so request handling never waits
//! on the database, in one transaction for all that queued meanwhile, and
//! with `synchronous = NORMAL`: a crash of the machine may lose the newest
//! history rows, never the file, and a call costs no `fsync`. The files are
//! root's alone: the history is every user's.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{params, Connection};

use super::model::Catalog;

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY, ref TEXT NOT NULL, network TEXT NOT NULL, user TEXT NOT NULL,
    cap_add TEXT NOT NULL, keep_alive TEXT NOT NULL, allow_groups TEXT NOT NULL, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    name TEXT PRIMARY KEY, image TEXT NOT NULL, path TEXT, args TEXT NOT NULL, env TEXT NOT NULL, origin TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY, command TEXT NOT NULL, image TEXT NOT NULL, uid INTEGER NOT NULL,
    started_ms INTEGER NOT NULL, setup_us INTEGER NOT NULL, served TEXT NOT NULL, outcome TEXT NOT NULL,
    session INTEGER, container TEXT, pid INTEGER, exit INTEGER, run_ms INTEGER);
CREATE TABLE IF NOT EXISTS image_uses (
    id TEXT PRIMARY KEY, reference TEXT NOT NULL, first_ms INTEGER NOT NULL, last_ms INTEGER);
";

/// Made once the columns exist (older databases gain them at open): a
/// tool's end finds its invocation without a scan of the history.
const INDEXES: &str = "CREATE INDEX IF NOT EXISTS invocations_by_tool ON invocations (container, pid);";

/// Invocations kept; older ones are dropped so the file stays bounded.
const KEEP_INVOCATIONS: i64 = 100_000;
/// Writes waiting for the writer thread; past it new ones are dropped.
const WRITE_QUEUE: usize = 10_000;

/// One finished exec request, as the daemon saw it.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: String,
    pub image: String,
    pub uid: u32,
    pub started_ms: i64,
    pub setup_us: i64,
    /// warm | cold
    pub served: &'static str,
    /// The caller's session id (sequences are learned per session).
    pub session: Option<i32>,
    /// Where and as which pid the tool ran, to attach its end later.
    pub container: String,
    pub pid: i32,
    /// started | the error the caller saw
    pub outcome: String,
    /// The id of the image its tool ran in (empty when none ran).
    pub image_id: String,
}

/// An image odfs has run or replaced, and when a tool last ran in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    pub id: String,
    /// The names odfs gave it, a line each.
    pub reference: String,
    pub first_ms: i64,
    pub last_ms: Option<i64>,
}

enum Write {
    Catalog(Box<Catalog>),
    Invocation(Invocation),
    ImageSeen { id: String, reference: String, at_ms: i64 },
    Finish { container: String, pid: i32, status: i32, run_ms: u64 },
    /// Answered once everything queued before it is committed.
    Flush(mpsc::SyncSender<()>),
}

/// Handle to the database writer thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::SyncSender<Write>,
    path: std::path::PathBuf,
}

/// A past call, read back at start-up so the policies and the predictors do
/// not start from nothing after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct PastCall {
    pub command: String,
    pub image: String,
    pub session: Option<i32>,
    pub started_ms: i64,
    pub setup_us: i64,
    /// Known once the agent reported the tool's end.
    pub run_ms: Option<i64>,
    pub served: String,
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot make {path} readable by root alone: {source}")]
    Private { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// The database and its `-wal` and `-shm` files, root's alone (0600): the
/// history says which user ran what, when, and which of their paths were
/// refused. The database is made so before SQLite opens it, and SQLite
/// gives the files it makes beside a database that database's mode; files
/// of an older daemon (made 0644) are changed. Never through a symlink.
fn make_private(db: &Path) -> Result<(), OpenError> {
    let private = |path: &Path, create: bool| -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .read(!create)
            .write(create)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
        match file {
            Ok(f) => f.set_permissions(std::fs::Permissions::from_mode(0o600)),
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    };
    let mut paths = vec![(db.to_path_buf(), true)];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_os_string();
        name.push(suffix);
        paths.push((PathBuf::from(name), false));
    }
    for (path, create) in paths {
        private(&path, create).map_err(|source| OpenError::Private { path, source })?;
    }
    Ok(())
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, OpenError> {
        make_private(path)?;
        let conn = Connection::open(path)?;
        conn.execute_batch(SCHEMA)?;
        // Older databases gain the newer columns (an error means it is there).
        for col in ["session INTEGER", "container TEXT", "pid INTEGER", "exit INTEGER", "run_ms INTEGER"] {
            let _ = conn.execute(&format!("ALTER TABLE invocations ADD COLUMN {col}"), []);
        }
        conn.execute_batch(INDEXES)?;
        // Bounded: a flood of requests drops history rows, never grows memory.
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("odfs-store".into())
            .spawn(move || writer(conn, rx))
            .expect("spawn store thread");
        Ok(Store { tx, path: path.to_path_buf() })
    }

    /// The newest `limit` calls that started a tool, oldest first, read on a
    /// connection of its own (WAL lets it read beside the writer).
    pub fn recent_calls(&self, limit: usize) -> rusqlite::Result<Vec<PastCall>> {
        let conn = Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = conn.prepare(
            "SELECT command, image, session, started_ms, setup_us, run_ms, served FROM invocations \
             WHERE outcome = 'started' ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(PastCall {
                command: r.get(0)?,
                image: r.get(1)?,
                session: r.get(2)?,
                started_ms: r.get(3)?,
                setup_us: r.get(4)?,
                run_ms: r.get(5)?,
                served: r.get(6)?,
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Every image odfs has run a container of or moved a reference off,
    /// with its last use (the newest call served in it).
    pub fn image_uses(&self) -> rusqlite::Result<Vec<ImageUse>> {
        let conn = Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = conn.prepare("SELECT id, reference, first_ms, last_ms FROM image_uses")?;
        let rows = stmt.query_map([], |r| Ok(ImageUse { id: r.get(0)?, reference: r.get(1)?, first_ms: r.get(2)?, last_ms: r.get(3)? }))?;
        rows.collect()
    }

    /// odfs made a container of image `id` for `reference`, or moved
    /// `reference` off it: it is one of the images `odfs gc` manages.
    pub fn image_seen(&self, id: &str, reference: &str) {
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let _ = self.tx.try_send(Write::ImageSeen { id: id.to_string(), reference: reference.to_string(), at_ms });
    }

    pub fn save_catalog(&self, catalog: &Catalog) {
        let _ = self.tx.try_send(Write::Catalog(Box::new(catalog.clone())));
    }

    /// Wait (at most `limit`) until every write queued so far is in the
    /// file: a successor that reads the history then sees it all.
    pub fn flush(&self, limit: std::time::Duration) -> bool {
        let (done, wait) = mpsc::sync_channel(1);
        self.tx.send(Write::Flush(done)).is_ok() && wait.recv_timeout(limit).is_ok()
    }

    pub fn record(&self, inv: Invocation) {
        let _ = self.tx.try_send(Write::Invocation(inv));
    }

    /// A tool's end, as its agent reported it: exit status (128 + signal
    /// for a death) and run time, attached to its invocation.
    pub fn finish(&self, container: &str, pid: i32, status: i32, run_ms: u64) {
        let _ = self.tx.try_send(Write::Finish { container: container.to_string(), pid, status, run_ms });
    }
}

/// Apply writes as they come: each wake-up takes every write queued by
/// then (at most [`WRITE_QUEUE`]) in one transaction, each write in a
/// savepoint of its own, so that one that fails is the only one lost.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    let mut since_trim = 0u32;
    let warn = |e: rusqlite::Error| tracing::warn!("state database write failed: {e}");
    while let Ok(first) = rx.recv() {
        let batch: Vec<Write> = std::iter::once(first).chain(rx.try_iter().take(WRITE_QUEUE)).collect();
        let mut flushed = Vec::new();
        let mut tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                warn(e);
                continue;
            }
        };
        for w in batch {
            if let Write::Flush(done) = w {
                flushed.push(done);
                continue;
            }
            let one = tx.savepoint().and_then(|sp| {
                apply(&sp, w, &mut since_trim)?;
                sp.commit()
            });
            if let Err(e) = one {
                warn(e);
            }
        }
        if let Err(e) = tx.commit() {
            warn(e);
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

fn apply(conn: &Connection, w: Write, since_trim: &mut u32) -> rusqlite::Result<()> {
    match w {
        Write::Flush(_) => Ok(()),
        Write::Catalog(c) => write_catalog(conn, &c),
        Write::Finish { container, pid, status, run_ms } => conn
            .prepare_cached(
                "UPDATE invocations SET exit = ?1, run_ms = ?2 WHERE id = (SELECT MAX(id) FROM invocations \
                 WHERE container = ?3 AND pid = ?4 AND exit IS NULL)",
            )?
            .execute(params![status, run_ms as i64, container, pid])
            .map(|_| ()),
        Write::ImageSeen { id, reference, at_ms } => {
            // Every name odfs gave the image, a line each (gc keeps an image
            // that carries a name of someone else's, never one of its own).
            conn.prepare_cached(
                "INSERT INTO image_uses (id, reference, first_ms) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET reference = reference || char(10) || excluded.reference \
                 WHERE excluded.reference != '' AND instr(char(10) || reference || char(10), char(10) || excluded.reference || char(10)) = 0",
            )?
            .execute(params![id, reference, at_ms])?;
            Ok(())
        }
        Write::Invocation(i) => {
            *since_trim += 1;
            conn.prepare_cached(
                "INSERT INTO invocations (command, image, uid, started_ms, setup_us, served, outcome, session, container, pid) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![i.command, i.image, i.uid, i.started_ms, i.setup_us, i.served, i.outcome, i.session, i.container, i.pid])?;
            if !i.image_id.is_empty() {
                conn.prepare_cached("UPDATE image_uses SET last_ms = MAX(COALESCE(last_ms, 0), ?2) WHERE id = ?1")?.execute(params![i.image_id, i.started_ms])?;
            }
            if *since_trim >= 1000 {
                *since_trim = 0;
                // A trim that fails is tried again 1000 rows later.
                let _ = conn.execute("DELETE FROM invocations WHERE id <= (SELECT MAX(id) FROM invocations) - ?1", params![KEEP_INVOCATIONS]);
            }
            Ok(())
        }
    }
}

/// Replace the stored catalog, inside the writer's transaction.
fn write_catalog(tx: &Connection, c: &Catalog) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM images", [])?;
    tx.execute("DELETE FROM commands", [])?;
    for i in c.images.values() {
        let keep = match i.keep_alive {
            super::KeepAlive::Auto => "auto".to_string(),
            super::KeepAlive::Fixed(d) => humantime::format_duration(d).to_string(),
        };
        tx.execute(
            "INSERT INTO images VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                i.name,
                i.reference,
                i.network.as_str(),
                format!("{:?}", i.user).to_lowercase(),
                i.cap_add.join(","),
                keep,
                i.allow_groups.join(","),
                i.origin
            ],
        )?;
    }
    // By the catalog's key: the versions of one command (`jq`, `jq@1.6`)
    // share its name.
    for (name, cmd) in &c.commands {
        tx.execute(
            "INSERT INTO commands VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                name.as_str(),
                cmd.image,
                cmd.path,
                serde_json::to_string(&cmd.args).unwrap_or_default(),
                cmd.env.join(","),
                cmd.origin
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_of_a_command_is_stored_under_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[image.a]\nref = \"r\"\nversion = \"1\"\ncommands = [\"t\"]\n[image.b]\nref = \"r\"\nversion = \"2\"\ncommands = [\"t\"]\n";
        let cat = super::super::load::parse_file(Path::new("x.toml"), text).unwrap();
        let mut conn = Connection::open(dir.path().join("odfs.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let tx = conn.transaction().unwrap();
        write_catalog(&tx, &cat).unwrap();
        tx.commit().unwrap();
        let mut names: Vec<String> = conn.prepare("SELECT name FROM commands ORDER BY name").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        names.sort();
        assert_eq!(names.len(), cat.commands.len());
        assert!(names.len() >= 2 && names.iter().any(|n| n.contains('@')), "{names:?}");
    }

    #[test]
    fn the_database_and_its_wal_and_shm_are_root_s_alone_even_when_made_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("odfs.db");
        let mode = |suffix: &str| std::fs::metadata(format!("{}{suffix}", db.display())).unwrap().permissions().mode() & 0o777;
        let store = Store::open(&db).unwrap();
        store.image_seen("sha256:a", "r");
        assert!(store.flush(std::time::Duration::from_secs(5)));
        assert_eq!([mode(""), mode("-wal"), mode("-shm")], [0o600; 3]);
        // As an older daemon left them (while it runs, so all three exist).
        for suffix in ["", "-wal", "-shm"] {
            std::fs::set_permissions(format!("{}{suffix}", db.display()), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let again = Store::open(&db).unwrap();
        assert_eq!([mode(""), mode("-wal"), mode("-shm")], [0o600; 3]);
        drop((store, again));
        // A symlink in the database's place is not followed.
        let other = dir.path().join("other");
        std::fs::write(&other, "").unwrap();
        std::os::unix::fs::symlink(&other, dir.path().join("link.db")).unwrap();
        assert!(matches!(Store::open(&dir.path().join("link.db")), Err(OpenError::Private { .. })));
    }

    #[test]
    fn catalog_and_invocations_land_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("odfs.db");
        let text = "[image.b]\nref = \"r\"\ncommands = [\"sh\", \"ls\"]\n";
        let cat = super::super::load::parse_file(Path::new("x.toml"), text).unwrap();
        let store = Store::open(&db).unwrap();
        store.save_catalog(&cat);
        store.image_seen("sha256:b1", "r");
        store.image_seen("sha256:b1", "r2");
        store.image_seen("sha256:b1", "r");
        store.record(Invocation {
            command: "sh".into(),
            image: "b".into(),
            uid: 1000,
            started_ms: 1,
            setup_us: 2,
            served: "cold",
            session: Some(7),
            container: "c1".into(),
            pid: 42,
            outcome: "started".into(),
            image_id: "sha256:b1".into(),
        });
        store.finish("c1", 42, 3, 1500);
        drop(store); // the writer drains its queue, then stops
        let conn = Connection::open(&db).unwrap();
        for _ in 0..100 {
            let n: i64 = conn.query_row("SELECT COUNT(*) FROM invocations", [], |r| r.get(0)).unwrap();
            if n == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let cmds: i64 = conn.query_row("SELECT COUNT(*) FROM commands WHERE image = 'b'", [], |r| r.get(0)).unwrap();
        for _ in 0..100 {
            let done: Option<i64> = conn.query_row("SELECT exit FROM invocations", [], |r| r.get(0)).unwrap();
            if done.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (served, exit, run): (String, i64, i64) =
            conn.query_row("SELECT served, exit, run_ms FROM invocations", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        assert_eq!((cmds, served.as_str(), exit, run), (2, "cold", 3, 1500));
        let again = Store::open(&db).unwrap();
        // The image's last use is its newest call.
        let uses = again.image_uses().unwrap();
        assert_eq!(uses.len(), 1);
        assert_eq!((uses[0].id.as_str(), uses[0].reference.as_str(), uses[0].last_ms), ("sha256:b1", "r\nr2", Some(1)));
        let past = again.recent_calls(10).unwrap();
        assert_eq!(
            past,
            [PastCall {
                command: "sh".into(),
                image: "b".into(),
                session: Some(7),
                started_ms: 1,
                setup_us: 2,
                run_ms: Some(1500),
                served: "cold".into()
            }]
        );
    }

    #[test]
    fn a_tools_end_finds_its_call_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("odfs.db");
        drop(Store::open(&db).unwrap());
        let conn = Connection::open(&db).unwrap();
        let plan: Vec<String> = conn
            .prepare("EXPLAIN QUERY PLAN SELECT MAX(id) FROM invocations WHERE container = 'c' AND pid = 1 AND exit IS NULL")
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("USING INDEX invocations_by_tool")), "{plan:?}");
    }
}
