//! The backup: walk the source, chunk, hash, compress and pack what is new, write one tree blob
//! per directory, and finally the snapshot manifest.
//!
//! Parallelism: directories and files are visited with rayon, so both cores read, chunk, hash and
//! compress; a large file is read sequentially in buffers whose chunks are hashed and compressed
//! in parallel. Files whose size, mtime, ctime and inode equal the parent snapshot's are not read.
//!
//! Errors reading the source (a file that vanished, a permission error, a file that changed while
//! read) are reported, counted and leave the entry out; errors writing the repository end the
//! backup without a snapshot. Order of durability: packs, then index files, then the snapshot.

use std::collections::BTreeMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;

use crate::backend::FileKind;
use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::format::{BlobId, ChunkId, Node, NodeKind, SNAPSHOT_MAGIC, Snapshot, SnapshotId, Summary, Tree, TreeId};
use crate::lock::Lock;
use crate::pack::Packer;
use crate::repo::{IndexedRepository, SnapshotEntry};
use crate::source::{self, NameCache};

/// What to back up and how to label it.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub host: String,
    pub tags: Vec<String>,
    /// Globs: without a `/` they match an entry's name, with one its absolute path.
    pub excludes: Vec<String>,
    /// Compare against this snapshot instead of the host's latest of the same paths.
    pub parent: Option<SnapshotId>,
    /// Read every file even if unchanged.
    pub force: bool,
}

/// Live counters, for a progress display.
#[derive(Debug, Default)]
pub struct BackupProgress {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_added: AtomicU64,
    pub bytes_total: AtomicU64,
    pub errors: AtomicU64,
}

/// Called for each source entry left out of the snapshot.
pub type ErrorReport<'a> = dyn Fn(&Path, &Error) + Sync + 'a;

/// Run a backup. The snapshot is written only if every repository write succeeded; entries that
/// could not be read are reported through `report` and counted in the summary.
pub fn backup(
    repo: &IndexedRepository,
    opts: &BackupOptions,
    progress: &BackupProgress,
    report: &ErrorReport<'_>,
) -> Result<SnapshotEntry> {
    let started = Instant::now();
    let time = jiff::Timestamp::now();
    if opts.host.is_empty() {
        return Err(Error::InvalidInput("the host name is empty".into()));
    }
    let paths = normalize_paths(&opts.paths)?;
    // The order is the rule for writers (FORMAT.md, "Prune"): the lock exists before the pending
    // records are read, and they are read before the index is loaded. A prune that misses this
    // lock wrote its record before the lock existed, so the record is read below; a prune that
    // sees the lock waits for this backup before deleting anything the index loaded here names.
    let lock = Lock::acquire(repo.repo(), crate::lock::BACKUP)?;
    failpoint::hit("backup-locked")?;
    let condemned = crate::prune::condemned_packs(repo.repo())?;
    failpoint::hit("backup-records-read")?;
    repo.avoid_packs(condemned.clone())?;
    failpoint::hit("backup-index-loaded")?;

    let config = repo.repo().config();
    let archiver = Archiver {
        repo,
        packer: Packer::new(repo.backend(), repo.repo().codec(), config.pack_size, config.compression.level)
            .with_groups(config.has_groups())
            .with_dictionaries(config.has_dictionaries())?
            .with_tree_cache(repo.repo().tree_cache().map(Path::to_path_buf)),
        chunker: Chunker::with_gear(config.chunker, repo.repo().codec().crypto().gear()),
        excludes: Excludes::new(&opts.excludes)?,
        names: NameCache::default(),
        progress,
        report,
        counts: Counts::default(),
        condemned,
    };
    let result = run(&archiver, opts, &paths, time, started, &lock);
    if let Err(e) = &result {
        let removed = archiver.packer.abandon();
        tracing::info!("backup failed ({e}); removed the {removed} pack(s) it wrote that no index names");
    }
    result
}

fn run(
    archiver: &Archiver<'_>,
    opts: &BackupOptions,
    paths: &[PathBuf],
    time: jiff::Timestamp,
    started: Instant,
    lock: &Lock,
) -> Result<SnapshotEntry> {
    let repo = archiver.repo;
    let parent = match opts.parent {
        Some(id) => Some(SnapshotEntry { id, snapshot: repo.repo().load_snapshot(&id)? }),
        None => find_parent(repo, &opts.host, paths)?,
    };
    let parent_tree = match &parent {
        Some(p) if !opts.force => match repo.tree(p.snapshot.tree) {
            Ok(t) => Some(t),
            Err(e) if e.is_corrupt() => {
                tracing::warn!("the parent snapshot's root is unreadable, reading every file: {e}");
                None
            }
            Err(e) => return Err(e),
        },
        _ => None,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) + 1)
        .thread_name(|i| format!("backup-{i}"))
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start worker threads: {e}")))?;

    let root = pool.install(|| archiver.save_roots(paths, parent_tree.as_deref()))?;
    crate::interrupt::check()?;
    archiver.packer.finish()?;

    let progress = archiver.progress;
    let c = &archiver.counts;
    let stats = archiver.packer.stats();
    let summary = Summary {
        files_new: c.new.load(Ordering::Relaxed),
        files_changed: c.changed.load(Ordering::Relaxed),
        files_unchanged: c.unchanged.load(Ordering::Relaxed),
        dirs: c.dirs.load(Ordering::Relaxed),
        others: c.others.load(Ordering::Relaxed),
        errors: progress.errors.load(Ordering::Relaxed),
        bytes_read: progress.bytes_read.load(Ordering::Relaxed),
        bytes_total: progress.bytes_total.load(Ordering::Relaxed),
        bytes_added: stats.raw_bytes,
        bytes_stored: stats.stored_bytes,
        blobs_added: stats.blobs,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let snapshot = Snapshot {
        magic: SNAPSHOT_MAGIC.into(),
        version: repo.repo().codec().version(),
        time,
        host: opts.host.clone(),
        paths: paths.iter().map(|p| p.to_string_lossy().into_owned()).collect(),
        tags: opts.tags.clone(),
        tree: root,
        parent: parent.map(|p| p.id),
        summary,
        original: None,
    };
    let (id, bytes) = repo.repo().codec().encode_snapshot(&snapshot);
    failpoint::hit("backup-before-snapshot")?;
    crate::interrupt::check()?;
    repo.backend().put(FileKind::Snapshot, &id.to_hex(), &bytes)?;
    failpoint::hit("backup-snapshot-written")?;
    // A sweep waits for this backup only while its lock is live. If the lock was removed or
    // declared expired meanwhile, what this snapshot references may be gone: take it back.
    if let Err(e) = lock.check_held() {
        repo.backend().delete(FileKind::Snapshot, &id.to_hex())?;
        return Err(e);
    }
    repo.refresh_index()?;
    tracing::info!(snapshot = %id.short(), "snapshot saved");
    Ok(SnapshotEntry { id, snapshot })
}

/// Absolute, lexically clean, without duplicates or paths inside other given paths.
fn normalize_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::InvalidInput("nothing to back up: give at least one path".into()));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        let mut clean = PathBuf::from("/");
        for c in abs.components() {
            match c {
                Component::Normal(n) => clean.push(n),
                Component::ParentDir => {
                    clean.pop();
                }
                _ => {}
            }
        }
        std::fs::symlink_metadata(&clean).map_err(|e| Error::io(&clean, e))?;
        out.push(clean);
    }
    out.sort();
    out.dedup();
    let all = out.clone();
    out.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    Ok(out)
}

fn find_parent(repo: &IndexedRepository, host: &str, paths: &[PathBuf]) -> Result<Option<SnapshotEntry>> {
    let want: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    Ok(repo.repo().snapshots()?.into_iter().rev().find(|s| s.snapshot.host == host && s.snapshot.paths == want))
}

/// Exclude patterns.
struct Excludes {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Excludes {
    fn new(patterns: &[String]) -> Result<Excludes> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in patterns {
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::InvalidInput(format!("bad --exclude pattern {p:?}: {e}")))?;
            if p.contains('/') {
                by_path.add(glob)
            } else {
                by_name.add(glob)
            };
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::InvalidInput(format!("bad --exclude: {e}")));
        Ok(Excludes { by_name: build(by_name)?, by_path: build(by_path)? })
    }

    fn excluded(&self, path: &Path, name: &[u8]) -> bool {
        (!self.by_name.is_empty() && self.by_name.is_match(std::ffi::OsStr::from_bytes(name)))
            || (!self.by_path.is_empty() && self.by_path.is_match(path))
    }
}

#[derive(Default)]
struct Counts {
    new: AtomicU64,
    changed: AtomicU64,
    unchanged: AtomicU64,
    dirs: AtomicU64,
    others: AtomicU64,
}

struct Archiver<'a> {
    repo: &'a IndexedRepository,
    packer: Packer<'a>,
    chunker: Chunker,
    excludes: Excludes,
    names: NameCache,
    progress: &'a BackupProgress,
    report: &'a ErrorReport<'a>,
    counts: Counts,
    /// Packs a prune will delete: not to be deduplicated against.
    condemned: crate::index::IdSet<crate::format::PackId>,
}

/// The prefix directories above the source paths, as a tree of names.
#[derive(Default)]
struct Prefix {
    source: bool,
    children: BTreeMap<Vec<u8>, Prefix>,
}

impl Archiver<'_> {
    fn save_roots(&self, paths: &[PathBuf], parent: Option<&Tree>) -> Result<TreeId> {
        let mut top = Prefix::default();
        for p in paths {
            let mut at = &mut top;
            for c in p.components() {
                if let Component::Normal(n) = c {
                    at = at.children.entry(n.as_bytes().to_vec()).or_default();
                }
            }
            at.source = true;
        }
        self.save_prefix(Path::new("/"), &top, parent)
    }

    /// A directory on the way to the source paths, holding only what leads to them.
    fn save_prefix(&self, dir: &Path, prefix: &Prefix, parent: Option<&Tree>) -> Result<TreeId> {
        let nodes: Vec<Option<Node>> = prefix
            .children
            .par_iter()
            .map(|(name, child)| {
                let path = dir.join(std::ffi::OsStr::from_bytes(name));
                let parent_node = parent.and_then(|t| t.find(name));
                if child.source {
                    return self.save_entry(&path, name.clone(), parent_node, true);
                }
                let meta = match std::fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        self.source_error(&path, Error::io(&path, e));
                        return Ok(None);
                    }
                };
                let mut node = source::node_from_meta(name.clone(), &meta, &self.names);
                node.kind = NodeKind::Dir;
                let parent_tree = self.parent_subtree(parent_node);
                node.subtree = Some(self.save_prefix(&path, child, parent_tree.as_deref())?);
                Ok(Some(node))
            })
            .collect::<Result<_>>()?;
        self.save_tree(nodes.into_iter().flatten().collect())
    }

    fn parent_subtree(&self, parent: Option<&Node>) -> Option<Arc<Tree>> {
        let id = parent.filter(|n| n.is_dir())?.subtree?;
        match self.repo.tree(id) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("parent tree {} unreadable, reading files again: {e}", id.short());
                None
            }
        }
    }

    fn source_error(&self, path: &Path, err: Error) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        (self.report)(path, &err);
    }

    /// One entry of the source. `Ok(None)`: left out (excluded, or reported as unreadable).
    fn save_entry(&self, path: &Path, name: Vec<u8>, parent: Option<&Node>, top: bool) -> Result<Option<Node>> {
        crate::interrupt::check()?;
        if !top && self.excludes.excluded(path, &name) {
            return Ok(None);
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.source_error(path, Error::io(path, e));
                return Ok(None);
            }
        };
        let mut node = source::node_from_meta(name, &meta, &self.names);
        match source::xattrs(path) {
            Ok(x) => node.xattrs = x,
            Err(e) => tracing::warn!("{}: cannot read extended attributes: {e}", path.display()),
        }
        match node.kind {
            NodeKind::Dir => {
                let parent_tree = self.parent_subtree(parent);
                match self.save_dir(path, parent_tree.as_deref())? {
                    Some(id) => node.subtree = Some(id),
                    None => return Ok(None),
                }
                self.counts.dirs.fetch_add(1, Ordering::Relaxed);
                self.progress.dirs.fetch_add(1, Ordering::Relaxed);
            }
            NodeKind::File => {
                let parent = parent.filter(|p| p.kind == NodeKind::File);
                match self.save_file(path, &meta, parent)? {
                    Some(content) => node.content = content,
                    None => return Ok(None),
                }
                self.progress.files.fetch_add(1, Ordering::Relaxed);
                self.progress.bytes_total.fetch_add(node.size, Ordering::Relaxed);
            }
            NodeKind::Symlink => match std::fs::read_link(path) {
                Ok(t) => {
                    node.target = t.as_os_str().as_bytes().to_vec();
                    self.counts.others.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.source_error(path, Error::io(path, e));
                    return Ok(None);
                }
            },
            _ => {
                self.counts.others.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Some(node))
    }

    /// A directory's entries, in parallel; `None` if it cannot be listed.
    fn save_dir(&self, path: &Path, parent: Option<&Tree>) -> Result<Option<TreeId>> {
        let listing = match std::fs::read_dir(path) {
            Ok(rd) => rd.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<Vec<_>>>(),
            Err(e) => Err(e),
        };
        let mut names = match listing {
            Ok(n) => n,
            Err(e) => {
                self.source_error(path, Error::io(path, e));
                return Ok(None);
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let nodes: Vec<Option<Node>> = names
            .par_iter()
            .map(|name| {
                let name = name.as_bytes().to_vec();
                let child = path.join(std::ffi::OsStr::from_bytes(&name));
                let parent_node = parent.and_then(|t| t.find(&name));
                self.save_entry(&child, name, parent_node, false)
            })
            .collect::<Result<_>>()?;
        self.save_tree(nodes.into_iter().flatten().collect()).map(Some)
    }

    fn save_tree(&self, nodes: Vec<Node>) -> Result<TreeId> {
        let encoded = Tree { nodes }.encode();
        let id = TreeId(self.repo.repo().codec().id(&encoded));
        self.store_blob(id.into(), &encoded)?;
        Ok(id)
    }

    /// Whether the repository has the blob in a pack that stays.
    fn stored(&self, id: BlobId) -> bool {
        self.repo.location_cached(id).is_some_and(|l| !self.condemned.contains(&l.pack))
    }

    /// Store a blob unless the repository or this backup already has it.
    fn store_blob(&self, id: BlobId, data: &[u8]) -> Result<()> {
        if !self.stored(id) && self.packer.claim(id) {
            self.packer.add_claimed(id, data)?;
            self.progress.bytes_added.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A file's chunk list, reusing the parent's when the file is unchanged. `None`: unreadable
    /// or changed while read (reported).
    fn save_file(&self, path: &Path, meta: &Metadata, parent: Option<&Node>) -> Result<Option<Vec<ChunkId>>> {
        if let Some(p) = parent {
            let same = p.size == meta.len()
                && p.mtime.sec == meta.mtime()
                && p.mtime.nsec == meta.mtime_nsec() as u32
                && p.ctime.sec == meta.ctime()
                && p.ctime.nsec == meta.ctime_nsec() as u32
                && p.inode == meta.ino();
            if same && p.content.iter().all(|c| self.stored((*c).into())) {
                self.counts.unchanged.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(p.content.clone()));
            }
        }
        match self.read_file(path, meta) {
            Ok(Some(content)) => {
                let counter = if parent.is_some() { &self.counts.changed } else { &self.counts.new };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(Some(content))
            }
            Ok(None) => Ok(None),
            Err(ReadError::Source(e)) => {
                self.source_error(path, e);
                Ok(None)
            }
            Err(ReadError::Repo(e)) => Err(e),
        }
    }

    fn read_file(&self, path: &Path, meta: &Metadata) -> Result<Option<Vec<ChunkId>>, ReadError> {
        let src = |e: std::io::Error| ReadError::Source(Error::io(path, e));
        let mut file = open_noatime(path).map_err(src)?;
        let opened = file.metadata().map_err(src)?;
        if opened.ino() != meta.ino() || opened.dev() != meta.dev() {
            self.source_error(
                path,
                Error::InvalidInput(format!("{}: replaced while being read; skipped", path.display())),
            );
            return Ok(None);
        }
        const BUFFER: usize = 8 << 20;
        let max = self.chunker.max_size();
        let target = (meta.len() as usize + 1).min(BUFFER + max);
        let mut buf: Vec<u8> = Vec::with_capacity(target);
        let mut content = Vec::new();
        let mut eof = false;
        let mut total = 0u64;
        loop {
            while !eof && buf.len() < target {
                let start = buf.len();
                buf.resize(target, 0);
                match file.read(&mut buf[start..]) {
                    Ok(0) => {
                        buf.truncate(start);
                        eof = true;
                    }
                    Ok(n) => {
                        buf.truncate(start + n);
                        total += n as u64;
                        self.progress.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(start),
                    Err(e) => return Err(src(e)),
                }
            }
            crate::interrupt::check().map_err(ReadError::Repo)?;
            let mut spans = Vec::new();
            let mut pos = 0;
            while let Some(n) = self.chunker.next_cut(&buf[pos..], eof) {
                spans.push((pos, n));
                pos += n;
            }
            let ids: Vec<ChunkId> = if spans.len() > 1 {
                spans.par_iter().map(|&(o, n)| self.store_chunk(&buf[o..o + n])).collect::<Result<_>>()
            } else {
                spans.iter().map(|&(o, n)| self.store_chunk(&buf[o..o + n])).collect::<Result<_>>()
            }
            .map_err(ReadError::Repo)?;
            content.extend(ids);
            buf.drain(..pos);
            if eof && buf.is_empty() {
                break;
            }
        }
        let after = file.metadata().map_err(src)?;
        let changed = total != meta.len()
            || after.len() != meta.len()
            || after.mtime() != meta.mtime()
            || after.mtime_nsec() != meta.mtime_nsec()
            || after.ctime() != meta.ctime()
            || after.ctime_nsec() != meta.ctime_nsec();
        if changed {
            self.source_error(
                path,
                Error::InvalidInput(format!("{}: changed while being read; skipped", path.display())),
            );
            return Ok(None);
        }
        Ok(Some(content))
    }

    fn store_chunk(&self, data: &[u8]) -> Result<ChunkId> {
        let id = ChunkId(self.repo.repo().codec().id(data));
        self.store_blob(id.into(), data)?;
        Ok(id)
    }
}

enum ReadError {
    /// The source could not be read: report and go on.
    Source(Error),
    /// The repository could not be written: stop.
    Repo(Error),
}

/// Open for reading without following a final symlink, and without touching atime where allowed.
fn open_noatime(path: &Path) -> std::io::Result<File> {
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(path);
    match open(libc::O_NOFOLLOW | libc::O_NOATIME) {
        // O_NOATIME needs ownership (or CAP_FOWNER).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_NOFOLLOW),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        let got = normalize_paths(&[a.join("b"), a.join("b/../b"), a.clone()]).unwrap();
        assert_eq!(got, vec![a]);
        assert!(normalize_paths(&[d.path().join("missing")]).is_err());
    }

    #[test]
    fn excludes_by_name_and_path() {
        let e = Excludes::new(&["*.tmp".into(), "/srv/*/cache".into()]).unwrap();
        assert!(e.excluded(Path::new("/x/a.tmp"), b"a.tmp"));
        assert!(e.excluded(Path::new("/srv/alice/cache"), b"cache"));
        assert!(!e.excluded(Path::new("/srv/alice/x/cache"), b"cache"));
        assert!(!e.excluded(Path::new("/x/a.txt"), b"a.txt"));
        assert!(Excludes::new(&["[".into()]).is_err());
    }
}
