//! NTFS through the `ntfs` crate. Its filesystem object holds no reader (every call takes one),
//! so calls run in parallel, each with its own [`Cursor`] over a shared [`BlockCache`]; resolved
//! paths are cached (path -> MFT record number) in a bounded map.
//!
//! Names are looked up as NTFS does, case-insensitively through the volume's `$UpCase` table.
//! DOS 8.3 aliases are not listed; neither are the metadata files in the root (`$MFT`, `$Bitmap`,
//! ... records 0-23).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;
use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileName, NtfsFileNamespace};
use ntfs::{NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek, NtfsTime};

use super::{DirEntry, FileSystem, FsKind, Kind, Stat, Time, components, show};
use crate::image::io::{BlockCache, Cursor};
use crate::image::{Error, ReadAt, Result, guarded};

const ROOT: u64 = 5;
/// Records 0-23 are the filesystem's own (`$MFT` ... `$Extend`, and reserved ones).
const FIRST_USER_RECORD: u64 = 24;
const CACHE_BLOCKS: usize = 256;
const PATH_CACHE: usize = 4096;
const REPARSE_POINT: u32 = 0x400;
/// `$Secure`, whose `$SDS` stream holds the descriptors files refer to by security id.
const SECURE: u64 = 9;
/// `$SDS` is written in 256 KiB blocks, each followed by a mirror copy of itself.
const SDS_BLOCK: u64 = 256 << 10;
/// Larger descriptors or `$SDS` streams than these are taken for damage.
const MAX_DESCRIPTOR: u64 = 64 << 10;
const MAX_SDS: u64 = 256 << 20;

/// An NTFS filesystem.
pub(crate) struct Ntfs {
    volume: Arc<dyn ReadAt>,
    ntfs: ntfs::Ntfs,
    records: Mutex<LruCache<Vec<u8>, u64>>,
    /// Security id -> (offset, length) of its descriptor in `$SDS`, read on first use.
    sds: OnceLock<Result<SdsIndex, String>>,
}

/// Security id -> (offset, length) of a descriptor in `$SDS`.
type SdsIndex = HashMap<u32, (u64, u64)>;

/// Read `buf.len()` bytes at `pos` of an attribute value, or fail.
fn value_at(
    value: &mut ntfs::attribute_value::NtfsAttributeValue<'_, '_>,
    c: &mut Cursor,
    pos: u64,
    buf: &mut [u8],
) -> std::result::Result<(), NtfsError> {
    value.seek(c, std::io::SeekFrom::Start(pos))?;
    value.read_exact(c, buf)
}

fn convert(e: NtfsError, path: &[u8]) -> Error {
    match e {
        NtfsError::Io(io) => match io.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
            // An error of ours (a corrupt qcow2 cluster below) that crossed the crate as io::Error.
            Some(_) => match io.into_inner().map(|b| b.downcast::<Error>()) {
                Some(Ok(e)) => *e,
                _ => Error::corrupt("NTFS filesystem", show(path)),
            },
            None => Error::Io(io),
        },
        NtfsError::NotADirectory { .. } => Error::NotADirectory(show(path)),
        other => Error::corrupt("NTFS filesystem", format!("{}: {other}", show(path))),
    }
}

fn time(t: NtfsTime) -> Time {
    // 100 ns ticks since 1601-01-01.
    const EPOCH_DIFF: i64 = 11_644_473_600;
    let ticks = t.nt_timestamp();
    Time { secs: (ticks / 10_000_000) as i64 - EPOCH_DIFF, nanos: (ticks % 10_000_000) as u32 * 100 }
}

impl Ntfs {
    pub(crate) fn open(volume: Arc<dyn ReadAt>) -> Result<Ntfs> {
        let volume: Arc<dyn ReadAt> = Arc::new(BlockCache::new(volume, CACHE_BLOCKS));
        let ntfs = guarded("NTFS filesystem", || {
            let mut c = Cursor::new(volume.clone());
            let mut ntfs = ntfs::Ntfs::new(&mut c).map_err(|e| convert(e, b"/"))?;
            ntfs.read_upcase_table(&mut c).map_err(|e| convert(e, b"/"))?;
            Ok(ntfs)
        })?;
        let records = Mutex::new(LruCache::new(NonZeroUsize::new(PATH_CACHE).expect("nonzero")));
        Ok(Ntfs { volume, ntfs, records, sds: OnceLock::new() })
    }

    fn cursor(&self) -> Cursor {
        Cursor::new(self.volume.clone())
    }

    /// The MFT record number of the entry at `path`.
    fn record(&self, c: &mut Cursor, path: &[u8]) -> Result<u64> {
        let parts = components(path)?;
        let key = parts.join(&b'/');
        if let Some(&r) = self.records.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(r);
        }
        let mut record = ROOT;
        for (i, part) in parts.iter().enumerate() {
            let here = &parts[..=i].join(&b'/');
            let name = std::str::from_utf8(part).map_err(|_| Error::NotFound(show(path)))?;
            let dir = self.ntfs.file(c, record).map_err(|e| convert(e, here))?;
            if !dir.is_directory() {
                return Err(Error::NotADirectory(show(&parts[..i].join(&b'/'))));
            }
            let index = dir.directory_index(c).map_err(|e| convert(e, here))?;
            let mut finder = index.finder();
            let entry = NtfsFileNameIndex::find(&mut finder, &self.ntfs, c, name)
                .ok_or_else(|| Error::NotFound(show(path)))?
                .map_err(|e| convert(e, here))?;
            record = entry.file_reference().file_record_number();
            if record == ROOT || (i == 0 && record < FIRST_USER_RECORD) {
                return Err(Error::NotFound(show(path)));
            }
        }
        self.records.lock().unwrap_or_else(|e| e.into_inner()).put(key, record);
        Ok(record)
    }

    /// Scan `$SDS` once: its entries (hash, id, offset, length, descriptor) follow each other
    /// at 16-byte alignment inside each 256 KiB block; every other block is a mirror.
    fn sds_index(&self) -> Result<&SdsIndex> {
        let index = self.sds.get_or_init(|| {
            let mut c = self.cursor();
            let secure = self.ntfs.file(&mut c, SECURE).map_err(|e| e.to_string())?;
            let Some(item) = secure.data(&mut c, "$SDS") else { return Ok(HashMap::new()) };
            let attribute = item.map_err(|e| e.to_string())?;
            let attribute = attribute.to_attribute().map_err(|e| e.to_string())?;
            let mut value = attribute.value(&mut c).map_err(|e| e.to_string())?;
            let len = value.len();
            if len > MAX_SDS {
                return Err(format!("a $SDS stream of {len} bytes"));
            }
            let mut index = HashMap::new();
            let mut pos = 0u64;
            while pos + 20 <= len {
                if (pos / SDS_BLOCK) % 2 == 1 {
                    pos = (pos / SDS_BLOCK + 1) * SDS_BLOCK;
                    continue;
                }
                let mut h = [0u8; 20];
                value_at(&mut value, &mut c, pos, &mut h).map_err(|e| e.to_string())?;
                let id = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
                let offset = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
                let size = u64::from(u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")));
                let block_end = (pos / SDS_BLOCK + 1) * SDS_BLOCK;
                if id == 0 || offset != pos || size < 20 || pos + size > block_end.min(len) {
                    // The rest of this block is unused.
                    pos = block_end;
                    continue;
                }
                index.entry(id).or_insert((pos + 20, size - 20));
                pos += size.div_ceil(16) * 16;
            }
            Ok(index)
        });
        index.as_ref().map_err(|e| Error::corrupt("NTFS $Secure", e))
    }

    fn descriptor(&self, c: &mut Cursor, file: &NtfsFile<'_>, path: &[u8]) -> Result<Option<Vec<u8>>> {
        // A descriptor of its own (NTFS 1.x style, which mkntfs and ntfs-3g also write)...
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(c) {
            let item = item.map_err(|e| convert(e, path))?;
            let a = item.to_attribute().map_err(|e| convert(e, path))?;
            if a.ty().map_err(|e| convert(e, path))? == NtfsAttributeType::SecurityDescriptor {
                let mut value = a.value(c).map_err(|e| convert(e, path))?;
                if value.len() > MAX_DESCRIPTOR {
                    return Err(Error::corrupt(
                        "NTFS filesystem",
                        format!("{}: a huge security descriptor", show(path)),
                    ));
                }
                let mut sd = vec![0u8; value.len() as usize];
                value_at(&mut value, c, 0, &mut sd).map_err(|e| convert(e, path))?;
                return Ok(Some(sd));
            }
        }
        // ... or the shared one its security id names in $Secure (NTFS 3.x, as Windows writes).
        let Some(id) = file.info().map_err(|e| convert(e, path))?.security_id() else { return Ok(None) };
        let Some(&(offset, len)) = self.sds_index()?.get(&id) else {
            return Err(Error::corrupt("NTFS $Secure", format!("{}: no descriptor with id {id}", show(path))));
        };
        if len > MAX_DESCRIPTOR {
            return Err(Error::corrupt("NTFS $Secure", format!("descriptor {id} of {len} bytes")));
        }
        let secure = self.ntfs.file(c, SECURE).map_err(|e| convert(e, path))?;
        let item = secure.data(c, "$SDS").ok_or_else(|| Error::corrupt("NTFS $Secure", "no $SDS"))?;
        let item = item.map_err(|e| convert(e, path))?;
        let attribute = item.to_attribute().map_err(|e| convert(e, path))?;
        let mut value = attribute.value(c).map_err(|e| convert(e, path))?;
        let mut sd = vec![0u8; len as usize];
        value_at(&mut value, c, offset, &mut sd).map_err(|e| convert(e, path))?;
        Ok(Some(sd))
    }

    fn stat_file(&self, c: &mut Cursor, file: &NtfsFile<'_>, path: &[u8]) -> Result<Stat> {
        let info = file.info().map_err(|e| convert(e, path))?;
        let attributes = info.file_attributes().bits();
        let kind = if attributes & REPARSE_POINT != 0 {
            Kind::Other
        } else if file.is_directory() {
            Kind::Dir
        } else {
            Kind::File
        };
        let mut size = 0;
        let mut names = 0;
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(c) {
            let item = item.map_err(|e| convert(e, path))?;
            let a = item.to_attribute().map_err(|e| convert(e, path))?;
            match a.ty().map_err(|e| convert(e, path))? {
                NtfsAttributeType::FileName => {
                    let n: NtfsFileName = a.structured_value(c).map_err(|e| convert(e, path))?;
                    if n.namespace() != NtfsFileNamespace::Dos {
                        names += 1;
                    }
                }
                NtfsAttributeType::Data if kind == Kind::File && a.name().map_err(|e| convert(e, path))?.is_empty() => {
                    size = a.value_length();
                }
                _ => {}
            }
        }
        let mut st = Stat::new(kind, size);
        st.ino = Some(file.file_record_number());
        st.nlink = Some(names.max(1));
        st.mtime = Some(time(info.modification_time()));
        st.atime = Some(time(info.access_time()));
        st.ctime = Some(time(info.mft_record_modification_time()));
        st.btime = Some(time(info.creation_time()));
        st.attributes = Some(attributes);
        st.security_id = info.security_id();
        st.owner_id = info.owner_id();
        Ok(st)
    }
}

impl FileSystem for Ntfs {
    fn kind(&self) -> FsKind {
        FsKind::Ntfs
    }

    fn stat(&self, path: &[u8]) -> Result<Stat> {
        guarded("NTFS filesystem", || {
            let mut c = self.cursor();
            let record = self.record(&mut c, path)?;
            let file = self.ntfs.file(&mut c, record).map_err(|e| convert(e, path))?;
            self.stat_file(&mut c, &file, path)
        })
    }

    fn list(&self, path: &[u8]) -> Result<Vec<DirEntry>> {
        guarded("NTFS filesystem", || {
            let mut c = self.cursor();
            let record = self.record(&mut c, path)?;
            let dir = self.ntfs.file(&mut c, record).map_err(|e| convert(e, path))?;
            if !dir.is_directory() {
                return Err(Error::NotADirectory(show(path)));
            }
            let index = dir.directory_index(&mut c).map_err(|e| convert(e, path))?;
            let mut entries = index.entries();
            let mut found = Vec::new();
            while let Some(entry) = entries.next(&mut c) {
                let entry = entry.map_err(|e| convert(e, path))?;
                let Some(key) = entry.key() else { continue };
                let key = key.map_err(|e| convert(e, path))?;
                if key.namespace() == NtfsFileNamespace::Dos {
                    continue;
                }
                let child = entry.file_reference().file_record_number();
                if child == record || (record == ROOT && child < FIRST_USER_RECORD) {
                    continue;
                }
                found.push((key.name().to_string_lossy(), child));
            }
            let mut out = Vec::with_capacity(found.len());
            for (name, child) in found {
                let mut child_path = path.to_vec();
                child_path.push(b'/');
                child_path.extend_from_slice(name.as_bytes());
                let file = self.ntfs.file(&mut c, child).map_err(|e| convert(e, &child_path))?;
                let stat = self.stat_file(&mut c, &file, &child_path)?;
                out.push(DirEntry { name: name.into_bytes(), stat });
            }
            Ok(out)
        })
    }

    fn security_descriptor(&self, path: &[u8]) -> Result<Option<Vec<u8>>> {
        guarded("NTFS filesystem", || {
            let mut c = self.cursor();
            let record = self.record(&mut c, path)?;
            let file = self.ntfs.file(&mut c, record).map_err(|e| convert(e, path))?;
            self.descriptor(&mut c, &file, path)
        })
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        let st = self.stat(path)?;
        if st.kind == Kind::Other {
            return Err(Error::Unsupported(format!("NTFS reparse point (symlink or junction) {}", show(path))));
        }
        Err(Error::NotAFile(show(path)))
    }

    fn read_at(&self, path: &[u8], offset: u64, buf: &mut [u8]) -> Result<usize> {
        guarded("NTFS filesystem", || {
            let mut c = self.cursor();
            let record = self.record(&mut c, path)?;
            let file = self.ntfs.file(&mut c, record).map_err(|e| convert(e, path))?;
            if file.is_directory() {
                return Err(Error::NotAFile(show(path)));
            }
            let item =
                file.data(&mut c, "").ok_or_else(|| Error::NotAFile(show(path)))?.map_err(|e| convert(e, path))?;
            let attribute = item.to_attribute().map_err(|e| convert(e, path))?;
            let flags = attribute.flags();
            if flags.contains(NtfsAttributeFlags::COMPRESSED) {
                return Err(Error::Unsupported(format!("NTFS compressed file {}", show(path))));
            }
            if flags.contains(NtfsAttributeFlags::ENCRYPTED) {
                return Err(Error::Unsupported(format!("NTFS encrypted file {}", show(path))));
            }
            let mut value = attribute.value(&mut c).map_err(|e| convert(e, path))?;
            if offset >= value.len() {
                return Ok(0);
            }
            value.seek(&mut c, std::io::SeekFrom::Start(offset)).map_err(|e| convert(e, path))?;
            let mut done = 0;
            while done < buf.len() {
                let n = value.read(&mut c, &mut buf[done..]).map_err(|e| convert(e, path))?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            Ok(done)
        })
    }
}
