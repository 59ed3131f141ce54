//! The catalog behind search, deleted and history (`rewind-catalog`, SQLite). The portal only
//! reads it through a small pool of read-only connections (a connection is not shared between
//! threads); with `catalog_sync_secs` it also brings it up to date itself, at start and then
//! periodically, on a connection of its own. Without a catalog file those endpoints answer 503
//! until one appears (it is opened on first use).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rewind_catalog::{FileVersion, Page, Query};

use rewind_store::View;

use crate::config::Config;
use crate::error::{ApiError, ApiResult};

pub struct Catalog {
    path: PathBuf,
    pool: Mutex<Vec<rewind_catalog::Catalog>>,
    /// Recent pages by query, shared by all users (filtered per user afterwards): the same
    /// "recently deleted" or search page asked by many is read from SQLite once per `ttl`.
    cache: Mutex<HashMap<String, CachedPage>>,
    ttl: Duration,
}

const CACHE_ENTRIES: usize = 4096;

type CachedPage = (Instant, Arc<Page<FileVersion>>);

fn catalog_error(e: rewind_catalog::Error) -> ApiError {
    match e {
        rewind_catalog::Error::InvalidInput(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(format!("catalog: {other}")),
    }
}

impl Catalog {
    /// The configured (or default) catalog, synced first if `catalog_sync_secs` says so.
    pub fn open(config: &Config, view: Arc<View>) -> anyhow::Result<Catalog> {
        let repo = view.repo().repo();
        let path = config.catalog.clone().unwrap_or_else(|| rewind_catalog::Catalog::default_path(repo.path()));
        if config.catalog_sync_secs > 0 {
            let mut cat = rewind_catalog::Catalog::open(&path, &repo.config().id.to_hex())?;
            let report = cat.sync(view.repo())?;
            tracing::info!("catalog synced: {} snapshots applied", report.snapshots_applied);
            let every = Duration::from_secs(config.catalog_sync_secs);
            let view = view.clone();
            std::thread::Builder::new().name("catalog-sync".into()).spawn(move || {
                loop {
                    std::thread::sleep(every);
                    view.refresh_if_stale();
                    if let Err(e) = cat.sync(view.repo()) {
                        tracing::warn!("catalog sync failed: {e}");
                    }
                }
            })?;
        }
        if !path.exists() {
            // Not an error: it is opened on first use once `rewind catalog rebuild` made it.
            tracing::warn!(
                "no catalog at {} yet: search, deleted and history answer 503 until `rewind catalog rebuild` (or catalog_sync_secs) creates it",
                path.display()
            );
        }
        Ok(Catalog {
            path,
            pool: Mutex::new(Vec::new()),
            cache: Mutex::new(HashMap::new()),
            ttl: Duration::from_millis(config.catalog_cache_ms),
        })
    }

    /// Whether there is a catalog to read.
    pub fn available(&self) -> bool {
        !self.pool.lock().expect("catalog pool").is_empty() || self.path.exists()
    }

    /// Run `f` on a pooled read-only connection (call from a blocking thread).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&rewind_catalog::Catalog) -> Result<T, rewind_catalog::Error>,
    ) -> ApiResult<T> {
        let conn = self.pool.lock().expect("catalog pool").pop();
        let conn = match conn {
            Some(c) => c,
            None if !self.path.exists() => return Err(ApiError::Unavailable("catalog not available".into())),
            None => rewind_catalog::Catalog::open_read_only(&self.path).map_err(catalog_error)?,
        };
        let r = f(&conn).map_err(catalog_error);
        let mut pool = self.pool.lock().expect("catalog pool");
        if pool.len() < 16 {
            pool.push(conn);
        }
        r
    }

    /// A page of `find` (or `deleted`), through the shared cache.
    pub fn page(&self, q: &Query, deleted: bool) -> ApiResult<Arc<Page<FileVersion>>> {
        let key = format!("{deleted}|{q:?}");
        if !self.ttl.is_zero()
            && let Some((at, page)) = self.cache.lock().expect("catalog cache").get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(page.clone());
        }
        let page = Arc::new(self.with(|c| if deleted { c.deleted(q) } else { c.find(q) })?);
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock().expect("catalog cache");
            if cache.len() >= CACHE_ENTRIES {
                let ttl = self.ttl;
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), page.clone()));
        }
        Ok(page)
    }
}
