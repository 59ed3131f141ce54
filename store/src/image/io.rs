//! Adapters around [`ReadAt`]: a file, a window, a bounded block cache for small metadata reads,
//! and a `Read + Seek` cursor (with writes that always fail) for crates that want streams.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::{Error, ReadAt, Result};

/// A local file as a [`ReadAt`] (its length is taken once, at open: images do not change).
pub struct FileReadAt {
    file: std::fs::File,
    size: u64,
}

impl FileReadAt {
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileReadAt { file, size })
    }
}

impl ReadAt for FileReadAt {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.size - offset).unwrap_or(usize::MAX));
        let mut done = 0;
        while done < want {
            match self.file.read_at(&mut buf[done..want], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// A window of another reader: a partition of a disk.
pub struct Slice {
    inner: Arc<dyn ReadAt>,
    start: u64,
    len: u64,
}

impl Slice {
    /// The window `start..start + len`, which must lie inside `inner`.
    pub fn new(inner: Arc<dyn ReadAt>, start: u64, len: u64) -> Result<Self> {
        match start.checked_add(len) {
            Some(end) if end <= inner.size() => Ok(Slice { inner, start, len }),
            _ => Err(Error::corrupt(
                "partition",
                format!("bytes {start}+{len} lie beyond the end of the disk ({} bytes)", inner.size()),
            )),
        }
    }
}

impl ReadAt for Slice {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(self.len - offset).unwrap_or(usize::MAX));
        self.inner.read_at(self.start + offset, &mut buf[..n])
    }
}

/// Fill all of `buf` from `offset`, or fail: past the end is a corrupt (truncated) structure.
pub(crate) fn read_exact_at(r: &dyn ReadAt, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = r.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(Error::corrupt(
                what,
                format!("{} bytes at offset {offset} lie beyond the end ({} bytes)", buf.len(), r.size()),
            ));
        }
        done += n;
    }
    Ok(())
}

/// Where one unit (cluster, grain) of a mapped image's disk is.
pub(crate) enum Piece {
    /// Zeros: unallocated without a backing file, or a zero cluster.
    Zeros,
    /// At this offset of the image file, uncompressed.
    Host(u64),
    /// Decompressed bytes of the whole unit.
    Decoded(Arc<Vec<u8>>),
    /// The same offset of the disk below (a backing file).
    Below(Arc<dyn ReadAt>),
}

/// Fill `buf` from `offset` of a disk of `size` bytes made of `unit`-byte units, each placed by
/// `place`. Units that follow each other in the file are read at once.
pub(crate) fn read_mapped(
    file: &dyn ReadAt,
    size: u64,
    unit: u64,
    what: &str,
    offset: u64,
    buf: &mut [u8],
    place: impl Fn(u64) -> Result<Piece>,
) -> Result<usize> {
    if offset >= size {
        return Ok(0);
    }
    let n = buf.len().min(usize::try_from(size - offset).unwrap_or(usize::MAX));
    let mut done = 0;
    while done < n {
        let pos = offset + done as u64;
        let (index, within) = (pos / unit, pos % unit);
        let mut len = ((unit - within) as usize).min(n - done);
        match place(index)? {
            Piece::Zeros => buf[done..done + len].fill(0),
            Piece::Below(below) => {
                let got = below.read_at(pos, &mut buf[done..done + len])?;
                // A backing file smaller than the image reads as zeros past its end.
                buf[done + got..done + len].fill(0);
            }
            Piece::Host(host) => {
                let mut next = index + 1;
                while done + len < n && matches!(place(next)?, Piece::Host(h) if h == host + (next - index) * unit) {
                    len = (len + unit as usize).min(n - done);
                    next += 1;
                }
                read_exact_at(file, host + within, &mut buf[done..done + len], what)?;
            }
            Piece::Decoded(data) => {
                let part = data.get(within as usize..within as usize + len).ok_or_else(|| {
                    Error::corrupt(what, format!("a unit decodes to {} bytes, not {unit}", data.len()))
                })?;
                buf[done..done + len].copy_from_slice(part);
            }
        }
        done += len;
    }
    Ok(n)
}

/// Size of a [`BlockCache`] block.
const BLOCK: usize = 64 << 10;

/// Small reads (metadata: boot sectors, FAT entries, MFT records, index blocks) served from a
/// bounded LRU of 64 KiB blocks; reads of a block or more pass straight through, so file data
/// does not evict metadata and is not copied twice.
pub(crate) struct BlockCache {
    inner: Arc<dyn ReadAt>,
    blocks: Mutex<LruCache<u64, Arc<Vec<u8>>>>,
}

impl BlockCache {
    pub(crate) fn new(inner: Arc<dyn ReadAt>, blocks: usize) -> Self {
        let cap = NonZeroUsize::new(blocks.max(1)).expect("at least one block");
        BlockCache { inner, blocks: Mutex::new(LruCache::new(cap)) }
    }

    fn block(&self, index: u64) -> io::Result<Arc<Vec<u8>>> {
        if let Some(b) = self.blocks.lock().unwrap_or_else(|e| e.into_inner()).get(&index) {
            return Ok(b.clone());
        }
        // Loaded off-lock: two threads may load one block at once, which costs a read, not
        // correctness.
        let mut data = vec![0; BLOCK];
        let mut done = 0;
        while done < BLOCK {
            let n = self.inner.read_at(index * BLOCK as u64 + done as u64, &mut data[done..])?;
            if n == 0 {
                break;
            }
            done += n;
        }
        data.truncate(done);
        let data = Arc::new(data);
        self.blocks.lock().unwrap_or_else(|e| e.into_inner()).put(index, data.clone());
        Ok(data)
    }
}

impl ReadAt for BlockCache {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if buf.len() >= BLOCK {
            return self.inner.read_at(offset, buf);
        }
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let block = self.block(pos / BLOCK as u64)?;
            let start = (pos % BLOCK as u64) as usize;
            if start >= block.len() {
                break;
            }
            let n = (block.len() - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block[start..start + n]);
            done += n;
        }
        Ok(done)
    }
}

/// A `Read + Seek` stream over a [`ReadAt`], for crates that want one. It also implements
/// `Write` for crates that insist on a writable device (`gpt`, `fatfs`); every write fails, so
/// nothing is ever written through it.
#[derive(Clone)]
pub(crate) struct Cursor {
    inner: Arc<dyn ReadAt>,
    pos: u64,
}

impl Cursor {
    pub(crate) fn new(inner: Arc<dyn ReadAt>) -> Self {
        Cursor { inner, pos: 0 }
    }
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor").field("size", &self.inner.size()).field("pos", &self.pos).finish()
    }
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.inner.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

impl Write for Cursor {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "disk images are read-only"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_cache_reads_what_the_reader_holds() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let cache = BlockCache::new(Arc::new(data.clone()), 2);
        for (off, len) in [(0u64, 10usize), (65_530, 20), (131_000, 70_000), (299_990, 100), (400_000, 5)] {
            let mut buf = vec![0; len];
            let n = cache.read_at(off, &mut buf).unwrap();
            let end = (off as usize + len).min(data.len());
            let want = data.get(off as usize..end).unwrap_or(&[]);
            assert_eq!(&buf[..n], want, "{off}+{len}");
        }
    }

    #[test]
    fn cursor_writes_fail() {
        let mut c = Cursor::new(Arc::new(vec![1u8; 10]));
        assert!(c.write(b"x").is_err());
        c.seek(SeekFrom::End(-2)).unwrap();
        let mut b = [0; 4];
        assert_eq!(c.read(&mut b).unwrap(), 2);
    }
}
