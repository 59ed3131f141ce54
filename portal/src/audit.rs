//! The audit log: one JSON object per line, appended and flushed per record. Logins (with the
//! reason of a failure), helpdesk sessions and searches, downloads and archives (who, for whom,
//! host, snapshot, path, bytes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub time: String,
    /// `login`, `logout`, `act_start`, `act_stop`, `search`, `deleted`, `history`, `download`, `archive`.
    pub event: String,
    /// `ok` or the reason of a failure.
    pub outcome: String,
    /// Who did it (the login name typed, for failed logins).
    pub actor: String,
    /// For whom (helpdesk acting for a user); absent when acting for oneself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> anyhow::Result<AuditLog> {
        use anyhow::Context;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening audit log {}", path.display()))?;
        Ok(AuditLog { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    /// Append a record (the time is filled in).
    pub fn write(&self, mut r: Record) {
        r.time = jiff::Timestamp::now().to_string();
        let mut line = serde_json::to_vec(&r).expect("record serializes");
        line.push(b'\n');
        let mut f = self.file.lock().expect("audit lock");
        if let Err(e) = f.write_all(&line).and_then(|_| f.flush()) {
            tracing::error!("cannot write the audit log {}: {e}", self.path.display());
        }
    }

    /// Records of what others did for `login` (helpdesk sessions, their searches and downloads),
    /// newest first, at most `limit`. The log is read backwards from its end and at most
    /// [`ACCESS_SCAN_BYTES`] of it: the cost of a call does not grow with the log's age, and
    /// older records stay in the log for the administrators.
    pub fn acted_for(&self, login: &str, limit: usize) -> std::io::Result<Vec<Record>> {
        acted_for_in(&self.path, login, limit, ACCESS_SCAN_BYTES)
    }
}

/// How much of the audit log's end `/api/me/access` reads.
pub const ACCESS_SCAN_BYTES: u64 = 32 << 20;

/// Size of the blocks the log is read backwards in.
const BLOCK: usize = 256 * 1024;

fn acted_for_in(path: &Path, login: &str, limit: usize, max_bytes: u64) -> std::io::Result<Vec<Record>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let floor = len.saturating_sub(max_bytes);
    // Records are written by serde_json from the same struct: a line about `login` holds this
    // exact text, so most lines are skipped without being parsed.
    let needle = format!("\"for_user\":{}", serde_json::to_string(login).expect("a string serializes"));
    let mut out = Vec::new();
    let mut pos = len;
    // Bytes after the last newline seen so far (the start of a line whose beginning is
    // further back), kept across blocks.
    let mut carry: Vec<u8> = Vec::new();
    let check = |line: &[u8], out: &mut Vec<Record>| {
        if line.windows(needle.len()).any(|w| w == needle.as_bytes())
            && let Ok(r) = serde_json::from_slice::<Record>(line)
            && r.for_user.as_deref() == Some(login)
            && r.actor != login
        {
            out.push(r);
        }
    };
    while pos > floor && out.len() < limit {
        let n = (BLOCK as u64).min(pos - floor) as usize;
        pos -= n as u64;
        let mut block = vec![0u8; n];
        f.read_exact_at(&mut block, pos)?;
        block.extend_from_slice(&carry);
        // Every line but the first of the block is whole; the first may begin further back.
        let mut end = block.len();
        while let Some(nl) = block[..end].iter().rposition(|&b| b == b'\n') {
            check(&block[nl + 1..end], &mut out);
            if out.len() >= limit {
                break;
            }
            end = nl;
        }
        carry = block[..end].to_vec();
    }
    // At the start of the file the first line is whole; at the scan bound it is cut: skip it.
    if pos == 0 && out.len() < limit {
        check(&carry, &mut out);
    }
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(actor: &str, for_user: Option<&str>, event: &str) -> Record {
        Record {
            event: event.into(),
            outcome: "ok".into(),
            actor: actor.into(),
            for_user: for_user.map(str::to_string),
            ..Record::default()
        }
    }

    #[test]
    fn acted_for_reads_backwards_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        assert!(log.acted_for("alice", 10).unwrap().is_empty());
        // Enough records to span several blocks; every 10th is helpdesk acting for alice.
        let total = 30_000;
        for i in 0..total {
            let r = match i % 10 {
                0 => rec("hd", Some("alice"), &format!("download-{i}")),
                1 => rec("alice", Some("alice"), "search"),
                2 => rec("hd", Some("alicex"), "search"),
                _ => rec("bob", None, &format!("login-{i}")),
            };
            log.write(r);
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 3 * BLOCK as u64, "the test spans several blocks");

        let newest = log.acted_for("alice", 5).unwrap();
        let events: Vec<&str> = newest.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(events, ["download-29990", "download-29980", "download-29970", "download-29960", "download-29950"]);

        // Everything, when the bound covers the whole log: the first line too.
        let all = acted_for_in(&path, "alice", usize::MAX, u64::MAX).unwrap();
        assert_eq!(all.len(), total / 10);
        assert_eq!(all.last().unwrap().event, "download-0");
        assert!(all.iter().all(|r| r.for_user.as_deref() == Some("alice") && r.actor == "hd"));

        // The scan bound: only records in the last `max_bytes` are found, none half-read.
        let tail = acted_for_in(&path, "alice", usize::MAX, len / 3).unwrap();
        assert!(tail.len() < all.len() / 2 && tail.len() > all.len() / 4, "{}", tail.len());
        assert_eq!(tail[..], all[..tail.len()]);
        assert!(acted_for_in(&path, "nobody", 10, u64::MAX).unwrap().is_empty());
    }
}
