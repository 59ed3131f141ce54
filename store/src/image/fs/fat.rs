//! FAT12/16/32 through the `fatfs` crate, opened so that it never writes: the device is a
//! [`Cursor`] whose writes fail, and access dates are not updated.
//!
//! `fatfs` is single-threaded (`RefCell` inside) and reads a file's cluster chain from its start
//! on every seek, so a [`Pool`] of a few instances serves parallel callers and each keeps a few
//! open files, so sequential reads go on where the last stopped. Small reads (boot sector, FAT
//! entries, directories) go through a bounded [`BlockCache`].

use std::io::{Read, Seek, SeekFrom};
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use super::{DirEntry, FileSystem, FsKind, Kind, Pool, Stat, Time, components, show};
use crate::image::io::{BlockCache, Cursor};
use crate::image::{Error, ReadAt, Result};

const INSTANCES: usize = 4;
const OPEN_FILES: usize = 8;
/// 64 KiB blocks of metadata cached per filesystem (shared by its instances).
const CACHE_BLOCKS: usize = 64;
/// FAT directories hold at most 65,536 entries; a cluster chain that loops would never end.
const MAX_ENTRIES: usize = 65_536;

type Fs = fatfs::FileSystem<Cursor>;
type OpenFiles<'a> = LruCache<Vec<u8>, fatfs::File<'a, Cursor>>;

self_cell::self_cell!(
    struct Instance {
        owner: Fs,
        #[not_covariant]
        dependent: OpenFiles,
    }
);

// SAFETY: `fatfs::FileSystem` is `Send` but not `Sync` (a `RefCell` around the device), so the
// open files borrowing it are not `Send`. They live in the same cell as the filesystem they
// borrow, are only reached through `&mut Instance` handed out by the pool under a mutex, and never
// leave it: one thread at a time touches the filesystem and its files, and moving the cell moves
// them together.
unsafe impl Send for Instance {}

/// A FAT filesystem.
pub(crate) struct Fat {
    volume: Arc<dyn ReadAt>,
    pool: Pool<Instance>,
}

fn load(volume: &Arc<dyn ReadAt>) -> Result<Instance> {
    let options = fatfs::FsOptions::new().update_accessed_date(false);
    let fs = fatfs::FileSystem::new(Cursor::new(volume.clone()), options)
        .map_err(|e| Error::corrupt("FAT filesystem", e))?;
    Ok(Instance::new(fs, |_| LruCache::new(NonZeroUsize::new(OPEN_FILES).expect("nonzero"))))
}

fn utf8(path: &[u8]) -> Result<&str> {
    std::str::from_utf8(path).map_err(|_| Error::NotFound(show(path)))
}

fn convert(e: std::io::Error, path: &[u8]) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound(show(path)),
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            Error::corrupt("FAT filesystem", format!("{}: {e}", show(path)))
        }
        _ => Error::Io(e),
    }
}

fn time(date: fatfs::Date, t: fatfs::Time) -> Option<Time> {
    let dt = jiff::civil::DateTime::new(
        i16::try_from(date.year).ok()?,
        i8::try_from(date.month).ok()?,
        i8::try_from(date.day).ok()?,
        i8::try_from(t.hour).ok()?,
        i8::try_from(t.min).ok()?,
        i8::try_from(t.sec).ok()?,
        i32::from(t.millis) * 1_000_000,
    )
    .ok()?;
    let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(Time { secs: ts.as_second(), nanos: u32::try_from(ts.subsec_nanosecond()).ok()? })
}

fn stat_of(e: &fatfs::DirEntry<'_, Cursor>) -> Stat {
    let kind = if e.is_dir() { Kind::Dir } else { Kind::File };
    let mut st = Stat::new(kind, if e.is_dir() { 0 } else { e.len() });
    let m = e.modified();
    st.mtime = time(m.date, m.time);
    let c = e.created();
    st.btime = time(c.date, c.time);
    st.atime = time(e.accessed(), fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 });
    st.attributes = Some(u32::from(e.attributes().bits()));
    st
}

fn root_stat() -> Stat {
    Stat::new(Kind::Dir, 0)
}

impl Fat {
    pub(crate) fn open(volume: Arc<dyn ReadAt>) -> Result<Fat> {
        let volume: Arc<dyn ReadAt> = Arc::new(BlockCache::new(volume, CACHE_BLOCKS));
        let first = crate::image::guarded("FAT filesystem", || load(&volume))?;
        Ok(Fat { pool: Pool::new(INSTANCES, first), volume })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Instance) -> Result<R>) -> Result<R> {
        self.pool.with("FAT filesystem", || load(&self.volume), f)
    }

    fn dir<'a>(fs: &'a Fs, parts: &[&[u8]], path: &[u8]) -> Result<fatfs::Dir<'a, Cursor>> {
        if parts.is_empty() {
            return Ok(fs.root_dir());
        }
        let joined = parts.join(&b'/');
        fs.root_dir().open_dir(utf8(&joined)?).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(show(path)),
            // fatfs says "Is a file" as `Other`.
            std::io::ErrorKind::Other => Error::NotADirectory(show(path)),
            _ => convert(e, path),
        })
    }
}

impl FileSystem for Fat {
    fn kind(&self) -> FsKind {
        FsKind::Fat
    }

    fn stat(&self, path: &[u8]) -> Result<Stat> {
        let parts = components(path)?;
        let Some((name, parent)) = parts.split_last() else {
            return Ok(root_stat());
        };
        let name = utf8(name)?;
        self.with(|inst| {
            inst.with_dependent_mut(|fs, _| {
                for e in Self::dir(fs, parent, path)?.iter().take(MAX_ENTRIES) {
                    let e = e.map_err(|e| convert(e, path))?;
                    let n = e.file_name();
                    if n == "." || n == ".." {
                        continue;
                    }
                    if n.to_uppercase() == name.to_uppercase() {
                        return Ok(stat_of(&e));
                    }
                }
                Err(Error::NotFound(show(path)))
            })
        })
    }

    fn list(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        let parts = components(path)?;
        self.with(|inst| {
            inst.with_dependent_mut(|fs, _| {
                let mut out = Vec::new();
                for e in Self::dir(fs, &parts, path)?.iter() {
                    if out.len() == MAX_ENTRIES {
                        return Err(Error::corrupt(
                            "FAT filesystem",
                            format!("{}: a directory that does not end", show(path)),
                        ));
                    }
                    let e = e.map_err(|e| convert(e, path))?;
                    let name = e.file_name();
                    if name == "." || name == ".." {
                        continue;
                    }
                    out.push(DirEntry { name: name.into_bytes(), stat: stat_of(&e) });
                }
                Ok(out)
            })
        })
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        // FAT has no symlinks; say what the path is instead.
        self.stat(path)?;
        Err(Error::NotAFile(show(path)))
    }

    fn read_at(&self, path: &[u8], offset: u64, buf: &mut [u8]) -> Result<usize> {
        let parts = components(path)?;
        let key = parts.join(&b'/');
        let name = utf8(&key)?.to_owned();
        self.with(|inst| {
            inst.with_dependent_mut(|fs, files| {
                let mut file = match files.pop(&key) {
                    Some(f) => f,
                    None => fs.root_dir().open_file(&name).map_err(|e| match e.kind() {
                        std::io::ErrorKind::Other => Error::NotAFile(show(path)),
                        _ => convert(e, path),
                    })?,
                };
                let pos = file.stream_position().map_err(|e| convert(e, path))?;
                if pos != offset {
                    file.seek(SeekFrom::Start(offset)).map_err(|e| convert(e, path))?;
                }
                let mut done = 0;
                while done < buf.len() {
                    let n = file.read(&mut buf[done..]).map_err(|e| convert(e, path))?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                files.put(key.clone(), file);
                Ok(done)
            })
        })
    }
}
