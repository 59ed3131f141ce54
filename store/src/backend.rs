//! Storage behind one narrow trait, by file kind and name: a local directory here, an S3 bucket
//! in the `rewind-s3` crate. Both lay out the same names ([`FileKind::relative_path`]).
//!
//! Invariant: `put` is atomic and durable when it returns (temp file, fsync, rename, fsync of the
//! directory), so a reader sees a whole file or none, and a crash never leaves a partial one
//! under its final name.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, IoContext, Result};

/// The kinds of file a repository holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Config,
    Pack,
    Index,
    Snapshot,
    Lock,
    /// Prune's records of packs to delete once running backups are done.
    Pending,
    /// Key files of an encrypted repository.
    Key,
    /// Sessions the portal ended (logout), refused by every portal serving the repository.
    Revocation,
    /// Compression dictionaries (repository version 3).
    Dict,
}

impl FileKind {
    /// Where files of this kind live, relative to the repository's root: `data/<2 hex>/<name>`
    /// for packs, `config`, `<dir>/<name>` for the rest. Every backend lays out the same names.
    pub fn relative_path(self, name: &str) -> String {
        match self {
            FileKind::Config => "config".into(),
            FileKind::Pack => format!("data/{}/{name}", name.get(..2).unwrap_or("00")),
            _ => format!("{}/{name}", self.dir()),
        }
    }

    /// The directory of this kind's files, relative to the repository's root ("" for the config).
    pub fn dir(self) -> &'static str {
        match self {
            FileKind::Config => "",
            FileKind::Pack => "data",
            FileKind::Index => "index",
            FileKind::Snapshot => "snapshots",
            FileKind::Lock => "locks",
            FileKind::Pending => "pending",
            FileKind::Key => "keys",
            FileKind::Revocation => "revoked",
            FileKind::Dict => "dicts",
        }
    }
}

/// Where repository files are kept.
pub trait Backend: Send + Sync {
    /// The whole file.
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>>;
    /// `len` bytes at `offset`; fewer only at the end of the file.
    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// The file's length.
    fn len(&self, kind: FileKind, name: &str) -> Result<u64>;
    /// Store a whole file atomically and durably.
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// The names of all files of a kind.
    fn list(&self, kind: FileKind) -> Result<Vec<String>>;
    /// Remove a file; removing a missing file is not an error.
    fn delete(&self, kind: FileKind, name: &str) -> Result<()>;
    /// Store a whole file atomically and durably only if none of that name exists: exactly one
    /// of several concurrent callers succeeds, the others get [`Error::AlreadyExists`]. (On
    /// object storage: a conditional put, `If-None-Match: *`.)
    fn put_new(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()>;
    /// When the file was last written, by the storage's clock.
    fn modified(&self, kind: FileKind, name: &str) -> Result<std::time::SystemTime>;

    /// Where the repository is, for messages: a directory, or `s3:https://host/bucket/prefix`.
    fn location(&self) -> String;

    /// The repository's directory, for a backend on the local filesystem.
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// Make room for a new repository: fails with [`Error::AlreadyExists`] if one (or anything
    /// else) is there; creates what the layout needs.
    fn prepare_new(&self) -> Result<()>;

    /// Files of unfinished writes the storage keeps apart (the local `tmp/`); none on object
    /// storage, where a put is one request.
    fn tmp_files(&self) -> Result<Vec<TmpFile>> {
        Ok(Vec::new())
    }

    /// Remove one of [`Backend::tmp_files`].
    fn remove_tmp(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// Keep room for prune on a full filesystem (best effort; nothing where storage does not
    /// fill up like a disk).
    fn ensure_reserve(&self) {}

    /// Give the reserve's room back; true if there was one.
    fn release_reserve(&self) -> bool {
        false
    }
}

/// A repository in a local directory:
/// `config`, `data/<2 hex>/<pack id>`, `index/<id>`, `snapshots/<id>`, `locks/<name>`, `tmp/`.
pub struct LocalBackend {
    root: PathBuf,
    tmp_counter: AtomicU64,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into(), tmp_counter: AtomicU64::new(0) }
    }

    /// Create the directory layout of an empty repository. The folders of packs
    /// (`data/<2 hex>/`) are made when their first pack is written: a small repository needs
    /// few of the 256, and each costs a filesystem block.
    pub fn create_layout(&self) -> Result<()> {
        for d in ["data", "index", "snapshots", "locks", "pending", "keys", "tmp"] {
            fs::create_dir_all(self.root.join(d)).at(self.root.join(d))?;
        }
        Ok(())
    }

    /// Make `dir` (a pack folder, or a folder a newer rewind added) and its entry in its
    /// parent durable, so that a file renamed into it survives a crash. Also when another
    /// writer made it a moment ago: its fsync of the parent may not have happened yet.
    fn create_dir_durably(dir: &Path) -> Result<()> {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(dir, e)),
        }
        fsync_dir(dir.parent().expect("repository folders have a parent"))
    }

    pub fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.root.join(kind.relative_path(name))
    }

    fn not_found_or_io(path: &Path, e: std::io::Error, kind: FileKind, name: &str) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!("{} {name}", kind.dir().trim_end_matches('s')))
        } else {
            Error::io(path, e)
        }
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

impl Backend for LocalBackend {
    fn get(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        let path = self.path(kind, name);
        fs::read(&path).map_err(|e| Self::not_found_or_io(&path, e, kind, name))
    }

    fn get_range(&self, kind: FileKind, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path(kind, name);
        let mut file = File::open(&path).map_err(|e| Self::not_found_or_io(&path, e, kind, name))?;
        // Read into spare capacity: no zeroing of a buffer about to be overwritten.
        let mut buf = Vec::with_capacity(len);
        file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&path, e))?;
        file.take(len as u64).read_to_end(&mut buf).map_err(|e| Error::io(&path, e))?;
        Ok(buf)
    }

    fn len(&self, kind: FileKind, name: &str) -> Result<u64> {
        let path = self.path(kind, name);
        fs::metadata(&path).map(|m| m.len()).map_err(|e| Self::not_found_or_io(&path, e, kind, name))
    }

    fn put(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(kind, name);
        let tmp = self.write_tmp(name, data)?;
        let parent = dest.parent().expect("repository files live in a directory");
        if let Err(e) = fs::rename(&tmp, &dest) {
            if e.kind() != std::io::ErrorKind::NotFound || parent.exists() {
                let _ = fs::remove_file(&tmp);
                return Err(Error::io(&dest, e));
            }
            // A pack folder not made yet, or a folder this repository was created without
            // (`pending/` came later).
            if let Err(e) = Self::create_dir_durably(parent) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            fs::rename(&tmp, &dest).at(&dest)?;
        }
        fsync_dir(parent)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let dir = self.root.join(kind.dir());
        let push = |dir: &Path, out: &mut Vec<String>| -> Result<()> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                // A directory a newer rewind added (`pending/`): nothing of that kind yet.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && kind != FileKind::Pack => return Ok(()),
                Err(e) => return Err(Error::io(dir, e)),
            };
            for e in entries {
                let e = e.at(dir)?;
                if let Some(name) = e.file_name().to_str()
                    && !name.starts_with('.')
                {
                    out.push(name.to_string());
                }
            }
            Ok(())
        };
        match kind {
            FileKind::Config => out.push("config".into()),
            FileKind::Pack => {
                for sub in fs::read_dir(&dir).at(&dir)? {
                    let sub = sub.at(&dir)?;
                    if sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        push(&sub.path(), &mut out)?;
                    }
                }
            }
            _ => push(&dir, &mut out)?,
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, kind: FileKind, name: &str) -> Result<()> {
        let path = self.path(kind, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn put_new(&self, kind: FileKind, name: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(kind, name);
        let tmp = self.write_tmp(name, data)?;
        // link(2) fails if the name exists, where rename would replace it.
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::AlreadyExists(dest)),
            Err(e) => return Err(Error::io(&dest, e)),
        }
        fsync_dir(dest.parent().expect("repository files live in a directory"))
    }

    fn modified(&self, kind: FileKind, name: &str) -> Result<std::time::SystemTime> {
        let path = self.path(kind, name);
        fs::symlink_metadata(&path).and_then(|m| m.modified()).map_err(|e| Self::not_found_or_io(&path, e, kind, name))
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn prepare_new(&self) -> Result<()> {
        if self.root.exists() {
            let mut entries = fs::read_dir(&self.root).at(&self.root)?;
            if entries.next().is_some() {
                return Err(Error::AlreadyExists(self.root.clone()));
            }
        }
        fs::create_dir_all(&self.root).at(&self.root)?;
        self.create_layout()
    }

    fn tmp_files(&self) -> Result<Vec<TmpFile>> {
        LocalBackend::tmp_files(self)
    }

    fn remove_tmp(&self, name: &str) -> Result<()> {
        LocalBackend::remove_tmp(self, name)
    }

    fn ensure_reserve(&self) {
        LocalBackend::ensure_reserve(self)
    }

    fn release_reserve(&self) -> bool {
        LocalBackend::release_reserve(self)
    }
}

/// A file left in `tmp/`, and whether its writer is provably gone.
#[derive(Clone, Debug)]
pub struct TmpFile {
    pub name: String,
    pub bytes: u64,
    /// Its process (named in the file name) is not running on this host.
    pub dead: bool,
    pub modified: Option<std::time::SystemTime>,
}

impl LocalBackend {
    /// Write `data` to a new file in `tmp/`, durably; returns its path. The name carries this
    /// host's tag and pid (`<host tag>-<pid>-<n>-<name>`), so leftovers of a dead process can be
    /// told apart from files being written.
    fn write_tmp(&self, name: &str, data: &[u8]) -> Result<PathBuf> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}-{}-{n}-{name}", host_tag(), std::process::id()));
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).at(&tmp)?;
        let result = f.write_all(data).and_then(|_| f.sync_all());
        if let Err(e) = result {
            drop(f);
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        Ok(tmp)
    }

    /// The files in `tmp/`.
    pub fn tmp_files(&self) -> Result<Vec<TmpFile>> {
        let dir = self.root.join("tmp");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let tag = host_tag();
        let mut out = Vec::new();
        for e in entries {
            let e = e.at(&dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().ok();
            let mut parts = name.splitn(3, '-');
            let dead = match (parts.next(), parts.next().and_then(|p| p.parse::<i32>().ok())) {
                (Some(t), Some(pid)) if t == tag => crate::lock::pid_is_gone(pid),
                _ => false,
            };
            out.push(TmpFile {
                name,
                bytes: meta.as_ref().map(|m| m.len()).unwrap_or(0),
                dead,
                modified: meta.and_then(|m| m.modified().ok()),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remove a file of `tmp/`.
    pub fn remove_tmp(&self, name: &str) -> Result<()> {
        let p = self.root.join("tmp").join(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    /// `REPO/reserve`: room kept for prune on a full filesystem (see FORMAT.md, "Full disk").
    fn reserve_path(&self) -> PathBuf {
        self.root.join("reserve")
    }

    /// Make sure the reserve exists (best effort: a full filesystem may not have room for it).
    pub fn ensure_reserve(&self) {
        let p = self.reserve_path();
        if fs::metadata(&p).map(|m| m.len() >= RESERVE_BYTES).unwrap_or(false) {
            return;
        }
        let result = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&p)?;
            // Real blocks, not a hole: writing zeros allocates them on every filesystem.
            let zeros = vec![0u8; 64 << 10];
            for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                f.write_all(&zeros)?;
            }
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&p);
            tracing::debug!("no room for the prune reserve: {e}");
        }
    }

    /// Give the reserve's space back to the filesystem; true if there was one.
    pub fn release_reserve(&self) -> bool {
        fs::remove_file(self.reserve_path()).is_ok()
    }
}

/// Size of `REPO/reserve`.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// Whether an error means the storage is full.
pub fn is_no_space(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
}

/// Eight hex digits of BLAKE3 of this host's name: tells this host's temporary files from other
/// hosts' in a shared repository.
pub(crate) fn host_tag() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| blake3::hash(crate::lock::hostname().as_bytes()).to_hex()[..8].to_string()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_folders_are_made_by_their_first_pack() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        b.prepare_new().unwrap();
        assert_eq!(fs::read_dir(dir.path().join("repo/data")).unwrap().count(), 0);
        assert!(b.list(FileKind::Pack).unwrap().is_empty());
        let name = "ab".repeat(32);
        b.put(FileKind::Pack, &name, b"pack").unwrap();
        b.put(FileKind::Pack, &"ab01".repeat(16), b"another").unwrap();
        assert_eq!(b.get(FileKind::Pack, &name).unwrap(), b"pack");
        assert_eq!(b.list(FileKind::Pack).unwrap().len(), 2);
        let folders: Vec<_> =
            fs::read_dir(dir.path().join("repo/data")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(folders, ["ab"]);
        // Nothing left behind in tmp/.
        assert!(b.tmp_files().unwrap().is_empty());
    }
}

#[cfg(test)]
mod private_folder_tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use crate::private_folder;

    /// A folder for plaintext is made the user's alone, and one that is not is refused: a
    /// symbolic link, or one inside a folder others may write in (another user's: tests/catalog.rs).
    #[test]
    fn folders_for_plaintext_are_the_users_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        let made = dir.path().join("a/b");
        private_folder(&made).unwrap();
        assert_eq!(mode(&made), 0o700);
        // The user's own folder that its group may write in: refused, and left as it is (it
        // may be a folder the user named, such as their home).
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = private_folder(&made).unwrap_err().to_string();
        assert!(err.contains("may be written by others (mode 775"), "{err}");
        assert_eq!(mode(&made), 0o775);
        // Readable by others is fine: the catalog's files are 0600.
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_folder(&made).unwrap();
        assert_eq!(mode(&made), 0o755);

        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_folder(&open.join("cache")).unwrap_err().to_string();
        assert!(err.contains("may be written by others"), "{err}");
        // With the sticky bit (as /tmp), a folder of the user's own in it is fine.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        private_folder(&open.join("cache")).unwrap();

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        let err = private_folder(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
