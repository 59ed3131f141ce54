//! The filesystem's logic, free of FUSE replies: every operation is a function returning
//! `Result<_, Errno>`, unit-tested without a mount. [`crate::fuse`] only calls these and replies.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use parking_lot::Mutex;
use std::time::Duration;

use fuser::{Errno, FileAttr};
use rewind_store::{Entry, FileReader, SnapshotId, View};

use crate::inode::InodeTable;

mod attr;
mod dir;
mod prefetch;
mod read;

pub use attr::xattr_reply;
pub use prefetch::Ahead;

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
/// Files that follow one in a walk prefetched (pushed or loaded) when it is first read. Reads of
/// pushed files never reach the mount, so the next file read is where the pushes ran out: the
/// more files ahead, the fewer such reads (a `tar` of Django's 6,900 small files, after a
/// `find`: 1,700-2,900 files read from the mount with 32, 360-1,200 with 128).
const PREFETCH_FILES: usize = 128;
/// Files remembered as pushed into the kernel's page cache.
const PUSHED: usize = 8192;
/// Largest file pushed into the kernel's page cache ahead of a walk.
const PUSH_MAX: u64 = 256 * 1024;

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
}

#[cfg(test)]
mod tests;
