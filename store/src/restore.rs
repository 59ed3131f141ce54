//! Restore a snapshot (or a path in it) into a directory: contents, modes, times, symlinks, hard
//! links, devices and fifos, extended attributes, and ownership when asked (root).
//!
//! Order matters: file contents and leaves in parallel first; then hard links; then directory
//! metadata deepest first, so creating entries does not disturb a restored directory's mtime.
//!
//! From a remote repository, where every read is a request, file contents come in a second
//! phase, pack by pack (as restic does): the walk creates each file at its size and notes which
//! chunk goes where; then each pack's needed chunks come in a few large ranged reads and are
//! written into every file that needs them, and a file gets its metadata when its last chunk is
//! in. Object stores serve a ranged read in whole blocks (Garage: 1 MiB, compressed), so a few
//! large reads per pack cost the server far less than one small read per file.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::backup::ErrorReport;
use crate::batch::plan_runs;
use crate::error::{Error, IoContext, Result};
use crate::format::{ChunkId, Node, NodeKind, Snapshot};
use crate::index::Location;
use crate::repo::{FileReader, IndexedRepository};
use crate::view::{Entry, Images, View};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore owners and groups (needs root).
    pub owners: bool,
    /// What to do with entries that already exist in the target.
    pub overwrite: Overwrite,
}

/// What restore does where the target already has an entry of the same name. Directories always
/// merge into existing directories.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Restore nothing if any entry would replace an existing one (checked before writing).
    #[default]
    Refuse,
    /// Replace existing entries.
    Always,
    /// Replace an existing file only if its content differs (read and compared chunk by chunk);
    /// other kinds of entry are replaced.
    IfChanged,
    /// Leave every existing entry as it is; restore only what is missing.
    Never,
}

#[derive(Debug, Default)]
pub struct RestoreProgress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

/// Packs read at once from a remote repository (each waits on its own requests).
const REMOTE_READERS: usize = 16;

/// A pack's needed chunks are read from a remote repository in runs: neighbours go in one read
/// while the bytes between them are at most `REMOTE_GAP` and the read at most `REMOTE_RUN`.
/// Memory in flight is about `REMOTE_READERS` x `REMOTE_RUN` x 2 (stored and opened bytes).
const REMOTE_GAP: u64 = 1 << 20;
const REMOTE_RUN: u64 = 4 << 20;

/// A file of a remote restore whose contents come in the second phase.
struct Pending {
    path: PathBuf,
    node: Node,
    /// Chunks not written yet.
    left: AtomicUsize,
    /// Created by its one chunk's write, not before (most files are one chunk: one open).
    deferred: bool,
    /// An error was reported for it: no more writes, no metadata.
    failed: AtomicBool,
}

/// One chunk a pending file needs, where it is and where it goes.
struct Need {
    loc: Location,
    id: ChunkId,
    file: usize,
    offset: u64,
}

/// Restore `path` of `snapshot` into `target`. A directory's content goes into `target` itself;
/// anything else goes to `target/<name>`. Entries that fail are reported and counted; the
/// returned count is the number of such errors.
pub fn restore(
    repo: &IndexedRepository,
    snapshot: &Snapshot,
    path: &[u8],
    target: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
    report: &ErrorReport<'_>,
) -> Result<u64> {
    let node = repo.node_at(snapshot, path)?;
    let created = !target.exists();
    if !created && opts.overwrite == Overwrite::Refuse {
        refuse_conflicts(repo, &node, target)?;
    }
    fs::create_dir_all(target).at(target)?;
    let r = Restorer::new(repo, opts, progress, report);
    let walk = || {
        if node.is_dir() {
            r.restore_dir_content(&node, target, 1, created);
            if created && !path.iter().all(|&b| b == b'/') {
                r.dirs.lock().expect("restore lock").push((0, target.to_path_buf(), node.clone()));
            }
        } else {
            let name = node.name.clone();
            r.restore_entry(&node, &target.join(OsStr::from_bytes(&name)), 1, created);
        }
    };
    match r.remote {
        false => walk(),
        // Reads from a remote repository wait on the network, not on the CPU: many at once.
        true => rayon::ThreadPoolBuilder::new()
            .num_threads(REMOTE_READERS)
            .thread_name(|i| format!("restore-{i}"))
            .build()
            .map_err(|e| Error::io(target, std::io::Error::other(e.to_string())))?
            .install(|| {
                walk();
                r.write_pending();
            }),
    }
    r.finish();
    Ok(progress.errors.load(Ordering::Relaxed))
}

/// Restore an entry of the view that no snapshot tree holds (something inside a disk image,
/// `.../disk0.qcow2.d/p1/etc`) into `target`, as [`restore`] does a path of a snapshot: a
/// directory's content goes into `target` itself, anything else to `target/<name>`. Contents,
/// symlinks, modes, times, and owners when asked, as the view shows them.
pub fn restore_from_view(
    view: &View,
    entry: &Entry,
    name: &[u8],
    target: &Path,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
    report: &ErrorReport<'_>,
) -> Result<u64> {
    let attr = view.attr(entry)?;
    let is_dir = attr.kind == NodeKind::Dir;
    let created = !target.exists();
    if !created && opts.overwrite == Overwrite::Refuse {
        refuse_view_conflicts(view, entry, name, is_dir, target)?;
    }
    fs::create_dir_all(target).at(target)?;
    let r = Restorer::new(view.repo(), opts, progress, report);
    if is_dir {
        r.restore_view_content(view, entry, target, 1);
        if created {
            r.dirs.lock().expect("restore lock").push((0, target.to_path_buf(), view_node(name, &attr, Vec::new())));
        }
    } else {
        let path = target.join(OsStr::from_bytes(name));
        if let Err(e) = r.restore_view_one(view, entry, name, &path, 1) {
            r.fail(&path, e);
        }
    }
    r.finish();
    Ok(progress.errors.load(Ordering::Relaxed))
}

/// The metadata of a view entry as a node, for [`Restorer::apply_metadata`].
fn view_node(name: &[u8], a: &crate::view::Attr, target: Vec<u8>) -> Node {
    let mut n = Node::new(name.to_vec(), a.kind);
    (n.mode, n.uid, n.gid, n.size, n.mtime, n.ctime, n.target) =
        (a.perm, a.uid, a.gid, a.size, a.mtime, a.ctime, target);
    n
}

/// [`refuse_conflicts`] for an entry of the view.
fn refuse_view_conflicts(view: &View, entry: &Entry, name: &[u8], is_dir: bool, target: &Path) -> Result<()> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut stack: Vec<(Entry, PathBuf)> = Vec::new();
    if is_dir {
        stack.push((entry.clone(), target.to_path_buf()));
    } else {
        let p = target.join(OsStr::from_bytes(name));
        if fs::symlink_metadata(&p).is_ok() {
            found.push(p);
        }
    }
    while let Some((dir, at)) = stack.pop() {
        for (name, child) in view.list(&dir, Images::Show)? {
            let p = at.join(OsStr::from_bytes(&name));
            match fs::symlink_metadata(&p) {
                Err(_) => {}
                Ok(m) if m.is_dir() && view.attr(&child)?.kind == NodeKind::Dir => stack.push((child, p)),
                Ok(_) => found.push(p),
            }
        }
    }
    match found.first() {
        None => Ok(()),
        Some(p) => Err(Error::InvalidInput(format!(
            "{} entr{} in {} would be replaced (first: {}); nothing was restored; choose --overwrite always, if-changed or never",
            found.len(),
            if found.len() == 1 { "y" } else { "ies" },
            target.display(),
            p.display()
        ))),
    }
}

struct Restorer<'a> {
    repo: &'a IndexedRepository,
    /// The repository is remote: reads wait on the network.
    remote: bool,
    opts: &'a RestoreOptions,
    progress: &'a RestoreProgress,
    report: &'a ErrorReport<'a>,
    /// First restored path of each (dev, inode) with several links.
    links: Mutex<HashMap<(u64, u64), PathBuf>>,
    deferred_links: Mutex<Vec<(PathBuf, (u64, u64))>>,
    dirs: Mutex<Vec<(usize, PathBuf, Node)>>,
    /// A remote restore's files whose contents come in the second phase, and what they need.
    pending: Mutex<(Vec<Pending>, Vec<Need>)>,
}

impl<'a> Restorer<'a> {
    fn new(
        repo: &'a IndexedRepository,
        opts: &'a RestoreOptions,
        progress: &'a RestoreProgress,
        report: &'a ErrorReport<'a>,
    ) -> Restorer<'a> {
        Restorer {
            repo,
            remote: repo.repo().local_path().is_none(),
            opts,
            progress,
            report,
            links: Mutex::new(HashMap::new()),
            deferred_links: Mutex::new(Vec::new()),
            dirs: Mutex::new(Vec::new()),
            pending: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    fn fail(&self, path: &Path, e: Error) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        (self.report)(path, &e);
    }

    /// `fresh`: `dir` was created by this restore, so nothing is in it yet to clear the way of.
    fn restore_dir_content(&self, node: &Node, dir: &Path, depth: usize, fresh: bool) {
        let Some(id) = node.subtree else { return };
        let tree = match self.repo.tree(id) {
            Ok(t) => t,
            Err(e) => return self.fail(dir, e),
        };
        tree.nodes.par_iter().for_each(|child| {
            let path = dir.join(OsStr::from_bytes(&child.name));
            self.restore_entry(child, &path, depth, fresh);
        });
    }

    fn restore_entry(&self, node: &Node, path: &Path, depth: usize, fresh: bool) {
        if let Err(e) = self.restore_one(node, path, depth, fresh) {
            self.fail(path, e);
        }
    }

    /// The overwrite rule for an entry already at `path`: `true` when nothing more is to be done
    /// (the entry is kept, or is the same file and gets the node's metadata); otherwise the way
    /// is cleared (anything but a directory to merge into is removed) and the answer is `false`.
    fn clear_way(&self, node: &Node, path: &Path, same: impl FnOnce() -> Result<bool>) -> Result<bool> {
        let Ok(m) = fs::symlink_metadata(path) else { return Ok(false) };
        let merge = node.kind == NodeKind::Dir && m.is_dir();
        match self.opts.overwrite {
            Overwrite::Never if !merge => return Ok(true),
            Overwrite::IfChanged if node.kind == NodeKind::File && m.is_file() && m.len() == node.size && same()? => {
                self.progress.files.fetch_add(1, Ordering::Relaxed);
                self.apply_metadata(node, path)?;
                return Ok(true);
            }
            _ => {}
        }
        if !merge {
            if m.is_dir() {
                fs::remove_dir_all(path).at(path)?;
            } else {
                fs::remove_file(path).at(path)?;
            }
        }
        Ok(false)
    }

    /// Restore one entry at `path`; `fresh`: its folder was created by this restore (nothing
    /// can be in the way, no need to look).
    fn restore_one(&self, node: &Node, path: &Path, depth: usize, fresh: bool) -> Result<()> {
        if !fresh && self.clear_way(node, path, || self.same_content(node, path))? {
            return Ok(());
        }
        match node.kind {
            NodeKind::Dir => {
                let created = match fresh {
                    true => fs::create_dir(path).at(path).map(|()| true)?,
                    false => match fs::symlink_metadata(path) {
                        Ok(m) if m.is_dir() => false,
                        Ok(_) => {
                            fs::remove_file(path).at(path)?;
                            fs::create_dir(path).at(path).map(|()| true)?
                        }
                        Err(_) => fs::create_dir(path).at(path).map(|()| true)?,
                    },
                };
                // Writable while we fill it; the real mode comes at the end.
                fs::set_permissions(path, fs::Permissions::from_mode(0o700)).at(path)?;
                self.restore_dir_content(node, path, depth + 1, created);
                self.dirs.lock().expect("restore lock").push((depth, path.to_path_buf(), node.clone()));
                return Ok(());
            }
            NodeKind::File => {
                if node.nlink > 1 {
                    let key = (node.dev, node.inode);
                    let mut links = self.links.lock().expect("restore lock");
                    if links.contains_key(&key) {
                        self.deferred_links.lock().expect("restore lock").push((path.to_path_buf(), key));
                        return Ok(());
                    }
                    links.insert(key, path.to_path_buf());
                }
                if self.remote && self.plan_file(node, path)? {
                    // Contents and metadata come in the second phase.
                    return Ok(());
                }
                self.write_file(node, path)?;
            }
            NodeKind::Symlink => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&node.target), path).at(path)?;
            }
            NodeKind::Fifo => mknod(path, libc::S_IFIFO | (node.mode & 0o7777), 0)?,
            NodeKind::BlockDevice | NodeKind::CharDevice => {
                mknod(path, node.kind.mode_bits() | (node.mode & 0o7777), node.rdev)?
            }
            NodeKind::Socket => {
                tracing::info!("{}: sockets are not restored", path.display());
                return Ok(());
            }
        }
        self.apply_metadata(node, path)
    }

    fn restore_view_content(&self, view: &View, dir: &Entry, at: &Path, depth: usize) {
        let entries = match view.list(dir, Images::Show) {
            Ok(l) => l,
            Err(e) => return self.fail(at, e),
        };
        entries.par_iter().for_each(|(name, child)| {
            let path = at.join(OsStr::from_bytes(name));
            if let Err(e) = self.restore_view_one(view, child, name, &path, depth) {
                self.fail(&path, e);
            }
        });
    }

    fn restore_view_one(&self, view: &View, entry: &Entry, name: &[u8], path: &Path, depth: usize) -> Result<()> {
        let attr = view.attr(entry)?;
        let target = if attr.kind == NodeKind::Symlink { view.readlink(entry)? } else { Vec::new() };
        let node = view_node(name, &attr, target);
        if self.clear_way(&node, path, || same_bytes(&view.open(entry)?, path))? {
            return Ok(());
        }
        match node.kind {
            NodeKind::Dir => {
                if fs::symlink_metadata(path).is_err() {
                    fs::create_dir(path).at(path)?;
                }
                fs::set_permissions(path, fs::Permissions::from_mode(0o700)).at(path)?;
                self.restore_view_content(view, entry, path, depth + 1);
                self.dirs.lock().expect("restore lock").push((depth, path.to_path_buf(), node));
                return Ok(());
            }
            NodeKind::File => self.write_reader(&view.open(entry)?, path)?,
            NodeKind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&node.target), path).at(path)?,
            // The view shows nothing else inside images.
            _ => return Ok(()),
        }
        self.apply_metadata(&node, path)
    }

    /// Write a file from a reader, piece by piece; runs of zeros become holes.
    fn write_reader(&self, reader: &FileReader, path: &Path) -> Result<()> {
        let mut f = create_file(path)?;
        for (i, span) in reader.chunks().iter().enumerate() {
            let _ = reader.warm(i + 1);
            let (data, range) = reader.piece(span.offset, span.offset + u64::from(span.len))?;
            let data = &data[range];
            if data.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(data.len() as i64)).at(path)?;
            } else {
                f.write_all(data).at(path)?;
            }
            self.progress.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        f.set_len(reader.size()).at(path)?;
        self.progress.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the file at `path` holds exactly the node's content (same chunks, by hash).
    fn same_content(&self, node: &Node, path: &Path) -> Result<bool> {
        use std::io::Read;
        let mut f = fs::File::open(path).at(path)?;
        let mut buf = Vec::new();
        for id in &node.content {
            let len = self.repo.locate((*id).into())?.raw_len as usize;
            buf.resize(len, 0);
            if f.read_exact(&mut buf).is_err() || self.repo.codec().id(&buf) != id.0 {
                return Ok(false);
            }
        }
        Ok(f.read(&mut [0u8; 1]).at(path)? == 0)
    }

    /// Create a file of a remote restore at its size and note the chunks it needs, for
    /// [`Self::write_pending`]. False (nothing done) if the index does not know one of its chunks:
    /// then it is restored at once, chunk by chunk.
    fn plan_file(&self, node: &Node, path: &Path) -> Result<bool> {
        let mut needs = Vec::with_capacity(node.content.len());
        let mut offset = 0u64;
        for id in &node.content {
            let Some(loc) = self.repo.location_cached((*id).into()) else { return Ok(false) };
            needs.push(Need { loc, id: *id, file: 0, offset });
            offset += u64::from(loc.raw_len);
        }
        if offset != node.size {
            tracing::warn!("{}: restoring {offset} bytes, the snapshot records {}", path.display(), node.size);
        }
        // A file of one chunk is created when it comes; others at their size at once (chunks of
        // zeros are not written, and stay holes).
        let deferred = needs.len() == 1;
        if !deferred {
            create_file(path)?.set_len(offset).at(path)?;
        }
        if needs.is_empty() {
            self.progress.files.fetch_add(1, Ordering::Relaxed);
            self.apply_metadata(node, path)?;
            return Ok(true);
        }
        let mut pending = self.pending.lock().expect("restore lock");
        let file = pending.0.len();
        let left = AtomicUsize::new(needs.len());
        pending.0.push(Pending {
            path: path.to_path_buf(),
            node: node.clone(),
            left,
            deferred,
            failed: AtomicBool::new(false),
        });
        pending.1.extend(needs.into_iter().map(|n| Need { file, ..n }));
        Ok(true)
    }

    /// The second phase of a remote restore: every pack's needed chunks, a few packs at once,
    /// each in a few large reads, written where the planned files need them.
    fn write_pending(&self) {
        let (files, mut needs) = std::mem::take(&mut *self.pending.lock().expect("restore lock"));
        needs.sort_unstable_by_key(|n| (n.loc.pack, n.loc.offset, n.file, n.offset));
        let packs: Vec<&[Need]> = needs.chunk_by(|a, b| a.loc.pack == b.loc.pack).collect();
        packs.par_iter().for_each(|needs| self.write_pack(needs, &files));
    }

    /// Write the chunks of one pack that `needs` (sorted by offset) names into their files.
    fn write_pack(&self, needs: &[Need], files: &[Pending]) {
        let runs = plan_runs(needs.iter().map(|n| (n.id, n.loc)).collect(), REMOTE_GAP, REMOTE_RUN);
        let mut rest = needs;
        for run in runs {
            let fetched: HashMap<ChunkId, Arc<Vec<u8>>> =
                self.repo.read_run(&run).into_iter().map(|(id, d)| (id, Arc::new(d))).collect();
            let split = rest.iter().position(|n| n.loc.offset >= run.end).unwrap_or(rest.len());
            let (here, next) = rest.split_at(split);
            rest = next;
            for need in here {
                let file = &files[need.file];
                if file.failed.load(Ordering::Relaxed) {
                    continue;
                }
                // What the run could not bring (a moved pack, a damaged blob) is read on its
                // own, which finds it elsewhere or names the damage.
                let data = match fetched.get(&need.id) {
                    Some(d) => Ok(d.clone()),
                    None => self.repo.chunk(need.id),
                };
                let written = data.and_then(|data| {
                    let zeros = data.iter().all(|&b| b == 0);
                    if file.deferred {
                        let f = create_file(&file.path)?;
                        match zeros {
                            true => f.set_len(need.offset + data.len() as u64).at(&file.path)?,
                            false => f.write_all_at(&data, need.offset).at(&file.path)?,
                        }
                    } else if !zeros {
                        let f = OpenOptions::new()
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&file.path)
                            .at(&file.path)?;
                        f.write_all_at(&data, need.offset).at(&file.path)?;
                    }
                    self.progress.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    Ok(())
                });
                if let Err(e) = written {
                    if !file.failed.swap(true, Ordering::Relaxed) {
                        self.fail(&file.path, e);
                    }
                    continue;
                }
                if file.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.progress.files.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.apply_metadata(&file.node, &file.path) {
                        self.fail(&file.path, e);
                    }
                }
            }
        }
    }

    fn write_file(&self, node: &Node, path: &Path) -> Result<()> {
        let mut f = create_file(path)?;
        let mut written = 0u64;
        for id in &node.content {
            let data = self.repo.chunk(*id)?;
            // Runs of zeros become holes: sparse files stay sparse.
            if data.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(data.len() as i64)).at(path)?;
            } else {
                f.write_all(&data).at(path)?;
            }
            written += data.len() as u64;
            self.progress.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        f.set_len(written).at(path)?;
        if written != node.size {
            tracing::warn!("{}: restored {written} bytes, the snapshot records {}", path.display(), node.size);
        }
        self.progress.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Owner, mode, xattrs, times, in that order (chown clears setuid; ACLs adjust the mode).
    fn apply_metadata(&self, node: &Node, path: &Path) -> Result<()> {
        let c = cpath(path)?;
        let symlink = node.kind == NodeKind::Symlink;
        if self.opts.owners {
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::lchown(c.as_ptr(), node.uid, node.gid) } != 0 {
                return Err(Error::io(path, std::io::Error::last_os_error()));
            }
        }
        if !symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(node.mode & 0o7777)).at(path)?;
        }
        for x in &node.xattrs {
            if let Err(e) = xattr::set(path, OsStr::from_bytes(&x.name), &x.value) {
                // Some attributes cannot be set by everyone (security.*, trusted.*): say so, go on.
                tracing::warn!("{}: cannot set xattr {}: {e}", path.display(), String::from_utf8_lossy(&x.name));
            }
        }
        // utimensat on the path itself: never opens it (a fifo would block), never follows a symlink.
        let ts = libc::timespec { tv_sec: node.mtime.sec as libc::time_t, tv_nsec: node.mtime.nsec as libc::c_long };
        let times = [ts, ts];
        // SAFETY: c is a valid NUL-terminated path and times points at two timespecs.
        if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(Error::io(path, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn finish(&self) {
        for (path, key) in std::mem::take(&mut *self.deferred_links.lock().expect("restore lock")) {
            let first = self.links.lock().expect("restore lock").get(&key).cloned();
            if let Some(first) = first
                && let Err(e) = fs::hard_link(&first, &path)
            {
                self.fail(&path, Error::io(&path, e));
            }
        }
        let mut dirs = std::mem::take(&mut *self.dirs.lock().expect("restore lock"));
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (_, path, node) in dirs {
            if let Err(e) = self.apply_metadata(&node, &path) {
                self.fail(&path, e);
            }
        }
    }
}

/// Fail, before anything is written, if restoring `node` into `target` would replace an
/// existing entry (a directory merging into a directory is not a replacement).
fn refuse_conflicts(repo: &IndexedRepository, node: &Node, target: &Path) -> Result<()> {
    let mut first: Option<PathBuf> = None;
    let mut count = 0u64;
    let mut stack: Vec<(Node, PathBuf)> = Vec::new();
    if node.is_dir() {
        stack.push((node.clone(), target.to_path_buf()));
    } else {
        let p = target.join(OsStr::from_bytes(&node.name));
        if fs::symlink_metadata(&p).is_ok() {
            count += 1;
            first = Some(p);
        }
    }
    while let Some((dir, at)) = stack.pop() {
        let Some(id) = dir.subtree else { continue };
        for child in &repo.tree(id)?.nodes {
            let p = at.join(OsStr::from_bytes(&child.name));
            match fs::symlink_metadata(&p) {
                Err(_) => {}
                Ok(m) if m.is_dir() && child.is_dir() => stack.push((child.clone(), p)),
                Ok(_) => {
                    count += 1;
                    if first.is_none() {
                        first = Some(p);
                    }
                }
            }
        }
    }
    match first {
        None => Ok(()),
        Some(p) => Err(Error::InvalidInput(format!(
            "{count} entr{} in {} would be replaced (first: {}); nothing was restored; choose --overwrite always, if-changed or never",
            if count == 1 { "y" } else { "ies" },
            target.display(),
            p.display()
        ))),
    }
}

/// Whether the file at `path` holds exactly the reader's bytes.
fn same_bytes(reader: &FileReader, path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = fs::File::open(path).at(path)?;
    let mut buf = Vec::new();
    for span in reader.chunks() {
        let (data, range) = reader.piece(span.offset, span.offset + u64::from(span.len))?;
        buf.resize(range.len(), 0);
        if f.read_exact(&mut buf).is_err() || buf[..] != data[range] {
            return Ok(false);
        }
    }
    Ok(f.read(&mut [0u8; 1]).at(path)? == 0)
}

/// A new (or emptied) file to restore into, private until its metadata comes.
fn create_file(path: &Path) -> Result<fs::File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput(format!("{}: NUL in path", path.display())))
}

fn mknod(path: &Path, mode: u32, dev: u64) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid NUL-terminated path; mknod only reads it.
    if unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) } != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    Ok(())
}
