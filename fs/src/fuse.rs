//! The FUSE glue: the only code that touches `Reply*`. Each call asks [`Core`] and replies;
//! reads, and lookups or listings that would decompress a tree, run on worker threads so the FUSE
//! loop never waits on decompression. Every write fails with EROFS.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};

use rewind_store::TreeId;

use crate::core::{Ahead, Core, OpenFile, xattr_reply};
use crate::latency::LatencyHint;
use crate::pool::Pool;

/// The largest read the kernel should send, and the read-ahead it may do.
const MAX_IO: u32 = 1 << 20;

thread_local! {
    /// Each worker's read buffer, reused by every read it serves.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where file contents for the kernel's page cache go: `(inode, its one chunk)`, set once the
/// session exists.
pub type PushSlot = std::sync::OnceLock<crossbeam_channel::Sender<(u64, Arc<Vec<u8>>)>>;

/// What to do when the session ends, set once the session exists.
pub type EndSlot = std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>;

pub struct RewindFs {
    core: Arc<Core>,
    pool: Pool,
    latency: LatencyHint,
    /// File contents to store in the kernel's page cache, for the pusher thread.
    push: Arc<PushSlot>,
    /// Run by `destroy`, after the last request.
    end: Arc<EndSlot>,
    /// The kernel checks permissions (`default_permissions`, for `--allow-other`): it must
    /// honour the snapshot's POSIX ACLs too, as the portal does.
    acls: bool,
}

impl RewindFs {
    pub fn new(core: Arc<Core>, workers: usize, latency: LatencyHint) -> RewindFs {
        RewindFs { core, pool: Pool::new(workers), latency, push: Arc::default(), end: Arc::default(), acls: false }
    }

    /// Have the kernel enforce POSIX ACLs (`system.posix_acl_access`, served by `getxattr`)
    /// beside the mode bits: for a mount with `default_permissions`.
    pub fn with_acls(mut self) -> RewindFs {
        self.acls = true;
        self
    }

    /// Where pushes go once the session exists (see [`start_pusher`]).
    pub fn push_slot(&self) -> Arc<PushSlot> {
        self.push.clone()
    }

    /// Where to put what runs when the session ends.
    pub fn end_slot(&self) -> Arc<EndSlot> {
        self.end.clone()
    }

    fn do_lookup(core: &Core, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match core.lookup(parent, name.as_bytes()) {
            Ok(a) => reply.entry(&a.ttl, &a.attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Serve a read of `ino` from `offset`, in either listing form, and prefetch the trees of its
    /// subdirectories when a pass starts.
    fn do_readdir<R>(core: &Arc<Core>, pool: &Pool, ino: u64, offset: u64, reply: R)
    where
        R: DirReply,
    {
        let res = reply.fill(core, ino, offset);
        if res && offset == 0 {
            for tree in core.subtrees_to_prefetch(ino) {
                prefetch_tree(core, pool, tree, PREFETCH_DEPTH);
            }
        }
    }

    fn readdir_any<R: DirReply + Send + 'static>(&self, ino: u64, offset: u64, reply: R) {
        self.latency.busy();
        if self.core.listing_needs_tree_read(ino, offset) {
            let (core, pool) = (self.core.clone(), self.pool.clone());
            self.pool.run(move || Self::do_readdir(&core, &pool, ino, offset, reply));
        } else {
            Self::do_readdir(&self.core, &self.pool, ino, offset, reply);
        }
    }

    /// Prefetch what a walk reads after file `ino` (see [`Core::walk_ahead`]), in its order:
    /// small files whose contents are cached go to the pusher at once; the rest in jobs of a
    /// few steps each, so that workers load them in parallel without a wake-up per file.
    fn walk_ahead(&self, ino: u64) {
        let push = self.push.get();
        let mut rest = Vec::new();
        for step in self.core.walk_ahead(ino) {
            match (step, push) {
                (Ahead::Push { ino, chunk, size }, Some(push)) => match self.core.cached_to_push(chunk, size) {
                    Some(data) => {
                        let _ = push.try_send((ino, data));
                    }
                    None => rest.push(step),
                },
                // No pusher: the file is read as usual, its chunk loaded ahead.
                (Ahead::Push { chunk, .. }, None) => rest.push(Ahead::Load(chunk)),
                (Ahead::Load(_) | Ahead::Tree(_), _) => rest.push(step),
            }
        }
        for steps in rest.chunks(WALK_JOB) {
            let (core, push, steps) = (self.core.clone(), push.cloned(), steps.to_vec());
            self.pool.prefetch(move || {
                for step in steps {
                    match step {
                        Ahead::Push { ino, chunk, size } => {
                            if let (Some(data), Some(push)) = (core.chunk_to_push(chunk, size), &push) {
                                let _ = push.try_send((ino, data));
                            }
                        }
                        Ahead::Load(id) => core.warm_chunk(id),
                        Ahead::Tree(id) => {
                            core.warm_tree(id);
                        }
                    }
                }
            });
        }
    }

    fn serve_read(core: &Core, file: &OpenFile, offset: u64, size: u32, reply: ReplyData) {
        match core.read_in_chunk(file, offset, size) {
            Some(Ok((data, range))) => return reply.data(&data[range]),
            Some(Err(e)) => return reply.error(e),
            None => {}
        }
        READ_BUF.with_borrow_mut(|buf| match core.read_into(file, offset, size, buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(e),
        });
    }
}

/// Steps of a walk's prefetch per worker job.
const WALK_JOB: usize = 4;

/// Levels of subdirectories below a directory being read whose trees are loaded ahead: a walk
/// enters a directory's first subdirectory at once, before a prefetch of that level alone
/// could be done, but finds the levels below it loaded.
const PREFETCH_DEPTH: u32 = 2;

/// Load a tree ahead on a worker, then `depth` levels of subdirectories below it.
fn prefetch_tree(core: &Arc<Core>, pool: &Pool, id: TreeId, depth: u32) {
    let (core, next) = (core.clone(), pool.clone());
    pool.prefetch(move || {
        let subtrees = core.warm_tree(id);
        if depth > 0 {
            for t in subtrees {
                prefetch_tree(&core, &next, t, depth - 1);
            }
        }
    });
}

/// `readdir` and `readdirplus` replies, filled the same way.
trait DirReply {
    /// Fill and send the reply; true when it succeeded.
    fn fill(self, core: &Core, ino: u64, offset: u64) -> bool;
}

impl DirReply for ReplyDirectory {
    fn fill(mut self, core: &Core, ino: u64, offset: u64) -> bool {
        let res = core
            .readdir(ino, offset, |ino, next, kind, name| self.add(INodeNo(ino), next, kind, OsStr::from_bytes(name)));
        match res {
            Ok(()) => self.ok(),
            Err(e) => self.error(e),
        }
        res.is_ok()
    }
}

impl DirReply for ReplyDirectoryPlus {
    fn fill(mut self, core: &Core, ino: u64, offset: u64) -> bool {
        let res = core.readdirplus(ino, offset, |next, name, a| {
            self.add(a.attr.ino, next, OsStr::from_bytes(name), &a.ttl, &a.attr, Generation(0))
        });
        match res {
            Ok(()) => self.ok(),
            Err(e) => self.error(e),
        }
        res.is_ok()
    }
}

impl Filesystem for RewindFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Every listing comes with attributes. Not FUSE_READDIRPLUS_AUTO: with it the kernel asks
        // for attributes only in a directory's first batch (what the reader's buffer holds) and
        // for later batches only if something was looked up in between. `tar` and `rsync` read a
        // whole directory before they look at its entries, so each later entry cost a lookup: a
        // `tar` of 3,000 small files in one directory sent 2,229 lookups and took 590-710 ms;
        // with attributes in every batch, 7 lookups and 150-210 ms.
        // With default_permissions the kernel checks access by the mode bits alone unless told
        // that ACLs are ours to serve: then it asks for `system.posix_acl_access` and applies
        // it, as the portal's `readable` rule does. A kernel without it would check less than
        // the portal: refused.
        if self.acls && config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err() {
            return Err(std::io::Error::other(
                "the kernel lacks FUSE_POSIX_ACL: --allow-other would ignore the snapshots' ACLs",
            ));
        }
        let wanted = [InitFlags::FUSE_DO_READDIRPLUS, InitFlags::FUSE_PARALLEL_DIROPS, InitFlags::FUSE_MAX_PAGES];
        for flag in wanted {
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("kernel lacks {flag:?}");
            }
        }
        // Reads are only as large as max(max_write, max_readahead) allows.
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(end) = self.end.lock().expect("end lock").take() {
            end();
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.latency.busy();
        if self.core.lookup_needs_tree_read(parent.0, name.as_bytes()) {
            let core = self.core.clone();
            let name = name.to_owned();
            self.pool.run(move || Self::do_lookup(&core, parent.0, &name, reply));
        } else {
            Self::do_lookup(&self.core, parent.0, name, reply);
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.latency.busy();
        let answer = move |core: &Core, reply: ReplyAttr| match core.getattr(ino.0) {
            Ok(a) => reply.attr(&a.ttl, &a.attr),
            Err(e) => reply.error(e),
        };
        if self.core.getattr_needs_tree_read(ino.0) {
            let core = self.core.clone();
            self.pool.run(move || answer(&core, reply));
        } else {
            answer(&self.core, reply);
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.latency.busy();
        match self.core.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if write {
            return reply.error(Errno::EROFS);
        }
        // ENOSYS tells the kernel to stop sending opens and releases: every later open and close
        // costs no round trip, and files keep their page cache across opens (FOPEN_KEEP_CACHE
        // is the kernel's default then), which is right for immutable snapshots.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.latency.busy();
        // Opening a reader and planning prefetches read no chunk: done here. The read itself is
        // answered here too when its chunks are cached; otherwise a worker decompresses them.
        let (file, new) = match self.core.open(ino.0, false) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if new {
            self.walk_ahead(ino.0);
        }
        for i in self.core.plan_readahead(&file, offset, u64::from(size)) {
            let (core, file) = (self.core.clone(), file.clone());
            self.pool.prefetch(move || core.warm(&file, i));
        }
        if self.core.read_is_cached(&file, offset, size) {
            self.core.reads_cached.fetch_add(1, Ordering::Relaxed);
            Self::serve_read(&self.core, &file, offset, size, reply);
        } else {
            self.core.reads_waited.fetch_add(1, Ordering::Relaxed);
            let core = self.core.clone();
            self.pool.run(move || Self::serve_read(&core, &file, offset, size, reply));
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is ever dirty: ENOSYS makes the kernel stop sending flushes on close.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS tells the kernel to stop sending opendirs and releasedirs (two round trips per
        // directory a walk enters) and to cache listings itself, checked against the directory's
        // mtime: snapshots never change, and the directories that list them change their mtime
        // when the list changes. Reads of a directory carry its inode, not a handle.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        self.readdir_any(ino.0, offset, reply);
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        self.readdir_any(ino.0, offset, reply);
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.core.statfs();
        reply.statfs(s.blocks, 0, 0, s.files, 0, s.bsize, s.namelen, s.bsize);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.latency.busy();
        send_xattr(self.core.getxattr(ino.0, name.as_bytes()), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.latency.busy();
        send_xattr(self.core.listxattr(ino.0), size, reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) { reply.error(Errno::EROFS) } else { reply.ok() }
    }

    // Everything below would change the snapshot: refused.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _link_name: &OsStr, _target: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// Answer getxattr/listxattr: the size when asked for it, else the bytes if they fit.
fn send_xattr<V: AsRef<[u8]>>(value: Result<V, Errno>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) => match xattr_reply(v.as_ref(), size) {
            Ok(Some(data)) => reply.data(data),
            Ok(None) => reply.size(v.as_ref().len() as u32),
            Err(e) => reply.error(e),
        },
        Err(e) => reply.error(e),
    }
}

/// Start the thread that stores file contents in the kernel's page cache (FUSE_NOTIFY_STORE)
/// ahead of a walk's reads. Its own thread: a store waits for the kernel's page locks, which a
/// read in flight holds until a FUSE thread or a worker answers it, so those must never wait
/// for a store.
pub fn start_pusher(core: Arc<Core>, notifier: fuser::Notifier, slot: &PushSlot) -> std::io::Result<()> {
    // Bounded: when the kernel falls behind, pushes are dropped and the reads go as usual.
    let (tx, rx) = crossbeam_channel::bounded::<(u64, Arc<Vec<u8>>)>(256);
    std::thread::Builder::new().name("rewind-fs-push".into()).spawn(move || {
        for (ino, data) in rx {
            // The kernel may have forgotten the inode meanwhile (ENOENT): nothing lost.
            match notifier.store(INodeNo(ino), 0, &data) {
                Ok(()) => {
                    core.files_pushed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!("page cache store of inode {ino}: {e}"),
            }
        }
    })?;
    let _ = slot.set(tx);
    Ok(())
}
