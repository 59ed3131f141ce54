//! Repository locks: a file in `locks/` per running writer, naming who holds it. Backups take a
//! shared lock (many may run at once); maintenance that deletes data must see none it cannot
//! prove stale. Readers never lock: they only read immutable files.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FileKind};
use crate::error::Result;
use crate::repo::Repository;

/// What a lock file says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub purpose: String,
    pub host: String,
    pub pid: u32,
    pub time: jiff::Timestamp,
}

/// A held lock; released on drop.
pub struct Lock {
    repo: Repository,
    name: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Lock {
    pub fn acquire(repo: &Repository, purpose: &str) -> Result<Lock> {
        let info = LockInfo {
            purpose: purpose.into(),
            host: hostname(),
            pid: std::process::id(),
            time: jiff::Timestamp::now(),
        };
        let name = format!(
            "{}-{}-{}-{}",
            info.purpose,
            std::process::id(),
            info.time.as_nanosecond(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let bytes = serde_json::to_vec(&info).expect("lock info serializes");
        repo.backend().put(FileKind::Lock, &name, &bytes)?;
        Ok(Lock { repo: repo.clone(), name })
    }
}

impl Lock {
    /// The lock file's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Err(e) = self.repo.backend().delete(FileKind::Lock, &self.name) {
            tracing::warn!("cannot remove lock {}: {e}", self.name);
        }
    }
}

/// The locks present, with whether each is provably stale (its process on this host is gone).
pub fn list_locks(repo: &Repository) -> Result<Vec<(String, Option<LockInfo>, bool)>> {
    let me = hostname();
    let mut out = Vec::new();
    for name in repo.backend().list(FileKind::Lock)? {
        let info: Option<LockInfo> =
            repo.backend().get(FileKind::Lock, &name).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let stale = match &info {
            // SAFETY: kill with signal 0 only checks that the process exists.
            Some(i) if i.host == me => (unsafe { libc::kill(i.pid as i32, 0) }) != 0,
            _ => false,
        };
        out.push((name, info, stale));
    }
    Ok(out)
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
