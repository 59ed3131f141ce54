//! Bringing the catalog up to date: one transaction per snapshot, diffing its tree against the
//! host's previous snapshot and skipping identical subtrees by id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rewind_store::{IndexedRepository, SnapshotId, Tree, TreeId};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior};
use serde::Serialize;

use crate::Catalog;
use crate::error::Result;

mod drop;
mod ident;
mod writer;

pub use ident::content_id;
use ident::{AccessKey, access_key, closed_gone, ident};
pub(crate) use ident::{ROOT_CONTEXT, SINCE_EVER, kind_code, kind_from_code};
use writer::apply_in;
pub(crate) use writer::{Caches, IMAGE_HOLDS, IMAGE_INSIDE, failpoint_from_env};

/// Where trees come from: the repository, or (in tests and benchmarks) memory.
pub trait TreeSource {
    fn tree(&self, id: TreeId) -> rewind_store::Result<Arc<Tree>>;

    /// Whether `id`, the subtree of a node of a tree this source gave, is a folder inside a disk
    /// image (an `<image>.d` folder or one below it): the catalog marks its directory so that
    /// no scope sees what is inside ([`crate::ImageTrees`] says so; a repository's own trees
    /// hold no such folders).
    fn inside_image(&self, id: TreeId) -> bool {
        let _ = id;
        false
    }
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
        self.mark_complete()?;
        Ok(report)
    }

    /// Record that a sync has run to its end: from then on the catalog answers for every
    /// snapshot it was brought up to date with (one cut short before that, a first build
    /// killed midway, holds only some of them: [`Catalog::is_complete`]).
    fn mark_complete(&mut self) -> Result<()> {
        let marked: Option<i64> =
            self.conn.query_row("SELECT value FROM meta WHERE key = 'complete'", [], |r| r.get(0)).optional()?;
        if marked != Some(1) {
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('complete', 1)", [])?;
        }
        Ok(())
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
                self.mark_complete()?;
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
        // Ids cached from this connection's last commit are stale if another connection has
        // committed since (another process writing the same catalog): start afresh.
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if self.caches_version != Some(version) {
            self.caches = Caches::default();
        }
        let result = apply_in(&tx, &mut self.caches, source, snap, failpoint, &mut self.versions_written, report);
        match result {
            Ok(true) => {
                tx.commit()?;
                // A connection's own commits leave its data_version as it was.
                self.caches_version = Some(version);
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

fn clear_in(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(
        "DELETE FROM versions; DELETE FROM dirs; DELETE FROM names;
         INSERT INTO names_fts(names_fts) VALUES('delete-all'); DELETE FROM trigrams;
         DELETE FROM snapshots; DELETE FROM hosts; DELETE FROM contexts; DELETE FROM access;
         DELETE FROM folder_access;",
    )?;
    Ok(())
}
