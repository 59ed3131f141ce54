//! Copying snapshots into another repository with only the data it lacks: offsite replication,
//! and the upgrade of a version 1 repository into an encrypted one.
//!
//! How much work a blob takes depends on what the two repositories share:
//! - **Everything** (both unencrypted, or the same keys): stored bytes are copied as they are,
//!   after verification, and a snapshot keeps its id.
//! - **Content identity** (the same id and chunker keys: `init --copy-chunker-params`, or both
//!   unencrypted but of different versions): ids stay, blobs are opened and sealed again for
//!   the target, and a snapshot keeps its id.
//! - **Nothing**: content is named anew (keyed ids differ); where the chunkers differ too, files
//!   are cut anew. Trees and manifests are rewritten; the new manifest records the snapshot it
//!   came from (`original`), which is how a second copy knows it is there.
//!
//! Either way every blob is verified on the way, each snapshot's manifest is written after its
//! blobs are durable (an interrupted copy resumes where it stopped) and a second copy adds
//! nothing. The target is written under a copy lock with the writers' rule of FORMAT.md.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::FileKind;
use crate::blob;
use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::format::{BlobId, ChunkId, Compression, Node, NodeKind, PackId, Snapshot, SnapshotId, Tree, TreeId};
use crate::index::{IdMap, IdSet, Location};
use crate::lock::{self, Lock};
use crate::pack::Packer;
use crate::prune::condemned_packs;
use crate::repo::{IndexedRepository, SnapshotEntry};

/// What `copy` did.
#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub snapshots_copied: usize,
    pub snapshots_present: usize,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    /// How the blobs went across: "verbatim", "resealed" or "renamed" (ids computed anew).
    pub mode: &'static str,
}

#[derive(Debug, Default)]
pub struct CopyProgress {
    pub blobs_total: AtomicU64,
    pub blobs_done: AtomicU64,
    pub bytes: AtomicU64,
}

/// What the two repositories share, from the most to the least.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Verbatim,
    Reseal,
    Rename { rechunk: bool },
}

fn mode(src: &IndexedRepository, dst: &IndexedRepository) -> Mode {
    let (s, d) = (src.codec(), dst.codec());
    let same_ids = match (s.crypto().is_encrypted(), d.crypto().is_encrypted()) {
        (false, false) => true,
        (true, true) => s.id(b"rewind content identity") == d.id(b"rewind content identity"),
        _ => false,
    };
    let same_chunker =
        src.repo().config().chunker == dst.repo().config().chunker && s.crypto().gear() == d.crypto().gear();
    if same_ids && same_chunker {
        let same_keys = match (s.crypto(), d.crypto()) {
            (crate::crypto::Crypto::None, crate::crypto::Crypto::None) => true,
            (crate::crypto::Crypto::Encrypted(a), crate::crypto::Crypto::Encrypted(b)) => a == b,
            _ => false,
        };
        if same_keys && s.version() == d.version() { Mode::Verbatim } else { Mode::Reseal }
    } else {
        Mode::Rename { rechunk: !same_chunker }
    }
}

/// Copy snapshots into `dst` with only the blobs it lacks (see the module docs).
pub fn copy(
    src: &IndexedRepository,
    dst: &IndexedRepository,
    snapshots: &[SnapshotEntry],
    progress: &CopyProgress,
) -> Result<CopyReport> {
    let lock = Lock::acquire(dst.repo(), lock::COPY)?;
    // Lock, then the pending records, then the index (FORMAT.md, "The rule for writers").
    let condemned = condemned_packs(dst.repo())?;
    failpoint::hit("copy-records-read")?;
    dst.avoid_packs(condemned.clone())?;
    let config = dst.repo().config();
    let mode = mode(src, dst);
    if !matches!(mode, Mode::Rename { .. }) && config.has_dictionaries() {
        // Same content: the target compresses with the source's dictionary, which the
        // source's blobs moved as they are need anyway.
        src.codec().load_dicts()?;
        dst.codec().load_dicts()?;
        if let (Some(d), None) = (src.codec().preferred_dict(), dst.codec().preferred_dict()) {
            give_dict(dst, &d)?;
        }
    }
    let packer = Packer::new(dst.backend(), dst.codec(), config.pack_size, config.compression.level)
        .with_groups(config.has_groups())
        .with_dictionaries(config.has_dictionaries())?;
    let copier = Copier {
        src,
        dst,
        progress,
        packer: &packer,
        condemned: &condemned,
        mode,
        trees: Mutex::new(IdMap::default()),
        chunks: Mutex::new(IdMap::default()),
        dicts: Mutex::new(()),
        chunker: Chunker::with_gear(config.chunker, dst.codec().crypto().gear()),
    };
    let result = copier.run(snapshots, &lock);
    if result.is_err() {
        packer.abandon();
    }
    let mut report = result?;
    let stats = packer.stats();
    report.blobs_copied = stats.blobs;
    report.bytes_copied = stats.stored_bytes;
    report.mode = match copier.mode {
        Mode::Verbatim => "verbatim",
        Mode::Reseal => "resealed",
        Mode::Rename { .. } => "renamed",
    };
    dst.refresh_index()?;
    Ok(report)
}

/// Store dictionary `d` in `dst` (durably, before any pack that needs it) and use it there.
fn give_dict(dst: &IndexedRepository, d: &crate::dict::Dict) -> Result<()> {
    let (name, file) = dst.codec().encode_dict(&d.bytes);
    dst.backend().put(FileKind::Dict, &name, &file)?;
    let copied = crate::dict::Dict::new(name, d.bytes.clone()).map_err(|e| Error::corrupt("dictionary", e))?;
    dst.codec().add_dict(copied);
    Ok(())
}

struct Copier<'a> {
    src: &'a IndexedRepository,
    dst: &'a IndexedRepository,
    progress: &'a CopyProgress,
    packer: &'a Packer<'a>,
    condemned: &'a IdSet<PackId>,
    mode: Mode,
    /// Source tree -> target tree, for [`Mode::Rename`].
    trees: Mutex<IdMap<TreeId, TreeId>>,
    /// Source chunk -> target chunk, for [`Mode::Rename`] without re-chunking.
    chunks: Mutex<IdMap<ChunkId, ChunkId>>,
    /// The target's chunker, for re-chunking.
    chunker: Chunker,
    /// Held while a dictionary is copied into the target, so it is written once.
    dicts: Mutex<()>,
}

impl Copier<'_> {
    fn run(&self, snapshots: &[SnapshotEntry], lock: &Lock) -> Result<CopyReport> {
        let mut report = CopyReport::default();
        // What is there already: by id, and by the snapshot a renamed copy came from.
        let mut present: BTreeSet<SnapshotId> = self.dst.repo().snapshot_ids()?.into_iter().collect();
        if matches!(self.mode, Mode::Rename { .. }) {
            for s in self.dst.repo().snapshots()? {
                present.extend(s.snapshot.original);
            }
        }
        let mut seen_trees: IdSet<TreeId> = IdSet::default();
        for s in snapshots {
            let origin = s.snapshot.original.unwrap_or(s.id);
            if present.contains(&s.id) || present.contains(&origin) {
                report.snapshots_present += 1;
                continue;
            }
            let (id, manifest) = match self.mode {
                Mode::Verbatim | Mode::Reseal => {
                    self.copy_blobs_of(s, &mut seen_trees)?;
                    self.packer.finish()?;
                    if self.mode == Mode::Verbatim {
                        (s.id, self.src.backend().get(FileKind::Snapshot, &s.id.to_hex())?)
                    } else {
                        let snap = Snapshot { version: self.dst.codec().version(), ..s.snapshot.clone() };
                        self.dst.codec().encode_snapshot(&snap)
                    }
                }
                Mode::Rename { .. } => {
                    let tree = self.rename_tree(s.snapshot.tree)?;
                    self.packer.finish()?;
                    let snap = Snapshot {
                        version: self.dst.codec().version(),
                        tree,
                        // The parent's copy has another id, maybe none yet: drop the link (it
                        // only saved reading unchanged files).
                        parent: None,
                        original: Some(origin),
                        ..s.snapshot.clone()
                    };
                    self.dst.codec().encode_snapshot(&snap)
                }
            };
            failpoint::hit("copy-before-snapshot")?;
            self.dst.backend().put(FileKind::Snapshot, &id.to_hex(), &manifest)?;
            if let Err(e) = lock.check_held() {
                self.dst.backend().delete(FileKind::Snapshot, &id.to_hex())?;
                return Err(e);
            }
            present.insert(origin);
            report.snapshots_copied += 1;
        }
        Ok(report)
    }

    /// Whether the target has a blob in a pack that stays.
    fn have(&self, id: BlobId) -> bool {
        self.dst.location_cached(id).is_some_and(|l| !self.condemned.contains(&l.pack))
    }

    /// Verbatim and reseal: every blob the snapshot reaches that the target lacks, in pack
    /// order for sequential reads.
    fn copy_blobs_of(&self, s: &SnapshotEntry, seen_trees: &mut IdSet<TreeId>) -> Result<()> {
        let mut missing: Vec<(BlobId, Location)> = Vec::new();
        let mut stack = vec![s.snapshot.tree];
        let mut queued: IdSet<BlobId> = IdSet::default();
        let mut want = |id: BlobId, missing: &mut Vec<_>| -> Result<()> {
            if !self.have(id) && queued.insert(id) {
                missing.push((id, self.src.locate(id)?));
            }
            Ok(())
        };
        while let Some(id) = stack.pop() {
            if !seen_trees.insert(id) {
                continue;
            }
            want(id.into(), &mut missing)?;
            let tree = self.src.tree(id)?;
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
        self.progress.blobs_total.fetch_add(missing.len() as u64, Ordering::Relaxed);
        // One read per pack run when the blobs fill most of it, else one read per blob.
        let mut runs: Vec<&[(BlobId, Location)]> = missing.chunk_by(|a, b| a.1.pack == b.1.pack).collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.len()));
        runs.par_iter().try_for_each(|run| -> Result<()> {
            let start = run[0].1.offset;
            let end = run.iter().map(|(_, l)| l.offset + u64::from(l.stored_len)).max().unwrap_or(start);
            // The members of a group share its bytes: counted once.
            let needed: u64 =
                run.chunk_by(|a, b| a.1.offset == b.1.offset).map(|same| u64::from(same[0].1.stored_len)).sum();
            let span = if end - start <= needed * 2 {
                self.src
                    .backend()
                    .get_range(FileKind::Pack, &run[0].1.pack.to_hex(), start, (end - start) as usize)
                    .ok()
            } else {
                None
            };
            for (id, loc) in run.iter() {
                crate::interrupt::check()?;
                if !self.packer.claim(*id) {
                    continue;
                }
                let in_span = span.as_ref().and_then(|b| {
                    let o = (loc.offset - start) as usize;
                    b.get(o..o + loc.stored_len as usize)
                });
                // A pack gone meanwhile (a prune moved the blob) or a sparse run: read alone.
                let (loc, stored) = match in_span {
                    Some(s) => (*loc, std::borrow::Cow::Borrowed(s)),
                    None => {
                        let (loc, stored) = self.src.read_stored(*id)?;
                        (loc, std::borrow::Cow::Owned(stored))
                    }
                };
                // A member of a group counts its own bytes, not its group's.
                let n = match loc.compression {
                    Compression::Grouped { .. } => u64::from(loc.raw_len),
                    _ => stored.len() as u64,
                };
                if let Compression::Grouped { .. } = loc.compression {
                    // A member of a group: its group holds blobs this copy may not want; the
                    // target groups it anew (taken from the group's bytes where they lie).
                    let raw = blob::open(self.src.codec(), id, loc.compression, &stored, loc.raw_len)?;
                    self.packer.add_claimed(*id, &raw)?;
                } else if loc.compression == Compression::ZstdDict && !self.dict_ready(id, &stored)? {
                    // The target has no dictionaries (version 1 or 2): compressed anew without.
                    let raw = blob::open(self.src.codec(), id, loc.compression, &stored, loc.raw_len)?;
                    self.packer.add_claimed(*id, &raw)?;
                } else if self.mode == Mode::Verbatim {
                    blob::open(self.src.codec(), id, loc.compression, &stored, loc.raw_len)?;
                    self.packer.add_stored(*id, loc.compression, &stored, loc.raw_len)?;
                } else {
                    // Open for the source (authenticated), verify, seal again for the target;
                    // compressed bytes stay compressed.
                    let bytes = self.src.codec().open_blob(id, stored.into_owned())?;
                    blob::unsealed(self.src.codec(), id, loc.compression, bytes.clone(), loc.raw_len)?;
                    let mut sealed = Vec::with_capacity(bytes.len() + self.dst.codec().blob_overhead());
                    self.dst.codec().seal_blob(id, &bytes, &mut sealed);
                    self.packer.add_stored(*id, loc.compression, &sealed, loc.raw_len)?;
                }
                self.progress.blobs_done.fetch_add(1, Ordering::Relaxed);
                self.progress.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    /// For a blob compressed with one of the source's dictionaries: make sure the target has
    /// that dictionary (written before any pack that needs it), or say it cannot have one.
    fn dict_ready(&self, id: &BlobId, stored: &[u8]) -> Result<bool> {
        if !self.dst.repo().config().has_dictionaries() {
            return Ok(false);
        }
        let bytes = self.src.codec().open_blob(id, stored.to_vec())?;
        let what = || format!("{} blob {}", blob::kind_name(id.kind), id.hash.to_hex());
        let d = self.src.codec().dict_for_frame(&bytes, what)?;
        let _one = self.dicts.lock().expect("copy lock");
        if self.dst.codec().has_dict(d.zstd_id) {
            return Ok(true);
        }
        self.dst.codec().load_dicts()?;
        if self.dst.codec().has_dict(d.zstd_id) {
            return Ok(true);
        }
        give_dict(self.dst, &d)?;
        Ok(true)
    }

    /// Store a blob of the target unless it has it.
    fn store(&self, id: BlobId, raw: &[u8]) -> Result<()> {
        if !self.have(id) && self.packer.claim(id) {
            self.packer.add_claimed(id, raw)?;
            self.progress.blobs_done.fetch_add(1, Ordering::Relaxed);
            self.progress.bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Rename: the target's tree for a source tree, made (with everything below it) if needed.
    fn rename_tree(&self, id: TreeId) -> Result<TreeId> {
        if let Some(t) = self.trees.lock().expect("copy lock").get(&id) {
            return Ok(*t);
        }
        crate::interrupt::check()?;
        let tree = self.src.tree(id)?;
        let nodes: Vec<Node> = tree
            .nodes
            .par_iter()
            .map(|n| -> Result<Node> {
                let mut n = n.clone();
                if let Some(sub) = n.subtree {
                    n.subtree = Some(self.rename_tree(sub)?);
                }
                if n.kind == NodeKind::File && !n.content.is_empty() {
                    n.content = self.rename_content(&n.content)?;
                }
                Ok(n)
            })
            .collect::<Result<_>>()?;
        let encoded = Tree { nodes }.encode();
        let new = TreeId(self.dst.codec().id(&encoded));
        self.store(new.into(), &encoded)?;
        self.trees.lock().expect("copy lock").insert(id, new);
        Ok(new)
    }

    /// Rename: a file's chunks in the target, named anew and, if the chunkers differ, cut anew.
    fn rename_content(&self, content: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let Mode::Rename { rechunk } = self.mode else { unreachable!("rename mode") };
        if !rechunk {
            return content
                .iter()
                .map(|c| {
                    if let Some(d) = self.chunks.lock().expect("copy lock").get(c) {
                        return Ok(*d);
                    }
                    let raw = self.src.read_blob((*c).into())?;
                    let new = ChunkId(self.dst.codec().id(&raw));
                    self.store(new.into(), &raw)?;
                    self.chunks.lock().expect("copy lock").insert(*c, new);
                    Ok(new)
                })
                .collect();
        }
        // Feed the source chunks through the target's chunker, as a backup reads a file.
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        for (i, c) in content.iter().enumerate() {
            buf.extend_from_slice(&self.src.read_blob((*c).into())?);
            let eof = i + 1 == content.len();
            let mut pos = 0;
            while let Some(n) = self.chunker.next_cut(&buf[pos..], eof) {
                let piece = &buf[pos..pos + n];
                let id = ChunkId(self.dst.codec().id(piece));
                self.store(id.into(), piece)?;
                out.push(id);
                pos += n;
            }
            buf.drain(..pos);
        }
        if !buf.is_empty() {
            return Err(Error::corrupt("copy", "chunker left bytes over at the end of a file"));
        }
        Ok(out)
    }
}
