//! The headers of a download: ranges, validators, a safe name and type, and hardening.

use axum::http::{HeaderMap, HeaderValue, header};

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size`: `Ok(None)` means "send everything"
/// (no Range; several ranges, which we may ignore; a header that is not a valid range, which
/// RFC 9110 says to ignore), `Err` means 416 (a valid range that lies outside the file).
pub(super) fn parse_range(h: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = h else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    let (start, end) = if a.is_empty() {
        // A suffix: the last n bytes.
        let Some(n) = b.parse::<u64>().ok().filter(|_| digits(b)) else { return Ok(None) };
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size)
    } else {
        let Some(start) = a.parse::<u64>().ok().filter(|_| digits(a)) else { return Ok(None) };
        let end = if b.is_empty() {
            size
        } else {
            let Some(last) = b.parse::<u64>().ok().filter(|_| digits(b)) else { return Ok(None) };
            if last < start {
                return Ok(None);
            }
            last.saturating_add(1).min(size)
        };
        (start, end)
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Whether an `If-None-Match` list holds `etag` (weak comparison, as RFC 9110 asks for it: `W/`
/// tags match their strong twin) or is `*`.
pub(super) fn none_match(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// A name as a downloaded file or a zip entry may carry it: backslashes (a separator to
/// Windows and its extractors), colons (drive letters, alternate streams), slashes and control
/// characters become `_`.
pub(crate) fn safe_name(name: &str) -> String {
    name.chars().map(|c| if c.is_control() || matches!(c, '\\' | '/' | ':') { '_' } else { c }).collect()
}

/// `attachment; filename="ascii"; filename*=UTF-8''percent-encoded`, of the [`safe_name`].
pub(crate) fn content_disposition(name: &str) -> HeaderValue {
    let name = safe_name(name);
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() && !matches!(c, '"' | '%' | ';') || c == ' ' { c } else { '_' })
        .collect();
    let mut enc = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{enc}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

pub(super) fn content_type(name: &str) -> HeaderValue {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let text = if mime.type_() == mime_guess::mime::TEXT && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// Headers every download carries: never rendered in the portal's origin.
pub(super) fn harden(h: &mut HeaderMap) {
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 100))));
        assert_eq!(parse_range(Some("bytes=95-200"), 100), Ok(Some((95, 100))));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        // Valid ranges outside the file: 416.
        assert!(parse_range(Some("bytes=100-"), 100).is_err());
        assert!(parse_range(Some("bytes=-0"), 100).is_err());
        // Headers that are no valid range are ignored: the whole file.
        for invalid in ["bytes=5-4", "bytes=x-", "bytes=-", "bytes=5", "bytes=+5-6", "bytes=0-1x", "items=0-1"] {
            assert_eq!(parse_range(Some(invalid), 100), Ok(None), "{invalid}");
        }
    }

    #[test]
    fn weak_etags_match_if_none_match() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("W/\"abc\"", tag));
        assert!(none_match("\"x\", W/\"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abcd\", W/\"ab\"", tag));
    }

    #[test]
    fn dispositions_are_safe() {
        let v = content_disposition("a\"b;c\r\n.txt");
        let s = v.to_str().unwrap();
        assert!(!s.contains('\r') && !s.contains('\n'));
        assert!(s.starts_with("attachment; filename=\"a_b_c__.txt\""), "{s}");
        assert!(s.contains("filename*=UTF-8''a%22b%3Bc__.txt"), "{s}");
        let s = content_disposition("..\\x\u{7}y.txt").to_str().unwrap().to_string();
        assert!(!s.contains('\\') && !s.contains("%5C") && !s.contains("%07"), "{s}");
        let s = content_disposition("résumé.pdf").to_str().unwrap().to_string();
        assert!(s.contains("filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"), "{s}");
        assert_eq!(content_type("x.txt").to_str().unwrap(), "text/plain; charset=utf-8");
        assert_eq!(content_type("x.unknownext").to_str().unwrap(), "application/octet-stream");
    }
}
