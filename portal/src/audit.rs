//! The audit log: one JSON object per line, appended and flushed per record. Logins (with the
//! reason of a failure), helpdesk sessions and searches, downloads and archives (who, for whom,
//! host, snapshot, path, bytes), and what was refused: paths answered "not found" to a signed-in
//! user, refused acts (rate-limited per actor and person acted for, so that probing cannot
//! flood the log, and probes made for someone always reach that person's access history).
//!
//! People are named by realm and login (`realm` + `actor`, `for_realm` + `for_user`): two realms
//! may each have an `alice`, and each sees only what was done for them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// The actor's realm (the realm asked for, or none, for failed logins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// For whom (helpdesk acting for a user); absent when acting for oneself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_realm: Option<String>,
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
    /// Refusals of this actor (for this person) left out of the log before this one (see
    /// `AuditLog::denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    denials: Mutex<HashMap<String, Denials>>,
}

/// Refusals written for one actor and person acted for in the current window, and those left out.
struct Denials {
    since: Instant,
    written: u32,
    left_out: u64,
}

/// At most this many refusals per actor, person acted for and window are written; the rest are
/// counted.
const DENIALS_PER_WINDOW: u32 = 20;
const DENIAL_WINDOW: Duration = Duration::from_secs(60);

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
        Ok(AuditLog { path: path.to_path_buf(), file: Mutex::new(file), denials: Mutex::new(HashMap::new()) })
    }

    /// Write a refusal (a path a user was told does not exist, a refused act), at most
    /// [`DENIALS_PER_WINDOW`] per actor, person acted for and minute; those left out are
    /// counted in the next one written (`suppressed`). The budget is the pair's: what an actor
    /// did on their own or for others never uses up what is written for someone else, so the
    /// first refusals of every helpdesk session reach that person's access history. A refused
    /// act uses the actor's own budget: the name in it was typed, and is nobody's yet. (The map
    /// holds at most 10,000 pairs between clean-ups; a pair is only kept while its window runs
    /// or it has refusals left out to report.)
    pub fn denied(&self, mut r: Record) {
        let acting_for = match r.event.as_str() {
            "denied" => (r.for_realm.as_deref().unwrap_or(""), r.for_user.as_deref().unwrap_or("")),
            _ => ("", ""),
        };
        let key = format!("{}\n{}\n{}\n{}", r.realm.as_deref().unwrap_or(""), r.actor, acting_for.0, acting_for.1);
        {
            let mut d = self.denials.lock();
            if d.len() > 10_000 {
                d.retain(|_, v| v.since.elapsed() < DENIAL_WINDOW || v.left_out > 0);
            }
            let e = d.entry(key).or_insert(Denials { since: Instant::now(), written: 0, left_out: 0 });
            if e.since.elapsed() >= DENIAL_WINDOW {
                e.since = Instant::now();
                e.written = 0;
            }
            if e.written >= DENIALS_PER_WINDOW {
                e.left_out += 1;
                return;
            }
            e.written += 1;
            if e.left_out > 0 {
                r.suppressed = Some(std::mem::take(&mut e.left_out));
            }
        }
        self.write(r);
    }

    /// Append a record (the time is filled in).
    pub fn write(&self, mut r: Record) {
        r.time = jiff::Timestamp::now().to_string();
        let mut line = serde_json::to_vec(&r).expect("record serializes");
        line.push(b'\n');
        let mut f = self.file.lock();
        if let Err(e) = f.write_all(&line).and_then(|_| f.flush()) {
            tracing::error!("cannot write the audit log {}: {e}", self.path.display());
        }
    }

    /// Records of what others did for `login` of `realm` (helpdesk sessions, their searches
    /// and downloads), newest first, at most `limit`. The log is read backwards from its end and
    /// at most [`ACCESS_SCAN_BYTES`] of it: the cost of a call does not grow with the log's age,
    /// and older records stay in the log for the administrators. Records written before they
    /// carried realms are someone's only when `legacy` says the login cannot be another's (the
    /// portal has one realm).
    pub fn acted_for(&self, realm: &str, login: &str, legacy: bool, limit: usize) -> std::io::Result<Vec<Record>> {
        acted_for_in(&self.path, &Person { realm, login, legacy }, limit, ACCESS_SCAN_BYTES)
    }
}

/// Whose access history is read.
struct Person<'a> {
    realm: &'a str,
    login: &'a str,
    legacy: bool,
}

impl Person<'_> {
    /// Whether a record is about this person, done by someone else (an act that was refused
    /// gave nobody access: it stays in the log, not in the person's history).
    fn concerns(&self, r: &Record) -> bool {
        if r.event == "act_start" && r.outcome != "ok" {
            return false;
        }
        let is = |realm: Option<&str>, login: &str| match realm {
            Some(realm) => realm == self.realm && login == self.login,
            None => self.legacy && login == self.login,
        };
        r.for_user.as_deref().is_some_and(|u| is(r.for_realm.as_deref(), u)) && !is(r.realm.as_deref(), &r.actor)
    }
}

/// How much of the audit log's end `/api/me/access` reads.
pub const ACCESS_SCAN_BYTES: u64 = 32 << 20;

/// Size of the blocks the log is read backwards in.
const BLOCK: usize = 256 * 1024;

fn acted_for_in(path: &Path, who: &Person, limit: usize, max_bytes: u64) -> std::io::Result<Vec<Record>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let floor = len.saturating_sub(max_bytes);
    // Records are written by serde_json from the same struct: a line about `login` holds this
    // exact text, so most lines are skipped without being parsed.
    let needle = format!("\"for_user\":{}", serde_json::to_string(who.login).expect("a string serializes"));
    let mut out = Vec::new();
    let mut pos = len;
    // Bytes after the last newline seen so far (the start of a line whose beginning is
    // further back), kept across blocks.
    let mut carry: Vec<u8> = Vec::new();
    let check = |line: &[u8], out: &mut Vec<Record>| {
        if line.windows(needle.len()).any(|w| w == needle.as_bytes())
            && let Ok(r) = serde_json::from_slice::<Record>(line)
            && who.concerns(&r)
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
            realm: Some("corp".into()),
            for_user: for_user.map(str::to_string),
            for_realm: for_user.map(|_| "corp".to_string()),
            ..Record::default()
        }
    }

    fn alice(legacy: bool) -> Person<'static> {
        Person { realm: "corp", login: "alice", legacy }
    }

    #[test]
    fn acted_for_reads_backwards_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        assert!(log.acted_for("corp", "alice", false, 10).unwrap().is_empty());
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

        let newest = log.acted_for("corp", "alice", false, 5).unwrap();
        let events: Vec<&str> = newest.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(events, ["download-29990", "download-29980", "download-29970", "download-29960", "download-29950"]);

        // Everything, when the bound covers the whole log: the first line too.
        let all = acted_for_in(&path, &alice(false), usize::MAX, u64::MAX).unwrap();
        assert_eq!(all.len(), total / 10);
        assert_eq!(all.last().unwrap().event, "download-0");
        assert!(all.iter().all(|r| r.for_user.as_deref() == Some("alice") && r.actor == "hd"));

        // The scan bound: only records in the last `max_bytes` are found, none half-read.
        let tail = acted_for_in(&path, &alice(false), usize::MAX, len / 3).unwrap();
        assert!(tail.len() < all.len() / 2 && tail.len() > all.len() / 4, "{}", tail.len());
        assert_eq!(tail[..], all[..tail.len()]);
        let nobody = Person { realm: "corp", login: "nobody", legacy: false };
        assert!(acted_for_in(&path, &nobody, 10, u64::MAX).unwrap().is_empty());
    }

    #[test]
    fn access_history_is_per_realm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.write(rec("hank", Some("alice"), "for-corp-alice"));
        log.write(Record { for_realm: Some("local".into()), ..rec("hank", Some("alice"), "for-local-alice") });
        log.write(Record { realm: None, for_realm: None, ..rec("hank", Some("alice"), "legacy") });
        // Another realm's alice acting for this one is someone else.
        log.write(Record { realm: Some("local".into()), ..rec("alice", Some("alice"), "by-local-alice") });
        let events = |realm: &str, legacy: bool| -> Vec<String> {
            let who = Person { realm, login: "alice", legacy };
            acted_for_in(&path, &who, 10, u64::MAX).unwrap().into_iter().map(|r| r.event).collect()
        };
        assert_eq!(events("corp", false), ["by-local-alice", "for-corp-alice"]);
        assert_eq!(events("local", false), ["for-local-alice"]);
        assert_eq!(events("corp", true), ["by-local-alice", "legacy", "for-corp-alice"]);
    }

    #[test]
    fn denials_are_rate_limited_per_actor_and_person() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let denial = |actor: &str, for_user: Option<&str>, what: &str| Record {
            outcome: what.to_string(),
            ..rec(actor, for_user, "denied")
        };
        for i in 0..50 {
            log.denied(denial("mallory", None, &format!("probe-{i}")));
        }
        // Refused acts name whom they tried to act for, but use the actor's own budget.
        log.denied(Record { outcome: "refused: not helpdesk".into(), ..rec("mallory", Some("bob"), "act_start") });
        log.denied(denial("alice", None, "alice-probe"));
        // The actor's own budget is spent; what he does for alice has a budget of its own.
        for i in 0..3 {
            log.denied(denial("mallory", Some("alice"), &format!("for-alice-{i}")));
        }
        let lines: Vec<Record> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let own = |r: &&Record| r.actor == "mallory" && (r.for_user.is_none() || r.event == "act_start");
        assert_eq!(lines.iter().filter(own).count(), DENIALS_PER_WINDOW as usize);
        assert_eq!(lines.iter().filter(|r| r.for_user.as_deref() == Some("alice")).count(), 3);
        assert_eq!(lines.iter().filter(|r| r.actor == "alice").count(), 1, "another actor has a budget of its own");
        // The next window's first refusal says how many were left out.
        log.denials.lock().get_mut("corp\nmallory\n\n").unwrap().since -= DENIAL_WINDOW;
        log.denied(denial("mallory", None, "later"));
        let last: Record =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().last().unwrap()).unwrap();
        assert_eq!((last.outcome.as_str(), last.suppressed), ("later", Some(31)));
    }
}
