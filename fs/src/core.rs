//! The filesystem's logic, free of FUSE replies: every operation is a function returning
//! `Result<_, Errno>`, unit-tested without a mount. [`crate::fuse`] only calls these and replies.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use rewind_store::{ChunkId, Entry, FileReader, Node, NodeKind, SnapshotId, Time, TreeId, View};

use crate::inode::{InodeTable, ROOT, child_key};

/// How long the kernel may keep attributes and names inside snapshots: they never change.
pub const TTL_FROZEN: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long for the directories that list snapshots, which change when backups run. The kernel
/// keeps their listings until it sees their mtime move, which it checks this often: a new
/// snapshot shows in a listing within this plus the view's refresh interval (half a second in
/// all), and by name at once (a lookup miss re-reads the list).
pub const TTL_LIVE: Duration = Duration::from_millis(250);
/// `st_blksize`: tools size their reads by it; large reads suit chunked, compressed content.
const BLKSIZE: u32 = 128 * 1024;
/// Readers kept for files read recently.
const READERS: usize = 1024;
/// Directory listings kept for the calls that resume a read (the kernel caches what it has read).
const LISTINGS: usize = 256;
/// Subdirectories of a listed directory whose trees are loaded ahead.
const PREFETCH_TREES: usize = 256;
/// Files that follow one in a walk whose first chunks are loaded ahead when it is first read.
const PREFETCH_FILES: usize = 32;
/// Files remembered as pushed into the kernel's page cache.
const PUSHED: usize = 8192;
/// Largest file pushed into the kernel's page cache ahead of a walk.
const PUSH_MAX: u64 = 256 * 1024;

/// Where a read of `size` bytes at `offset` ends (clamped to the file) and the indices of its
/// first and last chunks; `None` for a read at or past the end.
fn read_span(f: &OpenFile, offset: u64, size: u32) -> Option<(u64, usize, usize)> {
    let end = offset.saturating_add(u64::from(size)).min(f.reader.size());
    if offset >= end {
        return None;
    }
    Some((end, f.reader.chunk_index(offset)?, f.reader.chunk_index(end - 1)?))
}

/// Where an entry stands in its directory: the directory's inode and tree, and the entry's
/// index in it; `top` when the directory is a snapshot's root.
struct Place {
    parent: u64,
    tree: Arc<rewind_store::Tree>,
    pos: usize,
    top: bool,
}

/// Chunks chosen for a prefetch, and how much they cover.
struct Prefetch {
    out: Vec<ChunkId>,
    files: usize,
    bytes: u64,
    limit: u64,
    /// Entries looked at, files or not: a walk through many empty folders stops too.
    seen: usize,
}

/// An attribute with how long the kernel may cache it.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub attr: FileAttr,
    pub ttl: Duration,
}

/// `statfs` numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub files: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// A directory entry as readdir gives it.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub name: Vec<u8>,
    pub entry: Entry,
}

/// A directory's entries, listed once and served by offset: the kernel reads a directory in
/// several calls, each resuming where the last stopped.
pub struct Listing {
    pub ino: u64,
    pub items: Vec<DirItem>,
}

/// An open file.
pub struct OpenFile {
    pub reader: FileReader,
    snapshot: SnapshotId,
    /// The file's inode, to name it in messages (reads come while the kernel holds it).
    ino: u64,
    /// Where the next sequential read would start.
    next: AtomicU64,
    /// Chunks below this index have been handed to the prefetcher.
    ahead: AtomicUsize,
}

/// The state of one mount.
pub struct Core {
    view: Arc<View>,
    inodes: Mutex<InodeTable>,
    /// Listings of directories being read, by inode.
    listings: Mutex<lru::LruCache<u64, Arc<Listing>>>,
    /// Readers of files, by inode: the most recently read ones (a reader is cheap to make
    /// again, and the kernel may hold every inode of a large tree).
    files: Mutex<lru::LruCache<u64, Arc<OpenFile>>>,
    /// Files whose damage has been logged, so each is logged once.
    damaged: Mutex<HashSet<(SnapshotId, String)>>,
    /// Files whose contents were pushed into the kernel's page cache (most recent).
    pushed: Mutex<lru::LruCache<u64, ()>>,
    /// Bytes of chunks to load ahead of a sequential reader.
    readahead_bytes: u64,
    /// Reads answered from cached chunks on the FUSE thread, and by workers: how well
    /// prefetching works, logged at unmount.
    pub reads_cached: AtomicU64,
    pub reads_waited: AtomicU64,
    /// Files stored into the kernel's page cache ahead of a walk.
    pub files_pushed: AtomicU64,
    /// Lookups answered: a walk whose listings came with attributes needs almost none.
    pub lookups: AtomicU64,
}

fn errno(e: &rewind_store::Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn to_system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
    }
}

/// The kind of an entry without computing its attributes.
pub fn entry_type(e: &Entry) -> FileType {
    match e {
        Entry::Node { node, .. } => file_type(node.kind),
        Entry::Latest(_) => FileType::Symlink,
        _ => FileType::Directory,
    }
}

/// A Linux `dev_t` (glibc's 64-bit encoding) in the 32-bit encoding FUSE carries.
pub fn fuse_rdev(rdev: u64) -> u32 {
    let major = libc::major(rdev as libc::dev_t) as u32;
    let minor = libc::minor(rdev as libc::dev_t) as u32;
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Whether an entry lists snapshots (and so changes while mounted).
fn is_live(e: &Entry) -> bool {
    !matches!(e, Entry::Node { .. } | Entry::Snapshot(_))
}

/// Bytes of a cached chunk: the chunk and the range of it a read returns.
pub type ChunkSlice = rewind_store::Piece;

impl Core {
    pub fn new(view: Arc<View>, readahead_bytes: u64) -> Core {
        Core {
            view,
            inodes: Mutex::new(InodeTable::new()),
            listings: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(LISTINGS).expect("nonzero"))),
            files: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(READERS).expect("nonzero"))),
            damaged: Mutex::new(HashSet::new()),
            pushed: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(PUSHED).expect("nonzero"))),
            readahead_bytes,
            reads_cached: AtomicU64::new(0),
            reads_waited: AtomicU64::new(0),
            files_pushed: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    pub fn view(&self) -> &View {
        &self.view
    }

    fn entry(&self, ino: u64) -> Result<Entry, Errno> {
        self.inodes.lock().get(ino).map(|i| i.entry.clone()).ok_or(Errno::ESTALE)
    }

    fn answer(&self, ino: u64, e: &Entry) -> Result<Answer, Errno> {
        let a = self.view.attr(e).map_err(|e| errno(&e))?;
        let time = to_system_time(a.mtime);
        let attr = FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: to_system_time(a.ctime),
            crtime: time,
            kind: file_type(a.kind),
            perm: (a.perm & 0o7777) as u16,
            nlink: a.nlink.min(u64::from(u32::MAX)) as u32,
            uid: a.uid,
            gid: a.gid,
            rdev: fuse_rdev(a.rdev),
            blksize: BLKSIZE,
            flags: 0,
        };
        let ttl = if is_live(e) { TTL_LIVE } else { TTL_FROZEN };
        Ok(Answer { attr, ttl })
    }

    /// The tree a lookup or listing in `dir` would read, if it is not cached: such calls belong on
    /// a worker thread, not the FUSE loop.
    pub fn needs_tree_read(&self, ino: u64) -> bool {
        let tree: Option<TreeId> = self.entry(ino).ok().and_then(|e| self.view.dir_tree(&e));
        tree.is_some_and(|t| !self.view.repo().tree_cached(&t))
    }

    /// Look `name` up in directory `parent`; counts one kernel reference on success.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Answer, Errno> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let dir = self.entry(parent)?;
        if is_live(&dir) {
            self.view.refresh_if_stale();
        }
        if let Entry::Node { node, .. } = &dir
            && !node.is_dir()
        {
            return Err(Errno::ENOTDIR);
        }
        let e = match self.view.lookup(&dir, name) {
            // A snapshot saved since the last look: its manifest exists, so it is there now.
            // One listing of `snapshots/` per miss in a directory that lists snapshots.
            Err(rewind_store::Error::NotFound(_)) if is_live(&dir) => {
                if let Err(e) = self.view.refresh() {
                    tracing::warn!("cannot refresh the snapshot list: {e}");
                }
                self.view.lookup(&dir, name)
            }
            r => r,
        }
        .map_err(|e| errno(&e))?;
        let ino = self.inodes.lock().lookup(parent, name, e.clone()).ok_or(Errno::ESTALE)?;
        match self.answer(ino, &e) {
            Ok(a) => Ok(a),
            Err(err) => {
                self.forget(ino, 1);
                Err(err)
            }
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if self.inodes.lock().forget(ino, n) {
            self.files.lock().pop(&ino);
            self.listings.lock().pop(&ino);
        }
    }

    /// Number of inodes the kernel holds.
    #[cfg(test)]
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().len()
    }

    pub fn getattr(&self, ino: u64) -> Result<Answer, Errno> {
        let e = self.entry(ino)?;
        if is_live(&e) {
            self.view.refresh_if_stale();
        }
        self.answer(ino, &e)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let e = self.entry(ino)?;
        if matches!(e, Entry::Latest(_)) {
            // `latest` names the newest snapshot as of now, not as of the last second.
            if let Err(err) = self.view.refresh() {
                tracing::warn!("cannot refresh the snapshot list: {err}");
            }
        }
        self.view.readlink(&e).map_err(|err| match err {
            rewind_store::Error::InvalidInput(_) => Errno::EINVAL,
            other => errno(&other),
        })
    }

    /// The listing of directory `ino` for a read from `offset`. A read from 0 starts a new pass:
    /// directories outside snapshots are listed again then, since backups change them; the others
    /// never change and are listed once while kept.
    pub fn listing(&self, ino: u64, offset: u64) -> Result<Arc<Listing>, Errno> {
        let e = self.entry(ino)?;
        if let Entry::Node { node, .. } = &e
            && !node.is_dir()
        {
            return Err(Errno::ENOTDIR);
        }
        let live = is_live(&e);
        if !(live && offset == 0)
            && let Some(l) = self.listings.lock().get(&ino)
        {
            return Ok(l.clone());
        }
        if live {
            // A new listing pass shows every snapshot whose manifest exists now.
            if let Err(err) = self.view.refresh() {
                tracing::warn!("cannot refresh the snapshot list: {err}");
            }
        }
        let items = self
            .view
            .list(&e)
            .map_err(|e| errno(&e))?
            .into_iter()
            .map(|(name, entry)| DirItem { name, entry })
            .collect();
        let listing = Arc::new(Listing { ino, items });
        self.listings.lock().put(ino, listing.clone());
        Ok(listing)
    }

    /// Whether reading directory `ino` from `offset` would have to read a tree first: its own,
    /// or one of a subdirectory's (its link count counts the subdirectories in it).
    pub fn listing_needs_tree_read(&self, ino: u64, offset: u64) -> bool {
        if (offset == 0 || !self.listings.lock().contains(&ino)) && self.needs_tree_read(ino) {
            return true;
        }
        // Only directories in snapshots hold directories whose trees are counted.
        let Ok(dir @ (Entry::Node { .. } | Entry::Snapshot(_))) = self.entry(ino) else { return false };
        let listed = self.listings.lock().get(&ino).cloned();
        match listed {
            Some(l) => l.items.iter().any(|i| self.attr_needs_tree_read(&i.entry)),
            None => self.view.list(&dir).is_ok_and(|l| l.iter().any(|(_, e)| self.attr_needs_tree_read(e))),
        }
    }

    /// Whether the attributes of `e` need a tree read (a directory's, to count its subdirectories).
    fn attr_needs_tree_read(&self, e: &Entry) -> bool {
        self.view.attr_tree(e).is_some_and(|t| !self.view.repo().tree_cached(&t))
    }

    /// Whether `getattr` of `ino` would read a tree.
    pub fn getattr_needs_tree_read(&self, ino: u64) -> bool {
        self.entry(ino).is_ok_and(|e| self.attr_needs_tree_read(&e))
    }

    /// Whether looking `name` up in `parent` would read a tree: the parent's, or the one of the
    /// directory found.
    pub fn lookup_needs_tree_read(&self, parent: u64, name: &[u8]) -> bool {
        if self.needs_tree_read(parent) {
            return true;
        }
        let Ok(dir) = self.entry(parent) else { return false };
        self.view.lookup(&dir, name).is_ok_and(|e| self.attr_needs_tree_read(&e))
    }

    /// The inode number `name` in `dir` has or would get, without counting a reference.
    fn peek_ino(&self, dir: u64, name: &[u8], e: &Entry) -> u64 {
        let t = self.inodes.lock();
        let Some(p) = t.get(dir) else { return 0 };
        let key = child_key(p.key, p.snap_key, name, e);
        t.ino_of_key(key)
    }

    /// Entries of an open directory from `offset` (0 and 1 are `.` and `..`). `add` returns true
    /// when the reply is full.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &[u8]) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.listing(ino, offset)?;
        let parent = self.inodes.lock().get(dir.ino).map_or(ROOT, |i| i.parent);
        let mut i = offset;
        loop {
            let full = match i {
                0 => add(dir.ino, 1, FileType::Directory, b"."),
                1 => add(parent, 2, FileType::Directory, b".."),
                _ => {
                    let Some(item) = dir.items.get((i - 2) as usize) else { break };
                    let ino = self.peek_ino(dir.ino, &item.name, &item.entry);
                    add(ino, i + 1, entry_type(&item.entry), &item.name)
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    /// Like [`Core::readdir`] with attributes; every entry handed to the kernel (but `.` and `..`)
    /// counts one reference, as a lookup does. `add` returns true when the reply is full (and
    /// the entry was not added).
    pub fn readdirplus(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, &[u8], &Answer) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.listing(ino, offset)?;
        let mut i = offset;
        loop {
            let full = match i {
                0 | 1 => {
                    let ino = if i == 0 { dir.ino } else { self.inodes.lock().get(dir.ino).map_or(ROOT, |n| n.parent) };
                    let e = self.entry(ino).unwrap_or(Entry::Root);
                    let a = self.answer(ino, &e)?;
                    add(i + 1, if i == 0 { b"." } else { b".." }, &a)
                }
                _ => {
                    let Some(item) = dir.items.get((i - 2) as usize) else { break };
                    let ino =
                        self.inodes.lock().lookup(dir.ino, &item.name, item.entry.clone()).ok_or(Errno::ESTALE)?;
                    let full = match self.answer(ino, &item.entry) {
                        Ok(a) => add(i + 1, &item.name, &a),
                        Err(_) => false,
                    };
                    if full {
                        self.forget(ino, 1);
                    }
                    full
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    /// The path of an inode inside its snapshot, and the snapshot, for messages.
    fn describe(&self, ino: u64) -> (Option<SnapshotId>, String) {
        let t = self.inodes.lock();
        let mut parts: Vec<String> = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            let Some(i) = t.get(cur) else { break };
            match &i.entry {
                Entry::Node { node, .. } => parts.push(node.name_lossy().into_owned()),
                Entry::Snapshot(id) => {
                    parts.reverse();
                    return (Some(*id), format!("/{}", parts.join("/")));
                }
                _ => break,
            }
            cur = i.parent;
        }
        parts.reverse();
        (None, format!("/{}", parts.join("/")))
    }

    /// The reader of a file inode, made on its first read and kept while the kernel holds the
    /// inode. The kernel does not open files here (open answers ENOSYS, so opens and closes
    /// cost no round trip), so readers belong to inodes, not to opens. The flag says whether the
    /// reader is new (the file's first read).
    pub fn open(&self, ino: u64, write: bool) -> Result<(Arc<OpenFile>, bool), Errno> {
        if write {
            return Err(Errno::EROFS);
        }
        if let Some(f) = self.files.lock().get(&ino) {
            return Ok((f.clone(), false));
        }
        let e = self.entry(ino)?;
        match &e {
            Entry::Node { node, .. } if node.kind == NodeKind::File => {}
            Entry::Node { node, .. } if node.kind == NodeKind::Dir => return Err(Errno::EISDIR),
            Entry::Node { .. } | Entry::Latest(_) => return Err(Errno::EINVAL),
            _ => return Err(Errno::EISDIR),
        }
        let snapshot = match &e {
            Entry::Node { snapshot, .. } => *snapshot,
            _ => unreachable!("checked above"),
        };
        let reader = match self.view.open(&e) {
            Ok(r) => r,
            Err(err) => {
                let (_, path) = self.describe(ino);
                self.log_damage(snapshot, &path, &err);
                return Err(Errno::EIO);
            }
        };
        let file = Arc::new(OpenFile { reader, snapshot, ino, next: AtomicU64::new(0), ahead: AtomicUsize::new(0) });
        let mut files = self.files.lock();
        if let Some(f) = files.get(&ino) {
            return Ok((f.clone(), false));
        }
        files.put(ino, file.clone());
        Ok((file, true))
    }

    /// Readers held, one per file inode read and not forgotten.
    #[cfg(test)]
    pub fn reader_count(&self) -> usize {
        self.files.lock().len()
    }

    fn log_damage(&self, snapshot: SnapshotId, path: &str, err: &rewind_store::Error) {
        if self.damaged.lock().insert((snapshot, path.to_string())) {
            let name = self.view.snapshot_name(&snapshot).unwrap_or_default();
            tracing::error!("snapshot {name} ({}): {path}: {err}; reads of it fail with EIO", snapshot.short());
        }
    }

    /// Chunks to load ahead of a read of `[offset, offset + len)`, if the reads of this file are
    /// sequential; remembers what was handed out so each chunk is prefetched once.
    pub fn plan_readahead(&self, f: &OpenFile, offset: u64, len: u64) -> Vec<usize> {
        let prev = f.next.swap(offset + len, Ordering::Relaxed);
        // The kernel's own read-ahead can reorder neighbouring requests a little.
        let sequential = offset == 0 || offset.abs_diff(prev) <= 4 << 20;
        let size = f.reader.size();
        if !sequential || self.readahead_bytes == 0 || offset + len >= size {
            return Vec::new();
        }
        let Some(last) = f.reader.chunk_index((offset + len).min(size - 1)) else { return Vec::new() };
        let want = f.reader.plan_ahead(last, self.readahead_bytes, size).end;
        let from = f.ahead.fetch_max(want, Ordering::Relaxed).max(last + 1);
        (from..want).collect()
    }

    /// Load chunk `i` of a file into the cache (a prefetch; errors are left for the read).
    pub fn warm(&self, f: &OpenFile, i: usize) {
        if let Some(span) = f.reader.chunks().get(i) {
            self.warm_chunk(span.id);
        }
    }

    /// The contents of a one-chunk file of `size` bytes, for a push into the page cache: loaded,
    /// or waited for if on its way. `None` if damaged or not that long (the read that needs it
    /// reports that): a push must never change what the file shows.
    pub fn chunk_to_push(&self, id: ChunkId, size: u64) -> Option<Arc<Vec<u8>>> {
        self.view.repo().chunk(id).ok().filter(|data| data.len() as u64 == size)
    }

    /// Load a chunk into the cache unless it is there or on its way.
    pub fn warm_chunk(&self, id: ChunkId) {
        let _ = self.view.repo().prefetch_chunk(id);
    }

    /// Load a directory into the tree cache (a prefetch; errors are left for the lookup), and
    /// return the trees of its subdirectories that are not cached, to go on with.
    pub fn warm_tree(&self, id: TreeId) -> Vec<TreeId> {
        match self.view.repo().tree(id) {
            Ok(tree) => tree
                .nodes
                .iter()
                .filter_map(|n| n.subtree.filter(|_| n.is_dir()))
                .filter(|t| !self.view.repo().tree_cached(t))
                .take(PREFETCH_TREES)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Trees of the subdirectories of a directory being read that are not cached yet: a walk
    /// (`find`, `du`, `tar`) enters them next.
    pub fn subtrees_to_prefetch(&self, ino: u64) -> Vec<TreeId> {
        let Some(dir) = self.listings.lock().peek(&ino).cloned() else { return Vec::new() };
        dir.items
            .iter()
            .filter_map(|i| match &i.entry {
                Entry::Node { node, .. } if node.is_dir() => node.subtree,
                _ => None,
            })
            .filter(|t| !self.view.repo().tree_cached(t))
            .take(PREFETCH_TREES)
            .collect()
    }

    /// Chunks of the files a walk reads after `ino`, not cached yet: programs that copy a tree
    /// (`tar`, `cp -r`, `rsync`) read a directory's entries in order and each subdirectory
    /// where it comes, so the files that follow are those after `ino` in its directory, depth
    /// first, then those after its directory in the parent's, and so on up to the snapshot. Only
    /// trees already cached are followed (the walk's listings have loaded them); the first two
    /// chunks of at most [`PREFETCH_FILES`] files are taken, up to a quarter of the read-ahead.
    pub fn following_to_prefetch(&self, ino: u64) -> Vec<ChunkId> {
        let mut plan = Prefetch { out: Vec::new(), files: 0, bytes: 0, limit: self.readahead_bytes / 4, seen: 0 };
        let mut cur = ino;
        while let Some(place) = self.place(cur) {
            if !self.plan_walk(&place.tree.nodes[place.pos + 1..], &mut plan) || place.top {
                break;
            }
            cur = place.parent;
        }
        plan.out
    }

    /// Where `ino` (something inside a snapshot) stands in its directory, if that directory's
    /// tree is cached.
    fn place(&self, ino: u64) -> Option<Place> {
        let (parent, name) = {
            let t = self.inodes.lock();
            let i = t.get(ino)?;
            match &i.entry {
                Entry::Node { node, .. } => (i.parent, node.name.clone()),
                _ => return None,
            }
        };
        let dir = self.entry(parent).ok()?;
        let top = matches!(dir, Entry::Snapshot(_));
        let tree = self.view.dir_tree(&dir);
        let tree = self.view.repo().tree(tree.filter(|t| self.view.repo().tree_cached(t))?).ok()?;
        let pos = tree.nodes.binary_search_by(|n| n.name.as_slice().cmp(&name)).ok()?;
        Some(Place { parent, tree, pos, top })
    }

    /// Small files after `ino` in its directory (one chunk, at most [`PUSH_MAX`] bytes; as many
    /// as a walk prefetch takes) that the kernel knows (it listed them) and that were not pushed
    /// before: their contents can go into the kernel's page cache before a walk reads them, so
    /// reading them costs no round trip. Larger files are read ahead by the kernel anyway.
    pub fn following_to_push(&self, ino: u64) -> Vec<(u64, ChunkId, u64)> {
        let Some(Place { parent, tree, pos, .. }) = self.place(ino) else { return Vec::new() };
        let t = self.inodes.lock();
        let mut pushed = self.pushed.lock();
        let (mut out, mut bytes) = (Vec::new(), 0);
        for n in tree.nodes[pos + 1..].iter().take(64 * PREFETCH_FILES) {
            if out.len() >= PREFETCH_FILES || bytes >= self.readahead_bytes / 4 {
                break;
            }
            if n.kind != NodeKind::File || n.content.len() != 1 || n.size == 0 || n.size > PUSH_MAX {
                continue;
            }
            bytes += n.size;
            if let Some(child) = t.known_child(parent, n)
                && pushed.put(child, ()).is_none()
            {
                out.push((child, n.content[0], n.size));
            }
        }
        out
    }

    /// Add the files of `nodes`, depth first, to `plan`; false when the plan is full or the walk
    /// reaches a tree that is not cached.
    fn plan_walk(&self, nodes: &[Node], plan: &mut Prefetch) -> bool {
        for n in nodes {
            plan.seen += 1;
            if plan.files >= PREFETCH_FILES || plan.bytes >= plan.limit || plan.seen > 64 * PREFETCH_FILES {
                return false;
            }
            match n.kind {
                NodeKind::File => {
                    plan.files += 1;
                    plan.bytes += n.size;
                    plan.out.extend(n.content.iter().take(2).filter(|id| !self.view.repo().chunk_cached(id)));
                }
                NodeKind::Dir => {
                    let Some(t) = n.subtree.filter(|t| self.view.repo().tree_cached(t)) else { return false };
                    let Ok(tree) = self.view.repo().tree(t) else { return false };
                    if !self.plan_walk(&tree.nodes, plan) {
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    }

    /// Read up to `size` bytes at `offset`. A damaged chunk is EIO, logged once per file.
    #[cfg(test)]
    pub fn read(&self, f: &OpenFile, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        // Both ways the FUSE glue serves reads.
        if let Some(r) = self.read_in_chunk(f, offset, size) {
            return r.map(|(data, range)| data[range].to_vec());
        }
        let mut buf = Vec::new();
        let n = self.read_into(f, offset, size, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Whether every chunk a read of `[offset, offset + size)` needs is in the cache now, so the
    /// read costs copies only: such reads are answered on the FUSE thread, without a hand-off.
    pub fn read_is_cached(&self, f: &OpenFile, offset: u64, size: u32) -> bool {
        match read_span(f, offset, size) {
            Some((_, a, b)) => f.reader.chunks()[a..=b].iter().all(|c| self.view.repo().chunk_cached(&c.id)),
            None => true,
        }
    }

    /// A read that lies within one chunk (most reads of small files), served as a slice of the
    /// cached chunk: no copy into a buffer. `None` when the read spans chunks or is empty.
    pub fn read_in_chunk(&self, f: &OpenFile, offset: u64, size: u32) -> Option<Result<ChunkSlice, Errno>> {
        let (end, i, last) = read_span(f, offset, size)?;
        if last != i {
            return None;
        }
        let res = f.reader.piece(offset, end);
        Some(res.map_err(|err| {
            let (_, path) = self.describe(f.ino);
            self.log_damage(f.snapshot, &path, &err);
            Errno::EIO
        }))
    }

    /// [`Core::read`] into a buffer the caller reuses (workers keep one each, so reads do not
    /// allocate); returns the number of bytes at the start of `buf`.
    pub fn read_into(&self, f: &OpenFile, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<usize, Errno> {
        let end = offset.saturating_add(u64::from(size)).min(f.reader.size());
        if offset >= end {
            return Ok(0);
        }
        let len = (end - offset) as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        match f.reader.read_at(offset, &mut buf[..len]) {
            Ok(n) => Ok(n),
            Err(err) => {
                let (_, path) = self.describe(f.ino);
                self.log_damage(f.snapshot, &path, &err);
                Err(Errno::EIO)
            }
        }
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        match self.entry(ino)? {
            Entry::Node { node, .. } => node.xattr(name).map(<[u8]>::to_vec).ok_or(Errno::ENODATA),
            _ => Err(Errno::ENODATA),
        }
    }

    /// Names of the extended attributes, each followed by a NUL.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        if let Entry::Node { node, .. } = self.entry(ino)? {
            for x in &node.xattrs {
                out.extend_from_slice(&x.name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Totals over all snapshots, from their manifests (no tree is read).
    pub fn statfs(&self) -> Statfs {
        let bsize = 4096u32;
        let (mut bytes, mut files) = (0u64, 0u64);
        for (_, s) in self.view.snapshots() {
            let m = &s.snapshot.summary;
            bytes = bytes.saturating_add(m.bytes_total);
            files = files.saturating_add(m.files_new + m.files_changed + m.files_unchanged + m.dirs + m.others);
        }
        Statfs { blocks: bytes.div_ceil(u64::from(bsize)), files, bsize, namelen: 255 }
    }
}

/// Reply for a value-returning xattr call: the size only when `size` is 0, ERANGE when too small.
pub fn xattr_reply(value: &[u8], size: u32) -> Result<Option<&[u8]>, Errno> {
    if size == 0 {
        Ok(None)
    } else if value.len() > size as usize {
        Err(Errno::ERANGE)
    } else {
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use rewind_store::{
        BackupOptions, BackupProgress, CacheSizes, ChunkerParams, CompressionParams, IndexedRepository, Repository,
        backup,
    };

    use super::*;

    /// Bytes from the workspace's seeded test generator (ChaCha8).
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; n];
        rand::RngCore::fill_bytes(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed), &mut out);
        out
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        src: std::path::PathBuf,
        repo: IndexedRepository,
        core: Core,
    }

    /// A repository with one snapshot of a small tree; chunks are small so files span several.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("big"), noise(300_000, 1)).unwrap();
        std::fs::write(src.join("other"), noise(100_000, 2)).unwrap();
        std::fs::write(src.join("sub/small"), b"small file\n").unwrap();
        std::fs::set_permissions(src.join("sub/small"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::hard_link(src.join("sub/small"), src.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/small", src.join("sym")).unwrap();
        // Below the chunker's minimum: one chunk whatever the repository's (random) gear table.
        std::fs::write(src.join("tail"), noise(4000, 3)).unwrap();
        assert!(xattr_set(&src.join("other"), b"user.note", b"value"), "the temp filesystem must support user xattrs");
        let chunker = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
        let repo = Repository::init(
            &dir.path().join("repo"),
            chunker,
            CompressionParams::default(),
            rewind_store::NewKey::test(),
        )
        .unwrap();
        let repo = repo.open_indexed(CacheSizes::default()).unwrap();
        let opts = BackupOptions {
            paths: vec![src.clone()],
            host: "box".into(),
            tags: vec!["daily".into()],
            excludes: vec![],
            parent: None,
            force: false,
        };
        backup(&repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
        let view = Arc::new(View::new(repo.clone()).unwrap());
        Fixture { _dir: dir, src, repo, core: Core::new(view, 64 << 10) }
    }

    fn xattr_set(path: &Path, name: &[u8], value: &[u8]) -> bool {
        let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings and a buffer of the given length.
        unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
    }

    /// Look a path up from the root, component by component, following `latest`.
    fn walk(core: &Core, path: &str) -> Result<(u64, Answer), Errno> {
        let mut ino = ROOT;
        let mut last = core.getattr(ROOT)?;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            last = core.lookup(ino, comp.as_bytes())?;
            ino = last.attr.ino.0;
            if last.attr.kind == FileType::Symlink && comp == "latest" {
                let target = core.readlink(ino)?;
                let parent = core.inodes.lock().get(ino).unwrap().parent;
                last = core.lookup(parent, &target)?;
                ino = last.attr.ino.0;
            }
        }
        Ok((ino, last))
    }

    fn in_snapshot(f: &Fixture, rel: &str) -> String {
        format!("hosts/box/latest{}/{rel}", f.src.display())
    }

    #[test]
    fn attributes_match_the_source() {
        let f = fixture();
        for rel in ["big", "other", "sub/small", "sub", "sym"] {
            let (_, a) = walk(&f.core, &in_snapshot(&f, rel)).unwrap();
            let m = std::fs::symlink_metadata(f.src.join(rel)).unwrap();
            assert_eq!(u32::from(a.attr.perm), m.mode() & 0o7777, "{rel}");
            assert_eq!((a.attr.uid, a.attr.gid), (m.uid(), m.gid()), "{rel}");
            if !m.is_dir() {
                assert_eq!(a.attr.size, m.len(), "{rel}");
            }
            let mtime = a.attr.mtime.duration_since(UNIX_EPOCH).unwrap();
            assert_eq!((mtime.as_secs() as i64, i64::from(mtime.subsec_nanos())), (m.mtime(), m.mtime_nsec()), "{rel}");
            assert_eq!(a.ttl, TTL_FROZEN);
        }
        let (_, root) = walk(&f.core, "").unwrap();
        assert_eq!(root.attr.kind, FileType::Directory);
        assert_eq!(root.ttl, TTL_LIVE);
    }

    /// Directories count their subdirectories as on ext4 (2 + n): `find` skips the rest of a
    /// directory once it has met nlink - 2 subdirectories.
    #[test]
    fn directories_link_count_is_two_plus_subdirectories() {
        let f = fixture();
        let nlink = |path: &str| walk(&f.core, path).unwrap().1.attr.nlink;
        assert_eq!(nlink(&in_snapshot(&f, "")), 3, "src holds one directory, sub");
        assert_eq!(nlink(&in_snapshot(&f, "sub")), 2);
        assert_eq!(nlink(""), 6, "snapshots, hosts, ids, tags");
        assert_eq!((nlink("snapshots"), nlink("hosts"), nlink("hosts/box"), nlink("tags/daily")), (3, 3, 3, 3));
        assert_eq!(nlink(&in_snapshot(&f, "big")), 1);
    }

    #[test]
    fn hardlinks_are_one_inode_with_their_link_count() {
        let f = fixture();
        let (a, attr_a) = walk(&f.core, &in_snapshot(&f, "link")).unwrap();
        let (b, attr_b) = walk(&f.core, &in_snapshot(&f, "sub/small")).unwrap();
        assert_eq!(a, b);
        assert_eq!((attr_a.attr.nlink, attr_b.attr.nlink), (2, 2));
        let (c, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn missing_names_and_files_as_directories() {
        let f = fixture();
        assert_eq!(walk(&f.core, "nope").unwrap_err(), Errno::ENOENT);
        assert_eq!(walk(&f.core, &in_snapshot(&f, "nope")).unwrap_err(), Errno::ENOENT);
        assert_eq!(walk(&f.core, &in_snapshot(&f, "big/x")).unwrap_err(), Errno::ENOTDIR);
        assert_eq!(f.core.getattr(999).unwrap_err(), Errno::ESTALE);
    }

    #[test]
    fn symlinks_read_back() {
        let f = fixture();
        let (ino, _) = walk(&f.core, &in_snapshot(&f, "sym")).unwrap();
        assert_eq!(f.core.readlink(ino).unwrap(), b"sub/small");
        let (host, _) = walk(&f.core, "hosts/box").unwrap();
        let latest = f.core.lookup(host, b"latest").unwrap();
        let name = f.core.readlink(latest.attr.ino.0).unwrap();
        assert_eq!(latest.attr.size, name.len() as u64);
        let (snap, _) = walk(&f.core, "snapshots").unwrap();
        assert!(f.core.lookup(snap, &name).is_ok());
        let (file, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        assert_eq!(f.core.readlink(file).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn readdir_lists_dot_dotdot_and_entries_with_offsets() {
        let f = fixture();
        let (dir, _) = walk(&f.core, &in_snapshot(&f, "")).unwrap();
        let mut names = Vec::new();
        f.core
            .readdir(dir, 0, |_, next, _, name| {
                names.push((String::from_utf8_lossy(name).into_owned(), next));
                false
            })
            .unwrap();
        let just: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(just, [".", "..", "big", "link", "other", "sub", "sym", "tail"]);
        // Resuming at an offset gives the rest.
        let mut rest = Vec::new();
        f.core
            .readdir(dir, names[3].1, |_, _, _, name| {
                rest.push(String::from_utf8_lossy(name).into_owned());
                false
            })
            .unwrap();
        assert_eq!(rest, ["other", "sub", "sym", "tail"]);
        // A full reply stops the listing.
        let mut n = 0;
        f.core
            .readdir(dir, 0, |_, _, _, _| {
                n += 1;
                n == 3
            })
            .unwrap();
        assert_eq!(n, 3);
        // Files are not directories; unknown inodes are stale.
        let (file, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        assert_eq!(f.core.readdir(file, 0, |_, _, _, _| false).unwrap_err(), Errno::ENOTDIR);
        assert_eq!(f.core.readdir(0xdead_beef, 0, |_, _, _, _| false).unwrap_err(), Errno::ESTALE);
    }

    #[test]
    fn snapshot_lists_change_their_mtime_when_they_change() {
        let f = fixture();
        let names = |ino: u64| {
            let mut out = Vec::new();
            f.core
                .readdir(ino, 0, |_, _, _, n| {
                    out.push(n.to_vec());
                    false
                })
                .unwrap();
            out.len() - 2
        };
        let (snaps, _) = walk(&f.core, "snapshots").unwrap();
        let (host, _) = walk(&f.core, "hosts/box").unwrap();
        let before = (f.core.getattr(snaps).unwrap().attr.mtime, f.core.getattr(host).unwrap().attr.mtime);
        assert_eq!(names(snaps), 1);
        let opts = BackupOptions {
            paths: vec![f.src.clone()],
            host: "box".into(),
            tags: vec![],
            excludes: vec![],
            parent: None,
            force: true,
        };
        backup(&f.repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
        assert!(f.core.view().refresh().unwrap());
        let after = (f.core.getattr(snaps).unwrap().attr.mtime, f.core.getattr(host).unwrap().attr.mtime);
        assert!(after.0 > before.0 && after.1 > before.1, "{before:?} then {after:?}");
        // A pass from offset 0 lists live directories again.
        assert_eq!(names(snaps), 2);
        // A removal moves it on too, though the newest snapshot stays.
        let oldest = f.core.view().snapshots()[0].1.id;
        std::fs::remove_file(f.repo.repo().local_path().unwrap().join("snapshots").join(oldest.to_hex())).unwrap();
        assert!(f.core.view().refresh().unwrap());
        let last = f.core.getattr(snaps).unwrap().attr.mtime;
        assert!(last > after.0);
        assert_eq!(names(snaps), 1);
        // Snapshot directories keep their snapshot's time.
        let (snap, _) = walk(&f.core, "hosts/box/latest").unwrap();
        let t = f.core.view().snapshots()[0].1.snapshot.time;
        assert_eq!(
            f.core.getattr(snap).unwrap().attr.mtime,
            to_system_time(Time { sec: t.as_second(), nsec: t.subsec_nanosecond() as u32 })
        );
    }

    #[test]
    fn readdir_inodes_agree_with_lookup() {
        let f = fixture();
        let (dir, _) = walk(&f.core, &in_snapshot(&f, "")).unwrap();
        let mut seen = Vec::new();
        f.core
            .readdir(dir, 2, |ino, _, _, name| {
                seen.push((ino, name.to_vec()));
                false
            })
            .unwrap();
        for (ino, name) in seen {
            assert_eq!(f.core.lookup(dir, &name).unwrap().attr.ino.0, ino, "{}", String::from_utf8_lossy(&name));
        }
    }

    #[test]
    fn readdirplus_counts_lookups_that_forget_releases() {
        let f = fixture();
        let (dir, _) = walk(&f.core, &in_snapshot(&f, "sub")).unwrap();
        let before = f.core.inode_count();
        let mut got = Vec::new();
        f.core
            .readdirplus(dir, 0, |_, name, a| {
                got.push((name.to_vec(), a.attr.ino.0, a.attr.size));
                false
            })
            .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].0, b"small");
        assert_eq!(got[2].2, 11);
        assert_eq!(f.core.inode_count(), before + 1);
        f.core.forget(got[2].1, 1);
        assert_eq!(f.core.inode_count(), before);
        // An entry that did not fit is not counted.
        f.core.readdirplus(dir, 2, |_, _, _| true).unwrap();
        assert_eq!(f.core.inode_count(), before);
    }

    #[test]
    fn reads_return_the_bytes_at_any_offset() {
        let f = fixture();
        let want = std::fs::read(f.src.join("big")).unwrap();
        let (ino, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        let (file, new) = f.core.open(ino, false).unwrap();
        assert!(new);
        assert!(!f.core.open(ino, false).unwrap().1, "one reader per inode");
        assert!(file.reader.chunks().len() > 3, "the test wants a file of several chunks");
        for (off, len) in [(0u64, 4096u32), (1, 70_000), (150_000, 150_000), (299_990, 100), (400_000, 10)] {
            let got = f.core.read(&file, off, len).unwrap();
            let end = (off as usize + len as usize).min(want.len());
            let start = (off as usize).min(end);
            assert_eq!(got, want[start..end], "read at {off} of {len}");
        }
        // The reader goes when the kernel forgets the inode.
        assert_eq!(f.core.reader_count(), 1);
        f.core.forget(ino, 1);
        assert_eq!(f.core.reader_count(), 0);
    }

    #[test]
    fn sequential_reads_plan_readahead_once_and_random_reads_none() {
        let f = fixture();
        let (ino, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        let (file, _) = f.core.open(ino, false).unwrap();
        let first = f.core.plan_readahead(&file, 0, 4096);
        assert!(!first.is_empty());
        assert_eq!(first[0], 1);
        let again = f.core.plan_readahead(&file, 4096, 4096);
        assert!(again.iter().all(|i| !first.contains(i)), "{first:?} then {again:?}");
        for &i in &first {
            f.core.warm(&file, i);
            assert!(f.repo.chunk_cached(&file.reader.chunks()[i].id));
        }
        let far = f.core.plan_readahead(&file, 200_000_000, 4096);
        assert!(far.is_empty());
    }

    #[test]
    fn walks_prefetch_subdirectories_and_following_files() {
        let f = fixture();
        let (dir, _) = walk(&f.core, &in_snapshot(&f, "")).unwrap();
        f.core.readdir(dir, 0, |_, _, _, _| false).unwrap();
        let trees = f.core.subtrees_to_prefetch(dir);
        assert_eq!(trees.len(), 1, "the one subdirectory, not read yet");
        assert!(f.core.warm_tree(trees[0]).is_empty(), "sub has no subdirectories");
        assert!(f.core.subtrees_to_prefetch(dir).is_empty());

        let first_chunk = |ino| f.core.open(ino, false).unwrap().0.reader.chunks()[0].id;
        let (big, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        let (other, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
        let (small, _) = walk(&f.core, &in_snapshot(&f, "sub/small")).unwrap();
        let (tail, _) = walk(&f.core, &in_snapshot(&f, "tail")).unwrap();
        // The walk goes down into subdirectories and back up to the parent's next files.
        assert_eq!(f.core.following_to_prefetch(other), [first_chunk(small), first_chunk(tail)]);
        assert_eq!(f.core.following_to_prefetch(small), [first_chunk(tail)]);
        let chunks = f.core.following_to_prefetch(big);
        assert!(chunks.contains(&first_chunk(other)), "the next file's first chunk is prefetched");
        for id in chunks {
            f.core.warm_chunk(id);
        }
        assert!(f.repo.chunk_cached(&first_chunk(other)));
        assert!(f.core.following_to_prefetch(big).is_empty(), "what is cached is not asked for again");
        // The last file of the snapshot has nothing after it.
        assert!(f.core.following_to_prefetch(tail).is_empty());
    }

    #[test]
    fn walks_push_the_small_files_the_kernel_knows_once() {
        let f = fixture();
        let first_chunk = |ino| f.core.open(ino, false).unwrap().0.reader.chunks()[0].id;
        let (big, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        let (tail, _) = walk(&f.core, &in_snapshot(&f, "tail")).unwrap();
        // After big: link (not looked up yet), other (several chunks), sub, sym, tail.
        assert_eq!(f.core.following_to_push(big), [(tail, first_chunk(tail), 4000)]);
        let (link, _) = walk(&f.core, &in_snapshot(&f, "link")).unwrap();
        assert_eq!(f.core.following_to_push(big), [(link, first_chunk(link), 11)], "tail was pushed already");
        assert!(f.core.following_to_push(big).is_empty());
        assert!(f.core.following_to_push(tail).is_empty(), "nothing after the last file");
    }

    #[test]
    fn writes_and_non_files_are_refused() {
        let f = fixture();
        let (ino, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        assert_eq!(f.core.open(ino, true).err(), Some(Errno::EROFS));
        let (dir, _) = walk(&f.core, &in_snapshot(&f, "sub")).unwrap();
        assert_eq!(f.core.open(dir, false).err(), Some(Errno::EISDIR));
        assert_eq!(f.core.listing(ino, 0).err().unwrap(), Errno::ENOTDIR);
    }

    #[test]
    fn xattrs_listed_and_read() {
        let f = fixture();
        let (ino, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
        assert_eq!(f.core.listxattr(ino).unwrap(), b"user.note\0");
        assert_eq!(f.core.getxattr(ino, b"user.note").unwrap(), b"value");
        assert_eq!(f.core.getxattr(ino, b"user.none").unwrap_err(), Errno::ENODATA);
        assert_eq!(f.core.getxattr(ROOT, b"user.note").unwrap_err(), Errno::ENODATA);
        assert_eq!(f.core.listxattr(ROOT).unwrap(), b"");
    }

    #[test]
    fn xattr_reply_sizes() {
        assert_eq!(xattr_reply(b"abc", 0).unwrap(), None);
        assert_eq!(xattr_reply(b"abc", 3).unwrap(), Some(&b"abc"[..]));
        assert_eq!(xattr_reply(b"abc", 2).unwrap_err(), Errno::ERANGE);
    }

    #[test]
    fn damaged_chunk_is_eio_for_that_file_only() {
        let f = fixture();
        let (big, _) = walk(&f.core, &in_snapshot(&f, "big")).unwrap();
        let (other, _) = walk(&f.core, &in_snapshot(&f, "other")).unwrap();
        let (file, _) = f.core.open(big, false).unwrap();
        let span = file.reader.chunks()[2];
        let loc = f.repo.locate(span.id.into()).unwrap();
        let hex = loc.pack.to_hex();
        let pack = f.repo.repo().local_path().unwrap().join("data").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 0x55;
        std::fs::write(&pack, bytes).unwrap();
        // The damaged chunk's range fails; the bytes before it still read.
        assert_eq!(f.core.read(&file, span.offset, 10).unwrap_err(), Errno::EIO);
        assert_eq!(f.core.read(&file, 0, 10).unwrap().len(), 10);
        let want = std::fs::read(f.src.join("other")).unwrap();
        let (ofile, _) = f.core.open(other, false).unwrap();
        let same_pack = ofile.reader.chunks().iter().any(|c| f.repo.locate(c.id.into()).unwrap().pack == loc.pack);
        let got = f.core.read(&ofile, 0, want.len() as u32).unwrap();
        assert_eq!(got, want, "other file (same pack: {same_pack}) reads fine");
        assert_eq!(f.core.damaged.lock().len(), 1);
        assert!(f.core.damaged.lock().iter().any(|(_, p)| p.ends_with("/src/big")));
    }

    #[test]
    fn statfs_counts_from_manifests() {
        let f = fixture();
        let s = f.core.statfs();
        assert!(s.files >= 5, "{s:?}");
        assert_eq!(s.blocks, (300_000u64 + 100_000 + 11 + 11 + 4000).div_ceil(4096));
    }

    #[test]
    fn rdev_encoding_matches_the_kernel() {
        assert_eq!(fuse_rdev(libc::makedev(1, 3)), 0x103);
        assert_eq!(fuse_rdev(libc::makedev(8, 1)), 0x801);
        let big = libc::makedev(259, 0x12345);
        let enc = fuse_rdev(big);
        // The kernel's new_decode_dev.
        assert_eq!((enc & 0xfff00) >> 8, 259);
        assert_eq!((enc & 0xff) | ((enc >> 12) & 0xfff00), 0x12345);
    }

    #[test]
    fn snapshots_appear_under_every_directory() {
        let f = fixture();
        let (snaps, _) = walk(&f.core, "snapshots").unwrap();
        let mut names = Vec::new();
        f.core
            .readdir(snaps, 2, |_, _, _, n| {
                names.push(n.to_vec());
                false
            })
            .unwrap();
        assert_eq!(names.len(), 1);
        let name = String::from_utf8(names.remove(0)).unwrap();
        let a = walk(&f.core, &format!("snapshots/{name}")).unwrap();
        let b = walk(&f.core, &format!("tags/daily/{name}")).unwrap();
        let c = walk(&f.core, &format!("hosts/box/{name}")).unwrap();
        assert!(a.0 != b.0 && b.0 != c.0 && a.0 != c.0, "one inode per path");
        let id = f.core.view().snapshots()[0].1.id.short();
        assert!(walk(&f.core, &format!("ids/{id}")).is_ok());
    }
}
