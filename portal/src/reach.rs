//! What lies below each folder of a snapshot, summed up once per tree for every user at once,
//! so that "does this folder lead to something the user may see" ([`crate::authz::Policy`])
//! costs the same whatever is hidden below it: no walk of a hidden subtree on the request path.
//!
//! A [`Summary`] of a tree holds every owner uid below it (for `owner`), whether it is empty
//! (for `home`), and for `readable` the *ways down*: for each thing below that someone could
//! read, the access classes of the folders between (each to be searched) and the class of the
//! thing itself (to be read), kept minimal (a way that needs more than another to reach the same
//! class, or something everyone may read, goes). A folder class everyone may search is left out
//! of ways; a class everyone may read is one class, [`PUBLIC`]. Trees are content-addressed, so
//! one summary serves every snapshot holding the tree.
//!
//! The summaries of a snapshot are made before any request decides anything in it
//! ([`Reach::ensure`]: all of its trees, bottom-up), at portal start for the snapshots there are
//! and on first use for later ones; that takes the time of the snapshot's new trees, whatever
//! path was asked for. A tree with more than [`MAX_WAYS`] ways (hundreds of distinct access
//! rules below one folder) keeps none and is decided by a walk, as before summaries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use rewind_catalog::access::{ACL_XATTR, R, Reader, X, permits, permits_everyone};
use rewind_store::{NodeKind, Tree, TreeId, View};

use crate::error::ApiResult;

/// The class of what everyone may read.
pub(crate) const PUBLIC: u32 = u32::MAX;

/// More ways than this below one folder, and its summary keeps none.
pub(crate) const MAX_WAYS: usize = 256;

/// What decides a permission: owner, group, mode, access ACL, and the permission wanted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Class {
    uid: u32,
    gid: u32,
    mode: u32,
    acl: Option<Box<[u8]>>,
    want: u32,
}

/// A way down to something readable: the folder classes passed (sorted), the class reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Way {
    through: Box<[u32]>,
    end: u32,
}

/// What lies below one folder (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Summary {
    /// Every owner uid below, sorted, distinct.
    uids: Box<[u32]>,
    empty: bool,
    /// `None`: too many to keep (decide by a walk).
    ways: Option<Box<[Way]>>,
}

impl Summary {
    pub(crate) fn owns(&self, uid: u32) -> bool {
        self.uids.binary_search(&uid).is_ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }
}

/// Summaries by tree, and the classes they name.
#[derive(Default)]
pub struct Reach {
    trees: RwLock<HashMap<TreeId, Arc<Summary>>>,
    /// Equal summaries are shared.
    interned: Mutex<HashSet<Arc<Summary>>>,
    classes: RwLock<(Vec<Class>, HashMap<Class, u32>)>,
    /// One snapshot is summed up at a time; requests on summed-up snapshots do not wait.
    building: Mutex<()>,
}

impl Reach {
    /// The summary of `tree`, made (with every tree below it) if there is none yet.
    pub(crate) fn summary(&self, view: &View, tree: TreeId) -> ApiResult<Arc<Summary>> {
        if let Some(s) = self.trees.read().get(&tree) {
            return Ok(s.clone());
        }
        self.ensure(view, tree)?;
        Ok(self.trees.read().get(&tree).cloned().expect("just made"))
    }

    /// Make the summaries of `root` and every tree below it that has none.
    pub(crate) fn ensure(&self, view: &View, root: TreeId) -> ApiResult<()> {
        if self.trees.read().contains_key(&root) {
            return Ok(());
        }
        let _building = self.building.lock();
        // Post-order without recursion: a tree is summed up once its subtrees are.
        let mut stack: Vec<(TreeId, Option<Arc<Tree>>)> = vec![(root, None)];
        while let Some((id, loaded)) = stack.pop() {
            if self.trees.read().contains_key(&id) {
                continue;
            }
            let tree = match loaded {
                Some(t) => t,
                None => view.repo().tree(id)?,
            };
            let missing: Vec<TreeId> = {
                let trees = self.trees.read();
                tree.nodes.iter().filter_map(|n| n.subtree).filter(|s| !trees.contains_key(s)).collect()
            };
            if missing.is_empty() {
                let summary = self.sum_up(&tree);
                self.trees.write().insert(id, summary);
            } else {
                stack.push((id, Some(tree)));
                stack.extend(missing.into_iter().map(|m| (m, None)));
            }
        }
        Ok(())
    }

    fn class(&self, c: Class) -> u32 {
        if let Some(&id) = self.classes.read().1.get(&c) {
            return id;
        }
        let mut classes = self.classes.write();
        if let Some(&id) = classes.1.get(&c) {
            return id;
        }
        let id = classes.0.len() as u32;
        classes.0.push(c.clone());
        classes.1.insert(c, id);
        id
    }

    /// The class of a node for `want`, or `None` when everyone has it.
    fn class_of(&self, n: &rewind_store::Node, want: u32) -> Option<u32> {
        let acl = n.xattr(ACL_XATTR);
        if permits_everyone(n.mode, acl, want) {
            return None;
        }
        Some(self.class(Class { uid: n.uid, gid: n.gid, mode: n.mode & 0o7777, acl: acl.map(Box::from), want }))
    }

    /// A tree's summary from its nodes and its subtrees' summaries (all made).
    fn sum_up(&self, tree: &Tree) -> Arc<Summary> {
        let trees = self.trees.read();
        let mut uids: Vec<u32> = Vec::new();
        let mut ways: Option<Vec<Way>> = Some(Vec::new());
        for n in &tree.nodes {
            uids.push(n.uid);
            let want = if n.is_dir() { R | X } else { R };
            if let Some(w) = ways.as_mut() {
                w.push(Way { through: Box::new([]), end: self.class_of(n, want).unwrap_or(PUBLIC) });
            }
            if let (NodeKind::Dir, Some(sub)) = (n.kind, n.subtree) {
                let below = &trees[&sub];
                uids.extend_from_slice(&below.uids);
                match (ways.as_mut(), &below.ways) {
                    (Some(w), Some(below_ways)) => {
                        let gate = self.class_of(n, X);
                        for b in below_ways.iter() {
                            let mut through = b.through.to_vec();
                            if let Some(g) = gate
                                && let Err(at) = through.binary_search(&g)
                            {
                                through.insert(at, g);
                            }
                            w.push(Way { through: through.into(), end: b.end });
                        }
                    }
                    _ => ways = None,
                }
            }
            // Kept minimal as they come, so that a large folder's many ways stay few.
            if ways.as_ref().is_some_and(|w| w.len() > 4 * MAX_WAYS) {
                ways = ways.map(minimal).filter(|w| w.len() <= MAX_WAYS);
            }
        }
        let ways = ways.map(minimal).filter(|w| w.len() <= MAX_WAYS);
        uids.sort_unstable();
        uids.dedup();
        let summary = Summary { uids: uids.into(), empty: tree.nodes.is_empty(), ways: ways.map(Vec::into) };
        let mut interned = self.interned.lock();
        if let Some(s) = interned.get(&summary) {
            return s.clone();
        }
        let s = Arc::new(summary);
        interned.insert(s.clone());
        s
    }

    /// Whether `reader` may read something below a folder summed up as `s` (the folder itself
    /// searchable): `None` when the summary keeps no ways.
    pub(crate) fn readable(&self, s: &Summary, reader: &Reader) -> Option<bool> {
        let ways = s.ways.as_ref()?;
        let classes = self.classes.read();
        let ok = |id: u32| {
            id == PUBLIC || {
                let c = &classes.0[id as usize];
                permits(reader, c.uid, c.gid, c.mode, c.acl.as_deref(), c.want)
            }
        };
        Some(ways.iter().any(|w| ok(w.end) && w.through.iter().all(|&g| ok(g))))
    }
}

/// The ways none of the others makes needless: a way is needless when another reaches the same
/// class (or something everyone may read) through a subset of its folders.
fn minimal(mut ways: Vec<Way>) -> Vec<Way> {
    ways.sort_by_key(|w| (w.through.len(), w.end != PUBLIC));
    let mut out: Vec<Way> = Vec::with_capacity(ways.len());
    for w in ways {
        let needless = out.iter().any(|k| {
            (k.end == w.end || k.end == PUBLIC) && k.through.iter().all(|g| w.through.binary_search(g).is_ok())
        });
        if !needless {
            out.push(w);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn way(through: &[u32], end: u32) -> Way {
        Way { through: through.into(), end }
    }

    #[test]
    fn only_minimal_ways_are_kept() {
        let kept = minimal(vec![way(&[1, 2], 7), way(&[1], 7), way(&[3], 8), way(&[1, 3], PUBLIC), way(&[1, 3], 9)]);
        assert_eq!(kept, vec![way(&[1], 7), way(&[3], 8), way(&[1, 3], PUBLIC)]);
        assert_eq!(minimal(vec![way(&[], PUBLIC), way(&[5], 6)]), vec![way(&[], PUBLIC)]);
    }
}
