//! The inode table: which [`Entry`] each inode number the kernel holds stands for.
//!
//! Inode numbers derive from stable keys, not from a counter, so the same place in the mount gets
//! the same number every time it is looked up again after the kernel forgot it:
//! - the key of an entry is a hash of its parent's key and its name, so every path in the mount
//!   (a snapshot seen under `snapshots/`, `hosts/` and `tags/` included) is its own inode, as the
//!   kernel requires of directories;
//! - hard links (files with `nlink > 1`) hash the key of the snapshot directory they were found
//!   under with their source `(dev, inode)`, so all links of a file in one snapshot are one inode
//!   and no two snapshots share one.
//!
//! A key is turned into an inode number by probing past numbers taken by other keys, so numbers
//! are unique for the life of the mount. Entries live while the kernel holds a lookup count on
//! them; `forget` drops them (the root is never forgotten).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use rewind_store::{Entry, Node, NodeKind};

/// The root directory's inode number, fixed by FUSE.
pub const ROOT: u64 = 1;

/// What the table knows about one inode.
#[derive(Clone, Debug)]
pub struct Inode {
    pub key: u64,
    pub entry: Entry,
    /// Inode of the directory it was looked up in (the root for the root).
    pub parent: u64,
    /// Key of the snapshot directory this entry is inside, 0 outside snapshots.
    pub snap_key: u64,
    lookups: u64,
}

/// Inode numbers <-> entries, with the kernel's lookup counts.
#[derive(Debug)]
pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    by_key: HashMap<u64, u64>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

fn hash(parts: &[&[u8]]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// The key of `name` in the directory with key `parent_key`, whose snapshot directory (if any) has
/// key `snap_key`.
pub fn child_key(parent_key: u64, snap_key: u64, name: &[u8], entry: &Entry) -> u64 {
    match entry {
        Entry::Node { node, .. } => node_key(parent_key, snap_key, name, node),
        // A snapshot directory is keyed by its id, not its name: names of snapshots taken in the
        // same second can shift when another one arrives.
        Entry::Snapshot(id) => hash(&[b"snapshot", &parent_key.to_le_bytes(), id.as_bytes()]),
        _ => hash(&[b"entry", &parent_key.to_le_bytes(), name]),
    }
}

/// [`child_key`] of a node inside a snapshot.
fn node_key(parent_key: u64, snap_key: u64, name: &[u8], node: &Node) -> u64 {
    if node.kind == NodeKind::File && node.nlink > 1 {
        hash(&[b"hardlink", &snap_key.to_le_bytes(), &node.dev.to_le_bytes(), &node.inode.to_le_bytes()])
    } else {
        hash(&[b"entry", &parent_key.to_le_bytes(), name])
    }
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut t = InodeTable { by_ino: HashMap::new(), by_key: HashMap::new() };
        t.by_ino.insert(ROOT, Inode { key: ROOT, entry: Entry::Root, parent: ROOT, snap_key: 0, lookups: 1 });
        t.by_key.insert(ROOT, ROOT);
        t
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// Number of inodes held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// The kernel learnt about `name` in directory `parent`: return its inode number and count the
    /// lookup. The entry is refreshed (a newer copy of the same node replaces the old one).
    pub fn lookup(&mut self, parent: u64, name: &[u8], entry: Entry) -> Option<u64> {
        let p = self.by_ino.get(&parent)?;
        let snap_key = match &entry {
            Entry::Snapshot(_) => child_key(p.key, p.snap_key, name, &entry),
            _ => p.snap_key,
        };
        let key = child_key(p.key, p.snap_key, name, &entry);
        if let Some(&ino) = self.by_key.get(&key) {
            let i = self.by_ino.get_mut(&ino).expect("by_key and by_ino agree");
            i.lookups += 1;
            i.entry = entry;
            return Some(ino);
        }
        let ino = self.ino_of_key(key);
        self.by_key.insert(key, ino);
        self.by_ino.insert(ino, Inode { key, entry, parent, snap_key, lookups: 1 });
        Some(ino)
    }

    /// The inode of `node` in directory `parent` if the kernel has been told of it.
    pub fn known_child(&self, parent: u64, node: &Node) -> Option<u64> {
        let p = self.by_ino.get(&parent)?;
        self.by_key.get(&node_key(p.key, p.snap_key, &node.name, node)).copied()
    }

    /// The inode number of `key`: its own if known, else the first free one it would get.
    pub fn ino_of_key(&self, key: u64) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let mut ino = key;
        while ino <= ROOT || self.by_ino.contains_key(&ino) {
            ino = ino.wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
        ino
    }

    /// The kernel dropped `n` references to `ino`; true if that was the last and it is gone.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let Some(i) = self.by_ino.get_mut(&ino) else { return false };
        i.lookups = i.lookups.saturating_sub(n);
        if i.lookups == 0 {
            let key = i.key;
            self.by_ino.remove(&ino);
            self.by_key.remove(&key);
            return true;
        }
        false
    }

    /// Number of lookups the kernel holds on `ino` (0 if unknown).
    #[cfg(test)]
    pub fn lookups(&self, ino: u64) -> u64 {
        self.by_ino.get(&ino).map_or(0, |i| i.lookups)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rewind_store::{Hash, Node, SnapshotId};

    use super::*;

    fn file(name: &str, dev: u64, inode: u64, nlink: u64) -> Entry {
        let mut n = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        n.dev = dev;
        n.inode = inode;
        n.nlink = nlink;
        Entry::Node { snapshot: SnapshotId(Hash([1; 32])), node: Arc::new(n) }
    }

    fn snap(b: u8) -> Entry {
        Entry::Snapshot(SnapshotId(Hash([b; 32])))
    }

    #[test]
    fn same_path_same_inode_after_forget() {
        let mut t = InodeTable::new();
        let s = t.lookup(ROOT, b"snapshots", Entry::Snapshots).unwrap();
        let a = t.lookup(s, b"x", snap(1)).unwrap();
        let f = t.lookup(a, b"f", file("f", 1, 10, 1)).unwrap();
        t.forget(f, 1);
        assert_eq!(t.lookups(f), 0);
        assert!(t.get(f).is_none());
        assert_eq!(t.lookup(a, b"f", file("f", 1, 10, 1)), Some(f));
    }

    #[test]
    fn lookup_counts_add_up_and_forget_takes_them_away() {
        let mut t = InodeTable::new();
        let s = t.lookup(ROOT, b"snapshots", Entry::Snapshots).unwrap();
        assert_eq!(t.lookup(ROOT, b"snapshots", Entry::Snapshots), Some(s));
        assert_eq!(t.lookups(s), 2);
        t.forget(s, 1);
        assert_eq!(t.lookups(s), 1);
        t.forget(s, 1);
        assert!(t.get(s).is_none());
        t.forget(ROOT, 5);
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn hardlinks_share_an_inode_within_a_snapshot_only() {
        let mut t = InodeTable::new();
        let s = t.lookup(ROOT, b"snapshots", Entry::Snapshots).unwrap();
        let a = t.lookup(s, b"a", snap(1)).unwrap();
        let b = t.lookup(s, b"b", snap(2)).unwrap();
        let da = t.lookup(a, b"d", file("d", 0, 0, 1)).unwrap();
        let l1 = t.lookup(a, b"one", file("one", 7, 42, 2)).unwrap();
        let l2 = t.lookup(da, b"two", file("two", 7, 42, 2)).unwrap();
        assert_eq!(l1, l2);
        assert_eq!(t.lookups(l1), 2);
        let other = t.lookup(b, b"one", file("one", 7, 42, 2)).unwrap();
        assert_ne!(other, l1);
        // Same (dev, inode) without nlink > 1 is not a link: two inodes.
        let x = t.lookup(a, b"x", file("x", 7, 43, 1)).unwrap();
        let y = t.lookup(da, b"y", file("y", 7, 43, 1)).unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn same_snapshot_under_two_paths_is_two_inodes() {
        let mut t = InodeTable::new();
        let s = t.lookup(ROOT, b"snapshots", Entry::Snapshots).unwrap();
        let h = t.lookup(ROOT, b"hosts", Entry::Hosts).unwrap();
        let a = t.lookup(s, b"t", snap(1)).unwrap();
        let b = t.lookup(h, b"t", snap(1)).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn colliding_keys_get_distinct_numbers() {
        let mut t = InodeTable::new();
        let s = t.lookup(ROOT, b"snapshots", Entry::Snapshots).unwrap();
        // Force a collision: an inode number already taken by another key.
        let taken = t.get(s).unwrap().key;
        t.by_key.remove(&taken);
        t.by_key.insert(12345, s);
        let again = t.lookup(ROOT, b"snapshots", Entry::Snapshots).unwrap();
        assert_ne!(again, s);
        assert!(again > ROOT);
    }
}
