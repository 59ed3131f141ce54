//! The in-memory index: which pack holds each blob, and where. Built from the index files, and
//! refreshed when a backup adds new ones, so readers find blobs written after they opened.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::backend::{Backend, FileKind};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::format::{self, BlobId, BlobRecord, Compression, IndexId, IndexPack, PackId};

/// Keys are already uniform hashes: take eight of their bytes instead of hashing again.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = self.0.rotate_left(5) ^ u64::from(i);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: PackId,
    pub compression: Compression,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

#[derive(Clone, Copy)]
struct Slot {
    pack: u32,
    compression: Compression,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
}

#[derive(Default)]
pub(crate) struct Index {
    packs: Vec<(PackId, u64)>,
    pack_slots: IdMap<PackId, u32>,
    blobs: IdMap<BlobId, Slot>,
    files: IdSet<IndexId>,
    /// Index files that do not decode: skipped (their packs are found by their trailers).
    damaged: Vec<String>,
    /// Packs to use only for blobs found nowhere else: condemned by a prune (for a backup) or
    /// found missing (for a reader).
    avoid: IdSet<PackId>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn get(&self, id: &BlobId) -> Option<Location> {
        self.blobs.get(id).map(|s| Location {
            pack: self.packs[s.pack as usize].0,
            compression: s.compression,
            offset: s.offset,
            stored_len: s.stored_len,
            raw_len: s.raw_len,
        })
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn packs(&self) -> impl Iterator<Item = (PackId, u64)> + '_ {
        self.packs.iter().copied()
    }

    pub fn blobs(&self) -> impl Iterator<Item = (BlobId, Location)> + '_ {
        self.blobs.keys().map(|id| (*id, self.get(id).expect("key present")))
    }

    pub fn add_pack(&mut self, p: &IndexPack) {
        let slot = *self.pack_slots.entry(p.pack).or_insert_with(|| {
            self.packs.push((p.pack, p.pack_len));
            (self.packs.len() - 1) as u32
        });
        let avoided = self.avoid.contains(&p.pack);
        for b in &p.blobs {
            let new = Slot {
                pack: slot,
                compression: b.compression,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
            };
            match self.blobs.entry(b.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(new);
                }
                // A blob stored twice: prefer the copy in a pack that stays.
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    if !avoided && self.avoid.contains(&self.packs[o.get().pack as usize].0) {
                        o.insert(new);
                    }
                }
            }
        }
    }

    /// Index files skipped because they do not decode.
    pub fn damaged_files(&self) -> &[String] {
        &self.damaged
    }

    /// The packs whose copies are used only when there is no other.
    pub fn avoided(&self) -> &IdSet<PackId> {
        &self.avoid
    }

    /// Load every index file not loaded yet; if one we loaded is gone (a prune or rebuild
    /// rewrote the index), start over from the current files. Returns how many were loaded. An
    /// index file that does not decode is skipped with a warning (once): the blobs it listed are
    /// found through the other files or the packs' trailers. On an error the index is as it was:
    /// every file is read before any is added.
    pub fn refresh(&mut self, backend: &dyn Backend, codec: &Codec) -> Result<usize> {
        let update = self.known().read(backend, codec)?;
        Ok(self.apply(update))
    }

    /// What [`Index::refresh`] needs to know of the index to read the new files: cheap to copy
    /// out under a lock, so that the reading happens outside it.
    pub fn known(&self) -> Known {
        Known { files: self.files.clone(), avoid: self.avoid.clone() }
    }

    /// Apply what [`Known::read`] found; returns how many index files it loaded. Memory only.
    pub fn apply(&mut self, update: Update) -> usize {
        match update {
            Update::Replace(fresh) => {
                let n = fresh.files.len();
                *self = fresh;
                n
            }
            Update::Add(files) => {
                let n = files.len();
                for (id, name, packs) in files {
                    match packs {
                        Some(packs) => packs.iter().for_each(|p| self.add_pack(p)),
                        None => self.damaged.push(name),
                    }
                    self.files.insert(id);
                }
                n
            }
        }
    }

    /// A whole index read from the current files, preferring copies outside `avoid`.
    pub fn load(backend: &dyn Backend, codec: &Codec, avoid: IdSet<PackId>) -> Result<Index> {
        let mut fresh = Index { avoid, ..Index::default() };
        fresh.refresh(backend, codec)?;
        Ok(fresh)
    }

    /// Whether a pack is described by a loaded index file.
    pub fn has_pack(&self, pack: &PackId) -> bool {
        self.pack_slots.contains_key(pack)
    }
}

/// The index files an index has loaded and the packs it avoids.
pub(crate) struct Known {
    files: IdSet<IndexId>,
    avoid: IdSet<PackId>,
}

/// What a refresh read: the new index files (each with its packs, or `None` if damaged), or a
/// whole new index when a loaded file is gone.
pub(crate) enum Update {
    Add(Vec<(IndexId, String, Option<Vec<IndexPack>>)>),
    Replace(Index),
}

impl Known {
    /// Read the index files not loaded yet (all of them, into a new index, if a loaded one is
    /// gone). Reads only: the index it was taken from is untouched until [`Index::apply`].
    pub fn read(self, backend: &dyn Backend, codec: &Codec) -> Result<Update> {
        let names = backend.list(FileKind::Index)?;
        let current: IdSet<IndexId> = names.iter().filter_map(|n| IndexId::from_hex(n).ok()).collect();
        if self.files.iter().any(|f| !current.contains(f)) {
            return Index::load(backend, codec, self.avoid).map(Update::Replace);
        }
        let mut files = Vec::new();
        for name in names {
            let Ok(id) = IndexId::from_hex(&name) else { continue };
            if self.files.contains(&id) {
                continue;
            }
            let bytes = match backend.get(FileKind::Index, &name) {
                Ok(b) => b,
                // Removed by a concurrent rebuild or prune after we listed it: its successor
                // is already in place.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match codec.decode_index(&name, &bytes) {
                Ok(packs) => files.push((id, name, Some(packs))),
                Err(e) if e.is_corrupt() => {
                    warn_damaged_once(&name, &e);
                    files.push((id, name, None));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Update::Add(files))
    }
}

fn warn_damaged_once(name: &str, e: &Error) {
    static WARNED: std::sync::Mutex<Option<HashSet<String>>> = std::sync::Mutex::new(None);
    let mut w = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if w.get_or_insert_with(HashSet::new).insert(name.to_string()) {
        tracing::warn!("index file {name} is damaged and skipped ({e}); run `rewind rebuild-index`");
    }
}

/// Write one index file for `packs`; returns its id.
pub(crate) fn write_index_file(backend: &dyn Backend, codec: &Codec, packs: &[IndexPack]) -> Result<IndexId> {
    let (id, bytes) = codec.encode_index(packs);
    backend.put(FileKind::Index, &id.to_hex(), &bytes)?;
    Ok(id)
}

/// A pack's records from its trailer or, if that is damaged, from the copy after its header.
/// The flag says whether the copy was used.
pub(crate) fn read_pack_records(
    backend: &dyn Backend,
    codec: &Codec,
    pack: &PackId,
) -> Result<(u64, Vec<BlobRecord>, bool)> {
    let name = pack.to_hex();
    let len = backend.len(FileKind::Pack, &name)?;
    let what = || format!("pack {name}");
    let footer_len = codec.pack_footer_len();
    let trailer = (|| -> Result<Vec<BlobRecord>> {
        if len < (footer_len + format::PACK_HEADER_LEN) as u64 {
            return Err(Error::corrupt(what(), "too short"));
        }
        let footer = backend.get_range(FileKind::Pack, &name, len - footer_len as u64, footer_len)?;
        let (back, rec_len) = codec.pack_trailer_span(&footer)?;
        let rec_start = len
            .checked_sub(back)
            .filter(|&s| s >= format::PACK_HEADER_LEN as u64)
            .ok_or_else(|| Error::corrupt(what(), "trailer longer than the pack"))?;
        let recs = backend.get_range(FileKind::Pack, &name, rec_start, rec_len)?;
        codec.decode_pack_trailer(&recs, &footer)
    })();
    let (records, from_head) = match trailer {
        Ok(r) => (r, false),
        Err(e) if e.is_corrupt() => {
            let fixed = backend.get_range(
                FileKind::Pack,
                &name,
                format::PACK_HEADER_LEN as u64,
                codec.pack_head_fixed_len(),
            )?;
            match codec.pack_head_span(&fixed).map_err(|e| rename(e, what()))? {
                None => return Err(rename(e, what())),
                Some((start, rec_len)) => {
                    let recs = backend.get_range(FileKind::Pack, &name, start, rec_len)?;
                    let records = codec
                        .decode_pack_head(&recs, &fixed)
                        .map_err(|h| rename(Error::corrupt("", format!("trailer: {e}; head copy: {h}")), what()))?;
                    tracing::warn!("pack {}: trailer damaged ({e}); read its head copy", pack.short());
                    (records, true)
                }
            }
        }
        Err(e) => return Err(e),
    };
    codec.check_record_bounds(&records, len).map_err(|e| rename(e, what()))?;
    Ok((len, records, from_head))
}

fn rename(e: Error, what: String) -> Error {
    match e {
        Error::Corrupt { detail, .. } => Error::Corrupt { what, detail },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{back_up, repo_in};

    /// A refresh that fails on one index file leaves the index as it was, not with the files
    /// listed before that one loaded.
    #[test]
    fn a_failed_refresh_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let repo = repo_in(dir.path());
        let run = |content: &[u8]| {
            std::fs::write(src.join("f"), content).unwrap();
            back_up(&repo, &src);
        };
        run(b"first");
        let (backend, codec) = (repo.backend(), repo.codec());
        let mut index = Index::default();
        assert_eq!(index.refresh(backend, codec).unwrap(), 1);
        let before = index.len();
        run(b"second");
        // Listed last, and unreadable: not a missing file (skipped), an I/O error.
        std::fs::create_dir(repo.repo().file_path(FileKind::Index, &"f".repeat(64))).unwrap();
        assert!(matches!(index.refresh(backend, codec), Err(Error::Io { .. })));
        assert_eq!((index.len(), index.files.len()), (before, 1), "half a refresh was kept");
        std::fs::remove_dir(repo.repo().file_path(FileKind::Index, &"f".repeat(64))).unwrap();
        assert_eq!(index.refresh(backend, codec).unwrap(), 1);
        assert!(index.len() > before);
    }
}
