//! Reads: opening files and reading them, from cached chunks where it can.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use fuser::Errno;
use rewind_store::{Entry, NodeKind, SnapshotId};

use super::{ChunkSlice, Core, OpenFile};

/// Where a read of `size` bytes at `offset` ends (clamped to the file) and the indices of its
/// first and last chunks; `None` for a read at or past the end.
pub(super) fn read_span(f: &OpenFile, offset: u64, size: u32) -> Option<(u64, usize, usize)> {
    let end = offset.saturating_add(u64::from(size)).min(f.reader.size());
    if offset >= end {
        return None;
    }
    Some((end, f.reader.chunk_index(offset)?, f.reader.chunk_index(end - 1)?))
}

impl Core {
    /// The path of an inode inside its snapshot, and the snapshot, for messages.
    pub(super) fn describe(&self, ino: u64) -> (Option<SnapshotId>, String) {
        let t = self.inodes.lock();
        let mut parts: Vec<String> = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            let Some(i) = t.get(cur) else { break };
            match &i.entry {
                Entry::Node { node, .. } => parts.push(node.name_lossy().into_owned()),
                Entry::Image(i) => parts.push(String::from_utf8_lossy(i.name()).into_owned()),
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
            Entry::Image(i) if i.kind() == NodeKind::File => {}
            Entry::Node { node, .. } if node.kind == NodeKind::Dir => return Err(Errno::EISDIR),
            Entry::Image(i) if i.kind() == NodeKind::Dir => return Err(Errno::EISDIR),
            Entry::Node { .. } | Entry::Image(_) | Entry::Latest(_) => return Err(Errno::EINVAL),
            _ => return Err(Errno::EISDIR),
        }
        let snapshot = e.snapshot().expect("a file is inside a snapshot");
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
            Some((_, a, b)) => (a..=b).all(|i| f.reader.is_cached(i)),
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
}
