//! Encryption and keyed ids of an encrypted repository (format version 2).
//!
//! A repository has one random [`MasterKey`]: an encryption key, an id key and a chunker key.
//! Key files in `keys/` wrap it, each under a password (argon2id) or a raw key (see `keys.rs`).
//!
//! - **Sealing.** Every object is sealed with AES-256-GCM (ring) under a key of its own:
//!   `nonce` is 24 random bytes, the object key is `BLAKE3-keyed(enc key, "rewind v2 object" ||
//!   nonce)`, and the GCM nonce is zero (each object key seals one message). A sealed object is
//!   `nonce (24) || ciphertext || tag (16)`, 40 bytes more than its plaintext. Two writers can only
//!   reuse a key and nonce by drawing the same 192 random bits: no counter is shared, so no
//!   coordination between concurrent writers is needed, and no message count limits a key.
//! - **Associated data** names what an object is (its kind and its id or file name), so a sealed
//!   object cannot be moved to stand for another.
//! - **Ids** are BLAKE3 keyed with the id key: an attacker who knows a file cannot compute its
//!   chunk ids, and the chunker's gear table comes from the chunker key, so the cut points (and
//!   the sizes of stored blobs) do not reveal known content either.
//!
//! An unencrypted repository (format version 1, or `init --insecure-no-encryption`) uses the same
//! calls with [`Crypto::None`]: ids are plain BLAKE3, sealing is the identity.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};
use crate::format::Hash;

/// Bytes a sealed object has beyond its plaintext: the nonce and the tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The secrets of one repository. Never written anywhere but sealed inside key files.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    /// Seals objects.
    pub(crate) enc: [u8; 32],
    /// Keys the BLAKE3 of content ids.
    pub(crate) id: [u8; 32],
    /// Derives the chunker's gear table.
    pub(crate) chunker: [u8; 32],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A new random key from the operating system's generator.
    pub fn random() -> MasterKey {
        let mut k = MasterKey { enc: [0; 32], id: [0; 32], chunker: [0; 32] };
        fill_random(&mut k.enc);
        fill_random(&mut k.id);
        fill_random(&mut k.chunker);
        k
    }

    /// This key with another's content identity (id and chunker keys): a repository made with
    /// `init --copy-chunker-params FROM` cuts and names content as FROM does, so copies between
    /// the two deduplicate, while its encryption key stays its own.
    pub fn with_content_identity_of(&self, other: &MasterKey) -> MasterKey {
        MasterKey { enc: self.enc, id: other.id, chunker: other.chunker }
    }

    pub(crate) const LEN: usize = 96;

    pub(crate) fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(&self.enc);
        v.extend_from_slice(&self.id);
        v.extend_from_slice(&self.chunker);
        zeroize::Zeroizing::new(v)
    }

    /// A master key from its 96 bytes (encryption, id and chunker keys).
    pub fn from_bytes(b: &[u8]) -> Option<MasterKey> {
        if b.len() != Self::LEN {
            return None;
        }
        let mut k = MasterKey { enc: [0; 32], id: [0; 32], chunker: [0; 32] };
        k.enc.copy_from_slice(&b[..32]);
        k.id.copy_from_slice(&b[32..64]);
        k.chunker.copy_from_slice(&b[64..]);
        Some(k)
    }
}

pub(crate) fn fill_random(buf: &mut [u8]) {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_fill_bytes(buf).expect("the operating system's random generator works");
}

/// How a repository's objects are protected: the one place that knows.
#[derive(Clone, Debug)]
pub enum Crypto {
    /// Plain BLAKE3 ids, objects stored as they are.
    None,
    /// Keyed ids, sealed objects.
    Encrypted(Box<MasterKey>),
}

impl Crypto {
    pub fn is_encrypted(&self) -> bool {
        matches!(self, Crypto::Encrypted(_))
    }

    /// The id of some content: BLAKE3, keyed with the id key when encrypted.
    pub fn id(&self, data: &[u8]) -> Hash {
        match self {
            Crypto::None => Hash::of(data),
            Crypto::Encrypted(k) => Hash(*blake3::keyed_hash(&k.id, data).as_bytes()),
        }
    }

    /// Bytes sealing adds to an object.
    pub fn overhead(&self) -> usize {
        match self {
            Crypto::None => 0,
            Crypto::Encrypted(_) => SEAL_OVERHEAD,
        }
    }

    /// Seal `plain` bound to `aad`, appending the result to `out`.
    pub fn seal_into(&self, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
        let Crypto::Encrypted(k) = self else {
            out.extend_from_slice(plain);
            return;
        };
        seal_with(&k.enc, aad, plain, out);
    }

    /// [`Crypto::seal_into`] a new buffer.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + self.overhead());
        self.seal_into(aad, plain, &mut out);
        out
    }

    /// Open a sealed object bound to `aad`, in place: the plaintext, or an error naming `what`
    /// when the bytes were damaged, forged, moved or sealed under another key.
    pub fn open(&self, aad: &[u8], mut sealed: Vec<u8>, what: impl FnOnce() -> String) -> Result<Vec<u8>> {
        let Crypto::Encrypted(k) = self else { return Ok(sealed) };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::corrupt(what(), "too short to be sealed"));
        }
        if !open_with(&k.enc, aad, &mut sealed) {
            return Err(Error::corrupt(what(), "authentication failed (damaged, forged, or another repository's key)"));
        }
        Ok(sealed)
    }

    /// [`Crypto::open`] where the sealed bytes lie: they are overwritten, and the plaintext's
    /// range within `sealed` is returned.
    pub fn open_in_place(
        &self,
        aad: &[u8],
        sealed: &mut [u8],
        what: impl FnOnce() -> String,
    ) -> Result<std::ops::Range<usize>> {
        let Crypto::Encrypted(k) = self else { return Ok(0..sealed.len()) };
        if sealed.len() < SEAL_OVERHEAD {
            return Err(Error::corrupt(what(), "too short to be sealed"));
        }
        open_range(&k.enc, aad, sealed).ok_or_else(|| {
            Error::corrupt(what(), "authentication failed (damaged, forged, or another repository's key)")
        })
    }

    /// [`Crypto::open`] of a borrowed slice.
    pub fn open_slice(&self, aad: &[u8], sealed: &[u8], what: impl FnOnce() -> String) -> Result<Vec<u8>> {
        self.open(aad, sealed.to_vec(), what)
    }

    /// The chunker's gear table and its left-shifted twin (FastCDC 2020), from the chunker key;
    /// `None` for the fastcdc crate's default table.
    pub fn gear(&self) -> Option<Box<Gear>> {
        let Crypto::Encrypted(k) = self else { return None };
        let mut bytes = [0u8; 256 * 8];
        let mut h = blake3::Hasher::new_keyed(&k.chunker);
        h.update(b"rewind v2 fastcdc gear table");
        h.finalize_xof().fill(&mut bytes);
        let mut gear = Box::new(Gear { table: [0; 256], shifted: [0; 256] });
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            gear.table[i] = v;
            gear.shifted[i] = v << 1;
        }
        bytes.zeroize();
        Some(gear)
    }
}

/// A FastCDC gear table.
#[derive(Clone, PartialEq, Eq)]
pub struct Gear {
    pub table: [u64; 256],
    pub shifted: [u64; 256],
}

impl fmt::Debug for Gear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gear(..)")
    }
}

/// Seal `plain` under `key` (see the module docs), appending `nonce || ciphertext || tag` to `out`.
pub(crate) fn seal_with(key: &[u8; 32], aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let start = out.len();
    out.reserve(SEAL_OVERHEAD + plain.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let body = &mut out[start + NONCE_LEN..];
    let tag = object_key(key, &nonce)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(aad), body)
        .expect("AES-GCM seals any message under 64 GiB");
    out.extend_from_slice(tag.as_ref());
}

/// Open what [`seal_with`] made, in place: on success `buf` holds the plaintext; on failure
/// (false) its content is unspecified.
pub(crate) fn open_with(key: &[u8; 32], aad: &[u8], buf: &mut Vec<u8>) -> bool {
    let Some(plain) = open_range(key, aad, buf) else { return false };
    let n = plain.len();
    buf.copy_within(plain, 0);
    buf.truncate(n);
    true
}

/// [`open_with`] where the sealed bytes lie: the plaintext is left inside `buf`, at the range
/// returned, and not moved to its start (a caller that decompresses it needs no copy).
pub(crate) fn open_range(key: &[u8; 32], aad: &[u8], buf: &mut [u8]) -> Option<std::ops::Range<usize>> {
    if buf.len() < SEAL_OVERHEAD {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&buf[..NONCE_LEN]);
    let opened = object_key(key, &nonce).open_in_place(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(aad),
        &mut buf[NONCE_LEN..],
    );
    let n = opened.ok()?.len();
    Some(NONCE_LEN..NONCE_LEN + n)
}

/// The AES-256-GCM key of one object: a PRF of the encryption key and the object's nonce.
fn object_key(enc: &[u8; 32], nonce: &[u8; NONCE_LEN]) -> LessSafeKey {
    let mut h = blake3::Hasher::new_keyed(enc);
    h.update(b"rewind v2 object");
    h.update(nonce);
    let mut key = *h.finalize().as_bytes();
    let unbound = UnboundKey::new(&AES_256_GCM, &key).expect("32 bytes is an AES-256 key");
    key.zeroize();
    LessSafeKey::new(unbound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip_and_bind_their_context() {
        let c = Crypto::Encrypted(Box::new(MasterKey::random()));
        let sealed = c.seal(b"data:1234", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(c.open(b"data:1234", sealed.clone(), String::new).unwrap(), b"hello");
        // Another context, another key, a flipped bit anywhere: refused, never wrong bytes.
        assert!(c.open(b"data:1235", sealed.clone(), String::new).is_err());
        let other = Crypto::Encrypted(Box::new(MasterKey::random()));
        assert!(other.open(b"data:1234", sealed.clone(), String::new).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(c.open(b"data:1234", bad, String::new).is_err(), "flip at {i} accepted");
        }
        assert!(c.open(b"", vec![0; 10], || "x".into()).is_err());
        // Each seal draws a fresh nonce.
        assert_ne!(c.seal(b"a", b"same"), c.seal(b"a", b"same"));
    }

    #[test]
    fn ids_are_keyed_per_repository() {
        let (a, b) =
            (Crypto::Encrypted(Box::new(MasterKey::random())), Crypto::Encrypted(Box::new(MasterKey::random())));
        assert_ne!(a.id(b"content"), b.id(b"content"));
        assert_ne!(a.id(b"content"), Crypto::None.id(b"content"));
        assert_eq!(Crypto::None.id(b"content"), Hash::of(b"content"));
        let (ka, kb) = (MasterKey::random(), MasterKey::random());
        let shared = Crypto::Encrypted(Box::new(kb.with_content_identity_of(&ka)));
        assert_eq!(shared.id(b"x"), Crypto::Encrypted(Box::new(ka.clone())).id(b"x"));
        assert_eq!(shared.gear(), Crypto::Encrypted(Box::new(ka)).gear());
    }

    #[test]
    fn gear_tables_differ_per_key_and_match_their_shift() {
        let g = Crypto::Encrypted(Box::new(MasterKey::random())).gear().unwrap();
        let h = Crypto::Encrypted(Box::new(MasterKey::random())).gear().unwrap();
        assert_ne!(g.table, h.table);
        assert!(g.table.iter().zip(g.shifted.iter()).all(|(a, b)| a << 1 == *b));
        assert!(Crypto::None.gear().is_none());
    }

    #[test]
    fn master_keys_round_trip_through_bytes() {
        let k = MasterKey::random();
        assert_eq!(MasterKey::from_bytes(&k.to_bytes()).unwrap(), k);
        assert!(MasterKey::from_bytes(&[0; 95]).is_none());
    }
}
