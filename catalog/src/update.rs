//! Bringing the catalog up to date: one transaction per snapshot, diffing its tree against the
//! host's previous snapshot and skipping identical subtrees by id.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rewind_store::{IndexedRepository, Node, NodeKind, SnapshotId, Tree, TreeId};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use crate::Catalog;
use crate::access::ACL_XATTR;
use crate::error::{Error, Result};

/// Where trees come from: the repository, or (in tests and benchmarks) memory.
pub trait TreeSource {
    fn tree(&self, id: TreeId) -> rewind_store::Result<Arc<Tree>>;
}

impl TreeSource for IndexedRepository {
    fn tree(&self, id: TreeId) -> rewind_store::Result<Arc<Tree>> {
        IndexedRepository::tree(self, id)
    }
}

impl TreeSource for HashMap<TreeId, Arc<Tree>> {
    fn tree(&self, id: TreeId) -> rewind_store::Result<Arc<Tree>> {
        self.get(&id).cloned().ok_or_else(|| rewind_store::Error::NotFound(format!("tree {}", id.short())))
    }
}

/// What the catalog needs of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub host: String,
    pub time: jiff::Timestamp,
    pub tree: TreeId,
}

impl From<&rewind_store::SnapshotEntry> for SnapshotInfo {
    fn from(e: &rewind_store::SnapshotEntry) -> Self {
        SnapshotInfo { id: e.id, host: e.snapshot.host.clone(), time: e.snapshot.time, tree: e.snapshot.tree }
    }
}

/// What an update did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Snapshots added to the catalog.
    pub snapshots_applied: u64,
    /// Snapshots that were in the catalog but are no longer in the repository.
    pub snapshots_dropped: u64,
    /// Hosts rebuilt from their first snapshot (a snapshot arrived out of order).
    pub hosts_rebuilt: Vec<String>,
    /// Hosts that no longer have any snapshot.
    pub hosts_removed: Vec<String>,
    pub versions_added: u64,
    pub versions_closed: u64,
    /// Versions deleted because every snapshot that held them was removed, or merged into an
    /// equal neighbour once the snapshots between them were removed.
    pub versions_dropped: u64,
    pub trees_read: u64,
    pub subtrees_skipped: u64,
}

/// The numeric kind stored in `versions.kind`.
pub(crate) fn kind_code(k: NodeKind) -> i64 {
    match k {
        NodeKind::File => 1,
        NodeKind::Dir => 2,
        NodeKind::Symlink => 3,
        NodeKind::BlockDevice => 4,
        NodeKind::CharDevice => 5,
        NodeKind::Fifo => 6,
        NodeKind::Socket => 7,
    }
}

pub(crate) fn kind_from_code(c: i64) -> NodeKind {
    match c {
        1 => NodeKind::File,
        2 => NodeKind::Dir,
        3 => NodeKind::Symlink,
        4 => NodeKind::BlockDevice,
        5 => NodeKind::CharDevice,
        6 => NodeKind::Fifo,
        _ => NodeKind::Socket,
    }
}

/// A version's identity: two nodes at one path are the same version when all of this agrees.
/// It is the node's own content and metadata only: what the folders above it allow is kept per
/// directory (`dirs.ctx`, `folder_access`), so a folder's `chmod` cuts no version below it.
/// `content` is the first 8 bytes of BLAKE3 over the file's chunk ids in order (the symlink
/// target for symlinks, 0 otherwise): enough to tell one path's versions apart; `acl` likewise
/// of the POSIX access ACL (0 without one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ident {
    pub kind: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub content: i64,
    pub acl: i64,
}

/// The content id of a node, as stored: [`Node::content_id`], 0 for nodes without content.
pub fn content_id(node: &Node) -> i64 {
    node.content_id().map_or(0, |c| c.0)
}

pub(crate) fn ident(n: &Node) -> Ident {
    let acl = n
        .xattr(ACL_XATTR)
        .map_or(0, |a| i64::from_le_bytes(blake3::hash(a).as_bytes()[..8].try_into().expect("8 bytes")));
    Ident {
        kind: kind_code(n.kind),
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        size: n.size,
        mtime: n.mtime.sec,
        mtime_ns: n.mtime.nsec,
        content: content_id(n),
        acl,
    }
}

/// What decides who may read a node, as interned in `access`: folder or not, permission bits,
/// owner, group and the POSIX access ACL (empty without one).
type AccessKey = (bool, u32, u32, u32, Vec<u8>);

fn access_key(n: &Node) -> AccessKey {
    (n.is_dir(), n.mode, n.uid, n.gid, n.xattr(ACL_XATTR).unwrap_or_default().to_vec())
}

/// The context of the entries at a snapshot's root (not a row of `contexts`).
pub(crate) const ROOT_CONTEXT: i64 = 0;

/// `folder_access.since` of a folder's first access: from the start of its history.
pub(crate) const SINCE_EVER: i64 = i64::MIN;

/// A catalog directory as the writer needs it: its parent, the context of its entries, its own
/// access as last seen, and whether that ever changed (its history is then in `folder_access`,
/// and the contexts below it name the folder rather than an access).
#[derive(Clone, Copy, Debug)]
struct DirState {
    parent: Option<i64>,
    ctx: i64,
    access: i64,
    varies: bool,
}

impl DirState {
    /// What this folder adds to the context of its entries: (access, folder).
    fn element(&self, id: i64) -> (i64, i64) {
        if self.varies { (0, id) } else { (self.access, 0) }
    }
}

/// `versions.gone` of a closed version whose path has a next version: 0 when that one has the
/// same access (whoever sees one sees the other), else 2.
fn closed_gone(same_access: bool) -> i64 {
    if same_access { 0 } else { 2 }
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

impl Catalog {
    /// Bring the catalog up to date with the repository: add new snapshots (one transaction
    /// each), drop removed ones in place, and rebuild a host that got a snapshot older than its newest.
    pub fn sync(&mut self, repo: &IndexedRepository) -> Result<SyncReport> {
        let entries = repo.repo().snapshots()?;
        let mut wanted: BTreeMap<String, Vec<SnapshotInfo>> = BTreeMap::new();
        for e in &entries {
            wanted.entry(e.snapshot.host.clone()).or_default().push(SnapshotInfo::from(e));
        }
        self.sync_to(repo, wanted)
    }

    /// [`Catalog::sync`] against an explicit list of snapshots per host, each oldest first.
    pub fn sync_to(
        &mut self,
        source: &dyn TreeSource,
        wanted: BTreeMap<String, Vec<SnapshotInfo>>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let have = self.catalogued()?;
        let hosts: HashSet<&String> = have.keys().chain(wanted.keys()).collect();
        let mut hosts: Vec<&String> = hosts.into_iter().collect();
        hosts.sort();
        for host in hosts {
            let want = wanted.get(host).map(Vec::as_slice).unwrap_or(&[]);
            let had = have.get(host).map(Vec::as_slice).unwrap_or(&[]);
            if want.is_empty() {
                report.snapshots_dropped += had.len() as u64;
                self.remove_host(host)?;
                report.hosts_removed.push(host.clone());
                continue;
            }
            let want_ids: HashSet<SnapshotId> = want.iter().map(|s| s.id).collect();
            let had_ids: HashSet<SnapshotId> = had.iter().map(|s| s.0).collect();
            let dropped = had.iter().filter(|s| !want_ids.contains(&s.0)).count();
            // New snapshots must come after every catalogued one that stays.
            let newest = had.iter().rev().find(|s| want_ids.contains(&s.0)).map(|s| (s.1, s.0));
            let out_of_order =
                want.iter().any(|s| !had_ids.contains(&s.id) && newest.is_some_and(|n| (s.time, s.id) < n));
            let todo: Vec<&SnapshotInfo> = if out_of_order {
                tracing::info!("catalog: rebuilding host {host} (a snapshot arrived out of order)");
                report.snapshots_dropped += dropped as u64;
                self.remove_host(host)?;
                report.hosts_rebuilt.push(host.clone());
                want.iter().collect()
            } else {
                if dropped > 0 {
                    tracing::info!("catalog: dropping {dropped} removed snapshots of host {host}");
                    self.drop_snapshots(host, &want_ids, &mut report)?;
                    report.snapshots_dropped += dropped as u64;
                }
                want.iter().filter(|s| !had_ids.contains(&s.id)).collect()
            };
            for snap in todo {
                if self.apply_with(source, snap, &mut report)? {
                    report.snapshots_applied += 1;
                }
            }
        }
        Ok(report)
    }

    /// Build the catalog again from every snapshot of the repository, in one transaction:
    /// readers see the old catalog until the new one is complete, and a rebuild that is killed
    /// leaves the old one as it was.
    pub fn rebuild(&mut self, repo: &IndexedRepository) -> Result<SyncReport> {
        let mut wanted: BTreeMap<String, Vec<SnapshotInfo>> = BTreeMap::new();
        for e in &repo.repo().snapshots()? {
            wanted.entry(e.snapshot.host.clone()).or_default().push(SnapshotInfo::from(e));
        }
        self.rebuild_from(repo, wanted)
    }

    /// [`Catalog::rebuild`] from an explicit list of snapshots per host, each oldest first.
    pub fn rebuild_from(
        &mut self,
        source: &dyn TreeSource,
        wanted: BTreeMap<String, Vec<SnapshotInfo>>,
    ) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        self.caches = Caches::default();
        let written_before = self.versions_written;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = (|| -> Result<()> {
            clear_in(&tx)?;
            for snaps in wanted.values() {
                for snap in snaps {
                    if apply_in(
                        &tx,
                        &mut self.caches,
                        source,
                        snap,
                        self.failpoint,
                        &mut self.versions_written,
                        &mut report,
                    )? {
                        report.snapshots_applied += 1;
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                tx.commit()?;
                Ok(report)
            }
            Err(e) => {
                self.caches = Caches::default();
                self.versions_written = written_before;
                Err(e)
            }
        }
    }

    /// Empty the catalog (in one transaction).
    pub fn clear(&mut self) -> Result<()> {
        self.caches = Caches::default();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        clear_in(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Snapshots in the catalog per host, oldest first: (id, time).
    fn catalogued(&self) -> Result<BTreeMap<String, Vec<(SnapshotId, jiff::Timestamp)>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT h.name, s.id, s.time_ns FROM snapshots s JOIN hosts h ON h.id = s.host ORDER BY s.key")?;
        let mut out: BTreeMap<String, Vec<(SnapshotId, jiff::Timestamp)>> = BTreeMap::new();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let host: String = r.get(0)?;
            let id: Vec<u8> = r.get(1)?;
            let id = crate::query::snapshot_id(&id);
            let time = crate::query::ts_from_ns(r.get(2)?);
            out.entry(host).or_default().push((id, time));
        }
        Ok(out)
    }

    /// Forget a host and all its versions (one transaction).
    pub fn remove_host(&mut self, host: &str) -> Result<()> {
        self.caches = Caches::default();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id: Option<i64> = tx.query_row("SELECT id FROM hosts WHERE name=?1", [host], |r| r.get(0)).optional()?;
        if let Some(id) = id {
            tx.execute("DELETE FROM versions WHERE host=?1", [id])?;
            tx.execute("DELETE FROM folder_access WHERE dir IN (SELECT id FROM dirs WHERE host=?1)", [id])?;
            tx.execute("DELETE FROM dirs WHERE host=?1", [id])?;
            tx.execute("DELETE FROM snapshots WHERE host=?1", [id])?;
            tx.execute("DELETE FROM hosts WHERE id=?1", [id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drop the catalogued snapshots of `host` whose ids are not in `keep`, in one transaction,
    /// without reading any tree (the removed snapshots' trees may be pruned already): each
    /// version's interval shrinks to the kept snapshots it spans, a version held only by removed
    /// snapshots goes, two versions of a path with one identity that the removal made adjacent
    /// become one, and the newest version of each path is marked deleted or present again.
    ///
    /// Cost: one pass over the host's versions, then work per path whose versions start or end
    /// at a removed snapshot (or just after one).
    fn drop_snapshots(&mut self, host: &str, keep: &HashSet<SnapshotId>, report: &mut SyncReport) -> Result<()> {
        self.caches = Caches::default();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(host_id) =
            tx.query_row("SELECT id FROM hosts WHERE name=?1", [host], |r| r.get::<_, i64>(0)).optional()?
        else {
            return Ok(());
        };
        // The host's snapshots, oldest first: (key, kept).
        let old: Vec<(i64, bool)> = tx
            .prepare("SELECT key, id FROM snapshots WHERE host=?1 ORDER BY key")?
            .query_map([host_id], |r| {
                let id: Vec<u8> = r.get(1)?;
                Ok((r.get(0)?, keep.contains(&crate::query::snapshot_id(&id))))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let kept: Vec<i64> = old.iter().filter(|s| s.1).map(|s| s.0).collect();
        let removed: HashSet<i64> = old.iter().filter(|s| !s.1).map(|s| s.0).collect();
        let (Some(&new_latest), Some(&(old_latest, _))) = (kept.last(), old.last()) else {
            // Nothing is kept: the host goes (its new snapshots, if any, start it again).
            drop(tx);
            return self.remove_host(host);
        };
        if removed.is_empty() {
            return Ok(());
        }
        // Snapshots that directly follow a removed one: a version starting there may now be
        // adjacent to an equal older version of its path.
        let after_removed: HashSet<i64> = old.windows(2).filter(|w| !w[0].1).map(|w| w[1].0).collect();
        let latest_removed = removed.contains(&old_latest);
        let mut paths: HashSet<(i64, i64)> = HashSet::new();
        {
            let mut stmt = tx.prepare("SELECT dir, name, first, last FROM versions WHERE host=?1")?;
            let mut rows = stmt.query([host_id])?;
            while let Some(r) = rows.next()? {
                let (first, last): (i64, Option<i64>) = (r.get(2)?, r.get(3)?);
                // An open version stays open unless it starts after the new latest snapshot
                // (then its start was removed); a closed one changes if an end was removed, or
                // if it ends at the new latest snapshot, which makes it present again.
                let touched = removed.contains(&first)
                    || after_removed.contains(&first)
                    || last.is_some_and(|l| removed.contains(&l) || (latest_removed && l == new_latest));
                if touched {
                    paths.insert((r.get(0)?, r.get(1)?));
                }
            }
        }
        let mut paths: Vec<(i64, i64)> = paths.into_iter().collect();
        paths.sort_unstable();
        let mut dropped = 0u64;
        for (dir, name) in paths {
            let versions: Vec<(i64, StoredIdent, i64, Option<i64>, i64)> = tx
                .prepare_cached(
                    "SELECT id, kind, mode, uid, gid, size, mtime, mtime_ns, content, first, last, gone, access
                     FROM versions WHERE dir=?1 AND name=?2 ORDER BY first",
                )?
                .query_map([dir, name], |r| {
                    Ok((
                        r.get(0)?,
                        (
                            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?),
                            r.get(12)?,
                        ),
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            // (row id, identity, first and last as indexes into `kept`)
            let mut live: Vec<(i64, StoredIdent, usize, usize)> = Vec::with_capacity(versions.len());
            let mut gone_rows = Vec::new();
            for &(id, ident, first, last, _) in &versions {
                match kept_span(&kept, first, last.unwrap_or(old_latest)) {
                    None => gone_rows.push(id),
                    Some((a, b)) => match live.last_mut() {
                        Some(prev) if prev.1 == ident && prev.3 + 1 == a => {
                            prev.3 = b;
                            gone_rows.push(id);
                        }
                        _ => live.push((id, ident, a, b)),
                    },
                }
            }
            for id in gone_rows {
                tx.prepare_cached("DELETE FROM versions WHERE id=?1")?.execute([id])?;
                dropped += 1;
            }
            for (i, &(id, ident, a, b)) in live.iter().enumerate() {
                let last = (kept[b] != new_latest).then_some(kept[b]);
                let gone = match live.get(i + 1) {
                    None => i64::from(last.is_some()),
                    Some(next) => closed_gone(next.1.1 == ident.1),
                };
                let before = versions.iter().find(|v| v.0 == id).expect("a live version was read");
                if (before.2, before.3, before.4) != (kept[a], last, gone) {
                    tx.prepare_cached("UPDATE versions SET first=?1, last=?2, gone=?3 WHERE id=?4")?
                        .execute(params![kept[a], last, gone, id])?;
                }
            }
        }
        for key in &removed {
            tx.execute("DELETE FROM snapshots WHERE key=?1", [key])?;
        }
        tx.execute("UPDATE hosts SET latest=?1 WHERE id=?2", [new_latest, host_id])?;
        tx.commit()?;
        report.versions_dropped += dropped;
        Ok(())
    }

    /// Add one snapshot, newer than every catalogued snapshot of its host, in one transaction.
    /// Returns false if it was already there. An older snapshot is refused
    /// ([`Error::InvalidInput`]); [`Catalog::sync`] rebuilds the host instead.
    pub fn apply(&mut self, source: &dyn TreeSource, snap: &SnapshotInfo) -> Result<bool> {
        let mut report = SyncReport::default();
        self.apply_with(source, snap, &mut report)
    }

    fn apply_with(&mut self, source: &dyn TreeSource, snap: &SnapshotInfo, report: &mut SyncReport) -> Result<bool> {
        let failpoint = self.failpoint;
        let written_before = self.versions_written;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let result = apply_in(&tx, &mut self.caches, source, snap, failpoint, &mut self.versions_written, report);
        match result {
            Ok(true) => {
                tx.commit()?;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                // Ids handed out in this transaction are gone with it.
                self.caches = Caches::default();
                self.versions_written = written_before;
                Err(e)
            }
        }
    }
}

/// A version's identity as stored: kind, mode, uid, gid (NULL when equal to uid), size, mtime,
/// mtime_ns, content, and its access.
type StoredIdent = ((i64, i64, i64, Option<i64>, i64, i64, i64, i64), i64);

/// The kept snapshots (`kept`: keys, oldest first) within `[first, last]`, as indexes into
/// `kept`; `None` if there are none.
fn kept_span(kept: &[i64], first: i64, last: i64) -> Option<(usize, usize)> {
    let a = kept.partition_point(|&k| k < first);
    let b = kept.partition_point(|&k| k <= last).checked_sub(1)?;
    (a <= b).then_some((a, b))
}

fn clear_in(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "DELETE FROM versions; DELETE FROM dirs; DELETE FROM names;
         INSERT INTO names_fts(names_fts) VALUES('delete-all'); DELETE FROM trigrams;
         DELETE FROM snapshots; DELETE FROM hosts; DELETE FROM contexts; DELETE FROM access;
         DELETE FROM folder_access;",
    )?;
    Ok(())
}

fn ns_of(t: jiff::Timestamp) -> i64 {
    t.as_nanosecond() as i64
}

fn apply_in(
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
                    "INSERT INTO dirs(host, parent, name, path, access, varies, ctx) VALUES (?1, NULL, NULL, X'', 0, 0, ?2)",
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

    /// Like `find_dir`, creating it if needed (with the folder's own `access`); true if
    /// created. An existing directory notes its folder's access now ([`Writer::note_access`]).
    fn dir_id(
        &mut self,
        parent: i64,
        parent_path: &[u8],
        name: i64,
        raw_name: &[u8],
        access: i64,
    ) -> Result<(i64, bool, Vec<u8>)> {
        let path = [parent_path, b"/", raw_name].concat();
        if let Some(id) = self.find_dir(parent, name)? {
            self.note_access(id, access)?;
            return Ok((id, false, path));
        }
        let ctx = self.dir_state(parent)?.ctx;
        let ctx = self.context_id(ctx, access, 0)?;
        self.tx
            .prepare_cached(
                "INSERT INTO dirs(host, parent, name, path, access, varies, ctx) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
            )?
            .execute(params![self.host, parent, name, path, access, ctx])?;
        let id = self.tx.last_insert_rowid();
        self.caches.dirs.insert((parent, name), id);
        self.caches.dir_states.insert(id, DirState { parent: Some(parent), ctx, access, varies: false });
        Ok((id, true, path))
    }

    fn dir_state(&mut self, dir: i64) -> Result<DirState> {
        if let Some(&s) = self.caches.dir_states.get(&dir) {
            return Ok(s);
        }
        let s = self
            .tx
            .prepare_cached("SELECT parent, ctx, access, varies FROM dirs WHERE id=?1")?
            .query_row([dir], |r| {
                Ok(DirState { parent: r.get(0)?, ctx: r.get(1)?, access: r.get(2)?, varies: r.get(3)? })
            })?;
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
            let children: Vec<i64> = self
                .tx
                .prepare_cached("SELECT id FROM dirs WHERE parent=?1")?
                .query_map([d], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            todo.extend(children);
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
        let children: Vec<i64> = self
            .tx
            .prepare_cached("SELECT id FROM dirs WHERE parent=?1")?
            .query_map([dir], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for c in children {
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
            let (child, created, cpath) = self.dir_id(dir, path, name, &n.name, access)?;
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
                                let (child, _, cpath) = self.dir_id(dir, path, name, &nb.name, new_access)?;
                                self.diff_tree(child, &cpath, na.subtree, nb.subtree)?;
                            }
                            (true, false) => {
                                if let Some(child) = self.find_dir(dir, name)? {
                                    self.close_dir(child)?;
                                }
                            }
                            (false, true) => {
                                let (child, created, cpath) = self.dir_id(dir, path, name, &nb.name, new_access)?;
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
