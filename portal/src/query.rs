//! Query strings, decoded strictly: repeated keys kept in order (`path=a&path=b`), `+` is a
//! space, bad percent-encoding or non-UTF-8 is a 400.

use crate::error::{ApiError, ApiResult};

pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> ApiResult<Params> {
        let mut out = Vec::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((decode(k)?, decode(v)?));
        }
        if out.len() > 10_000 {
            return Err(ApiError::BadRequest("too many parameters".into()));
        }
        Ok(Params(out))
    }

    /// A single-valued parameter; given twice is an error.
    pub fn get(&self, key: &str) -> ApiResult<Option<&str>> {
        let mut it = self.0.iter().filter(|(k, _)| k == key);
        let first = it.next().map(|(_, v)| v.as_str());
        if it.next().is_some() {
            return Err(ApiError::BadRequest(format!("parameter {key} given twice")));
        }
        Ok(first)
    }

    pub fn require(&self, key: &str) -> ApiResult<&str> {
        self.get(key)?.ok_or_else(|| ApiError::BadRequest(format!("parameter {key} is required")))
    }

    /// Every parameter, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    pub fn number<T: std::str::FromStr>(&self, key: &str) -> ApiResult<Option<T>> {
        self.get(key)?
            .map(|v| v.parse().map_err(|_| ApiError::BadRequest(format!("parameter {key} must be a number"))))
            .transpose()
    }
}

fn decode(s: &str) -> ApiResult<String> {
    let bad = || ApiError::BadRequest("bad percent-encoding in the query".into());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let h = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(h, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::BadRequest("query is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let p = Params::parse(Some("path=%2Fa%2Fb&path=c+d&n=5")).unwrap();
        assert_eq!(p.all("path"), vec!["/a/b", "c d"]);
        assert!(p.get("path").is_err());
        assert_eq!(p.number::<u32>("n").unwrap(), Some(5));
        assert!(Params::parse(Some("a=%zz")).is_err());
        assert!(Params::parse(Some("a=%ff")).is_err());
        assert_eq!(Params::parse(Some("a=%00")).unwrap().get("a").unwrap(), Some("\0"));
    }
}
