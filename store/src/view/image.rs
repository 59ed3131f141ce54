//! Disk images in the view: next to a regular file that holds a disk image, `<name>.d/` shows
//! what is inside it, read through [`crate::image`] from the image file's chunks.
//!
//! ```text
//! disk0.qcow2                 the image file, as backed up
//! disk0.qcow2.d/p1/etc/...    partition 1's filesystem (Linux numbering: p5 is the first logical)
//! disk0.qcow2.d/p2.error      a volume that cannot be read: one line saying why
//! disk.img.d/etc/...          a disk with no partition table: the filesystem's root itself
//! disk.img.d/volume.error     ... or why it cannot be read
//! bad.vmdk.d/image.error      an image that cannot be opened at all (container, partition table)
//! ```
//!
//! Invariants:
//! - Detection is by content, cheap and lazy: only regular files that could be images are looked
//!   at (at least [`MIN_IMAGE`] bytes and a whole number of sectors, or named like an image),
//!   and only their first [`HEAD_LEN`] bytes, when their directory is listed or the `.d` name is
//!   looked up; the verdict is cached by content. A real entry named `<name>.d` wins.
//! - Each image is opened once (headers, tables, superblocks) and kept in a bounded cache keyed
//!   by its content, and by its directory's tree as well when it refers to other files (a qcow2
//!   backing file, VMDK extents), which are looked up in that directory of the same snapshot.
//! - A file inside an image reads through a [`FileReader`] whose chunks are 1 MiB blocks of the
//!   file, loaded once by concurrent readers and kept in a bounded cache; the image's own bytes
//!   come from the store's chunk cache. The mount and the portal read ahead as for any file.
//! - Damage stays local: a block of the image that cannot be read fails the reads that need it
//!   (EIO, HTTP 5xx), never anything else; a volume or image that does not open is an `.error`
//!   file naming what is wrong.
//! - Owners and modes: the `.d` folder and the volume folders are the image file's owner, with
//!   its read bits (and search bits where it is readable), so whoever may read the image may look
//!   inside it, and nobody else. Inside, ext's own modes and numeric owners are shown; FAT and
//!   NTFS, which have none, show the image file's owner with read-only modes. Devices, fifos,
//!   sockets and NTFS reparse points (which the filesystem readers report as "other") are not
//!   shown.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Attr, Entry, View};
use crate::cache::ByteLru;
use crate::error::{Error, Result};
use crate::flight::SingleFlight;
use crate::format::{ChunkId, Hash, Node, NodeKind, SnapshotId, Time, TreeId};
use crate::image::{self, FileSystem, HEAD_LEN, Image, Kind, PartitionTable, ReadAt, Stat};
use crate::repo::{Blocks, ChunkSpan, FileReader, IndexedRepository};

/// Smallest file looked at as a possible image, unless named like one (a VMDK descriptor is a
/// few hundred bytes).
pub(super) const MIN_IMAGE: u64 = 64 * 1024;
/// Names that make a smaller file, or one that is not a whole number of sectors, worth a look.
const IMAGE_NAMES: [&str; 6] = [".vmdk", ".qcow2", ".qcow", ".img", ".raw", ".vhd"];
/// The suffix of the folder that shows an image's contents.
pub const SUFFIX: &[u8] = b".d";
/// Block size of files read inside images.
const BLOCK: u32 = 1 << 20;
/// Bytes of blocks of files inside images kept in memory.
const BLOCK_CACHE: usize = 64 << 20;
/// Images kept open.
const OPEN_IMAGES: usize = 64;
/// Detection verdicts kept.
const VERDICTS: usize = 1 << 16;

/// A place inside a disk image (an [`Entry::Image`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageEntry {
    snapshot: SnapshotId,
    /// The tree of the directory holding the image file, where the files it refers to are.
    dir: TreeId,
    /// The image file.
    image: Arc<Node>,
    /// The key of the image file's content.
    key: Hash,
    /// The entry's own name, for messages.
    name: Vec<u8>,
    at: Inside,
}

#[derive(Clone, Debug, PartialEq)]
enum Inside {
    /// `<image>.d` itself.
    Top,
    /// An `.error` file and its one line.
    Error(Arc<str>),
    /// An entry of volume `volume`'s filesystem; `stat` is `None` for the volume's root.
    Fs { volume: usize, path: Vec<u8>, stat: Option<Box<Stat>> },
}

impl ImageEntry {
    /// The snapshot the image file is in.
    pub fn snapshot(&self) -> SnapshotId {
        self.snapshot
    }

    /// The image file's node.
    pub fn image(&self) -> &Arc<Node> {
        &self.image
    }

    /// The entry's name in its directory.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// What kind of entry this is, without reading anything.
    pub fn kind(&self) -> NodeKind {
        match &self.at {
            Inside::Top => NodeKind::Dir,
            Inside::Error(_) => NodeKind::File,
            Inside::Fs { stat: None, .. } => NodeKind::Dir,
            Inside::Fs { stat: Some(s), .. } => node_kind(s.kind).unwrap_or(NodeKind::File),
        }
    }

    /// The path inside the image, from the `.d` folder (`p1/etc/passwd`, `p2.error`).
    pub fn inner_path(&self) -> Vec<u8> {
        match &self.at {
            Inside::Top => Vec::new(),
            Inside::Error(_) => self.name.clone(),
            Inside::Fs { path, .. } => path.clone(),
        }
    }

    fn child(&self, name: &[u8], at: Inside) -> Entry {
        Entry::Image(Arc::new(ImageEntry {
            snapshot: self.snapshot,
            dir: self.dir,
            image: self.image.clone(),
            key: self.key,
            name: name.to_vec(),
            at,
        }))
    }
}

/// An image as opened once: its key and what `Image::open` gave.
struct Opened {
    key: Hash,
    /// Opening it read other files of its folder (a backing file, extents).
    referred: bool,
    image: std::result::Result<Image, Arc<str>>,
}

/// An open image's key: its content, and the tree of its directory if it refers to other files.
type OpenKey = (Hash, Option<TreeId>);

/// The view's state for images: verdicts, open images, blocks of files read inside them.
pub(super) struct ImageCaches {
    verdicts: Mutex<lru::LruCache<Hash, bool>>,
    /// Whether an image (by content) stands alone: refers to no other file.
    alone: Mutex<lru::LruCache<Hash, bool>>,
    open: Mutex<lru::LruCache<OpenKey, Arc<Opened>>>,
    opening: SingleFlight<(Hash, TreeId), Arc<Opened>>,
    blocks: Arc<BlockCache>,
}

impl ImageCaches {
    /// How many files have been looked at (tests check that some were not).
    #[cfg(test)]
    pub(super) fn verdicts(&self) -> usize {
        self.verdicts.lock().len()
    }
}

impl Default for ImageCaches {
    fn default() -> Self {
        ImageCaches {
            verdicts: Mutex::new(lru::LruCache::new(NonZeroUsize::new(VERDICTS).expect("nonzero"))),
            alone: Mutex::new(lru::LruCache::new(NonZeroUsize::new(VERDICTS).expect("nonzero"))),
            open: Mutex::new(lru::LruCache::new(NonZeroUsize::new(OPEN_IMAGES).expect("nonzero"))),
            opening: SingleFlight::default(),
            blocks: Arc::new(BlockCache { cache: ByteLru::new(BLOCK_CACHE), loading: SingleFlight::default() }),
        }
    }
}

/// The key of a file's content: the BLAKE3 of its chunk ids.
fn content_key(node: &Node) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"rewind image");
    for c in &node.content {
        h.update(c.as_bytes());
    }
    Hash(*h.finalize().as_bytes())
}

/// Whether a node could hold an image, by what the tree says (no read).
fn candidate(node: &Node) -> bool {
    if node.kind != NodeKind::File || node.size < 512 {
        return false;
    }
    let named = IMAGE_NAMES.iter().any(|s| node.name.to_ascii_lowercase().ends_with(s.as_bytes()));
    named || (node.size >= MIN_IMAGE && node.size.is_multiple_of(512))
}

fn node_kind(k: Kind) -> Option<NodeKind> {
    match k {
        Kind::File => Some(NodeKind::File),
        Kind::Dir => Some(NodeKind::Dir),
        Kind::Symlink => Some(NodeKind::Symlink),
        Kind::Other => None,
    }
}

fn time(t: Option<image::Time>, or: Time) -> Time {
    t.map_or(or, |t| Time { sec: t.secs, nsec: t.nanos })
}

/// An image module error as the store's: missing is NotFound, "not a directory" is ENOTDIR,
/// everything else (damage, unsupported, unreadable) is an I/O error of the image (EIO).
fn store_error(image: &Node, e: image::Error) -> Error {
    let what = format!("disk image {}", image.name_lossy());
    match e {
        image::Error::NotFound(p) => Error::NotFound(p),
        image::Error::NotADirectory(p) => {
            Error::io(format!("{what}: {p}"), std::io::Error::from_raw_os_error(libc::ENOTDIR))
        }
        other => Error::corrupt(what, other.to_string()),
    }
}

/// The image file as the image module reads it: through the store's chunk cache.
impl ReadAt for FileReader {
    fn size(&self) -> u64 {
        FileReader::size(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        FileReader::read_at(self, offset, buf).map_err(std::io::Error::other)
    }
}

impl View {
    /// The `<name>.d` entry of a node in directory `dir`, if the node holds an image.
    pub(super) fn image_folder(&self, snapshot: SnapshotId, dir: TreeId, node: &Node) -> Option<Entry> {
        let key = self.detect(node)?;
        let mut name = node.name.clone();
        name.extend_from_slice(SUFFIX);
        Some(Entry::Image(Arc::new(ImageEntry {
            snapshot,
            dir,
            image: Arc::new(node.clone()),
            key,
            name,
            at: Inside::Top,
        })))
    }

    /// Whether a node holds a disk image, by its first bytes (cached by content): the key of its
    /// content if it does.
    fn detect(&self, node: &Node) -> Option<Hash> {
        if !candidate(node) {
            return None;
        }
        let key = content_key(node);
        if let Some(&v) = self.image_caches.verdicts.lock().get(&key) {
            return v.then_some(key);
        }
        let verdict = (|| -> Result<bool> {
            let r = self.repo.open_file(node)?;
            let mut head = vec![0u8; HEAD_LEN.min(r.size() as usize)];
            let n = r.read_at(0, &mut head)?;
            Ok(image::looks_like_image(&head[..n]))
        })();
        match verdict {
            Ok(v) => {
                self.image_caches.verdicts.lock().put(key, v);
                v.then_some(key)
            }
            Err(e) => {
                // Damage of the file shows when it is read; it is not taken for an image.
                tracing::debug!("{}: not checked for a disk image: {e}", node.name_lossy());
                None
            }
        }
    }

    /// The image an entry is in, opened once.
    fn opened(&self, e: &ImageEntry) -> Arc<Opened> {
        let key = e.key;
        {
            let mut open = self.image_caches.open.lock();
            if let Some(o) = open.get(&(key, None)) {
                return o.clone();
            }
            if let Some(o) = open.get(&(key, Some(e.dir))) {
                return o.clone();
            }
        }
        let r: std::result::Result<_, std::convert::Infallible> =
            self.image_caches.opening.run((key, e.dir), || Ok(self.open_image(key, e)));
        let Ok(opened) = r;
        opened
    }

    fn open_image(&self, key: Hash, e: &ImageEntry) -> Arc<Opened> {
        let referred = Cell::new(false);
        let resolve = |name: &[u8]| -> Option<Arc<dyn ReadAt>> {
            referred.set(true);
            let node = find_near(&self.repo, e.dir, name)?;
            Some(Arc::new(self.repo.open_file(&node).ok()?))
        };
        let image = match self.repo.open_file(&e.image) {
            Ok(file) => Image::open(Arc::new(file), &resolve).map_err(|err| err.to_string().into()),
            Err(err) => Err(err.to_string().into()),
        };
        if let Err(err) = &image {
            tracing::warn!("disk image {}: {err}", e.image.name_lossy());
        }
        let opened = Arc::new(Opened { key, referred: referred.get(), image });
        let dir = referred.get().then_some(e.dir);
        self.image_caches.open.lock().put((key, dir), opened.clone());
        opened
    }

    /// Whether the image of an image folder stands alone: it refers to no other file (no qcow2
    /// backing file, no VMDK extent file), decided from its own bytes, looking no name up and
    /// reading no other file. What an image that refers to other files shows is read from those
    /// files too, which whoever may see the image file need not be allowed to see: the portal
    /// opens such images for admins only. `false` for anything but an image folder.
    pub fn image_stands_alone(&self, e: &Entry) -> Result<bool> {
        let Entry::Image(i) = e else { return Ok(false) };
        self.stands_alone(i)
    }

    fn stands_alone(&self, i: &ImageEntry) -> Result<bool> {
        if let Some(&v) = self.image_caches.alone.lock().get(&i.key) {
            return Ok(v);
        }
        let referred = Cell::new(false);
        let refuse = |_: &[u8]| -> Option<Arc<dyn ReadAt>> {
            referred.set(true);
            None
        };
        let file = self.repo.open_file(&i.image)?;
        // An image that fails to open for another reason shows its own error, read from its
        // own bytes: it stands alone.
        let _ = Image::open(Arc::new(file), &refuse);
        let alone = !referred.get();
        self.image_caches.alone.lock().put(i.key, alone);
        Ok(alone)
    }

    /// What names the contents of the image an entry is in: the image file's content, and its
    /// folder's tree as well when the image refers to other files there. Equal identities show
    /// equal contents.
    pub fn image_identity(&self, e: &ImageEntry) -> Hash {
        let opened = self.opened(e);
        if !opened.referred {
            return e.key;
        }
        let mut h = blake3::Hasher::new();
        h.update(&e.key.0);
        h.update(&e.dir.0.0);
        Hash(*h.finalize().as_bytes())
    }

    /// What `<image>.d` holds: the volumes, or the root of the only one.
    fn top(&self, e: &ImageEntry) -> Result<Vec<(Vec<u8>, Entry)>> {
        let opened = self.opened(e);
        let image = match &opened.image {
            Ok(i) => i,
            Err(err) => return Ok(vec![error_entry(e, b"image.error", err)]),
        };
        if image.table == PartitionTable::None && image.volumes.len() == 1 {
            return match &image.volumes[0].filesystem {
                Ok(_) => self.fs_list(e, &opened, 0, b""),
                Err(err) => Ok(vec![error_entry(e, b"volume.error", &err.to_string())]),
            };
        }
        let mut out: Vec<(Vec<u8>, Entry)> = image
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let name = format!("p{}", v.partition.number);
                match &v.filesystem {
                    Ok(_) => {
                        let at = Inside::Fs { volume: i, path: name.clone().into_bytes(), stat: None };
                        (name.clone().into_bytes(), e.child(name.as_bytes(), at))
                    }
                    Err(err) => {
                        let n = format!("{name}.error");
                        error_entry(e, n.as_bytes(), &format!("{name} ({}): {err}", v.partition.type_name))
                    }
                }
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The filesystem of volume `volume` and the path in it of an entry's `path` (which starts
    /// with the volume's folder name when the disk has a partition table).
    fn volume_fs<'a>(
        &self,
        opened: &'a Opened,
        volume: usize,
        path: &'a [u8],
    ) -> Result<(&'a dyn FileSystem, &'a [u8])> {
        let image = opened.image.as_ref().map_err(|e| Error::corrupt("disk image", e.to_string()))?;
        let v = image.volumes.get(volume).ok_or_else(|| Error::NotFound(format!("volume {volume}")))?;
        let fs = v.filesystem.as_ref().map_err(|e| Error::corrupt("disk image volume", e.to_string()))?;
        let inner = if image.table == PartitionTable::None {
            path
        } else {
            let name = format!("p{}", v.partition.number);
            path.strip_prefix(name.as_bytes()).unwrap_or(path)
        };
        Ok((&**fs, inner))
    }

    fn fs_list(&self, e: &ImageEntry, opened: &Opened, volume: usize, path: &[u8]) -> Result<Vec<(Vec<u8>, Entry)>> {
        let (fs, inner) = self.volume_fs(opened, volume, path)?;
        let entries = fs.list(inner).map_err(|err| store_error(&e.image, err))?;
        let mut out: Vec<(Vec<u8>, Entry)> = entries
            .into_iter()
            .filter(|d| node_kind(d.stat.kind).is_some())
            .map(|d| {
                let at = Inside::Fs { volume, path: join(path, &d.name), stat: Some(Box::new(d.stat)) };
                let entry = e.child(&d.name, at);
                (d.name, entry)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The entries of a folder inside an image.
    pub(super) fn image_list(&self, e: &ImageEntry) -> Result<Vec<(Vec<u8>, Entry)>> {
        match &e.at {
            Inside::Top => self.top(e),
            Inside::Fs { volume, path, stat } if stat.as_ref().is_none_or(|s| s.kind == Kind::Dir) => {
                self.fs_list(e, &self.opened(e), *volume, path)
            }
            _ => Err(not_a_directory(e)),
        }
    }

    /// Look `name` up in a folder inside an image.
    pub(super) fn image_lookup(&self, e: &ImageEntry, name: &[u8]) -> Result<Entry> {
        let not_found = || Error::NotFound(String::from_utf8_lossy(name).into_owned());
        match &e.at {
            Inside::Top => {
                let whole_disk = self.opened(e).image.as_ref().is_ok_and(|i| {
                    i.table == PartitionTable::None && i.volumes.len() == 1 && i.volumes[0].filesystem.is_ok()
                });
                if whole_disk {
                    // The filesystem's root: a lookup there, not a listing of it.
                    let root = ImageEntry { at: Inside::Fs { volume: 0, path: Vec::new(), stat: None }, ..e.clone() };
                    return self.image_lookup(&root, name);
                }
                self.top(e)?.into_iter().find(|(n, _)| n == name).map(|(_, entry)| entry).ok_or_else(not_found)
            }
            Inside::Fs { volume, path, stat } if stat.as_ref().is_none_or(|s| s.kind == Kind::Dir) => {
                if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
                    return Err(not_found());
                }
                let opened = self.opened(e);
                let child = join(path, name);
                let (fs, inner) = self.volume_fs(&opened, *volume, &child)?;
                let stat = fs.stat(inner).map_err(|err| store_error(&e.image, err))?;
                if node_kind(stat.kind).is_none() {
                    return Err(not_found());
                }
                Ok(e.child(name, Inside::Fs { volume: *volume, path: child, stat: Some(Box::new(stat)) }))
            }
            _ => Err(not_a_directory(e)),
        }
    }

    /// Attributes of an entry inside an image.
    pub(super) fn image_attr(&self, e: &ImageEntry) -> Result<Attr> {
        let img = &e.image;
        let readable = img.mode & 0o444;
        let folder = Attr {
            kind: NodeKind::Dir,
            perm: readable | (readable >> 2),
            uid: img.uid,
            gid: img.gid,
            size: 0,
            mtime: img.mtime,
            ctime: img.ctime,
            nlink: 1,
            rdev: 0,
        };
        let stat = match &e.at {
            // An image that refers to other files (a backing file, extents) shows what those
            // hold, which whoever may read the image file need not be allowed to read: its
            // folder is root's alone (the mount with --allow-other lets no one else in).
            Inside::Top if !self.stands_alone(e)? => return Ok(Attr { perm: 0o500, uid: 0, gid: 0, ..folder }),
            Inside::Top => return Ok(folder),
            Inside::Error(text) => {
                return Ok(Attr { kind: NodeKind::File, perm: readable, size: text.len() as u64, ..folder });
            }
            Inside::Fs { stat: Some(s), .. } => s.as_ref().clone(),
            Inside::Fs { volume, path, stat: None } => {
                let opened = self.opened(e);
                let (fs, inner) = self.volume_fs(&opened, *volume, path)?;
                match fs.stat(inner) {
                    Ok(s) => s,
                    Err(_) => return Ok(folder),
                }
            }
        };
        let kind = node_kind(stat.kind).unwrap_or(NodeKind::File);
        let perm = stat.mode.map_or(
            match kind {
                NodeKind::Dir => 0o555,
                NodeKind::Symlink => 0o777,
                _ => 0o444,
            },
            |m| m & 0o7777,
        );
        let mtime = time(stat.mtime, img.mtime);
        Ok(Attr {
            kind,
            perm,
            uid: stat.uid.unwrap_or(img.uid),
            gid: stat.gid.unwrap_or(img.gid),
            size: stat.size,
            mtime,
            ctime: time(stat.ctime, mtime),
            nlink: if kind == NodeKind::Dir { 1 } else { stat.nlink.map_or(1, u64::from).max(1) },
            rdev: 0,
        })
    }

    /// The target of a symlink inside an image.
    pub(super) fn image_readlink(&self, e: &ImageEntry) -> Result<Vec<u8>> {
        match &e.at {
            Inside::Fs { volume, path, stat: Some(s) } if s.kind == Kind::Symlink => {
                let opened = self.opened(e);
                let (fs, inner) = self.volume_fs(&opened, *volume, path)?;
                fs.read_link(inner).map_err(|err| store_error(&e.image, err))
            }
            _ => Err(Error::InvalidInput("not a symlink".into())),
        }
    }

    /// A node describing an entry inside an image, for callers that show nodes (the portal): its
    /// attributes, a symlink's target, and for a file, as content, the ids of the blocks its
    /// reader reads, so that its content id names its bytes. The ids are no chunks of the
    /// repository: read the file with [`View::open`] of the entry.
    pub fn image_node(&self, e: &ImageEntry) -> Result<Node> {
        let a = self.image_attr(e)?;
        let mut n = Node::new(e.name.clone(), a.kind);
        (n.mode, n.uid, n.gid, n.size, n.mtime, n.ctime, n.nlink) =
            (a.perm, a.uid, a.gid, a.size, a.mtime, a.ctime, a.nlink);
        match a.kind {
            NodeKind::Symlink => n.target = self.image_readlink(e)?,
            NodeKind::File => n.content = self.image_open(e)?.chunks().iter().map(|c| c.id).collect(),
            _ => {}
        }
        Ok(n)
    }

    /// A reader of a file inside an image.
    pub(super) fn image_open(&self, e: &ImageEntry) -> Result<FileReader> {
        let (source, size): (Arc<dyn Blocks>, u64) = match &e.at {
            Inside::Error(text) => (Arc::new(Text(Arc::new(text.as_bytes().to_vec()))), text.len() as u64),
            Inside::Fs { volume, path, stat: Some(s) } if s.kind == Kind::File => {
                let opened = self.opened(e);
                self.volume_fs(&opened, *volume, path)?;
                let source = FsBlocks {
                    opened: opened.clone(),
                    volume: *volume,
                    path: path.clone(),
                    image: e.image.clone(),
                    cache: self.image_caches.blocks.clone(),
                };
                (Arc::new(source), s.size)
            }
            _ => return Err(Error::InvalidInput("not a file".into())),
        };
        let key = match &e.at {
            Inside::Fs { .. } => self.opened(e).key,
            _ => e.key,
        };
        let (volume, path) = match &e.at {
            Inside::Fs { volume, path, .. } => (*volume as u64, path.clone()),
            _ => (u64::MAX, e.name.clone()),
        };
        let id = move |i: u64| {
            let mut h = blake3::Hasher::new();
            h.update(b"rewind image block");
            h.update(&key.0);
            h.update(&volume.to_le_bytes());
            h.update(&(path.len() as u64).to_le_bytes());
            h.update(&path);
            h.update(&size.to_le_bytes());
            h.update(&i.to_le_bytes());
            ChunkId(Hash(*h.finalize().as_bytes()))
        };
        Ok(FileReader::of_blocks(self.repo.clone(), size, BLOCK, id, source))
    }
}

fn error_entry(e: &ImageEntry, name: &[u8], err: &str) -> (Vec<u8>, Entry) {
    let line: String = err.lines().collect::<Vec<_>>().join(" ");
    (name.to_vec(), e.child(name, Inside::Error(format!("{line}\n").into())))
}

fn not_a_directory(e: &ImageEntry) -> Error {
    Error::io(String::from_utf8_lossy(&e.name).into_owned(), std::io::Error::from_raw_os_error(libc::ENOTDIR))
}

fn join(path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// A file an image refers to, by the name written in it: relative to the image's directory
/// (without `..`), or, for an absolute path of the machine that wrote it, its last component in
/// that directory.
fn find_near(repo: &IndexedRepository, dir: TreeId, name: &[u8]) -> Option<Node> {
    let comps: Vec<&[u8]> = name.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
    let comps = if name.starts_with(b"/") { comps.last().map(|c| vec![*c])? } else { comps };
    let mut tree = dir;
    for (i, c) in comps.iter().enumerate() {
        let t = repo.tree(tree).ok()?;
        let node = t.find(c)?;
        if i + 1 == comps.len() {
            return (node.kind == NodeKind::File).then(|| node.clone());
        }
        tree = node.subtree.filter(|_| node.is_dir())?;
    }
    None
}

/// Blocks of files read inside images, shared by every reader of the view.
struct BlockCache {
    cache: ByteLru<ChunkId, Vec<u8>>,
    loading: SingleFlight<ChunkId, Arc<Vec<u8>>>,
}

/// The blocks of one file inside an image.
struct FsBlocks {
    opened: Arc<Opened>,
    volume: usize,
    path: Vec<u8>,
    image: Arc<Node>,
    cache: Arc<BlockCache>,
}

impl FsBlocks {
    fn read(&self, span: &ChunkSpan) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.cache.cache.get(&span.id) {
            return Ok(b);
        }
        let image = self.opened.image.as_ref().map_err(|e| Error::corrupt("disk image", e.to_string()))?;
        let v = &image.volumes[self.volume];
        let fs = v.filesystem.as_ref().map_err(|e| Error::corrupt("disk image volume", e.to_string()))?;
        let inner = match image.table {
            PartitionTable::None => &self.path[..],
            _ => {
                let name = format!("p{}", v.partition.number);
                self.path.strip_prefix(name.as_bytes()).unwrap_or(&self.path)
            }
        };
        let mut buf = vec![0u8; span.len as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = fs
                .read_at(inner, span.offset + done as u64, &mut buf[done..])
                .map_err(|err| store_error(&self.image, err))?;
            if n == 0 {
                return Err(Error::corrupt(
                    format!("disk image {}", self.image.name_lossy()),
                    format!("{} ends before its size", String::from_utf8_lossy(&self.path)),
                ));
            }
            done += n;
        }
        let data = Arc::new(buf);
        self.cache.cache.insert(span.id, data.clone(), data.len());
        Ok(data)
    }
}

impl Blocks for FsBlocks {
    fn load(&self, span: &ChunkSpan) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.cache.cache.get(&span.id) {
            return Ok(b);
        }
        self.cache.loading.run(span.id, || self.read(span))
    }

    fn cached(&self, span: &ChunkSpan) -> Option<Arc<Vec<u8>>> {
        self.cache.cache.get(&span.id)
    }

    fn prefetch(&self, span: &ChunkSpan) -> Result<()> {
        if self.cache.cache.get(&span.id).is_some() {
            return Ok(());
        }
        self.cache.loading.try_run(span.id, || self.read(span)).transpose().map(|_| ())
    }
}

/// The one block of an `.error` file.
struct Text(Arc<Vec<u8>>);

impl Blocks for Text {
    fn load(&self, _: &ChunkSpan) -> Result<Arc<Vec<u8>>> {
        Ok(self.0.clone())
    }

    fn cached(&self, _: &ChunkSpan) -> Option<Arc<Vec<u8>>> {
        Some(self.0.clone())
    }

    fn prefetch(&self, _: &ChunkSpan) -> Result<()> {
        Ok(())
    }
}
