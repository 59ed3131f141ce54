//! Queries: find, deleted, history. Plain structs in, plain serializable structs out.

use std::collections::HashMap;

use jiff::Timestamp;
use rewind_store::{NodeKind, SnapshotId};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::{Deserialize, Serialize};

use crate::Catalog;
use crate::access::{R, Reader, X, permits};
use crate::error::{Error, Result};
use crate::update::{kind_code, kind_from_code};

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
    raw_path: Vec<u8>,
    #[serde(skip)]
    name_len: usize,
    /// The sort keys, for [`FileVersion::position`].
    #[serde(skip)]
    row: i64,
    #[serde(skip)]
    seen_key: i64,
    #[serde(skip)]
    first_key: i64,
    /// Where the result sorts among those of its `seen_key` (see [`Position::Seen`]).
    #[serde(skip)]
    sort_row: i64,
    #[serde(skip)]
    sub: i64,
}

impl FileVersion {
    /// The absolute path exactly as in the snapshot (names need not be UTF-8).
    pub fn path_bytes(&self) -> &[u8] {
        &self.raw_path
    }

    /// The path of the folder holding it (`b""` for the root).
    fn dir_bytes(&self) -> &[u8] {
        &self.raw_path[..self.raw_path.len() - self.name_len - 1]
    }

    fn name_bytes(&self) -> &[u8] {
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

pub(crate) fn snapshot_id(b: &[u8]) -> SnapshotId {
    let mut h = [0u8; 32];
    if b.len() == 32 {
        h.copy_from_slice(b);
    }
    SnapshotId(rewind_store::Hash(h))
}

pub(crate) fn ts_from_ns(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn ts_ns(t: Timestamp) -> i64 {
    t.as_nanosecond().clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `/a/b/` and `a/b` both mean `/a/b`; `/` and the empty path mean the root (None).
pub(crate) fn normalize_path(p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for c in p.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    (!out.is_empty()).then_some(out)
}

/// The longest run of literal characters of a glob, for the trigram prefilter.
fn glob_literal(glob: &str) -> String {
    let (mut best, mut cur) = (String::new(), String::new());
    let flush = |best: &mut String, cur: &mut String| {
        if cur.chars().count() > best.chars().count() {
            *best = std::mem::take(cur);
        }
        cur.clear();
    };
    let (mut depth, mut escaped) = (0u32, false);
    for c in glob.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                cur.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' | '{' => {
                flush(&mut best, &mut cur);
                depth += 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            '*' | '?' => flush(&mut best, &mut cur),
            _ if depth == 0 => cur.push(c),
            _ => {}
        }
    }
    flush(&mut best, &mut cur);
    best
}

/// One character case-folded for the trigram counts (an approximation of the FTS5 index's own
/// folding, which matters only for choosing trigrams, never for results).
fn fold(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

/// The trigrams of a name or pattern, folded, in order (with repeats).
pub(crate) fn trigrams(s: &str) -> Vec<[char; 3]> {
    let chars: Vec<char> = s.chars().map(fold).collect();
    chars.windows(3).map(|w| [w[0], w[1], w[2]]).collect()
}

/// How many trigrams of a pattern go to the FTS5 index: each costs time in proportion to the
/// names holding it, and three well-chosen ones pin a pattern down.
const TRIGRAMS_PER_QUERY: usize = 3;

/// What [`Catalog::candidates`] found.
enum Candidates {
    Few,
    Common,
    Many,
}

/// The clause that reads the names [`Catalog::candidates`] found.
const NAMES_FOUND: &str = "v.name IN (SELECT id FROM temp.names_found)";

/// SQL functions the queries use: `rw_glob(pattern, name)` and `rw_icontains(name, lowered)`.
pub(crate) fn register_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("rw_glob", 2, flags, |ctx| {
        let matcher =
            ctx.get_or_create_aux(0, |v| -> std::result::Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let pat = v.as_str()?;
                Ok(globset::GlobBuilder::new(pat).case_insensitive(true).build()?.compile_matcher())
            })?;
        let name = ctx.get_raw(1).as_str().unwrap_or("");
        Ok(matcher.is_match(name))
    })?;
    conn.create_scalar_function("rw_icontains", 2, flags, |ctx| {
        let name = ctx.get_raw(0).as_str().unwrap_or("");
        let needle = ctx.get_raw(1).as_str().unwrap_or("");
        if name.is_ascii() && needle.is_ascii() {
            // The same answer without a lowered copy per row (`needle` is lowercase already).
            let (name, needle) = (name.as_bytes(), needle.as_bytes());
            return Ok(needle.is_empty() || name.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle)));
        }
        Ok(name.to_lowercase().contains(needle))
    })?;
    Ok(())
}

/// The columns every query reads of `v` (versions, or a table shaped like them), before FROM.
macro_rules! select_columns {
    () => {
        concat!(
            "SELECT v.id, h.name, d.path, n.name, v.kind, v.size, v.mtime, v.mtime_ns, v.mode, v.uid, coalesce(v.gid, v.uid), ",
            "v.content, v.first, coalesce(v.last, h.latest), v.last IS NULL, v.gone, v.host, v.dir, v.name, ",
            "coalesce(v.last, 140737488355327), n.raw, "
        )
    };
}

/// What every query joins to `v`, after it.
macro_rules! select_joins {
    () => {
        " JOIN names n ON n.id = v.name JOIN hosts h ON h.id = v.host JOIN dirs d ON d.id = v.dir"
    };
}

macro_rules! concat_select {
    ($from:literal) => {
        concat!(select_columns!(), "v.id, 0 FROM ", $from, select_joins!())
    };
}

/// A query's SELECT from the versions seen in runs ([`ScopeSql::runs_table`]). `made_once`:
/// they are made once for the query, then filtered and sorted (SQLite would otherwise look for
/// them anew from each name that matches); else the query reads them in its own order (the
/// deleted ones, from the index of deleted rows).
fn select_from(table: &str, made_once: bool) -> String {
    if made_once {
        format!(
            "WITH runs AS MATERIALIZED {table} {}v.sort_row, v.sub FROM runs v{}",
            select_columns!(),
            select_joins!()
        )
    } else {
        format!("{}v.sort_row, v.sub FROM {table} v{}", select_columns!(), select_joins!())
    }
}

const SELECT: &str = concat_select!("versions v");
const SELECT_BY_NAME: &str = concat_select!("versions v INDEXED BY versions_name");
const SELECT_RECENT: &str = concat_select!("versions v INDEXED BY versions_recent");

/// How much of a scan in result order a query may spend (SQLite virtual-machine steps) before
/// it is answered through the name index instead.
pub(crate) const SCAN_BUDGET: u64 = 500_000;

/// A pattern whose trigrams are in at most this many names has them tested one by one.
const MAX_CANDIDATES: i64 = 20_000;

/// A pattern that matches at most this many names is answered through them at once; one that
/// matches more is first tried by a scan in result order (it is common).
const FEW_NAMES: i64 = 10_000;

/// A test of a name in SQL over `n.name`, `{}` where its parameter goes, and that parameter.
struct NameTest {
    sql: &'static str,
    arg: Value,
}

#[derive(Clone)]
struct Sql {
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Sql {
    fn push(&mut self, clause: &str, params: impl IntoIterator<Item = Value>) {
        self.clauses.push(clause.to_string());
        self.params.extend(params);
    }

    /// Clause `at` (whose parameters are `params[from..from + n]`) left out, or replaced.
    fn without(&self, (at, from, n): (usize, usize, usize), instead: Option<&(String, Vec<Value>)>) -> Sql {
        let mut out = Sql { clauses: self.clauses.clone(), params: self.params[..from].to_vec() };
        out.params.extend(instead.iter().flat_map(|i| i.1.iter().cloned()));
        out.params.extend(self.params[from + n..].iter().cloned());
        match instead {
            Some((clause, _)) => out.clauses[at] = clause.clone(),
            None => {
                out.clauses.remove(at);
            }
        }
        out
    }
}

/// The key of open versions in `versions_recent` (and in positions): after every snapshot key.
const OPEN_KEY: i64 = 140_737_488_355_327;

/// A [`Scope`] in SQL. Owner, paths and hosts see whole versions; a reader sees a version in
/// the snapshots where they may read it: whole when its folders' searchability never changed
/// for them (`temp.scope_ctx`), else for each run of snapshots in which it did not
/// (`temp.ctx_runs`), each run shown as a version of its own ([`ScopeSql::runs_table`]).
struct ScopeSql {
    /// Owner, paths and hosts, each with `{a}` where the alias of `versions` goes.
    plain: Vec<String>,
    params: Vec<Value>,
    /// The scope has a reader: `temp.scope_access` and `temp.scope_ctx` are filled.
    reader: bool,
    /// Some of the reader's contexts are searchable for runs of snapshots only.
    runs: bool,
}

impl ScopeSql {
    /// Owner, paths or hosts say so, of the versions aliased `a`.
    fn plain_on(&self, a: &str) -> String {
        if self.plain.is_empty() { "0".to_string() } else { format!("({})", self.plain.join(" OR ")).replace("{a}", a) }
    }

    /// Whole versions in the scope: the versions aliased `a`, in the directories aliased `d`.
    fn on(&self, a: &str, d: &str) -> String {
        let plain = self.plain_on(a);
        if !self.reader {
            return plain;
        }
        format!(
            "({plain} OR ({a}.access IN (SELECT id FROM temp.scope_access) AND {d}.ctx IN (SELECT id FROM temp.scope_ctx)))"
        )
    }

    /// "The scope sees the path of `x` (a version-shaped row: dir, name, last) in a snapshot
    /// after `x.last`": then `x` is not where the path went, for this reader.
    fn later(&self, x: &str) -> (String, Vec<Value>) {
        let runs = if self.runs {
            format!(
                " OR (w.access IN (SELECT id FROM temp.scope_access) AND EXISTS (SELECT 1 FROM temp.ctx_runs r
                   WHERE r.ctx = dw.ctx AND max(w.first, r.lo, {x}.last + 1) <= min(coalesce(w.last, {OPEN_KEY}), r.hi)))"
            )
        } else {
            String::new()
        };
        (
            format!(
                "EXISTS (SELECT 1 FROM versions w JOIN dirs dw ON dw.id = w.dir WHERE w.dir = {x}.dir AND w.name = {x}.name
                 AND ((coalesce(w.last, {OPEN_KEY}) > {x}.last AND {}){runs}))",
                self.on("w", "dw")
            ),
            self.params.clone(),
        )
    }

    /// The versions the reader sees for runs of their snapshots only, one row per version and
    /// run, shaped like `versions` (to stand in for it in a query): `first` and `last` are the
    /// run's part of the version's interval, `last` NULL when that reaches the host's latest
    /// snapshot; `gone` is 1 for a deleted path's newest version seen to its end, 2 for a part
    /// that ends earlier (the reader lost it there, unless a later one is theirs: see
    /// [`ScopeSql::later`]). A part that starts after its version does sorts where a catalog of
    /// the reader's own files would have met it: in that snapshot, just after the version of the
    /// folder whose access let them see it again (`sort_row` that folder version's row, `sub`
    /// its own; else `sort_row` its own row and `sub` 0, as every whole version).
    fn runs_table(&self, filter: Option<(&str, &[Value])>) -> (String, Vec<Value>) {
        let mut params = self.params.clone();
        params.extend(filter.iter().flat_map(|f| f.1.iter().cloned()));
        (
            format!(
                "(SELECT v.id AS id, v.host AS host, v.dir AS dir, v.name AS name, v.kind AS kind, v.mode AS mode,
                   v.uid AS uid, v.gid AS gid, v.size AS size, v.mtime AS mtime, v.mtime_ns AS mtime_ns,
                   v.content AS content, max(v.first, r.lo) AS first,
                   CASE WHEN v.last IS NULL AND r.hi >= hh.latest THEN NULL
                        ELSE min(coalesce(v.last, hh.latest), r.hi) END AS last,
                   CASE WHEN v.last IS NULL AND r.hi >= hh.latest THEN 0
                        WHEN v.gone = 1 AND r.hi >= v.last THEN 1 ELSE 2 END AS gone,
                   v.access AS access,
                   CASE WHEN r.lo > v.first THEN coalesce(r.row, v.id) ELSE v.id END AS sort_row,
                   CASE WHEN r.lo > v.first THEN v.id ELSE 0 END AS sub
                 FROM temp.ctx_runs r CROSS JOIN dirs dd ON dd.ctx = r.ctx CROSS JOIN versions v ON v.dir = dd.id
                   CROSS JOIN hosts hh ON hh.id = v.host
                 WHERE r.lo <= coalesce(v.last, hh.latest) AND r.hi >= v.first
                   AND v.access IN (SELECT id FROM temp.scope_access) AND NOT {}{})",
                self.plain_on("v"),
                filter.map(|f| format!(" AND {}", f.0)).unwrap_or_default()
            ),
            params,
        )
    }
}

/// A run of snapshots (inclusive keys; `hi` is `i64::MAX` for "and every later one"), and the
/// row of the version of the folder whose access opened it, when a folder did.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    lo: i64,
    hi: i64,
    row: Option<i64>,
}

/// When a reader may search a folder, or every folder of a context: never, always, or in runs
/// of snapshots (sorted, disjoint).
#[derive(Clone, Debug, PartialEq)]
enum Searchable {
    Never,
    Always,
    Runs(Vec<Run>),
}

impl Searchable {
    /// Both, at once.
    fn and(&self, other: &Searchable) -> Searchable {
        match (self, other) {
            (Searchable::Never, _) | (_, Searchable::Never) => Searchable::Never,
            (Searchable::Always, x) | (x, Searchable::Always) => x.clone(),
            (Searchable::Runs(a), Searchable::Runs(b)) => {
                let mut out = Vec::new();
                let (mut i, mut j) = (0, 0);
                while i < a.len() && j < b.len() {
                    let (x, y) = (a[i], b[j]);
                    let (lo, hi) = (x.lo.max(y.lo), x.hi.min(y.hi));
                    if lo <= hi {
                        // Opened by the folder that opened last (the inner one, met after the
                        // outer, when both opened at once).
                        let row = match x.lo.cmp(&y.lo) {
                            std::cmp::Ordering::Greater => x.row,
                            std::cmp::Ordering::Less => y.row,
                            std::cmp::Ordering::Equal => x.row.max(y.row),
                        };
                        out.push(Run { lo, hi, row });
                    }
                    if x.hi < y.hi { i += 1 } else { j += 1 }
                }
                if out.is_empty() { Searchable::Never } else { Searchable::Runs(out) }
            }
        }
    }
}

/// A folder's searchability over its host's snapshots (`keys`, sorted): from its access since
/// each key (`segments`, sorted, the first since [`crate::update::SINCE_EVER`]), runs of the
/// snapshots that exist, in which the reader may search it.
fn folder_runs(segments: &[(i64, bool)], keys: &[i64]) -> Searchable {
    let mut runs: Vec<Run> = Vec::new();
    for (k, &(since, ok)) in segments.iter().enumerate() {
        if !ok {
            continue;
        }
        let until = segments.get(k + 1).map(|s| s.0);
        // The snapshots of this segment: from `since` up to the next one's.
        let a = keys.partition_point(|&x| x < since);
        let b = until.map_or(keys.len(), |u| keys.partition_point(|&x| x < u));
        if a >= b {
            continue;
        }
        let (lo, hi) = (keys[a], if until.is_none() { i64::MAX } else { keys[b - 1] });
        match runs.last_mut() {
            // Consecutive segments the reader may both search are one run.
            Some(last) if last.hi != i64::MAX && keys.partition_point(|&x| x <= last.hi) == a => last.hi = hi,
            _ => runs.push(Run { lo, hi, row: None }),
        }
    }
    match runs.as_slice() {
        [] => Searchable::Never,
        [Run { lo, hi: i64::MAX, .. }] if keys.first().is_none_or(|f| lo <= f) => Searchable::Always,
        _ => Searchable::Runs(runs),
    }
}

/// How two results compare in `order`, as the queries' ORDER BY sorts them.
fn result_order(order: Order, a: &FileVersion, b: &FileVersion) -> std::cmp::Ordering {
    match order {
        Order::RecentFirst => (b.seen_key, b.sort_row, b.sub).cmp(&(a.seen_key, a.sort_row, a.sub)),
        Order::OldestFirst => (a.seen_key, a.sort_row, a.sub).cmp(&(b.seen_key, b.sort_row, b.sub)),
        Order::Path => (&a.host, a.dir_bytes(), a.name_bytes(), a.first_key, a.row).cmp(&(
            &b.host,
            b.dir_bytes(),
            b.name_bytes(),
            b.first_key,
            b.row,
        )),
    }
}

/// A normalized path split into its folder and name.
fn split_path(p: &[u8]) -> (&[u8], &[u8]) {
    let at = p.iter().rposition(|&b| b == b'/').expect("normalized paths start with /");
    (&p[..at], &p[at + 1..])
}

/// `p` (normalized) and everything below it, on the versions aliased `a`. Paths are compared
/// as bytes: `p/` up to `p0` (`0` follows `/`) is everything below `p`.
fn path_clause(a: &str, p: &[u8]) -> (String, Vec<Value>) {
    let (parent, base) = split_path(p);
    (
        format!(
            "({a}.dir IN (SELECT id FROM dirs WHERE path = ? OR (path >= ? AND path < ?))
              OR ({a}.dir IN (SELECT id FROM dirs WHERE path = ?) AND {a}.name IN (SELECT id FROM names WHERE raw = ?)))"
        ),
        vec![
            Value::Blob(p.to_vec()),
            Value::Blob([p, b"/"].concat()),
            Value::Blob([p, b"0"].concat()),
            Value::Blob(parent.to_vec()),
            Value::Blob(base.to_vec()),
        ],
    )
}

impl Catalog {
    /// Search versions. See [`Query`].
    pub fn find(&self, q: &Query) -> Result<Page<FileVersion>> {
        let limit = if q.limit == 0 { 100 } else { q.limit.min(MAX_LIMIT) };
        let mut items = self.rows(q, u64::from(limit))?;
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        Ok(Page { items, offset: q.offset, next_offset: more.then_some(q.offset + u64::from(limit)) })
    }

    /// The results of `q` after `q.offset`, `limit` of them and one more if there is one.
    fn rows(&self, q: &Query, limit: u64) -> Result<Vec<FileVersion>> {
        // The name test in two forms: through the trigram index (for selective patterns), and
        // per row (while scanning in result order, for common ones).
        let mut sql = Sql { clauses: Vec::new(), params: Vec::new() };
        let mut per_row = Sql { clauses: Vec::new(), params: Vec::new() };
        // 0 when the matching names are known to be few: a scan in result order would not pay.
        let mut selectivity = 1.0f64;
        // The matching names are in `temp.names_found`.
        let mut found = false;
        match &q.name {
            None => {}
            Some(NameMatch::Substring(s)) => {
                let s = s.trim();
                if s.is_empty() {
                    return Err(Error::InvalidInput("empty name pattern".into()));
                }
                let test = NameTest { sql: "rw_icontains(n.name, {})", arg: Value::Text(s.to_lowercase()) };
                found = self.push_name_test(s, test, &mut sql, &mut per_row, &mut selectivity)?;
            }
            Some(NameMatch::Glob(g)) => {
                globset::GlobBuilder::new(g)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| Error::InvalidInput(format!("bad glob {g:?}: {e}")))?;
                let test = NameTest { sql: "rw_glob({}, n.name)", arg: Value::Text(g.clone()) };
                found = self.push_name_test(&glob_literal(g), test, &mut sql, &mut per_row, &mut selectivity)?;
            }
        }
        let name_params = sql.params.len();
        if let Some(p) = q.path_prefix.as_deref().and_then(normalize_path) {
            let (clause, params) = path_clause("v", &p);
            sql.push(&clause, params);
        }
        if let Some(h) = &q.host {
            sql.push("v.host = (SELECT id FROM hosts WHERE name = ?)", [Value::Text(h.clone())]);
        }
        if let Some(u) = q.uid {
            sql.push("v.uid = ?", [Value::Integer(u.into())]);
        }
        if let Some(g) = q.gid {
            sql.push("coalesce(v.gid, v.uid) = ?", [Value::Integer(g.into())]);
        }
        if let Some(k) = q.kind {
            sql.push("v.kind = ?", [Value::Integer(kind_code(k))]);
        }
        if let Some(s) = q.min_size {
            sql.push("v.size >= ?", [Value::Integer(s.min(i64::MAX as u64) as i64)]);
        }
        if let Some(s) = q.max_size {
            sql.push("v.size <= ?", [Value::Integer(s.min(i64::MAX as u64) as i64)]);
        }
        if let Some(t) = q.mtime_from {
            let ns = ts_ns(t);
            sql.push(
                "(v.mtime > ? OR (v.mtime = ? AND v.mtime_ns >= ?))",
                [
                    Value::Integer(ns.div_euclid(1_000_000_000)),
                    Value::Integer(ns.div_euclid(1_000_000_000)),
                    Value::Integer(ns.rem_euclid(1_000_000_000)),
                ],
            );
        }
        if let Some(t) = q.mtime_to {
            let ns = ts_ns(t);
            sql.push(
                "(v.mtime < ? OR (v.mtime = ? AND v.mtime_ns <= ?))",
                [
                    Value::Integer(ns.div_euclid(1_000_000_000)),
                    Value::Integer(ns.div_euclid(1_000_000_000)),
                    Value::Integer(ns.rem_euclid(1_000_000_000)),
                ],
            );
        }
        if let Some(t) = q.seen_from {
            sql.push(
                "coalesce(v.last, h.latest) >= coalesce((SELECT min(key) FROM snapshots WHERE time_ns >= ?), 9223372036854775807)",
                [Value::Integer(ts_ns(t))],
            );
        }
        if let Some(t) = q.seen_to {
            sql.push(
                "v.first <= coalesce((SELECT max(key) FROM snapshots WHERE time_ns <= ?), -9223372036854775808)",
                [Value::Integer(ts_ns(t))],
            );
        }
        let scope = match &q.scope {
            Some(scope) => Some(self.scope_sql(scope)?),
            None => None,
        };
        if scope.as_ref().is_some_and(|s| s.runs) && q.offset > 0 {
            // The versions seen for runs of snapshots come from a query of their own, merged in
            // order: an offset counts in the merged results.
            let mut all = self.rows(&Query { offset: 0, ..q.clone() }, q.offset + limit)?;
            return Ok(all.split_off(usize::try_from(q.offset).unwrap_or(usize::MAX).min(all.len())));
        }
        let deleted = q.deleted || q.deleted_since.is_some();
        // Where the deleted clause is: the versions seen in runs test it row by row, in order.
        let deleted_at = (deleted && scope.is_some()).then_some((sql.clauses.len(), sql.params.len()));
        if deleted {
            // `gone != 0` as written selects the partial indexes of deleted rows.
            match &scope {
                None => sql.push("v.gone != 0 AND v.gone = 1", []),
                Some(scope) => {
                    let (later, params) = scope.later("v");
                    sql.push(&format!("v.gone != 0 AND (v.gone = 1 OR (v.gone = 2 AND NOT {later}))"), params);
                }
            }
        }
        if let Some(t) = q.deleted_since {
            // The first snapshot without the file is at or after t exactly when the last one with
            // it is at or after the host's last snapshot before t.
            sql.push(
                "v.last >= coalesce((SELECT max(key) FROM snapshots s WHERE s.host = v.host AND s.time_ns < ?), -9223372036854775808)",
                [Value::Integer(ts_ns(t))],
            );
        }
        // Where the scope's clause is, to leave it out of the query of runs.
        let scope_at = scope.as_ref().map(|s| (sql.clauses.len(), sql.params.len(), s.params.len()));
        if let Some(scope) = &scope {
            sql.push(&scope.on("v", "d"), scope.params.clone());
        }
        // Present versions first (they are in the latest snapshot of their host), newest version
        // first; then by the last snapshot that held them. `versions_recent` indexes exactly
        // this key, so a scan in result order can stop at the page's end.
        let seen = if deleted { "v.last" } else { "coalesce(v.last, 140737488355327)" };
        let order = match q.order {
            Order::RecentFirst => format!("{seen} DESC, v.id DESC"),
            Order::OldestFirst => format!("{seen} ASC, v.id ASC"),
            Order::Path => "h.name, d.path, n.raw, v.first, v.id".to_string(),
        };
        // Keyset paging: only what comes after `q.after` in this order.
        let mut after: Option<(String, Vec<Value>)> = None;
        // The same for the versions seen in runs ([`ScopeSql::runs_table`]), when it differs.
        let mut after_runs: Option<(String, Vec<Value>)> = None;
        match (&q.after, q.order) {
            (None, _) => {}
            // A whole version sorts as (seen, row, 0); after a position with `sub` > 0 (a run,
            // just after the folder version `row`) comes that row itself in the recent order.
            (Some(Position::Seen { seen: k, row, sub }), Order::RecentFirst) => {
                after = Some((
                    format!("{seen} <= ? AND ({seen} < ? OR v.id < ?)"),
                    vec![Value::Integer(*k), Value::Integer(*k), Value::Integer(row + i64::from(*sub > 0))],
                ));
                after_runs = Some((
                    format!("({seen}, v.sort_row, v.sub) < (?, ?, ?)"),
                    vec![Value::Integer(*k), Value::Integer(*row), Value::Integer(*sub)],
                ));
            }
            (Some(Position::Seen { seen: k, row, sub }), Order::OldestFirst) => {
                after = Some((
                    format!("{seen} >= ? AND ({seen} > ? OR v.id > ?)"),
                    vec![Value::Integer(*k), Value::Integer(*k), Value::Integer(*row)],
                ));
                after_runs = Some((
                    format!("({seen}, v.sort_row, v.sub) > (?, ?, ?)"),
                    vec![Value::Integer(*k), Value::Integer(*row), Value::Integer(*sub)],
                ));
            }
            (Some(Position::Path { host, dir, name, first, row }), Order::Path) => {
                after = Some((
                    "(h.name, d.path, n.raw, v.first, v.id) > (?, ?, ?, ?, ?)".to_string(),
                    vec![
                        Value::Text(host.clone()),
                        Value::Blob(dir.clone()),
                        Value::Blob(name.clone()),
                        Value::Integer(*first),
                        Value::Integer(*row),
                    ],
                ));
            }
            (Some(_), _) => return Err(Error::InvalidInput("a position of another order".into())),
        }
        let tail = format!("ORDER BY {order} LIMIT {} OFFSET {}", limit + 1, q.offset);
        let later = scope.as_ref().map(|s| s.later("v"));
        let mut items = None;
        // The open versions alone answer a first page of present versions, and any page that
        // continues among them.
        let open_after = match &q.after {
            None => Some(None),
            Some(Position::Seen { seen: k, row, sub }) if *k == OPEN_KEY => Some(Some(row + i64::from(*sub > 0))),
            Some(_) => None,
        };
        if self.scan_budget > 0
            && found
            && q.order == Order::RecentFirst
            && !deleted
            && let Some(open_after) = open_after
        {
            // Present versions come first, newest first: when the matching names have a page
            // of them, the small index of open versions alone finds it (the table is read
            // for the page only).
            let mut params = sql.params.clone();
            let mut clauses = sql.clauses.clone();
            if let Some(row) = open_after {
                clauses.push("v.id < ?".into());
                params.push(Value::Integer(row));
            }
            let text = format!(
                "{SELECT} WHERE v.id IN (SELECT v.id FROM versions v INDEXED BY versions_open{}{} WHERE {} AND v.last IS NULL
                 ORDER BY v.id DESC LIMIT {} OFFSET {}) ORDER BY v.id DESC",
                if q.seen_from.is_some() { " JOIN hosts h ON h.id = v.host" } else { "" },
                if scope.is_some() { " JOIN dirs d ON d.id = v.dir" } else { "" },
                clauses.join(" AND "),
                limit + 1,
                q.offset
            );
            let page = self.run(&text, params, None, later.as_ref())?.expect("no budget, no interruption");
            if page.len() as u64 > limit {
                items = Some(page);
            }
        }
        let after_at = after.as_ref().map(|a| (sql.clauses.len(), sql.params.len(), a.1.len()));
        if let Some((clause, params)) = &after {
            sql.push(clause, params.clone());
        }
        if items.is_none()
            && self.scan_budget > 0
            && selectivity > 0.0
            && q.order != Order::Path
            && !deleted
            && q.offset + limit <= u64::from(MAX_LIMIT)
        {
            // Scan in result order with the name tested per row, within a budget: common
            // patterns fill the page long before it runs out; rare ones fall back to the index.
            let mut clauses = per_row.clauses.clone();
            clauses.extend(sql.clauses[usize::from(q.name.is_some())..].iter().cloned());
            let mut params = per_row.params.clone();
            params.extend(sql.params[name_params..].iter().cloned());
            let text = format!(
                "{SELECT_RECENT} {} {} {tail}",
                if clauses.is_empty() { "" } else { "WHERE" },
                clauses.join(" AND ")
            );
            items = self.run(&text, params, Some(self.scan_budget), later.as_ref())?;
        }
        let mut items = match items {
            Some(items) => items,
            None => {
                let text = format!(
                    "{}{} {} {tail}",
                    if q.name.is_some() && !deleted { SELECT_BY_NAME } else { SELECT },
                    if sql.clauses.is_empty() { "" } else { " WHERE" },
                    sql.clauses.join(" AND ")
                );
                self.run(&text, sql.params.clone(), None, later.as_ref())?.expect("no budget, no interruption")
            }
        };
        if let (Some(s), Some(scope_at)) = (scope.as_ref().filter(|s| s.runs), scope_at) {
            // The versions the reader sees for runs of snapshots: the same query over them,
            // without the scope (the table applies it) and in their own order.
            // (Changed from the last clause to the first, so that each one's place holds.)
            let mut runs_sql = match (after_at, &after_runs) {
                (Some(after_at), Some(instead)) => sql.without(after_at, Some(instead)),
                _ => sql.clone(),
            }
            .without(scope_at, None);
            // Whether a part the reader lost is where its path went for them is asked of the
            // parts in order, until the page is full ([`Catalog::run`] asks `later`), not of all.
            if let Some((at, from)) = deleted_at {
                runs_sql = runs_sql.without((at, from, s.params.len()), Some(&("v.gone != 0".to_string(), vec![])));
            }
            // The name's test through its index, inside, where it picks the rows to make.
            let name = (q.name.is_some() && !deleted).then(|| (sql.clauses[0].as_str(), &sql.params[..name_params]));
            let (table, mut params) = s.runs_table(name);
            params.extend(runs_sql.params);
            let order = match q.order {
                Order::RecentFirst => format!("{seen} DESC, v.sort_row DESC, v.sub DESC"),
                Order::OldestFirst => format!("{seen} ASC, v.sort_row ASC, v.sub ASC"),
                Order::Path => order,
            };
            let (mut offset, mut batch) = (0, limit + 1);
            let mut found = Vec::new();
            loop {
                let text = format!(
                    "{} {} {} ORDER BY {order} LIMIT {batch} OFFSET {offset}",
                    select_from(&table, !deleted),
                    if runs_sql.clauses.is_empty() { "" } else { "WHERE" },
                    runs_sql.clauses.join(" AND "),
                );
                let rows = self.run(&text, params.clone(), None, later.as_ref())?.expect("no budget, no interruption");
                let full = rows.len() as u64 == batch;
                found.extend(rows.into_iter().filter(|v| deleted_at.is_none() || v.deleted.is_some()));
                if deleted_at.is_none() || !full || found.len() as u64 > limit {
                    break;
                }
                offset += batch;
                batch *= 4;
            }
            items.extend(found);
            items.sort_by(|a, b| result_order(q.order, a, b));
            items.truncate(usize::try_from(limit + 1).unwrap_or(usize::MAX));
        }
        Ok(items)
    }

    /// A scope as SQL: the reader's access classes, their searchable contexts and the runs of
    /// snapshots of the others go to temporary tables first (they are few: one per distinct
    /// owner, mode and ACL, per distinct chain of folders, and per change of a folder's access
    /// that matters to this reader).
    fn scope_sql(&self, scope: &Scope) -> Result<ScopeSql> {
        let mut plain = Vec::new();
        let mut params = Vec::new();
        if let Some(u) = scope.owner {
            plain.push("{a}.uid = ?".to_string());
            params.push(Value::Integer(u.into()));
        }
        for p in &scope.paths {
            match normalize_path(p) {
                None => plain.push("1".to_string()),
                Some(p) => {
                    let (clause, p) = path_clause("{a}", &p);
                    plain.push(clause);
                    params.extend(p);
                }
            }
        }
        if !scope.hosts.is_empty() {
            plain.push(format!(
                "{{a}}.host IN (SELECT id FROM hosts WHERE name IN ({}))",
                vec!["?"; scope.hosts.len()].join(", ")
            ));
            params.extend(scope.hosts.iter().map(|h| Value::Text(h.clone())));
        }
        let runs = match &scope.reader {
            Some(reader) => self.readable_to_temp(reader)?,
            None => false,
        };
        Ok(ScopeSql { plain, params, reader: scope.reader.is_some(), runs })
    }

    /// Fill `temp.scope_access` with the access classes `reader` may read (folders: read and
    /// search), `temp.scope_ctx` with the contexts whose every folder they may search in every
    /// snapshot, and `temp.ctx_runs` with the runs of snapshots in which they may search every
    /// folder of the others (those with folders whose access changed); true if it has any.
    fn readable_to_temp(&self, reader: &Reader) -> Result<bool> {
        self.conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS scope_access(id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS scope_ctx(id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS ctx_runs(ctx INTEGER NOT NULL, lo INTEGER NOT NULL,
                 hi INTEGER NOT NULL, row INTEGER, PRIMARY KEY (ctx, lo)) WITHOUT ROWID;
             DELETE FROM temp.scope_access; DELETE FROM temp.scope_ctx; DELETE FROM temp.ctx_runs;",
        )?;
        let mut searchable: HashMap<i64, bool> = HashMap::new();
        {
            let mut add = self.conn.prepare_cached("INSERT INTO temp.scope_access(id) VALUES (?1)")?;
            let mut stmt = self.conn.prepare_cached("SELECT id, dir, mode, uid, gid, acl FROM access")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (id, dir): (i64, bool) = (r.get(0)?, r.get(1)?);
                let (mode, uid, gid): (u32, u32, u32) = (r.get(2)?, r.get(3)?, r.get(4)?);
                let acl: Vec<u8> = r.get(5)?;
                let acl = (!acl.is_empty()).then_some(acl.as_slice());
                if permits(reader, uid, gid, mode, acl, if dir { R | X } else { R }) {
                    add.execute([id])?;
                }
                if dir {
                    searchable.insert(id, permits(reader, uid, gid, mode, acl, X));
                }
            }
        }
        // Folders whose access changed: when the reader may search each, over its host's
        // snapshots.
        let mut keys: HashMap<i64, Vec<i64>> = HashMap::new();
        {
            let mut stmt = self.conn.prepare_cached("SELECT host, key FROM snapshots ORDER BY key")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                keys.entry(r.get(0)?).or_default().push(r.get(1)?);
            }
        }
        let mut folders: HashMap<i64, Searchable> = HashMap::new();
        let mut opened_by = self.conn.prepare_cached(
            "SELECT v.id FROM dirs f JOIN versions v ON v.dir = f.parent AND v.name = f.name WHERE f.id = ?1 AND v.first = ?2",
        )?;
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT f.dir, d.host, f.since, f.access FROM folder_access f JOIN dirs d ON d.id = f.dir
                 ORDER BY f.dir, f.since",
            )?;
            let mut rows = stmt.query([])?;
            let mut current: Option<(i64, i64)> = None;
            let mut segments: Vec<(i64, bool)> = Vec::new();
            let mut finish = |folder: Option<(i64, i64)>, segments: &mut Vec<(i64, bool)>| -> Result<()> {
                if let Some((dir, host)) = folder {
                    let keys = keys.get(&host).map_or(&[][..], Vec::as_slice);
                    let mut runs = folder_runs(segments, keys);
                    // A run that starts after the host's first snapshot was opened by this
                    // folder's access, in the version of the folder that starts there.
                    if let Searchable::Runs(runs) = &mut runs {
                        for run in runs.iter_mut().filter(|r| keys.first().is_some_and(|f| r.lo > *f)) {
                            run.row = opened_by.query_row([dir, run.lo], |r| r.get(0)).optional()?;
                        }
                    }
                    folders.insert(dir, runs);
                }
                segments.clear();
                Ok(())
            };
            while let Some(r) = rows.next()? {
                let (dir, host, since, access): (i64, i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                if current.is_some_and(|c| c.0 != dir) {
                    finish(current, &mut segments)?;
                }
                current = Some((dir, host));
                segments.push((since, searchable.get(&access).copied().unwrap_or(false)));
            }
            finish(current, &mut segments)?;
        }
        // A context is searchable when its parent is and its folder may be searched; parents
        // are interned before their children, so one pass in id order decides them all.
        let mut ok: HashMap<i64, Searchable> = HashMap::from([(crate::update::ROOT_CONTEXT, Searchable::Always)]);
        let mut always = self.conn.prepare_cached("INSERT INTO temp.scope_ctx(id) VALUES (?1)")?;
        let mut run =
            self.conn.prepare_cached("INSERT INTO temp.ctx_runs(ctx, lo, hi, row) VALUES (?1, ?2, ?3, ?4)")?;
        always.execute([crate::update::ROOT_CONTEXT])?;
        let mut any_runs = false;
        let mut stmt = self.conn.prepare_cached("SELECT id, parent, access, folder FROM contexts ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (id, parent, access, folder): (i64, i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let this = if folder != 0 {
                folders.get(&folder).cloned().unwrap_or(Searchable::Never)
            } else if searchable.get(&access).copied().unwrap_or(false) {
                Searchable::Always
            } else {
                Searchable::Never
            };
            let state = ok.get(&parent).unwrap_or(&Searchable::Never).and(&this);
            match &state {
                Searchable::Never => {}
                Searchable::Always => {
                    always.execute([id])?;
                }
                Searchable::Runs(runs) => {
                    any_runs = true;
                    for r in runs {
                        run.execute(rusqlite::params![id, r.lo, r.hi, r.row])?;
                    }
                }
            }
            ok.insert(id, state);
        }
        Ok(any_runs)
    }

    /// The name test in its two forms: per row, for a scan in result order, and through the
    /// trigram index of `lit` (the pattern's literal text), for selective patterns; the function
    /// then tests the whole pattern, as the per-row form does, to the letter. True when the
    /// matching names are in `temp.names_found`; `selectivity` drops to 0 when they are few.
    fn push_name_test(
        &self,
        lit: &str,
        test: NameTest,
        sql: &mut Sql,
        per_row: &mut Sql,
        selectivity: &mut f64,
    ) -> Result<bool> {
        let with = |param: &str| test.sql.replace("{}", param);
        per_row.push(&with("?"), [test.arg.clone()]);
        let Some(expr) = self.trigram_plan(lit)? else {
            sql.push(&format!("v.name IN (SELECT n.id FROM names n WHERE {})", with("?")), [test.arg]);
            return Ok(false);
        };
        match self.candidates(&expr, &with("?1"), &test.arg)? {
            Candidates::Few => {
                *selectivity = 0.0;
                sql.push(NAMES_FOUND, []);
                Ok(true)
            }
            Candidates::Common => {
                sql.push(NAMES_FOUND, []);
                Ok(true)
            }
            Candidates::Many => {
                sql.push(
                    &format!(
                        "v.name IN (SELECT n.id FROM names n WHERE n.id IN (SELECT rowid FROM names_fts WHERE names_fts MATCH ?) AND {})",
                        with("?")
                    ),
                    [Value::Text(expr), test.arg],
                );
                Ok(false)
            }
        }
    }

    /// Deleted files (the newest version of each path absent from its host's latest snapshot),
    /// most recently deleted first; the other fields of `q` narrow it as in [`Catalog::find`].
    pub fn deleted(&self, q: &Query) -> Result<Page<FileVersion>> {
        let mut q = q.clone();
        q.deleted = true;
        self.find(&q)
    }

    /// Narrow the names through the trigram index (`expr`, an FTS5 query) and `test` (the whole
    /// pattern, with `pattern` as `?1`). When the index finds at most [`MAX_CANDIDATES`] names,
    /// the ones that really match go to `temp.names_found` ([`NAMES_FOUND`] reads them): `Few`
    /// if there are at most [`FEW_NAMES`] of them, `Common` if more. `Many`: the index found
    /// more, nothing was stored.
    fn candidates(&self, expr: &str, test: &str, pattern: &Value) -> Result<Candidates> {
        self.conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS name_hits(id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS names_found(id INTEGER PRIMARY KEY);
             DELETE FROM temp.name_hits; DELETE FROM temp.names_found;",
        )?;
        let n = self
            .conn
            .prepare_cached("INSERT INTO temp.name_hits SELECT rowid FROM names_fts WHERE names_fts MATCH ?1 LIMIT ?2")?
            .execute(rusqlite::params![expr, MAX_CANDIDATES + 1])?;
        if n as i64 > MAX_CANDIDATES {
            return Ok(Candidates::Many);
        }
        let found = self
            .conn
            .prepare_cached(&format!(
                "INSERT INTO temp.names_found SELECT n.id FROM temp.name_hits t CROSS JOIN names n ON n.id = t.id WHERE {test}"
            ))?
            .execute([pattern])?;
        Ok(if found as i64 <= FEW_NAMES { Candidates::Few } else { Candidates::Common })
    }

    /// An FTS5 query for rare trigrams of `lit` that together pin it down; `None` when `lit` is
    /// shorter than a trigram. The trigrams are quoted as typed: the index folds case itself.
    ///
    /// By the counts in `trigrams`: the rarest first, which is often the one across a separator
    /// (`t-r` of `budget-report`: each word is common, the pair is rare); then the rarest of a
    /// word not yet covered (`bud`, `epo`), since the trigrams of one word say little more than
    /// one of them; trigrams that overlap a chosen one only when nothing else is left.
    fn trigram_plan(&self, lit: &str) -> Result<Option<String>> {
        let chars: Vec<char> = lit.chars().collect();
        let folded = trigrams(lit);
        if folded.is_empty() || folded.len() + 2 != chars.len() {
            return Ok(None);
        }
        // The word (run of letters and digits) each character is in.
        let mut word = Vec::with_capacity(chars.len());
        let mut w = 0;
        for (i, c) in chars.iter().enumerate() {
            if c.is_alphanumeric() {
                word.push(Some(w));
            } else {
                word.push(None);
                if i > 0 && word[i - 1].is_some() {
                    w += 1;
                }
            }
        }
        let mut count = self.conn.prepare_cached("SELECT names FROM trigrams WHERE tri = ?1")?;
        // (names holding it, position, word it lies in)
        let mut left: Vec<(i64, usize, Option<usize>)> = Vec::new();
        for (i, t) in folded.iter().enumerate() {
            if folded[..i].contains(t) {
                continue;
            }
            let n: Option<i64> = count.query_row([t.iter().collect::<String>()], |r| r.get(0)).optional()?;
            let inside =
                if word[i].is_some() && word[i] == word[i + 1] && word[i] == word[i + 2] { word[i] } else { None };
            left.push((n.unwrap_or(0), i, inside));
        }
        let mut chosen: Vec<(i64, usize, Option<usize>)> = Vec::new();
        while chosen.len() < TRIGRAMS_PER_QUERY && !left.is_empty() {
            let key = |t: &(i64, usize, Option<usize>)| {
                let overlaps = chosen.iter().any(|c| c.1.abs_diff(t.1) < 3);
                let covered = t.2.is_some() && chosen.iter().any(|c| c.2 == t.2);
                (overlaps, covered, t.0, t.1)
            };
            let best = (0..left.len()).min_by_key(|&k| key(&left[k])).expect("not empty");
            chosen.push(left.swap_remove(best));
        }
        Ok(Some(
            chosen
                .iter()
                .map(|&(_, i, _)| format!("\"{}\"", chars[i..i + 3].iter().collect::<String>().replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(" AND "),
        ))
    }

    /// Every version of one path, newest first. Without a host, the path's versions on every
    /// host. With a scope, only the versions in it (and "deleted" as the scope sees it).
    pub fn history(&self, host: Option<&str>, path: &[u8], scope: Option<&Scope>) -> Result<Vec<FileVersion>> {
        let p = normalize_path(path).ok_or_else(|| Error::InvalidInput("history of the root".into()))?;
        let (parent, base) = split_path(&p);
        let mut params = vec![Value::Blob(parent.to_vec()), Value::Blob(base.to_vec())];
        let mut text = format!(
            "{SELECT} WHERE v.dir IN (SELECT id FROM dirs WHERE path = ?) AND v.name IN (SELECT id FROM names WHERE raw = ?)"
        );
        if let Some(h) = host {
            text.push_str(" AND v.host = (SELECT id FROM hosts WHERE name = ?)");
            params.push(Value::Text(h.to_string()));
        }
        let scope = match scope {
            Some(scope) => Some(self.scope_sql(scope)?),
            None => None,
        };
        let later = scope.as_ref().map(|s| s.later("v"));
        let mut runs = Vec::new();
        if let Some(s) = scope.as_ref().filter(|s| s.runs) {
            // The versions the reader sees for runs of snapshots, each run a version.
            let (table, mut p) = s.runs_table(None);
            p.extend(params.iter().cloned());
            let text = text.replacen(&format!("{SELECT} "), &format!("{} ", select_from(&table, false)), 1);
            runs = self.run(&text, p, None, later.as_ref())?.expect("no budget");
        }
        if let Some(scope) = &scope {
            text.push_str(&format!(" AND {}", scope.on("v", "d")));
            params.extend(scope.params.iter().cloned());
        }
        text.push_str(" ORDER BY h.name, v.first DESC");
        let mut out = self.run(&text, params, None, later.as_ref())?.expect("no budget");
        if !runs.is_empty() {
            out.extend(runs);
            out.sort_by(|a, b| (&a.host, b.first_key, b.row).cmp(&(&b.host, a.first_key, a.row)));
        }
        Ok(out)
    }

    /// The catalogued snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<CatalogSnapshot>> {
        let mut stmt = self
            .conn
            .prepare("SELECT s.id, h.name, s.time_ns FROM snapshots s JOIN hosts h ON h.id = s.host ORDER BY s.key")?;
        let rows = stmt.query_map([], |r| {
            Ok(CatalogSnapshot {
                id: snapshot_id(r.get_ref(0)?.as_blob()?).to_hex(),
                host: r.get(1)?,
                time: ts_from_ns(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Host names, sorted.
    pub fn hosts(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM hosts ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn stats(&self) -> Result<Stats> {
        let count = |sql: &str| -> Result<u64> { Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
        let mut bytes = 0;
        for suffix in ["", "-wal"] {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        Ok(Stats {
            hosts: count("SELECT count(*) FROM hosts")?,
            snapshots: count("SELECT count(*) FROM snapshots")?,
            versions: count("SELECT count(*) FROM versions")?,
            deleted: count("SELECT count(*) FROM versions WHERE gone = 1")?,
            names: count("SELECT count(*) FROM names")?,
            dirs: count("SELECT count(*) FROM dirs")?,
            bytes_on_disk: bytes,
        })
    }

    /// Run a query built on `SELECT`. With a budget, `None` when the budget ran out. `later`
    /// ([`ScopeSql::later`] on `v`) decides whether a version closed before a change of access
    /// is deleted for the scope.
    fn run(
        &self,
        sql: &str,
        params: Vec<Value>,
        budget: Option<u64>,
        later: Option<&(String, Vec<Value>)>,
    ) -> Result<Option<Vec<FileVersion>>> {
        struct Raw {
            row: i64,
            seen_key: i64,
            host_id: i64,
            host: String,
            dir: Vec<u8>,
            name: String,
            raw_name: Vec<u8>,
            kind: i64,
            size: i64,
            mtime: i64,
            mtime_ns: i64,
            mode: i64,
            uid: i64,
            gid: i64,
            content: i64,
            first: i64,
            last: i64,
            present: bool,
            gone: i64,
            dir_id: i64,
            name_id: i64,
            sort_row: i64,
            sub: i64,
        }
        let mut stmt = self.conn.prepare_cached(sql)?;
        if let Some(budget) = budget {
            let mut left = budget / 1000;
            self.conn.progress_handler(
                1000,
                Some(move || {
                    left = left.saturating_sub(1);
                    left == 0
                }),
            )?;
        }
        let raws: rusqlite::Result<Vec<Raw>> = stmt
            .query_map(params_from_iter(params), |r| {
                Ok(Raw {
                    row: r.get(0)?,
                    seen_key: r.get(19)?,
                    host: r.get(1)?,
                    dir: r.get(2)?,
                    name: r.get(3)?,
                    kind: r.get(4)?,
                    size: r.get(5)?,
                    mtime: r.get(6)?,
                    mtime_ns: r.get(7)?,
                    mode: r.get(8)?,
                    uid: r.get(9)?,
                    gid: r.get(10)?,
                    content: r.get(11)?,
                    first: r.get(12)?,
                    last: r.get(13)?,
                    present: r.get(14)?,
                    gone: r.get(15)?,
                    host_id: r.get(16)?,
                    dir_id: r.get(17)?,
                    name_id: r.get(18)?,
                    raw_name: r.get(20)?,
                    sort_row: r.get(21)?,
                    sub: r.get(22)?,
                })
            })
            .and_then(|rows| rows.collect());
        if budget.is_some() {
            self.conn.progress_handler(0, None::<fn() -> bool>)?;
        }
        let raws = match raws {
            Ok(r) => r,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if budget.is_some() && e.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mut snaps: HashMap<i64, SnapshotRef> = HashMap::new();
        let mut out = Vec::with_capacity(raws.len());
        for r in raws {
            let first_seen = self.snapshot_ref(&mut snaps, r.first)?;
            let last_seen = self.snapshot_ref(&mut snaps, r.last)?;
            let gone = match (r.gone, later) {
                (1, _) => true,
                (2, Some((later, params))) => {
                    // `later` is on the row aliased `v`: this result's path and (its) last snapshot.
                    let mut params = params.clone();
                    params.extend([r.dir_id, r.name_id, r.last].map(Value::Integer));
                    let exists: bool = self
                        .conn
                        .prepare_cached(&format!("SELECT {later} FROM (SELECT ? AS dir, ? AS name, ? AS last) v"))?
                        .query_row(params_from_iter(params), |row| row.get(0))?;
                    !exists
                }
                _ => false,
            };
            let deleted = if gone {
                let next: Option<i64> = self
                    .conn
                    .prepare_cached("SELECT min(key) FROM snapshots WHERE host = ?1 AND key > ?2")?
                    .query_row([r.host_id, r.last], |row| row.get(0))?;
                match next {
                    Some(n) => Some(DeletionWindow {
                        last_present: last_seen.clone(),
                        first_absent: self.snapshot_ref(&mut snaps, n)?,
                    }),
                    None => None,
                }
            } else {
                None
            };
            let raw_path = [&r.dir[..], b"/", &r.raw_name].concat();
            out.push(FileVersion {
                host: r.host,
                path: String::from_utf8_lossy(&raw_path).into_owned(),
                name: r.name,
                name_len: r.raw_name.len(),
                raw_path,
                kind: kind_from_code(r.kind).as_str().to_string(),
                size: r.size as u64,
                mtime: Timestamp::new(r.mtime, r.mtime_ns as i32).unwrap_or(Timestamp::UNIX_EPOCH),
                mode: r.mode as u32,
                uid: r.uid as u32,
                gid: r.gid as u32,
                content: rewind_store::ContentId(r.content).to_hex(),
                first_seen,
                last_seen,
                present: r.present,
                deleted,
                row: r.row,
                seen_key: r.seen_key,
                first_key: r.first,
                sort_row: r.sort_row,
                sub: r.sub,
            });
        }
        Ok(Some(out))
    }

    fn snapshot_ref(&self, cache: &mut HashMap<i64, SnapshotRef>, key: i64) -> Result<SnapshotRef> {
        if let Some(s) = cache.get(&key) {
            return Ok(s.clone());
        }
        let (id, ns): (Vec<u8>, i64) = self
            .conn
            .prepare_cached("SELECT id, time_ns FROM snapshots WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| Error::NotFound(format!("snapshot key {key}")))?;
        let s = SnapshotRef { id: snapshot_id(&id).to_hex(), time: ts_from_ns(ns) };
        cache.insert(key, s.clone());
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_literals() {
        assert_eq!(glob_literal("*.txt"), ".txt");
        assert_eq!(glob_literal("report-*-final.doc"), "-final.doc");
        assert_eq!(glob_literal("[ab]cd*"), "cd");
        assert_eq!(glob_literal("{foo,barbaz}qq*"), "qq");
        assert_eq!(glob_literal("a\\*bcd"), "a*bcd");
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize_path(b"/a/b/"), Some(b"/a/b".to_vec()));
        assert_eq!(normalize_path(b"a//b"), Some(b"/a/b".to_vec()));
        assert_eq!(normalize_path(b"/"), None);
        assert_eq!(normalize_path(b"/caf\xe9/./x"), Some(b"/caf\xe9/x".to_vec()));
    }
}
