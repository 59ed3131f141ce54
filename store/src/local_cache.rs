//! Local copies of a remote repository's immutable metadata (index files and snapshot
//! manifests), so that opening it again, a mount or a portal start, reads them from the local
//! disk instead of one request each (restic's `--cache-dir`).
//!
//! Invariants:
//! - Only files that never change under their name are kept: index files and snapshots (named by
//!   their content's id). Locks, pending records, keys and the config always go to the storage.
//! - A copy is used only if its checksum (BLAKE3 of the bytes, appended to the copy) holds; else
//!   it is removed and the storage is asked. What the copy holds is then checked again by the
//!   codec like anything read from the storage (ids, authentication): a copy can be lost or
//!   damaged, never trusted into wrong data.
//! - Listings always go to the storage; a copy whose name the storage no longer lists is removed
//!   then (a pruned index file, a forgotten snapshot). Deleting the whole folder is always safe.
//! - Writes go to the storage first, then to the copy; a failure to write the copy is only logged.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{Backend, FileKind, TmpFile};
use crate::error::Result;
use crate::format::{BlobId, Compression};

/// A backend whose index files and snapshots are also kept in a local folder.
pub struct LocalCache {
    inner: Arc<dyn Backend>,
    dir: PathBuf,
}

const SUM: usize = 32;

impl LocalCache {
    /// Keep copies of `inner`'s immutable files in `dir` (made on first write).
    pub fn new(inner: Arc<dyn Backend>, dir: PathBuf) -> LocalCache {
        LocalCache { inner, dir }
    }

    fn cached(kind: FileKind) -> bool {
        matches!(kind, FileKind::Index | FileKind::Snapshot | FileKind::Dict)
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.dir.join(kind.relative_path(name))
    }

    fn read_copy(&self, kind: FileKind, name: &str) -> Option<Vec<u8>> {
        let p = self.path(kind, name);
        let mut bytes = fs::read(&p).ok()?;
        if bytes.len() >= SUM {
            let (body, sum) = bytes.split_at(bytes.len() - SUM);
            if blake3::hash(body).as_bytes() == sum {
                bytes.truncate(bytes.len() - SUM);
                return Some(bytes);
            }
        }
        tracing::warn!("local cache: {} is damaged; reading it from the repository", p.display());
        let _ = fs::remove_file(&p);
        None
    }

    fn write_copy(&self, kind: FileKind, name: &str, data: &[u8]) {
        let mut copy = Vec::with_capacity(data.len() + SUM);
        copy.extend_from_slice(data);
        copy.extend_from_slice(blake3::hash(data).as_bytes());
        keep(&self.path(kind, name), &copy);
    }

    fn remove_copy(&self, kind: FileKind, name: &str) {
        let _ = fs::remove_file(self.path(kind, name));
    }

    /// Remove the copies of `kind` whose names `listed` (sorted) does not hold.
    fn forget_unlisted(&self, kind: FileKind, listed: &[String]) {
        let Ok(entries) = fs::read_dir(self.dir.join(kind.dir())) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // (Copies being written by another process start with a dot: left alone.)
            if !name.starts_with('.') && listed.binary_search(&name).is_err() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

impl Backend for LocalCache {
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        if !Self::cached(kind) {
            return self.inner.get(kind, name);
        }
        if let Some(b) = self.read_copy(kind, name) {
            return Ok(b);
        }
        let b = self.inner.get(kind, name)?;
        self.write_copy(kind, name, &b);
        Ok(b)
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.inner.get_range(kind, name, offset, len)
    }

    fn len(&self, kind: FileKind, name: &str) -> Result<u64> {
        self.inner.len(kind, name)
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.inner.put(kind, name, data)?;
        if Self::cached(kind) {
            self.write_copy(kind, name, data);
        }
        Ok(())
    }

    fn list(&self, kind: FileKind) -> Result<Vec<String>> {
        let names = self.inner.list(kind)?;
        if Self::cached(kind) {
            self.forget_unlisted(kind, &names);
        }
        Ok(names)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        if Self::cached(kind) {
            self.remove_copy(kind, name);
        }
        self.inner.delete(kind, name)
    }

    fn put_new(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        self.inner.put_new(kind, name, data)
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<std::time::SystemTime> {
        self.inner.modified(kind, name)
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn local_root(&self) -> Option<&Path> {
        self.inner.local_root()
    }

    fn prepare_new(&self) -> Result<()> {
        self.inner.prepare_new()
    }

    fn tmp_files(&self) -> Result<Vec<TmpFile>> {
        self.inner.tmp_files()
    }

    fn remove_tmp(&self, name: &str) -> Result<()> {
        self.inner.remove_tmp(name)
    }

    fn ensure_reserve(&self) {
        self.inner.ensure_reserve()
    }

    fn release_reserve(&self) -> bool {
        self.inner.release_reserve()
    }
}

/// The copies a cache folder may hold before [`trim`] removes the oldest: `REWIND_CACHE_MAX_MIB`
/// MiB, else 4 GiB.
pub(crate) fn max_bytes() -> u64 {
    std::env::var("REWIND_CACHE_MAX_MIB").ok().and_then(|v| v.parse::<u64>().ok()).map_or(4 << 30, |m| m << 20)
}

/// Keep the copies under `root` (its `index/`, `snapshots/` and `trees/`; never the catalog) within
/// `max` bytes: when they are more, the least recently written go until they fill 3/4 of it.
/// A removed copy is read from the storage again when needed.
pub(crate) fn trim(root: &Path, max: u64) {
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = ["index", "snapshots", "trees"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                files.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len(), e.path()));
            }
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    if total <= max {
        return;
    }
    files.sort();
    for (_, len, path) in files {
        if total <= max / 4 * 3 {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
    tracing::debug!("local cache {}: trimmed to {total} bytes", root.display());
}

/// A tree's stored bytes from the cache folder `dir`, with its compression and length (as
/// [`keep_tree`] wrote them); unverified: the caller opens them against the id.
pub(crate) fn read_tree(dir: &Path, id: &BlobId) -> Option<(Compression, u32, Vec<u8>)> {
    let hex = id.hash.to_hex();
    let copy = fs::read(dir.join(&hex[..2]).join(&hex)).ok()?;
    let compression = Compression::from_code(*copy.first()?, 0)?;
    let raw_len = u32::from_le_bytes(copy.get(1..5)?.try_into().ok()?);
    Some((compression, raw_len, copy[5..].to_vec()))
}

/// Keep a tree's stored bytes (sealed, compressed: what its pack holds) in the cache folder `dir`.
pub(crate) fn keep_tree(dir: &Path, id: &BlobId, compression: Compression, raw_len: u32, stored: &[u8]) {
    if let Compression::Grouped { .. } = compression {
        // A group's bytes are not the tree's alone: `keep_tree_raw` keeps such a tree.
        return;
    }
    let hex = id.hash.to_hex();
    let mut copy = Vec::with_capacity(stored.len() + 5);
    copy.push(compression.code());
    copy.extend_from_slice(&raw_len.to_le_bytes());
    copy.extend_from_slice(stored);
    keep(&dir.join(&hex[..2]).join(&hex), &copy);
}

/// Keep a tree of a group (whose stored bytes are the group's) in the cache folder `dir`,
/// compressed and sealed on its own as a tree outside a group would be stored.
pub(crate) fn keep_tree_raw(dir: &Path, codec: &crate::codec::Codec, id: &BlobId, raw: &[u8], level: i32) {
    let (compression, compressed) = crate::blob::compress(raw, level);
    let mut stored = Vec::with_capacity(compressed.len() + codec.blob_overhead());
    codec.seal_blob(id, &compressed, &mut stored);
    keep_tree(dir, id, compression, raw.len() as u32, &stored);
}

/// Write `bytes` to `p` whole or not at all (a file of our own beside it, renamed into place),
/// making its folder; a failure is only logged: a cache may lose a copy.
pub(crate) fn keep(p: &Path, bytes: &[u8]) {
    let result = (|| -> std::io::Result<()> {
        let dir = p.parent().expect("a file in a folder");
        // The user's alone, whatever the umask: the catalog goes into the same folder.
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700).create(dir)?;
        static N: AtomicU64 = AtomicU64::new(0);
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let result = fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes)).and_then(|()| fs::rename(&tmp, p));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    })();
    if let Err(e) = result {
        tracing::debug!("local cache: cannot keep {}: {e}", p.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[test]
    fn trimming_removes_the_oldest_copies_and_never_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("catalog.sqlite"), vec![0u8; 4000]).unwrap();
        for (i, sub) in ["index", "snapshots", "trees/ab"].iter().enumerate() {
            fs::create_dir_all(root.join(sub)).unwrap();
            for j in 0..4 {
                let p = root.join(sub).join(format!("f{j}"));
                fs::write(&p, vec![1u8; 100]).unwrap();
                // Written one after another: f0 of index the oldest.
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + (i * 4 + j) as u64);
                fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
            }
        }
        trim(root, 2000);
        assert_eq!(fs::read_dir(root.join("trees/ab")).unwrap().count(), 4, "under the bound: nothing goes");
        trim(root, 800);
        let left = |sub: &str| {
            let mut v: Vec<String> =
                fs::read_dir(root.join(sub)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            v.sort();
            v
        };
        // 1,200 bytes > 800: the oldest go until 600 are left.
        assert!(left("index").is_empty());
        assert_eq!(left("snapshots"), ["f2", "f3"].map(String::from));
        assert_eq!(left("trees/ab"), ["f0", "f1", "f2", "f3"].map(String::from));
        assert!(root.join("catalog.sqlite").exists());
    }

    #[test]
    fn copies_are_used_checked_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let remote = LocalBackend::new(dir.path().join("remote"));
        remote.prepare_new().unwrap();
        let remote: Arc<dyn Backend> = Arc::new(remote);
        let cache = LocalCache::new(remote.clone(), dir.path().join("cache"));
        cache.put(FileKind::Index, "aa", b"index one").unwrap();
        cache.put(FileKind::Snapshot, "bb", b"snapshot").unwrap();
        cache.put(FileKind::Lock, "l", b"lock").unwrap();
        let copy = dir.path().join("cache/index/aa");
        assert!(copy.exists());
        assert!(!dir.path().join("cache/locks/l").exists(), "locks are not kept");
        // A copy is read instead of the storage (here: the storage's file changed under it).
        remote.put(FileKind::Index, "aa", b"changed").unwrap();
        assert_eq!(cache.get(FileKind::Index, "aa").unwrap(), b"index one");
        // A damaged copy is dropped and the storage asked.
        let mut bytes = fs::read(&copy).unwrap();
        bytes[0] ^= 1;
        fs::write(&copy, &bytes).unwrap();
        assert_eq!(cache.get(FileKind::Index, "aa").unwrap(), b"changed");
        assert_eq!(cache.get(FileKind::Index, "aa").unwrap(), b"changed", "and kept again");
        // A name the storage no longer lists loses its copy at the next listing.
        remote.delete(FileKind::Snapshot, "bb").unwrap();
        assert!(dir.path().join("cache/snapshots/bb").exists());
        assert!(cache.list(FileKind::Snapshot).unwrap().is_empty());
        assert!(!dir.path().join("cache/snapshots/bb").exists());
        // The whole folder may go at any time.
        fs::remove_dir_all(dir.path().join("cache")).unwrap();
        assert_eq!(cache.get(FileKind::Index, "aa").unwrap(), b"changed");
    }
}
