//! Reading the files inside disk images, read-only and in process: no loop device, no kernel
//! mount, no helper VM, and never the whole image.
//!
//! Everything reads through one positional trait, [`ReadAt`], and composes: the image file is a
//! `ReadAt` (the store's `FileReader` of a backed-up `disk0.qcow2`, or a [`FileReadAt`] in the
//! tests); [`open_disk`] turns it into the `ReadAt` of the virtual disk it holds (raw, qcow2 v2/v3,
//! VMDK); [`read_partitions`] cuts that into partition windows (MBR with logical partitions, GPT,
//! or one whole-disk volume); [`open_filesystem`] opens a window as a [`FileSystem`] (ext2/3/4,
//! NTFS, FAT12/16/32) with one uniform, path-based API: stat, list one directory, read a symlink,
//! read a byte range of a file. [`Image::open`] does all three steps at once.
//!
//! Invariants:
//! - Formats are detected by content, never by name. A format, feature or filesystem this module
//!   does not read is an [`Error::Unsupported`] naming it; a damaged structure is an
//!   [`Error::Corrupt`] naming what is wrong; neither is ever a panic or wrong bytes. Third-party
//!   parsers run under `catch_unwind`, so a panic in one becomes an error for that call only.
//! - Reads are lazy: opening an image reads its header and tables (a qcow2 L1 table, a VMDK grain
//!   directory, a partition table, a superblock); listing a directory reads that directory's
//!   blocks and its entries' inodes or records; reading a file reads its mapping and the bytes
//!   asked for. Unallocated and sparse regions read as zeros without touching the image.
//! - Decoded metadata is cached in bounded caches: qcow2 L2 tables and compressed clusters, VMDK
//!   grain tables and compressed grains, ext4 blocks (the `ext4-view` crate's cache), and 64 KiB
//!   blocks of small metadata reads for NTFS and FAT. Large data reads bypass these caches and go
//!   straight to the reader below (the store's chunk cache).
//! - Everything public is `Send + Sync`; see [`FileSystem`] for what runs in parallel.
//! - A backing file (qcow2) or an extent file (VMDK descriptor, ESX `name-flat.vmdk`) is found
//!   through a [`Resolver`] the caller gives: it lives in the same snapshot, and only the caller
//!   knows where the image file is.
//!
//! What the filesystem crates expose, and so what a [`Stat`] carries:
//! - ext2/3/4 (`ext4-view`): names as bytes, kind, size, mode, uid, gid, atime, mtime, ctime,
//!   crtime, inode numbers of regular files (hard links share one), symlink targets, holes.
//!   Not exposed by the crate: link counts, extended attributes (and so POSIX ACLs), inode
//!   numbers of directories and symlinks.
//! - NTFS (`ntfs`): names (UTF-16, shown as UTF-8), kind, size, the four NTFS times, file
//!   attribute bits, record numbers (hard links share one), link counts, sparse files, the
//!   `owner_id` and `security_id` of `$STANDARD_INFORMATION`, and each entry's security
//!   descriptor (owner, group, ACLs) as Windows stores it, through
//!   [`FileSystem::security_descriptor`] (the crate reads attributes; the `$Secure:$SDS` lookup
//!   by security id is ours), with [`owner_sid`] to read its owner. Not exposed: reparse points
//!   (symlinks and junctions show as [`Kind::Other`]), alternate data streams, extended
//!   attributes. Compressed and encrypted files are an [`Error::Unsupported`] when read, never
//!   their raw stored bytes.
//! - FAT12/16/32 (`fatfs`): long names, kind, size, mtime (2 s resolution), creation time, access
//!   date, attribute bits. FAT stores wall-clock times without a zone; they are reported as if
//!   UTC. The volume is opened through an adapter whose writes fail, and `fatfs` is told never to
//!   update access dates, so nothing is ever written.
//! - exFAT: not supported yet; the volume is named in an [`Error::Unsupported`]. Of the two
//!   crates, `exfat` 0.1.0 owns a `Read + Seek` image; `exfat-fs` 0.1.3 reads through a positional
//!   trait and could serve, but loads the whole FAT when it opens and reports a file's valid data
//!   length as its size, and testing it needs `exfatprogs` and `exfat-fuse` to build images.
//!
//! How the view is meant to use it (issue 18, second half): next to an image file
//! `disk0.vmdk` the namespace shows `disk0.vmdk.d/`, holding one folder per volume, `p1`, `p5`,
//! ... (Linux partition numbers), or the filesystem's root itself when the disk has no partition
//! table; a volume that cannot be read shows as a file `pN.error` holding the one-line error. The
//! view opens each image once (`Image::open` on the store's `FileReader` of the image, with a
//! resolver that looks names up in the image's directory of the same snapshot), keeps the
//! `Image` in a bounded cache keyed by the image's content, and maps `list`/`stat`/`read_at` of
//! `disk0.vmdk.d/p1/rest` to the volume's [`FileSystem`] with path `rest`.

mod detect;
mod fs;
mod io;
mod partition;
mod qcow2;
mod vmdk;

use std::sync::Arc;

pub use detect::{Format, HEAD_LEN, looks_like_image, open_disk};
pub use fs::{DirEntry, FileSystem, FsKind, Kind, Stat, Time, open_filesystem, owner_sid};
pub use io::{FileReadAt, Slice};
pub use partition::{Partition, PartitionTable, read_partitions};

/// Positional reads of an immutable byte sequence: an image file, a virtual disk, a partition.
pub trait ReadAt: Send + Sync {
    /// The length in bytes.
    fn size(&self) -> u64;

    /// Fill `buf` from `offset`; returns the bytes read, fewer than asked only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= self.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Finds a file that an image refers to (a qcow2 backing file, a VMDK extent) by the name
/// written in the image, as bytes: usually a name relative to the image's directory, sometimes an
/// absolute path of the machine that wrote it. `None` when there is no such file.
pub type Resolver<'a> = dyn Fn(&[u8]) -> Option<Arc<dyn ReadAt>> + 'a;

/// A resolver that finds nothing, for images known to stand alone.
pub fn no_resolver(_name: &[u8]) -> Option<Arc<dyn ReadAt>> {
    None
}

/// Errors of image reading. Each names what is wrong in one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The reader below failed (for a backed-up image: a damaged or missing chunk).
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),

    /// A format, feature or filesystem this module does not read, named.
    #[error("unsupported {0}")]
    Unsupported(String),

    /// A damaged structure: a header, table, superblock or record that does not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },

    /// A file the image refers to (backing file, extent) that the resolver did not find.
    #[error("the image refers to {0:?}, which is missing")]
    Missing(String),

    /// No entry at that path inside the filesystem.
    #[error("{0} not found")]
    NotFound(String),

    /// A path component that is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(String),

    /// A read or readlink of something that is not a regular file or a symlink.
    #[error("{0} is not a regular file")]
    NotAFile(String),
}

/// The image module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn corrupt(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Corrupt { what: what.into(), detail: detail.to_string() }
    }

    /// The errno a filesystem should report this error as.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::NotADirectory(_) => libc::ENOTDIR,
            Error::NotAFile(_) => libc::EINVAL,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }

    /// Whether the error means the data read is damaged (as opposed to missing or unsupported).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// One volume of an image: a partition, or the whole disk when it has no partition table.
pub struct Volume {
    /// The partition as the table describes it.
    pub partition: Partition,
    /// Its filesystem, or why it cannot be read (unsupported, damaged, outside the disk).
    pub filesystem: Result<Arc<dyn FileSystem>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fs = self.filesystem.as_ref().map(|fs| fs.kind());
        f.debug_struct("Volume").field("partition", &self.partition).field("filesystem", &fs).finish()
    }
}

/// A disk image opened all the way down: its format, its partition table and every volume's
/// filesystem (or the error that keeps it closed). Opening reads headers, tables and
/// superblocks only.
pub struct Image {
    /// The image's container format.
    pub format: Format,
    /// The virtual disk's bytes.
    pub disk: Arc<dyn ReadAt>,
    /// The partition table found on the disk.
    pub table: PartitionTable,
    /// The volumes, in table order (a disk without a table has one).
    pub volumes: Vec<Volume>,
}

impl Image {
    /// Open an image file. An error here means nothing inside can be read (unsupported or damaged
    /// container, missing backing file, damaged partition table); a volume that cannot be read
    /// is reported in its [`Volume::filesystem`] instead.
    pub fn open(file: Arc<dyn ReadAt>, resolve: &Resolver<'_>) -> Result<Image> {
        let (format, disk) = open_disk(file, resolve)?;
        let (table, partitions) = read_partitions(&disk)?;
        let volumes = partitions
            .into_iter()
            .map(|partition| {
                let filesystem = partition.reader(&disk).and_then(open_filesystem);
                Volume { partition, filesystem }
            })
            .collect();
        Ok(Image { format, disk, table, volumes })
    }
}

/// Run a third-party parser, turning a panic into an error instead of taking the caller down.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(Error::corrupt(what, "the parser failed on malformed data")),
    }
}
