//! rewind's file catalog: every distinct version of every path of every host, with the interval
//! of snapshots that held it, searchable by name, path, owner, kind, size and time, and the
//! deleted files with the window in which they went.
//!
//! The catalog is a **cache** of the repository, never the truth: an embedded SQLite database in
//! the repository's local cache folder ([`Catalog::default_path`]) that [`Catalog::sync`] brings
//! up to date and [`Catalog::rebuild`] recreates. Deleting it loses nothing.
//!
//! Model (see `catalog/README.md` for the tables):
//! - A **version** is one path of one host with one identity: kind, size, mtime (with
//!   nanoseconds), permission bits, uid, gid and a content id (BLAKE3 over the file's chunk ids,
//!   or over a symlink's target). It was present, unchanged, in every snapshot of its host from
//!   `first` to `last`; `last` is empty while it is in the host's latest snapshot.
//! - A path is **deleted** when it is absent from its host's latest snapshot; its newest version
//!   carries the window in which it went (its last snapshot, and the host's next one).
//! - Storage grows with changes: names and directories are interned, a version is one row, and
//!   no row is written per unchanged file per snapshot.
//!
//! Invariants:
//! - One transaction per snapshot applied; the database is in WAL mode, so readers see the state
//!   after some whole number of snapshots, never a half-applied one, and go on during updates.
//!   A killed update leaves the catalog as it was after its last committed snapshot.
//! - Snapshots of a host are applied in time order, each diffed against the host's previous one,
//!   skipping subtrees with equal ids. A snapshot older than the newest catalogued one of its
//!   host makes [`Catalog::sync`] rebuild that host from its first snapshot; a catalogued
//!   snapshot removed from the repository is dropped in place (intervals shrink, versions held
//!   only by removed snapshots go), without reading any tree.
//! - Queries take a [`Query`] and return plain [`FileVersion`]s in [`Page`]s; all are
//!   `serde::Serialize` for the portal and `--json`.
//!
//! A [`Catalog`] holds one SQLite connection: open one per thread (opening is cheap), read-only
//! ones with [`Catalog::open_read_only`] for queries.

pub mod access;
mod db;
mod error;
mod images;
mod query;
mod update;

use std::path::{Path, PathBuf};

pub use access::Reader;
pub use error::{Error, Result};
pub use images::ImageTrees;
pub use query::{
    CatalogSnapshot, DeletionWindow, FileVersion, MAX_LIMIT, NameMatch, Order, Page, Position, Query, Scope,
    SnapshotRef, Stats,
};
pub use update::{SnapshotInfo, SyncReport, TreeSource, content_id};

/// An open catalog.
pub struct Catalog {
    conn: rusqlite::Connection,
    path: PathBuf,
    caches: update::Caches,
    /// `PRAGMA data_version` when `caches` were last right: another connection's commit (a
    /// backup's update or a rebuild beside a portal's sync) changes it, and the caches go.
    caches_version: Option<i64>,
    failpoint: Option<u64>,
    versions_written: u64,
    /// See `query::SCAN_BUDGET`; 0 always answers through the indexes (tests compare both).
    scan_budget: u64,
}

impl Catalog {
    /// Where a repository's catalog lives: `catalog.sqlite` in the repository's local cache
    /// folder ([`rewind_store::Repository::cache_dir`]), never in the repository: it holds
    /// every path in the clear, and a repository's files are what is copied off site.
    pub fn default_path(repo: &rewind_store::Repository) -> PathBuf {
        repo.cache_dir().join("catalog.sqlite")
    }

    /// Move the catalog that rewinds before 2026-11-30 kept inside a local repository
    /// (`REPO/catalog/`) out of it: copied to [`Catalog::default_path`] if no catalog is there
    /// yet (a consistent copy, also while another process has it open, and durable before it
    /// appears), then its files removed from the repository, and the folder if nothing else is
    /// in it. Done by whatever opens the default catalog to write it (a backup's update, the
    /// catalog commands, a portal). A catalog that cannot be copied stays, with a warning (a new
    /// one is built meanwhile, and once it exists the old one is removed); what cannot be
    /// removed is left with a warning naming it.
    pub fn retire_legacy(repo: &rewind_store::Repository) {
        let Some(old) = repo.local_path().map(|r| r.join("catalog")) else { return };
        match std::fs::symlink_metadata(&old) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return tracing::warn!(
                    "{} is a symbolic link (an older rewind's catalog, with every path in the clear, may be where it points): left as it is; remove it",
                    old.display()
                );
            }
            _ => return,
        }
        let new = Catalog::default_path(repo);
        let file = old.join("catalog.sqlite");
        if file.exists() && !new.exists() {
            match db::copy_db(&file, &new) {
                Ok(()) => tracing::info!("catalog moved from {} to {}", file.display(), new.display()),
                // Kept where it is until a copy succeeds (or a catalog is there).
                Err(e) => {
                    return tracing::warn!(
                        "catalog at {} not moved to {} ({e}); it holds paths in the clear: fix that place or remove it",
                        file.display(),
                        new.display()
                    );
                }
            }
        }
        let removed = db::remove_db(&file).and_then(|()| match std::fs::remove_dir(&old) {
            // Another process moving it at the same time was first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| Error::Io { path: old.clone(), source: e }),
        });
        if let Err(e) = removed {
            tracing::warn!(
                "cannot remove {}, an older rewind's catalog inside the repository ({e}): it holds paths in the clear; remove it",
                old.display()
            );
        }
    }

    /// Check the folder a catalog at `path` would be in (made if missing): it must be this
    /// user's alone ([`rewind_store::private_folder`]), for reading it as for writing it.
    pub fn check_folder(path: &Path) -> Result<()> {
        db::private_dir(path)
    }

    /// Open or create the catalog at `path` for the repository whose config id is `repo_id`
    /// (a file that is not a catalog of this version and repository is replaced: it is a cache).
    pub fn open(path: &Path, repo_id: &str) -> Result<Catalog> {
        let conn = db::open_rw(path, repo_id)?;
        query::register_functions(&conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Catalog {
            conn,
            path: path.to_path_buf(),
            caches: update::Caches::default(),
            failpoint: update::failpoint_from_env(),
            versions_written: 0,
            caches_version: None,
            scan_budget: query::SCAN_BUDGET,
        })
    }

    /// Open or create the catalog of `repo` at its default path (moving an older rewind's
    /// out of the repository first: [`Catalog::retire_legacy`]).
    pub fn open_for(repo: &rewind_store::Repository) -> Result<Catalog> {
        repo.private_cache_dir()?;
        Catalog::retire_legacy(repo);
        Catalog::open(&Catalog::default_path(repo), &repo.config().id.to_hex())
    }

    /// Open or create the catalog of `repo` at `path`, or at its default place.
    pub fn open_at(path: Option<&Path>, repo: &rewind_store::Repository) -> Result<Catalog> {
        match path {
            Some(p) => Catalog::open(p, &repo.config().id.to_hex()),
            None => Catalog::open_for(repo),
        }
    }

    /// Whether the catalog at `path` is one of this version that a sync has brought up to date
    /// to its end at least once (not a first build cut short, not another schema's).
    pub fn is_complete(path: &Path) -> bool {
        db::open_ro(path)
            .and_then(|conn| {
                use rusqlite::OptionalExtension;
                let v: Option<i64> =
                    conn.query_row("SELECT value FROM meta WHERE key = 'complete'", [], |r| r.get(0)).optional()?;
                Ok(v == Some(1))
            })
            .unwrap_or(false)
    }

    /// Open an existing catalog for queries only.
    pub fn open_read_only(path: &Path) -> Result<Catalog> {
        let conn = db::open_ro(path)?;
        query::register_functions(&conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Catalog {
            conn,
            path: path.to_path_buf(),
            caches: update::Caches::default(),
            failpoint: None,
            versions_written: 0,
            caches_version: None,
            scan_budget: query::SCAN_BUDGET,
        })
    }

    /// Check the database file at `path` (SQLite's integrity check and the FTS5 index's): the
    /// problems found, none if it is sound. A missing file has none.
    pub fn check_integrity(path: &Path) -> Result<Vec<String>> {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let conn = db::open_ro(path)?;
        let mut problems = Vec::new();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for r in rows {
            let r = r?;
            if r != "ok" {
                problems.push(r);
            }
        }
        // A read-only connection cannot run the FTS5 check; only a damage report counts.
        if problems.is_empty()
            && let Err(e) = conn.execute("INSERT INTO names_fts(names_fts, rank) VALUES('integrity-check', 0)", [])
            && Error::from(e).is_corrupt()
        {
            problems.push("the name index (FTS5) is damaged".into());
        }
        Ok(problems)
    }

    /// Delete the catalog file at `path` (and its WAL); the next open starts empty.
    pub fn remove(path: &Path) -> Result<()> {
        // Only a catalog (an SQLite file, maybe damaged): never a file named by mistake.
        if !db::looks_like_sqlite(path) {
            return Err(Error::InvalidInput(format!(
                "{} is not a rewind catalog: left as it is; name another file",
                path.display()
            )));
        }
        db::remove_db(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
