//! Removing snapshots from the catalog in place, without reading any tree.

use std::collections::HashSet;

use rewind_store::SnapshotId;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Caches, SyncReport, closed_gone};
use crate::Catalog;
use crate::error::Result;

impl Catalog {
    /// Drop the catalogued snapshots of `host` whose ids are not in `keep`, in one transaction,
    /// without reading any tree (the removed snapshots' trees may be pruned already): each
    /// version's interval shrinks to the kept snapshots it spans, a version held only by removed
    /// snapshots goes, two versions of a path with one identity that the removal made adjacent
    /// become one, and the newest version of each path is marked deleted or present again.
    ///
    /// Cost: one pass over the host's versions, then work per path whose versions start or end
    /// at a removed snapshot (or just after one).
    pub(super) fn drop_snapshots(
        &mut self,
        host: &str,
        keep: &HashSet<SnapshotId>,
        report: &mut SyncReport,
    ) -> Result<()> {
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
