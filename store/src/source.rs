//! Reading the source filesystem's metadata: the only place besides the backup's file reads that
//! looks at the machine being backed up. Owner names are looked up once per id.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use crate::format::{Node, NodeKind, Time, Xattr};

pub(crate) fn kind_of(meta: &Metadata) -> NodeKind {
    let t = meta.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else {
        NodeKind::File
    }
}

/// A node from `lstat` metadata: everything but content, subtree, target and xattrs.
pub(crate) fn node_from_meta(name: Vec<u8>, meta: &Metadata, names: &NameCache) -> Node {
    let kind = kind_of(meta);
    let mut n = Node::new(name, kind);
    n.mode = meta.mode() & 0o7777;
    n.uid = meta.uid();
    n.gid = meta.gid();
    n.user = names.user(n.uid);
    n.group = names.group(n.gid);
    n.size = if kind == NodeKind::File || kind == NodeKind::Symlink { meta.len() } else { 0 };
    n.mtime = Time { sec: meta.mtime(), nsec: meta.mtime_nsec() as u32 };
    n.ctime = Time { sec: meta.ctime(), nsec: meta.ctime_nsec() as u32 };
    n.dev = meta.dev();
    n.inode = meta.ino();
    n.nlink = meta.nlink();
    if matches!(kind, NodeKind::BlockDevice | NodeKind::CharDevice) {
        n.rdev = meta.rdev();
    }
    n
}

/// Extended attributes of `path` (not following symlinks), sorted by name. Filesystems without
/// xattr support give none.
pub(crate) fn xattrs(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr { name: name.as_bytes().to_vec(), value }),
            Ok(None) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
}

/// uid and gid to names, looked up once each.
#[derive(Default)]
pub(crate) struct NameCache {
    users: Mutex<HashMap<u32, String>>,
    groups: Mutex<HashMap<u32, String>>,
}

impl NameCache {
    pub fn user(&self, uid: u32) -> String {
        self.users.lock().expect("name cache").entry(uid).or_insert_with(|| user_name(uid).unwrap_or_default()).clone()
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups
            .lock()
            .expect("name cache")
            .entry(gid)
            .or_insert_with(|| group_name(gid).unwrap_or_default())
            .clone()
    }
}

fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data, for which all zero bytes are a valid value.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        // SAFETY: getpwuid_r writes only into `pw` and `buf`, whose length we pass, and `result`
        // points at `pw` or is null.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
        return Some(unsafe { CStr::from_ptr(pw.pw_name) }.to_string_lossy().into_owned());
    }
}

fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: group is plain data, for which all zero bytes are a valid value.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        // SAFETY: getgrgid_r writes only into `gr` and `buf`, whose length we pass, and `result`
        // points at `gr` or is null.
        let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success gr_name points to a NUL-terminated string inside `buf`.
        return Some(unsafe { CStr::from_ptr(gr.gr_name) }.to_string_lossy().into_owned());
    }
}
