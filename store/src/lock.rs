//! Repository locks: a file in `locks/` per running writer or maintenance task, naming who holds
//! it. Readers never lock: they only read immutable files.
//!
//! Liveness is judged conservatively (FORMAT.md, "Locks"): a lock is **dead** only when it names
//! this host and `kill(pid, 0)` fails with ESRCH (EPERM means the process exists, as another
//! user's), **expired** when its holder has not refreshed it for [`STALE`], and **live**
//! otherwise, including a lock that cannot be parsed (its file's time counts as its refresh).
//! A held [`Lock`] is rewritten every [`REFRESH`] by a thread of its own.
//!
//! Whoever acts on an expired lock as if its holder were gone (a prune's sweep, `unlock`) first
//! writes a verdict, `pending/expired-<lock name>`. A holder that was only stopped (a suspended
//! laptop) finds it, through [`Lock::check_held`], before it commits: a backup then removes the
//! snapshot it just wrote and fails, so an expired lock never leaves a snapshot that cannot be
//! restored, whatever the clocks say.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::backend::FileKind;
use crate::error::{Error, Result};
pub use crate::format::LockInfo;
use crate::repo::Repository;

/// How often a held lock is rewritten.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);
/// A lock not refreshed for this long is expired.
pub const STALE: Duration = Duration::from_secs(30 * 60);

/// Purposes of locks.
pub const BACKUP: &str = "backup";
pub const COPY: &str = "copy";
pub const PRUNE: &str = "prune";
pub const REBUILD_INDEX: &str = "rebuild-index";

/// Prefix of the verdict files in `pending/`.
pub(crate) const VERDICT_PREFIX: &str = "expired-";

/// Refresh interval and expiry; the fault tests shorten them (only with `failpoints`).
pub(crate) fn times() -> (Duration, Duration) {
    #[cfg(feature = "failpoints")]
    if let Some((r, s)) = std::env::var("REWIND_LOCK_TIMES_MS").ok().as_deref().and_then(|v| v.split_once(','))
        && let (Ok(r), Ok(s)) = (r.parse(), s.parse())
    {
        return (Duration::from_millis(r), Duration::from_millis(s));
    }
    (REFRESH, STALE)
}

/// What a lock's holder is, as far as can be proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Alive, or not provably otherwise.
    Live,
    /// Unrefreshed for longer than [`STALE`].
    Expired,
    /// Its process on this host is gone (ESRCH).
    Dead,
}

/// A lock file as found.
#[derive(Clone, Debug)]
pub struct LockEntry {
    pub name: String,
    /// `None`: empty or unparsable.
    pub info: Option<LockInfo>,
    pub state: LockState,
    /// When it was last refreshed, as far as known (the later of its recorded time and its
    /// file's time).
    pub refreshed: Option<SystemTime>,
}

impl LockEntry {
    /// The lock's purpose: recorded, or, for an unparsable lock, from its name.
    pub fn purpose(&self) -> Option<&str> {
        match &self.info {
            Some(i) => Some(i.purpose.as_str()),
            None => [BACKUP, COPY, PRUNE, REBUILD_INDEX].into_iter().find(|p| self.name.starts_with(&format!("{p}-"))),
        }
    }

    pub fn describe(&self) -> String {
        let who = match &self.info {
            Some(i) => format!(
                "{} by pid {} on {}, taken {}",
                i.purpose,
                i.pid,
                i.host,
                i.time.strftime("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => "unreadable".into(),
        };
        let state = match self.state {
            LockState::Live => "live",
            LockState::Expired => "expired",
            LockState::Dead => "stale: its process is gone",
        };
        format!("{} ({who}; {state})", self.name)
    }
}

/// Tells the refresher thread to stop: a flag and its condition variable.
type Stop = Arc<(Mutex<bool>, Condvar)>;

/// A held lock; refreshed while held, released on drop.
pub struct Lock {
    repo: Repository,
    name: String,
    refresher: Option<(Stop, JoinHandle<()>)>,
    lost: Arc<AtomicBool>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Lock {
    /// Create a lock for `purpose` (shared: many may hold one at once).
    pub fn acquire(repo: &Repository, purpose: &str) -> Result<Lock> {
        let now = jiff::Timestamp::now();
        let info =
            LockInfo { purpose: purpose.into(), host: hostname(), pid: std::process::id(), time: now, refreshed: None };
        // Version 1 names say who holds the lock; version 2 names are random (names are not
        // sealed, contents are).
        let name = repo.codec().lock_name(|| {
            format!(
                "{purpose}-{}-{}-{}-{}",
                crate::backend::host_tag(),
                std::process::id(),
                now.as_nanosecond(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )
        });
        let backend = repo.backend();
        let bytes = repo.codec().encode_lock(&name, &info);
        match backend.put(FileKind::Lock, &name, &bytes) {
            Ok(()) => {}
            // A full disk: the reserve makes room for maintenance (FORMAT.md, "Full disk").
            Err(e) if crate::backend::is_no_space(&e) && purpose == PRUNE && backend.release_reserve() => {
                tracing::warn!("the filesystem is full; using the space kept in reserve for prune");
                backend.put(FileKind::Lock, &name, &bytes)?
            }
            Err(e) => return Err(e),
        }
        let mut lock = Lock { repo: repo.clone(), name, refresher: None, lost: Arc::new(AtomicBool::new(false)) };
        lock.start_refresher(info);
        Ok(lock)
    }

    /// Create a lock for `purpose` that no live lock of the `conflicts` purposes may share. Of
    /// several such locks taken at once, at most one is kept (each lists the others after
    /// creating its own; with read-after-write listings the later one sees the earlier). An
    /// expired conflicting lock is declared so (a verdict) and passed over.
    pub fn acquire_exclusive(repo: &Repository, purpose: &str, conflicts: &[&str]) -> Result<Lock> {
        let lock = Lock::acquire(repo, purpose)?;
        for e in list_locks(repo)? {
            if e.name == lock.name || e.state == LockState::Dead {
                continue;
            }
            let conflicting = e.purpose().is_none_or(|p| conflicts.contains(&p));
            if !conflicting {
                continue;
            }
            if e.state == LockState::Expired {
                declare_expired(repo, &e.name)?;
                continue;
            }
            return Err(Error::Locked(format!(
                "{} holds the repository; if it is not running, `rewind unlock` removes stale locks",
                e.describe()
            )));
        }
        Ok(lock)
    }

    /// The lock file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn start_refresher(&mut self, mut info: LockInfo) {
        let (every, _) = times();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (stop2, repo, name, lost) = (stop.clone(), self.repo.clone(), self.name.clone(), self.lost.clone());
        let spawned = std::thread::Builder::new().name("rewind-lock".into()).spawn(move || {
            let (m, cv) = &*stop2;
            let mut stopped = m.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // Checked before waiting too: the holder may have let go before we got here.
                if *stopped {
                    return;
                }
                let (g, _) = cv.wait_timeout(stopped, every).unwrap_or_else(|e| e.into_inner());
                stopped = g;
                if *stopped {
                    return;
                }
                // Never bring back a lock someone removed or declared expired.
                if verdict_exists(&repo, &name).unwrap_or(false)
                    || matches!(repo.backend().get(FileKind::Lock, &name), Err(Error::NotFound(_)))
                {
                    tracing::warn!("lock {name} was removed or declared expired by another process");
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                info.refreshed = Some(jiff::Timestamp::now());
                if let Err(e) = repo.backend().put(FileKind::Lock, &name, &repo.codec().encode_lock(&name, &info)) {
                    tracing::warn!("cannot refresh lock {name}: {e}");
                }
            }
        });
        match spawned {
            Ok(h) => self.refresher = Some((stop, h)),
            Err(e) => tracing::warn!("cannot start the lock refresher: {e}"),
        }
    }

    /// Fail if this lock was removed or declared expired: what this process relied on (that a
    /// sweep waits for it) may no longer hold. Call after committing (a backup: after writing
    /// its snapshot) and undo the commit on error.
    pub fn check_held(&self) -> Result<()> {
        let gone = self.lost.load(Ordering::SeqCst)
            || verdict_exists(&self.repo, &self.name)?
            || matches!(self.repo.backend().get(FileKind::Lock, &self.name), Err(Error::NotFound(_)));
        if gone {
            return Err(Error::Locked(format!(
                "lock {} was removed or declared expired by another process while this one ran",
                self.name
            )));
        }
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.refresher.take() {
            *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            stop.1.notify_all();
            let _ = h.join();
        }
        if let Err(e) = self.repo.backend().delete(FileKind::Lock, &self.name) {
            tracing::warn!("cannot remove lock {}: {e}", self.name);
        }
    }
}

/// Whether `pid` is provably not running on this host: `kill(pid, 0)` fails with ESRCH. EPERM
/// (another user's process) and pids that do not name one process (0 and below) are not proof.
pub fn pid_is_gone(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The state of a lock from what it says and when its file was written.
pub(crate) fn judge(
    info: Option<&LockInfo>,
    file_time: Option<SystemTime>,
    me: &str,
    now: SystemTime,
) -> (LockState, Option<SystemTime>) {
    let recorded = info.map(|i| SystemTime::from(i.last_refresh()));
    let refreshed = match (recorded, file_time) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if let Some(i) = info
        && i.host == me
        && i32::try_from(i.pid).is_ok_and(pid_is_gone)
    {
        return (LockState::Dead, refreshed);
    }
    let (_, stale) = times();
    let expired = refreshed.is_some_and(|t| now.duration_since(t).is_ok_and(|age| age > stale));
    (if expired { LockState::Expired } else { LockState::Live }, refreshed)
}

/// The locks present and the state of each.
pub fn list_locks(repo: &Repository) -> Result<Vec<LockEntry>> {
    let me = hostname();
    let now = SystemTime::now();
    let backend = repo.backend();
    let mut out = Vec::new();
    for name in backend.list(FileKind::Lock)? {
        let bytes = match backend.get(FileKind::Lock, &name) {
            Ok(b) => b,
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let file_time = backend.modified(FileKind::Lock, &name).ok();
        let info = repo.codec().decode_lock(&name, bytes).ok();
        let (state, refreshed) = judge(info.as_ref(), file_time, &me, now);
        out.push(LockEntry { name, info, state, refreshed });
    }
    Ok(out)
}

/// Record that the holder of lock `name` is treated as gone although its lock is there.
pub(crate) fn declare_expired(repo: &Repository, name: &str) -> Result<()> {
    let body = serde_json::json!({"magic": "rewind-lock-expired", "lock": name, "time": jiff::Timestamp::now()});
    repo.backend().put(FileKind::Pending, &format!("{VERDICT_PREFIX}{name}"), body.to_string().as_bytes())
}

fn verdict_exists(repo: &Repository, name: &str) -> Result<bool> {
    match repo.backend().get(FileKind::Pending, &format!("{VERDICT_PREFIX}{name}")) {
        Ok(_) => Ok(true),
        Err(Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove verdicts whose lock is gone (their holder has seen them or ended).
pub(crate) fn clean_verdicts(repo: &Repository, locks: &[LockEntry]) -> Result<()> {
    for name in repo.backend().list(FileKind::Pending)? {
        if let Some(lock) = name.strip_prefix(VERDICT_PREFIX)
            && !locks.iter().any(|l| l.name == lock)
        {
            repo.backend().delete(FileKind::Pending, &name)?;
        }
    }
    Ok(())
}

/// What [`unlock`] removed.
#[derive(Debug, Default)]
pub struct UnlockReport {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub tmp_removed: Vec<String>,
}

/// Remove stale locks (dead or expired), or with `all` every lock, and the files in `tmp/` left
/// by processes that are gone. A lock removed while its holder might still run is declared
/// expired first, so that holder fails instead of committing.
pub fn unlock(repo: &Repository, all: bool) -> Result<UnlockReport> {
    let mut report = UnlockReport::default();
    let locks = list_locks(repo)?;
    for l in &locks {
        if l.state == LockState::Live && !all {
            report.kept.push(l.describe());
            continue;
        }
        if l.state != LockState::Dead {
            declare_expired(repo, &l.name)?;
        }
        repo.backend().delete(FileKind::Lock, &l.name)?;
        report.removed.push(l.describe());
    }
    let (_, stale) = times();
    let now = SystemTime::now();
    for t in repo.backend().tmp_files()? {
        let old = t.modified.is_some_and(|m| now.duration_since(m).is_ok_and(|a| a > stale));
        if t.dead || old || all {
            repo.backend().remove_tmp(&t.name)?;
            report.tmp_removed.push(t.name);
        }
    }
    Ok(report)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(host: &str, pid: u32) -> LockInfo {
        LockInfo { purpose: "backup".into(), host: host.into(), pid, time: jiff::Timestamp::now(), refreshed: None }
    }

    #[test]
    fn only_esrch_on_this_host_is_dead() {
        let me = hostname();
        let now = SystemTime::now();
        // A pid that surely exists but is not ours to signal when unprivileged: init. As root it
        // is signalable; either way it is alive.
        assert_eq!(judge(Some(&info(&me, 1)), None, &me, now).0, LockState::Live);
        // pid 0 names a process group, not a process: not proof of anything.
        assert_eq!(judge(Some(&info(&me, 0)), None, &me, now).0, LockState::Live);
        // A pid beyond pid_max does not exist.
        assert_eq!(judge(Some(&info(&me, 999_999_999)), None, &me, now).0, LockState::Dead);
        // Another host's lock is never judged by pid.
        assert_eq!(judge(Some(&info("elsewhere", 999_999_999)), None, &me, now).0, LockState::Live);
        // Our own process is alive.
        assert_eq!(judge(Some(&info(&me, std::process::id())), None, &me, now).0, LockState::Live);
    }

    #[test]
    fn unrefreshed_and_unreadable_locks_expire() {
        let me = hostname();
        let now = SystemTime::now();
        let old = now - STALE - Duration::from_secs(60);
        let mut i = info("elsewhere", 7);
        i.time = jiff::Timestamp::try_from(old).unwrap();
        assert_eq!(judge(Some(&i), Some(old), &me, now).0, LockState::Expired);
        // Refreshed recently: live, though taken long ago.
        i.refreshed = Some(jiff::Timestamp::now());
        assert_eq!(judge(Some(&i), Some(old), &me, now).0, LockState::Live);
        // Unreadable: live until its file is old.
        assert_eq!(judge(None, Some(now), &me, now).0, LockState::Live);
        assert_eq!(judge(None, Some(old), &me, now).0, LockState::Expired);
    }
}
