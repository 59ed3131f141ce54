//! What queries take and give: plain, serializable structs.

use jiff::Timestamp;
use rewind_store::NodeKind;
use serde::{Deserialize, Serialize};

use crate::access::Reader;

/// How results are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// By the last snapshot that held the version, newest first (then newest version first).
    #[default]
    RecentFirst,
    /// The reverse.
    OldestFirst,
    /// By host, path, then first snapshot: stable listings.
    Path,
}

/// How a name is matched (always case-insensitive, against the entry's own name, not its path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "pattern")]
pub enum NameMatch {
    /// The name contains this text.
    Substring(String),
    /// The whole name matches this glob (`*`, `?`, `[a-z]`, `{a,b}`).
    Glob(String),
}

impl NameMatch {
    /// A glob if the pattern has glob characters, a substring otherwise (what `rewind find` does).
    pub fn guess(pattern: &str) -> NameMatch {
        if pattern.contains(['*', '?', '[', '{']) {
            NameMatch::Glob(pattern.to_string())
        } else {
            NameMatch::Substring(pattern.to_string())
        }
    }
}

/// A search. Every field narrows it; the default finds everything, most recent first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Query {
    pub name: Option<NameMatch>,
    /// Only this path and what is below it (`/srv/home/alice`), as the snapshot's bytes.
    pub path_prefix: Option<Vec<u8>>,
    pub host: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub kind: Option<NodeKind>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    /// Modified at or after / before this time.
    pub mtime_from: Option<Timestamp>,
    pub mtime_to: Option<Timestamp>,
    /// Present in some snapshot taken at or after `seen_from` and at or before `seen_to`.
    pub seen_from: Option<Timestamp>,
    pub seen_to: Option<Timestamp>,
    /// Only deleted files: the newest version of a path absent from its host's latest snapshot.
    pub deleted: bool,
    /// Only files deleted since this time (the first snapshot without them is at or after it);
    /// implies `deleted`.
    pub deleted_since: Option<Timestamp>,
    pub order: Order,
    /// Page size: 100 if 0, at most [`MAX_LIMIT`].
    pub limit: u32,
    pub offset: u64,
    /// Only what this reader may see (the portal's rules), `deleted` included: see [`Scope`].
    pub scope: Option<Scope>,
    /// Continue after this result (keyset paging, see [`FileVersion::position`]); it must be a
    /// position of the same `order`. Results that come and go between pages shift nothing.
    pub after: Option<Position>,
}

/// Whose view a query is: a version is in it if any part says so, with the portal's rules
/// (`owner`, `home`, `host`, `readable`). An empty scope sees nothing.
///
/// With a scope, "deleted" is the reader's own: a version is deleted when no later version of
/// its path is in the scope, which includes a path whose later versions only others may see
/// (the reader sees the path go away, exactly as if those versions were never backed up).
///
/// Nothing inside a disk image is in any scope (an `<image>.d` folder and all below it, as
/// [`crate::ImageTrees`] catalogues them), whatever its owner, path or access: the rules speak
/// of the backed-up host's files, and an ext4 uid inside a virtual machine is no user of it.
/// Those rows are left out in SQL, so a scoped query's work does not depend on them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scope {
    /// `owner`: versions owned by this uid.
    pub owner: Option<u32>,
    /// `home`: these paths (bytes, as in the snapshot) and everything below them.
    pub paths: Vec<Vec<u8>>,
    /// `host`: every version of these hosts.
    pub hosts: Vec<String>,
    /// `readable`: versions this reader could read at backup time (the mode bits or POSIX access
    /// ACL of the version, every folder above it searchable), decided with
    /// [`crate::access::permits`] on the catalog's access classes, folder contexts and changes of
    /// folders' access; a version the reader could read in some of its snapshots only is shown
    /// once per run of them, as a version of its own (as their own repository would hold it).
    pub reader: Option<Reader>,
}

impl Scope {
    /// No rule of the scope can see anything: every query in it is answered empty at once.
    pub fn sees_nothing(&self) -> bool {
        self.owner.is_none() && self.paths.is_empty() && self.hosts.is_empty() && self.reader.is_none()
    }
}

/// Where a result stands in its query's order, for [`Query::after`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// [`Order::RecentFirst`] and [`Order::OldestFirst`]: the key of the last snapshot that held
    /// the version (present ones after every key), then the row, then `sub` (0, or for a
    /// version a reader sees again from a later snapshot on, its own row, `row` being that of
    /// the folder version that let them see it again: see `ScopeSql::runs_table`).
    Seen { seen: i64, row: i64, sub: i64 },
    /// [`Order::Path`]: host, folder, name (their bytes), first snapshot key, row.
    Path { host: String, dir: Vec<u8>, name: Vec<u8>, first: i64, row: i64 },
}

/// The largest page.
pub const MAX_LIMIT: u32 = 10_000;

/// A snapshot as results name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnapshotRef {
    /// Full hex id.
    pub id: String,
    pub time: Timestamp,
}

/// When a deleted file went: after `last_present` and by `first_absent` (the host's next snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeletionWindow {
    pub last_present: SnapshotRef,
    pub first_absent: SnapshotRef,
}

/// One version of one path: present, unchanged, in every snapshot of its host from `first_seen`
/// to `last_seen`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileVersion {
    pub host: String,
    /// Absolute path as in the snapshot (`/srv/home/alice/notes.txt`), lossy UTF-8: the exact
    /// bytes are [`FileVersion::path_bytes`].
    pub path: String,
    /// The entry's name, lossy UTF-8 likewise.
    pub name: String,
    /// `file`, `dir`, `symlink`, `blockdev`, `chardev`, `fifo`, `socket`.
    pub kind: String,
    pub size: u64,
    pub mtime: Timestamp,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// 16 hex digits identifying the content (chunk list, or symlink target); 0 for others.
    pub content: String,
    pub first_seen: SnapshotRef,
    pub last_seen: SnapshotRef,
    /// In the host's latest snapshot.
    pub present: bool,
    /// Set when this is the newest version of a path that is absent from the latest snapshot
    /// (with a [`Scope`], the newest one in the scope).
    pub deleted: Option<DeletionWindow>,
    /// The path's bytes, and how many of them at the end are the name.
    #[serde(skip)]
    pub(super) raw_path: Vec<u8>,
    #[serde(skip)]
    pub(super) name_len: usize,
    /// The sort keys, for [`FileVersion::position`].
    #[serde(skip)]
    pub(super) row: i64,
    #[serde(skip)]
    pub(super) seen_key: i64,
    #[serde(skip)]
    pub(super) first_key: i64,
    /// Where the result sorts among those of its `seen_key` (see [`Position::Seen`]).
    #[serde(skip)]
    pub(super) sort_row: i64,
    #[serde(skip)]
    pub(super) sub: i64,
}

impl FileVersion {
    /// The absolute path exactly as in the snapshot (names need not be UTF-8).
    pub fn path_bytes(&self) -> &[u8] {
        &self.raw_path
    }

    /// The path of the folder holding it (`b""` for the root).
    pub(super) fn dir_bytes(&self) -> &[u8] {
        &self.raw_path[..self.raw_path.len() - self.name_len - 1]
    }

    pub(super) fn name_bytes(&self) -> &[u8] {
        &self.raw_path[self.raw_path.len() - self.name_len..]
    }

    /// This result's position in `order`: a query with it as [`Query::after`] goes on after it.
    pub fn position(&self, order: Order) -> Position {
        match order {
            Order::RecentFirst | Order::OldestFirst => {
                Position::Seen { seen: self.seen_key, row: self.sort_row, sub: self.sub }
            }
            Order::Path => Position::Path {
                host: self.host.clone(),
                dir: self.dir_bytes().to_vec(),
                name: self.name_bytes().to_vec(),
                first: self.first_key,
                row: self.row,
            },
        }
    }
}

/// A page of results; `next_offset` is set when there may be more.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub offset: u64,
    pub next_offset: Option<u64>,
}

/// A catalogued snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogSnapshot {
    pub id: String,
    pub host: String,
    pub time: Timestamp,
}

/// Sizes and counts, for `rewind catalog stats` and benchmarks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub hosts: u64,
    pub snapshots: u64,
    pub versions: u64,
    pub deleted: u64,
    pub names: u64,
    pub dirs: u64,
    /// Database file plus its WAL.
    pub bytes_on_disk: u64,
}
