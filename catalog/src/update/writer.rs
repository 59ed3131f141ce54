//! Applying one snapshot: its tree diffed against the host's previous snapshot's, written
//! through the interning caches of one transaction.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use rewind_store::{Node, Tree, TreeId};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{
    AccessKey, ROOT_CONTEXT, SINCE_EVER, SnapshotInfo, SyncReport, TreeSource, access_key, closed_gone, ident,
};
use crate::error::{Error, Result};

/// A catalog directory as the writer needs it: its parent, the context of its entries, its own
/// access as last seen, whether that ever changed (its history is then in `folder_access`,
/// and the contexts below it name the folder rather than an access), and what of it lies
/// inside a disk image (`dirs.image`: [`IMAGE_NONE`], [`IMAGE_HOLDS`], [`IMAGE_INSIDE`]).
#[derive(Clone, Copy, Debug)]
struct DirState {
    parent: Option<i64>,
    ctx: i64,
    access: i64,
    varies: bool,
    image: i64,
}

/// `dirs.image` of a folder with nothing inside a disk image.
const IMAGE_NONE: i64 = 0;
/// `dirs.image` of a folder holding `<image>.d` folders among its entries.
pub(crate) const IMAGE_HOLDS: i64 = 1;
/// `dirs.image` of an `<image>.d` folder and of every folder below it.
pub(crate) const IMAGE_INSIDE: i64 = 2;

impl DirState {
    /// What this folder adds to the context of its entries: (access, folder).
    fn element(&self, id: i64) -> (i64, i64) {
        if self.varies { (0, id) } else { (self.access, 0) }
    }
}

/// A testing hook: `REWIND_CATALOG_FAILPOINT=abort-after-versions:N` aborts the process (as a
/// kill would) after N version rows were written by this process, mid-transaction. Compiled in
/// only with the `failpoints` feature (test builds, through the root package's
/// dev-dependency); otherwise the variable is ignored.
#[cfg(feature = "failpoints")]
pub(crate) fn failpoint_from_env() -> Option<u64> {
    let v = std::env::var("REWIND_CATALOG_FAILPOINT").ok()?;
    v.strip_prefix("abort-after-versions:")?.parse().ok()
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn failpoint_from_env() -> Option<u64> {
    None
}

/// Writer caches. Ids in them are valid only for committed state, so they are cleared whenever
/// a transaction does not commit.
#[derive(Default)]
pub(crate) struct Caches {
    names: HashMap<Vec<u8>, i64>,
    dirs: HashMap<(i64, i64), i64>,
    /// Names added per trigram in this transaction, not yet in `trigrams`.
    trigrams: HashMap<[char; 3], i64>,
    access: HashMap<AccessKey, i64>,
    /// (parent context, folder access, folder) -> context.
    contexts: HashMap<(i64, i64, i64), i64>,
    dir_states: HashMap<i64, DirState>,
}

fn ns_of(t: jiff::Timestamp) -> i64 {
    t.as_nanosecond() as i64
}

pub(super) fn apply_in(
    tx: &Transaction<'_>,
    caches: &mut Caches,
    source: &dyn TreeSource,
    snap: &SnapshotInfo,
    failpoint: Option<u64>,
    written: &mut u64,
    report: &mut SyncReport,
) -> Result<bool> {
    let exists: Option<i64> = tx
        .query_row("SELECT key FROM snapshots WHERE id=?1", [snap.id.as_bytes().as_slice()], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Ok(false);
    }
    tx.execute("INSERT OR IGNORE INTO hosts(name) VALUES (?1)", [&snap.host])?;
    let host: i64 = tx.query_row("SELECT id FROM hosts WHERE name=?1", [&snap.host], |r| r.get(0))?;
    let prev: Option<(i64, Vec<u8>, i64, Vec<u8>)> = tx
        .query_row(
            "SELECT key, id, time_ns, tree FROM snapshots WHERE host=?1 ORDER BY key DESC LIMIT 1",
            [host],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let time_ns = ns_of(snap.time);
    if let Some((_, pid, pns, _)) = &prev
        && (*pns, pid.as_slice()) > (time_ns, snap.id.as_bytes().as_slice())
    {
        return Err(Error::InvalidInput(format!(
            "snapshot {} of {} is older than the newest catalogued one; sync rebuilds the host",
            snap.id.short(),
            snap.host
        )));
    }
    // Keys sort like times (to the second) and are unique.
    let mut key = snap.time.as_second().max(prev.as_ref().map_or(i64::MIN, |p| p.0 + 1));
    let mut probe = tx.prepare_cached("SELECT 1 FROM snapshots WHERE key=?1")?;
    while probe.exists([key])? {
        key += 1;
    }
    drop(probe);
    tx.execute(
        "INSERT INTO snapshots(key, id, host, time_ns, tree) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key, snap.id.as_bytes().as_slice(), host, time_ns, snap.tree.as_bytes().as_slice()],
    )?;
    let mut w = Writer {
        tx,
        caches: &mut *caches,
        source,
        host,
        key,
        prev: prev.as_ref().map(|p| p.0),
        failpoint,
        written,
        report,
    };
    let (root, created) = w.root_dir()?;
    match &prev {
        None => w.add_tree(root, b"", Some(snap.tree), created)?,
        Some((_, _, _, ptree)) => {
            let ptree = TreeId(rewind_store::Hash(
                ptree
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::InvalidInput("damaged catalog: snapshot tree id is not 32 bytes".into()))?,
            ));
            w.diff_tree(root, b"", Some(ptree), Some(snap.tree))?
        }
    }
    tx.execute("UPDATE hosts SET latest=?1 WHERE id=?2", [key, host])?;
    let mut upsert = tx.prepare_cached(
        "INSERT INTO trigrams(tri, names) VALUES (?1, ?2) ON CONFLICT(tri) DO UPDATE SET names = names + excluded.names",
    )?;
    for (t, n) in caches.trigrams.drain() {
        upsert.execute(params![t.iter().collect::<String>(), n])?;
    }
    Ok(true)
}

struct Writer<'a, 't> {
    tx: &'a Transaction<'t>,
    caches: &'a mut Caches,
    source: &'a dyn TreeSource,
    host: i64,
    key: i64,
    prev: Option<i64>,
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    failpoint: Option<u64>,
    written: &'a mut u64,
    report: &'a mut SyncReport,
}

impl Writer<'_, '_> {
    fn load(&mut self, id: Option<TreeId>) -> Result<Arc<Tree>> {
        match id {
            None => Ok(Arc::new(Tree::default())),
            Some(id) => {
                self.report.trees_read += 1;
                Ok(self.source.tree(id)?)
            }
        }
    }

    fn name_id(&mut self, name: &[u8]) -> Result<i64> {
        if let Some(&id) = self.caches.names.get(name) {
            return Ok(id);
        }
        let found: Option<i64> =
            self.tx.prepare_cached("SELECT id FROM names WHERE raw=?1")?.query_row([name], |r| r.get(0)).optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                // The text the name matching reads; the bytes are the name.
                let text = String::from_utf8_lossy(name);
                self.tx.prepare_cached("INSERT INTO names(name, raw) VALUES (?1, ?2)")?.execute(params![text, name])?;
                let id = self.tx.last_insert_rowid();
                self.tx
                    .prepare_cached("INSERT INTO names_fts(rowid, name) VALUES (?1, ?2)")?
                    .execute(params![id, text])?;
                let mut tris = crate::query::trigrams(&text);
                tris.sort_unstable();
                tris.dedup();
                for t in tris {
                    *self.caches.trigrams.entry(t).or_default() += 1;
                }
                id
            }
        };
        self.caches.names.insert(name.to_vec(), id);
        Ok(id)
    }

    fn root_dir(&mut self) -> Result<(i64, bool)> {
        let found: Option<i64> = self
            .tx
            .query_row("SELECT id FROM dirs WHERE host=?1 AND parent IS NULL", [self.host], |r| r.get(0))
            .optional()?;
        match found {
            Some(id) => Ok((id, false)),
            None => {
                self.tx.execute(
                    "INSERT INTO dirs(host, parent, name, path, access, varies, ctx, image) VALUES (?1, NULL, NULL, X'', 0, 0, ?2, 0)",
                    [self.host, ROOT_CONTEXT],
                )?;
                Ok((self.tx.last_insert_rowid(), true))
            }
        }
    }

    /// The catalog id of directory `name` in `parent`, if it was ever seen.
    fn find_dir(&mut self, parent: i64, name: i64) -> Result<Option<i64>> {
        if let Some(&id) = self.caches.dirs.get(&(parent, name)) {
            return Ok(Some(id));
        }
        let found: Option<i64> = self
            .tx
            .prepare_cached("SELECT id FROM dirs WHERE parent=?1 AND name=?2")?
            .query_row([parent, name], |r| r.get(0))
            .optional()?;
        if let Some(id) = found {
            self.caches.dirs.insert((parent, name), id);
        }
        Ok(found)
    }

    /// Like `find_dir`, creating it if needed (with the folder's own `access`, and inside a disk
    /// image when `subtree` is a folder of one or `parent` is inside one); true if created. An
    /// existing directory notes its folder's access now ([`Writer::note_access`]), and is
    /// marked inside an image if it now is ([`Writer::mark_inside`]).
    fn dir_id(
        &mut self,
        parent: i64,
        parent_path: &[u8],
        name: i64,
        raw_name: &[u8],
        access: i64,
        subtree: Option<TreeId>,
    ) -> Result<(i64, bool, Vec<u8>)> {
        let path = [parent_path, b"/", raw_name].concat();
        let up = self.dir_state(parent)?;
        let inside = up.image == IMAGE_INSIDE || subtree.is_some_and(|t| self.source.inside_image(t));
        if let Some(id) = self.find_dir(parent, name)? {
            self.note_access(id, access)?;
            if inside && self.dir_state(id)?.image != IMAGE_INSIDE {
                self.mark_inside(parent, id)?;
            }
            return Ok((id, false, path));
        }
        let ctx = self.context_id(up.ctx, access, 0)?;
        let image = if inside { IMAGE_INSIDE } else { IMAGE_NONE };
        self.tx
            .prepare_cached(
                "INSERT INTO dirs(host, parent, name, path, access, varies, ctx, image)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7)",
            )?
            .execute(params![self.host, parent, name, path, access, ctx, image])?;
        let id = self.tx.last_insert_rowid();
        self.caches.dirs.insert((parent, name), id);
        self.caches.dir_states.insert(id, DirState { parent: Some(parent), ctx, access, varies: false, image });
        if inside {
            self.note_holds(parent)?;
        }
        Ok((id, true, path))
    }

    /// `dir` (a folder of `parent`) is inside a disk image: it and every directory below it.
    /// Only a path that held a real folder before and an image folder now comes here.
    fn mark_inside(&mut self, parent: i64, dir: i64) -> Result<()> {
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            let st = self.dir_state(d)?;
            self.tx.prepare_cached("UPDATE dirs SET image=?1 WHERE id=?2")?.execute([IMAGE_INSIDE, d])?;
            self.caches.dir_states.insert(d, DirState { image: IMAGE_INSIDE, ..st });
            todo.extend(self.child_dirs(d)?);
        }
        self.note_holds(parent)
    }

    /// The directories whose parent is `dir`.
    fn child_dirs(&self, dir: i64) -> Result<Vec<i64>> {
        let mut stmt = self.tx.prepare_cached("SELECT id FROM dirs WHERE parent=?1")?;
        let children = stmt.query_map([dir], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(children)
    }

    /// `dir` holds a folder inside a disk image among its entries.
    fn note_holds(&mut self, dir: i64) -> Result<()> {
        let st = self.dir_state(dir)?;
        if st.image == IMAGE_NONE {
            self.tx.prepare_cached("UPDATE dirs SET image=?1 WHERE id=?2")?.execute([IMAGE_HOLDS, dir])?;
            self.caches.dir_states.insert(dir, DirState { image: IMAGE_HOLDS, ..st });
        }
        Ok(())
    }

    fn dir_state(&mut self, dir: i64) -> Result<DirState> {
        if let Some(&s) = self.caches.dir_states.get(&dir) {
            return Ok(s);
        }
        let s = self.tx.prepare_cached("SELECT parent, ctx, access, varies, image FROM dirs WHERE id=?1")?.query_row(
            [dir],
            |r| {
                Ok(DirState {
                    parent: r.get(0)?,
                    ctx: r.get(1)?,
                    access: r.get(2)?,
                    varies: r.get(3)?,
                    image: r.get(4)?,
                })
            },
        )?;
        self.caches.dir_states.insert(dir, s);
        Ok(s)
    }

    /// A folder seen (in this snapshot) with `access`. When that is not the access it had, its
    /// history goes to `folder_access` from this snapshot on; the first time, the contexts of
    /// its entries and of every directory below it name the folder instead of an access
    /// ([`Writer::recontext`]): no version is written.
    fn note_access(&mut self, dir: i64, access: i64) -> Result<()> {
        let st = self.dir_state(dir)?;
        if st.access == access {
            return Ok(());
        }
        let mut add =
            self.tx.prepare_cached("INSERT OR REPLACE INTO folder_access(dir, since, access) VALUES (?1, ?2, ?3)")?;
        if !st.varies {
            add.execute([dir, SINCE_EVER, st.access])?;
        }
        add.execute([dir, self.key, access])?;
        drop(add);
        self.tx.prepare_cached("UPDATE dirs SET access=?1, varies=1 WHERE id=?2")?.execute([access, dir])?;
        self.caches.dir_states.insert(dir, DirState { access, varies: true, ..st });
        if !st.varies {
            self.recontext(dir)?;
        }
        Ok(())
    }

    /// The contexts of `dir`'s entries and of every directory below it, again from their
    /// parents' (parents first).
    fn recontext(&mut self, dir: i64) -> Result<()> {
        let mut todo = vec![dir];
        while let Some(d) = todo.pop() {
            let st = self.dir_state(d)?;
            let parent_ctx = match st.parent {
                Some(p) => self.dir_state(p)?.ctx,
                None => continue,
            };
            let (access, folder) = st.element(d);
            let ctx = self.context_id(parent_ctx, access, folder)?;
            if ctx != st.ctx {
                self.tx.prepare_cached("UPDATE dirs SET ctx=?1 WHERE id=?2")?.execute([ctx, d])?;
                self.caches.dir_states.insert(d, DirState { ctx, ..st });
            }
            todo.extend(self.child_dirs(d)?);
        }
        Ok(())
    }

    /// The interned access of a node.
    fn access_id(&mut self, n: &Node) -> Result<i64> {
        let key = access_key(n);
        if let Some(&id) = self.caches.access.get(&key) {
            return Ok(id);
        }
        let (dir, mode, uid, gid, acl) = &key;
        let found: Option<i64> = self
            .tx
            .prepare_cached("SELECT id FROM access WHERE dir=?1 AND mode=?2 AND uid=?3 AND gid=?4 AND acl=?5")?
            .query_row(params![dir, mode, uid, gid, acl], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                self.tx
                    .prepare_cached("INSERT INTO access(dir, mode, uid, gid, acl) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![dir, mode, uid, gid, acl])?;
                self.tx.last_insert_rowid()
            }
        };
        self.caches.access.insert(key, id);
        Ok(id)
    }

    /// The context of the entries of a folder inside context `parent`: the folder's `access`,
    /// or (`folder` not 0) the folder itself, whose access changed.
    fn context_id(&mut self, parent: i64, access: i64, folder: i64) -> Result<i64> {
        let key = (parent, access, folder);
        if let Some(&id) = self.caches.contexts.get(&key) {
            return Ok(id);
        }
        let found: Option<i64> = self
            .tx
            .prepare_cached("SELECT id FROM contexts WHERE parent=?1 AND access=?2 AND folder=?3")?
            .query_row([parent, access, folder], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                self.tx
                    .prepare_cached("INSERT INTO contexts(parent, access, folder) VALUES (?1, ?2, ?3)")?
                    .execute([parent, access, folder])?;
                self.tx.last_insert_rowid()
            }
        };
        self.caches.contexts.insert(key, id);
        Ok(id)
    }

    /// A new version of `n` in `dir`; returns its access.
    fn insert_version(&mut self, dir: i64, name: i64, n: &Node) -> Result<i64> {
        let i = ident(n);
        let access = self.access_id(n)?;
        self.tx
            .prepare_cached(
                "INSERT INTO versions(host, dir, name, kind, mode, uid, gid, size, mtime, mtime_ns, content, first, access)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?
            .execute(params![
                self.host,
                dir,
                name,
                i.kind,
                i.mode,
                i.uid,
                (i.gid != i.uid).then_some(i.gid),
                i.size as i64,
                i.mtime,
                i.mtime_ns,
                i.content,
                self.key,
                access
            ])?;
        self.report.versions_added += 1;
        *self.written += 1;
        #[cfg(feature = "failpoints")]
        if self.failpoint.is_some_and(|n| *self.written >= n) {
            tracing::error!("REWIND_CATALOG_FAILPOINT reached after {} versions: aborting", self.written);
            std::process::abort();
        }
        Ok(access)
    }

    /// End the open version of `name` in `dir` at the previous snapshot, with `gone` (1: the
    /// path went; else [`closed_gone`] of the version that follows).
    fn close(&mut self, dir: i64, name: i64, gone: i64) -> Result<()> {
        let n = self
            .tx
            .prepare_cached("UPDATE versions SET last=?1, gone=?2 WHERE dir=?3 AND name=?4 AND last IS NULL")?
            .execute(params![self.prev, gone, dir, name])?;
        self.report.versions_closed += n as u64;
        Ok(())
    }

    /// A path is back, with a version of `access`: its older versions are no longer the
    /// deleted ones (but may still be for readers who cannot see the new one).
    fn unmark_gone(&mut self, dir: i64, name: i64, access: i64) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE versions SET gone = CASE WHEN access=?3 THEN 0 ELSE 2 END
                 WHERE dir=?1 AND name=?2 AND gone=1",
            )?
            .execute([dir, name, access])?;
        Ok(())
    }

    /// Everything under a directory that went: close all open versions below it, as deleted.
    fn close_dir(&mut self, dir: i64) -> Result<()> {
        let n = self
            .tx
            .prepare_cached("UPDATE versions SET last=?1, gone=1 WHERE dir=?2 AND last IS NULL")?
            .execute(params![self.prev, dir])?;
        self.report.versions_closed += n as u64;
        for c in self.child_dirs(dir)? {
            self.close_dir(c)?;
        }
        Ok(())
    }

    /// A new version of `n` (in `dir`), for a path that was absent before.
    fn add_node(&mut self, dir: i64, path: &[u8], n: &Node, dir_is_new: bool) -> Result<()> {
        let name = self.name_id(&n.name)?;
        if !dir_is_new {
            let access = self.access_id(n)?;
            self.unmark_gone(dir, name, access)?;
        }
        let access = self.insert_version(dir, name, n)?;
        if n.is_dir() {
            let (child, created, cpath) = self.dir_id(dir, path, name, &n.name, access, n.subtree)?;
            self.add_tree(child, &cpath, n.subtree, created)?;
        }
        Ok(())
    }

    /// A directory new to the host's latest state: every entry below is a new version.
    fn add_tree(&mut self, dir: i64, path: &[u8], tree: Option<TreeId>, dir_is_new: bool) -> Result<()> {
        let tree = self.load(tree)?;
        for node in &tree.nodes {
            self.add_node(dir, path, node, dir_is_new)?;
        }
        Ok(())
    }

    /// Bring a directory from tree `a` (the previous snapshot) to tree `b`. A folder whose
    /// access changed gets a new version of its own and a new row in `folder_access`; nothing
    /// below it changes unless its tree did.
    fn diff_tree(&mut self, dir: i64, path: &[u8], a: Option<TreeId>, b: Option<TreeId>) -> Result<()> {
        if a == b {
            self.report.subtrees_skipped += 1;
            return Ok(());
        }
        let (ta, tb) = (self.load(a)?, self.load(b)?);
        let (mut i, mut j) = (0, 0);
        while i < ta.nodes.len() || j < tb.nodes.len() {
            let ord = match (ta.nodes.get(i), tb.nodes.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match ord {
                Ordering::Less => {
                    let na = &ta.nodes[i];
                    let name = self.name_id(&na.name)?;
                    self.close(dir, name, 1)?;
                    if na.is_dir()
                        && let Some(child) = self.find_dir(dir, name)?
                    {
                        self.close_dir(child)?;
                    }
                    i += 1;
                }
                Ordering::Greater => {
                    self.add_node(dir, path, &tb.nodes[j], false)?;
                    j += 1;
                }
                Ordering::Equal => {
                    let (na, nb) = (&ta.nodes[i], &tb.nodes[j]);
                    let same = ident(na) == ident(nb);
                    let dirs_differ =
                        (na.is_dir() || nb.is_dir()) && !(na.is_dir() && nb.is_dir() && na.subtree == nb.subtree);
                    if !same || dirs_differ {
                        let name = self.name_id(&nb.name)?;
                        let old_access = self.access_id(na)?;
                        let new_access = if same {
                            old_access
                        } else {
                            let access = self.access_id(nb)?;
                            self.close(dir, name, closed_gone(access == old_access))?;
                            self.insert_version(dir, name, nb)?
                        };
                        match (na.is_dir(), nb.is_dir()) {
                            (true, true) => {
                                let (child, _, cpath) =
                                    self.dir_id(dir, path, name, &nb.name, new_access, nb.subtree)?;
                                self.diff_tree(child, &cpath, na.subtree, nb.subtree)?;
                            }
                            (true, false) => {
                                if let Some(child) = self.find_dir(dir, name)? {
                                    self.close_dir(child)?;
                                }
                            }
                            (false, true) => {
                                let (child, created, cpath) =
                                    self.dir_id(dir, path, name, &nb.name, new_access, nb.subtree)?;
                                self.add_tree(child, &cpath, nb.subtree, created)?;
                            }
                            (false, false) => {}
                        }
                    } else if na.is_dir() {
                        self.report.subtrees_skipped += 1;
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }
}
