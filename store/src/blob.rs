//! Blob bytes: compress for storage, and decompress with a hash check on the way back.

use crate::error::{Error, Result};
use crate::format::{BlobId, BlobKind, Compression, Hash};

/// Compress `raw` with zstd at `level`; keep it raw when compression saves under 1/32.
pub(crate) fn compress(raw: &[u8], level: i32) -> (Compression, Vec<u8>) {
    if raw.len() < 64 {
        return (Compression::None, raw.to_vec());
    }
    match zstd::bulk::compress(raw, level) {
        Ok(c) if c.len() + raw.len() / 32 < raw.len() => (Compression::Zstd, c),
        _ => (Compression::None, raw.to_vec()),
    }
}

/// Recover a blob's bytes from its stored form and verify them against its id: damaged bytes are
/// an error, never returned.
pub(crate) fn open(id: &BlobId, compression: Compression, stored: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    let raw = match compression {
        Compression::None => stored.to_vec(),
        Compression::Zstd => decompress(id, stored, raw_len)?,
    };
    verify(id, raw, raw_len)
}

/// [`open`] for stored bytes the caller no longer needs: a blob stored raw is not copied.
pub(crate) fn open_owned(id: &BlobId, compression: Compression, stored: Vec<u8>, raw_len: u32) -> Result<Vec<u8>> {
    match compression {
        Compression::None => verify(id, stored, raw_len),
        Compression::Zstd => open(id, compression, &stored, raw_len),
    }
}

fn decompress(id: &BlobId, stored: &[u8], raw_len: u32) -> Result<Vec<u8>> {
    use std::cell::RefCell;
    // One decompression context per thread, not one per blob.
    thread_local! {
        static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    let what = || format!("{} blob {}", kind_name(id.kind), id.hash.to_hex());
    DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new().map_err(|e| Error::corrupt(what(), format!("zstd: {e}")))?);
        }
        // Bounded by the recorded length: damaged input cannot make us allocate more.
        cell.as_mut()
            .expect("set above")
            .decompress(stored, raw_len as usize)
            .map_err(|e| Error::corrupt(what(), format!("zstd: {e}")))
    })
}

fn verify(id: &BlobId, raw: Vec<u8>, raw_len: u32) -> Result<Vec<u8>> {
    let what = || format!("{} blob {}", kind_name(id.kind), id.hash.to_hex());
    if raw.len() != raw_len as usize {
        return Err(Error::corrupt(what(), format!("length {} instead of {raw_len}", raw.len())));
    }
    if Hash::of(&raw) != id.hash {
        return Err(Error::corrupt(what(), "content does not match its BLAKE3 id"));
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
    use proptest::prelude::*;

    #[test]
    fn incompressible_is_stored_raw() {
        let mut x = 1u32;
        let data: Vec<u8> = (0..100_000).map(|_| { x = x.wrapping_mul(1664525).wrapping_add(1013904223); (x >> 24) as u8 }).collect();
        assert_eq!(compress(&data, 3).0, Compression::None);
        let text = b"hello world ".repeat(1000);
        let (c, stored) = compress(&text, 3);
        assert_eq!(c, Compression::Zstd);
        let id = BlobId { kind: BlobKind::Data, hash: Hash::of(&text) };
        assert_eq!(open(&id, c, &stored, text.len() as u32).unwrap(), text);
    }

    #[test]
    fn flipped_byte_is_an_error() {
        let text = b"hello world ".repeat(1000);
        let (c, mut stored) = compress(&text, 3);
        let id = BlobId { kind: BlobKind::Data, hash: Hash::of(&text) };
        let n = stored.len() / 2;
        stored[n] ^= 1;
        assert!(open(&id, c, &stored, text.len() as u32).is_err());
    }

    proptest! {
        #[test]
        fn open_never_panics(stored in proptest::collection::vec(any::<u8>(), 0..400), raw_len in 0u32..10_000, z in any::<bool>()) {
            let id = BlobId { kind: BlobKind::Data, hash: Hash::of(b"") };
            let _ = open(&id, if z { Compression::Zstd } else { Compression::None }, &stored, raw_len);
        }
    }
}
