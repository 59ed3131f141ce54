//! Queries: find, deleted, history. Plain structs in, plain serializable structs out.

use std::collections::HashMap;

use jiff::Timestamp;
use rewind_store::SnapshotId;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params_from_iter};

use crate::Catalog;
use crate::error::{Error, Result};
use crate::update::{kind_code, kind_from_code};

mod names;
mod scope;
mod types;

use names::{NameTest, glob_literal};
pub(crate) use names::{register_functions, trigrams};
pub use types::{
    CatalogSnapshot, DeletionWindow, FileVersion, MAX_LIMIT, NameMatch, Order, Page, Position, Query, Scope,
    SnapshotRef, Stats,
};

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
        if q.scope.as_ref().is_some_and(Scope::sees_nothing) {
            // Not even asked: its SQL would be a constant false, and SQLite finds no plan for
            // that through a partial index named by INDEXED BY ("no query solution").
            return Ok(Vec::new());
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

    /// Deleted files (the newest version of each path absent from its host's latest snapshot),
    /// most recently deleted first; the other fields of `q` narrow it as in [`Catalog::find`].
    pub fn deleted(&self, q: &Query) -> Result<Page<FileVersion>> {
        let mut q = q.clone();
        q.deleted = true;
        self.find(&q)
    }

    /// Every version of one path, newest first. Without a host, the path's versions on every
    /// host. With a scope, only the versions in it (and "deleted" as the scope sees it).
    pub fn history(&self, host: Option<&str>, path: &[u8], scope: Option<&Scope>) -> Result<Vec<FileVersion>> {
        let p = normalize_path(path).ok_or_else(|| Error::InvalidInput("history of the root".into()))?;
        if scope.is_some_and(Scope::sees_nothing) {
            return Ok(Vec::new());
        }
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
    fn paths_normalize() {
        assert_eq!(normalize_path(b"/a/b/"), Some(b"/a/b".to_vec()));
        assert_eq!(normalize_path(b"a//b"), Some(b"/a/b".to_vec()));
        assert_eq!(normalize_path(b"/"), None);
        assert_eq!(normalize_path(b"/caf\xe9/./x"), Some(b"/caf\xe9/x".to_vec()));
    }
}
