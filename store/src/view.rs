//! One namespace of every snapshot, resolved here and only here; the FUSE driver and the portal
//! translate it. Layout:
//!
//! ```text
//! snapshots/<time>/...          every snapshot, oldest first
//! hosts/<host>/<time>/...       per host; hosts/<host>/latest is a symlink to the newest
//! ids/<short id>/...            by id (8 hex digits, more if needed to be unique)
//! tags/<tag>/<time>/...         per tag
//! ```
//!
//! Inside a snapshot, absolute source paths are kept (`hosts/h/latest/srv/home/...`).
//! `<time>` is the UTC start time `2026-01-31T12:00:00Z`; snapshots in the same second get `-2`,
//! `-3`... in (time, id) order, so names are unique and sort by time.
//!
//! The view reads only snapshot manifests up front; trees are read when a directory is entered.
//! [`View::refresh`] picks up snapshots added or removed since.
//!
//! Next to a file that holds a disk image, `<name>.d/` shows the files inside it ([`image`]).
//! Whether these folders are shown is the caller's to say at every [`View::lookup`],
//! [`View::list`] and [`View::walk`] ([`Images`]): with [`Images::Hide`] no file's content is
//! read to decide it, so a caller that shows no image folders (the portal, to most users) pays
//! the same for a file that holds an image as for any other, and for a name that is not there.

mod image;

pub use image::{ImageEntry, SUFFIX as IMAGE_FOLDER_SUFFIX};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::format::{Node, NodeKind, SnapshotId, Time};
use crate::repo::{FileReader, IndexedRepository, SnapshotEntry};

/// Whether [`View::lookup`], [`View::list`] and [`View::walk`] show, next to each file that
/// holds a disk image, its `<name>.d` folder. Deciding that reads the file's first bytes;
/// `Hide` reads nothing of any file: `<name>.d` is looked up as any other name (a miss unless a
/// real entry has it) and listings hold the snapshot's nodes only. What is inside an image
/// already entered is shown either way (images inside images are not looked into).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Images {
    Show,
    Hide,
}

/// A place in the namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Root,
    Snapshots,
    Hosts,
    Host(String),
    /// `hosts/<host>/latest`, a symlink.
    Latest(String),
    Ids,
    Tags,
    Tag(String),
    /// The root directory of a snapshot.
    Snapshot(SnapshotId),
    /// Something inside a snapshot.
    Node {
        snapshot: SnapshotId,
        node: Arc<Node>,
    },
    /// Something inside a disk image: `<image>.d/` next to the image file, and what it holds.
    Image(Arc<ImageEntry>),
}

impl Entry {
    /// The snapshot an entry is inside, if it is.
    pub fn snapshot(&self) -> Option<SnapshotId> {
        match self {
            Entry::Snapshot(id) | Entry::Node { snapshot: id, .. } => Some(*id),
            Entry::Image(i) => Some(i.snapshot()),
            _ => None,
        }
    }
}

/// What `stat` says about an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub kind: NodeKind,
    /// Permission bits (no file-type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    pub nlink: u64,
    pub rdev: u64,
}

struct Named {
    name: String,
    entry: SnapshotEntry,
    host: String,
    tags: Vec<String>,
}

#[derive(Default)]
struct State {
    snaps: Vec<Named>,
    by_id: HashMap<SnapshotId, usize>,
    short_ids: BTreeMap<String, SnapshotId>,
    known: HashSet<SnapshotId>,
    /// When the list last changed as this view saw it: the mtime of the directories that list
    /// snapshots. Readers that cache listings (the kernel, under FUSE) check it, so it moves
    /// forward on every change, a removal or an older snapshot copied in included.
    changed: Time,
}

/// The namespace over a repository. Share it between threads.
pub struct View {
    repo: IndexedRepository,
    state: RwLock<State>,
    min_refresh: Duration,
    last_refresh: Mutex<Instant>,
    image_caches: image::ImageCaches,
}

impl View {
    pub fn new(repo: IndexedRepository) -> Result<View> {
        let view = View {
            repo,
            state: RwLock::new(State::default()),
            min_refresh: Duration::from_millis(250),
            last_refresh: Mutex::new(Instant::now()),
            image_caches: image::ImageCaches::default(),
        };
        view.refresh()?;
        Ok(view)
    }

    pub fn repo(&self) -> &IndexedRepository {
        &self.repo
    }

    /// Re-read the list of snapshots; loads only manifests not seen before.
    pub fn refresh(&self) -> Result<bool> {
        *self.last_refresh.lock() = Instant::now();
        let ids: HashSet<SnapshotId> = self.repo.repo().snapshot_ids()?.into_iter().collect();
        if ids == self.state.read().known {
            return Ok(false);
        }
        let mut entries: Vec<SnapshotEntry> = {
            let st = self.state.read();
            st.snaps.iter().filter(|n| ids.contains(&n.entry.id)).map(|n| n.entry.clone()).collect()
        };
        let have: HashSet<SnapshotId> = entries.iter().map(|e| e.id).collect();
        let mut known = have.clone();
        for id in ids.difference(&have) {
            match self.repo.repo().load_snapshot(id) {
                Ok(snapshot) => {
                    entries.push(SnapshotEntry { id: *id, snapshot });
                    known.insert(*id);
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!("snapshot {} unreadable, left out of the view: {e}", id.short());
                    known.insert(*id);
                }
            }
        }
        crate::repo::sort_snapshots(&mut entries);
        let prev_changed = self.state.read().changed;
        let first = prev_changed == Time::default();
        let newest = entries.iter().map(|e| to_time(e.snapshot.time)).max().unwrap_or_default();
        let changed = if first {
            newest
        } else {
            let after = Time {
                sec: prev_changed.sec + i64::from(prev_changed.nsec == 999_999_999),
                nsec: (prev_changed.nsec + 1) % 1_000_000_000,
            };
            newest.max(after).max(to_time(jiff::Timestamp::now()))
        };
        let mut st = State { known, changed, ..State::default() };
        let mut prev_base = String::new();
        let mut dup = 1;
        for e in entries {
            let base = e.snapshot.time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            let name = if base == prev_base {
                dup += 1;
                format!("{base}-{dup}")
            } else {
                dup = 1;
                base.clone()
            };
            prev_base = base;
            st.by_id.insert(e.id, st.snaps.len());
            st.snaps.push(Named {
                name,
                host: sanitize(&e.snapshot.host),
                tags: e.snapshot.tags.iter().map(|t| sanitize(t)).collect(),
                entry: e,
            });
        }
        let hexes: Vec<(String, SnapshotId)> = st.snaps.iter().map(|n| (n.entry.id.to_hex(), n.entry.id)).collect();
        for (hex, id) in &hexes {
            let mut len = 8;
            while len < 64 && hexes.iter().any(|(h, other)| other != id && h[..len] == hex[..len]) {
                len += 1;
            }
            st.short_ids.insert(hex[..len].to_string(), *id);
        }
        *self.state.write() = st;
        Ok(true)
    }

    /// Refresh if the last one is older than a quarter of a second; errors are logged, the old
    /// list kept.
    pub fn refresh_if_stale(&self) {
        if self.last_refresh.lock().elapsed() < self.min_refresh {
            return;
        }
        if let Err(e) = self.refresh() {
            tracing::warn!("cannot refresh the snapshot list: {e}");
        }
    }

    /// Every snapshot with its directory name, oldest first.
    pub fn snapshots(&self) -> Vec<(String, SnapshotEntry)> {
        self.state.read().snaps.iter().map(|n| (n.name.clone(), n.entry.clone())).collect()
    }

    /// Whether the snapshot is in the view, without copying its manifest.
    pub fn contains(&self, id: &SnapshotId) -> bool {
        self.state.read().by_id.contains_key(id)
    }

    pub fn snapshot(&self, id: &SnapshotId) -> Option<SnapshotEntry> {
        let st = self.state.read();
        st.by_id.get(id).map(|&i| st.snaps[i].entry.clone())
    }

    /// The directory name of a snapshot.
    pub fn snapshot_name(&self, id: &SnapshotId) -> Option<String> {
        let st = self.state.read();
        st.by_id.get(id).map(|&i| st.snaps[i].name.clone())
    }

    /// The snapshot whose hex id starts with `prefix` (any case): `NotFound` if none does,
    /// `InvalidInput` if several do.
    pub fn find_snapshot(&self, prefix: &str) -> Result<SnapshotId> {
        let prefix = prefix.to_ascii_lowercase();
        let st = self.state.read();
        let mut found = st.snaps.iter().map(|n| n.entry.id).filter(|id| id.to_hex().starts_with(&prefix));
        let first = found.next().ok_or_else(|| Error::NotFound(format!("snapshot {prefix}")))?;
        if found.next().is_some() {
            return Err(Error::InvalidInput("snapshot id prefix is ambiguous".into()));
        }
        Ok(first)
    }

    /// Look `name` up in directory `dir`; `images` says whether `<file>.d` may be an image folder.
    pub fn lookup(&self, dir: &Entry, name: &[u8], images: Images) -> Result<Entry> {
        let not_found = || Error::NotFound(String::from_utf8_lossy(name).into_owned());
        let text = std::str::from_utf8(name).ok();
        let st = self.state.read();
        let by_name = |filter: &dyn Fn(&Named) -> bool| {
            text.and_then(|t| st.snaps.iter().find(|n| filter(n) && n.name == t)).map(|n| Entry::Snapshot(n.entry.id))
        };
        match dir {
            Entry::Root => match name {
                b"snapshots" => Ok(Entry::Snapshots),
                b"hosts" => Ok(Entry::Hosts),
                b"ids" => Ok(Entry::Ids),
                b"tags" => Ok(Entry::Tags),
                _ => Err(not_found()),
            },
            Entry::Snapshots => by_name(&|_| true).ok_or_else(not_found),
            Entry::Hosts => text
                .filter(|t| st.snaps.iter().any(|n| n.host == *t))
                .map(|t| Entry::Host(t.to_string()))
                .ok_or_else(not_found),
            Entry::Host(h) => {
                if name == b"latest" && st.snaps.iter().any(|n| &n.host == h) {
                    return Ok(Entry::Latest(h.clone()));
                }
                by_name(&|n| &n.host == h).ok_or_else(not_found)
            }
            Entry::Ids => text.and_then(|t| st.short_ids.get(t)).map(|id| Entry::Snapshot(*id)).ok_or_else(not_found),
            Entry::Tags => text
                .filter(|t| st.snaps.iter().any(|n| n.tags.iter().any(|x| x == t)))
                .map(|t| Entry::Tag(t.to_string()))
                .ok_or_else(not_found),
            Entry::Tag(tag) => by_name(&|n| n.tags.contains(tag)).ok_or_else(not_found),
            Entry::Snapshot(id) => {
                let tree = st.by_id.get(id).map(|&i| st.snaps[i].entry.snapshot.tree).ok_or_else(not_found)?;
                drop(st);
                self.lookup_in_tree(*id, tree, name, images)
            }
            Entry::Node { snapshot, node } => {
                let tree =
                    node.subtree.filter(|_| node.is_dir()).ok_or_else(|| Error::NotFound("not a directory".into()))?;
                drop(st);
                self.lookup_in_tree(*snapshot, tree, name, images)
            }
            Entry::Latest(_) => Err(Error::NotFound("not a directory".into())),
            Entry::Image(i) => {
                drop(st);
                self.image_lookup(i, name)
            }
        }
    }

    fn lookup_in_tree(
        &self,
        snapshot: SnapshotId,
        tree_id: crate::format::TreeId,
        name: &[u8],
        images: Images,
    ) -> Result<Entry> {
        let tree = self.repo.tree(tree_id)?;
        let not_found = || Error::NotFound(String::from_utf8_lossy(name).into_owned());
        match tree.find(name) {
            Some(node) => Ok(Entry::Node { snapshot, node: Arc::new(node.clone()) }),
            None if images == Images::Hide => Err(not_found()),
            None => {
                let base = name.strip_suffix(image::SUFFIX).ok_or_else(not_found)?;
                let node = tree.find(base).ok_or_else(not_found)?;
                self.image_folder(snapshot, tree_id, node).ok_or_else(not_found)
            }
        }
    }

    /// The entries of a directory, sorted by name; with `<file>.d` image folders if `images`
    /// says so.
    pub fn list(&self, dir: &Entry, images: Images) -> Result<Vec<(Vec<u8>, Entry)>> {
        let st = self.state.read();
        let snaps = |filter: &dyn Fn(&Named) -> bool| -> Vec<(Vec<u8>, Entry)> {
            st.snaps
                .iter()
                .filter(|n| filter(n))
                .map(|n| (n.name.clone().into_bytes(), Entry::Snapshot(n.entry.id)))
                .collect()
        };
        let mut out = match dir {
            Entry::Root => {
                [("hosts", Entry::Hosts), ("ids", Entry::Ids), ("snapshots", Entry::Snapshots), ("tags", Entry::Tags)]
                    .into_iter()
                    .map(|(n, e)| (n.as_bytes().to_vec(), e))
                    .collect()
            }
            Entry::Snapshots => snaps(&|_| true),
            Entry::Hosts => {
                let hosts: std::collections::BTreeSet<&String> = st.snaps.iter().map(|n| &n.host).collect();
                hosts.into_iter().map(|h| (h.clone().into_bytes(), Entry::Host(h.clone()))).collect()
            }
            Entry::Host(h) => {
                let mut v = snaps(&|n| &n.host == h);
                if !v.is_empty() {
                    v.push((b"latest".to_vec(), Entry::Latest(h.clone())));
                }
                v
            }
            Entry::Ids => st.short_ids.iter().map(|(s, id)| (s.clone().into_bytes(), Entry::Snapshot(*id))).collect(),
            Entry::Tags => {
                let tags: std::collections::BTreeSet<&String> = st.snaps.iter().flat_map(|n| n.tags.iter()).collect();
                tags.into_iter().map(|t| (t.clone().into_bytes(), Entry::Tag(t.clone()))).collect()
            }
            Entry::Tag(t) => snaps(&|n| n.tags.contains(t)),
            Entry::Snapshot(id) => {
                let tree = st
                    .by_id
                    .get(id)
                    .map(|&i| st.snaps[i].entry.snapshot.tree)
                    .ok_or_else(|| Error::NotFound(id.short()))?;
                drop(st);
                return self.list_tree(*id, tree, images);
            }
            Entry::Node { snapshot, node } => {
                let tree = node
                    .subtree
                    .filter(|_| node.is_dir())
                    .ok_or_else(|| Error::InvalidInput("not a directory".into()))?;
                drop(st);
                return self.list_tree(*snapshot, tree, images);
            }
            Entry::Latest(_) => return Err(Error::InvalidInput("not a directory".into())),
            Entry::Image(i) => {
                drop(st);
                return self.image_list(i);
            }
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// A directory's nodes, and with [`Images::Show`] a `<name>.d` folder after each file that
    /// holds a disk image (unless the directory has an entry of that name).
    fn list_tree(
        &self,
        snapshot: SnapshotId,
        tree_id: crate::format::TreeId,
        images: Images,
    ) -> Result<Vec<(Vec<u8>, Entry)>> {
        let tree = self.repo.tree(tree_id)?;
        let mut out: Vec<(Vec<u8>, Entry)> =
            tree.nodes.iter().map(|n| (n.name.clone(), Entry::Node { snapshot, node: Arc::new(n.clone()) })).collect();
        if images == Images::Hide {
            return Ok(out);
        }
        let folders: Vec<(Vec<u8>, Entry)> = tree
            .nodes
            .iter()
            .filter_map(|n| {
                let name = [&n.name[..], image::SUFFIX].concat();
                if tree.find(&name).is_some() {
                    return None;
                }
                self.image_folder(snapshot, tree_id, n).map(|e| (name, e))
            })
            .collect();
        if !folders.is_empty() {
            out.extend(folders);
            out.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(out)
    }

    /// The `<image>.d` folders that [`View::list`] shows beside the nodes of tree `tree` (the
    /// catalog indexes what is inside images through them). Their entries name no snapshot
    /// ([`Entry::snapshot`] is the zero id): what an image holds depends on its content and its
    /// folder only.
    pub fn image_folders(&self, tree: crate::format::TreeId) -> Result<Vec<(Vec<u8>, Entry)>> {
        let none = SnapshotId(crate::format::Hash([0; 32]));
        Ok(self
            .list_tree(none, tree, Images::Show)?
            .into_iter()
            .filter(|(_, e)| matches!(e, Entry::Image(_)))
            .collect())
    }

    /// The `<name>.d` folder of `file`, a node of folder `dir` (a snapshot's root or a folder in
    /// it), if the file holds a disk image, whatever real entry of that name `dir` has (the
    /// view's own lookups and listings let a real entry win; a caller that hides some entries
    /// weighs the two itself): for a caller that looks up and lists with [`Images::Hide`] and
    /// decides for itself, file by file, whose images to show (reading a file's first bytes
    /// only then). `None` for anything else that
    /// is not a file of a snapshot (a place inside an image holds no image folders).
    pub fn image_folder_of(&self, dir: &Entry, file: &Entry) -> Result<Option<Entry>> {
        let Entry::Node { snapshot, node } = file else { return Ok(None) };
        let tree_id = match dir {
            Entry::Snapshot(_) | Entry::Node { .. } if dir.snapshot() == Some(*snapshot) => self.dir_tree(dir),
            _ => None,
        }
        .ok_or_else(|| Error::InvalidInput("an image folder is looked up in the file's own folder".into()))?;
        let tree = self.repo.tree(tree_id)?;
        if tree.find(&node.name) != Some(&**node) {
            return Err(Error::InvalidInput(format!("{} is not in that folder", node.name_lossy())));
        }
        Ok(self.image_folder(*snapshot, tree_id, node))
    }

    /// Walk down from `from` through `comps` (names), looking each up in the entry reached
    /// before it ([`View::lookup`] with `images`). `visit` is handed every entry reached, in order, and may end the walk there
    /// (`ControlFlow::Break`) before the next lookup: a caller that decides something at each
    /// step (the portal checks access on every ancestor) reads nothing past where it stops.
    /// Returns the last entry reached; a missing name is `NotFound`, `.` and `..` are refused.
    pub fn walk<E: From<Error>>(
        &self,
        from: Entry,
        comps: &[impl AsRef<[u8]>],
        images: Images,
        mut visit: impl FnMut(&Entry) -> std::result::Result<ControlFlow<()>, E>,
    ) -> std::result::Result<Entry, E> {
        let mut e = from;
        for comp in comps {
            let comp = comp.as_ref();
            if comp == b"." || comp == b".." {
                return Err(Error::InvalidInput("`.` and `..` are not allowed".into()).into());
            }
            e = self.lookup(&e, comp, images)?;
            if visit(&e)?.is_break() {
                break;
            }
        }
        Ok(e)
    }

    /// The tree that holds a directory's entries inside a snapshot (a snapshot's root or a
    /// folder), which [`View::lookup`] and [`View::list`] of it read: adapters key what they
    /// derive from a listing by it (trees are content-addressed) and ask whether it is cached.
    /// A folder inside a disk image has none: its lookups and listings read the image, so
    /// `None` here does not mean "nothing to read" for it.
    pub fn dir_tree(&self, e: &Entry) -> Option<crate::format::TreeId> {
        match e {
            Entry::Snapshot(id) => {
                let st = self.state.read();
                st.by_id.get(id).map(|&i| st.snaps[i].entry.snapshot.tree)
            }
            Entry::Image(_) => None,
            _ => self.attr_tree(e),
        }
    }

    /// The tree that [`View::attr`] of `e` reads (to count its subdirectories), if any.
    pub fn attr_tree(&self, e: &Entry) -> Option<crate::format::TreeId> {
        match e {
            Entry::Node { node, .. } => node.subtree.filter(|_| node.is_dir()),
            _ => None,
        }
    }

    /// How many subdirectories a directory entry has: its link count is 2 more, as on ext4
    /// (`find` relies on it). A directory in a snapshot reads its tree for this; a snapshot's
    /// root needs only its manifest (the first components of its source paths), so listings of
    /// snapshots read no tree. `None`: not known without the tree (a source path with one
    /// component, which may be a file), reported as 1 link as btrfs does, which `find` reads as
    /// "unknown".
    fn subdirs(&self, e: &Entry) -> Result<Option<u64>> {
        if let Some(tree) = self.attr_tree(e) {
            return Ok(Some(self.repo.tree(tree)?.nodes.iter().filter(|n| n.is_dir()).count() as u64));
        }
        Ok(Some(match e {
            Entry::Snapshot(id) => {
                let s = self.snapshot(id).ok_or_else(|| Error::NotFound(id.short()))?;
                let mut first = HashSet::new();
                for p in &s.snapshot.paths {
                    let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
                    if comps.len() < 2 {
                        return Ok(None);
                    }
                    first.insert(comps[0]);
                }
                first.len() as u64
            }
            Entry::Node { .. } | Entry::Latest(_) | Entry::Image(_) => 0,
            _ => self.list(e, Images::Hide)?.iter().filter(|(_, e)| !matches!(e, Entry::Latest(_))).count() as u64,
        }))
    }

    /// Attributes of an entry.
    pub fn attr(&self, e: &Entry) -> Result<Attr> {
        if let Entry::Image(i) = e {
            return self.image_attr(i);
        }
        let is_dir = match e {
            Entry::Latest(_) => false,
            Entry::Node { node, .. } => node.is_dir(),
            _ => true,
        };
        let nlink = if is_dir { self.subdirs(e)?.map_or(1, |n| 2 + n) } else { 1 };
        let st = self.state.read();
        let dir = |mtime: Time| Attr {
            kind: NodeKind::Dir,
            perm: 0o555,
            uid: 0,
            gid: 0,
            size: 0,
            mtime,
            ctime: mtime,
            nlink,
            rdev: 0,
        };
        Ok(match e {
            Entry::Root
            | Entry::Snapshots
            | Entry::Hosts
            | Entry::Ids
            | Entry::Tags
            | Entry::Host(_)
            | Entry::Tag(_) => dir(st.changed),
            Entry::Latest(h) => {
                let target = st.snaps.iter().rev().find(|n| &n.host == h).ok_or_else(|| Error::NotFound(h.clone()))?;
                let t = to_time(target.entry.snapshot.time);
                Attr { kind: NodeKind::Symlink, perm: 0o777, size: target.name.len() as u64, nlink: 1, ..dir(t) }
            }
            Entry::Snapshot(id) => {
                let i = *st.by_id.get(id).ok_or_else(|| Error::NotFound(id.short()))?;
                Attr { perm: 0o755, ..dir(to_time(st.snaps[i].entry.snapshot.time)) }
            }
            Entry::Node { node, .. } => Attr {
                kind: node.kind,
                perm: node.mode & 0o7777,
                uid: node.uid,
                gid: node.gid,
                size: node.size,
                mtime: node.mtime,
                ctime: node.ctime,
                nlink: if node.is_dir() { nlink } else { node.nlink.max(1) },
                rdev: node.rdev,
            },
            Entry::Image(_) => unreachable!("answered above"),
        })
    }

    /// The target of a symlink.
    pub fn readlink(&self, e: &Entry) -> Result<Vec<u8>> {
        match e {
            Entry::Latest(h) => {
                let st = self.state.read();
                st.snaps
                    .iter()
                    .rev()
                    .find(|n| &n.host == h)
                    .map(|n| n.name.clone().into_bytes())
                    .ok_or_else(|| Error::NotFound(h.clone()))
            }
            Entry::Node { node, .. } if node.kind == NodeKind::Symlink => Ok(node.target.clone()),
            Entry::Image(i) => self.image_readlink(i),
            _ => Err(Error::InvalidInput("not a symlink".into())),
        }
    }

    /// Resolve a `/`-separated path from the root, image folders shown (for restore and ls of
    /// paths inside images). `latest` is followed where it is a component before the end;
    /// symlinks inside snapshots are not followed.
    pub fn resolve(&self, path: &[u8]) -> Result<Entry> {
        let mut e = Entry::Root;
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
        for (i, comp) in comps.iter().enumerate() {
            if *comp == b"." || *comp == b".." {
                return Err(Error::InvalidInput("`.` and `..` are not allowed".into()));
            }
            e = self.lookup(&e, comp, Images::Show)?;
            if let Entry::Latest(h) = &e
                && i + 1 < comps.len()
            {
                let target = self.readlink(&e)?;
                e = self.lookup(&Entry::Host(h.clone()), &target, Images::Show)?;
            }
        }
        Ok(e)
    }

    /// A reader of a file entry's content.
    pub fn open(&self, e: &Entry) -> Result<FileReader> {
        match e {
            Entry::Node { node, .. } => self.repo.open_file(node),
            Entry::Image(i) => self.image_open(i),
            _ => Err(Error::InvalidInput("not a file".into())),
        }
    }
}

fn to_time(t: jiff::Timestamp) -> Time {
    Time { sec: t.as_second(), nsec: t.subsec_nanosecond() as u32 }
}

/// Make a host or tag usable as one path component.
fn sanitize(s: &str) -> String {
    let s: String = s.chars().map(|c| if c == '/' || c == '\0' { '_' } else { c }).collect();
    match s.as_str() {
        "" | "." | ".." => format!("_{s}"),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{back_up, repo_in};

    /// A walk hands every step to its visitor, stops where the visitor says (looking nothing
    /// further up), and fails on a missing name; snapshots are found by id prefix.
    #[test]
    fn walks_and_snapshot_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/c.txt"), b"c").unwrap();
        let repo = repo_in(dir.path());
        back_up(&repo, &src);
        let view = View::new(repo).unwrap();
        let (_, snap) = view.snapshots().pop().unwrap();
        let root = Entry::Snapshot(snap.id);
        assert_eq!(view.dir_tree(&root), Some(snap.snapshot.tree));
        let path = src.join("a/b/c.txt");
        let comps: Vec<&[u8]> =
            path.as_os_str().as_encoded_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
        let name = |e: &Entry| match e {
            Entry::Node { node, .. } => node.name.clone(),
            _ => Vec::new(),
        };
        let mut seen = Vec::new();
        let end = view
            .walk(root.clone(), &comps, Images::Show, |e| {
                seen.push(name(e));
                Ok::<_, Error>(ControlFlow::Continue(()))
            })
            .unwrap();
        assert_eq!(name(&end), b"c.txt");
        assert_eq!(seen, comps.iter().map(|c| c.to_vec()).collect::<Vec<_>>());
        let mut steps = 0;
        let end = view
            .walk(root.clone(), &comps, Images::Show, |e| {
                steps += 1;
                Ok::<_, Error>(if name(e) == b"a" { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
            })
            .unwrap();
        assert_eq!((name(&end), steps), (b"a".to_vec(), comps.len() - 2));
        assert_eq!(view.dir_tree(&end), view.attr_tree(&end));
        let missing = view.walk(root, &[b"nope"], Images::Show, |_| Ok::<_, Error>(ControlFlow::Continue(())));
        assert!(matches!(missing, Err(Error::NotFound(_))));
        assert_eq!(view.find_snapshot(&snap.id.to_hex()[..8].to_uppercase()).unwrap(), snap.id);
        let other = if snap.id.to_hex().starts_with('0') { "1" } else { "0" };
        assert!(matches!(view.find_snapshot(other), Err(Error::NotFound(_))));
    }

    /// With `Images::Hide` no file is looked at: `<image>.d` is a miss like any missing name,
    /// listings hold the nodes only, and no verdict is made; `image_folder_of` then shows the
    /// folder of one file on request (none for a file shadowed by a real `.d` entry), and
    /// `Images::Show` shows what it always did.
    #[test]
    fn hidden_image_folders_read_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("b.qcow2.d")).unwrap();
        // A qcow2 header, enough for detection; distinct bytes after it for each file.
        let qcow = |seed: u8| {
            let mut v = b"QFI\xfb\0\0\0\x03".to_vec();
            v.extend((0..(64u32 << 10)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed));
            v
        };
        std::fs::write(src.join("a.qcow2"), qcow(1)).unwrap();
        std::fs::write(src.join("b.qcow2"), qcow(2)).unwrap();
        std::fs::write(src.join("b.qcow2.d/real"), b"a real folder of that name").unwrap();
        std::fs::write(src.join("plain.txt"), b"text").unwrap();
        let repo = repo_in(dir.path());
        back_up(&repo, &src);
        let view = View::new(repo).unwrap();
        let (_, snap) = view.snapshots().pop().unwrap();
        let comps: Vec<&[u8]> =
            src.as_os_str().as_encoded_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
        let folder = go_to(&view, snap.id, &comps, Images::Hide).unwrap();
        let names = |images| -> Vec<String> {
            let list = view.list(&folder, images).unwrap();
            list.into_iter().map(|(n, _)| String::from_utf8(n).unwrap()).collect()
        };
        let verdicts = || view.image_caches.verdicts();

        assert_eq!(names(Images::Hide), ["a.qcow2", "b.qcow2", "b.qcow2.d", "plain.txt"]);
        assert!(matches!(view.lookup(&folder, b"a.qcow2.d", Images::Hide), Err(Error::NotFound(_))));
        assert!(matches!(view.lookup(&folder, b"b.qcow2.d", Images::Hide), Ok(Entry::Node { .. })), "a real entry");
        let mut through = comps.clone();
        through.push(b"a.qcow2.d");
        assert!(matches!(go_to(&view, snap.id, &through, Images::Hide), Err(Error::NotFound(_))));
        assert_eq!(verdicts(), 0, "no file was read to decide anything");

        let file = |name: &[u8]| view.lookup(&folder, name, Images::Hide).unwrap();
        let a = view.image_folder_of(&folder, &file(b"a.qcow2")).unwrap().expect("a.qcow2 is an image");
        assert!(matches!(&a, Entry::Image(i) if i.name() == b"a.qcow2.d"));
        assert_eq!(verdicts(), 1);
        let b = view.image_folder_of(&folder, &file(b"b.qcow2")).unwrap();
        assert!(b.is_some(), "beside a real b.qcow2.d too: the caller weighs the two");
        assert_eq!(view.image_folder_of(&folder, &file(b"plain.txt")).unwrap(), None);
        assert!(view.image_folder_of(&Entry::Snapshot(snap.id), &file(b"a.qcow2")).is_err(), "not its folder");

        assert_eq!(names(Images::Show), ["a.qcow2", "a.qcow2.d", "b.qcow2", "b.qcow2.d", "plain.txt"]);
        assert_eq!(view.lookup(&folder, b"a.qcow2.d", Images::Show).unwrap(), a);
        assert_eq!(go_to(&view, snap.id, &through, Images::Show).unwrap(), a);
    }

    fn go_to(view: &View, snap: SnapshotId, comps: &[&[u8]], images: Images) -> Result<Entry> {
        view.walk(Entry::Snapshot(snap), comps, images, |_| Ok::<_, Error>(ControlFlow::Continue(())))
    }

    /// A request that panics while it holds the view's state does not fail every later one.
    #[test]
    fn a_panic_under_the_view_lock_does_not_poison_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let repo = repo_in(dir.path());
        back_up(&repo, &src);
        let view = Arc::new(View::new(repo).unwrap());
        let v = view.clone();
        let panicked = std::thread::spawn(move || {
            let _state = v.state.write();
            panic!("a request fails")
        });
        assert!(panicked.join().is_err());
        assert_eq!(view.snapshots().len(), 1);
        assert_eq!(view.list(&Entry::Hosts, Images::Show).unwrap().len(), 1);
    }
}
