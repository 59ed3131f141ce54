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
    /// newest first, at most `limit`.
    pub fn acted_for(&self, login: &str, limit: usize) -> anyhow::Result<Vec<Record>> {
        use std::io::BufRead;
        let f = std::fs::File::open(&self.path)?;
        let mut out = Vec::new();
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            let Ok(r) = serde_json::from_str::<Record>(&line) else { continue };
            if r.for_user.as_deref() == Some(login) && r.actor != login {
                out.push(r);
            }
        }
        out.reverse();
        out.truncate(limit);
        Ok(out)
    }
}
