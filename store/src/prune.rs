//! Forget, prune and copy, designed never to block or break a reader or a backup.
//!
//! The protocol is in FORMAT.md ("Prune"), step by step with the invariant each keeps. In short:
//! 1. **Condemn.** Find the packs no snapshot needs (copying the used blobs of mostly-unused
//!    packs into new, indexed packs first); write a *pending record* naming them; only then list
//!    the locks and record the writers seen as the record's *witnesses*. A writer creates its
//!    lock, then reads the records, then loads the index, and never deduplicates against a
//!    condemned pack; so a writer that is not a witness has seen the record.
//! 2. **Sweep** a record once none of its witnesses is live: recompute what the snapshots use
//!    *now*, keep the condemned packs holding a used blob found nowhere else, delete the others
//!    (deletions first, so a full disk gets room), drop them from the index files, and last
//!    delete the record.
//!
//! Readers that resolved a blob to a deleted pack reload the index and read another copy. A
//! prune killed at any point leaves a valid repository: its record is swept by the next prune.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::{Backend, FileKind};
use crate::blob;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::format::{
    self, BlobId, BlobRecord, Compression, IndexPack, PENDING_MAGIC, PENDING_VERSION, PackId, Pending, SnapshotId,
    TreeId,
};
use crate::index::{IdMap, IdSet, read_pack_records, write_index_file};
use crate::lock::{self, Lock, LockEntry, LockState, list_locks};
use crate::pack::Packer;
use crate::repo::{CacheSizes, IndexedRepository, Repository};

/// Remove snapshot manifests. Data goes with the next `prune`.
pub fn forget(repo: &Repository, ids: &[SnapshotId]) -> Result<()> {
    for id in ids {
        repo.backend().delete(FileKind::Snapshot, &id.to_hex())?;
    }
    Ok(())
}

/// Packs that a pending prune has condemned: a backup or copy must not deduplicate against them.
/// A damaged record is skipped (with a warning): it authorizes no deletion (a sweep drops it
/// unread), so its packs stay.
pub(crate) fn condemned_packs(repo: &Repository) -> Result<IdSet<PackId>> {
    let mut out = IdSet::default();
    for (_, p) in pending_records(repo)? {
        if let Ok(p) = p {
            out.extend(p.packs);
        }
    }
    Ok(out)
}

type Records = Vec<(String, Result<Pending>)>;

/// Every pending record, each decoded or with why it does not decode.
fn pending_records(repo: &Repository) -> Result<Records> {
    let mut out = Vec::new();
    for name in repo.backend().list(FileKind::Pending)? {
        if name.starts_with(lock::VERDICT_PREFIX) {
            continue;
        }
        let bytes = match repo.backend().get(FileKind::Pending, &name) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let p = repo.codec().decode_pending(&name, bytes).map_err(|e| match e {
            Error::Corrupt { detail, .. } => Error::corrupt(format!("pending record {name}"), detail),
            e => e,
        });
        match &p {
            Err(e @ Error::UnsupportedVersion { .. }) => return Err(Error::InvalidInput(e.to_string())),
            Err(e) => warn_once(&name, e),
            Ok(_) => {}
        }
        out.push((name, p));
    }
    Ok(out)
}

fn warn_once(name: &str, e: &Error) {
    static WARNED: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
    let mut w = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if w.get_or_insert_with(Default::default).insert(name.to_string()) {
        tracing::warn!("{e}; it is ignored, and the next prune removes it");
    }
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
    /// Unindexed packs holding used blobs left unindexed because a writer runs.
    pub packs_reindex_later: usize,
    /// Packs deleted by this run's sweeps, and the bytes freed.
    pub packs_deleted: usize,
    pub bytes_freed: u64,
    /// Condemned packs kept because a snapshot made meanwhile uses them.
    pub packs_resurrected: usize,
    /// Condemned packs left for a later prune (writers that may not have seen them still run).
    pub packs_deferred: usize,
    pub bytes_deferred: u64,
    /// Damaged pending records removed (their packs stay until condemned again).
    pub records_dropped: usize,
    /// Leftover files of dead processes removed from `tmp/`.
    pub tmp_removed: usize,
}

/// Remove what no snapshot uses. See the module docs for why this is safe beside backups and
/// readers.
pub fn prune(repo: &Repository, opts: &PruneOptions, progress: &PruneProgress) -> Result<PruneReport> {
    let lock = Lock::acquire_exclusive(repo, lock::PRUNE, &[lock::PRUNE, lock::REBUILD_INDEX])?;
    let mut report = PruneReport::default();
    let backend = repo.backend();

    if !opts.dry_run {
        for t in backend.tmp_files()? {
            if t.dead {
                backend.remove_tmp(&t.name)?;
                report.tmp_removed += 1;
            }
        }
        // Earlier records first: their packs may be swept now, which also makes room.
        sweep_all(repo, &lock, &mut report)?;
    }

    // The packs present, then the writers: an unindexed pack listed before a lock listing that
    // shows no writer cannot be one a writer is about to index (FORMAT.md, "Unindexed packs").
    let pack_names: Vec<PackId> =
        backend.list(FileKind::Pack)?.iter().filter_map(|n| PackId::from_hex(n).ok()).collect();
    let writers_running = list_locks(repo)?.iter().any(|l| l.name != lock.name() && l.state != LockState::Dead);
    let indexed = repo.open_indexed(CacheSizes::default())?;
    let already = condemned_packs(repo)?;

    let (snapshots, trees) = snapshot_roots(repo, &indexed)?;
    report.snapshots = snapshots;
    let used = used_blobs(&indexed, &trees)?;

    // Per pack: total and used bytes. A blob stored twice counts for one pack only: the fullest
    // (ties by id), so that the same accounting is reached on every run and a duplicate never
    // keeps a mostly empty pack alive.
    let (_, all_packs) = load_index_files(backend, repo.codec())?;
    let mut packs: IdMap<PackId, PackUse> = IdMap::default();
    let shares: IdMap<PackId, Vec<u64>> = all_packs.values().map(|p| (p.pack, stored_shares(&p.blobs))).collect();
    let mut order: Vec<(u64, PackId)> = all_packs
        .values()
        .map(|p| {
            let share = &shares[&p.pack];
            (p.blobs.iter().zip(share).filter(|(b, _)| used.contains(&b.id)).map(|(_, s)| s).sum::<u64>(), p.pack)
        })
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut assigned: IdSet<BlobId> = IdSet::default();
    for (_, id) in order {
        let p = &all_packs[&id];
        let entry = packs.entry(id).or_default();
        entry.len = p.pack_len;
        let share = &shares[&id];
        entry.data = share.iter().sum();
        for (b, s) in p.blobs.iter().zip(share) {
            if used.contains(&b.id) && assigned.insert(b.id) {
                entry.used += s;
                entry.used_blobs.push(*b);
            }
        }
    }
    // Indexed packs that are gone are not ours to account (an interrupted sweep's, or damage
    // that check reports).
    let present: IdSet<PackId> = pack_names.iter().copied().collect();
    packs.retain(|id, _| present.contains(id));

    // Unindexed packs: index them if they hold used blobs the index lacks, else they are garbage
    // (of a killed or failed writer) and are condemned like any unused pack.
    let mut reindex = Vec::new();
    let unindexed: Vec<PackId> = pack_names.iter().filter(|p| !all_packs.contains_key(p)).copied().collect();
    for pack in &unindexed {
        let (len, blobs, _) = match read_pack_records(backend, repo.codec(), pack) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("pack {} has no readable trailer: {e}", pack.short());
                continue;
            }
        };
        let needed = blobs.iter().any(|b| used.contains(&b.id) && !indexed.contains(b.id));
        if needed {
            if writers_running {
                report.packs_reindex_later += 1;
            } else {
                reindex.push(IndexPack { pack: *pack, pack_len: len, blobs });
            }
        } else {
            packs.insert(*pack, PackUse { len, ..PackUse::default() });
        }
    }
    report.packs_reindexed = reindex.len();
    if !opts.dry_run && !reindex.is_empty() {
        write_index_file(backend, repo.codec(), &reindex)?;
    }

    report.packs = packs.len();
    report.bytes_total = packs.values().map(|p| p.len).sum();
    report.bytes_used = packs.values().map(|p| p.used).sum();

    let mut unused: Vec<PackId> = Vec::new();
    let mut candidates: Vec<(PackId, &PackUse)> = Vec::new();
    for (id, p) in &packs {
        if already.contains(id) {
            continue;
        }
        // Unused: no blob in it is used (not "no byte": a member's share of its group may round
        // to little).
        if p.used_blobs.is_empty() {
            unused.push(*id);
        } else if p.used * 10 < p.data * 9 {
            candidates.push((*id, p));
        }
    }
    unused.sort();
    report.packs_unused = unused.len();
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
            unused.iter().chain(repack.iter().map(|(id, _)| id)).map(|id| packs[id].len).sum::<u64>() - spent;
        return Ok(report);
    }

    // Unused packs first, and swept at once if no writer runs: deleting before repacking gives
    // a full disk room for the new packs.
    if !unused.is_empty() {
        condemn(repo, &lock, unused)?;
        sweep_all(repo, &lock, &mut report)?;
    }

    if !repack.is_empty() {
        progress.packs_total.store(repack.len() as u64, Ordering::Relaxed);
        let config = repo.config();
        // Members of groups are grouped anew (a group keeps none of the blobs no longer used),
        // with the repository's dictionary.
        let packer = Packer::new(backend, repo.codec(), config.pack_size, config.compression.level)
            .with_groups(config.has_groups())
            .with_existing_dictionary(config.has_dictionaries())?;
        let copied = repack.par_iter().try_for_each(|(pack, blobs)| -> Result<()> {
            crate::interrupt::check()?;
            let bytes = backend.get(FileKind::Pack, &pack.to_hex())?;
            for b in blobs {
                let stored = bytes
                    .get(b.offset as usize..b.offset as usize + b.stored_len as usize)
                    .ok_or_else(|| Error::corrupt(format!("pack {}", pack.to_hex()), "truncated"))?;
                // Never carry damage forward: verify before copying.
                let raw = blob::open(repo.codec(), &b.id, b.compression, stored, b.raw_len)?;
                if packer.claim(b.id) {
                    let n = match b.compression {
                        Compression::Grouped { .. } => packer.add_claimed(b.id, &raw)?,
                        _ => packer.add_stored(b.id, b.compression, stored, b.raw_len)?,
                    };
                    progress.bytes_repacked.fetch_add(n, Ordering::Relaxed);
                }
            }
            progress.packs_done.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        if let Err(e) = copied.and_then(|()| packer.finish()) {
            packer.abandon();
            return Err(e);
        }
        condemn(repo, &lock, repack.iter().map(|(id, _)| *id).collect())?;
        sweep_all(repo, &lock, &mut report)?;
    }
    let _ = lock::clean_verdicts(repo, &list_locks(repo)?);
    backend.ensure_reserve();
    drop(lock);
    Ok(report)
}

/// What each blob of a pack takes of it: its stored length, or for the members of a group
/// (which share the group's stored bytes) a part of the group's in proportion to their size,
/// rounded up (at least one byte), so that the parts add up to about the group's length.
fn stored_shares(blobs: &[BlobRecord]) -> Vec<u64> {
    let mut group_raw: IdMap<u64, u64> = IdMap::default();
    for b in blobs {
        if let Compression::Grouped { .. } = b.compression {
            *group_raw.entry(b.offset).or_default() += u64::from(b.raw_len).max(1);
        }
    }
    blobs
        .iter()
        .map(|b| match b.compression {
            Compression::Grouped { .. } => {
                (u64::from(b.stored_len) * u64::from(b.raw_len).max(1)).div_ceil(group_raw[&b.offset].max(1)).max(1)
            }
            _ => u64::from(b.stored_len),
        })
        .collect()
}

/// Write a pending record for `packs` (step P4), then list the locks and record the writers
/// seen as its witnesses (P5). Returns the record's name.
fn condemn(repo: &Repository, lock: &Lock, packs: Vec<PackId>) -> Result<String> {
    let backend = repo.backend();
    let mut record = Pending {
        magic: PENDING_MAGIC.into(),
        version: PENDING_VERSION,
        time: jiff::Timestamp::now(),
        packs,
        witnesses: None,
        sum: String::new(),
    };
    let mut salt = [0u8; 8];
    crate::crypto::fill_random(&mut salt);
    let name = format!("{}-{}", record.time.as_nanosecond(), hex::encode(salt));
    let bytes = repo.codec().encode_pending(&name, &record);
    failpoint::hit("prune-before-record")?;
    backend.put(FileKind::Pending, &name, &bytes)?;
    failpoint::hit("prune-record-written")?;
    // Only now, with the record durable, may the locks be listed: a writer whose lock this
    // listing misses created it later, and so reads the record.
    record.witnesses = Some(witnesses(&list_locks(repo)?, lock.name()));
    backend.put(FileKind::Pending, &name, &repo.codec().encode_pending(&name, &record))?;
    failpoint::hit("prune-witnesses-written")?;
    Ok(name)
}

/// The locks that may belong to a writer that has not seen a record: every lock but ours and
/// those provably dead.
fn witnesses(locks: &[LockEntry], own: &str) -> Vec<String> {
    locks.iter().filter(|l| l.name != own && l.state != LockState::Dead).map(|l| l.name.clone()).collect()
}

#[derive(Default)]
struct PackUse {
    len: u64,
    /// Bytes of blobs (the pack less its header and trailer).
    data: u64,
    used: u64,
    used_blobs: Vec<format::BlobRecord>,
}

/// The number of snapshots and the root trees whose blobs must be kept: every readable
/// snapshot's, and those of damaged snapshot files whose tree can still be read from them. A
/// damaged snapshot whose tree cannot be told is an error: its data cannot be told apart from
/// garbage, so nothing may be deleted until it is forgotten or repaired.
fn snapshot_roots(repo: &Repository, indexed: &IndexedRepository) -> Result<(usize, Vec<TreeId>)> {
    let (good, damaged) = repo.snapshots_and_damage()?;
    let mut trees: Vec<TreeId> = good.iter().map(|s| s.snapshot.tree).collect();
    for d in &damaged {
        match d.salvaged_tree.filter(|t| indexed.contains((*t).into())) {
            Some(t) => trees.push(t),
            None => {
                return Err(Error::InvalidInput(format!(
                    "snapshot {} ({}) is damaged and its data cannot be told apart: `rewind forget {}` \
                     (its data goes with the next prune) or put back a good copy of the file",
                    d.id.short(),
                    d.path.display(),
                    d.id.short()
                )));
            }
        }
    }
    Ok((good.len(), trees))
}

/// Every blob (trees and chunks) the given root trees reach.
fn used_blobs(repo: &IndexedRepository, roots: &[TreeId]) -> Result<IdSet<BlobId>> {
    let mut used: IdSet<BlobId> = IdSet::default();
    let mut stack: Vec<TreeId> = roots.to_vec();
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

/// The readable index files' names and every pack they describe (all locations of every blob).
/// A damaged index file is left out: its packs count as unindexed.
/// Index files by name with the packs each describes, and every pack described.
type IndexFiles = (Vec<(String, Vec<PackId>)>, BTreeMap<PackId, IndexPack>);

fn load_index_files(backend: &dyn Backend, codec: &Codec) -> Result<IndexFiles> {
    let names = backend.list(FileKind::Index)?;
    let mut files = Vec::new();
    let mut packs = BTreeMap::new();
    for name in &names {
        let bytes = match backend.get(FileKind::Index, name) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let decoded = codec.decode_index(name, &bytes);
        match decoded {
            Ok(ps) => {
                files.push((name.clone(), ps.iter().map(|p| p.pack).collect()));
                for p in ps {
                    packs.insert(p.pack, p);
                }
            }
            Err(e) if e.is_corrupt() => tracing::warn!("index file {name} is damaged and skipped: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok((files, packs))
}

/// Sweep every pending record none of whose witnesses is live (steps S1-S6 of FORMAT.md).
fn sweep_all(repo: &Repository, lock: &Lock, report: &mut PruneReport) -> Result<()> {
    let backend = repo.backend();
    let records = pending_records(repo)?;
    if records.is_empty() {
        return Ok(());
    }
    let locks = list_locks(repo)?;
    let mut ready: Vec<(String, Pending)> = Vec::new();
    for (name, rec) in records {
        let mut rec = match rec {
            Ok(r) => r,
            Err(e) => {
                // It authorizes nothing: its packs stay until a prune condemns them again.
                tracing::warn!("removing damaged pending record {name}: {e}");
                backend.delete(FileKind::Pending, &name)?;
                report.records_dropped += 1;
                continue;
            }
        };
        let Some(witnesses) = rec.witnesses.clone() else {
            // Its prune ended before listing the locks (or wrote version 1): list them now. Any
            // writer that started before the record and still runs holds a lock listed now.
            rec.witnesses = Some(self::witnesses(&locks, lock.name()));
            rec.version = PENDING_VERSION;
            backend.put(FileKind::Pending, &name, &repo.codec().encode_pending(&name, &rec))?;
            defer(repo, report, &rec);
            continue;
        };
        if witnesses_gone(repo, &witnesses, &locks)? {
            ready.push((name, rec));
        } else {
            defer(repo, report, &rec);
        }
    }
    if ready.is_empty() {
        return Ok(());
    }
    failpoint::hit("sweep-start")?;
    lock.check_held()?;
    let doomed: IdSet<PackId> = ready.iter().flat_map(|(_, p)| p.packs.iter().copied()).collect();

    // S3: what the snapshots use now. Every writer that may not have seen these records has
    // ended, so its snapshot, if it made one, is listed here.
    let present: IdSet<PackId> =
        backend.list(FileKind::Pack)?.iter().filter_map(|n| PackId::from_hex(n).ok()).collect();
    let (files, packs) = load_index_files(backend, repo.codec())?;
    let indexed = repo.open_indexed(CacheSizes::default())?;
    let (_, roots) = snapshot_roots(repo, &indexed)?;
    let used = used_blobs(&indexed, &roots)?;
    let elsewhere: IdSet<BlobId> = packs
        .values()
        .filter(|p| !doomed.contains(&p.pack) && present.contains(&p.pack))
        .flat_map(|p| p.blobs.iter().map(|b| b.id))
        .collect();
    let mut drop_set: BTreeSet<PackId> = BTreeSet::new();
    for pack in &doomed {
        if !present.contains(pack) {
            drop_set.insert(*pack);
            continue;
        }
        let blobs = match packs.get(pack) {
            Some(p) => Some(p.blobs.clone()),
            None => read_pack_records(backend, repo.codec(), pack).ok().map(|(_, b, _)| b),
        };
        let needed = blobs.is_some_and(|b| b.iter().any(|b| used.contains(&b.id) && !elsewhere.contains(&b.id)));
        if needed {
            report.packs_resurrected += 1;
        } else {
            drop_set.insert(*pack);
        }
    }

    // S4: delete, in batches, each after checking again that no witness came back and that
    // our own lock was not declared expired.
    let deletions: Vec<PackId> = drop_set.iter().filter(|p| present.contains(p)).copied().collect();
    let all_witnesses: Vec<String> = ready.iter().flat_map(|(_, r)| r.witnesses.clone().unwrap_or_default()).collect();
    for batch in deletions.chunks(64) {
        failpoint::hit("sweep-before-delete")?;
        let now = list_locks(repo)?;
        if !witnesses_gone(repo, &all_witnesses, &now)? {
            return Err(Error::Locked("a writer the sweep waited for is live again; stopping".into()));
        }
        lock.check_held()?;
        crate::interrupt::check()?;
        for pack in batch {
            let name = pack.to_hex();
            report.bytes_freed += backend.len(FileKind::Pack, &name).unwrap_or(0);
            backend.delete(FileKind::Pack, &name)?;
            report.packs_deleted += 1;
        }
        failpoint::hit("sweep-after-delete")?;
    }

    // S5: the index files that name dropped packs are rewritten without them, then removed.
    let affected: Vec<&(String, Vec<PackId>)> =
        files.iter().filter(|(_, ps)| ps.iter().any(|p| drop_set.contains(p))).collect();
    let keep: BTreeMap<PackId, &IndexPack> = affected
        .iter()
        .flat_map(|(_, ps)| ps.iter())
        .filter(|p| !drop_set.contains(p))
        .filter_map(|p| packs.get(p).map(|ip| (*p, ip)))
        .collect();
    let keep: Vec<IndexPack> = keep.into_values().cloned().collect();
    let mut written = BTreeSet::new();
    for batch in keep.chunks(256) {
        written.insert(write_index_file(backend, repo.codec(), batch)?.to_hex());
    }
    failpoint::hit("sweep-index-written")?;
    for (name, _) in affected {
        if !written.contains(name) {
            backend.delete(FileKind::Index, name)?;
        }
    }
    // S6: last, the records.
    failpoint::hit("sweep-before-record-delete")?;
    for (name, _) in ready {
        backend.delete(FileKind::Pending, &name)?;
    }
    Ok(())
}

/// Whether none of `witnesses` is live: each is absent, dead, or expired (then declared so,
/// before anything relies on it).
fn witnesses_gone(repo: &Repository, witnesses: &[String], locks: &[LockEntry]) -> Result<bool> {
    for w in witnesses {
        match locks.iter().find(|l| &l.name == w) {
            None => {}
            Some(l) if l.state == LockState::Dead => {}
            Some(l) if l.state == LockState::Expired => lock::declare_expired(repo, &l.name)?,
            Some(_) => return Ok(false),
        }
    }
    Ok(true)
}

fn defer(repo: &Repository, report: &mut PruneReport, rec: &Pending) {
    report.packs_deferred += rec.packs.len();
    for pack in &rec.packs {
        report.bytes_deferred += repo.backend().len(FileKind::Pack, &pack.to_hex()).unwrap_or(0);
    }
}
