//! The files inside disk images, catalogued like any others: a [`TreeSource`] that shows the
//! catalog every tree as the view lists it, with an `<image>.d` folder beside each file that
//! holds a disk image, and each folder inside an image as a tree of its own.
//!
//! Invariants:
//! - A folder inside an image is named by the identity of the image's contents
//!   (`View::image_identity`: the image file's content, and its folder when it refers to other
//!   files there) and its path inside the image. Equal names show equal contents, so an image
//!   that did not change between two snapshots gives the same trees and the catalog's diff skips
//!   it without reading it. Folders inside images are read only when the catalog asks for them.
//! - A tree holding an image keeps its own id with the `.d` folders added: every update of a
//!   catalog must go through this source, which [`Catalog::sync_view`] and
//!   [`Catalog::rebuild_view`] do (the CLI and the portal use nothing else).
//! - A folder inside an image that cannot be read is catalogued empty, with a warning; `.error`
//!   entries are catalogued as the files they are. An update never fails for a damaged image.
//! - Files inside images carry what the view shows of them (`View::image_node`): owners and
//!   modes of ext, the image file's owner elsewhere; their content id names their bytes in that
//!   image.
//! - Every folder inside an image, the `<image>.d` folder included, is one this source handed
//!   out ([`TreeSource::inside_image`]): the catalog marks its directory (`dirs.image`), and no
//!   [`crate::Scope`] sees a row there, whatever its owner, path or access. Only admins, who
//!   query without a scope, find files inside images.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rewind_store::{Entry, Hash, Images, NodeKind, Tree, TreeId, View};

use crate::update::{SnapshotInfo, SyncReport, TreeSource};
use crate::{Catalog, Result};

/// Trees as the view shows them: with what is inside disk images.
pub struct ImageTrees<'a> {
    view: &'a View,
    /// The folders inside images handed out as subtrees, by the id given to each.
    folders: Mutex<HashMap<TreeId, Entry>>,
}

impl<'a> ImageTrees<'a> {
    pub fn new(view: &'a View) -> ImageTrees<'a> {
        ImageTrees { view, folders: Mutex::new(HashMap::new()) }
    }

    /// The id of a folder inside an image: `parent` (an identity, or a folder's id) and `name`.
    fn name_folder(&self, parent: &[u8], name: &[u8], entry: Entry) -> TreeId {
        let mut h = blake3::Hasher::new();
        h.update(b"rewind catalog folder inside a disk image");
        h.update(parent);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name);
        let id = TreeId(Hash(*h.finalize().as_bytes()));
        self.folders.lock().unwrap_or_else(|e| e.into_inner()).insert(id, entry);
        id
    }

    /// The tree of a folder inside an image (its subfolders named, not read).
    fn folder(&self, id: TreeId, entry: &Entry) -> Tree {
        let what = match entry {
            Entry::Image(i) => format!("{} in {}", String::from_utf8_lossy(&i.inner_path()), i.image().name_lossy()),
            _ => String::new(),
        };
        let list = match self.view.list(entry, Images::Show) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("catalog: {what}: not readable, catalogued empty: {e}");
                return Tree::default();
            }
        };
        let mut nodes = Vec::with_capacity(list.len());
        for (name, child) in list {
            let Entry::Image(i) = &child else { continue };
            match self.view.image_node(i) {
                Ok(mut node) => {
                    if node.kind == NodeKind::Dir {
                        node.subtree = Some(self.name_folder(&id.0.0, &name, child));
                    }
                    nodes.push(node);
                }
                Err(e) => tracing::warn!("catalog: {what}: {}: {e}", String::from_utf8_lossy(&name)),
            }
        }
        Tree { nodes }
    }
}

impl TreeSource for ImageTrees<'_> {
    fn inside_image(&self, id: TreeId) -> bool {
        self.folders.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&id)
    }

    fn tree(&self, id: TreeId) -> rewind_store::Result<Arc<Tree>> {
        let inside = self.folders.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
        if let Some(entry) = inside {
            return Ok(Arc::new(self.folder(id, &entry)));
        }
        let tree = self.view.repo().tree(id)?;
        let folders = self.view.image_folders(id)?;
        if folders.is_empty() {
            return Ok(tree);
        }
        let mut nodes = tree.nodes.clone();
        for (_, entry) in folders {
            let Entry::Image(i) = &entry else { continue };
            let mut node = self.view.image_node(i)?;
            let identity = self.view.image_identity(i);
            node.subtree = Some(self.name_folder(&identity.0, b"", entry));
            nodes.push(node);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Arc::new(Tree { nodes }))
    }
}

impl Catalog {
    /// [`Catalog::sync`] with the files inside disk images, as the view shows them.
    pub fn sync_view(&mut self, view: &View) -> Result<SyncReport> {
        self.sync_to(&ImageTrees::new(view), wanted(view)?)
    }

    /// [`Catalog::rebuild`] with the files inside disk images, as the view shows them.
    pub fn rebuild_view(&mut self, view: &View) -> Result<SyncReport> {
        self.rebuild_from(&ImageTrees::new(view), wanted(view)?)
    }
}

/// Every snapshot of the repository per host, oldest first.
fn wanted(view: &View) -> Result<BTreeMap<String, Vec<SnapshotInfo>>> {
    let mut wanted: BTreeMap<String, Vec<SnapshotInfo>> = BTreeMap::new();
    for e in &view.repo().repo().snapshots()? {
        wanted.entry(e.snapshot.host.clone()).or_default().push(SnapshotInfo::from(e));
    }
    Ok(wanted)
}
