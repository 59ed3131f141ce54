//! How this repository's objects are written: the one place that knows the format version and
//! the keys. Format version 1 is plaintext with BLAKE3 ids (the codecs of `format.rs` as they
//! are); version 2 seals every object with [`Crypto`] and names content by keyed BLAKE3 (see
//! `store/FORMAT.md`, "Encryption"). Everything above (packer, index, backup, prune, readers)
//! asks the codec and never looks at versions or keys itself.
//!
//! Version 2 objects, each sealed with associated data naming what it is:
//! - blob: `seal(kind || id, stored bytes)`; the records still say raw or zstd;
//! - pack records (head copy and trailer): `seal(count u32 || records || zero padding)`, padded to
//!   a power of two of records (at least 16), so a pack shows its blob count only to that bucket;
//! - index file: `"RWNDINDX" | 2 | seal(pack count || packs || zero padding)`, padded to a power of
//!   two of at least 4 KiB, named by the keyed id of the sealed plaintext;
//! - snapshot: `seal(JSON padded with spaces to a multiple of 512)`, named likewise;
//! - lock, pending and revocation record: `seal(JSON)` bound to the file's name.

use crate::crypto::{Crypto, SEAL_OVERHEAD};
use crate::error::{Error, Result};
use crate::format::{
    self, BlobId, BlobRecord, Hash, IndexId, IndexPack, LockInfo, PACK_FOOTER_LEN, PACK_HEADER_LEN, PACK_MAGIC,
    PACK_TRAILER_MAGIC, Pending, RECORD_LEN, Snapshot, SnapshotId,
};

/// The version of an encrypted repository's objects.
pub const ENCRYPTED_VERSION: u32 = 2;
/// The version of an unencrypted one.
pub const PLAIN_VERSION: u32 = 1;

/// Bytes at the end of a version 2 pack: sealed length u32, version u32, magic.
const V2_FOOTER_LEN: usize = 4 + 4 + 8;
/// The head copy's fixed part in version 2: magic and sealed length.
const V2_HEAD_FIXED_LEN: usize = 8 + 4;

/// Encodes and decodes a repository's objects.
#[derive(Clone)]
pub struct Codec {
    version: u32,
    crypto: Crypto,
    /// The repository's compression dictionaries, shared by every clone.
    dicts: std::sync::Arc<crate::dict::Dicts>,
    /// Padding of records, index files and dictionaries to a Padmé length (repository version
    /// 4) rather than a power of two.
    fine_padding: bool,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("version", &self.version).field("crypto", &self.crypto).finish_non_exhaustive()
    }
}

impl Codec {
    /// Version 1: plaintext, BLAKE3 ids.
    pub fn plain() -> Codec {
        Codec { version: PLAIN_VERSION, crypto: Crypto::None, dicts: Default::default(), fine_padding: false }
    }

    /// Version 2 under `crypto`, which must hold a key.
    pub fn encrypted(crypto: Crypto) -> Codec {
        debug_assert!(crypto.is_encrypted());
        Codec { version: ENCRYPTED_VERSION, crypto, dicts: Default::default(), fine_padding: false }
    }

    /// The codec of a repository of config version `version`: from version 4, sealed records,
    /// index files and dictionaries are padded to a Padmé length (FORMAT.md, "What version 2
    /// objects look like").
    pub(crate) fn for_repository_version(mut self, version: u32) -> Codec {
        self.fine_padding = version >= 4;
        self
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    pub fn is_encrypted(&self) -> bool {
        self.crypto.is_encrypted()
    }

    /// The id of some content (chunk, tree, manifest).
    pub fn id(&self, data: &[u8]) -> Hash {
        self.crypto.id(data)
    }

    // -----------------------------------------------------------------------------------------
    // Blobs

    /// Bytes a stored blob has beyond its (maybe compressed) bytes.
    pub fn blob_overhead(&self) -> usize {
        self.crypto.overhead()
    }

    /// Append the stored form of a blob whose (maybe compressed) bytes are `bytes`.
    pub fn seal_blob(&self, id: &BlobId, bytes: &[u8], out: &mut Vec<u8>) {
        self.crypto.seal_into(&blob_aad(id), bytes, out);
    }

    /// The (maybe compressed) bytes of a stored blob, authenticated.
    pub fn open_blob(&self, id: &BlobId, stored: Vec<u8>) -> Result<Vec<u8>> {
        self.crypto
            .open(&blob_aad(id), stored, || format!("{} blob {}", crate::blob::kind_name(id.kind), id.hash.to_hex()))
    }

    /// [`Codec::open_blob`] where the stored bytes lie (they are overwritten): the range of the
    /// opened bytes within `stored`.
    pub fn open_blob_in_place(&self, id: &BlobId, stored: &mut [u8]) -> Result<std::ops::Range<usize>> {
        self.crypto.open_in_place(&blob_aad(id), stored, || {
            format!("{} blob {}", crate::blob::kind_name(id.kind), id.hash.to_hex())
        })
    }

    /// Append the stored form of a group of small blobs whose compressed bytes are `bytes`
    /// (version 4). Every member is verified against its own id when read, so the group is
    /// bound to no id of its own.
    pub fn seal_group(&self, bytes: &[u8], out: &mut Vec<u8>) {
        self.crypto.seal_into(GROUP_AAD, bytes, out);
    }

    /// The compressed bytes of a stored group, authenticated; `what` names the blob asked for.
    pub fn open_group(&self, stored: Vec<u8>, what: impl Fn() -> String) -> Result<Vec<u8>> {
        self.crypto.open(GROUP_AAD, stored, what)
    }

    // -----------------------------------------------------------------------------------------
    // Dictionaries

    /// Where the dictionaries are read from when a blob needs one.
    pub(crate) fn set_dict_source(&self, backend: std::sync::Arc<dyn crate::backend::Backend>) {
        self.dicts.set_source(backend);
    }

    /// A dictionary's file: `seal(len u32 || dictionary || zeros)` padded like an index file (to
    /// a power of two, or Padmé's length in version 4, of at least 4 KiB), named by the id of the dictionary's bytes, bound to that
    /// name. Returns the name and the file.
    pub fn encode_dict(&self, dict: &[u8]) -> (String, Vec<u8>) {
        let id = self.id(dict);
        let name = id.to_hex();
        let mut plain = Vec::with_capacity(4 + dict.len());
        plain.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        plain.extend_from_slice(dict);
        if self.version == PLAIN_VERSION {
            return (name, plain);
        }
        self.pad_zeros(&mut plain, 4096);
        let sealed = self.crypto.seal(&named_aad(b"dict", &id.0), &plain);
        (name, sealed)
    }

    /// The dictionary in a file named `name`: authenticated, and checked against its name.
    pub fn decode_dict(&self, name: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        self.decode_dict_named(name, bytes, true)
    }

    /// [`Codec::decode_dict`], optionally without the name check (for the fuzzer, whose
    /// mutations of a sealed seed never match a name).
    pub(crate) fn decode_dict_named(&self, name: &str, bytes: Vec<u8>, check_name: bool) -> Result<Vec<u8>> {
        let what = || format!("dictionary {name}");
        let id = Hash::from_hex(name).map_err(|_| Error::corrupt(what(), "not named by an id"))?;
        let plain = if self.version == PLAIN_VERSION {
            bytes
        } else {
            self.crypto.open(&named_aad(b"dict", &id.0), bytes, what)?
        };
        let len = plain.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        let dict = match len.and_then(|n| plain.get(4..4 + n)) {
            Some(d) => d,
            None => return Err(Error::corrupt(what(), "length beyond the file")),
        };
        if check_name && self.id(dict) != id {
            return Err(Error::corrupt(what(), "content does not match its name"));
        }
        Ok(dict.to_vec())
    }

    /// Read the repository's dictionaries not loaded yet.
    pub(crate) fn load_dicts(&self) -> Result<()> {
        self.dicts.load(|name, bytes| self.decode_dict(name, bytes))
    }

    /// The dictionary new blobs are compressed with, if the repository has one.
    pub(crate) fn preferred_dict(&self) -> Option<std::sync::Arc<crate::dict::Dict>> {
        self.dicts.preferred()
    }

    /// Dictionary files that did not open at the last load, with why.
    pub fn damaged_dicts(&self) -> Vec<(String, String)> {
        self.dicts.damaged()
    }

    /// Whether this codec has the dictionary of zstd id `zstd_id` (loaded).
    pub(crate) fn has_dict(&self, zstd_id: u32) -> bool {
        self.dicts.get(zstd_id).is_some()
    }

    /// Add a dictionary this process wrote (or copied in) to the table.
    pub(crate) fn add_dict(&self, d: crate::dict::Dict) -> std::sync::Arc<crate::dict::Dict> {
        self.dicts.insert(d)
    }

    /// The dictionary a blob's zstd frame names (`what` names the blob in errors).
    pub(crate) fn dict_for_frame(
        &self,
        frame: &[u8],
        what: impl Fn() -> String,
    ) -> Result<std::sync::Arc<crate::dict::Dict>> {
        self.dicts.for_frame(frame, what, |name, bytes| self.decode_dict(name, bytes))
    }

    // -----------------------------------------------------------------------------------------
    // Packs

    /// The first bytes of every pack: magic and version.
    pub fn pack_header(&self) -> [u8; PACK_HEADER_LEN] {
        let mut h = [0u8; PACK_HEADER_LEN];
        h[..8].copy_from_slice(PACK_MAGIC);
        h[8..].copy_from_slice(&self.version.to_le_bytes());
        h
    }

    /// The length of the head copy of `count` records: blob offsets move along by it.
    pub fn pack_head_len(&self, count: usize) -> usize {
        match self.version {
            PLAIN_VERSION => format::PACK_HEAD_FIXED_LEN + count * RECORD_LEN,
            _ => V2_HEAD_FIXED_LEN + self.sealed_records_len(count),
        }
    }

    /// The head copy and the trailer of a pack holding `records` (offsets final).
    pub fn pack_head_and_trailer(&self, records: &[BlobRecord]) -> (Vec<u8>, Vec<u8>) {
        if self.version == PLAIN_VERSION {
            return (format::encode_pack_head(records), format::encode_pack_trailer(records));
        }
        // One sealed copy serves both places: the same message, so no nonce is reused.
        let sealed = self.crypto.seal(RECORDS_AAD, &self.padded_records(records));
        let mut head = Vec::with_capacity(V2_HEAD_FIXED_LEN + sealed.len());
        head.extend_from_slice(format::PACK_HEAD_MAGIC);
        head.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        head.extend_from_slice(&sealed);
        let mut trailer = sealed;
        trailer.extend_from_slice(&(head.len() as u32 - V2_HEAD_FIXED_LEN as u32).to_le_bytes());
        trailer.extend_from_slice(&self.version.to_le_bytes());
        trailer.extend_from_slice(PACK_TRAILER_MAGIC);
        (head, trailer)
    }

    /// How many bytes at the end of a pack to read to learn where its records are.
    pub fn pack_footer_len(&self) -> usize {
        match self.version {
            PLAIN_VERSION => PACK_FOOTER_LEN,
            _ => V2_FOOTER_LEN,
        }
    }

    /// From a pack's footer: the offset from the end of the pack and the length of the bytes
    /// holding its records (the encoded records in version 1, the sealed ones in version 2).
    pub fn pack_trailer_span(&self, footer: &[u8]) -> Result<(u64, usize)> {
        if self.version == PLAIN_VERSION {
            let (len, _, _) = format::decode_pack_footer(footer)?;
            return Ok(((PACK_FOOTER_LEN + len as usize) as u64, len as usize));
        }
        let footer = footer.get(footer.len().saturating_sub(V2_FOOTER_LEN)..).unwrap_or(&[]);
        if footer.len() != V2_FOOTER_LEN || &footer[8..16] != PACK_TRAILER_MAGIC {
            return Err(Error::corrupt("pack", "trailer magic missing (truncated or not a pack)"));
        }
        self.check_pack_version(u32::from_le_bytes(footer[4..8].try_into().expect("4 bytes")))?;
        let len = u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")) as usize;
        Ok(((V2_FOOTER_LEN + len) as u64, len))
    }

    /// The records from the bytes [`Codec::pack_trailer_span`] pointed at.
    pub fn decode_pack_trailer(&self, bytes: &[u8], footer: &[u8]) -> Result<Vec<BlobRecord>> {
        if self.version == PLAIN_VERSION {
            let (_, count, hash) = format::decode_pack_footer(footer)?;
            return format::decode_pack_records(bytes, count, hash);
        }
        self.open_records(bytes)
    }

    /// From the bytes after a pack's header: `None` if it has no head copy, else the offset and
    /// length of the bytes holding the records.
    pub fn pack_head_span(&self, fixed: &[u8]) -> Result<Option<(u64, usize)>> {
        if self.version == PLAIN_VERSION {
            return Ok(format::decode_pack_head_fixed(fixed)?
                .map(|(len, _, _)| ((PACK_HEADER_LEN + format::PACK_HEAD_FIXED_LEN) as u64, len as usize)));
        }
        if fixed.len() < V2_HEAD_FIXED_LEN || &fixed[..8] != format::PACK_HEAD_MAGIC {
            return Ok(None);
        }
        let len = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes")) as usize;
        Ok(Some(((PACK_HEADER_LEN + V2_HEAD_FIXED_LEN) as u64, len)))
    }

    /// The records from the bytes [`Codec::pack_head_span`] pointed at.
    pub fn decode_pack_head(&self, bytes: &[u8], fixed: &[u8]) -> Result<Vec<BlobRecord>> {
        if self.version == PLAIN_VERSION {
            let (_, count, hash) =
                format::decode_pack_head_fixed(fixed)?.ok_or_else(|| Error::corrupt("pack", "no head copy"))?;
            return format::decode_pack_records(bytes, count, hash);
        }
        self.open_records(bytes)
    }

    /// How many bytes after the header to read for [`Codec::pack_head_span`].
    pub fn pack_head_fixed_len(&self) -> usize {
        match self.version {
            PLAIN_VERSION => format::PACK_HEAD_FIXED_LEN,
            _ => V2_HEAD_FIXED_LEN,
        }
    }

    /// A whole pack's records from its bytes: the trailer, or, if that is damaged, the head
    /// copy; and whether the head copy was used. Every record is checked to lie between the
    /// head copy and the trailer.
    pub fn decode_pack(&self, pack: &[u8]) -> Result<(Vec<BlobRecord>, bool)> {
        if pack.len() < PACK_HEADER_LEN || &pack[..8] != PACK_MAGIC {
            return Err(Error::corrupt("pack", "not a pack (magic missing)"));
        }
        self.check_pack_version(u32::from_le_bytes(pack[8..12].try_into().expect("4 bytes")))?;
        let footer_len = self.pack_footer_len().min(pack.len());
        let footer = &pack[pack.len() - footer_len..];
        let from_trailer = || -> Result<Vec<BlobRecord>> {
            let (back, len) = self.pack_trailer_span(footer)?;
            let start = (pack.len() as u64)
                .checked_sub(back)
                .filter(|&s| s >= PACK_HEADER_LEN as u64)
                .ok_or_else(|| Error::corrupt("pack", "trailer longer than the pack"))?
                as usize;
            self.decode_pack_trailer(&pack[start..start + len], footer)
        };
        let (records, head) = match from_trailer() {
            Ok(r) => (r, false),
            Err(e) => {
                let fixed = &pack[PACK_HEADER_LEN..];
                match self.pack_head_span(fixed)? {
                    None => return Err(e),
                    Some((start, len)) => {
                        let start = start as usize;
                        let bytes = pack
                            .get(start..start.saturating_add(len))
                            .ok_or_else(|| Error::corrupt("pack", "head copy longer than the pack"))?;
                        (self.decode_pack_head(bytes, fixed)?, true)
                    }
                }
            }
        };
        self.check_record_bounds(&records, pack.len() as u64)?;
        Ok((records, head))
    }

    /// Every record must lie after the header and head copy and before the trailer.
    pub fn check_record_bounds(&self, records: &[BlobRecord], pack_len: u64) -> Result<()> {
        if self.version == PLAIN_VERSION {
            return format::check_record_bounds(records, pack_len);
        }
        let copy = self.sealed_records_len(records.len()) as u64;
        let min = (PACK_HEADER_LEN + V2_HEAD_FIXED_LEN) as u64 + copy;
        let max =
            pack_len.checked_sub(copy + V2_FOOTER_LEN as u64).ok_or_else(|| Error::corrupt("pack", "too short"))?;
        for r in records {
            if r.offset < min || r.offset.checked_add(u64::from(r.stored_len)).is_none_or(|end| end > max) {
                return Err(Error::corrupt("pack", "a blob lies outside the pack's data"));
            }
        }
        Ok(())
    }

    fn check_pack_version(&self, found: u32) -> Result<()> {
        if found == self.version {
            return Ok(());
        }
        if found > ENCRYPTED_VERSION || found == 0 {
            return Err(Error::UnsupportedVersion { what: "pack".into(), found, supported: ENCRYPTED_VERSION });
        }
        Err(Error::corrupt("pack", format!("a version {found} pack in a version {} repository", self.version)))
    }

    fn open_records(&self, sealed: &[u8]) -> Result<Vec<BlobRecord>> {
        let plain = self.crypto.open_slice(RECORDS_AAD, sealed, || "pack records".into())?;
        let count =
            plain.get(..4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).unwrap_or(u32::MAX) as usize;
        let recs = count
            .checked_mul(RECORD_LEN)
            .and_then(|n| plain.get(4..4 + n))
            .ok_or_else(|| Error::corrupt("pack", "records longer than their sealed bytes"))?;
        recs.chunks_exact(RECORD_LEN).map(BlobRecord::decode).collect()
    }

    // -----------------------------------------------------------------------------------------
    // Index files

    /// An index file for `packs`, and its name.
    pub fn encode_index(&self, packs: &[IndexPack]) -> (IndexId, Vec<u8>) {
        if self.version == PLAIN_VERSION {
            let bytes = format::encode_index(packs);
            return (IndexId(Hash::of(&bytes)), bytes);
        }
        let mut plain = format::encode_index_body(packs);
        if self.fine_padding {
            // Version 4: compressed (a record's place and lengths compress, its id does not).
            plain = compressed_index_body(&plain);
        }
        self.pad_zeros(&mut plain, 4096);
        let id = IndexId(self.id(&plain));
        let mut out = Vec::with_capacity(12 + plain.len() + SEAL_OVERHEAD);
        out.extend_from_slice(format::INDEX_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        self.crypto.seal_into(&named_aad(b"index", &id.0.0), &plain, &mut out);
        (id, out)
    }

    /// The packs an index file describes; it must be the one named `name`.
    pub fn decode_index(&self, name: &str, bytes: &[u8]) -> Result<Vec<IndexPack>> {
        self.decode_index_named(name, bytes, true)
    }

    /// [`Codec::decode_index`], checking the plaintext against the name or not (the fuzzers
    /// cannot make a plaintext whose keyed hash is a given name).
    pub(crate) fn decode_index_named(&self, name: &str, bytes: &[u8], check_name: bool) -> Result<Vec<IndexPack>> {
        let id =
            IndexId::from_hex(name).map_err(|_| Error::corrupt(format!("index file {name}"), "not named by an id"))?;
        let what = || format!("index file {name}");
        if self.version == PLAIN_VERSION {
            if Hash::of(bytes) != id.0 {
                return Err(Error::corrupt(what(), "content does not match its name"));
            }
            return format::decode_index(bytes);
        }
        if bytes.len() < 12 || &bytes[..8] != format::INDEX_MAGIC {
            return Err(Error::corrupt(what(), "missing magic"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != self.version {
            format::check_version("index file", version)?;
            return Err(Error::corrupt(
                what(),
                format!("a version {version} index in a version {} repository", self.version),
            ));
        }
        let plain = self.crypto.open_slice(&named_aad(b"index", &id.0.0), &bytes[12..], what)?;
        if check_name && self.id(&plain) != id.0 {
            return Err(Error::corrupt(what(), "content does not match its name"));
        }
        if self.fine_padding {
            return format::decode_index_body(&decompressed_index_body(&plain, what)?, false);
        }
        format::decode_index_body(&plain, true)
    }

    // -----------------------------------------------------------------------------------------
    // Snapshots

    /// A snapshot manifest and its id.
    pub fn encode_snapshot(&self, s: &Snapshot) -> (SnapshotId, Vec<u8>) {
        let mut plain = s.encode();
        if self.version == PLAIN_VERSION {
            return (SnapshotId(Hash::of(&plain)), plain);
        }
        let padded = plain.len().div_ceil(512) * 512;
        plain.resize(padded, b' ');
        let id = SnapshotId(self.id(&plain));
        (id, self.crypto.seal(&named_aad(b"snapshot", &id.0.0), &plain))
    }

    /// The manifest named `id`.
    pub fn decode_snapshot(&self, id: &SnapshotId, bytes: Vec<u8>) -> Result<Snapshot> {
        self.decode_snapshot_named(id, bytes, true)
    }

    /// [`Codec::decode_snapshot`], checking the plaintext against the id or not (for fuzzing).
    pub(crate) fn decode_snapshot_named(&self, id: &SnapshotId, bytes: Vec<u8>, check_name: bool) -> Result<Snapshot> {
        let what = || format!("snapshot {}", id.short());
        let plain = self.crypto.open(&named_aad(b"snapshot", &id.0.0), bytes, what)?;
        if check_name && self.id(&plain) != id.0 {
            return Err(Error::corrupt(what(), "content does not match its id"));
        }
        let s = Snapshot::decode(&plain)?;
        if s.version != self.version {
            return Err(Error::corrupt(
                what(),
                format!("a version {} snapshot in a version {} repository", s.version, self.version),
            ));
        }
        Ok(s)
    }

    /// Seal an index body or manifest under a name of the caller's choosing: the fuzzers' seeds.
    #[doc(hidden)]
    pub fn seal_named_for_fuzzing(&self, kind: &str, name: &Hash, plain: &[u8]) -> Vec<u8> {
        let sealed = self.crypto.seal(&named_aad(kind.as_bytes(), &name.0), plain);
        if kind != "index" {
            return sealed;
        }
        let mut out = format::INDEX_MAGIC.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&sealed);
        out
    }

    /// The bytes a damaged manifest still says, for salvage: the plaintext if it opens.
    pub fn snapshot_plaintext(&self, id: &SnapshotId, bytes: Vec<u8>) -> Option<Vec<u8>> {
        self.crypto.open(&named_aad(b"snapshot", &id.0.0), bytes, String::new).ok()
    }

    // -----------------------------------------------------------------------------------------
    // Locks and pending records

    pub fn encode_lock(&self, name: &str, info: &LockInfo) -> Vec<u8> {
        self.crypto.seal(&named_aad(b"lock", name.as_bytes()), &info.encode())
    }

    pub fn decode_lock(&self, name: &str, bytes: Vec<u8>) -> Result<LockInfo> {
        let plain = self.crypto.open(&named_aad(b"lock", name.as_bytes()), bytes, || format!("lock {name}"))?;
        LockInfo::decode(&plain)
    }

    pub fn encode_pending(&self, name: &str, p: &Pending) -> Vec<u8> {
        self.crypto.seal(&named_aad(b"pending", name.as_bytes()), &p.encode())
    }

    pub fn decode_pending(&self, name: &str, bytes: Vec<u8>) -> Result<Pending> {
        let plain =
            self.crypto.open(&named_aad(b"pending", name.as_bytes()), bytes, || format!("pending record {name}"))?;
        Pending::decode(&plain)
    }

    /// A session revocation record (see `revocation.rs`): sealed like a lock, bound to its name.
    pub fn encode_revocation(&self, name: &str, json: &[u8]) -> Vec<u8> {
        self.crypto.seal(&named_aad(b"revocation", name.as_bytes()), json)
    }

    pub fn decode_revocation(&self, name: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
        self.crypto.open(&named_aad(b"revocation", name.as_bytes()), bytes, || format!("revocation {name}"))
    }

    /// A name for a new lock: in version 1 it says who holds it; in version 2 it is random,
    /// since names are not sealed.
    pub fn lock_name(&self, readable: impl FnOnce() -> String) -> String {
        if self.version == PLAIN_VERSION {
            return readable();
        }
        let mut r = [0u8; 16];
        crate::crypto::fill_random(&mut r);
        hex::encode(r)
    }
}

const RECORDS_AAD: &[u8] = b"rewind v2 pack records";

/// Associated data of a sealed group of small blobs.
const GROUP_AAD: &[u8] = b"rewind v2 group";

fn blob_aad(id: &BlobId) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[0] = id.kind as u8;
    a[1..].copy_from_slice(&id.hash.0);
    a
}

fn named_aad(kind: &[u8], name: &[u8]) -> Vec<u8> {
    let mut a = b"rewind v2 ".to_vec();
    a.extend_from_slice(kind);
    a.push(0);
    a.extend_from_slice(name);
    a
}

/// A version 4 index file's plaintext before padding: `len u32 || zstd frame of the body`.
fn compressed_index_body(body: &[u8]) -> Vec<u8> {
    let frame = zstd::bulk::compress(body, 3).expect("zstd compresses what fits in memory");
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame);
    out
}

/// The body of a version 4 index file's (authenticated) plaintext; its frame states its size,
/// which may be at most 64 times the frame's (index bodies compress far less).
fn decompressed_index_body(plain: &[u8], what: impl Fn() -> String) -> Result<Vec<u8>> {
    let bad = |d: String| Error::corrupt(what(), d);
    let len = plain.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let frame =
        len.and_then(|n| plain.get(4..4 + n)).ok_or_else(|| bad("compressed body longer than the file".into()))?;
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= frame.len() as u64 * 64 => n as usize,
        _ => return Err(bad("compressed body of no or an implausible size".into())),
    };
    zstd::bulk::decompress(frame, size).map_err(|e| bad(format!("zstd: {e}")))
}

impl Codec {
    /// Record slots for `count` records: at least 16, padded.
    fn record_slots(&self, count: usize) -> usize {
        self.padded_len(count).max(16)
    }

    /// Records padded: `count u32 || records || zeros`.
    fn padded_records(&self, records: &[BlobRecord]) -> Vec<u8> {
        let slots = self.record_slots(records.len());
        let mut out = Vec::with_capacity(4 + slots * RECORD_LEN);
        out.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for r in records {
            r.encode_into(&mut out);
        }
        out.resize(4 + slots * RECORD_LEN, 0);
        out
    }

    fn sealed_records_len(&self, count: usize) -> usize {
        4 + self.record_slots(count) * RECORD_LEN + SEAL_OVERHEAD
    }

    /// Pad with zeros to a padded length of at least `min`.
    fn pad_zeros(&self, v: &mut Vec<u8>, min: usize) {
        let len = self.padded_len(v.len()).max(min);
        v.resize(len, 0);
    }

    /// `n` rounded up: to a power of two (versions 2 and 3), or to Padmé's length (version 4):
    /// the lowest bits cleared such that at most O(log log n) bits of `n` show, for at most
    /// 12% more (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
    /// Communication with PURBs", 2019). A power of two shows O(log log n) bits as well but
    /// costs up to twice the length.
    fn padded_len(&self, n: usize) -> usize {
        if !self.fine_padding {
            return n.next_power_of_two();
        }
        padme(n)
    }
}

/// Padmé: with `e` = floor(log2 n) and `s` = floor(log2 e) + 1, `n` rounded up to a multiple of
/// 2^(e - s).
fn padme(n: usize) -> usize {
    if n < 2 {
        return n;
    }
    let e = usize::BITS - 1 - n.leading_zeros();
    let s = u32::BITS - e.leading_zeros();
    let mask = (1usize << (e - s)) - 1;
    (n + mask) & !mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::format::{BlobKind, Compression, PackId};

    /// Padmé lengths are at least the length, grow with it, cost at most 12% (and less as
    /// lengths grow), and show few distinct values.
    #[test]
    fn padme_lengths() {
        assert_eq!((0..=8).map(padme).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(padme(9_000), 9_216);
        let mut last = 0;
        let mut distinct = std::collections::HashSet::new();
        for n in 1..200_000usize {
            let p = padme(n);
            assert!(p >= n && p >= last, "{n} -> {p}");
            assert!((p - n) * 100 <= n * 12, "{n} -> {p}");
            last = p;
            distinct.insert(p);
        }
        assert!(distinct.len() < 2_000, "{}", distinct.len());
        let fine = Codec::plain().for_repository_version(4);
        let coarse = Codec::plain().for_repository_version(3);
        assert_eq!((fine.record_slots(5), coarse.record_slots(5)), (16, 16));
        assert_eq!((fine.record_slots(9_000), coarse.record_slots(9_000)), (9_216, 16_384));
    }

    /// Plaintext, encrypted, and encrypted with version 4's padding.
    /// A version 4 index body that is not what it says (cut short, a lying size, not zstd)
    /// is an error, never a panic or a huge allocation.
    #[test]
    fn compressed_index_bodies_are_checked() {
        let body = b"an index body, repeated; ".repeat(100);
        let plain = compressed_index_body(&body);
        assert!(plain.len() < body.len() / 4);
        let what = || "index file x".to_string();
        assert_eq!(decompressed_index_body(&plain, what).unwrap(), body);
        let mut padded = plain.clone();
        padded.resize(4096, 0);
        assert_eq!(decompressed_index_body(&padded, what).unwrap(), body);
        assert!(decompressed_index_body(&plain[..plain.len() - 1], what).is_err());
        let mut lying = plain.clone();
        lying[0] = 3;
        assert!(decompressed_index_body(&lying, what).is_err());
        let mut huge = (9u32).to_le_bytes().to_vec();
        huge.extend_from_slice(&zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap()[..9]);
        assert!(decompressed_index_body(&huge, what).is_err());
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = decompressed_index_body(&junk, what);
        }
    }

    fn codecs() -> [Codec; 3] {
        let key = || Crypto::Encrypted(Box::new(MasterKey::random()));
        [Codec::plain(), Codec::encrypted(key()), Codec::encrypted(key()).for_repository_version(4)]
    }

    fn record(i: u8, offset: u64) -> BlobRecord {
        BlobRecord {
            id: BlobId { kind: BlobKind::Data, hash: Hash::of(&[i]) },
            compression: Compression::Zstd,
            offset,
            stored_len: 10,
            raw_len: 20,
        }
    }

    /// A pack built as the packer builds it decodes to its records, from the trailer or, with the
    /// trailer damaged, from the head copy.
    #[test]
    fn packs_round_trip_through_either_copy() {
        for c in codecs() {
            for n in [0usize, 1, 17, 40] {
                let head_len = c.pack_head_len(n);
                let data_start = (PACK_HEADER_LEN + head_len) as u64;
                let records: Vec<BlobRecord> = (0..n).map(|i| record(i as u8, data_start + 10 * i as u64)).collect();
                let (head, trailer) = c.pack_head_and_trailer(&records);
                assert_eq!(head.len(), head_len);
                let mut pack = c.pack_header().to_vec();
                pack.extend_from_slice(&head);
                pack.extend(std::iter::repeat_n(7u8, 10 * n));
                pack.extend_from_slice(&trailer);
                assert_eq!(c.decode_pack(&pack).unwrap(), (records.clone(), false), "v{} n={n}", c.version());
                let mut damaged = pack.clone();
                let at = damaged.len() - trailer.len() + 30;
                damaged[at] ^= 1;
                assert_eq!(c.decode_pack(&damaged).unwrap(), (records.clone(), true));
                // The other version's codec refuses it.
                let other = if c.is_encrypted() { Codec::plain() } else { codecs()[1].clone() };
                assert!(other.decode_pack(&pack).is_err());
            }
        }
    }

    #[test]
    fn index_files_round_trip_and_check_their_name() {
        for c in codecs() {
            let packs = vec![IndexPack { pack: PackId(Hash::of(b"p")), pack_len: 1000, blobs: vec![record(1, 100)] }];
            let (id, bytes) = c.encode_index(&packs);
            assert_eq!(c.decode_index(&id.to_hex(), &bytes).unwrap(), packs);
            let other = IndexId(Hash::of(b"other")).to_hex();
            assert!(c.decode_index(&other, &bytes).is_err());
            let mut bad = bytes.clone();
            let n = bad.len() / 2;
            bad[n] ^= 1;
            assert!(c.decode_index(&id.to_hex(), &bad).unwrap_err().is_corrupt());
        }
    }

    #[test]
    fn sealed_objects_are_bound_to_their_names() {
        let c = &codecs()[1];
        let lock = LockInfo {
            purpose: "backup".into(),
            host: "h".into(),
            pid: 1,
            time: jiff::Timestamp::now(),
            refreshed: None,
        };
        let bytes = c.encode_lock("a", &lock);
        assert!(!String::from_utf8_lossy(&bytes).contains("backup"));
        assert_eq!(c.decode_lock("a", bytes.clone()).unwrap(), lock);
        assert!(c.decode_lock("b", bytes).is_err());
        assert_ne!(c.lock_name(|| "x".into()), c.lock_name(|| "x".into()));
        assert_eq!(Codec::plain().lock_name(|| "x".into()), "x");
    }
}
