//! Directories: lookups and listings (with the attributes READDIRPLUS carries).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{Errno, FileType};
use rewind_store::{Entry, Images, TreeId};

use super::attr::{entry_type, is_live};
use super::{Answer, Core, DirItem, Listing, errno};
use crate::inode::{ROOT, child_key};

impl Core {
    /// The tree a lookup or listing in `dir` would read, if it is not cached: such calls belong on
    /// a worker thread, not the FUSE loop.
    pub fn needs_tree_read(&self, ino: u64) -> bool {
        let tree: Option<TreeId> = match self.entry(ino) {
            // Inside a disk image, listings and lookups read the image.
            Ok(Entry::Image(_)) => return true,
            Ok(e) => self.view.dir_tree(&e),
            Err(_) => None,
        };
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
        let e = match self.view.lookup(&dir, name, Images::Show) {
            // A snapshot saved since the last look: its manifest exists, so it is there now.
            // One listing of `snapshots/` per miss in a directory that lists snapshots.
            Err(rewind_store::Error::NotFound(_)) if is_live(&dir) => {
                if let Err(e) = self.view.refresh() {
                    tracing::warn!("cannot refresh the snapshot list: {e}");
                }
                self.view.lookup(&dir, name, Images::Show)
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
            .list(&e, Images::Show)
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
            None => {
                self.view.list(&dir, Images::Show).is_ok_and(|l| l.iter().any(|(_, e)| self.attr_needs_tree_read(e)))
            }
        }
    }

    /// Whether looking `name` up in `parent` would read a tree: the parent's, or the one of the
    /// directory found.
    pub fn lookup_needs_tree_read(&self, parent: u64, name: &[u8]) -> bool {
        if self.needs_tree_read(parent) {
            return true;
        }
        let Ok(dir) = self.entry(parent) else { return false };
        self.view.lookup(&dir, name, Images::Show).is_ok_and(|e| self.attr_needs_tree_read(&e))
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
}
