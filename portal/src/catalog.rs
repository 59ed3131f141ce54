//! The catalog behind search, deleted and history (`rewind-catalog`, SQLite). The portal only
//! reads it through a fixed pool of read-only connections, used from blocking threads (a
//! connection is not shared between threads; WAL lets them all read at once, also during a
//! sync). The pool is opened once and kept: a query never pays for opening a connection or
//! preparing its statements again, and under load requests wait for a free connection rather
//! than opening more (the machine has only so many cores; SQLite's page cache is per
//! connection). With `catalog_sync_secs` the portal also brings the catalog up to date itself,
//! in the background from its start and then periodically, on a connection of its own. Without
//! a catalog file those endpoints answer 503 until one appears (it is opened on first use).
//!
//! By default the catalog is a local cache of each portal (replica), which keeps it current
//! itself: the first of `catalog.sqlite`, `catalog-portal-1.sqlite`... in the repository's cache
//! folder whose `<file>.portal` no other portal holds locked (an exclusive `flock`, held while
//! the portal runs): replicas sharing a host and a cache folder never write one file, and a
//! restarted replica finds a catalog of its own to bring up to date. `catalog.sqlite` is also
//! the file that backups and `rewind catalog` commands run as the same user with the same cache
//! folder update (a writer notices another's commits: see the catalog's `caches_version`).
//! With `catalog = FILE`, `catalog_sync_secs = 0` leaves that file to whoever else writes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rewind_catalog::{FileVersion, Page, Query};

use rewind_store::{SingleFlight, View};

use crate::config::Config;
use crate::error::{ApiError, ApiResult};

pub struct Catalog {
    path: PathBuf,
    /// This portal's claim on `path` (the default catalog), held while it runs.
    _claim: Option<std::fs::File>,
    /// Why there is no catalog (its folder was refused): nothing is read from `path` then.
    refused: Option<String>,
    /// The first build of a new catalog is running: nothing is read from it yet.
    building: Arc<AtomicBool>,
    pool: Mutex<Pool>,
    /// Signalled when a connection is put back.
    freed: Condvar,
    /// Recent pages by query, shared by all users (filtered per user afterwards): the same
    /// "recently deleted" or search page asked by many is read from SQLite once per `ttl`.
    cache: Mutex<HashMap<String, CachedPage>>,
    ttl: Duration,
    /// Queries running now, by the same key: a request asking what another is already asking
    /// waits for that answer instead of running the query again (also without the cache: the
    /// answer is no older than the request). Many users opening "recently deleted" at once, or
    /// the cache expiring under load, cost one query, not one each.
    inflight: SingleFlight<String, Arc<Page<FileVersion>>>,
}

const CACHE_ENTRIES: usize = 4096;

/// Idle connections, and how many exist (idle or in use).
#[derive(Default)]
struct Pool {
    idle: Vec<rewind_catalog::Catalog>,
    open: usize,
}

/// A connection taken from the pool, put back when dropped (also if the query panicked).
struct Lease<'a> {
    catalog: &'a Catalog,
    conn: Option<rewind_catalog::Catalog>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.catalog.pool.lock().idle.push(c);
            self.catalog.freed.notify_one();
        }
    }
}

/// How many connections the pool holds: a few per core, so that a query waiting on I/O does
/// not idle a core, and no more (each has its own page cache).
fn pool_size() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) * 2
}

type CachedPage = (Instant, Arc<Page<FileVersion>>);

fn catalog_error(e: rewind_catalog::Error) -> ApiError {
    match e {
        rewind_catalog::Error::InvalidInput(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(format!("catalog: {other}")),
    }
}

impl Catalog {
    /// The configured (or default) catalog, synced in the background if `catalog_sync_secs`
    /// says so. The default one is this portal's own, in its cache folder, and always synced.
    /// Nothing about the catalog stops the portal: without one, search, deleted and history
    /// answer 503 and browsing and downloads work.
    pub fn open(config: &Config, view: Arc<View>) -> anyhow::Result<Catalog> {
        let repo = view.repo().repo();
        let default_secs = if repo.local_path().is_none() { 300 } else { 60 };
        let mut refused = None;
        let (path, claim, sync_secs) = match &config.catalog {
            // A file someone names: 0 means it is kept current by whoever else writes it. Its
            // folder must be this user's alone, for reading as for writing.
            Some(p) => {
                if let Err(e) = rewind_catalog::Catalog::check_folder(p) {
                    tracing::error!("no catalog ({e}): search, deleted and history answer 503");
                    refused = Some(e.to_string());
                }
                (p.clone(), None, config.catalog_sync_secs.unwrap_or(default_secs))
            }
            None => {
                let secs = match config.catalog_sync_secs {
                    Some(0) => {
                        tracing::warn!(
                            "catalog_sync_secs = 0 is for a `catalog` file that backups update; without one the portal keeps a catalog of its own and brings it up to date every {default_secs} s"
                        );
                        default_secs
                    }
                    s => s.unwrap_or(default_secs),
                };
                match repo.private_cache_dir().map_err(anyhow::Error::from).and_then(|d| claim_catalog(&d)) {
                    Ok((p, claim)) => (p, Some(claim), secs),
                    Err(e) => {
                        tracing::error!(
                            "no catalog ({e:#}): search, deleted and history answer 503 until the portal is restarted with REWIND_CACHE_DIR or `catalog` set to a folder of its user's alone"
                        );
                        refused = Some(format!("{e:#}"));
                        (rewind_catalog::Catalog::default_path(repo), None, 0)
                    }
                }
            }
        };
        // Syncs run in the background from the start, so that no catalog work (a first build of
        // a large repository, a rebuild after an upgrade) keeps logins, browsing and downloads
        // waiting. A catalog that exists answers meanwhile, as between syncs; without one, the
        // catalog endpoints answer 503 until a sync has succeeded.
        let building = Arc::new(AtomicBool::new(false));
        let retire = config.catalog.is_none();
        if sync_secs > 0 && refused.is_none() {
            let mut syncer = Syncer { path: path.clone(), repo_id: repo.config().id.to_hex(), cat: None };
            // A file that is not a usable catalog (another schema after an upgrade, another
            // repository's, damaged) or a first build cut short (a restart midway) is rebuilt or
            // completed by the first sync: not read until then.
            if !rewind_catalog::Catalog::is_complete(&path) {
                building.store(true, Ordering::Relaxed);
                tracing::info!("building the catalog at {} in the background", path.display());
            }
            let every = Duration::from_secs(sync_secs);
            let view = view.clone();
            let built = building.clone();
            std::thread::Builder::new().name("catalog-sync".into()).spawn(move || {
                // An older rewind's catalog in a local repository is moved out first (a copy,
                // once): it may become this portal's.
                if retire {
                    rewind_catalog::Catalog::retire_legacy(view.repo().repo());
                }
                loop {
                    // A panic in one sync (a bug) must not end syncing for the portal's life.
                    let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| syncer.sync(&view)));
                    match synced {
                        Ok(Ok(n)) => {
                            if built.swap(false, Ordering::Relaxed) || n > 0 {
                                tracing::info!("catalog synced: {n} snapshots applied");
                            }
                        }
                        Ok(Err(e)) => tracing::warn!("catalog sync failed ({e}); retried in {sync_secs} s"),
                        Err(_) => {
                            tracing::error!("catalog sync panicked; retried in {sync_secs} s");
                            syncer.cat = None;
                        }
                    }
                    std::thread::sleep(every);
                    view.refresh_if_stale();
                }
            })?;
        }
        if refused.is_none() && sync_secs == 0 && !path.exists() {
            // Not an error: it is opened on first use once `rewind catalog rebuild` made it.
            tracing::warn!(
                "no catalog at {} yet: search, deleted and history answer 503 until `rewind catalog rebuild` (or catalog_sync_secs) creates it",
                path.display()
            );
        }
        Ok(Catalog {
            path,
            _claim: claim,
            refused,
            building,
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            cache: Mutex::new(HashMap::new()),
            ttl: Duration::from_millis(config.catalog_cache_ms),
            inflight: SingleFlight::default(),
        })
    }

    /// The catalog file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Whether there is a catalog to read.
    pub fn available(&self) -> bool {
        self.refused.is_none() && !self.building() && (self.pool.lock().open > 0 || self.path.exists())
    }

    /// Whether the first build of a new catalog is running.
    pub fn building(&self) -> bool {
        self.building.load(Ordering::Relaxed)
    }

    /// Run `f` on a pooled read-only connection (call from a blocking thread).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&rewind_catalog::Catalog) -> Result<T, rewind_catalog::Error>,
    ) -> ApiResult<T> {
        let lease = Lease { catalog: self, conn: Some(self.take()?) };
        f(lease.conn.as_ref().expect("leased")).map_err(catalog_error)
    }

    /// An idle connection, a new one while the pool is not full, or else the next one put back.
    fn take(&self) -> ApiResult<rewind_catalog::Catalog> {
        // The reason (a path, uids) is in the log, not for users.
        if self.refused.is_some() {
            return Err(ApiError::Unavailable("catalog not available".into()));
        }
        if self.building() {
            return Err(ApiError::Unavailable("catalog being built".into()));
        }
        let mut pool = self.pool.lock();
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.open < pool_size() {
                if !self.path.exists() {
                    return Err(ApiError::Unavailable("catalog not available".into()));
                }
                pool.open += 1;
                drop(pool);
                // A catalog of another schema (after an upgrade) is rebuilt by the next sync:
                // until then the endpoints are unavailable, not the request bad.
                let opened = rewind_catalog::Catalog::open_read_only(&self.path).map_err(|e| match e {
                    // Another schema or repository's: the next sync rebuilds it. The reason
                    // (a path) is for the log, not for users.
                    rewind_catalog::Error::InvalidInput(m) => {
                        tracing::warn!("catalog: {m}");
                        ApiError::Unavailable("catalog being built".into())
                    }
                    other => catalog_error(other),
                });
                if opened.is_err() {
                    self.pool.lock().open -= 1;
                    self.freed.notify_one();
                }
                return opened;
            }
            self.freed.wait(&mut pool);
        }
    }

    /// A page of `find` (or `deleted`), through the shared cache.
    pub fn page(&self, q: &Query, deleted: bool) -> ApiResult<Arc<Page<FileVersion>>> {
        let key = format!("{deleted}|{q:?}");
        if !self.ttl.is_zero()
            && let Some((at, page)) = self.cache.lock().get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(page.clone());
        }
        let query = || self.with(|c| if deleted { c.deleted(q) } else { c.find(q) }).map(Arc::new);
        // A failed query is not shared: a waiter asks for itself, to answer with its own error.
        self.inflight.run(key.clone(), || {
            let page = query()?;
            if !self.ttl.is_zero() {
                let mut cache = self.cache.lock();
                if cache.len() >= CACHE_ENTRIES {
                    let ttl = self.ttl;
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                    if cache.len() >= CACHE_ENTRIES {
                        cache.clear();
                    }
                }
                cache.insert(key.clone(), (Instant::now(), page.clone()));
            }
            Ok(page)
        })
    }
}

/// The portal's writing connection to its catalog, opened when first needed (and again after
/// a failure to open).
struct Syncer {
    path: PathBuf,
    repo_id: String,
    cat: Option<rewind_catalog::Catalog>,
}

impl Syncer {
    /// Bring the catalog up to date; the number of snapshots applied.
    fn sync(&mut self, view: &View) -> rewind_catalog::Result<u64> {
        let cat = match &mut self.cat {
            Some(c) => c,
            None => self.cat.insert(rewind_catalog::Catalog::open(&self.path, &self.repo_id)?),
        };
        Ok(cat.sync_view(view)?.snapshots_applied)
    }
}

/// The first catalog file in `dir` that no other portal claims, and the claim: `catalog.sqlite`
/// (also the command line's default), then `catalog-portal-<n>.sqlite`.
fn claim_catalog(dir: &std::path::Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    // The catalog holds every path in the clear: the folder is this user's alone.
    rewind_store::private_folder(dir)?;
    for n in 0.. {
        let name = if n == 0 { "catalog.sqlite".to_string() } else { format!("catalog-portal-{n}.sqlite") };
        let path = dir.join(name);
        let mut lock = path.clone().into_os_string();
        lock.push(".portal");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock)
            .with_context(|| format!("opening {}", std::path::Path::new(&lock).display()))?;
        match file.try_lock() {
            Ok(()) => return Ok((path, file)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", std::path::Path::new(&lock).display()));
            }
        }
    }
    unreachable!("some number is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Portals sharing a cache folder each claim a catalog of their own; a claim given up (the
    /// portal ended) is taken again by the next.
    #[test]
    fn replicas_claim_catalogs_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache/id");
        let (a, claim_a) = claim_catalog(&cache).unwrap();
        let (b, claim_b) = claim_catalog(&cache).unwrap();
        assert_eq!(a, cache.join("catalog.sqlite"));
        assert_eq!(b, cache.join("catalog-portal-1.sqlite"));
        drop(claim_a);
        let (again, _claim) = claim_catalog(&cache).unwrap();
        assert_eq!(again, a);
        let (c, _claim_c) = claim_catalog(&cache).unwrap();
        assert_eq!(c, cache.join("catalog-portal-2.sqlite"));
        drop(claim_b);
    }
}
