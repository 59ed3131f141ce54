//! The in-memory index: which pack holds each blob, and where. Built from the index files, and
//! refreshed when a backup adds new ones, so readers find blobs written after they opened.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::backend::{Backend, FileKind};
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
        for b in &p.blobs {
            self.blobs.entry(b.id).or_insert(Slot {
                pack: slot,
                compression: b.compression,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
            });
        }
    }

    /// Load every index file not loaded yet; if one we loaded is gone (a prune or rebuild
    /// rewrote the index), start over from the current files. Returns how many were loaded.
    pub fn refresh(&mut self, backend: &dyn Backend) -> Result<usize> {
        let mut new = 0;
        let names = backend.list(FileKind::Index)?;
        let current: IdSet<IndexId> = names.iter().filter_map(|n| IndexId::from_hex(n).ok()).collect();
        if self.files.iter().any(|f| !current.contains(f)) {
            *self = Index::default();
        }
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
            let packs = format::decode_index(&bytes).map_err(|e| match e {
                Error::Corrupt { detail, .. } => {
                    Error::corrupt(format!("index file {name}"), format!("{detail}; run `rewind rebuild-index`"))
                }
                e => e,
            })?;
            for p in &packs {
                self.add_pack(p);
            }
            self.files.insert(id);
            new += 1;
        }
        Ok(new)
    }
}

/// Write one index file for `packs`; returns its id.
pub(crate) fn write_index_file(backend: &dyn Backend, packs: &[IndexPack]) -> Result<IndexId> {
    let bytes = format::encode_index(packs);
    let id = IndexId(format::Hash::of(&bytes));
    backend.put(FileKind::Index, &id.to_hex(), &bytes)?;
    Ok(id)
}

/// Read the trailer of a pack: the list of what it holds.
pub(crate) fn read_pack_trailer(backend: &dyn Backend, pack: &PackId) -> Result<(u64, Vec<BlobRecord>)> {
    let name = pack.to_hex();
    let len = backend.len(FileKind::Pack, &name)?;
    let what = || format!("pack {name}");
    if len < (format::PACK_FOOTER_LEN + 12) as u64 {
        return Err(Error::corrupt(what(), "too short"));
    }
    let footer =
        backend.get_range(FileKind::Pack, &name, len - format::PACK_FOOTER_LEN as u64, format::PACK_FOOTER_LEN)?;
    let (rec_len, count, hash) = format::decode_pack_footer(&footer).map_err(|e| rename(e, what()))?;
    let rec_start = len
        .checked_sub((format::PACK_FOOTER_LEN + rec_len as usize) as u64)
        .filter(|&s| s >= 12)
        .ok_or_else(|| Error::corrupt(what(), "trailer longer than the pack"))?;
    let recs = backend.get_range(FileKind::Pack, &name, rec_start, rec_len as usize)?;
    let records = format::decode_pack_records(&recs, count, hash).map_err(|e| rename(e, what()))?;
    for r in &records {
        if r.offset < 12 || r.offset + u64::from(r.stored_len) > rec_start {
            return Err(Error::corrupt(what(), "a blob lies outside the pack's data"));
        }
    }
    Ok((len, records))
}

fn rename(e: Error, what: String) -> Error {
    match e {
        Error::Corrupt { detail, .. } => Error::Corrupt { what, detail },
        e => e,
    }
}
