//! Checking a repository and rebuilding its index from the packs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::backend::FileKind;
use crate::blob;
use crate::error::{Error, Result};
use crate::format::{self, BlobId, Hash, IndexPack, PackId, SnapshotId, TreeId};
use crate::index::{IdMap, IdSet, Index, read_pack_records, write_index_file};
use crate::lock::Lock;
use crate::repo::{CacheSizes, IndexedRepository, Repository, SnapshotEntry};

/// Counters for a progress display.
#[derive(Debug, Default)]
pub struct CheckProgress {
    pub packs_total: AtomicU64,
    pub packs_done: AtomicU64,
    pub bytes_read: AtomicU64,
}

/// A blob that failed verification, and who uses it.
#[derive(Debug, Clone)]
pub struct DamagedBlob {
    pub id: BlobId,
    pub pack: PackId,
    pub error: String,
    /// (snapshot, path inside it) of every file or directory that uses the blob.
    pub used_by: Vec<(SnapshotId, String)>,
}

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub snapshots: usize,
    pub trees: usize,
    pub blobs: usize,
    pub packs: usize,
    pub bytes_verified: u64,
    /// Problems that make data unreachable or wrong.
    pub errors: Vec<String>,
    /// Harmless findings (unindexed packs from an interrupted backup, stale locks).
    pub warnings: Vec<String>,
    pub damaged: Vec<DamagedBlob>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.damaged.is_empty()
    }
}

/// Check structure (every referenced blob indexed, every index entry inside an existing pack)
/// and, with `read_data`, every stored byte (pack and blob BLAKE3s).
pub fn check(repo: &Repository, read_data: bool, progress: &CheckProgress) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let backend = repo.backend();
    let codec = repo.codec();

    // Index files, one by one, so one bad file does not hide the rest.
    let mut index = Index::default();
    for name in backend.list(FileKind::Index)? {
        let bytes = match backend.get(FileKind::Index, &name) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        match codec.decode_index(&name, &bytes) {
            Ok(packs) => packs.iter().for_each(|p| index.add_pack(p)),
            Err(e) => report.errors.push(format!("{e}; run `rewind rebuild-index`")),
        }
    }

    // Compression dictionaries: a damaged one makes every blob compressed with it unreadable.
    codec.load_dicts()?;
    for (name, e) in codec.damaged_dicts() {
        report.errors.push(format!("dictionary {name}: {e}; the blobs compressed with it cannot be read"));
    }

    let pack_names: BTreeSet<String> = backend.list(FileKind::Pack)?.into_iter().collect();
    let condemned = crate::prune::condemned_packs(repo)?;
    for name in backend.list(FileKind::Pending)? {
        if name.starts_with(crate::lock::VERDICT_PREFIX) {
            report.warnings.push(format!("pending/{name}: a lock was declared expired while it was there"));
            continue;
        }
        if let Ok(bytes) = backend.get(FileKind::Pending, &name)
            && let Err(e) = codec.decode_pending(&name, bytes)
        {
            report.errors.push(format!("pending record {name}: {e}; the next prune removes it (its packs stay)"));
        }
    }
    let mut indexed_packs = IdSet::default();
    for (pack, len) in index.packs() {
        indexed_packs.insert(pack);
        let name = pack.to_hex();
        if !pack_names.contains(&name) {
            if condemned.contains(&pack) {
                report
                    .warnings
                    .push(format!("pack {name} was deleted by a prune that was interrupted; the next prune finishes"));
            } else {
                report.errors.push(format!("pack {name} is in the index but missing"));
            }
            continue;
        }
        match backend.len(FileKind::Pack, &name) {
            Ok(actual) if actual != len => {
                report.errors.push(format!("pack {name} is {actual} bytes, the index says {len}"))
            }
            Ok(_) => {}
            Err(e) => report.errors.push(format!("pack {name}: {e}")),
        }
    }
    let unindexed: Vec<&String> = pack_names
        .iter()
        .filter(|n| PackId::from_hex(n).map(|p| !indexed_packs.contains(&p)).unwrap_or(true))
        .collect();
    if !unindexed.is_empty() {
        report.warnings.push(format!(
            "{} pack(s) not in the index (left by an interrupted backup; `rewind rebuild-index` adds them)",
            unindexed.len()
        ));
    }
    for l in crate::lock::list_locks(repo)? {
        let advice = match l.state {
            crate::lock::LockState::Live => "",
            _ => "; `rewind unlock` removes it",
        };
        report.warnings.push(format!("lock {}{advice}", l.describe()));
    }
    let tmp = backend.tmp_files()?;
    if !tmp.is_empty() {
        let dead = tmp.iter().filter(|t| t.dead).count();
        let bytes: u64 = tmp.iter().map(|t| t.bytes).sum();
        report.warnings.push(format!(
            "{} file(s) in tmp/ ({} bytes; {dead} left by processes that are gone, which `rewind unlock` or `rewind prune` removes): {}",
            tmp.len(),
            bytes,
            tmp.iter().take(5).map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    report.packs = pack_names.len();
    report.blobs = index.len();

    // Snapshots and the trees they reach.
    let indexed = repo.open_indexed(CacheSizes::default())?;
    indexed.replace_index(index);
    let (snapshots, damaged) = repo.snapshots_and_damage()?;
    for d in &damaged {
        report.errors.push(format!(
            "snapshot {} ({}) is damaged: {}; `rewind forget {}` removes it",
            d.id.short(),
            d.path.display(),
            d.error,
            d.id.short()
        ));
    }
    report.snapshots = snapshots.len();
    let mut seen_trees = IdSet::default();
    for s in &snapshots {
        walk_structure(&indexed, s, &mut seen_trees, &mut report);
    }
    report.trees = seen_trees.len();

    if read_data {
        let damaged = read_all_packs(&indexed, &pack_names, progress, &mut report);
        if !damaged.is_empty() {
            report.damaged = attribute_damage(&indexed, &snapshots, damaged);
        }
    }
    Ok(report)
}

fn walk_structure(repo: &IndexedRepository, s: &SnapshotEntry, seen: &mut IdSet<TreeId>, report: &mut CheckReport) {
    let mut stack = vec![(s.snapshot.tree, String::from("/"))];
    while let Some((id, path)) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        if !repo.with_index(|i| i.contains(&id.into())) {
            report.errors.push(format!(
                "tree {} of {path} (snapshot {}) is not in the index",
                id.short(),
                s.id.short()
            ));
            continue;
        }
        let tree = match repo.tree(id) {
            Ok(t) => t,
            // Damage is reported by the data check, with the paths that use it.
            Err(e) if e.is_corrupt() => continue,
            Err(e) => {
                report.errors.push(format!("tree {} of {path} (snapshot {}): {e}", id.short(), s.id.short()));
                continue;
            }
        };
        for n in &tree.nodes {
            let child = child_path(&path, &n.name_lossy());
            if let Some(sub) = n.subtree {
                stack.push((sub, child.clone()));
            }
            for c in &n.content {
                if !repo.with_index(|i| i.contains(&(*c).into())) {
                    report.errors.push(format!(
                        "data blob {} of {child} (snapshot {}) is not in the index",
                        c.short(),
                        s.id.short()
                    ));
                }
            }
        }
    }
}

/// `path/name`, for messages.
fn child_path(path: &str, name: &str) -> String {
    if path.ends_with('/') { format!("{path}{name}") } else { format!("{path}/{name}") }
}

/// Read every pack; returns the blobs that fail verification.
fn read_all_packs(
    repo: &IndexedRepository,
    packs: &BTreeSet<String>,
    progress: &CheckProgress,
    report: &mut CheckReport,
) -> HashMap<BlobId, (PackId, String)> {
    progress.packs_total.store(packs.len() as u64, Ordering::Relaxed);
    let damaged = Mutex::new(HashMap::new());
    let errors = Mutex::new(Vec::new());
    let by_pack: IdMap<PackId, Vec<(BlobId, crate::index::Location)>> = repo.with_index(|i| {
        let mut m: IdMap<PackId, Vec<_>> = IdMap::default();
        for (id, loc) in i.blobs() {
            m.entry(loc.pack).or_default().push((id, loc));
        }
        // In pack order: the members of a group one after another, so it is opened once.
        for v in m.values_mut() {
            v.sort_unstable_by_key(|(id, loc)| (loc.offset, *id));
        }
        m
    });
    packs.par_iter().for_each(|name| {
        let Ok(pack) = PackId::from_hex(name) else { return };
        let result = repo.backend().get(FileKind::Pack, name);
        progress.packs_done.fetch_add(1, Ordering::Relaxed);
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                errors.lock().expect("check lock").push(format!("pack {name}: {e}"));
                return;
            }
        };
        progress.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let pack_ok = Hash::of(&bytes) == pack.0;
        // Every blob is decompressed and hashed, not only the pack: a pack written whole with a
        // wrong blob in it would pass its own hash. Use the index's view of the pack (the
        // trailer may be the damaged part).
        let mut found_bad = false;
        for (id, loc) in by_pack.get(&pack).map(|v| v.as_slice()).unwrap_or(&[]) {
            let start = loc.offset as usize;
            let end = start + loc.stored_len as usize;
            let err = match bytes.get(start..end) {
                Some(stored) => blob::open(repo.codec(), id, loc.compression, stored, loc.raw_len).err(),
                None => Some(Error::corrupt("pack", "truncated")),
            };
            if let Some(e) = err {
                found_bad = true;
                damaged.lock().expect("check lock").insert(*id, (pack, e.to_string()));
            }
        }
        if !pack_ok && !found_bad {
            let which = match repo.codec().decode_pack(&bytes) {
                Ok((_, true)) => "its trailer is damaged; the copy after its header is good",
                Ok((_, false)) => "its header or the copy of its trailer is damaged",
                Err(_) => "its trailer is damaged",
            };
            errors.lock().expect("check lock").push(format!(
                "pack {name}: content does not match its id ({which}; every blob in it verifies, so nothing is lost)"
            ));
        }
    });
    report.errors.extend(errors.into_inner().expect("check lock"));
    report.bytes_verified = progress.bytes_read.load(Ordering::Relaxed);
    damaged.into_inner().expect("check lock")
}

/// Name every file and directory that uses a damaged blob, descending only into trees that
/// (transitively) contain damage.
fn attribute_damage(
    repo: &IndexedRepository,
    snapshots: &[SnapshotEntry],
    damaged: HashMap<BlobId, (PackId, String)>,
) -> Vec<DamagedBlob> {
    let mut uses: HashMap<BlobId, Vec<(SnapshotId, String)>> = HashMap::new();
    let mut memo: IdMap<TreeId, bool> = IdMap::default();
    fn tree_has_damage(
        repo: &IndexedRepository,
        id: TreeId,
        damaged: &HashMap<BlobId, (PackId, String)>,
        memo: &mut IdMap<TreeId, bool>,
    ) -> bool {
        if let Some(&v) = memo.get(&id) {
            return v;
        }
        let v = damaged.contains_key(&id.into())
            || match repo.tree(id) {
                Ok(t) => t.nodes.iter().any(|n| {
                    n.content.iter().any(|c| damaged.contains_key(&(*c).into()))
                        || n.subtree.is_some_and(|s| tree_has_damage(repo, s, damaged, memo))
                }),
                Err(_) => true,
            };
        memo.insert(id, v);
        v
    }
    for s in snapshots {
        let mut stack = vec![(s.snapshot.tree, String::from("/"))];
        while let Some((id, path)) = stack.pop() {
            if !tree_has_damage(repo, id, &damaged, &mut memo) {
                continue;
            }
            if damaged.contains_key(&id.into()) {
                uses.entry(id.into()).or_default().push((s.id, path.clone()));
                continue;
            }
            let Ok(tree) = repo.tree(id) else { continue };
            for n in &tree.nodes {
                let child = child_path(&path, &n.name_lossy());
                for c in &n.content {
                    if damaged.contains_key(&(*c).into()) {
                        let v = uses.entry((*c).into()).or_default();
                        if v.last() != Some(&(s.id, child.clone())) {
                            v.push((s.id, child.clone()));
                        }
                    }
                }
                if let Some(sub) = n.subtree {
                    stack.push((sub, child));
                }
            }
        }
    }
    let mut out: Vec<DamagedBlob> = damaged
        .into_iter()
        .map(|(id, (pack, error))| DamagedBlob { id, pack, error, used_by: uses.remove(&id).unwrap_or_default() })
        .collect();
    out.sort_by_key(|d| d.id);
    out
}

/// What `rebuild_index` did.
#[derive(Debug, Default)]
pub struct RebuildReport {
    pub packs: usize,
    pub blobs: usize,
    pub index_files_written: usize,
    pub index_files_removed: usize,
    /// Packs whose trailer could not be read: their blobs are not indexed.
    pub bad_packs: Vec<(String, String)>,
    /// Packs whose trailer is damaged, indexed from the copy after their header.
    pub recovered_from_head: Vec<String>,
    /// Packs no index file described, left unindexed because a writer runs (run again later).
    pub unindexed_left: usize,
}

/// Recreate the index from the pack trailers alone (or, where a trailer is damaged, from the
/// copy after the pack's header), then remove the index files that existed before. Safe beside
/// running backups: only index files listed before the packs are removed, and a backup writes a
/// pack's index file after the pack. A pack that no readable index file describes is indexed only
/// if no writer runs (checked after listing the packs, with the pack's presence checked again
/// after that): it might be a running backup's, which deletes its unindexed packs if it fails.
/// Refused while a prune runs.
pub fn rebuild_index(repo: &Repository) -> Result<RebuildReport> {
    let lock =
        Lock::acquire_exclusive(repo, crate::lock::REBUILD_INDEX, &[crate::lock::PRUNE, crate::lock::REBUILD_INDEX])?;
    let backend = repo.backend();
    let codec = repo.codec();
    let old_index = backend.list(FileKind::Index)?;
    let mut known = Index::default();
    known.refresh(backend, codec)?;
    let pack_names = backend.list(FileKind::Pack)?;
    let writers = crate::lock::list_locks(repo)?
        .into_iter()
        .filter(|l| l.name != lock.name() && l.state != crate::lock::LockState::Dead)
        .count();
    type PackRecords = Result<(u64, Vec<format::BlobRecord>, bool)>;
    let results: Vec<(String, PackRecords)> = pack_names
        .par_iter()
        .map(|name| {
            let r = PackId::from_hex(name).and_then(|id| read_pack_records(backend, codec, &id));
            (name.clone(), r)
        })
        .collect();
    let mut report = RebuildReport::default();
    let mut packs = Vec::new();
    for (name, r) in results {
        match r {
            Ok((len, blobs, from_head)) => {
                let id = PackId::from_hex(&name)?;
                if !known.has_pack(&id) {
                    if writers > 0 {
                        report.unindexed_left += 1;
                        continue;
                    }
                    // Gone since listed: a failed writer removed it.
                    if backend.len(FileKind::Pack, &name).is_err() {
                        continue;
                    }
                }
                if from_head {
                    report.recovered_from_head.push(name.clone());
                }
                report.blobs += blobs.len();
                packs.push(IndexPack { pack: id, pack_len: len, blobs });
            }
            Err(e) => report.bad_packs.push((name, e.to_string())),
        }
    }
    report.packs = packs.len();
    let mut written = BTreeSet::new();
    for batch in packs.chunks(256) {
        written.insert(write_index_file(backend, codec, batch)?.to_hex());
        report.index_files_written += 1;
    }
    for name in old_index {
        if !written.contains(&name) {
            backend.delete(FileKind::Index, &name)?;
            report.index_files_removed += 1;
        }
    }
    Ok(report)
}
