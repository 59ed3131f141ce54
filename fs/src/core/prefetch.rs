//! Prefetch: what a sequential read or a walk reads next, planned from what is cached.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rewind_store::{ChunkId, Entry, Node, NodeKind, TreeId};

use super::{Core, OpenFile, PREFETCH_FILES, PREFETCH_TREES, PUSH_MAX};

/// Where an entry stands in its directory: the directory's inode and tree, and the entry's
/// index in it; `top` when the directory is a snapshot's root.
struct Place {
    parent: u64,
    tree: Arc<rewind_store::Tree>,
    pos: usize,
    top: bool,
}

/// One step of a walk's prefetch (see [`Core::walk_ahead`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ahead {
    /// Store this one-chunk file of `size` bytes into the kernel's page cache.
    Push { ino: u64, chunk: ChunkId, size: u64 },
    /// Load this chunk into the cache.
    Load(ChunkId),
    /// Load this directory into the tree cache: the walk goes on there, and the next plan can
    /// see its files.
    Tree(TreeId),
}

/// What a walk's prefetch chose, and how much it covers.
struct Prefetch {
    out: Vec<Ahead>,
    files: usize,
    bytes: u64,
    limit: u64,
    /// Entries looked at, files or not: a walk through many empty folders stops too.
    seen: usize,
}

impl Core {
    /// Chunks to load ahead of a read of `[offset, offset + len)`, if the reads of this file are
    /// sequential; remembers what was handed out so each chunk is prefetched once.
    pub fn plan_readahead(&self, f: &OpenFile, offset: u64, len: u64) -> Vec<usize> {
        let prev = f.next.swap(offset + len, Ordering::Relaxed);
        // The kernel's own read-ahead can reorder neighbouring requests a little.
        let sequential = offset == 0 || offset.abs_diff(prev) <= 4 << 20;
        let size = f.reader.size();
        if !sequential || self.readahead_bytes == 0 || offset + len >= size {
            return Vec::new();
        }
        let Some(last) = f.reader.chunk_index((offset + len).min(size - 1)) else { return Vec::new() };
        let want = f.reader.plan_ahead(last, self.readahead_bytes, size).end;
        let from = f.ahead.fetch_max(want, Ordering::Relaxed).max(last + 1);
        (from..want).collect()
    }

    /// Load chunk `i` of a file into the cache (a prefetch; errors are left for the read).
    pub fn warm(&self, f: &OpenFile, i: usize) {
        let _ = f.reader.warm(i);
    }

    /// The contents of a one-chunk file of `size` bytes, for a push into the page cache: loaded,
    /// or waited for if on its way. `None` if damaged or not that long (the read that needs it
    /// reports that): a push must never change what the file shows.
    pub fn chunk_to_push(&self, id: ChunkId, size: u64) -> Option<Arc<Vec<u8>>> {
        self.view.repo().chunk(id).ok().filter(|data| data.len() as u64 == size)
    }

    /// The contents of a one-chunk file of `size` bytes if its chunk is cached now (never
    /// loads: for the FUSE thread).
    pub fn cached_to_push(&self, id: ChunkId, size: u64) -> Option<Arc<Vec<u8>>> {
        self.view.repo().cached_chunk(&id).filter(|data| data.len() as u64 == size)
    }

    /// Load a chunk into the cache unless it is there or on its way.
    pub fn warm_chunk(&self, id: ChunkId) {
        let _ = self.view.repo().prefetch_chunk(id);
    }

    /// Load a directory into the tree cache (a prefetch; errors are left for the lookup), and
    /// return the trees of its subdirectories that are not cached, to go on with.
    pub fn warm_tree(&self, id: TreeId) -> Vec<TreeId> {
        match self.view.repo().tree(id) {
            Ok(tree) => tree
                .nodes
                .iter()
                .filter_map(|n| n.subtree.filter(|_| n.is_dir()))
                .filter(|t| !self.view.repo().tree_cached(t))
                .take(PREFETCH_TREES)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Trees of the subdirectories of a directory being read that are not cached yet: a walk
    /// (`find`, `du`, `tar`) enters them next.
    pub fn subtrees_to_prefetch(&self, ino: u64) -> Vec<TreeId> {
        let Some(dir) = self.listings.lock().peek(&ino).cloned() else { return Vec::new() };
        dir.items
            .iter()
            .filter_map(|i| match &i.entry {
                Entry::Node { node, .. } if node.is_dir() => node.subtree,
                _ => None,
            })
            .filter(|t| !self.view.repo().tree_cached(t))
            .take(PREFETCH_TREES)
            .collect()
    }

    /// What a walk reads after `ino`, in the order it reads it: programs that copy a tree
    /// (`tar`, `cp -r`, `rsync`) read a directory's entries in order and each subdirectory where
    /// it comes, so the files that follow are those after `ino` in its directory, depth first,
    /// then those after its directory in the parent's, and so on up to the snapshot. Trees already
    /// cached are followed; the first one that is not ends the plan and is loaded, so that the
    /// next plan goes on there (a fresh `tar` of the real-data corpus, with no `find` before it:
    /// 1,340-1,400 reads waited for a chunk, 20-100 with the tree loaded). Small one-chunk files
    /// the kernel knows (listed or looked up, in any of these directories) and that were not
    /// pushed before are to be pushed into its page cache, so reading them costs no round trip;
    /// of the other files, the first two chunks that are not cached are to be loaded. At most
    /// [`PREFETCH_FILES`] files, up to a quarter of the read-ahead.
    pub fn walk_ahead(&self, ino: u64) -> Vec<Ahead> {
        let mut plan = Prefetch { out: Vec::new(), files: 0, bytes: 0, limit: self.readahead_bytes / 4, seen: 0 };
        let mut cur = ino;
        while let Some(place) = self.place(cur) {
            if !self.plan_walk(&place.tree.nodes[place.pos + 1..], Some(place.parent), &mut plan) || place.top {
                break;
            }
            cur = place.parent;
        }
        plan.out
    }

    /// Where `ino` (something inside a snapshot) stands in its directory, if that directory's
    /// tree is cached.
    fn place(&self, ino: u64) -> Option<Place> {
        let (parent, name) = {
            let t = self.inodes.lock();
            let i = t.get(ino)?;
            match &i.entry {
                Entry::Node { node, .. } => (i.parent, node.name.clone()),
                _ => return None,
            }
        };
        let dir = self.entry(parent).ok()?;
        let top = matches!(dir, Entry::Snapshot(_));
        let tree = self.view.dir_tree(&dir);
        let tree = self.view.repo().tree(tree.filter(|t| self.view.repo().tree_cached(t))?).ok()?;
        let pos = tree.nodes.binary_search_by(|n| n.name.as_slice().cmp(&name)).ok()?;
        Some(Place { parent, tree, pos, top })
    }

    /// Add the files of `nodes` (the entries of directory `dir`, if the kernel knows it), depth
    /// first, to `plan`; false when the plan is full or the walk reaches a tree that is not cached.
    fn plan_walk(&self, nodes: &[Node], dir: Option<u64>, plan: &mut Prefetch) -> bool {
        for n in nodes {
            plan.seen += 1;
            if plan.files >= PREFETCH_FILES || plan.bytes >= plan.limit || plan.seen > 16 * PREFETCH_FILES {
                return false;
            }
            let known = || dir.and_then(|d| self.inodes.lock().known_child(d, n));
            match n.kind {
                NodeKind::File => {
                    plan.files += 1;
                    plan.bytes += n.size;
                    if n.content.len() == 1
                        && n.size > 0
                        && n.size <= PUSH_MAX
                        && let Some(child) = known()
                    {
                        if self.pushed.lock().put(child, ()).is_none() {
                            plan.out.push(Ahead::Push { ino: child, chunk: n.content[0], size: n.size });
                        }
                        continue;
                    }
                    plan.out.extend(
                        n.content
                            .iter()
                            .take(2)
                            .filter(|id| !self.view.repo().chunk_cached(id))
                            .map(|&id| Ahead::Load(id)),
                    );
                }
                NodeKind::Dir => {
                    let Some(t) = n.subtree else { continue };
                    if !self.view.repo().tree_cached(&t) {
                        plan.out.push(Ahead::Tree(t));
                        return false;
                    }
                    let Ok(tree) = self.view.repo().tree(t) else { return false };
                    if !self.plan_walk(&tree.nodes, known(), plan) {
                        return false;
                    }
                }
                _ => {}
            }
        }
        true
    }
}
