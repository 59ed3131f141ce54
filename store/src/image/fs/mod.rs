//! Filesystems inside a volume, read-only, behind one path-based API.

mod ext;
mod fat;
mod ntfs;

use std::sync::Arc;

use super::{Error, ReadAt, Result, io::read_exact_at};

/// A filesystem opened on a volume.
///
/// Paths are bytes, `/`-separated, relative to the filesystem's root (a leading `/` is allowed;
/// `""` and `"/"` are the root); `.` and `..` are not followed. Every method may be called from
/// many threads at once: NTFS calls run fully in parallel; ext and FAT calls each take one of a
/// few independently opened instances of the crate's filesystem object (the crates are
/// single-threaded), so up to that many run at once.
pub trait FileSystem: Send + Sync {
    /// Which filesystem this is.
    fn kind(&self) -> FsKind;

    /// The entry at `path` (symlinks are not followed).
    fn stat(&self, path: &[u8]) -> Result<Stat>;

    /// The entries of the directory at `path`, without `.` and `..`, each with its attributes.
    /// Reads the directory's blocks and its entries' inodes or records, nothing else.
    fn list(&self, path: &[u8]) -> Result<Vec<DirEntry>>;

    /// The target of the symlink at `path`.
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>>;

    /// Fill `buf` from `offset` of the regular file at `path`; returns the bytes read, fewer
    /// only at the end of the file. Holes read as zeros without reading the volume.
    fn read_at(&self, path: &[u8], offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// NTFS: the entry's security descriptor (owner, group, ACLs) in the self-relative binary
    /// form Windows stores (MS-DTYP 2.4.6), from the file's own `$SECURITY_DESCRIPTOR` or from
    /// `$Secure` by its security id; [`owner_sid`] reads the owner. `None` on other filesystems.
    fn security_descriptor(&self, path: &[u8]) -> Result<Option<Vec<u8>>> {
        self.stat(path).map(|_| None)
    }
}

/// The owner of a self-relative security descriptor as a SID string (`S-1-5-21-...-1001`), or
/// `None` when it has none or does not decode.
pub fn owner_sid(sd: &[u8]) -> Option<String> {
    let at = usize::try_from(u32::from_le_bytes(sd.get(4..8)?.try_into().ok()?)).ok()?;
    if sd.first() != Some(&1) || at == 0 {
        return None;
    }
    let sid = sd.get(at..)?;
    let (revision, count) = (*sid.first()?, usize::from(*sid.get(1)?));
    if revision != 1 || count > 15 {
        return None;
    }
    let authority = sid.get(2..8)?.iter().fold(0u64, |a, &b| a << 8 | u64::from(b));
    let mut s = format!("S-1-{authority}");
    for i in 0..count {
        let sub = u32::from_le_bytes(sid.get(8 + 4 * i..12 + 4 * i)?.try_into().ok()?);
        s.push_str(&format!("-{sub}"));
    }
    Some(s)
}

/// Which filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FsKind {
    Ext,
    Ntfs,
    Fat,
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Devices, fifos, sockets; NTFS reparse points.
    Other,
}

/// A time as seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// An entry's attributes; `None` where the filesystem (or its crate) has no such thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Bytes (a symlink's: its target's length).
    pub size: u64,
    /// Inode or MFT record number: entries that share one are hard links of one file. NTFS
    /// always; ext for regular files from [`FileSystem::stat`] only (a listing leaves it out: it
    /// would cost a path lookup per entry); FAT never (no hard links).
    pub ino: Option<u64>,
    pub nlink: Option<u32>,
    /// Permission bits (`0o7777`), ext only.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<Time>,
    pub atime: Option<Time>,
    /// Inode (ext) or MFT record (NTFS) change time.
    pub ctime: Option<Time>,
    /// Creation time.
    pub btime: Option<Time>,
    /// DOS/Windows attribute bits (FAT, NTFS): read-only 0x1, hidden 0x2, system 0x4, ...
    pub attributes: Option<u32>,
    /// NTFS: the key of the file's security descriptor in `$Secure` (see
    /// [`FileSystem::security_descriptor`]).
    pub security_id: Option<u32>,
    /// NTFS: the owner's key in the quota file (`$Quota`).
    pub owner_id: Option<u32>,
}

impl Stat {
    pub(crate) fn new(kind: Kind, size: u64) -> Stat {
        Stat {
            kind,
            size,
            ino: None,
            nlink: None,
            mode: None,
            uid: None,
            gid: None,
            mtime: None,
            atime: None,
            ctime: None,
            btime: None,
            attributes: None,
            security_id: None,
            owner_id: None,
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub stat: Stat,
}

/// What a volume's first bytes say it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Ext,
    Ntfs,
    Fat,
    Unsupported(&'static str),
}

/// Recognise a filesystem from the first 8 KiB of a volume.
pub(crate) fn probe(head: &[u8]) -> Option<Probe> {
    let at = |off: usize, magic: &[u8]| head.len() >= off + magic.len() && &head[off..off + magic.len()] == magic;
    if at(1080, &[0x53, 0xef]) {
        return Some(Probe::Ext);
    }
    if at(3, b"NTFS    ") {
        return Some(Probe::Ntfs);
    }
    if at(3, b"EXFAT   ") {
        return Some(Probe::Unsupported("exFAT"));
    }
    if (at(54, b"FAT1") || at(82, b"FAT32")) && at(510, &[0x55, 0xaa]) {
        let bps = u16::from_le_bytes([head[11], head[12]]);
        if matches!(bps, 512 | 1024 | 2048 | 4096) && head[13].is_power_of_two() {
            return Some(Probe::Fat);
        }
    }
    if at(0, b"XFSB") {
        return Some(Probe::Unsupported("XFS"));
    }
    if at(512 + 24, b"LVM2 001") || at(512, b"LABELONE") {
        return Some(Probe::Unsupported("LVM physical volume"));
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some(Probe::Unsupported("LUKS-encrypted volume"));
    }
    if at(4086, b"SWAPSPACE2") {
        return Some(Probe::Unsupported("Linux swap"));
    }
    if at(0, b"\xeb\x76\x90") || at(3, b"ReFS") {
        return Some(Probe::Unsupported("ReFS"));
    }
    None
}

/// Open the filesystem on a volume, recognised by its content.
pub fn open_filesystem(volume: Arc<dyn ReadAt>) -> Result<Arc<dyn FileSystem>> {
    let mut head = vec![0u8; 8192.min(volume.size()) as usize];
    read_exact_at(&*volume, 0, &mut head, "volume")?;
    match probe(&head) {
        Some(Probe::Ext) => Ok(Arc::new(ext::Ext::open(volume)?)),
        Some(Probe::Ntfs) => Ok(Arc::new(ntfs::Ntfs::open(volume)?)),
        Some(Probe::Fat) => Ok(Arc::new(fat::Fat::open(volume)?)),
        Some(Probe::Unsupported(name)) => Err(Error::Unsupported(format!("filesystem: {name}"))),
        None => {
            // btrfs keeps its superblock at 64 KiB.
            let mut b = [0u8; 8];
            if volume.read_at(0x10040, &mut b).ok() == Some(8) && &b == b"_BHRfS_M" {
                return Err(Error::Unsupported("filesystem: btrfs".into()));
            }
            Err(Error::Unsupported("volume: no filesystem this reader knows (ext2/3/4, NTFS, FAT)".into()))
        }
    }
}

/// The components of a path inside a filesystem; `.` and `..` are refused.
pub(crate) fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == b"." || *c == b"..") {
        return Err(Error::NotFound(String::from_utf8_lossy(path).into_owned()));
    }
    Ok(parts)
}

/// A path as it is shown in errors.
pub(crate) fn show(path: &[u8]) -> String {
    let p = String::from_utf8_lossy(path);
    if p.starts_with('/') { p.into_owned() } else { format!("/{p}") }
}

/// A small pool of independently opened, single-threaded filesystem objects: a call takes a
/// free one, or waits for one. An object whose call panicked is dropped and reopened.
pub(crate) struct Pool<T> {
    slots: Vec<std::sync::Mutex<Option<T>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl<T> Pool<T> {
    pub(crate) fn new(size: usize, first: T) -> Pool<T> {
        let mut slots: Vec<_> = (0..size.max(1)).map(|_| std::sync::Mutex::new(None)).collect();
        *slots[0].get_mut().unwrap_or_else(|e| e.into_inner()) = Some(first);
        Pool { slots, next: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// Run `f` on a free object (opened with `open` if its slot is empty).
    pub(crate) fn with<R>(
        &self,
        what: &str,
        open: impl Fn() -> Result<T>,
        f: impl FnOnce(&mut T) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.slots.iter().find_map(|s| s.try_lock().ok()).unwrap_or_else(|| {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.slots.len();
            self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
        });
        let run = || {
            if guard.is_none() {
                *guard = Some(open()?);
            }
            f(guard.as_mut().expect("just filled"))
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(_) => {
                *guard = None;
                Err(Error::corrupt(what, "the filesystem reader failed on malformed data"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn owner_sids_read_as_windows_writes_them() {
        // Revision 1, self-relative, owner at 20: S-1-5-21-1-2-3-1001.
        let mut sd = vec![1, 0, 0x04, 0x80, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        sd.extend_from_slice(&[1, 5, 0, 0, 0, 0, 0, 5]);
        for sub in [21u32, 1, 2, 3, 1001] {
            sd.extend_from_slice(&sub.to_le_bytes());
        }
        assert_eq!(owner_sid(&sd).as_deref(), Some("S-1-5-21-1-2-3-1001"));
        sd[4] = 0;
        assert_eq!(owner_sid(&sd), None);
    }

    proptest! {
        #[test]
        fn owner_sid_never_panics(sd in prop::collection::vec(any::<u8>(), 0..80), owner in 0u8..80) {
            let mut sd = sd;
            if sd.len() > 8 {
                sd[0] = 1;
                sd[4] = owner;
            }
            let _ = owner_sid(&sd);
        }
    }
}
