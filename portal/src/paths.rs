//! Path inputs: normalized, and refused when they try anything (`.`/`..`, NUL, backslashes,
//! control characters, over-long). The raw request target is checked too
//! ([`raw_target_ok`]): encoded separators, dots or NUL in the URL path are refused before routing.
//!
//! A path is given as text (`path=/a/b`) or, for names that text cannot carry, as the URL-safe
//! base64 of its raw bytes (`path_b64=L2EvYg`); both go through the same checks, byte for byte,
//! except that only `path_b64` may hold backslashes and control characters: names may (Linux
//! allows every byte but `/` and NUL), and such a name must still be downloadable, while a
//! typed path with them is far more likely an attack on something downstream than a file.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::error::{ApiError, ApiResult};
use crate::query::Params;

const MAX_PATH: usize = 4096;

/// URL-safe base64, written without padding, read with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `path_b64` form of raw path bytes.
pub fn to_b64(path: &[u8]) -> String {
    B64.encode(path)
}

/// Whether a path holds a backslash or a control character: as text, it is refused.
fn has_odd_bytes(p: &[u8]) -> bool {
    // Control characters as bytes: C0 and DEL (bytes of C1 characters in UTF-8 are caught as
    // characters, like the text form does; in other encodings they are just bytes).
    p.contains(&b'\\')
        || p.iter().any(|&b| b < 0x20 || b == 0x7f)
        || p.utf8_chunks().any(|c| c.valid().chars().any(|c| c.is_control()))
}

/// Whether a path can only be given as `path_b64` (not UTF-8, a backslash, a control character):
/// listings and results then carry it in that form too.
pub fn needs_b64(p: &[u8]) -> bool {
    std::str::from_utf8(p).is_err() || has_odd_bytes(p)
}

/// Split a path into checked components: `/a//b/` -> `["a", "b"]` (names need not be UTF-8).
pub fn clean_bytes(p: &[u8]) -> ApiResult<Vec<Vec<u8>>> {
    if has_odd_bytes(p) {
        return Err(ApiError::BadRequest("path contains NUL, a backslash or a control character".into()));
    }
    clean_raw(p)
}

/// [`clean_bytes`] for the raw bytes of `path_b64`: backslashes and control characters are
/// names like any other; NUL is not.
fn clean_raw(p: &[u8]) -> ApiResult<Vec<Vec<u8>>> {
    if p.len() > MAX_PATH {
        return Err(ApiError::BadRequest("path too long".into()));
    }
    if p.contains(&0) {
        return Err(ApiError::BadRequest("path contains NUL".into()));
    }
    let mut out = Vec::new();
    for c in p.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if c == b"." || c == b".." {
            return Err(ApiError::BadRequest("`.` and `..` are not allowed in paths".into()));
        }
        if c.len() > 255 {
            return Err(ApiError::BadRequest("path component too long".into()));
        }
        out.push(c.to_vec());
    }
    Ok(out)
}

/// The path named by `key` or `key_b64` (giving both is an error), as checked components.
pub fn param(p: &Params, key: &str) -> ApiResult<Option<Vec<Vec<u8>>>> {
    let b64_key = format!("{key}_b64");
    match (p.get(key)?, p.get(&b64_key)?) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(format!("give {key} or {b64_key}, not both"))),
        (Some(text), None) => Ok(Some(clean_bytes(text.as_bytes())?)),
        (None, Some(b64)) => Ok(Some(clean_raw(&decode_b64(&b64_key, b64)?)?)),
        (None, None) => Ok(None),
    }
}

/// Every `key` and `key_b64` parameter (text ones first), as checked components.
pub fn params_all(p: &Params, key: &str) -> ApiResult<Vec<Vec<Vec<u8>>>> {
    let b64_key = format!("{key}_b64");
    let mut out = Vec::new();
    for text in p.all(key) {
        out.push(clean_bytes(text.as_bytes())?);
    }
    for b64 in p.all(&b64_key) {
        out.push(clean_raw(&decode_b64(&b64_key, b64)?)?);
    }
    Ok(out)
}

fn decode_b64(key: &str, v: &str) -> ApiResult<Vec<u8>> {
    if v.len() > MAX_PATH * 4 / 3 + 4 {
        return Err(ApiError::BadRequest("path too long".into()));
    }
    B64.decode(v.trim()).map_err(|_| ApiError::BadRequest(format!("{key} is not URL-safe base64")))
}

/// Components -> an absolute path as bytes (`b""` for the root).
pub fn join_bytes(comps: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in comps {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

/// The URL path (not the query) of a request target may not hide separators, dots or NUL in
/// percent-encoding, nor contain dot segments.
pub fn raw_target_ok(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    if ["%2f", "%5c", "%00", "%2e", "\\"].iter().any(|bad| lower.contains(bad)) {
        return false;
    }
    !path.split('/').any(|seg| seg == ".." || seg == ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean_bytes(b"/a//b/").unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(clean_bytes(b"").unwrap().is_empty());
        assert!(clean_bytes(b"/").unwrap().is_empty());
        for bad in ["/a/../b", "..", "/a/./b", "a\0b", "a\\b", "a\nb"] {
            assert!(clean_bytes(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(join_bytes(&[b"a".to_vec(), b"b c".to_vec()]), b"/a/b c");
        assert_eq!(join_bytes(&[]), b"");
        assert_eq!(clean_bytes(b"/a/\xff\xfe/b").unwrap(), vec![b"a".to_vec(), b"\xff\xfe".to_vec(), b"b".to_vec()]);
        for bad in [&b"/a/../b"[..], b"a\0b", b"a\\b", b"a\x7fb", "a\u{85}b".as_bytes()] {
            assert!(clean_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn b64_params() {
        let raw = b"/home/alice/caf\xe9.txt";
        let enc = to_b64(raw);
        assert!(!enc.contains(['+', '/', '=']), "{enc}");
        let q = format!("path_b64={enc}");
        let comps = param(&Params::parse(Some(&q)).unwrap(), "path").unwrap().unwrap();
        assert_eq!(join_bytes(&comps), raw);
        // Padded input is fine too; both forms at once, or bad base64, are not.
        let padded = base64::engine::general_purpose::URL_SAFE.encode(raw);
        let q = format!("path_b64={padded}");
        assert_eq!(param(&Params::parse(Some(&q)).unwrap(), "path").unwrap().unwrap(), comps);
        let q = format!("path=/a&path_b64={enc}");
        assert!(param(&Params::parse(Some(&q)).unwrap(), "path").is_err());
        assert!(param(&Params::parse(Some("path_b64=%21%21")).unwrap(), "path").is_err());
        let dots = to_b64(b"/a/../b");
        assert!(param(&Params::parse(Some(&format!("path_b64={dots}"))).unwrap(), "path").is_err());
        let q = format!("path=/x&path_b64={enc}&path_b64={enc}");
        assert_eq!(params_all(&Params::parse(Some(&q)).unwrap(), "path").unwrap().len(), 3);
    }

    #[test]
    fn raw_targets() {
        assert!(raw_target_ok("/api/browse"));
        assert!(!raw_target_ok("/api/%2e%2e%2fetc"));
        assert!(!raw_target_ok("/api/a%2Fb"));
        assert!(!raw_target_ok("/api/../x"));
        assert!(!raw_target_ok("/api/a%00"));
    }
}
