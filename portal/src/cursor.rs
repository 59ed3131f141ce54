//! Paging cursors of search and deleted: the catalog position of the last result a user was
//! shown, sealed (ChaCha20-Poly1305, a key derived from the session key) and bound to who asked
//! and what they asked.
//!
//! Sealed, not only signed: a position holds the catalog's row number, which counts every
//! version catalogued before it, other users' too. Bound (the binding is the AEAD's associated
//! data): a cursor is refused for another user, another acting-for, another endpoint or other
//! filters; only `limit` may change between pages. Any cursor that does not open is a 400.

use base64::Engine;
use rewind_catalog::Position;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::error::{ApiError, ApiResult};

/// The key cursors are sealed with.
pub struct CursorKey(LessSafeKey);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

impl CursorKey {
    /// A key of its own, derived from the portal's session key.
    pub fn derive(secret: &[u8]) -> CursorKey {
        let key = blake3::derive_key("rewind portal 2026 catalog cursor key", secret);
        CursorKey(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key")))
    }

    /// `position` sealed for `binding`: opaque, URL-safe text.
    pub fn seal(&self, binding: &[u8], position: &Position) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut data = serde_json::to_vec(position).expect("a position serializes");
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(binding), &mut data)
            .expect("sealing in memory");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        B64.encode(out)
    }

    /// The position in a cursor sealed for `binding`.
    pub fn open(&self, binding: &[u8], cursor: &str) -> ApiResult<Position> {
        let bad = || ApiError::BadRequest("cursor: not a cursor of this query (start again without it)".into());
        if cursor.len() > 4096 {
            return Err(bad());
        }
        let raw = B64.decode(cursor.trim()).map_err(|_| bad())?;
        if raw.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let plain = self.0.open_in_place(nonce, Aad::from(binding), &mut sealed).map_err(|_| bad())?;
        serde_json::from_slice(plain).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_open_only_for_their_binding() {
        let k = CursorKey::derive(&[7u8; 64]);
        let p = Position::Seen { seen: 1_800_000_000, row: 42 };
        let c = k.seal(b"alice|search|q=x", &p);
        assert!(!c.contains("42") || !c.contains("1800000000"), "opaque: {c}");
        assert_eq!(k.open(b"alice|search|q=x", &c).unwrap(), p);
        assert!(k.open(b"bob|search|q=x", &c).is_err(), "another user");
        assert!(k.open(b"alice|search|q=y", &c).is_err(), "another query");
        assert!(CursorKey::derive(&[8u8; 64]).open(b"alice|search|q=x", &c).is_err(), "another key");
        for bad in ["", "1234", "18446744073709551616", "!!", &c[..c.len() - 2]] {
            let e = k.open(b"alice|search|q=x", bad).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{bad}");
        }
        // Two cursors of one position differ (a fresh nonce each), and both open.
        let again = k.seal(b"alice|search|q=x", &p);
        assert_ne!(again, c);
        assert_eq!(k.open(b"alice|search|q=x", &again).unwrap(), p);
    }
}
