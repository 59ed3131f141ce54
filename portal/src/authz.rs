//! Who sees what. One [`Policy`], applied identically by every endpoint through
//! [`Policy::resolve`] (a path in a snapshot) and [`Policy::children`] (a folder's entries).
//!
//! A node is the subject's ("visible") if any configured rule says so:
//! - `owner`: the node's uid is the user's uid number;
//! - `readable`: the user could have read it at backup time: every folder above it searchable
//!   (x) and the node itself readable (r; folders r and x), by uid, gid and group memberships
//!   against the mode bits, or the POSIX access ACL when the node has one;
//! - `home`: the path lies in the user's home directory, rewritten to backup paths;
//! - `host`: the snapshot's host is one of the user's machines.
//!
//! A folder that is not visible itself is shown only as a way through ("passthrough": name only,
//! no owner, size or time) if something visible lies below it. Anything else is answered exactly
//! like a path that does not exist. What lies below a folder is read from summaries made for
//! every tree of a snapshot before any request decides anything in it ([`crate::reach`]): the
//! decision for a hidden folder costs what it costs for a missing name, whatever is below it.
//!
//! Disk images: the view is asked for `<file>.d` image folders ([`Images::Show`]) only for
//! subjects who see inside every image (admins). For everyone else it looks up and lists plain
//! nodes ([`Images::Hide`]), reading no file's content; under `images = "image-readers"` the
//! folder of a file is asked for ([`View::image_folder_of`]) only once the file is decided to
//! be the subject's. So a hidden file's `.d` costs what a missing name costs, and a listing
//! reads no hidden file.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use parking_lot::Mutex;

use rewind_catalog::Scope;
use rewind_catalog::access::{ACL_XATTR, R, Reader, X};
use rewind_store::{Entry, IMAGE_FOLDER_SUFFIX, Images, Node, NodeKind, SnapshotId, TreeId, View};

use crate::auth::Identity;
use crate::config::{AuthzConfig, ImageAccess, Rule};
use crate::error::{ApiError, ApiResult};

/// The effective user, reduced to what the rules look at.
#[derive(Clone, Debug)]
pub struct Subject {
    pub all: bool,
    /// uid (for `owner` and `readable`) and gids (for `readable`).
    pub reader: Option<Reader>,
    /// Home directories as backup paths (absolute, no trailing `/`).
    pub homes: Vec<Vec<u8>>,
    pub hosts: Vec<String>,
    key: Arc<str>,
}

impl Subject {
    /// A subject that sees everything (admins).
    pub fn everything() -> Subject {
        Subject { all: true, reader: None, homes: vec![], hosts: vec![], key: Arc::from("*") }
    }

    fn uid(&self) -> Option<u32> {
        self.reader.as_ref().map(|r| r.uid)
    }
}

/// Where a walk down a snapshot stands.
#[derive(Clone, Debug)]
pub struct Walk {
    /// Absolute path of the current node inside the snapshot (`""` is the root).
    pub path: Vec<u8>,
    /// Every folder down to and including this one is searchable by the subject.
    pub searchable: bool,
    /// The `host` rule grants the whole snapshot.
    pub host_grants: bool,
}

/// Folders already walked during one request.
#[derive(Default)]
pub struct WalkMemo(HashMap<FolderKey, Option<(Entry, Walk)>>);

/// A folder of a snapshot, by its path's bytes.
type FolderKey = (SnapshotId, Vec<u8>);

/// How the subject may see a resolved node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The subject's own: full metadata, downloadable.
    Visible,
    /// A folder shown only because something visible lies below it.
    Passthrough,
}

/// A path resolved for a subject.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub snapshot: SnapshotId,
    /// `None` for the snapshot's root.
    pub node: Option<Arc<Node>>,
    pub entry: Entry,
    pub walk: Walk,
    pub access: Access,
}

/// The rules of the configuration, with a memo of "does this folder lead to anything visible".
pub struct Policy {
    rules: Vec<Rule>,
    cfg: AuthzConfig,
    /// Only one realm is configured (`authz.hosts` keys may then omit it).
    single_realm: bool,
    memo: Mutex<HashMap<MemoKey, bool>>,
    /// Decisions of [`Policy::visible_path`] across requests. Every input is in the key: the
    /// subject's key spells out everything the rules read of it, and a snapshot never changes.
    decisions: Mutex<lru::LruCache<DecisionKey, bool>>,
    /// What lies below each folder, per rule, for every user at once.
    reach: crate::reach::Reach,
}

type DecisionKey = (Arc<str>, SnapshotId, Vec<u8>);

/// Decisions kept: a search or deleted page checks up to hundreds of paths, and the same
/// users ask again and again (~150 bytes an entry: ~10 MiB).
const DECISIONS: usize = 1 << 16;

/// (subject, folder, every folder above searchable) -> leads to something visible.
type MemoKey = (Arc<str>, TreeId, bool);

// About 100 bytes an entry: a bound of ~25 MiB.
const MEMO_MAX: usize = 1 << 18;

impl Policy {
    pub fn new(cfg: &AuthzConfig, realms: usize) -> Policy {
        Policy {
            rules: cfg.rules.clone(),
            cfg: cfg.clone(),
            single_realm: realms == 1,
            memo: Mutex::new(HashMap::new()),
            decisions: Mutex::new(lru::LruCache::new(std::num::NonZeroUsize::new(DECISIONS).expect("nonzero"))),
            reach: crate::reach::Reach::default(),
        }
    }

    /// Sum up what lies below every folder of a snapshot (its tree `root`), unless done: the
    /// first request on a snapshot waits for it, whatever it asks.
    pub fn prepare(&self, view: &View, root: TreeId) -> ApiResult<()> {
        self.reach.ensure(view, root)
    }

    fn has(&self, r: Rule) -> bool {
        self.rules.contains(&r)
    }

    /// Whether the view shows the subject image folders by itself: only to those who see
    /// inside every image. For the others nothing is read to find images until a file is
    /// decided to be theirs ([`Policy::lookup`], [`Policy::children`]).
    fn images(&self, s: &Subject) -> Images {
        if s.all { Images::Show } else { Images::Hide }
    }

    /// Whether the subject may see inside the images of files that are theirs, beyond admins.
    fn reads_own_images(&self, s: &Subject) -> bool {
        !s.all && self.cfg.images == ImageAccess::ImageReaders
    }

    /// Look `name` up in the folder `dir` reached with `walk`, for the subject: `None` if it is
    /// not there. Image folders as the subject may see them: `<file>.d` is looked for beside a
    /// file only after the file is decided to be the subject's, so that a hidden file's image
    /// folder is answered as a missing name is, without reading the file.
    fn lookup(&self, view: &View, s: &Subject, walk: &Walk, dir: &Entry, name: &[u8]) -> ApiResult<Option<Entry>> {
        if let Some(e) = found(view.lookup(dir, name, self.images(s)))? {
            // A real entry wins, unless it is hidden from the subject and the name is that of
            // the image folder of a file of theirs: then their folder is what they see (a hidden
            // `X.d` must not take their image folder's place, which would tell that it exists).
            let hidden = || -> ApiResult<bool> { Ok(self.step(view, s, walk, &e)?.is_none()) };
            if !self.reads_own_images(s) || !name.ends_with(IMAGE_FOLDER_SUFFIX) || !hidden()? {
                return Ok(Some(e));
            }
        }
        if !self.reads_own_images(s) || !matches!(dir, Entry::Snapshot(_) | Entry::Node { .. }) {
            return Ok(None);
        }
        let Some(base) = name.strip_suffix(IMAGE_FOLDER_SUFFIX) else { return Ok(None) };
        let Some(file) = found(view.lookup(dir, base, Images::Hide))? else { return Ok(None) };
        let Entry::Node { node, .. } = &file else { return Ok(None) };
        let w = self.child_walk(s, walk, node);
        if !self.visible(s, walk, &w, node) {
            return Ok(None);
        }
        self.own_image_folder(view, dir, &file)
    }

    /// The image folder of a file already decided to be the subject's (under `image-readers`),
    /// if its image stands alone: an image that refers to other files (a backing file, extents)
    /// shows what those files hold, which need not be the subject's, so it is opened for admins
    /// only. Whether it stands alone is read from the file's own bytes, nothing else.
    fn own_image_folder(&self, view: &View, dir: &Entry, file: &Entry) -> ApiResult<Option<Entry>> {
        match view.image_folder_of(dir, file)? {
            Some(f) if view.image_stands_alone(&f)? => Ok(Some(f)),
            _ => Ok(None),
        }
    }

    /// The subject for an identity (not for admins: see [`Subject::everything`]).
    pub fn subject(&self, id: &Identity) -> Subject {
        let homes: Vec<Vec<u8>> =
            if self.has(Rule::Home) { id.home.iter().filter_map(|h| self.rewrite_home(h)).collect() } else { vec![] };
        let mut hosts = if self.has(Rule::Host) { id.hosts.clone() } else { vec![] };
        if self.has(Rule::Host) {
            hosts.extend(self.cfg.user_hosts(&id.realm, &id.login, self.single_realm));
        }
        hosts.sort();
        hosts.dedup();
        let uid = if self.has(Rule::Owner) || self.has(Rule::Readable) { id.uid } else { None };
        let mut gids = id.gids.clone();
        gids.sort();
        gids.dedup();
        let key = format!("{uid:?}|{gids:?}|{homes:?}|{hosts:?}|{}", self.has(Rule::Readable));
        let reader = uid.map(|uid| Reader { uid, gids });
        Subject { all: false, reader, homes, hosts, key: Arc::from(key) }
    }

    /// The catalog scope of a subject: the same rules, as the catalog narrows queries by them
    /// (`None` for a subject that sees everything).
    pub fn scope(&self, s: &Subject) -> Option<Scope> {
        if s.all {
            return None;
        }
        Some(Scope {
            owner: if self.has(Rule::Owner) { s.uid() } else { None },
            paths: s.homes.clone(),
            hosts: s.hosts.clone(),
            reader: if self.has(Rule::Readable) { s.reader.clone() } else { None },
        })
    }

    /// A home directory as a backup path; `None` for homes that are not absolute or are `/`.
    fn rewrite_home(&self, home: &str) -> Option<Vec<u8>> {
        let home = normalize_abs(home)?;
        let mut out = home.clone();
        for rw in &self.cfg.home_rewrite {
            let Some(from) = normalize_abs(&rw.from) else { continue };
            if home == from || home.starts_with(&format!("{from}/")) {
                let to = normalize_abs(&rw.to).unwrap_or_default();
                out = format!("{to}{}", &home[from.len()..]);
                break;
            }
        }
        if out.is_empty() { None } else { Some(out.into_bytes()) }
    }

    /// The walk at a snapshot's root.
    pub fn root_walk(&self, s: &Subject, host: &str) -> Walk {
        let host_grants = s.all || (self.has(Rule::Host) && s.hosts.iter().any(|h| h == host));
        Walk { path: Vec::new(), searchable: true, host_grants }
    }

    /// The walk one level down, into `node`.
    pub fn child_walk(&self, s: &Subject, parent: &Walk, node: &Node) -> Walk {
        let mut path = parent.path.clone();
        path.push(b'/');
        path.extend_from_slice(&node.name);
        let searchable = parent.searchable && node.is_dir() && self.has(Rule::Readable) && permits(s, node, X);
        Walk { path, searchable, host_grants: parent.host_grants }
    }

    /// Whether `node`, reached with `walk` (its own walk), is the subject's.
    pub fn visible(&self, s: &Subject, parent: &Walk, walk: &Walk, node: &Node) -> bool {
        if s.all || walk.host_grants {
            return true;
        }
        if self.has(Rule::Owner) && s.uid() == Some(node.uid) {
            return true;
        }
        if self.has(Rule::Readable) && parent.searchable {
            let want = if node.is_dir() { R | X } else { R };
            if permits(s, node, want) {
                return true;
            }
        }
        if self.has(Rule::Home) && s.homes.iter().any(|h| under(&walk.path, h)) {
            return true;
        }
        false
    }

    /// Whether a folder (a snapshot's root or a folder in it) leads to something visible: from
    /// the summary of its tree (a lookup down the path for a home below it), not from what is
    /// below.
    pub fn leads(&self, view: &View, s: &Subject, walk: &Walk, dir: &Entry) -> ApiResult<bool> {
        if s.all || walk.host_grants {
            return Ok(true);
        }
        let Some(tree) = view.dir_tree(dir) else { return Ok(false) };
        let summary = self.reach.summary(view, tree)?;
        if self.has(Rule::Owner) && s.uid().is_some_and(|u| summary.owns(u)) {
            return Ok(true);
        }
        if self.has(Rule::Home) {
            for h in &s.homes {
                if (under(&walk.path, h) && !summary.is_empty())
                    || (ancestor(&walk.path, h) && exists_below(view, dir, &h[walk.path.len() + 1..])?)
                {
                    return Ok(true);
                }
            }
        }
        if self.has(Rule::Readable)
            && walk.searchable
            && let Some(reader) = &s.reader
        {
            match self.reach.readable(&summary, reader) {
                Some(found) => return Ok(found),
                // Too many ways below to keep: decided by a walk.
                None => return self.leads_by_walk(view, s, walk, dir),
            }
        }
        Ok(false)
    }

    /// [`Policy::leads`] by a walk of what is below (for the rare folder whose summary keeps no
    /// ways), memoized per subject and tree.
    fn leads_by_walk(&self, view: &View, s: &Subject, walk: &Walk, dir: &Entry) -> ApiResult<bool> {
        if s.all || walk.host_grants {
            return Ok(true);
        }
        let Some(tree) = view.dir_tree(dir) else { return Ok(false) };
        // Below a folder that is on no home's way, only tree content matters: memoize by tree id.
        let home_way = s.homes.iter().any(|h| ancestor(&walk.path, h));
        let key = (s.key.clone(), tree, walk.searchable);
        if !home_way && let Some(&v) = self.memo.lock().get(&key) {
            return Ok(v);
        }
        let mut found = false;
        for (_, e) in view.list(dir, Images::Hide)? {
            let Entry::Node { node: n, .. } = &e else { continue };
            let w = self.child_walk(s, walk, n);
            if self.visible(s, walk, &w, n) {
                found = true;
                break;
            }
            if is_folder(n) && self.leads_by_walk(view, s, &w, &e)? {
                found = true;
                break;
            }
        }
        if !home_way {
            let mut m = self.memo.lock();
            if m.len() >= MEMO_MAX {
                m.clear();
            }
            m.insert(key, found);
        }
        Ok(found)
    }

    /// How the node of `entry` is shown, if at all.
    pub fn access(
        &self,
        view: &View,
        s: &Subject,
        parent: &Walk,
        walk: &Walk,
        entry: &Entry,
    ) -> ApiResult<Option<Access>> {
        let Entry::Node { node, .. } = entry else { return Ok(None) };
        if self.visible(s, parent, walk, node) {
            return Ok(Some(Access::Visible));
        }
        if is_folder(node) && self.leads(view, s, walk, entry)? {
            return Ok(Some(Access::Passthrough));
        }
        Ok(None)
    }

    /// Resolve `path` (already checked by [`crate::paths::clean_bytes`]) in a snapshot for a subject.
    /// Missing and not-visible are the same [`ApiError::NotFound`].
    ///
    /// Each step is looked up ([`Policy::lookup`]) and its node checked here (every ancestor,
    /// as it is reached), and the walk stops at the first that is neither visible nor a way
    /// through, before looking up anything below it: a hidden folder costs what a missing name
    /// costs. A step into a disk image is taken only if [`Policy::sees_inside`] allows it, so
    /// nothing inside an image is looked up for a subject who may not see inside it, and no
    /// hidden file is read to find out whether it is an image.
    pub fn resolve(&self, view: &View, s: &Subject, snapshot: SnapshotId, comps: &[Vec<u8>]) -> ApiResult<Resolved> {
        let snap = view.snapshot(&snapshot).ok_or(ApiError::NotFound)?;
        self.prepare(view, snap.snapshot.tree)?;
        let root = Entry::Snapshot(snapshot);
        let mut walk = self.root_walk(s, &snap.snapshot.host);
        let mut node: Option<Arc<Node>> = None;
        let mut access = if self.leads(view, s, &walk, &root)? { Some(Access::Passthrough) } else { None };
        if walk.host_grants {
            access = Some(Access::Visible);
        }
        if access.is_none() {
            return Err(ApiError::NotFound);
        }
        let mut entry = root;
        for comp in comps {
            if comp.as_slice() == b"." || comp.as_slice() == b".." {
                return Err(ApiError::BadRequest("`.` and `..` are not allowed".into()));
            }
            let next = self.lookup(view, s, &walk, &entry, comp)?.ok_or(ApiError::NotFound)?;
            let Some((n, w, a)) = self.step(view, s, &walk, &next)? else {
                access = None;
                break;
            };
            (access, node, walk, entry) = (Some(a), Some(n), w, next);
        }
        let access = access.ok_or(ApiError::NotFound)?;
        Ok(Resolved { snapshot, node, entry, walk, access })
    }

    /// Whether the node at `path` is itself the subject's (not merely a way through), by the
    /// same rules as [`Policy::resolve`] without asking what lies below the folders on the way:
    /// for search results, many in a row. Folders on the way are looked up in the view once per
    /// request and remembered in `memo`.
    pub fn visible_path(
        &self,
        view: &View,
        s: &Subject,
        snapshot: SnapshotId,
        path: &[u8],
        memo: &mut WalkMemo,
    ) -> ApiResult<bool> {
        let path = path.strip_suffix(b"/").unwrap_or(path);
        if !view.contains(&snapshot) {
            return Ok(false);
        }
        let key = (s.key.clone(), snapshot, path.to_vec());
        if let Some(&v) = self.decisions.lock().get(&key) {
            return Ok(v);
        }
        let v = self.decide_path(view, s, snapshot, path, memo)?;
        self.decisions.lock().put(key, v);
        Ok(v)
    }

    fn decide_path(
        &self,
        view: &View,
        s: &Subject,
        snapshot: SnapshotId,
        path: &[u8],
        memo: &mut WalkMemo,
    ) -> ApiResult<bool> {
        let Some((parent, name)) = rsplit_path(path) else { return Ok(false) };
        if name.is_empty() || name == b"." || name == b".." {
            return Ok(false);
        }
        let Some((dir, walk)) = self.dir_walk(view, s, snapshot, parent, memo)? else { return Ok(false) };
        // A place inside a disk image is no node: search results there are for admins only,
        // who are not asked.
        let Some(Entry::Node { node, .. }) = found(view.lookup(&dir, name, Images::Hide))? else { return Ok(false) };
        let w = self.child_walk(s, &walk, &node);
        Ok(self.visible(s, &walk, &w, &node))
    }

    fn dir_walk(
        &self,
        view: &View,
        s: &Subject,
        snapshot: SnapshotId,
        dir: &[u8],
        memo: &mut WalkMemo,
    ) -> ApiResult<Option<(Entry, Walk)>> {
        let key = (snapshot, dir.to_vec());
        if let Some(v) = memo.0.get(&key) {
            return Ok(v.clone());
        }
        let v = match rsplit_path(dir) {
            None if dir.is_empty() => {
                view.snapshot(&snapshot).map(|e| (Entry::Snapshot(snapshot), self.root_walk(s, &e.snapshot.host)))
            }
            None => None,
            Some((parent, name)) => match self.dir_walk(view, s, snapshot, parent, memo)? {
                None => None,
                Some(_) if name.is_empty() || name == b"." || name == b".." => None,
                Some((parent, walk)) => match found(view.lookup(&parent, name, Images::Hide))? {
                    Some(e) => match &e {
                        Entry::Node { node, .. } if is_folder(node) => {
                            let w = self.child_walk(s, &walk, node);
                            Some((e, w))
                        }
                        _ => None,
                    },
                    None => None,
                },
            },
        };
        memo.0.insert(key, v.clone());
        Ok(v)
    }

    /// The entries of a resolved folder that the subject may see, each resolved, by name.
    /// Image folders as [`Policy::lookup`] finds them: only files decided to be the subject's
    /// are looked at.
    pub fn children(&self, view: &View, s: &Subject, dir: &Resolved) -> ApiResult<Vec<Resolved>> {
        if let Some(tree) = view.dir_tree(&Entry::Snapshot(dir.snapshot)) {
            self.prepare(view, tree)?;
        }
        let list = view.list(&dir.entry, self.images(s))?;
        let mut out = Vec::new();
        let mut folders = Vec::new();
        for (_, entry) in list {
            if let Some((node, walk, access)) = self.step(view, s, &dir.walk, &entry)? {
                if self.reads_own_images(s)
                    && access == Access::Visible
                    && let Some(f) = self.own_image_folder(view, &dir.entry, &entry)?
                {
                    folders.push(f);
                }
                out.push(Resolved { snapshot: dir.snapshot, node: Some(node), entry, walk, access });
            }
        }
        if !folders.is_empty() {
            // A real entry of the same name that the subject sees wins; a hidden one is not
            // there for them, and their image folder takes the name.
            let names: std::collections::HashSet<Vec<u8>> =
                out.iter().filter_map(|r| r.node.as_ref().map(|n| n.name.clone())).collect();
            for entry in folders {
                if let Entry::Image(i) = &entry
                    && names.contains(i.name())
                {
                    continue;
                }
                if let Some((node, walk, access)) = self.step(view, s, &dir.walk, &entry)? {
                    out.push(Resolved { snapshot: dir.snapshot, node: Some(node), entry, walk, access });
                }
            }
            out.sort_by(|a, b| a.node.as_ref().map(|n| &n.name).cmp(&b.node.as_ref().map(|n| &n.name)));
        }
        Ok(out)
    }

    /// One step down from a folder reached with `parent`, as [`Policy::resolve`] and
    /// [`Policy::children`] take it: the node of `entry`, its walk, and how it is shown; `None`
    /// if it is not. A node is decided by the rules; a place inside a disk image only by
    /// [`Policy::sees_inside`] (the `<image>.d` folder by whether its image file is seen, what
    /// is further inside on the way in), and then it is visible.
    fn step(
        &self,
        view: &View,
        s: &Subject,
        parent: &Walk,
        entry: &Entry,
    ) -> ApiResult<Option<(Arc<Node>, Walk, Access)>> {
        match entry {
            Entry::Node { node, .. } => {
                let walk = self.child_walk(s, parent, node);
                Ok(self.access(view, s, parent, &walk, entry)?.map(|a| (node.clone(), walk, a)))
            }
            Entry::Image(i) if self.sees_inside(s, parent, i) => {
                let node = Arc::new(view.image_node(i)?);
                let walk = self.child_walk(s, parent, &node);
                Ok(Some((node, walk, Access::Visible)))
            }
            _ => Ok(None),
        }
    }

    /// Whether the subject may see inside the disk image that `entry` is in, from a folder
    /// reached with `walk`: admins, and with `images = "image-readers"` whoever sees the image
    /// file itself. Inside an image (`walk` is already in it) the answer was given on the way in.
    fn sees_inside(&self, s: &Subject, walk: &Walk, entry: &rewind_store::ImageEntry) -> bool {
        if s.all {
            return true;
        }
        if self.cfg.images != ImageAccess::ImageReaders {
            return false;
        }
        if !entry.inner_path().is_empty() {
            return true;
        }
        // `<image>.d` itself: the image file is its sibling, seen from the same folder.
        let image = entry.image();
        let w = self.child_walk(s, walk, image);
        self.visible(s, walk, &w, image)
    }

    /// Whether the subject sees anything in a snapshot.
    pub fn snapshot_visible(&self, view: &View, s: &Subject, snapshot: SnapshotId) -> ApiResult<bool> {
        match self.resolve(view, s, snapshot, &[]) {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether `rel` (a relative path, `a/b`) names something below the folder `dir`: a lookup
/// per component, whatever else is there.
fn exists_below(view: &View, dir: &Entry, rel: &[u8]) -> ApiResult<bool> {
    let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    // Only the snapshot's own folders (no image folders, and no file read to find them): a home
    // inside a disk image leads nowhere (what is inside an image is decided by `sees_inside`,
    // not by the rules).
    let walked = view.walk(dir.clone(), &comps, Images::Hide, |_| Ok(ControlFlow::Continue(())));
    Ok(found(walked)?.is_some())
}

/// A lookup's entry, `None` for a name that is not there.
fn found(r: rewind_store::Result<Entry>) -> ApiResult<Option<Entry>> {
    match r {
        Ok(e) => Ok(Some(e)),
        Err(rewind_store::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A folder with entries to look into (a node's tree, as the view lists it).
fn is_folder(n: &Node) -> bool {
    n.kind == NodeKind::Dir && n.subtree.is_some()
}

/// `/a/b/c` -> (`/a/b`, `c`); `None` without a `/`.
fn rsplit_path(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = p.iter().rposition(|&b| b == b'/')?;
    Some((&p[..at], &p[at + 1..]))
}

/// `/a//b/` -> `/a/b`; `None` for relative paths or `..`.
fn normalize_abs(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut out = String::new();
    for c in p.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return None;
        }
        out.push('/');
        out.push_str(c);
    }
    Some(out)
}

/// `path` is `base` or below it.
fn under(path: &[u8], base: &[u8]) -> bool {
    path == base || (path.len() > base.len() && path.starts_with(base) && path[base.len()] == b'/')
}

/// `path` is a proper ancestor of `target` (the root `""` is everyone's).
fn ancestor(path: &[u8], target: &[u8]) -> bool {
    target.len() > path.len() && target.starts_with(path) && target[path.len()] == b'/'
}

/// POSIX access check of `want` (bits of r=4, w=2, x=1) for the subject on a node, by its mode
/// or by its `system.posix_acl_access` when it has one (the catalog's check: both always agree).
pub fn permits(s: &Subject, node: &Node, want: u32) -> bool {
    s.reader
        .as_ref()
        .is_some_and(|r| rewind_catalog::access::permits(r, node.uid, node.gid, node.mode, node.xattr(ACL_XATTR), want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rewrite;

    #[test]
    fn homes_and_paths() {
        let cfg = AuthzConfig {
            rules: vec![Rule::Home],
            home_rewrite: vec![Rewrite { from: "/home".into(), to: "/srv/corpus/users/".into() }],
            hosts: std::collections::BTreeMap::new(),
            images: ImageAccess::Admins,
        };
        let p = Policy::new(&cfg, 1);
        assert_eq!(p.rewrite_home("/home/alice").unwrap(), b"/srv/corpus/users/alice");
        assert_eq!(p.rewrite_home("/homes/x").unwrap(), b"/homes/x", "component-wise prefix");
        assert!(p.rewrite_home("relative").is_none());
        assert!(p.rewrite_home("/home/../etc").is_none());
        assert!(under(b"/a/b", b"/a/b"));
        assert!(under(b"/a/b/c", b"/a/b"));
        assert!(!under(b"/a/bc", b"/a/b"));
        assert!(ancestor(b"", b"/a"));
        assert!(ancestor(b"/a", b"/a/b"));
        assert!(!ancestor(b"/a/b", b"/a/b"));
        assert!(!ancestor(b"/a/b", b"/a/bc"));
    }
}
