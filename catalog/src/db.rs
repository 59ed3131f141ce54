//! Opening the database and its schema.
//!
//! The schema is versioned by [`SCHEMA_VERSION`] in `meta`; a catalog of another version (or of
//! another repository, or one that does not open) is deleted and rebuilt, since it is only a cache.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};

/// Bump when the tables change: older catalogs are then dropped and rebuilt.
pub(crate) const SCHEMA_VERSION: i64 = 8;

/// Every table and index. Ids are integers; strings (names, directory paths) are interned once.
///
/// - Names and paths are the raw bytes of the snapshot (`names.raw`, `dirs.path`, BLOBs), so a
///   name that is not UTF-8 is one like any other; `names.name` is its lossy UTF-8 text, which
///   only the name matching (FTS5 trigrams, globs, substrings) reads.
/// - `snapshots.key` orders snapshots by time: seconds since the Unix epoch, bumped by one on a
///   collision (and past the host's previous snapshot), so `first`/`last` of a version sort in
///   time order without a join and take 4 bytes. `versions_recent` puts open versions at
///   2^47 - 1, after every key.
/// - `gid` is NULL when it equals `uid` (most files): two bytes less per version.
/// - A version with `last IS NULL` is present in its host's latest snapshot ("open"); its
///   interval extends to every later snapshot for free, which is what makes an update cost
///   proportional to the changes.
/// - `gone = 1` marks the newest version of a path that is absent from the host's latest snapshot:
///   the deleted files. `gone = 2` marks a closed version whose path's next version has another
///   `access`: for a reader who may see this version but not the next ones, the path was
///   deleted here (see `Scope`).
/// - A version's identity is the node's own content and metadata: `access` interns what of it
///   decides who may read it (folder or not, mode, uid, gid and its POSIX access ACL). What the
///   folders above it allow is no part of it: a `chmod` of a folder adds one version (the
///   folder's), and nobody's versions are cut by a folder they cannot see.
/// - The folders above are kept per directory: `dirs.ctx` is the context of a directory's
///   entries, interned in `contexts` as its parent context plus one folder (0 is a host's
///   root): the folder's `access` while it never changed, else the folder itself (`folder`),
///   whose access over time is in `folder_access` (from snapshot key `since` on, until its next
///   row). So a reader's access classes, the contexts whose every folder they may search, and
///   for contexts with folders whose access changed, the runs of snapshots in which they may,
///   are computed once per query from these small tables (`Scope::reader`), and a version is
///   shown to a reader for each run of its snapshots in which they may read it.
/// - `dirs.image` says what of a directory lies inside a disk image (the catalog reads what is
///   inside images through [`crate::ImageTrees`], with an `<image>.d` folder beside each image
///   file): 2 for an `<image>.d` folder and every folder below it (all their entries are inside
///   an image); 1 for a folder that holds such `<image>.d` folders among its entries (the `.d`
///   entry's own version is then inside an image: its directory row has 2); 0 for every other
///   folder. A scope (a non-admin's rules) leaves out every row inside an image in SQL: a version
///   whose directory has 2, and a version in a directory with 1 whose own directory row has 2.
///   A directory once marked 2 stays so (a real folder that later takes an image folder's path
///   is hidden from scopes too: nothing inside an image ever shows through a rule).
/// - `versions_open` indexes the names of the open versions only (a tenth of the rows): a name
///   query's first page is usually all present versions, read without touching the table.
/// - `trigrams` counts the names holding each trigram (case folded as `query::fold` does), so a
///   query picks its rarest trigrams for the FTS5 index without counting them there. Names are
///   never deleted but all at once, so the counts stay exact.
const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
CREATE TABLE hosts(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    latest INTEGER
);
CREATE TABLE snapshots(
    key INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    host INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    tree BLOB NOT NULL
);
CREATE INDEX snapshots_host ON snapshots(host, key);
CREATE TABLE names(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    raw BLOB NOT NULL
);
CREATE UNIQUE INDEX names_raw ON names(raw);
CREATE VIRTUAL TABLE names_fts USING fts5(
    name, content='names', content_rowid='id', tokenize='trigram', detail='none', columnsize=0
);
CREATE TABLE dirs(
    id INTEGER PRIMARY KEY,
    host INTEGER NOT NULL,
    parent INTEGER,
    name INTEGER,
    path BLOB NOT NULL,
    access INTEGER NOT NULL DEFAULT 0,
    varies INTEGER NOT NULL DEFAULT 0,
    ctx INTEGER NOT NULL DEFAULT 0,
    image INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dirs_child ON dirs(parent, name);
CREATE INDEX dirs_path ON dirs(host, path);
CREATE INDEX dirs_ctx ON dirs(ctx, image);
CREATE TABLE folder_access(
    dir INTEGER NOT NULL,
    since INTEGER NOT NULL,
    access INTEGER NOT NULL,
    PRIMARY KEY (dir, since)
) WITHOUT ROWID;
CREATE TABLE versions(
    id INTEGER PRIMARY KEY,
    host INTEGER NOT NULL,
    dir INTEGER NOT NULL,
    name INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER,
    gone INTEGER NOT NULL DEFAULT 0,
    access INTEGER NOT NULL
);
CREATE INDEX versions_path ON versions(dir, name);
CREATE INDEX versions_name ON versions(name);
CREATE INDEX versions_recent ON versions(coalesce(last, 140737488355327));
CREATE INDEX versions_gone ON versions(last) WHERE gone != 0;
CREATE INDEX versions_gone_uid ON versions(uid, last) WHERE gone != 0;
CREATE INDEX versions_open ON versions(name) WHERE last IS NULL;
CREATE TABLE trigrams(tri TEXT PRIMARY KEY, names INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE access(
    id INTEGER PRIMARY KEY,
    dir INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    acl BLOB NOT NULL
);
CREATE UNIQUE INDEX access_key ON access(dir, mode, uid, gid, acl);
CREATE TABLE contexts(
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    access INTEGER NOT NULL,
    folder INTEGER NOT NULL
);
CREATE UNIQUE INDEX contexts_key ON contexts(parent, access, folder);
";

pub(crate) fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "temp_store", "memory")?;
    // Queries jump around a large file: mapped pages cost no system call each.
    conn.pragma_update(None, "mmap_size", 1i64 << 31)?;
    Ok(())
}

/// Open (creating if needed) a writable catalog at `path` for the repository `repo_id`. A file
/// that is not a usable catalog of this schema and repository is replaced.
pub(crate) fn open_rw(path: &Path, repo_id: &str) -> Result<Connection> {
    // The catalog holds every path in the clear, also of an encrypted repository: readable by
    // its owner only. A folder made here is 0700; the database is created 0600 before SQLite
    // opens it (its -wal and -shm files take the database's mode).
    private_dir(path)?;
    // A file that is not this user's alone is refused here, never replaced below.
    private_file(path)?;
    match try_open_rw(path, repo_id) {
        Ok(Some(conn)) => Ok(conn),
        Ok(None) => {
            tracing::info!("catalog at {} is of another schema or repository; rebuilding it", path.display());
            remove_db(path)?;
            try_open_rw(path, repo_id)?.ok_or_else(|| Error::InvalidInput("fresh catalog refused".into()))
        }
        // Another program's database: refused by try_open_rw, never replaced.
        Err(e @ Error::InvalidInput(_)) => Err(e),
        Err(e) if !looks_like_sqlite(path) => Err(Error::InvalidInput(format!("{}: {e}", not_a_catalog(path)))),
        Err(e) => {
            tracing::warn!("catalog at {} does not open ({e}); rebuilding it", path.display());
            remove_db(path)?;
            try_open_rw(path, repo_id)?.ok_or_else(|| Error::InvalidInput("fresh catalog refused".into()))
        }
    }
}

/// A file there that is not a catalog: never replaced or removed (it may have been named by
/// mistake).
fn not_a_catalog(path: &Path) -> Error {
    Error::InvalidInput(format!("{} is not a rewind catalog: left as it is; name another file", path.display()))
}

/// Whether `path` is empty or starts as an SQLite database does: a catalog (maybe damaged)
/// that may be replaced, unlike any other file.
pub(crate) fn looks_like_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    match std::fs::File::open(path) {
        Ok(mut f) => match f.read(&mut head) {
            Ok(0) => true,
            Ok(n) => n == 16 && &head == b"SQLite format 3\0",
            Err(_) => false,
        },
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Copy the catalog at `from` (maybe open, maybe of another schema) to `to`, consistently
/// (SQLite's `VACUUM INTO`), readable by its owner only, and durably before it appears: the
/// copy is made under a temporary name, fsynced, and renamed to `to` only if no file is there
/// (another process copying at the same time may have won; its copy is as good). A failed
/// copy leaves nothing.
pub(crate) fn copy_db(from: &Path, to: &Path) -> Result<()> {
    private_dir(to)?;
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = to.with_file_name(format!(".{name}.copy-{}", std::process::id()));
    remove_db(&tmp)?;
    private_file(&tmp)?;
    let copied = Connection::open_with_flags(from, flags(true))
        .and_then(|conn| {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.execute("VACUUM INTO ?1", [tmp.to_string_lossy()])
        })
        .map_err(Error::from)
        .and_then(|_| {
            let io = |e| Error::Io { path: tmp.clone(), source: e };
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
            // Filesystems without RENAME_NOREPLACE: a link, then the temporary name goes below.
            let unsupported = [libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP];
            let placed = match rename_noreplace(&tmp, to) {
                Err(e) if e.raw_os_error().is_some_and(|n| unsupported.contains(&n)) => std::fs::hard_link(&tmp, to),
                r => r,
            };
            match placed {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(Error::Io { path: to.into(), source: e }),
            }
        });
    let _ = remove_db(&tmp);
    copied?;
    let dir = to.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::Io { path: dir.into(), source: e })
}

/// `rename(2)` that fails with `AlreadyExists` instead of replacing `to` (`RENAME_NOREPLACE`):
/// the file appears whole, once, and never with a second name (a hard link would, for a moment).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated paths that live across the call.
    let r =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Make the folder of `path` readable by its owner only if it is missing, and refuse one that
/// is not this user's alone ([`rewind_store::private_folder`]): the catalog holds every path
/// in the clear.
pub(crate) fn private_dir(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => Ok(rewind_store::private_folder(dir)?),
        _ => Ok(rewind_store::private_folder(Path::new("."))?),
    }
}

/// Make sure `path` exists, is not a symbolic link, and is readable by its owner only; a file
/// there that is not a plain file of this user's alone is refused, and a `-wal`, `-shm` or
/// `-journal` beside it that is not (one planted while the folder was open to others, maybe a
/// hard link to someone else's file) is removed before SQLite would open it.
fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let io = |e| Error::Io { path: path.into(), source: e };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        if let Ok(m) = std::fs::symlink_metadata(&side)
            && (!m.is_file() || m.uid() != uid || m.nlink() != 1)
        {
            if suffix.is_empty() {
                // Maybe a file named by mistake: never changed.
                return Err(Error::InvalidInput(format!(
                    "{} is not a file of this user's alone (a link, another user's, or linked elsewhere): left as it is",
                    path.display()
                )));
            }
            tracing::warn!("removing {}: not a file of this user's alone", Path::new(&side).display());
            std::fs::remove_file(&side).map_err(|e| Error::Io { path: side.clone().into(), source: e })?;
        }
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)
}

/// How the catalog's files are opened: never through a symbolic link.
fn flags(read_only: bool) -> OpenFlags {
    let access = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    };
    access | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW
}

/// `Ok(None)`: the file is a database but not a catalog we can use.
fn try_open_rw(path: &Path, repo_id: &str) -> Result<Option<Connection>> {
    private_file(path)?;
    let conn = Connection::open_with_flags(path, flags(false))?;
    configure(&conn)?;
    // Another program's database (a path named by mistake) is left exactly as it is: looked
    // at before anything (the journal mode) is changed.
    let has_meta: bool = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'", [], |_| Ok(true))
        .optional()?
        .unwrap_or(false);
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if !has_meta && tables != 0 {
        return Err(not_a_catalog(path));
    }
    // WAL: readers go on reading the last committed state while an update runs.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!("catalog journal mode is {mode}, not wal");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    if !has_meta {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.execute("INSERT INTO meta VALUES ('schema_version', ?1), ('repository', ?2)", (SCHEMA_VERSION, repo_id))?;
        tx.commit()?;
        return Ok(Some(conn));
    }
    match read_meta(&conn)? {
        (Some(v), Some(r)) if v == SCHEMA_VERSION && r == repo_id => Ok(Some(conn)),
        _ => Ok(None),
    }
}

fn read_meta(conn: &Connection) -> Result<(Option<i64>, Option<String>)> {
    let v = conn.query_row("SELECT value FROM meta WHERE key='schema_version'", [], |r| r.get(0)).optional()?;
    let r = conn.query_row("SELECT value FROM meta WHERE key='repository'", [], |r| r.get(0)).optional()?;
    Ok((v, r))
}

/// Open an existing catalog for reading only.
pub(crate) fn open_ro(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::NotFound(format!("catalog {}", path.display())));
    }
    let conn = Connection::open_with_flags(path, flags(true))?;
    configure(&conn)?;
    match read_meta(&conn)? {
        (Some(v), Some(_)) if v == SCHEMA_VERSION => Ok(conn),
        _ => Err(Error::InvalidInput(format!("{} is not a catalog of this version; rebuild it", path.display()))),
    }
}

/// Delete the database and its WAL files.
pub(crate) fn remove_db(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io { path: p.into(), source: e });
            }
        }
    }
    Ok(())
}
