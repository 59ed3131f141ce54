//! `find`, `deleted`, `history` and `catalog`: the file catalog's commands, and the catalog update
//! that follows each backup. The catalog is a cache in the repository's local cache folder
//! (`~/.cache/rewind/<repository id>/catalog.sqlite`, see `Repository::cache_dir`); every
//! command brings it up to date first.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rewind_catalog::{Catalog, FileVersion, NameMatch, Page, Query};
use rewind_store::{IndexedRepository, NodeKind, Repository, View};

use crate::cli::RepoArg;
use crate::cmd::{human_bytes, open_indexed};

#[derive(Args, Debug)]
pub struct FindArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Name to look for: a case-insensitive substring, or a glob if it has `*?[{`
    pub pattern: String,
    /// Only deleted files (absent from their host's latest snapshot)
    #[arg(long)]
    pub deleted: bool,
    /// Only files of this owner (numeric uid)
    #[arg(long, value_name = "UID")]
    pub owner: Option<u32>,
    /// Only this host's snapshots
    #[arg(long)]
    pub host: Option<String>,
    /// Only under this path (`/srv/home/alice`)
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<OsString>,
    /// Only this kind: file, dir, symlink, blockdev, chardev, fifo, socket
    #[arg(long)]
    pub kind: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Args, Debug)]
pub struct DeletedArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only this host's files
    #[arg(long)]
    pub host: Option<String>,
    /// Only files deleted at or after DATE (`2026-03-01` or `2026-03-01T12:00:00Z`)
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only files of this owner (numeric uid)
    #[arg(long, value_name = "UID")]
    pub owner: Option<u32>,
    /// Only under this path
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<OsString>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub repo: RepoArg,
    /// Only this host's versions
    #[arg(long)]
    pub host: Option<String>,
    /// Absolute path as backed up (`/srv/home/alice/notes.txt`)
    pub path: OsString,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PageArgs {
    /// Results per page, most recent first
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Skip this many results
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Every result, not one page
    #[arg(long, conflicts_with_all = ["limit", "offset"])]
    pub all: bool,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Build the catalog again from every snapshot (readers keep the old one until it is done)
    Rebuild(RepoArg),
    /// Bring the catalog up to date with the repository's snapshots
    Sync(RepoArg),
    /// Counts and size of the catalog
    Stats {
        #[command(flatten)]
        repo: RepoArg,
        #[arg(long)]
        json: bool,
    },
}

/// After a backup: bring the catalog up to date, warning (never failing) when that fails. A
/// damaged catalog is rebuilt (it is a cache).
pub fn update_after_backup(repo: &IndexedRepository, catalog: Option<&Path>) {
    let view = match View::new(repo.clone()) {
        Ok(v) => v,
        Err(e) => {
            return eprintln!("rewind: warning: the file catalog was not updated ({e}); `rewind catalog sync` retries");
        }
    };
    let sync = || Catalog::open_at(catalog, repo.repo()).and_then(|mut c| c.sync_view(&view));
    let result = match sync() {
        Err(e) if e.is_corrupt() => {
            eprintln!("rewind: the file catalog is damaged ({e}); rebuilding it");
            Catalog::remove(&catalog_path(catalog, repo.repo())).and_then(|()| sync())
        }
        r => r,
    };
    match result {
        Ok(r) => tracing::debug!("catalog updated: {r:?}"),
        Err(e) => eprintln!("rewind: warning: the file catalog was not updated ({e}); `rewind catalog sync` retries"),
    }
}

/// Where a repository's catalog is: the one given, or the default place.
pub fn catalog_path(given: Option<&Path>, repo: &Repository) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| Catalog::default_path(repo))
}

/// What is wrong with the repository's catalog, if anything (for `check`).
pub fn check_catalog(arg: &RepoArg, repo: &Repository) -> Option<String> {
    let path = catalog_path(arg.catalog.as_deref(), repo);
    let problems = match Catalog::check_integrity(&path) {
        Ok(p) => p,
        Err(e) => vec![e.to_string()],
    };
    (!problems.is_empty()).then(|| {
        format!(
            "the file catalog {} is damaged ({}); it is a cache: it rebuilds itself when next used, or run `rewind catalog rebuild`",
            path.display(),
            problems.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )
    })
}

/// An open catalog whose queries, if it turns out damaged, rebuild it and run again.
struct Session<'a> {
    repo: &'a RepoArg,
    cat: Catalog,
    path: PathBuf,
}

impl<'a> Session<'a> {
    fn open(repo: &'a RepoArg) -> Result<Session<'a>> {
        let (cat, path) = open_synced(repo)?;
        Ok(Session { repo, cat, path })
    }

    fn run<T>(&mut self, f: impl Fn(&Catalog) -> rewind_catalog::Result<T>) -> Result<T> {
        match f(&self.cat) {
            Err(e) if e.is_corrupt() => {
                eprintln!("rewind: the file catalog is damaged ({e}); rebuilding it");
                Catalog::remove(&self.path)?;
                self.cat = open_synced(self.repo)?.0;
                Ok(f(&self.cat)?)
            }
            r => Ok(r?),
        }
    }
}

/// The repository's catalog, up to date if it can be made so (else as it is, with a warning).
fn open_synced(repo: &RepoArg) -> Result<(Catalog, PathBuf)> {
    let indexed = open_indexed(repo)?;
    if repo.catalog.is_none() {
        indexed.repo().private_cache_dir().context("cannot use the file catalog")?;
        Catalog::retire_legacy(indexed.repo());
    }
    let path = catalog_path(repo.catalog.as_deref(), indexed.repo());
    let view = View::new(indexed.clone()).context("cannot read the snapshots")?;
    let open =
        || Catalog::open(&path, &indexed.repo().config().id.to_hex()).and_then(|mut c| c.sync_view(&view).map(|_| c));
    let opened = match open() {
        Err(e) if e.is_corrupt() => {
            eprintln!("rewind: the file catalog is damaged ({e}); rebuilding it");
            Catalog::remove(&path).and_then(|()| open())
        }
        r => r,
    };
    let cat = match opened {
        Ok(c) => c,
        Err(e) => {
            // Never read a catalog from a folder that is not this user's alone.
            Catalog::check_folder(&path).context("cannot use the file catalog")?;
            eprintln!("rewind: warning: could not update the file catalog ({e}); answering from it as it is");
            Catalog::open_read_only(&path).with_context(|| format!("cannot open the catalog {}", path.display()))?
        }
    };
    Ok((cat, path))
}

pub fn run(c: CatalogCommand) -> Result<ExitCode> {
    match c {
        CatalogCommand::Rebuild(repo) => {
            let indexed = open_indexed(&repo)?;
            let started = std::time::Instant::now();
            // In place and in one transaction: readers (the portal) keep the old catalog until
            // the new one is complete. A file that is not a usable catalog is replaced on open.
            let mut cat =
                Catalog::open_at(repo.catalog.as_deref(), indexed.repo()).context("cannot open the catalog")?;
            let view = View::new(indexed.clone()).context("cannot read the snapshots")?;
            let r = cat.rebuild_view(&view).context("catalog rebuild failed")?;
            let st = cat.stats()?;
            outln!(
                "catalog rebuilt: {} snapshots, {} versions, {} deleted, {} on disk, in {:.1}s",
                r.snapshots_applied,
                st.versions,
                st.deleted,
                human_bytes(st.bytes_on_disk),
                started.elapsed().as_secs_f64()
            );
        }
        CatalogCommand::Sync(repo) => {
            let indexed = open_indexed(&repo)?;
            let mut cat =
                Catalog::open_at(repo.catalog.as_deref(), indexed.repo()).context("cannot open the catalog")?;
            let view = View::new(indexed.clone()).context("cannot read the snapshots")?;
            let r = cat.sync_view(&view).context("catalog update failed")?;
            outln!(
                "catalog updated: {} snapshots added, {} dropped, {} hosts rebuilt, {} versions added, {} closed, {} removed",
                r.snapshots_applied,
                r.snapshots_dropped,
                r.hosts_rebuilt.len(),
                r.versions_added,
                r.versions_closed,
                r.versions_dropped
            );
        }
        CatalogCommand::Stats { repo, json } => {
            let (cat, _) = open_synced(&repo)?;
            let st = cat.stats()?;
            if json {
                outln!("{}", serde_json::to_string(&st)?);
            } else {
                outln!(
                    "{} hosts, {} snapshots, {} versions ({} deleted files), {} names, {} directories, {} on disk",
                    st.hosts,
                    st.snapshots,
                    st.versions,
                    st.deleted,
                    st.names,
                    st.dirs,
                    human_bytes(st.bytes_on_disk)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn find(a: FindArgs) -> Result<ExitCode> {
    let kind = match &a.kind {
        Some(k) => Some(k.parse::<NodeKind>().map_err(|e| anyhow::anyhow!("--kind: {e}"))?),
        None => None,
    };
    let q = Query {
        name: Some(NameMatch::guess(&a.pattern)),
        deleted: a.deleted,
        uid: a.owner,
        host: a.host,
        path_prefix: a.path.map(OsString::into_encoded_bytes),
        kind,
        ..Default::default()
    };
    let mut session = Session::open(&a.repo)?;
    print_pages(&a.page, q, |q| session.run(|cat| cat.find(q)))
}

pub fn deleted(a: DeletedArgs) -> Result<ExitCode> {
    let since = a.since.as_deref().map(parse_date).transpose()?;
    let q = Query {
        deleted: true,
        deleted_since: since,
        uid: a.owner,
        host: a.host,
        path_prefix: a.path.map(OsString::into_encoded_bytes),
        ..Default::default()
    };
    let mut session = Session::open(&a.repo)?;
    print_pages(&a.page, q, |q| session.run(|cat| cat.deleted(q)))
}

pub fn history(a: HistoryArgs) -> Result<ExitCode> {
    let path = a.path.as_bytes();
    let versions = Session::open(&a.repo)?.run(|cat| cat.history(a.host.as_deref(), path, None))?;
    if versions.is_empty() {
        bail!(
            "{} is in no catalogued snapshot{}",
            crate::cmd::show_bytes(path),
            a.host.map(|h| format!(" of host {h}")).unwrap_or_default()
        );
    }
    for v in &versions {
        print_version(v, a.json)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_pages(
    p: &PageArgs,
    mut q: Query,
    mut fetch: impl FnMut(&Query) -> Result<Page<FileVersion>>,
) -> Result<ExitCode> {
    q.limit = if p.all { rewind_catalog::MAX_LIMIT } else { p.limit };
    q.offset = if p.all { 0 } else { p.offset };
    loop {
        let page = fetch(&q)?;
        for v in &page.items {
            print_version(v, p.json)?;
        }
        match page.next_offset {
            Some(next) if p.all => q.offset = next,
            Some(next) => {
                eprintln!("rewind: more results: --offset {next} for the next page, --all for every one");
                break;
            }
            None => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_version(v: &FileVersion, json: bool) -> Result<()> {
    if json {
        // A path that is not UTF-8 also as hex, as `ls --json` gives it.
        let mut j = serde_json::to_value(v)?;
        if std::str::from_utf8(v.path_bytes()).is_err() {
            j["path_hex"] = hex::encode(v.path_bytes()).into();
        }
        outln!("{j}");
        return Ok(());
    }
    let day = |t: &jiff::Timestamp| t.strftime("%Y-%m-%d %H:%M").to_string();
    let state = match (&v.deleted, v.present) {
        (Some(d), _) => format!("deleted between {} and {}", day(&d.last_present.time), day(&d.first_absent.time)),
        (None, true) => format!("present since {}", day(&v.first_seen.time)),
        (None, false) => format!("seen {} .. {}", day(&v.first_seen.time), day(&v.last_seen.time)),
    };
    outln!(
        "{:<8} {:<7} {:>10}  {}  uid {}  {}  ({state})",
        v.host,
        v.kind,
        if v.kind == "file" { human_bytes(v.size) } else { "-".into() },
        day(&v.mtime),
        v.uid,
        crate::cmd::show_bytes(v.path_bytes())
    );
    Ok(())
}

/// `2026-03-01` (midnight UTC) or a full timestamp.
fn parse_date(s: &str) -> Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let d: jiff::civil::Date = s.parse().with_context(|| format!("{s:?} is not a date (2026-03-01) or timestamp"))?;
    Ok(d.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp())
}
