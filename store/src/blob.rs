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

/// The zstd level of small blobs compressed with a dictionary: the repository's, but at least 4.
/// With a dictionary, level 4 stores the small files of `bench/realdata.py` 7% smaller than
/// level 3 for a few percent more backup time; higher levels save a little more at much more
/// time, and to large blobs a higher level costs more time than it saves bytes (FORMAT.md).
pub(crate) fn dict_level(level: i32) -> i32 {
    level.max(4)
}

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
        _ => decompressed(codec, id, compression, &bytes, raw_len)?,
    };
    verify(codec, id, raw, raw_len)
}

/// The raw bytes of a compressed blob's opened bytes, bounded by the recorded length (damaged
/// input cannot make us allocate more); not yet verified.
fn decompressed(codec: &Codec, id: &BlobId, compression: Compression, bytes: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(bytes.to_vec()),
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

    proptest! {
        #[test]
        fn open_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..400), raw_len in 0u32..10_000, z in any::<bool>()) {
            let id = BlobId { kind: BlobKind::Data, hash: Hash::of(b"") };
            let _ = open(&Codec::plain(), &id, if z { Compression::Zstd } else { Compression::None }, &stored, raw_len);
        }
    }
}
