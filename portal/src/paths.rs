//! Path inputs: normalized, and refused when they try anything (`.`/`..`, NUL, backslashes,
//! control characters, over-long). The raw request target is checked too
//! ([`raw_target_ok`]): encoded separators, dots or NUL in the URL path are refused before routing.

use crate::error::{ApiError, ApiResult};

const MAX_PATH: usize = 4096;

/// Split a path parameter into components: `/a//b/` -> `["a", "b"]`.
pub fn clean(p: &str) -> ApiResult<Vec<String>> {
    if p.len() > MAX_PATH {
        return Err(ApiError::BadRequest("path too long".into()));
    }
    if p.contains('\0') || p.contains('\\') || p.chars().any(|c| c.is_control()) {
        return Err(ApiError::BadRequest("path contains NUL, a backslash or a control character".into()));
    }
    let mut out = Vec::new();
    for c in p.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(ApiError::BadRequest("`.` and `..` are not allowed in paths".into()));
        }
        if c.len() > 255 {
            return Err(ApiError::BadRequest("path component too long".into()));
        }
        out.push(c.to_string());
    }
    Ok(out)
}

/// `["a", "b"]` -> `/a/b`.
pub fn join(comps: &[String]) -> String {
    let mut s = String::new();
    for c in comps {
        s.push('/');
        s.push_str(c);
    }
    if s.is_empty() { "/".into() } else { s }
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
        assert_eq!(clean("/a//b/").unwrap(), vec!["a", "b"]);
        assert!(clean("").unwrap().is_empty());
        assert!(clean("/").unwrap().is_empty());
        for bad in ["/a/../b", "..", "/a/./b", "a\0b", "a\\b", "a\nb"] {
            assert!(clean(bad).is_err(), "{bad:?}");
        }
        assert_eq!(join(&["a".into(), "b c".into()]), "/a/b c");
        assert_eq!(join(&[]), "/");
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
