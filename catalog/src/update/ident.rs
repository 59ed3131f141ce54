//! What makes a version: a node's identity and what decides who may read it, as stored.

use rewind_store::{Node, NodeKind};

use crate::access::ACL_XATTR;

/// The numeric kind stored in `versions.kind`.
pub(crate) fn kind_code(k: NodeKind) -> i64 {
    match k {
        NodeKind::File => 1,
        NodeKind::Dir => 2,
        NodeKind::Symlink => 3,
        NodeKind::BlockDevice => 4,
        NodeKind::CharDevice => 5,
        NodeKind::Fifo => 6,
        NodeKind::Socket => 7,
    }
}

pub(crate) fn kind_from_code(c: i64) -> NodeKind {
    match c {
        1 => NodeKind::File,
        2 => NodeKind::Dir,
        3 => NodeKind::Symlink,
        4 => NodeKind::BlockDevice,
        5 => NodeKind::CharDevice,
        6 => NodeKind::Fifo,
        _ => NodeKind::Socket,
    }
}

/// A version's identity: two nodes at one path are the same version when all of this agrees.
/// It is the node's own content and metadata only: what the folders above it allow is kept per
/// directory (`dirs.ctx`, `folder_access`), so a folder's `chmod` cuts no version below it.
/// `content` is the first 8 bytes of BLAKE3 over the file's chunk ids in order (the symlink
/// target for symlinks, 0 otherwise): enough to tell one path's versions apart; `acl` likewise
/// of the POSIX access ACL (0 without one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ident {
    pub kind: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub content: i64,
    pub acl: i64,
}

/// The content id of a node, as stored: [`Node::content_id`], 0 for nodes without content.
pub fn content_id(node: &Node) -> i64 {
    node.content_id().map_or(0, |c| c.0)
}

pub(crate) fn ident(n: &Node) -> Ident {
    let acl = n
        .xattr(ACL_XATTR)
        .map_or(0, |a| i64::from_le_bytes(blake3::hash(a).as_bytes()[..8].try_into().expect("8 bytes")));
    Ident {
        kind: kind_code(n.kind),
        mode: n.mode,
        uid: n.uid,
        gid: n.gid,
        size: n.size,
        mtime: n.mtime.sec,
        mtime_ns: n.mtime.nsec,
        content: content_id(n),
        acl,
    }
}

/// What decides who may read a node, as interned in `access`: folder or not, permission bits,
/// owner, group and the POSIX access ACL (empty without one).
pub(super) type AccessKey = (bool, u32, u32, u32, Vec<u8>);

pub(super) fn access_key(n: &Node) -> AccessKey {
    (n.is_dir(), n.mode, n.uid, n.gid, n.xattr(ACL_XATTR).unwrap_or_default().to_vec())
}

/// The context of the entries at a snapshot's root (not a row of `contexts`).
pub(crate) const ROOT_CONTEXT: i64 = 0;

/// `folder_access.since` of a folder's first access: from the start of its history.
pub(crate) const SINCE_EVER: i64 = i64::MIN;

/// `versions.gone` of a closed version whose path has a next version: 0 when that one has the
/// same access (whoever sees one sees the other), else 2.
pub(super) fn closed_gone(same_access: bool) -> i64 {
    if same_access { 0 } else { 2 }
}
