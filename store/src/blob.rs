//! Blob bytes: compress for storage, and decompress with a hash check on the way back.

use std::cell::RefCell;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::format::{BlobId, BlobKind, Compression};

thread_local! {
    // One zstd context per thread and level, reused: making one costs more than decompressing a
    // small chunk (it showed as 4% of a `tar` of a mount in a profile).
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    // Contexts for dictionaries: the prepared dictionary is given at each call, so one context
    // serves every dictionary.
    static DICT_CCTX: RefCell<Option<zstd::zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static DICT_DCTX: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// A dictionary prepared for compression at the repository's level.
pub(crate) struct DictCompressor {
    cdict: zstd::zstd_safe::CDict<'static>,
}

impl DictCompressor {
    pub fn new(dict: &[u8], level: i32) -> Option<DictCompressor> {
        zstd::zstd_safe::CDict::try_create(dict, level).map(|cdict| DictCompressor { cdict })
    }
}

fn zstd_compress_dict(raw: &[u8], d: &DictCompressor) -> std::io::Result<Vec<u8>> {
    DICT_CCTX.with_borrow_mut(|slot| {
        let cctx = slot.get_or_insert_with(zstd::zstd_safe::CCtx::create);
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
        cctx.compress_using_cdict(&mut out, raw, &d.cdict).map_err(zstd_error)?;
        Ok(out)
    })
}

fn zstd_decompress_dict(stored: &[u8], capacity: usize, d: &crate::dict::Dict) -> std::io::Result<Vec<u8>> {
    DICT_DCTX.with_borrow_mut(|slot| {
        let dctx = slot.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        let mut out = Vec::with_capacity(capacity);
        dctx.decompress_using_ddict(&mut out, stored, &d.ddict).map_err(zstd_error)?;
        Ok(out)
    })
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

fn zstd_compress(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, c) = slot.as_mut().expect("set above");
        c.compress(raw)
    })
}

fn zstd_decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("set above").decompress(stored, capacity)
    })
}

/// Compress `raw` with zstd at `level`; keep it raw when compression saves under 1/32.
pub(crate) fn compress(raw: &[u8], level: i32) -> (Compression, Vec<u8>) {
    if raw.len() < 64 {
        return (Compression::None, raw.to_vec());
    }
    match zstd_compress(raw, level) {
        Ok(c) if c.len() + raw.len() / 32 < raw.len() => (Compression::Zstd, c),
        _ => (Compression::None, raw.to_vec()),
    }
}

/// For the fuzzer: compress a sample with a dictionary that zstd accepted, and decompress it.
pub(crate) fn fuzz_dict(d: &crate::dict::Dict) -> bool {
    let sample = b"fn main() { let x = Some(1); match x { Some(v) => v, None => 0 }; }".repeat(4);
    let Some(c) = DictCompressor::new(&d.bytes, 3) else { return false };
    zstd_compress_dict(&sample, &c)
        .and_then(|z| zstd_decompress_dict(&z, sample.len(), d))
        .is_ok_and(|out| out == sample)
}

/// For the fuzzer: the member whose number the first two bytes give, from the group frame
/// that follows them; whether the frame and its table yield it.
pub(crate) fn fuzz_group(bytes: &[u8]) -> bool {
    let (Some(n), Some(frame)) = (bytes.get(..2), bytes.get(2..)) else { return false };
    let member = u16::from_le_bytes([n[0], n[1]]);
    decompressed_group(&Codec::plain(), frame, String::new).and_then(|g| member_range(&g, member, String::new)).is_ok()
}

/// The zstd level of small blobs compressed with a dictionary: the repository's, but at least 4.
/// With a dictionary, level 4 stores the small files of `bench/realdata.py` 7% smaller than
/// level 3 for a few percent more backup time; higher levels save a little more at much more
/// time, and to large blobs a higher level costs more time than it saves bytes (FORMAT.md).
pub(crate) fn dict_level(level: i32) -> i32 {
    level.max(4)
}

/// The zstd level of groups of small blobs: the repository's, but at least 5. With groups, level
/// 5 stores the small files of `bench/realdata.py` 3% smaller than level 4; level 6 stores
/// little less again, for 6% more time of a first backup (FORMAT.md, "Groups").
pub(crate) fn group_level(level: i32) -> i32 {
    level.max(GROUP_LEVEL)
}
const GROUP_LEVEL: i32 = 5;

/// [`compress`] of a small blob with the repository's dictionary (raw when that saves under
/// 1/32, like [`compress`]).
pub(crate) fn compress_small(raw: &[u8], level: i32, dict: &DictCompressor) -> (Compression, Vec<u8>) {
    if raw.len() < 64 {
        return (Compression::None, raw.to_vec());
    }
    match zstd_compress_dict(raw, dict) {
        Ok(c) if c.len() + raw.len() / 32 < raw.len() => (Compression::ZstdDict, c),
        Ok(_) => (Compression::None, raw.to_vec()),
        Err(_) => compress(raw, level),
    }
}

/// Recover a blob's bytes from its stored form (sealed in version 2, maybe compressed) and verify
/// them against its id: damaged bytes are an error, never returned.
pub(crate) fn open(
    codec: &Codec,
    id: &BlobId,
    compression: Compression,
    stored: &[u8],
    raw_len: u32,
) -> Result<Vec<u8>> {
    if let Compression::Grouped { member } = compression {
        // Not copied: the member is taken from the group (opened once per thread).
        return open_member(codec, id, member, stored, raw_len);
    }
    open_owned(codec, id, compression, stored.to_vec(), raw_len)
}

/// [`open`] of bytes the caller gives up: a blob stored raw (and, in version 1, unsealed) is
/// verified in place, not copied.
pub(crate) fn open_owned(
    codec: &Codec,
    id: &BlobId,
    compression: Compression,
    mut stored: Vec<u8>,
    raw_len: u32,
) -> Result<Vec<u8>> {
    match compression {
        Compression::None => {
            let bytes = codec.open_blob(id, stored)?;
            verify(codec, id, bytes, raw_len)
        }
        Compression::Zstd | Compression::ZstdDict => open_in(codec, id, compression, &mut stored, raw_len),
        Compression::Grouped { member } => open_member(codec, id, member, &stored, raw_len),
    }
}

/// [`open`] of bytes the caller lets it overwrite (a blob inside a run of a pack read at once):
/// opened where they lie and decompressed from there, so the only copy made is the result.
pub(crate) fn open_in(
    codec: &Codec,
    id: &BlobId,
    compression: Compression,
    stored: &mut [u8],
    raw_len: u32,
) -> Result<Vec<u8>> {
    if let Compression::Grouped { member } = compression {
        // The group's other members lie in the same bytes: not opened in place.
        return open_member(codec, id, member, stored, raw_len);
    }
    let plain = codec.open_blob_in_place(id, stored)?;
    let raw = match compression {
        Compression::None => stored[plain].to_vec(),
        _ => decompressed(codec, id, compression, &stored[plain], raw_len)?,
    };
    verify(codec, id, raw, raw_len)
}

/// A blob's bytes from its unsealed (maybe compressed) form, verified against its id.
pub(crate) fn unsealed(
    codec: &Codec,
    id: &BlobId,
    compression: Compression,
    bytes: Vec<u8>,
    raw_len: u32,
) -> Result<Vec<u8>> {
    let raw = match compression {
        Compression::None => bytes,
        Compression::Grouped { member } => {
            let group = decompressed_group(codec, &bytes, || what(id))?;
            return member_of(codec, id, member, &group, raw_len);
        }
        _ => decompressed(codec, id, compression, &bytes, raw_len)?,
    };
    verify(codec, id, raw, raw_len)
}

/// The raw bytes of a compressed blob's opened bytes, bounded by the recorded length (damaged
/// input cannot make us allocate more); not yet verified.
fn decompressed(codec: &Codec, id: &BlobId, compression: Compression, bytes: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(bytes.to_vec()),
        Compression::Grouped { member } => {
            let group = decompressed_group(codec, bytes, || what(id))?;
            let (start, end) = member_range(&group, member, || what(id))?;
            Ok(group[start..end].to_vec())
        }
        Compression::Zstd => {
            zstd_decompress(bytes, raw_len as usize).map_err(|e| Error::corrupt(what(id), format!("zstd: {e}")))
        }
        Compression::ZstdDict => {
            let d = codec.dict_for_frame(bytes, || what(id))?;
            zstd_decompress_dict(bytes, raw_len as usize, &d)
                .map_err(|e| Error::corrupt(what(id), format!("zstd with dictionary {}: {e}", d.name)))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Groups (version 4): small blobs compressed together, so that zstd sees more than one file.

/// A group is closed once its members add up to this many bytes: 1 MiB of small files, 64 KiB
/// of trees (a backup reads its parent's trees one by one, from groups it opens for each).
pub(crate) fn group_bytes(kind: BlobKind) -> usize {
    match kind {
        BlobKind::Data => 1 << 20,
        BlobKind::Tree => 64 << 10,
    }
}
/// The most members a group has (the member number is a u16 in records).
pub(crate) const GROUP_MAX_MEMBERS: usize = 4096;
/// The largest group a reader decompresses (writers make at most [`group_bytes`] plus one small
/// blob and the table); a frame that says more is damaged.
const GROUP_MAX_RAW: usize = 4 << 20;

/// The plaintext of a group: `count u32 | raw_len u32 per member | the members' bytes`.
pub(crate) fn group_plaintext<'b>(members: impl ExactSizeIterator<Item = &'b [u8]> + Clone) -> Vec<u8> {
    let total: usize = members.clone().map(|m| m.len()).sum();
    let mut out = Vec::with_capacity(4 + 4 * members.len() + total);
    out.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for m in members.clone() {
        out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    }
    for m in members {
        out.extend_from_slice(m);
    }
    out
}

/// A group's plaintext compressed as one zstd frame, with the repository's dictionary if it
/// has one. Always compressed: of small blobs that zstd cannot shrink (a few pictures among
/// text), a frame stores raw blocks at a few bytes' cost.
pub(crate) fn compress_group(plain: &[u8], level: i32, dict: Option<&DictCompressor>) -> Result<Vec<u8>> {
    let compressed = match dict {
        Some(d) => zstd_compress_dict(plain, d),
        None => zstd_compress(plain, level),
    };
    compressed.map_err(|e| Error::io("zstd (compressing a group of small blobs)", e))
}

/// A group's plaintext from its opened (unsealed) bytes: the frame's dictionary, if it names
/// one, is the repository's. Bounded by [`GROUP_MAX_RAW`].
fn decompressed_group(codec: &Codec, frame: &[u8], what: impl Fn() -> String) -> Result<Vec<u8>> {
    // The frame states its size (writers always say it): exactly that much is allocated.
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= GROUP_MAX_RAW as u64 => n as usize,
        _ => return Err(Error::corrupt(what(), "its group's frame states no size or too large a one")),
    };
    let group = if zstd::zstd_safe::get_dict_id_from_frame(frame).is_some() {
        let d = codec.dict_for_frame(frame, &what)?;
        zstd_decompress_dict(frame, size, &d)
            .map_err(|e| Error::corrupt(what(), format!("its group, zstd with dictionary {}: {e}", d.name)))?
    } else {
        zstd_decompress(frame, size).map_err(|e| Error::corrupt(what(), format!("its group, zstd: {e}")))?
    };
    if group.len() != size {
        return Err(Error::corrupt(what(), "its group is shorter than its frame says"));
    }
    Ok(group)
}

/// Where member `member` lies in a group's plaintext.
fn member_range(group: &[u8], member: u16, what: impl Fn() -> String) -> Result<(usize, usize)> {
    let bad = |detail: &str| Error::corrupt(what(), format!("its group {detail}"));
    let word = |i: usize| -> Option<usize> {
        group.get(i * 4..i * 4 + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let count = word(0).ok_or_else(|| bad("has no table"))?;
    let member = usize::from(member);
    if member >= count || count > GROUP_MAX_MEMBERS {
        return Err(bad(&format!("has {count} members, not member {member}")));
    }
    let table = 4 + 4 * count;
    let mut start = table;
    for i in 0..member {
        start = start.saturating_add(word(1 + i).ok_or_else(|| bad("table is cut short"))?);
    }
    let end = start.saturating_add(word(1 + member).ok_or_else(|| bad("table is cut short"))?);
    if end > group.len() {
        return Err(bad("is shorter than its table says"));
    }
    Ok((start, end))
}

/// A group's plaintext from its stored bytes: opened (authenticated) and decompressed; `id`, the
/// member asked for, names it in errors.
pub(crate) fn open_group(codec: &Codec, id: &BlobId, stored: Vec<u8>) -> Result<Vec<u8>> {
    let frame = codec.open_group(stored, || what(id))?;
    decompressed_group(codec, &frame, || what(id))
}

/// Member `member` of a group's plaintext, verified against its id and length.
pub(crate) fn member_of(codec: &Codec, id: &BlobId, member: u16, group: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let (start, end) = member_range(group, member, || what(id))?;
    verify(codec, id, group[start..end].to_vec(), raw_len)
}

thread_local! {
    // The groups this thread opened last, by their stored bytes (compared whole: a few
    // microseconds, against a fraction of a millisecond to open and decompress one): a
    // restore, prune, copy and check read a group's members one after another. (Reads through
    // an IndexedRepository use its own groups instead, whose budget its owner sets.)
    static GROUPS: RefCell<Vec<OpenedGroup>> = const { RefCell::new(Vec::new()) };
}
/// A group a thread opened: the codec's address, the stored bytes, the plaintext.
type OpenedGroup = (usize, Vec<u8>, std::sync::Arc<Vec<u8>>);

/// Groups kept per thread.
const GROUPS_KEPT: usize = 2;

/// One member of a group from the group's stored bytes, verified against its id. The group is
/// opened (authenticated) and decompressed once per thread while it stays among the last few.
pub(crate) fn open_member(codec: &Codec, id: &BlobId, member: u16, stored: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let key = codec as *const Codec as usize;
    let cached = GROUPS.with_borrow_mut(|g| {
        let i = g.iter().position(|(k, s, _)| *k == key && s.as_slice() == stored)?;
        let hit = g.remove(i);
        let plain = hit.2.clone();
        g.push(hit);
        Some(plain)
    });
    let group = match cached {
        Some(plain) => plain,
        None => {
            let plain = std::sync::Arc::new(open_group(codec, id, stored.to_vec())?);
            GROUPS.with_borrow_mut(|g| {
                if g.len() >= GROUPS_KEPT {
                    g.remove(0);
                }
                g.push((key, stored.to_vec(), plain.clone()));
            });
            plain
        }
    };
    member_of(codec, id, member, &group, raw_len)
}

fn what(id: &BlobId) -> String {
    format!("{} blob {}", kind_name(id.kind), id.hash.to_hex())
}

fn verify(codec: &Codec, id: &BlobId, raw: Vec<u8>, raw_len: u32) -> Result<Vec<u8>> {
    if raw.len() != raw_len as usize {
        return Err(Error::corrupt(what(id), format!("length {} instead of {raw_len}", raw.len())));
    }
    if codec.id(&raw) != id.hash {
        return Err(Error::corrupt(what(id), "content does not match its BLAKE3 id"));
    }
    Ok(raw)
}

pub(crate) fn kind_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Data => "data",
        BlobKind::Tree => "tree",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Hash;
    use proptest::prelude::*;

    #[test]
    fn incompressible_is_stored_raw() {
        let mut x = 1u32;
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(compress(&data, 3).0, Compression::None);
        let text = b"hello world ".repeat(1000);
        let (c, stored) = compress(&text, 3);
        assert_eq!(c, Compression::Zstd);
        let id = BlobId { kind: BlobKind::Data, hash: Hash::of(&text) };
        assert_eq!(open(&Codec::plain(), &id, c, &stored, text.len() as u32).unwrap(), text);
    }

    #[test]
    fn flipped_byte_is_an_error() {
        let text = b"hello world ".repeat(1000);
        let (c, mut stored) = compress(&text, 3);
        let id = BlobId { kind: BlobKind::Data, hash: Hash::of(&text) };
        let n = stored.len() / 2;
        stored[n] ^= 1;
        assert!(open(&Codec::plain(), &id, c, &stored, text.len() as u32).is_err());
    }

    /// Members of a group read back one by one, each checked against its own id; a wrong
    /// member number, id or length, or damaged bytes, is an error, never another file's bytes.
    #[test]
    fn members_of_a_group_read_back_and_damage_is_an_error() {
        let key = Codec::encrypted(crate::crypto::Crypto::Encrypted(Box::new(crate::crypto::MasterKey::random())));
        for codec in [Codec::plain(), key] {
            let members: Vec<Vec<u8>> = (0..50u32)
                .map(|i| format!("member {i}: {}", "text that repeats ".repeat(i as usize * 7)).into_bytes())
                .chain([Vec::new(), vec![0xa5; 70_000]])
                .collect();
            let plain = group_plaintext(members.iter().map(|m| m.as_slice()));
            let frame = compress_group(&plain, group_level(3), None).unwrap();
            assert!(frame.len() * 4 < plain.len(), "compressed together: {} of {}", frame.len(), plain.len());
            let mut stored = Vec::new();
            codec.seal_group(&frame, &mut stored);
            let id = |m: &[u8]| BlobId { kind: BlobKind::Data, hash: codec.id(m) };
            for (i, m) in members.iter().enumerate() {
                let c = Compression::Grouped { member: i as u16 };
                assert_eq!(&open(&codec, &id(m), c, &stored, m.len() as u32).unwrap(), m);
                let mut copy = stored.clone();
                assert_eq!(&open_in(&codec, &id(m), c, &mut copy, m.len() as u32).unwrap(), m);
                assert_eq!(copy, stored, "a group is not opened in place: its other members lie there");
            }
            let (a, b) = (&members[3], &members[4]);
            let wrong = |c: Compression, id: BlobId, len: usize, stored: &[u8]| {
                let e = open(&codec, &id, c, stored, len as u32).unwrap_err();
                assert!(e.is_corrupt(), "{e}");
            };
            wrong(Compression::Grouped { member: 4 }, id(a), a.len(), &stored);
            wrong(Compression::Grouped { member: 3 }, id(a), a.len() + 1, &stored);
            wrong(Compression::Grouped { member: 52 }, id(b), b.len(), &stored);
            wrong(Compression::Grouped { member: 4000 }, id(b), b.len(), &stored);
            let mut damaged = stored.clone();
            let n = damaged.len() / 2;
            damaged[n] ^= 1;
            wrong(Compression::Grouped { member: 3 }, id(a), a.len(), &damaged);
            // A group is not a blob sealed on its own, nor the other way round.
            if codec.is_encrypted() {
                wrong(Compression::Zstd, BlobId { kind: BlobKind::Data, hash: codec.id(&plain) }, plain.len(), &stored);
            }
        }
    }

    proptest! {
        #[test]
        fn a_member_of_any_bytes_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..400), member in any::<u16>(), raw_len in 0u32..10_000) {
            let id = BlobId { kind: BlobKind::Data, hash: Hash::of(b"") };
            let _ = open(&Codec::plain(), &id, Compression::Grouped { member }, &stored, raw_len);
            // A valid frame of a table that lies.
            let mut plain = (member as u32).to_le_bytes().to_vec();
            plain.extend_from_slice(&stored);
            let frame = compress_group(&plain, 3, None).unwrap();
            let _ = open(&Codec::plain(), &id, Compression::Grouped { member }, &frame, raw_len);
        }

        #[test]
        fn open_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..400), raw_len in 0u32..10_000, z in any::<bool>()) {
            let id = BlobId { kind: BlobKind::Data, hash: Hash::of(b"") };
            let _ = open(&Codec::plain(), &id, if z { Compression::Zstd } else { Compression::None }, &stored, raw_len);
        }
    }
}
