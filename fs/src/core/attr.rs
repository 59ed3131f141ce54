//! Attributes: what `getattr`, `readlink`, the xattr calls and `statfs` answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use rewind_store::{Entry, NodeKind, Time};

use super::{Answer, BLKSIZE, Core, Statfs, TTL_FROZEN, TTL_LIVE, errno};

pub(super) fn to_system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(u64::from(t.nsec))
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
    }
}

/// The kind of an entry without computing its attributes.
pub fn entry_type(e: &Entry) -> FileType {
    match e {
        Entry::Node { node, .. } => file_type(node.kind),
        Entry::Image(i) => file_type(i.kind()),
        Entry::Latest(_) => FileType::Symlink,
        _ => FileType::Directory,
    }
}

/// A Linux `dev_t` (glibc's 64-bit encoding) in the 32-bit encoding FUSE carries.
pub fn fuse_rdev(rdev: u64) -> u32 {
    let major = libc::major(rdev as libc::dev_t) as u32;
    let minor = libc::minor(rdev as libc::dev_t) as u32;
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Whether an entry lists snapshots (and so changes while mounted).
pub(super) fn is_live(e: &Entry) -> bool {
    e.snapshot().is_none()
}

/// Reply for a value-returning xattr call: the size only when `size` is 0, ERANGE when too small.
pub fn xattr_reply(value: &[u8], size: u32) -> Result<Option<&[u8]>, Errno> {
    if size == 0 {
        Ok(None)
    } else if value.len() > size as usize {
        Err(Errno::ERANGE)
    } else {
        Ok(Some(value))
    }
}

impl Core {
    pub(super) fn answer(&self, ino: u64, e: &Entry) -> Result<Answer, Errno> {
        let a = self.view.attr(e).map_err(|e| errno(&e))?;
        let time = to_system_time(a.mtime);
        let attr = FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: to_system_time(a.ctime),
            crtime: time,
            kind: file_type(a.kind),
            perm: (a.perm & 0o7777) as u16,
            nlink: a.nlink.min(u64::from(u32::MAX)) as u32,
            uid: a.uid,
            gid: a.gid,
            rdev: fuse_rdev(a.rdev),
            blksize: BLKSIZE,
            flags: 0,
        };
        let ttl = if is_live(e) { TTL_LIVE } else { TTL_FROZEN };
        Ok(Answer { attr, ttl })
    }

    pub fn getattr(&self, ino: u64) -> Result<Answer, Errno> {
        let e = self.entry(ino)?;
        if is_live(&e) {
            self.view.refresh_if_stale();
        }
        self.answer(ino, &e)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let e = self.entry(ino)?;
        if matches!(e, Entry::Latest(_)) {
            // `latest` names the newest snapshot as of now, not as of the last second.
            if let Err(err) = self.view.refresh() {
                tracing::warn!("cannot refresh the snapshot list: {err}");
            }
        }
        self.view.readlink(&e).map_err(|err| match err {
            rewind_store::Error::InvalidInput(_) => Errno::EINVAL,
            other => errno(&other),
        })
    }

    /// Whether the attributes of `e` need a tree read (a directory's, to count its subdirectories).
    pub(super) fn attr_needs_tree_read(&self, e: &Entry) -> bool {
        self.view.attr_tree(e).is_some_and(|t| !self.view.repo().tree_cached(&t))
    }

    /// Whether `getattr` of `ino` would read a tree.
    pub fn getattr_needs_tree_read(&self, ino: u64) -> bool {
        self.entry(ino).is_ok_and(|e| self.attr_needs_tree_read(&e))
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        match self.entry(ino)? {
            Entry::Node { node, .. } => node.xattr(name).map(<[u8]>::to_vec).ok_or(Errno::ENODATA),
            _ => Err(Errno::ENODATA),
        }
    }

    /// Names of the extended attributes, each followed by a NUL.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        if let Entry::Node { node, .. } = self.entry(ino)? {
            for x in &node.xattrs {
                out.extend_from_slice(&x.name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Totals over all snapshots, from their manifests (no tree is read).
    pub fn statfs(&self) -> Statfs {
        let bsize = 4096u32;
        let (mut bytes, mut files) = (0u64, 0u64);
        for (_, s) in self.view.snapshots() {
            let m = &s.snapshot.summary;
            bytes = bytes.saturating_add(m.bytes_total);
            files = files.saturating_add(m.files_new + m.files_changed + m.files_unchanged + m.dirs + m.others);
        }
        Statfs { blocks: bytes.div_ceil(u64::from(bsize)), files, bsize, namelen: 255 }
    }
}
