//! A reader's view in SQL: the scope's access classes, searchable folder contexts and runs of
//! snapshots, computed once per query.

use std::collections::HashMap;

use rusqlite::OptionalExtension;
use rusqlite::types::Value;

use super::{OPEN_KEY, normalize_path, path_clause};
use crate::Catalog;
use crate::access::{R, Reader, X, permits};
use crate::error::Result;
use crate::query::Scope;
use crate::update::{IMAGE_HOLDS, IMAGE_INSIDE, kind_code};
use rewind_store::NodeKind;

/// A [`Scope`] in SQL. Owner, paths and hosts see whole versions; a reader sees a version in
/// the snapshots where they may read it: whole when its folders' searchability never changed
/// for them (`temp.scope_ctx`), else for each run of snapshots in which it did not
/// (`temp.ctx_runs`), each run shown as a version of its own ([`ScopeSql::runs_table`]).
pub(super) struct ScopeSql {
    /// Owner, paths and hosts, each with `{a}` where the alias of `versions` goes.
    pub(super) plain: Vec<String>,
    pub(super) params: Vec<Value>,
    /// The scope has a reader: `temp.scope_access` and `temp.scope_ctx` are filled.
    pub(super) reader: bool,
    /// Some of the reader's contexts are searchable for runs of snapshots only.
    pub(super) runs: bool,
}

impl ScopeSql {
    /// Owner, paths or hosts say so, of the versions aliased `a`.
    pub(super) fn plain_on(&self, a: &str) -> String {
        if self.plain.is_empty() { "0".to_string() } else { format!("({})", self.plain.join(" OR ")).replace("{a}", a) }
    }

    /// Whole versions in the scope: the versions aliased `a`, in the directories aliased `d`.
    /// Nothing inside a disk image is ([`outside_images`]).
    pub(super) fn on(&self, a: &str, d: &str) -> String {
        let plain = self.plain_on(a);
        let outside = outside_images(a, d);
        if !self.reader {
            return format!("{plain} AND {outside}");
        }
        format!(
            "({plain} OR ({a}.access IN (SELECT id FROM temp.scope_access) AND {d}.ctx IN (SELECT id FROM temp.scope_ctx))) AND {outside}"
        )
    }

    /// "The scope sees the path of `x` (a version-shaped row: dir, name, last) in a snapshot
    /// after `x.last`": then `x` is not where the path went, for this reader.
    pub(super) fn later(&self, x: &str) -> (String, Vec<Value>) {
        let runs = if self.runs {
            format!(
                " OR (w.access IN (SELECT id FROM temp.scope_access) AND {} AND EXISTS (SELECT 1 FROM temp.ctx_runs r
                   WHERE r.ctx = dw.ctx AND max(w.first, r.lo, {x}.last + 1) <= min(coalesce(w.last, {OPEN_KEY}), r.hi)))",
                outside_images("w", "dw")
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
    pub(super) fn runs_table(&self, filter: Option<(&str, &[Value])>) -> (String, Vec<Value>) {
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
                   AND v.access IN (SELECT id FROM temp.scope_access) AND NOT {} AND {}{})",
                self.plain_on("v"),
                outside_images("v", "dd"),
                filter.map(|f| format!(" AND {}", f.0)).unwrap_or_default()
            ),
            params,
        )
    }
}

/// "The version aliased `a`, in the directory aliased `d`, is not inside a disk image": its
/// directory is not inside one, and it is not an `<image>.d` folder itself (asked, through
/// `dirs_child`, only of the folders in directories that hold image folders). Every scope
/// leaves such rows out (`dirs.image`): what is inside images is for admins, who have no scope.
pub(super) fn outside_images(a: &str, d: &str) -> String {
    format!(
        "{d}.image != {IMAGE_INSIDE} AND ({d}.image != {IMAGE_HOLDS} OR {a}.kind != {DIR} OR NOT EXISTS
           (SELECT 1 FROM dirs di WHERE di.parent = {a}.dir AND di.name = {a}.name AND di.image = {IMAGE_INSIDE}))",
        DIR = kind_code(NodeKind::Dir)
    )
}

/// A run of snapshots (inclusive keys; `hi` is `i64::MAX` for "and every later one"), and the
/// row of the version of the folder whose access opened it, when a folder did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Run {
    lo: i64,
    hi: i64,
    row: Option<i64>,
}

/// When a reader may search a folder, or every folder of a context: never, always, or in runs
/// of snapshots (sorted, disjoint).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Searchable {
    Never,
    Always,
    Runs(Vec<Run>),
}

impl Searchable {
    /// Both, at once.
    pub(super) fn and(&self, other: &Searchable) -> Searchable {
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
pub(super) fn folder_runs(segments: &[(i64, bool)], keys: &[i64]) -> Searchable {
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

impl Catalog {
    /// A scope as SQL: the reader's access classes, their searchable contexts and the runs of
    /// snapshots of the others go to temporary tables first (they are few: one per distinct
    /// owner, mode and ACL, per distinct chain of folders, and per change of a folder's access
    /// that matters to this reader).
    pub(super) fn scope_sql(&self, scope: &Scope) -> Result<ScopeSql> {
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
    pub(super) fn readable_to_temp(&self, reader: &Reader) -> Result<bool> {
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
        // snapshots. Not those inside disk images: no scope sees anything there, and the runs
        // of one would read its versions (`opened_by`); their contexts are then never searchable.
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
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT f.dir, d.host, f.since, f.access FROM folder_access f JOIN dirs d ON d.id = f.dir
                 WHERE d.image != {IMAGE_INSIDE} ORDER BY f.dir, f.since"
            ))?;
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
}
