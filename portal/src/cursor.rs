//! Paging cursors of search and deleted: the catalog position of the last result a user was
//! shown, sealed (ChaCha20-Poly1305, a key derived from the session key) and bound to who asked
//! and what they asked.
//!
//! Sealed, not only signed: a position holds the catalog's row number, which counts every
//! version catalogued before it, other users' too. Of a fixed length: the position is written in
//! fixed-width fields and padded to a multiple of [`BLOCK`] bytes before it is sealed, so a
//! cursor's length tells nothing of the numbers in it (a row number's digits would tell how many
//! versions were catalogued before it). A path-order position also holds the last result's
//! host, folder and name, which the user was just shown: only their length can make a cursor
//! longer, a block at a time. Bound (the binding is the AEAD's associated data): a cursor is
//! refused for another user, another acting-for, another endpoint or other filters; only
//! `limit` may change between pages. Any cursor that does not open is a 400.
//!
//! The row stays in the position (sealed) as the last tie-break: it is the order the catalog's
//! indexes serve a page in. Folder and name are the catalog's bytes (names need not be UTF-8).

use base64::Engine;
use rewind_catalog::Position;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::error::{ApiError, ApiResult};

/// The key cursors are sealed with.
pub struct CursorKey(LessSafeKey);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Positions are padded to a multiple of this many bytes.
pub const BLOCK: usize = 128;

/// The longest cursor text taken: a path-order position of a 16 KiB path.
const MAX_CURSOR: usize = 24 * 1024;

const SEEN: u8 = 1;
const PATH: u8 = 2;

/// A position in fixed-width fields (big-endian integers; strings after their u32 length),
/// padded with zeros to a multiple of [`BLOCK`].
fn encode(position: &Position) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOCK);
    match position {
        Position::Seen { seen, row, sub } => {
            out.push(SEEN);
            out.extend_from_slice(&seen.to_be_bytes());
            out.extend_from_slice(&row.to_be_bytes());
            out.extend_from_slice(&sub.to_be_bytes());
        }
        Position::Path { host, dir, name, first, row } => {
            out.push(PATH);
            out.extend_from_slice(&first.to_be_bytes());
            out.extend_from_slice(&row.to_be_bytes());
            for field in [host.as_bytes(), dir, name] {
                out.extend_from_slice(&(field.len() as u32).to_be_bytes());
                out.extend_from_slice(field);
            }
        }
    }
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

/// The position [`encode`] wrote (the padding must be zeros).
fn decode(data: &[u8]) -> Option<Position> {
    fn int(data: &mut &[u8]) -> Option<i64> {
        let (head, rest) = data.split_first_chunk::<8>()?;
        *data = rest;
        Some(i64::from_be_bytes(*head))
    }
    fn bytes(data: &mut &[u8]) -> Option<Vec<u8>> {
        let (len, rest) = data.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let (t, rest) = (rest.get(..len)?, &rest[len..]);
        *data = rest;
        Some(t.to_vec())
    }
    let (&tag, mut rest) = data.split_first()?;
    let position = match tag {
        SEEN => Position::Seen { seen: int(&mut rest)?, row: int(&mut rest)?, sub: int(&mut rest)? },
        PATH => {
            let (first, row) = (int(&mut rest)?, int(&mut rest)?);
            let host = String::from_utf8(bytes(&mut rest)?).ok()?;
            let (dir, name) = (bytes(&mut rest)?, bytes(&mut rest)?);
            Position::Path { host, dir, name, first, row }
        }
        _ => return None,
    };
    rest.iter().all(|&b| b == 0).then_some(position)
}

impl CursorKey {
    /// A key of its own, derived from the portal's session key.
    pub fn derive(secret: &[u8]) -> CursorKey {
        let key = blake3::derive_key("rewind portal 2026 catalog cursor key", secret);
        CursorKey(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key")))
    }

    /// `position` sealed for `binding`: opaque, URL-safe text.
    pub fn seal(&self, binding: &[u8], position: &Position) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut data = encode(position);
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
        if cursor.len() > MAX_CURSOR {
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
        decode(plain).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_open_only_for_their_binding() {
        let k = CursorKey::derive(&[7u8; 64]);
        let p = Position::Seen { seen: 1_800_000_000, row: 42, sub: 0 };
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

    #[test]
    fn cursors_have_a_fixed_length() {
        let k = CursorKey::derive(&[7u8; 64]);
        let seen = |seen, row| k.seal(b"b", &Position::Seen { seen, row, sub: row / 2 }).len();
        let one = seen(1, 1);
        assert_eq!(seen(1_800_000_000, 42), one);
        assert_eq!(seen(i64::MAX, i64::MAX), one);
        assert_eq!(seen(-1, 0), one);
        let path = |dir: &str, row| {
            let p = Position::Path { host: "fs".into(), dir: dir.into(), name: "a.txt".into(), first: 7, row };
            let c = k.seal(b"b", &p);
            assert_eq!(k.open(b"b", &c).unwrap(), p);
            c.len()
        };
        assert_eq!(path("/srv/home/alice", 3), one, "a short path fits the first block");
        assert_eq!(path("/srv/home/alice", 3_000_000_000), one, "the row does not count");
        assert_eq!(path(&"/x".repeat(200), 1), path(&"/y".repeat(200), 99), "a block at a time");
        assert!(path(&"/x".repeat(2000), 1) < MAX_CURSOR);
        // Padding that is not zeros, or a tag we do not know, is no cursor.
        let mut data = encode(&Position::Seen { seen: 1, row: 2, sub: 0 });
        assert_eq!(data.len(), BLOCK);
        *data.last_mut().unwrap() = 1;
        assert!(decode(&data).is_none());
        assert!(decode(&[9; BLOCK]).is_none());
    }
}
