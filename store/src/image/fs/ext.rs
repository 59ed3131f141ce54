//! ext2/3/4 through the `ext4-view` crate (read-only; replays the journal in memory).
//!
//! `ext4-view`'s filesystem object is single-threaded (`Rc` and `RefCell` inside), so a
//! [`Pool`] of a few independently loaded instances serves parallel callers; loading one reads
//! the superblock, the group descriptors and the journal. Each instance keeps the crate's block
//! cache and a few open files, so sequential reads of a file continue where the last one stopped
//! instead of walking its extents again.
//!
//! The crate keeps two things private that a backup browser needs: the inode number of an entry
//! (hard links) and the inode change time. Both are printed by its `Debug` output (of an open
//! `File` and of `Metadata`), which is where we take them from; the crate is pinned to an exact
//! version and `store/tests/images.rs` checks both, so a change of that output fails the tests
//! instead of losing data. An inode number costs opening the file, which looks its path up from
//! the root again (about 0.1 ms), so `stat` gives it and `list` does not: a walk of 20,000
//! files takes 0.05 s without and 2.2 s with.

use std::num::NonZeroUsize;
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read, File, Metadata};
use lru::LruCache;

use super::{DirEntry, FileSystem, FsKind, Kind, Pool, Stat, Time, components, show};
use crate::image::io::read_exact_at;
use crate::image::{Error, ReadAt, Result};

/// Instances opened at most; each costs its block cache (a few MiB at most).
const INSTANCES: usize = 4;
/// Open files kept per instance, for sequential reads.
const OPEN_FILES: usize = 8;

struct Reader(Arc<dyn ReadAt>);

impl Ext4Read for Reader {
    fn read(&mut self, start: u64, dst: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        read_exact_at(&*self.0, start, dst, "ext filesystem").map_err(|e| match e {
            Error::Io(io) => Box::new(io) as Box<dyn std::error::Error + Send + Sync>,
            other => Box::new(other),
        })
    }
}

struct Instance {
    fs: Ext4,
    files: LruCache<Vec<u8>, File>,
}

// SAFETY: `Ext4` and `File` are not `Send` only because they share `Rc`s (and `RefCell`s) with
// each other. Every such object of one instance lives inside this struct and is created, used and
// dropped only through `&mut Instance`, which the pool hands out under a mutex; none escapes (we
// convert what we return into our own types). So all the reference counts of one instance are
// only ever touched by one thread at a time, and moving the whole instance between threads is
// sound. The reader inside is our `Reader`, which is `Send + Sync`.
unsafe impl Send for Instance {}

/// An ext2/3/4 filesystem.
pub(crate) struct Ext {
    volume: Arc<dyn ReadAt>,
    pool: Pool<Instance>,
}

fn load(volume: &Arc<dyn ReadAt>) -> Result<Instance> {
    let fs = Ext4::load(Box::new(Reader(volume.clone()))).map_err(|e| convert(e, b"/"))?;
    let files = LruCache::new(NonZeroUsize::new(OPEN_FILES).expect("nonzero"));
    Ok(Instance { fs, files })
}

fn convert(e: Ext4Error, path: &[u8]) -> Error {
    match e {
        Ext4Error::NotFound => Error::NotFound(show(path)),
        Ext4Error::NotADirectory => Error::NotADirectory(show(path)),
        Ext4Error::IsADirectory | Ext4Error::IsASpecialFile | Ext4Error::NotASymlink => Error::NotAFile(show(path)),
        Ext4Error::Io(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => Error::Io(*io),
            Err(inner) => match inner.downcast::<Error>() {
                Ok(e) => *e,
                Err(inner) => Error::corrupt("ext filesystem", inner),
            },
        },
        Ext4Error::Incompatible(i) => Error::Unsupported(format!("ext filesystem feature: {i}")),
        other => Error::corrupt("ext filesystem", other),
    }
}

/// `/a/b` for the crate, which wants absolute paths.
fn absolute(path: &[u8]) -> Result<Vec<u8>> {
    let mut abs = Vec::with_capacity(path.len() + 1);
    for c in components(path)? {
        abs.push(b'/');
        abs.extend_from_slice(c);
    }
    if abs.is_empty() {
        abs.push(b'/');
    }
    Ok(abs)
}

/// The number after `key` in a `Debug` string.
fn number_after(s: &str, key: &str) -> Option<i64> {
    let rest = &s[s.find(key)? + key.len()..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn ctime(m: &Metadata) -> Option<Time> {
    let d = format!("{m:?}");
    let rest = &d[d.find("ctime: Timestamp {")?..];
    let secs = number_after(rest, "seconds: ")?;
    let nanos = u32::try_from(number_after(rest, "nanoseconds: ")?).ok()?;
    Some(Time { secs, nanos })
}

fn time(t: ext4_view::Timestamp) -> Time {
    Time { secs: t.seconds(), nanos: t.nanoseconds() }
}

/// The entry's attributes; `with_ino` also finds a regular file's inode number, which costs
/// resolving its path once more (the crate looks paths up from the root: about 0.1 ms).
fn stat_of(inst: &Instance, abs: &[u8], m: &Metadata, with_ino: bool) -> Result<Stat> {
    let ft = m.file_type();
    let kind = if ft.is_regular_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    };
    let mut st = Stat::new(kind, m.len());
    if kind == Kind::File && with_ino {
        let f = inst.fs.open(abs).map_err(|e| convert(e, abs))?;
        st.ino = number_after(&format!("{f:?}"), "inode: ").and_then(|n| u64::try_from(n).ok());
    }
    st.mode = Some(u32::from(m.mode()));
    st.uid = Some(m.uid());
    st.gid = Some(m.gid());
    st.mtime = Some(time(m.modified()));
    st.atime = Some(time(m.accessed()));
    st.ctime = ctime(m);
    st.btime = m.created().map(time);
    Ok(st)
}

impl Ext {
    pub(crate) fn open(volume: Arc<dyn ReadAt>) -> Result<Ext> {
        let first = crate::image::guarded("ext filesystem", || load(&volume))?;
        Ok(Ext { pool: Pool::new(INSTANCES, first), volume })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Instance) -> Result<R>) -> Result<R> {
        self.pool.with("ext filesystem", || load(&self.volume), f)
    }
}

impl FileSystem for Ext {
    fn kind(&self) -> FsKind {
        FsKind::Ext
    }

    fn stat(&self, path: &[u8]) -> Result<Stat> {
        let abs = absolute(path)?;
        self.with(|inst| {
            let m = inst.fs.symlink_metadata(&abs[..]).map_err(|e| convert(e, &abs))?;
            stat_of(inst, &abs, &m, true)
        })
    }

    fn list(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        let abs = absolute(path)?;
        self.with(|inst| {
            let mut out = Vec::new();
            for entry in inst.fs.read_dir(&abs[..]).map_err(|e| convert(e, &abs))? {
                let entry = entry.map_err(|e| convert(e, &abs))?;
                let name = entry.file_name().as_ref().to_vec();
                if name == b"." || name == b".." {
                    continue;
                }
                let m = entry.metadata().map_err(|e| convert(e, &abs))?;
                let child = entry.path();
                let stat = stat_of(inst, child.as_ref(), &m, false)?;
                out.push(DirEntry { name, stat });
            }
            Ok(out)
        })
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        let abs = absolute(path)?;
        self.with(|inst| Ok(inst.fs.read_link(&abs[..]).map_err(|e| convert(e, &abs))?.as_ref().to_vec()))
    }

    fn read_at(&self, path: &[u8], offset: u64, buf: &mut [u8]) -> Result<usize> {
        let abs = absolute(path)?;
        self.with(|inst| {
            let mut file = match inst.files.pop(&abs) {
                Some(f) => f,
                None => {
                    let m = inst.fs.symlink_metadata(&abs[..]).map_err(|e| convert(e, &abs))?;
                    if !m.file_type().is_regular_file() {
                        return Err(Error::NotAFile(show(&abs)));
                    }
                    inst.fs.open(&abs[..]).map_err(|e| convert(e, &abs))?
                }
            };
            if file.position() != offset {
                file.seek_to(offset).map_err(|e| convert(e, &abs))?;
            }
            let mut done = 0;
            while done < buf.len() {
                // On an error the file is dropped, not kept with a position we cannot trust.
                let n = file.read_bytes(&mut buf[done..]).map_err(|e| convert(e, &abs))?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            inst.files.put(abs.clone(), file);
            Ok(done)
        })
    }
}
