//! Forget, prune and copy, designed never to block or break a reader or a backup.
//!
//! Prune works in two phases (see FORMAT.md, "Prune"):
//! 1. **Condemn.** Find the blobs no snapshot uses; copy the used blobs of mostly-unused packs
//!    into new packs (indexed); write a *pending record* naming the packs to delete and the time.
//!    From then on a starting backup does not deduplicate against blobs in condemned packs.
//! 2. **Sweep**, once every backup that started before the record is done: recompute what the
//!    snapshots use now; a condemned pack holding a used blob found nowhere else is kept; the
//!    others are dropped from the index (new index files, then the old removed) and deleted.
//!
//! Readers that resolved a blob to a deleted pack reload the index and retry. A prune killed at
//! any point leaves a valid repository: its record is swept by the next prune.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::blob;
use crate::error::{Error, Result};
use crate::format::{self, BlobId, FORMAT_VERSION, Hash, IndexPack, PackId, SnapshotId, TreeId};
use crate::index::{IdMap, IdSet, read_pack_trailer, write_index_file};
use crate::lock::{Lock, list_locks};
use crate::pack::Packer;
use crate::repo::{CacheSizes, IndexedRepository, Repository, SnapshotEntry};

const PENDING_MAGIC: &str = "rewind-prune-pending";

/// `REPO/pending/<name>`: packs condemned by a prune, deleted once backups older than `time`
/// are done.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    magic: String,
    version: u32,
    time: jiff::Timestamp,
    packs: Vec<PackId>,
}

/// Remove snapshot manifests. Data goes with the next `prune`.
pub fn forget(repo: &Repository, ids: &[SnapshotId]) -> Result<()> {
    for id in ids {
        repo.backend().delete(FileKind::Snapshot, &id.to_hex())?;
    }
    Ok(())
}

/// Packs that a pending prune has condemned: a backup or copy must not deduplicate against them.
pub(crate) fn condemned_packs(repo: &Repository) -> Result<IdSet<PackId>> {
    let mut out = IdSet::default();
    for (_, p) in pending_records(repo)? {
        out.extend(p.packs);
    }
    Ok(out)
}

fn pending_records(repo: &Repository) -> Result<Vec<(String, Pending)>> {
    let mut out = Vec::new();
    for name in repo.backend().list(FileKind::Pending)? {
        let bytes = match repo.backend().get(FileKind::Pending, &name) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let p: Pending = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(format!("pending record {name}"), e.to_string()))?;
        if p.magic != PENDING_MAGIC {
            return Err(Error::corrupt(format!("pending record {name}"), "bad magic"));
        }
        format::check_version("pending record", p.version)?;
        out.push((name, p));
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub dry_run: bool,
    /// Rewrite at most this percentage of the repository's bytes to free partly used packs.
    pub max_repack_percent: u32,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { dry_run: false, max_repack_percent: 50 }
    }
}

#[derive(Debug, Default)]
pub struct PruneProgress {
    pub packs_total: AtomicU64,
    pub packs_done: AtomicU64,
    pub bytes_repacked: AtomicU64,
}

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub snapshots: usize,
    pub packs: usize,
    pub bytes_total: u64,
    pub bytes_used: u64,
    /// Packs with nothing used, condemned.
    pub packs_unused: usize,
    /// Partly used packs whose used blobs were copied into new packs, condemned.
    pub packs_repacked: usize,
    pub bytes_repacked: u64,
    /// Unindexed packs holding used blobs (from an interrupted backup), indexed again.
    pub packs_reindexed: usize,
    /// Packs deleted by this run's sweeps, and the bytes freed.
    pub packs_deleted: usize,
    pub bytes_freed: u64,
    /// Condemned packs kept because a snapshot made meanwhile uses them.
    pub packs_resurrected: usize,
    /// Condemned packs left for a later prune (backups older than the record still run).
    pub packs_deferred: usize,
    pub bytes_deferred: u64,
}

/// Remove what no snapshot uses. See the module docs for why this is safe beside backups and
/// readers.
pub fn prune(repo: &Repository, opts: &PruneOptions, progress: &PruneProgress) -> Result<PruneReport> {
    let lock = Lock::acquire(repo, "prune")?;
    for (name, info, stale) in list_locks(repo)? {
        if !stale && name != lock.name() && info.as_ref().is_some_and(|i| i.purpose == "prune") {
            return Err(Error::Locked(format!("another prune is running ({name})")));
        }
    }
    let mut report = PruneReport::default();
    let backend = repo.backend();

    // Earlier records first: their packs may be swept now.
    if !opts.dry_run {
        sweep_all(repo, &mut report)?;
    }

    // The packs present, then whether a backup runs: a pack listed before a check that finds no
    // backup running, and absent from the index loaded after, is garbage from a dead backup.
    let pack_names: Vec<PackId> =
        backend.list(FileKind::Pack)?.iter().filter_map(|n| PackId::from_hex(n).ok()).collect();
    let backups_running = live_locks(repo, "backup")?.next().is_some() || live_locks(repo, "copy")?.next().is_some();
    let indexed = repo.open_indexed(CacheSizes::default())?;
    let already = condemned_packs(repo)?;

    let snapshots = repo.snapshots()?;
    report.snapshots = snapshots.len();
    let used = used_blobs(&indexed, &snapshots)?;

    // Per pack: total and used bytes. A blob stored twice counts for one pack only: the fullest
    // (ties by id), so that the same accounting is reached on every run and a duplicate never
    // keeps a mostly empty pack alive.
    let (_, all_packs) = load_index_files(backend)?;
    let mut packs: IdMap<PackId, PackUse> = IdMap::default();
    let mut order: Vec<(u64, PackId)> = all_packs
        .values()
        .map(|p| {
            (p.blobs.iter().filter(|b| used.contains(&b.id)).map(|b| u64::from(b.stored_len)).sum::<u64>(), p.pack)
        })
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut assigned: IdSet<BlobId> = IdSet::default();
    for (_, id) in order {
        let p = &all_packs[&id];
        let entry = packs.entry(id).or_default();
        entry.len = p.pack_len;
        entry.data = p.blobs.iter().map(|b| u64::from(b.stored_len)).sum();
        for b in &p.blobs {
            if used.contains(&b.id) && assigned.insert(b.id) {
                entry.used += u64::from(b.stored_len);
                entry.used_blobs.push(*b);
            }
        }
    }

    // Unindexed packs: index them if they hold used blobs the index lacks, else they are garbage.
    let mut reindex = Vec::new();
    let unindexed: Vec<PackId> = pack_names.iter().filter(|p| !packs.contains_key(p)).copied().collect();
    for pack in &unindexed {
        let (len, blobs) = match read_pack_trailer(backend, pack) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("pack {} has no readable trailer: {e}", pack.short());
                continue;
            }
        };
        let needed = blobs.iter().any(|b| used.contains(&b.id) && !indexed.contains(b.id));
        if needed {
            reindex.push(IndexPack { pack: *pack, pack_len: len, blobs });
        } else if !backups_running {
            packs.insert(*pack, PackUse { len, ..PackUse::default() });
        }
    }
    report.packs_reindexed = reindex.len();
    if !opts.dry_run && !reindex.is_empty() {
        write_index_file(backend, &reindex)?;
    }

    report.packs = packs.len();
    report.bytes_total = packs.values().map(|p| p.len).sum();
    report.bytes_used = packs.values().map(|p| p.used).sum();

    let mut condemned: Vec<PackId> = Vec::new();
    let mut candidates: Vec<(PackId, &PackUse)> = Vec::new();
    for (id, p) in &packs {
        if already.contains(id) {
            continue;
        }
        if p.used == 0 {
            condemned.push(*id);
            report.packs_unused += 1;
        } else if p.used * 10 < p.data * 9 {
            candidates.push((*id, p));
        }
    }
    // Emptiest first, within the repack budget.
    candidates.sort_by(|a, b| (a.1.used * b.1.data).cmp(&(b.1.used * a.1.data)).then(a.0.cmp(&b.0)));
    let budget = report.bytes_total * u64::from(opts.max_repack_percent) / 100;
    let mut spent = 0;
    let mut repack = Vec::new();
    for (id, p) in candidates {
        if spent + p.used > budget {
            break;
        }
        spent += p.used;
        repack.push((id, p.used_blobs.clone()));
    }
    report.packs_repacked = repack.len();
    report.bytes_repacked = spent;
    if opts.dry_run {
        report.bytes_freed =
            condemned.iter().chain(repack.iter().map(|(id, _)| id)).map(|id| packs[id].len).sum::<u64>() - spent;
        return Ok(report);
    }

    if !repack.is_empty() {
        progress.packs_total.store(repack.len() as u64, Ordering::Relaxed);
        let config = repo.config();
        let packer = Packer::new(backend, config.pack_size, config.compression.level);
        repack.par_iter().try_for_each(|(pack, blobs)| -> Result<()> {
            let bytes = backend.get(FileKind::Pack, &pack.to_hex())?;
            for b in blobs {
                let stored = bytes
                    .get(b.offset as usize..b.offset as usize + b.stored_len as usize)
                    .ok_or_else(|| Error::corrupt(format!("pack {}", pack.to_hex()), "truncated"))?;
                // Never carry damage forward: verify before copying.
                blob::open(&b.id, b.compression, stored, b.raw_len)?;
                if packer.claim(b.id) {
                    packer.add_stored(b.id, b.compression, stored, b.raw_len)?;
                    progress.bytes_repacked.fetch_add(stored.len() as u64, Ordering::Relaxed);
                }
            }
            progress.packs_done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })?;
        packer.finish()?;
        condemned.extend(repack.iter().map(|(id, _)| *id));
    }

    if !condemned.is_empty() {
        let record = Pending {
            magic: PENDING_MAGIC.into(),
            version: FORMAT_VERSION,
            time: jiff::Timestamp::now(),
            packs: condemned,
        };
        let bytes = serde_json::to_vec_pretty(&record).expect("record serializes");
        let name = format!("{}-{}", record.time.as_nanosecond(), &Hash::of(&bytes).to_hex()[..16]);
        backend.put(FileKind::Pending, &name, &bytes)?;
        // The record's time must follow its durability: a backup whose lock is older may not
        // have seen it.
        sweep_all(repo, &mut report)?;
    }
    drop(lock);
    Ok(report)
}

#[derive(Default)]
struct PackUse {
    len: u64,
    /// Bytes of blobs (the pack less its header and trailer).
    data: u64,
    used: u64,
    used_blobs: Vec<format::BlobRecord>,
}

fn live_locks(repo: &Repository, purpose: &str) -> Result<impl Iterator<Item = crate::lock::LockInfo>> {
    let purpose = purpose.to_string();
    Ok(list_locks(repo)?
        .into_iter()
        .filter_map(move |(_, info, stale)| info.filter(|i| !stale && i.purpose == purpose)))
}

/// Every blob (trees and chunks) the snapshots reach.
fn used_blobs(repo: &IndexedRepository, snapshots: &[SnapshotEntry]) -> Result<IdSet<BlobId>> {
    let mut used: IdSet<BlobId> = IdSet::default();
    let mut stack: Vec<TreeId> = snapshots.iter().map(|s| s.snapshot.tree).collect();
    while let Some(id) = stack.pop() {
        if !used.insert(id.into()) {
            continue;
        }
        let tree = repo.tree(id)?;
        for n in &tree.nodes {
            if let Some(sub) = n.subtree {
                stack.push(sub);
            }
            used.extend(n.content.iter().map(|c| BlobId::from(*c)));
        }
    }
    Ok(used)
}

/// The index files' names and every pack they describe (all locations of every blob).
fn load_index_files(backend: &dyn Backend) -> Result<(Vec<String>, BTreeMap<PackId, IndexPack>)> {
    let names = backend.list(FileKind::Index)?;
    let mut packs = BTreeMap::new();
    for name in &names {
        let bytes = match backend.get(FileKind::Index, name) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        for p in format::decode_index(&bytes)? {
            packs.insert(p.pack, p);
        }
    }
    Ok((names, packs))
}

/// Sweep every pending record whose backups are done.
fn sweep_all(repo: &Repository, report: &mut PruneReport) -> Result<()> {
    let records = pending_records(repo)?;
    if records.is_empty() {
        return Ok(());
    }
    let oldest_backup = live_locks(repo, "backup")?.chain(live_locks(repo, "copy")?).map(|l| l.time).min();
    let (ready, waiting): (Vec<_>, Vec<_>) =
        records.into_iter().partition(|(_, p)| oldest_backup.is_none_or(|t| t > p.time));
    for (_, p) in &waiting {
        report.packs_deferred += p.packs.len();
        for pack in &p.packs {
            report.bytes_deferred += repo.backend().len(FileKind::Pack, &pack.to_hex()).unwrap_or(0);
        }
    }
    if ready.is_empty() {
        return Ok(());
    }
    let backend = repo.backend();
    let doomed: IdSet<PackId> = ready.iter().flat_map(|(_, p)| p.packs.iter().copied()).collect();

    // The index as the files say, with every location of every blob.
    let (old_index, packs) = load_index_files(backend)?;
    let indexed = repo.open_indexed(CacheSizes::default())?;
    let used = used_blobs(&indexed, &repo.snapshots()?)?;
    let elsewhere: IdSet<BlobId> =
        packs.values().filter(|p| !doomed.contains(&p.pack)).flat_map(|p| p.blobs.iter().map(|b| b.id)).collect();
    let mut delete: BTreeSet<PackId> = BTreeSet::new();
    for pack in &doomed {
        let needed =
            packs.get(pack).is_some_and(|p| p.blobs.iter().any(|b| used.contains(&b.id) && !elsewhere.contains(&b.id)));
        if needed {
            report.packs_resurrected += 1;
        } else {
            delete.insert(*pack);
        }
    }

    // New index without the deleted packs, then the old files go, then the packs.
    let keep: Vec<IndexPack> = packs.into_values().filter(|p| !delete.contains(&p.pack)).collect();
    let mut written = BTreeSet::new();
    for batch in keep.chunks(256) {
        written.insert(write_index_file(backend, batch)?.to_hex());
    }
    for name in old_index {
        if !written.contains(&name) {
            backend.delete(FileKind::Index, &name)?;
        }
    }
    for pack in &delete {
        let name = pack.to_hex();
        report.bytes_freed += backend.len(FileKind::Pack, &name).unwrap_or(0);
        backend.delete(FileKind::Pack, &name)?;
        report.packs_deleted += 1;
    }
    for (name, _) in ready {
        backend.delete(FileKind::Pending, &name)?;
    }
    Ok(())
}

/// What `copy` did.
#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub snapshots_copied: usize,
    pub snapshots_present: usize,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
}

#[derive(Debug, Default)]
pub struct CopyProgress {
    pub blobs_total: AtomicU64,
    pub blobs_done: AtomicU64,
    pub bytes: AtomicU64,
}

/// Copy snapshots into `dst` with only the blobs it lacks. Every blob is verified on the way;
/// each snapshot's manifest is written after its blobs are durable, so an interrupted copy
/// resumes where it stopped, and a second copy adds nothing.
pub fn copy(
    src: &IndexedRepository,
    dst: &IndexedRepository,
    snapshots: &[SnapshotEntry],
    progress: &CopyProgress,
) -> Result<CopyReport> {
    let _lock = Lock::acquire(dst.repo(), "copy")?;
    dst.refresh_index()?;
    let condemned = condemned_packs(dst.repo())?;
    let have = |id: BlobId| dst.location_cached(id).is_some_and(|l| !condemned.contains(&l.pack));
    let present: BTreeSet<SnapshotId> = dst.repo().snapshot_ids()?.into_iter().collect();
    let config = dst.repo().config();
    let packer = Packer::new(dst.backend(), config.pack_size, config.compression.level);
    let mut report = CopyReport::default();
    let mut seen_trees: IdSet<TreeId> = IdSet::default();
    for s in snapshots {
        if present.contains(&s.id) {
            report.snapshots_present += 1;
            continue;
        }
        // The blobs this snapshot needs that the target lacks, in pack order for sequential reads.
        let mut missing: Vec<(BlobId, crate::index::Location)> = Vec::new();
        let mut stack = vec![s.snapshot.tree];
        let mut queued: IdSet<BlobId> = IdSet::default();
        let mut want = |id: BlobId, missing: &mut Vec<_>| -> Result<()> {
            if !have(id) && queued.insert(id) {
                missing.push((id, src.locate(id)?));
            }
            Ok(())
        };
        while let Some(id) = stack.pop() {
            if !seen_trees.insert(id) {
                continue;
            }
            want(id.into(), &mut missing)?;
            let tree = src.tree(id)?;
            for n in &tree.nodes {
                if let Some(sub) = n.subtree {
                    stack.push(sub);
                }
                for c in &n.content {
                    want((*c).into(), &mut missing)?;
                }
            }
        }
        missing.sort_by_key(|a| (a.1.pack, a.1.offset));
        progress.blobs_total.fetch_add(missing.len() as u64, Ordering::Relaxed);
        // One read per pack run when the blobs fill most of it, else one read per blob.
        let mut runs: Vec<&[(BlobId, crate::index::Location)]> =
            missing.chunk_by(|a, b| a.1.pack == b.1.pack).collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.len()));
        runs.par_iter().try_for_each(|run| -> Result<()> {
            let start = run[0].1.offset;
            let end = run.iter().map(|(_, l)| l.offset + u64::from(l.stored_len)).max().unwrap_or(start);
            let needed: u64 = run.iter().map(|(_, l)| u64::from(l.stored_len)).sum();
            let span = if end - start <= needed * 2 {
                src.backend().get_range(FileKind::Pack, &run[0].1.pack.to_hex(), start, (end - start) as usize).ok()
            } else {
                None
            };
            for (id, loc) in run.iter() {
                if !packer.claim(*id) {
                    continue;
                }
                let from_span = span.as_ref().and_then(|b| {
                    let o = (loc.offset - start) as usize;
                    b.get(o..o + loc.stored_len as usize).map(|s| (*loc, s.to_vec()))
                });
                // A pack gone meanwhile (a prune moved the blob) or a sparse run: read alone.
                let (loc, stored) = match from_span {
                    Some(x) => x,
                    None => src.read_stored(*id)?,
                };
                blob::open(id, loc.compression, &stored, loc.raw_len)?;
                packer.add_stored(*id, loc.compression, &stored, loc.raw_len)?;
                progress.blobs_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes.fetch_add(stored.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        })?;
        packer.finish()?;
        let manifest = src.backend().get(FileKind::Snapshot, &s.id.to_hex())?;
        dst.backend().put(FileKind::Snapshot, &s.id.to_hex(), &manifest)?;
        report.snapshots_copied += 1;
    }
    let stats = packer.stats();
    report.blobs_copied = stats.blobs;
    report.bytes_copied = stats.stored_bytes;
    dst.refresh_index()?;
    Ok(report)
}
