//! Writing packs. A pack is `"RWNDPACK" | version u32 | head copy | blobs... | trailer`; its id is
//! the BLAKE3 of the whole file; the codec says what the copies of the records and the blobs look
//! like in the repository's version. Blobs are compressed by the caller's thread; the shared part is a short
//! append under a mutex. A full pack is sealed and written outside the lock.

use std::sync::{Arc, Mutex};

use crate::backend::{Backend, FileKind};
use crate::blob::{self, DictCompressor};
use crate::codec::Codec;
use crate::dict::{self, Dict};
use crate::error::Result;
use crate::format::{self, BlobId, BlobKind, BlobRecord, Compression, Hash, IndexPack, PackId};
use crate::index::{IdSet, write_index_file};

/// The most records a pack holds: groups of tiny files could otherwise give a 16 MiB pack
/// millions of records (each written twice in it and once in an index file).
const MAX_PACK_RECORDS: usize = 1 << 15;

/// Packs per index file written during a backup.
const INDEX_EVERY: usize = 32;

struct OpenPack {
    buf: Vec<u8>,
    records: Vec<BlobRecord>,
}

impl OpenPack {
    fn new(capacity: usize, codec: &Codec) -> OpenPack {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(&codec.pack_header());
        OpenPack { buf, records: Vec::new() }
    }
}

/// Whether small data blobs are compressed with a dictionary, and where training it stands.
enum DictState {
    /// The repository has no dictionaries (version 1 or 2), or training one failed.
    Off,
    /// The repository has none yet: small blobs wait, uncompressed, to train one on.
    /// `training`: one thread trains on what was gathered; what comes meanwhile waits too.
    Gathering {
        held: Vec<(BlobId, Vec<u8>)>,
        bytes: usize,
        training: bool,
    },
    Ready(Arc<DictCompressor>),
}

/// Small blobs of one kind gathered to be compressed together (repository version 4).
#[derive(Default)]
struct OpenGroup {
    members: Vec<(BlobId, Vec<u8>)>,
    bytes: usize,
}

/// What to do with one small blob.
enum Small {
    Held,
    Plain,
    Dict(Arc<DictCompressor>),
}

/// What a [`Packer`] wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PackerStats {
    pub blobs: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub packs: u64,
}

/// Adds blobs to packs, one open pack per blob kind (trees apart from data, so that loading trees
/// touches few, small packs), and remembers what it has added so nothing is stored twice.
pub(crate) struct Packer<'a> {
    backend: &'a dyn Backend,
    codec: &'a Codec,
    pack_size: usize,
    level: i32,
    open: [Mutex<Option<OpenPack>>; 2],
    added: Mutex<IdSet<BlobId>>,
    finished: Mutex<Vec<IndexPack>>,
    stats: Mutex<PackerStats>,
    /// A remote repository's tree cache: trees written are kept there too.
    tree_cache: Option<std::path::PathBuf>,
    dict: Mutex<DictState>,
    /// Whether small blobs go to groups (version 4), and the group being filled, per kind.
    groups: bool,
    group: [Mutex<OpenGroup>; 2],
}

impl<'a> Packer<'a> {
    pub fn new(backend: &'a dyn Backend, codec: &'a Codec, pack_size: u64, level: i32) -> Packer<'a> {
        Packer {
            backend,
            codec,
            pack_size: pack_size as usize,
            level,
            open: [Mutex::new(None), Mutex::new(None)],
            added: Mutex::new(IdSet::default()),
            finished: Mutex::new(Vec::new()),
            stats: Mutex::new(PackerStats::default()),
            tree_cache: None,
            dict: Mutex::new(DictState::Off),
            groups: false,
            group: [Mutex::new(OpenGroup::default()), Mutex::new(OpenGroup::default())],
        }
    }

    /// Store small blobs (data and trees) in groups compressed together (version 4).
    /// Before [`Packer::with_dictionaries`]: a group's level is not a single blob's.
    pub fn with_groups(mut self, on: bool) -> Self {
        debug_assert!(matches!(*self.dict.lock().expect("packer lock"), DictState::Off), "groups come first");
        self.groups = on;
        self
    }

    /// Compress small blobs with the dictionary the repository has, if any, without training
    /// one (prune's repacking regroups blobs that were compressed before).
    pub fn with_existing_dictionary(self, on: bool) -> Result<Self> {
        if on {
            self.codec.load_dicts()?;
            if let Some(d) = self.codec.preferred_dict() {
                *self.dict.lock().expect("packer lock") = self.prepare(&d);
            }
        }
        Ok(self)
    }

    /// Compress small data blobs with the repository's dictionary (repository version 3): the
    /// one it has, or one trained from the first small blobs added (FORMAT.md, "Dictionaries").
    pub fn with_dictionaries(self, on: bool) -> Result<Self> {
        if !on {
            return Ok(self);
        }
        self.codec.load_dicts()?;
        let state = match self.codec.preferred_dict() {
            Some(d) => self.prepare(&d),
            None => DictState::Gathering { held: Vec::new(), bytes: 0, training: false },
        };
        *self.dict.lock().expect("packer lock") = state;
        Ok(self)
    }

    fn prepare(&self, d: &Dict) -> DictState {
        let level = if self.groups { blob::group_level(self.level) } else { blob::dict_level(self.level) };
        match DictCompressor::new(&d.bytes, level) {
            Some(c) => DictState::Ready(Arc::new(c)),
            None => {
                tracing::warn!("zstd cannot use dictionary {}: compressing without it", d.name);
                DictState::Off
            }
        }
    }

    /// How to store a small data blob; `Held` when it waits for the dictionary to be trained
    /// (the caller is done with it: it is added then).
    fn small(&self, id: BlobId, raw: &[u8]) -> Result<Small> {
        let mut state = self.dict.lock().expect("packer lock");
        match &mut *state {
            DictState::Off => Ok(Small::Plain),
            DictState::Ready(d) => Ok(Small::Dict(d.clone())),
            DictState::Gathering { held, bytes, training } => {
                held.push((id, raw.to_vec()));
                *bytes += raw.len();
                if *training || *bytes < dict::TRAIN_BYTES {
                    return Ok(Small::Held);
                }
                // Trained outside the lock: the other threads go on (their small blobs wait).
                *training = true;
                let samples = std::mem::take(held);
                drop(state);
                self.train_and_add(samples)?;
                Ok(Small::Held)
            }
        }
    }

    /// Train a dictionary on `samples` (the held blobs, if they are enough), store it, settle
    /// the state, and add the samples and whatever was held meanwhile.
    fn train_and_add(&self, samples: Vec<(BlobId, Vec<u8>)>) -> Result<()> {
        let total: usize = samples.iter().map(|(_, b)| b.len()).sum();
        let trained = if total >= dict::TRAIN_MIN_BYTES { Some(self.train(&samples)) } else { None };
        let meanwhile = {
            let mut state = self.dict.lock().expect("packer lock");
            let meanwhile = match &mut *state {
                DictState::Gathering { held, .. } => std::mem::take(held),
                _ => Vec::new(),
            };
            *state = match trained {
                Some(Some(d)) => self.prepare(&d),
                Some(None) => DictState::Off,
                // Too little to learn from: these go without, and gathering goes on.
                None => DictState::Gathering { held: Vec::new(), bytes: 0, training: false },
            };
            meanwhile
        };
        self.add_held(samples)?;
        self.add_held(meanwhile)
    }

    /// Train a dictionary and store it (durably, before any blob compressed with it).
    fn train(&self, samples: &[(BlobId, Vec<u8>)]) -> Option<Arc<Dict>> {
        let started = std::time::Instant::now();
        let slices: Vec<&[u8]> = samples.iter().map(|(_, b)| b.as_slice()).collect();
        let trained = zstd::dict::from_samples(&slices, dict::MAX_DICT).map_err(|e| e.to_string()).and_then(|bytes| {
            let (name, file) = self.codec.encode_dict(&bytes);
            let d = Dict::new(name.clone(), bytes)?;
            self.backend.put(crate::backend::FileKind::Dict, &name, &file).map_err(|e| e.to_string())?;
            Ok(d)
        });
        match trained {
            Ok(d) => {
                tracing::debug!(dict = %d.name, bytes = d.bytes.len(), samples = samples.len(), ms = started.elapsed().as_millis() as u64, "dictionary trained");
                Some(self.codec.add_dict(d))
            }
            Err(e) => {
                tracing::warn!("cannot train a compression dictionary ({e}): compressing without one");
                None
            }
        }
    }

    /// Add blobs that waited for the dictionary, now that it is settled.
    fn add_held(&self, held: Vec<(BlobId, Vec<u8>)>) -> Result<()> {
        let d = match &*self.dict.lock().expect("packer lock") {
            DictState::Ready(d) => Some(d.clone()),
            _ => None,
        };
        for (id, raw) in held {
            if self.groups {
                self.add_to_group(id, raw)?;
                continue;
            }
            let (compression, compressed) = match &d {
                Some(d) => blob::compress_small(&raw, self.level, d),
                None => blob::compress(&raw, self.level),
            };
            self.add_compressed(id, compression, &compressed, raw.len() as u32)?;
        }
        Ok(())
    }

    /// Keep a copy of every tree added in `dir` (a remote repository's tree cache), so that
    /// what reads the new snapshot next (the catalog update) finds them locally.
    pub fn with_tree_cache(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.tree_cache = dir;
        self
    }

    /// Claim `id` for this packer: true if nobody has added it yet (the caller must then add it).
    pub fn claim(&self, id: BlobId) -> bool {
        self.added.lock().expect("packer lock").insert(id)
    }

    /// Compress, seal and add a blob already claimed. Returns the bytes it took in the pack.
    pub fn add_claimed(&self, id: BlobId, raw: &[u8]) -> Result<u64> {
        let (compression, compressed) = if id.kind == BlobKind::Data && raw.len() <= dict::SMALL_BLOB {
            match self.small(id, raw)? {
                Small::Held => return Ok(0),
                _ if self.groups => return self.add_to_group(id, raw.to_vec()),
                Small::Plain => blob::compress(raw, self.level),
                Small::Dict(d) => blob::compress_small(raw, self.level, &d),
            }
        } else if self.groups && raw.len() <= dict::SMALL_BLOB {
            return self.add_to_group(id, raw.to_vec());
        } else {
            blob::compress(raw, self.level)
        };
        self.add_compressed(id, compression, &compressed, raw.len() as u32)
    }

    fn add_compressed(&self, id: BlobId, compression: Compression, compressed: &[u8], raw_len: u32) -> Result<u64> {
        if !self.codec.is_encrypted() {
            return self.add_stored(id, compression, compressed, raw_len);
        }
        let mut stored = Vec::with_capacity(compressed.len() + self.codec.blob_overhead());
        self.codec.seal_blob(&id, compressed, &mut stored);
        self.add_stored(id, compression, &stored, raw_len)
    }

    /// Put a small blob (claimed) into the open group of its kind; a full group is stored.
    /// Returns the bytes stored now (a group's, when this blob filled it).
    fn add_to_group(&self, id: BlobId, raw: Vec<u8>) -> Result<u64> {
        let full = {
            let mut g = self.group[id.kind as usize].lock().expect("packer lock");
            g.bytes += raw.len();
            g.members.push((id, raw));
            if g.bytes >= blob::group_bytes(id.kind) || g.members.len() >= blob::GROUP_MAX_MEMBERS {
                std::mem::take(&mut *g)
            } else {
                return Ok(0);
            }
        };
        self.add_group(id.kind, full)
    }

    /// Compress a group as one frame (data with the repository's dictionary, if settled), seal
    /// it, and add it to the open pack of its kind with one record per member (FORMAT.md,
    /// "Groups").
    fn add_group(&self, kind: BlobKind, group: OpenGroup) -> Result<u64> {
        let d = match &*self.dict.lock().expect("packer lock") {
            DictState::Ready(d) if kind == BlobKind::Data => Some(d.clone()),
            _ => None,
        };
        if let (BlobKind::Tree, Some(dir)) = (kind, &self.tree_cache) {
            for (id, raw) in &group.members {
                crate::local_cache::keep_tree_raw(dir, self.codec, id, raw, self.level);
            }
        }
        let plain = blob::group_plaintext(group.members.iter().map(|(_, b)| b.as_slice()));
        let compressed = blob::compress_group(&plain, blob::group_level(self.level), d.as_deref())?;
        drop(plain);
        let mut stored = Vec::with_capacity(compressed.len() + self.codec.blob_overhead());
        self.codec.seal_group(&compressed, &mut stored);
        let members: Vec<(BlobId, Compression, u32)> = group
            .members
            .iter()
            .enumerate()
            .map(|(i, (id, b))| (*id, Compression::Grouped { member: i as u16 }, b.len() as u32))
            .collect();
        self.append(kind, &stored, &members)
    }

    /// Add a claimed blob in its stored form (sealed for this repository, already verified by
    /// the caller). Not for members of groups: their stored bytes are the whole group's.
    pub fn add_stored(&self, id: BlobId, compression: Compression, stored: &[u8], raw_len: u32) -> Result<u64> {
        if let Compression::Grouped { .. } = compression {
            return Err(crate::error::Error::InvalidInput(format!(
                "blob {}: a member of a group is stored with its group, not alone",
                id.hash.to_hex()
            )));
        }
        if let (BlobKind::Tree, Some(dir)) = (id.kind, &self.tree_cache) {
            crate::local_cache::keep_tree(dir, &id, compression, raw_len, stored);
        }
        self.append(id.kind, stored, &[(id, compression, raw_len)])
    }

    /// Append stored bytes to the open pack of `kind`, with a record for each blob they hold
    /// (one, or a group's members); a full pack is sealed. Returns the bytes appended.
    fn append(&self, kind: BlobKind, stored: &[u8], blobs: &[(BlobId, Compression, u32)]) -> Result<u64> {
        let sealed = {
            let mut slot = self.open[kind as usize].lock().expect("packer lock");
            let pack = slot.get_or_insert_with(|| OpenPack::new(self.pack_size + self.pack_size / 8, self.codec));
            let offset = pack.buf.len() as u64;
            for &(id, compression, raw_len) in blobs {
                pack.records.push(BlobRecord { id, compression, offset, stored_len: stored.len() as u32, raw_len });
            }
            pack.buf.extend_from_slice(stored);
            let full = pack.buf.len() >= self.pack_size || pack.records.len() >= MAX_PACK_RECORDS;
            if full { slot.take() } else { None }
        };
        {
            let mut s = self.stats.lock().expect("packer lock");
            s.blobs += blobs.len() as u64;
            s.raw_bytes += blobs.iter().map(|b| u64::from(b.2)).sum::<u64>();
            s.stored_bytes += stored.len() as u64;
        }
        if let Some(pack) = sealed {
            self.seal(pack)?;
        }
        Ok(stored.len() as u64)
    }

    fn seal(&self, pack: OpenPack) -> Result<()> {
        // The records go twice: after the header and at the end, so that a damaged trailer
        // loses nothing (FORMAT.md, "Packs"). The head copy moves the blobs along by its length.
        let OpenPack { buf, mut records } = pack;
        let shift = self.codec.pack_head_len(records.len()) as u64;
        for r in &mut records {
            r.offset += shift;
        }
        let (head, trailer) = self.codec.pack_head_and_trailer(&records);
        let mut file = Vec::with_capacity(buf.len() + head.len() + trailer.len());
        file.extend_from_slice(&buf[..format::PACK_HEADER_LEN]);
        file.extend_from_slice(&head);
        file.extend_from_slice(&buf[format::PACK_HEADER_LEN..]);
        drop(buf);
        file.extend_from_slice(&trailer);
        let id = PackId(Hash::of(&file));
        crate::failpoint::hit("pack-before-write")?;
        self.backend.put(FileKind::Pack, &id.to_hex(), &file)?;
        tracing::debug!(pack = %id.short(), blobs = records.len(), bytes = file.len(), "pack written");
        self.stats.lock().expect("packer lock").packs += 1;
        let checkpoint = {
            let mut finished = self.finished.lock().expect("packer lock");
            finished.push(IndexPack { pack: id, pack_len: file.len() as u64, blobs: records });
            if finished.len() >= INDEX_EVERY { std::mem::take(&mut *finished) } else { Vec::new() }
        };
        crate::failpoint::hit("pack-written")?;
        // Index the packs written so far, so that an interrupted backup's work is reused by the
        // next one instead of being stored again.
        if !checkpoint.is_empty()
            && let Err(e) = write_index_file(self.backend, self.codec, &checkpoint)
        {
            // Not indexed after all: abandon() must find them.
            self.finished.lock().expect("packer lock").extend(checkpoint);
            return Err(e);
        }
        Ok(())
    }

    /// After a failure: delete the packs this packer wrote that no index file names yet. Nobody
    /// else can have used them: writers find blobs only through index files, and rebuild-index
    /// and prune index unindexed packs only while no writer's lock is live (FORMAT.md). Packs
    /// already in an index file stay (another backup may have deduplicated against them) and
    /// are freed by the next prune if unused. Returns how many packs were deleted.
    pub fn abandon(&self) -> usize {
        if let DictState::Gathering { held, bytes, .. } = &mut *self.dict.lock().unwrap_or_else(|e| e.into_inner()) {
            held.clear();
            *bytes = 0;
        }
        for kind in [BlobKind::Data, BlobKind::Tree] {
            *self.group[kind as usize].lock().unwrap_or_else(|e| e.into_inner()) = OpenGroup::default();
            self.open[kind as usize].lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        let orphans = std::mem::take(&mut *self.finished.lock().unwrap_or_else(|e| e.into_inner()));
        let mut n = 0;
        for p in orphans {
            match self.backend.delete(FileKind::Pack, &p.pack.to_hex()) {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!("cannot remove pack {} of the failed run: {e}", p.pack.short()),
            }
        }
        n
    }

    /// Seal the open packs and index every pack not indexed yet. After this, everything added
    /// is durable and findable.
    pub fn finish(&self) -> Result<()> {
        self.flush()?;
        let rest = self.take_finished();
        if !rest.is_empty() {
            crate::failpoint::hit("index-before-write")?;
            if let Err(e) = write_index_file(self.backend, self.codec, &rest) {
                self.finished.lock().expect("packer lock").extend(rest);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Seal the open packs (kind by kind), so everything added so far is in written packs.
    pub fn flush(&self) -> Result<()> {
        // Blobs still waiting for a dictionary: train on what there is (or go without). A
        // thread training now adds what it holds before it returns; wait for it.
        let samples = loop {
            let mut state = self.dict.lock().expect("packer lock");
            match &mut *state {
                DictState::Gathering { training: true, .. } => {
                    drop(state);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                DictState::Gathering { held, training, .. } if !held.is_empty() => {
                    *training = true;
                    break std::mem::take(held);
                }
                _ => break Vec::new(),
            }
        };
        if !samples.is_empty() {
            self.train_and_add(samples)?;
        }
        for kind in [BlobKind::Data, BlobKind::Tree] {
            let group = std::mem::take(&mut *self.group[kind as usize].lock().expect("packer lock"));
            if !group.members.is_empty() {
                self.add_group(kind, group)?;
            }
        }
        for kind in [BlobKind::Data, BlobKind::Tree] {
            let pack = self.open[kind as usize].lock().expect("packer lock").take();
            if let Some(pack) = pack
                && !pack.records.is_empty()
            {
                self.seal(pack)?;
            }
        }
        Ok(())
    }

    /// Packs written since the last call.
    pub fn take_finished(&self) -> Vec<IndexPack> {
        std::mem::take(&mut *self.finished.lock().expect("packer lock"))
    }

    pub fn stats(&self) -> PackerStats {
        *self.stats.lock().expect("packer lock")
    }
}
