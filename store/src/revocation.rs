//! Session revocations kept in the repository (`revoked/`), so that every process serving it
//! (the portal's replicas) refuses a session that one of them ended.
//!
//! A record is one file, written once and never changed: `revoked/<until>-<32 random hex>`, with
//! `{"magic": "rewind-revocation", "sid", "until"}` (sealed in version 2, like a lock). `until`
//! (Unix seconds) is in the name so that readers skip, and anyone removes, records that no longer
//! matter without reading them. Readers take no lock: records are only added and, once past
//! their `until`, removed.

use serde::{Deserialize, Serialize};

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::repo::Repository;

const MAGIC: &str = "rewind-revocation";

/// A session refused until `until` (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub sid: String,
    pub until: i64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    magic: String,
    sid: String,
    until: i64,
}

/// The `until` a record's name says; `None` for a name that is not a record's.
pub fn revocation_until(name: &str) -> Option<i64> {
    let (until, rand) = name.split_once('-')?;
    (rand.len() == 32 && rand.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    until.parse().ok()
}

impl Repository {
    /// Record a revocation (durable when this returns); returns the record's name.
    pub fn record_revocation(&self, r: &Revocation) -> Result<String> {
        let mut rand = [0u8; 16];
        crate::crypto::fill_random(&mut rand);
        let name = format!("{}-{}", r.until, hex::encode(rand));
        let json = serde_json::to_vec(&Record { magic: MAGIC.into(), sid: r.sid.clone(), until: r.until })
            .expect("a record serializes");
        let bytes = self.codec().encode_revocation(&name, &json);
        // A random name: no other writer uses it, so a plain put (which makes `revoked/` in a
        // repository created before it) will do.
        self.backend().put(FileKind::Revocation, &name, &bytes)?;
        Ok(name)
    }

    /// The names of the revocation records there are (see [`revocation_until`]).
    pub fn revocation_names(&self) -> Result<Vec<String>> {
        self.backend().list(FileKind::Revocation)
    }

    /// One record, checked against its name.
    pub fn load_revocation(&self, name: &str) -> Result<Revocation> {
        let bytes = self.backend().get(FileKind::Revocation, name)?;
        let plain = self.codec().decode_revocation(name, bytes)?;
        let r: Record =
            serde_json::from_slice(&plain).map_err(|e| Error::corrupt(format!("revocation {name}"), e.to_string()))?;
        if r.magic != MAGIC || revocation_until(name) != Some(r.until) {
            return Err(Error::corrupt(format!("revocation {name}"), "not a revocation record of this name"));
        }
        Ok(Revocation { sid: r.sid, until: r.until })
    }

    /// Remove a record (one whose `until` has passed); a missing one is no error.
    pub fn delete_revocation(&self, name: &str) -> Result<()> {
        self.backend().delete(FileKind::Revocation, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::NewKey;

    #[test]
    fn records_round_trip_in_both_versions_and_are_bound_to_their_name() {
        for encrypted in [false, true] {
            let key = if encrypted { NewKey::test() } else { NewKey::None };
            let dir = tempfile::tempdir().unwrap();
            let repo = Repository::init(&dir.path().join("r"), Default::default(), Default::default(), key).unwrap();
            assert!(repo.revocation_names().unwrap().is_empty(), "a repository without revoked/ has none");
            let r = Revocation { sid: "abc".into(), until: 1_900_000_000 };
            let name = repo.record_revocation(&r).unwrap();
            assert_eq!(revocation_until(&name), Some(r.until));
            assert_eq!(repo.revocation_names().unwrap(), vec![name.clone()]);
            assert_eq!(repo.load_revocation(&name).unwrap(), r);
            let raw = std::fs::read(dir.path().join("r/revoked").join(&name)).unwrap();
            assert_eq!(raw.windows(3).any(|w| w == b"abc"), !encrypted, "sealed only in version 2");
            // A record under another name (another `until`) is refused.
            let other = format!("1-{}", &name[name.find('-').unwrap() + 1..]);
            std::fs::write(dir.path().join("r/revoked").join(&other), &raw).unwrap();
            assert!(repo.load_revocation(&other).unwrap_err().is_corrupt());
            repo.delete_revocation(&name).unwrap();
            repo.delete_revocation(&name).unwrap();
            assert_eq!(repo.revocation_names().unwrap(), vec![other]);
        }
    }

    #[test]
    fn names_say_until() {
        assert_eq!(revocation_until("17-0123456789abcdef0123456789abcdef"), Some(17));
        assert_eq!(revocation_until("17-0123"), None);
        assert_eq!(revocation_until("x-0123456789abcdef0123456789abcdef"), None);
        assert_eq!(revocation_until(".tmp"), None);
    }
}
