//! Randomized histories checked against a brute-force walk over every snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rewind_store::{ChunkId, Hash, Node, NodeKind, SnapshotId, Time, Tree, TreeId};

use crate::*;

/// A file system state: path (no leading slash) -> (kind, uid, content seed, mtime).
type Fs = BTreeMap<String, (NodeKind, u32, u64, i64)>;

/// Access of the paths that have other than the default (mode 0644 for files, 0755 for
/// folders, gid = uid, no ACL): path -> (mode, gid, ACL number into [`acl_value`], 0 for none).
type Perms = BTreeMap<String, (u32, u32, u8)>;

struct Store {
    trees: HashMap<TreeId, Arc<Tree>>,
}

/// A few POSIX access ACLs (in the kernel's xattr form) for the scope tests.
fn acl_value(n: u8) -> Vec<u8> {
    // (tag, perm, id): user_obj rw, a named user or group, mask, other.
    let entries: &[(u16, u16, u32)] = match n {
        1 => &[(0x01, 6, u32::MAX), (0x02, 4, 1001), (0x04, 0, u32::MAX), (0x10, 4, u32::MAX), (0x20, 0, u32::MAX)],
        2 => &[(0x01, 7, u32::MAX), (0x04, 0, u32::MAX), (0x08, 5, 77), (0x10, 5, u32::MAX), (0x20, 0, u32::MAX)],
        _ => &[(0x01, 6, u32::MAX), (0x02, 4, 1002), (0x04, 4, u32::MAX), (0x10, 0, u32::MAX), (0x20, 4, u32::MAX)],
    };
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(t, p, id) in entries {
        v.extend(t.to_le_bytes());
        v.extend(p.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// The access of `path` in `perms`, or the default one.
fn perms_of(perms: &Perms, path: &str, kind: NodeKind, uid: u32) -> (u32, u32, u8) {
    perms.get(path).copied().unwrap_or((if kind == NodeKind::Dir { 0o755 } else { 0o644 }, uid, 0))
}

impl Store {
    fn put(&mut self, fs: &Fs, prefix: &str) -> TreeId {
        self.put_with(fs, &Perms::new(), prefix)
    }

    fn put_with(&mut self, fs: &Fs, perms: &Perms, prefix: &str) -> TreeId {
        // Direct children of `prefix`.
        let mut nodes = Vec::new();
        for (path, &(kind, uid, seed, mtime)) in fs {
            let Some(rest) =
                (if prefix.is_empty() { Some(path.as_str()) } else { path.strip_prefix(&format!("{prefix}/")) })
            else {
                continue;
            };
            if rest.contains('/') {
                continue;
            }
            let mut n = Node::new(rest.as_bytes().to_vec(), kind);
            let (mode, gid, acl) = perms_of(perms, path, kind, uid);
            n.uid = uid;
            n.gid = gid;
            n.mode = mode;
            if acl != 0 {
                n.xattrs.push(rewind_store::Xattr { name: crate::access::ACL_XATTR.to_vec(), value: acl_value(acl) });
            }
            n.mtime = Time { sec: mtime, nsec: 0 };
            match kind {
                NodeKind::File => {
                    n.size = seed % 1000;
                    n.content = vec![ChunkId(Hash::of(&seed.to_le_bytes()))];
                }
                NodeKind::Symlink => n.target = format!("t{seed}").into_bytes(),
                NodeKind::Dir => n.subtree = Some(self.put_with(fs, perms, path)),
                _ => {}
            }
            nodes.push(n);
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let tree = Tree { nodes };
        let id = Tree::id(&tree.encode());
        self.trees.insert(id, Arc::new(tree));
        id
    }
}

/// The workspace's seeded test generator (ChaCha8, as in the end-to-end tests).
struct Rng(rand_chacha::ChaCha8Rng);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
    fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n.max(1))
    }
}

fn dirs_of(fs: &Fs) -> Vec<String> {
    fs.iter().filter(|(_, v)| v.0 == NodeKind::Dir).map(|(k, _)| k.clone()).collect()
}

fn mkdirs(fs: &mut Fs, path: &str, uid: u32, mtime: i64) {
    let mut acc = String::new();
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts[..parts.len() - 1] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(p);
        fs.entry(acc.clone()).or_insert((NodeKind::Dir, uid, 0, mtime));
    }
}

fn step(fs: &mut Fs, rng: &mut Rng, generation: i64) {
    let files: Vec<String> = fs.iter().filter(|(_, v)| v.0 != NodeKind::Dir).map(|(k, _)| k.clone()).collect();
    for _ in 0..3 {
        if files.is_empty() {
            break;
        }
        let f = &files[rng.below(files.len() as u64) as usize];
        if let Some(v) = fs.get_mut(f) {
            v.2 = rng.next();
            v.3 = 1000 + generation;
        }
    }
    for _ in 0..2 {
        if files.is_empty() {
            break;
        }
        let f = &files[rng.below(files.len() as u64) as usize];
        fs.remove(f);
    }
    for i in 0..3 {
        let dirs = dirs_of(fs);
        let base = if dirs.is_empty() || rng.below(4) == 0 {
            format!("d{}", rng.below(4))
        } else {
            dirs[rng.below(dirs.len() as u64) as usize].clone()
        };
        let name = match rng.below(5) {
            0 => format!("{base}/Report-{generation}-{i}.TXT"),
            1 => format!("{base}/sub{}/notes{}.md", rng.below(3), rng.below(6)),
            2 => format!("{base}/link{}", rng.below(3)),
            _ => format!("{base}/file{}.txt", rng.below(8)),
        };
        if fs.get(&name).is_some_and(|v| v.0 == NodeKind::Dir) {
            continue;
        }
        let uid = 1000 + rng.below(3) as u32;
        mkdirs(fs, &name, uid, 1000 + generation);
        if fs.get(&name).is_none() {
            let kind = if name.contains("link") { NodeKind::Symlink } else { NodeKind::File };
            fs.insert(name, (kind, uid, rng.below(3), 1000 + generation));
        }
    }
    if rng.below(3) == 0 {
        // Rename a directory.
        let dirs = dirs_of(fs);
        if !dirs.is_empty() {
            let d = dirs[rng.below(dirs.len() as u64) as usize].clone();
            let to = format!("{d}-r{generation}");
            let moved: Vec<(String, (NodeKind, u32, u64, i64))> = fs
                .range(d.clone()..)
                .take_while(|(k, _)| **k == d || k.starts_with(&format!("{d}/")))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            for (k, v) in moved {
                fs.remove(&k);
                fs.insert(format!("{to}{}", &k[d.len()..]), v);
            }
        }
    }
    if rng.below(5) == 0 {
        // Delete a whole directory.
        let dirs = dirs_of(fs);
        if !dirs.is_empty() {
            let d = dirs[rng.below(dirs.len() as u64) as usize].clone();
            fs.retain(|k, _| *k != d && !k.starts_with(&format!("{d}/")));
        }
    }
    // Directory mtimes follow nothing here; the version model still sees their subtrees change.
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expect {
    host: String,
    path: String,
    kind: String,
    uid: u32,
    content: String,
    first: String,
    last: String,
    present: bool,
    /// The first snapshot without it, for deleted ones.
    gone_by: Option<String>,
}

/// What makes two nodes at one path the same version to the brute force: kind, uid, content id,
/// mtime.
type BruteIdent = (String, u32, String, Time);

/// Brute force: per host, walk every snapshot and cut each path's presence into runs of equal
/// identity.
fn brute(snaps: &[(SnapshotInfo, Fs)], store: &Store) -> Vec<Expect> {
    let mut by_host: BTreeMap<String, Vec<&(SnapshotInfo, Fs)>> = BTreeMap::new();
    for s in snaps {
        by_host.entry(s.0.host.clone()).or_default().push(s);
    }
    let mut out = Vec::new();
    for (host, list) in by_host {
        // path -> list of (snapshot index, identity)
        let mut seen: BTreeMap<String, Vec<(usize, BruteIdent)>> = BTreeMap::new();
        for (i, (info, _)) in list.iter().enumerate() {
            let mut stack = vec![(String::new(), info.tree)];
            while let Some((prefix, tid)) = stack.pop() {
                for n in &store.trees[&tid].nodes {
                    let p = format!("{prefix}/{}", String::from_utf8_lossy(&n.name));
                    let ident = (n.kind.as_str().to_string(), n.uid, format!("{:016x}", content_id(n) as u64), n.mtime);
                    seen.entry(p.clone()).or_default().push((i, ident));
                    if let Some(sub) = n.subtree {
                        stack.push((p, sub));
                    }
                }
            }
        }
        let ids: Vec<SnapshotId> = list.iter().map(|s| s.0.id).collect();
        cut_versions(&host, &ids, seen, |id| id, &mut out);
    }
    out.sort();
    out
}

/// Cut each path's presence (snapshot index, identity) into runs of one identity in
/// consecutive snapshots of a host (`ids`, oldest first): its versions, the last one deleted
/// when it ends before the host's latest snapshot.
fn cut_versions<I: PartialEq>(
    host: &str,
    ids: &[SnapshotId],
    seen: BTreeMap<String, Vec<(usize, I)>>,
    brute: impl Fn(&I) -> &BruteIdent,
    out: &mut Vec<Expect>,
) {
    let latest = ids.len() - 1;
    for (path, occ) in seen {
        let mut runs: Vec<(usize, usize, I)> = Vec::new();
        for (i, id) in occ {
            match runs.last_mut() {
                Some(r) if r.1 + 1 == i && r.2 == id => r.1 = i,
                _ => runs.push((i, i, id)),
            }
        }
        let n = runs.len();
        for (k, (a, b, id)) in runs.into_iter().enumerate() {
            let gone = k + 1 == n && b != latest;
            let (kind, uid, content, _) = brute(&id);
            out.push(Expect {
                host: host.to_string(),
                path: path.clone(),
                kind: kind.clone(),
                uid: *uid,
                content: content.clone(),
                first: ids[a].to_hex(),
                last: ids[b].to_hex(),
                present: b == latest,
                gone_by: gone.then(|| ids[b + 1].to_hex()),
            });
        }
    }
}

/// The answer, checked to be the same in result order whichever way the query is run.
fn actual(cat: &Catalog, q: &Query) -> Vec<Expect> {
    let scan = cat.find(&Query { limit: MAX_LIMIT, ..q.clone() }).unwrap().items;
    let unbudgeted = Catalog { scan_budget: 0, ..Catalog::open_read_only(cat.path()).unwrap() };
    let indexed = unbudgeted.find(&Query { limit: MAX_LIMIT, ..q.clone() }).unwrap().items;
    assert_eq!(scan, indexed, "both query plans give the same page");
    // Small pages: a name query's first ones may come from the open versions alone.
    for offset in [0, 3] {
        let small = Query { limit: 3, offset, ..q.clone() };
        assert_eq!(cat.find(&small).unwrap(), unbudgeted.find(&small).unwrap(), "{small:?}");
    }
    let interrupted = {
        let tiny = Catalog { scan_budget: 1000, ..Catalog::open_read_only(cat.path()).unwrap() };
        tiny.find(&Query { limit: MAX_LIMIT, ..q.clone() }).unwrap().items
    };
    assert_eq!(scan, interrupted, "a scan cut short falls back to the same answer");
    // Keyset paging in the query's order gives the whole answer, in order, page by page.
    for (c, label) in [(cat, "planned"), (&unbudgeted, "indexed")] {
        assert_eq!(keyset_pages(c, q, 4), scan, "keyset pages, {label}: {q:?}");
    }
    let mut out = Vec::new();
    let mut q = q.clone();
    q.limit = 37; // exercise paging
    loop {
        let page = cat.find(&q).unwrap();
        for v in page.items {
            out.push(Expect {
                host: v.host,
                path: v.path,
                kind: v.kind,
                uid: v.uid,
                content: v.content,
                first: v.first_seen.id,
                last: v.last_seen.id,
                present: v.present,
                gone_by: v.deleted.map(|d| d.first_absent.id),
            });
        }
        match page.next_offset {
            Some(o) => q.offset = o,
            None => break,
        }
    }
    out.sort();
    out
}

/// Every result of `q`, following positions with pages of `limit`.
fn keyset_pages(cat: &Catalog, q: &Query, limit: u32) -> Vec<FileVersion> {
    let mut out = Vec::new();
    let mut kq = Query { limit, offset: 0, after: None, ..q.clone() };
    loop {
        let page = cat.find(&kq).unwrap();
        let last = page.items.last().map(|v| v.position(q.order));
        assert!(page.items.len() <= limit as usize);
        out.extend(page.items);
        match (page.next_offset, last) {
            (Some(_), Some(p)) => kq.after = Some(p),
            _ => return out,
        }
    }
}

fn history(seed: u64, gens: i64, hosts: &[&str]) -> (Store, Vec<(SnapshotInfo, Fs)>) {
    history_with(seed, gens, hosts, false)
}

/// With `returns`, each generation also takes away a file or a folder that comes back unchanged
/// in the next one (a moved-and-restored folder, an unmounted disk): removing the snapshot in
/// between must make its two versions one.
fn history_with(seed: u64, gens: i64, hosts: &[&str], returns: bool) -> (Store, Vec<(SnapshotInfo, Fs)>) {
    let mut rng = Rng::new(seed);
    let mut store = Store { trees: HashMap::new() };
    let mut snaps = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        let mut fs = Fs::new();
        let mut away: Vec<(String, (NodeKind, u32, u64, i64))> = Vec::new();
        for g in 0..gens {
            step(&mut fs, &mut rng, g);
            if returns {
                let top = away.first().map(|(k, _)| k.clone());
                let parent_there = top
                    .as_ref()
                    .and_then(|t| t.rsplit_once('/'))
                    .is_none_or(|(parent, _)| fs.get(parent).is_some_and(|v| v.0 == NodeKind::Dir));
                if top.is_some_and(|t| !fs.contains_key(&t)) && parent_there {
                    fs.extend(away.drain(..));
                }
                away.clear();
                let paths: Vec<String> = fs.keys().cloned().collect();
                if !paths.is_empty() {
                    let p = paths[rng.below(paths.len() as u64) as usize].clone();
                    away = fs
                        .range(p.clone()..)
                        .take_while(|(k, _)| **k == p || k.starts_with(&format!("{p}/")))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect();
                    fs.retain(|k, _| *k != p && !k.starts_with(&format!("{p}/")));
                }
            }
            let tree = store.put(&fs, "");
            let time = jiff::Timestamp::from_second(1_800_000_000 + g * 3600 + h as i64).unwrap();
            let id = SnapshotId(Hash::of(format!("{host}{g}{seed}").as_bytes()));
            snaps.push((SnapshotInfo { id, host: host.to_string(), time, tree }, fs.clone()));
        }
    }
    snaps.sort_by_key(|s| (s.0.time, s.0.id));
    (store, snaps)
}

fn wanted(snaps: &[(SnapshotInfo, Fs)]) -> BTreeMap<String, Vec<SnapshotInfo>> {
    let mut w: BTreeMap<String, Vec<SnapshotInfo>> = BTreeMap::new();
    for (s, _) in snaps {
        w.entry(s.host.clone()).or_default().push(s.clone());
    }
    w
}

/// `trigrams` holds, for every trigram, the number of names that contain it.
fn assert_trigram_counts(cat: &Catalog) {
    let names: Vec<String> = cat
        .conn
        .prepare("SELECT name FROM names")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!names.is_empty());
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for n in &names {
        let mut t = crate::query::trigrams(n);
        t.sort_unstable();
        t.dedup();
        for t in t {
            *want.entry(t.iter().collect()).or_default() += 1;
        }
    }
    let have: BTreeMap<String, i64> = cat
        .conn
        .prepare("SELECT tri, names FROM trigrams")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(have, want);
}

fn fresh() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("c.sqlite"), "repo").unwrap();
    (dir, cat)
}

#[test]
fn incremental_equals_brute_force_and_rebuild() {
    for seed in [1u64, 7, 42, 99] {
        let (store, snaps) = history(seed, 12, &["alpha", "beta"]);
        let (_d, mut cat) = fresh();
        // Incremental: one snapshot at a time, as after each backup.
        for i in 0..snaps.len() {
            let report = cat.sync_to(&store.trees, wanted(&snaps[..=i])).unwrap();
            assert!(report.hosts_rebuilt.is_empty(), "{report:?}");
            assert_eq!(report.snapshots_applied, 1);
            assert_eq!(actual(&cat, &Query::default()), brute(&snaps[..=i], &store), "seed {seed} after {i}");
        }
        let all = brute(&snaps, &store);
        let deleted: Vec<Expect> = all.iter().filter(|e| e.gone_by.is_some()).cloned().collect();
        assert!(!deleted.is_empty());
        assert_eq!(actual(&cat, &Query { deleted: true, ..Default::default() }), deleted);
        // Rebuild gives the same answers, both ways.
        let report = cat.rebuild_from(&store.trees, wanted(&snaps)).unwrap();
        assert_eq!(report.snapshots_applied, snaps.len() as u64);
        assert_eq!(actual(&cat, &Query::default()), all);
        assert_trigram_counts(&cat);
        cat.clear().unwrap();
        assert!(actual(&cat, &Query::default()).is_empty());
        cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
        assert_eq!(actual(&cat, &Query::default()), all);
        assert_trigram_counts(&cat);
    }
}

#[test]
fn removed_snapshots_shrink_versions_like_brute_force() {
    let mut merged = 0;
    let mut dropped = 0;
    for seed in [3u64, 8, 21, 64, 77] {
        let (store, snaps) = history_with(seed, 14, &["alpha", "beta"], true);
        let mut rng = Rng::new(seed * 31 + 5);
        let (_d, mut cat) = fresh();
        // The last three snapshots of each host are backed up after the removals.
        let late = |s: &SnapshotInfo| {
            let own: Vec<&SnapshotInfo> = snaps.iter().map(|x| &x.0).filter(|x| x.host == s.host).collect();
            own.iter().rposition(|x| x.id == s.id).unwrap() + 3 >= own.len()
        };
        let mut kept: Vec<(SnapshotInfo, Fs)> = snaps.iter().filter(|s| !late(&s.0)).cloned().collect();
        cat.sync_to(&store.trees, wanted(&kept)).unwrap();
        for round in 0..4 {
            // Remove about a third of the snapshots, in runs; the newest and the oldest too at
            // times (`forget` of the last backup; retention).
            let before = kept.clone();
            let n = kept.len();
            let mut i = 0;
            kept.retain(|_| {
                i += 1;
                match round {
                    0 => i != n && rng.below(3) != 0,
                    1 => i != 1 && rng.below(4) != 0,
                    _ => rng.below(3) != 0,
                }
            });
            let report = cat.sync_to(&store.trees, wanted(&kept)).unwrap();
            assert!(report.hosts_rebuilt.is_empty(), "{report:?}");
            assert_eq!(report.snapshots_dropped as usize, before.len() - kept.len());
            dropped += report.versions_dropped;
            let want = brute(&kept, &store);
            assert_eq!(actual(&cat, &Query::default()), want, "seed {seed} round {round}");
            let deleted: Vec<Expect> = want.iter().filter(|e| e.gone_by.is_some()).cloned().collect();
            assert_eq!(actual(&cat, &Query { deleted: true, ..Default::default() }), deleted);
            merged += merges(&before, &want);
        }
        // New backups after the removals go on from the kept ones (beta); alpha's old
        // snapshots all go as its new ones come: it starts again.
        kept.retain(|s| s.0.host == "beta");
        kept.extend(snaps.iter().filter(|s| late(&s.0)).cloned());
        kept.sort_by_key(|s| (s.0.time, s.0.id));
        let report = cat.sync_to(&store.trees, wanted(&kept)).unwrap();
        assert!(report.hosts_rebuilt.is_empty(), "{report:?}");
        assert_eq!(report.snapshots_applied, 6);
        assert_eq!(actual(&cat, &Query::default()), brute(&kept, &store), "seed {seed} after new backups");
    }
    assert!(merged > 0, "the histories make equal versions adjacent by removal");
    assert!(dropped > 0, "some versions were held only by removed snapshots");
}

/// How many versions of `after` (the brute force over the kept snapshots) span a snapshot of
/// `before` in which their path was absent or different: two versions made one by a removal.
fn merges(before: &[(SnapshotInfo, Fs)], after: &[Expect]) -> usize {
    after
        .iter()
        .filter(|e| {
            let own: Vec<&(SnapshotInfo, Fs)> = before.iter().filter(|s| s.0.host == e.host).collect();
            let (Some(a), Some(b)) = (
                own.iter().position(|s| s.0.id.to_hex() == e.first),
                own.iter().position(|s| s.0.id.to_hex() == e.last),
            ) else {
                return false;
            };
            let at = |i: usize| own[i].1.get(&e.path[1..]).copied();
            (a..=b).any(|i| at(i) != at(a))
        })
        .count()
}

#[test]
fn late_snapshots_rebuild_the_host() {
    let (store, snaps) = history(5, 10, &["alpha", "beta"]);
    let (_d, mut cat) = fresh();
    cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
    // Retention drops every third snapshot of alpha, and its newest.
    let mut kept: Vec<(SnapshotInfo, Fs)> = Vec::new();
    let mut n = 0;
    let last_alpha = snaps.iter().rposition(|s| s.0.host == "alpha").unwrap();
    for (i, s) in snaps.iter().enumerate() {
        if s.0.host == "alpha" {
            n += 1;
            if n % 3 == 0 || i == last_alpha {
                continue;
            }
        }
        kept.push(s.clone());
    }
    let report = cat.sync_to(&store.trees, wanted(&kept)).unwrap();
    assert!(report.hosts_rebuilt.is_empty(), "removal shrinks, it does not rebuild: {report:?}");
    assert_eq!(actual(&cat, &Query::default()), brute(&kept, &store));
    // A late snapshot (older than the newest) comes back: the host is rebuilt again.
    let report = cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
    assert_eq!(report.hosts_rebuilt, vec!["alpha".to_string()]);
    assert_eq!(actual(&cat, &Query::default()), brute(&snaps, &store));
    // A host whose snapshots are all gone leaves.
    let only_beta: Vec<_> = snaps.iter().filter(|s| s.0.host == "beta").cloned().collect();
    let report = cat.sync_to(&store.trees, wanted(&only_beta)).unwrap();
    assert_eq!(report.hosts_removed, vec!["alpha".to_string()]);
    assert_eq!(cat.hosts().unwrap(), vec!["beta".to_string()]);
    assert_eq!(actual(&cat, &Query::default()), brute(&only_beta, &store));
}

#[test]
fn queries_filter_like_brute_force() {
    let (store, snaps) = history(11, 10, &["alpha", "beta"]);
    let (_d, mut cat) = fresh();
    cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
    let all = brute(&snaps, &store);
    let name_of = |p: &str| p.rsplit('/').next().unwrap().to_lowercase();
    let check = |q: Query, keep: &dyn Fn(&Expect) -> bool| {
        let want: Vec<Expect> = all.iter().filter(|e| keep(e)).cloned().collect();
        assert!(!want.is_empty(), "{q:?} selects nothing: a useless check");
        assert_eq!(actual(&cat, &q), want, "{q:?}");
    };
    check(Query { name: Some(NameMatch::Substring("report".into())), ..Default::default() }, &|e| {
        name_of(&e.path).contains("report")
    });
    check(Query { name: Some(NameMatch::Substring("ES".into())), ..Default::default() }, &|e| {
        name_of(&e.path).contains("es")
    });
    check(Query { name: Some(NameMatch::Glob("notes?.MD".into())), ..Default::default() }, &|e| {
        let n = name_of(&e.path);
        n.len() == 9 && n.starts_with("notes") && n.ends_with(".md")
    });
    check(Query { name: Some(NameMatch::Glob("*.txt".into())), uid: Some(1001), ..Default::default() }, &|e| {
        name_of(&e.path).ends_with(".txt") && e.uid == 1001
    });
    check(Query { host: Some("beta".into()), kind: Some(NodeKind::Symlink), ..Default::default() }, &|e| {
        e.host == "beta" && e.kind == "symlink"
    });
    check(Query { path_prefix: Some("/d1/".into()), ..Default::default() }, &|e| {
        e.path == "/d1" || e.path.starts_with("/d1/")
    });
    check(Query { deleted: true, uid: Some(1002), ..Default::default() }, &|e| e.gone_by.is_some() && e.uid == 1002);
    // Deleted since the 8th generation: the first snapshot without it is at or after it.
    let t = jiff::Timestamp::from_second(1_800_000_000 + 7 * 3600).unwrap();
    let time_of: HashMap<String, jiff::Timestamp> = snaps.iter().map(|s| (s.0.id.to_hex(), s.0.time)).collect();
    check(Query { deleted_since: Some(t), ..Default::default() }, &|e| {
        e.gone_by.as_ref().is_some_and(|g| time_of[g] >= t)
    });
    check(
        Query { seen_to: Some(jiff::Timestamp::from_second(1_800_000_000 + 3600).unwrap()), ..Default::default() },
        &|e| time_of[&e.first] <= jiff::Timestamp::from_second(1_800_000_000 + 3600).unwrap(),
    );
}

#[test]
fn order_paging_and_history() {
    let (store, snaps) = history(3, 8, &["alpha"]);
    let (_d, mut cat) = fresh();
    cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
    let page = cat.find(&Query { limit: 10_000, ..Default::default() }).unwrap();
    assert!(page.next_offset.is_none());
    let times: Vec<_> = page.items.iter().map(|v| v.last_seen.time).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "most recent first");
    let p = page.items.iter().find(|v| v.kind == "file").unwrap().path.clone();
    let hist = cat.history(Some("alpha"), p.as_bytes(), None).unwrap();
    let want: Vec<Expect> = brute(&snaps, &store).into_iter().filter(|e| e.path == p).collect();
    assert_eq!(hist.len(), want.len());
    assert!(hist.windows(2).all(|w| w[0].first_seen.time > w[1].first_seen.time));
    assert!(hist.iter().all(|v| v.path == p));
}

/// A catalog of another repository, or a damaged one (an SQLite file), starts over; a file that
/// is no SQLite database at all (named by mistake) is left as it is.
#[test]
fn reopening_other_repository_or_damage_starts_over_and_other_files_are_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let (store, snaps) = history(2, 3, &["h"]);
    {
        let mut cat = Catalog::open(&path, "one").unwrap();
        cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
        assert_eq!(cat.snapshots().unwrap().len(), 3);
    }
    assert_eq!(Catalog::open(&path, "one").unwrap().snapshots().unwrap().len(), 3);
    assert_eq!(Catalog::open(&path, "two").unwrap().snapshots().unwrap().len(), 0);
    // Damaged past its header: replaced.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().skip(100) {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Catalog::open(&path, "two").unwrap().snapshots().unwrap().len(), 0);
    Catalog::remove(&path).unwrap();
    // Not a database at all: refused, untouched (also by remove).
    std::fs::write(&path, b"this is not a database, just someone's notes").unwrap();
    let err = Catalog::open(&path, "two").err().expect("refused").to_string();
    assert!(err.contains("is not a rewind catalog"), "{err}");
    assert!(Catalog::remove(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"this is not a database, just someone's notes");
}

#[test]
fn readers_see_whole_snapshots_only() {
    let (store, snaps) = history(4, 6, &["h"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    let mut cat = Catalog::open(&path, "r").unwrap();
    cat.sync_to(&store.trees, wanted(&snaps[..3])).unwrap();
    let reader = Catalog::open_read_only(&path).unwrap();
    // A snapshot whose trees are missing fails midway: nothing of it may show.
    let mut broken = snaps[3].0.clone();
    let mut partial = store.trees.clone();
    let root = &store.trees[&broken.tree];
    if let Some(sub) = root.nodes.iter().rev().find_map(|n| n.subtree) {
        partial.remove(&sub);
    }
    broken.tree = snaps[3].0.tree;
    assert!(cat.apply(&partial, &broken).is_err());
    assert_trigram_counts(&cat);
    assert_eq!(actual(&reader, &Query::default()), brute(&snaps[..3], &store));
    assert_eq!(actual(&cat, &Query::default()), brute(&snaps[..3], &store));
    cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
    assert_eq!(actual(&reader, &Query::default()), brute(&snaps, &store));
    assert_trigram_counts(&cat);
    // A rebuild that fails midway leaves the catalog as it was.
    let mut without = store.trees.clone();
    let sub = store.trees[&snaps[4].0.tree].nodes.iter().find_map(|n| n.subtree).expect("a directory at the root");
    without.remove(&sub);
    assert!(cat.rebuild_from(&without, wanted(&snaps)).is_err());
    assert_eq!(actual(&reader, &Query::default()), brute(&snaps, &store));
    assert_eq!(actual(&cat, &Query::default()), brute(&snaps, &store));
}

/// Trees as [`crate::ImageTrees`] gives them to the catalog: a folder named `*.img.d` is the
/// folder of a disk image, whose id is handed out (as inside an image) when the tree holding it
/// is read. Each holds a file named `IMAGE`, so that no other folder has its tree.
struct WithImages<'a> {
    trees: &'a HashMap<TreeId, Arc<Tree>>,
    folders: Mutex<HashSet<TreeId>>,
}

impl WithImages<'_> {
    fn new(trees: &HashMap<TreeId, Arc<Tree>>) -> WithImages<'_> {
        WithImages { trees, folders: Mutex::new(HashSet::new()) }
    }
}

impl TreeSource for WithImages<'_> {
    fn tree(&self, id: TreeId) -> rewind_store::Result<Arc<Tree>> {
        let tree = self.trees.tree(id)?;
        for n in &tree.nodes {
            if let Some(sub) = n.subtree.filter(|_| n.name.ends_with(b".img.d")) {
                self.folders.lock().unwrap().insert(sub);
            }
        }
        Ok(tree)
    }

    fn inside_image(&self, id: TreeId) -> bool {
        self.folders.lock().unwrap().contains(&id)
    }
}

/// Whether `path` is inside a disk image of [`WithImages`] (an image folder included).
fn inside_image(path: &str) -> bool {
    path.split('/').any(|c| c.ends_with(".img.d"))
}

/// Disk image folders (as [`WithImages`] sees them), kept apart from the rest of the files:
/// `d<k>/disk.img.d` with files of the owners the scopes look for, some changing or going each
/// generation, and a folder of the same name as plain ones (`sub1`).
fn images(fs: &mut Fs, rng: &mut Rng, generation: i64) {
    for k in 0..4 {
        let d = format!("d{k}/disk.img.d");
        if !fs.contains_key(&d) && rng.below(3) != 0 {
            continue;
        }
        let uid = 1000 + rng.below(3) as u32;
        mkdirs(fs, &format!("{d}/IMAGE"), uid, 1000 + generation);
        fs.insert(format!("{d}/IMAGE"), (NodeKind::File, uid, k, 1000));
        for _ in 0..2 {
            let name = match rng.below(3) {
                0 => format!("{d}/p1/inside-{}.txt", rng.below(4)),
                1 => format!("{d}/p1/sub1/notes{}.md", rng.below(3)),
                _ => format!("{d}/file{}.txt", rng.below(3)),
            };
            if rng.below(4) == 0 {
                fs.remove(&name);
                continue;
            }
            let uid = 1000 + rng.below(3) as u32;
            mkdirs(fs, &name, uid, 1000 + generation);
            if fs.get(&name).is_none_or(|v| v.0 != NodeKind::Dir) {
                fs.insert(name, (NodeKind::File, uid, rng.below(3), 1000 + generation));
            }
        }
    }
}

/// Like [`history`], with access changing too: folders and files get other modes, groups and
/// ACLs now and then (which hides or shows whole subtrees to a reader); and folders of disk
/// images ([`images`]), for [`WithImages`].
fn history_access(seed: u64, gens: i64, hosts: &[&str]) -> (Store, Vec<(SnapshotInfo, Fs, Perms)>) {
    let mut rng = Rng::new(seed);
    let mut store = Store { trees: HashMap::new() };
    let mut snaps = Vec::new();
    // Images have a generator of their own: the rest is as it was without them.
    let mut image_rng = Rng::new(seed + 1_000_000);
    for (h, host) in hosts.iter().enumerate() {
        let mut fs = Fs::new();
        let mut image_fs = Fs::new();
        let mut perms = Perms::new();
        for g in 0..gens {
            step(&mut fs, &mut rng, g);
            images(&mut image_fs, &mut image_rng, g);
            // Folders inside images change access too (their history is no reader's business).
            let inner: Vec<String> =
                image_fs.iter().filter(|(_, v)| v.0 == NodeKind::Dir).map(|(k, _)| k.clone()).collect();
            if let Some(p) = inner.iter().filter(|p| inside_image(p)).nth(image_rng.below(8) as usize) {
                let mode = [0o700, 0o755, 0o711, 0o750][image_rng.below(4) as usize];
                perms.insert(p.clone(), (mode, [1000, 1001, 77][image_rng.below(3) as usize], 0));
            }
            let paths: Vec<String> = fs.keys().cloned().collect();
            for _ in 0..3 {
                if paths.is_empty() {
                    break;
                }
                let p = &paths[rng.below(paths.len() as u64) as usize];
                if rng.below(4) == 0 {
                    perms.remove(p);
                    continue;
                }
                let modes = [0o700, 0o750, 0o755, 0o711, 0o705, 0o640, 0o600, 0o644, 0o604];
                let mode = modes[rng.below(modes.len() as u64) as usize];
                let gid = [fs[p].1, 77, 1001][rng.below(3) as usize];
                let acl = if rng.below(3) == 0 { 1 + rng.below(3) as u8 } else { 0 };
                perms.insert(p.clone(), (mode, gid, acl));
            }
            // The folders on the way to images are the others' where both have them.
            let all: Fs = image_fs.iter().chain(fs.iter()).map(|(k, v)| (k.clone(), *v)).collect();
            let tree = store.put_with(&all, &perms, "");
            let time = jiff::Timestamp::from_second(1_800_000_000 + g * 3600 + h as i64).unwrap();
            let id = SnapshotId(Hash::of(format!("{host}{g}{seed}access").as_bytes()));
            snaps.push((SnapshotInfo { id, host: host.to_string(), time, tree }, all, perms.clone()));
        }
    }
    snaps.sort_by_key(|s| (s.0.time, s.0.id));
    (store, snaps)
}

/// What decides access to a node: mode, uid, gid, ACL.
type Acc = (u32, u32, u32, Vec<u8>);

/// A node's identity for a scope: as for [`brute`], with its own access (and nothing of the
/// folders above it: what a reader cannot observe must not cut their versions).
type ScopedIdent = (BruteIdent, Acc);

/// Brute force of a scope: the paths of one snapshot that `scope` sees, each with its identity
/// (kind, uid, content, mtime and its own access). Nothing inside a disk image ([`inside_image`])
/// is seen through a scope.
fn visible_in(info: &SnapshotInfo, store: &Store, scope: &Scope) -> BTreeMap<String, ScopedIdent> {
    let mut out = visible_by_rules(info, store, scope);
    out.retain(|p, _| !inside_image(p));
    out
}

/// What the rules of `scope` alone match in one snapshot, inside disk images too.
fn visible_by_rules(info: &SnapshotInfo, store: &Store, scope: &Scope) -> BTreeMap<String, ScopedIdent> {
    let mut out = BTreeMap::new();
    let acc =
        |n: &Node| -> Acc { (n.mode, n.uid, n.gid, n.xattr(crate::access::ACL_XATTR).unwrap_or_default().to_vec()) };
    // (folder path, tree, every folder down to it searchable by the reader)
    let mut stack = vec![(String::new(), info.tree, true)];
    while let Some((prefix, tid, searchable)) = stack.pop() {
        for n in &store.trees[&tid].nodes {
            let p = format!("{prefix}/{}", String::from_utf8_lossy(&n.name));
            let a = acc(n);
            let allows = |r: &Reader, want: u32| {
                crate::access::permits(r, a.1, a.2, a.0, (!a.3.is_empty()).then_some(&a.3[..]), want)
            };
            let in_paths = scope
                .paths
                .iter()
                .map(|h| String::from_utf8_lossy(h))
                .any(|h| p == h || p.starts_with(&format!("{h}/")));
            let readable = scope.reader.as_ref().is_some_and(|r| {
                searchable && allows(r, if n.is_dir() { crate::access::R | crate::access::X } else { crate::access::R })
            });
            if scope.owner == Some(n.uid) || in_paths || scope.hosts.contains(&info.host) || readable {
                let ident = (n.kind.as_str().to_string(), n.uid, format!("{:016x}", content_id(n) as u64), n.mtime);
                out.insert(p.clone(), (ident, a.clone()));
            }
            if let Some(sub) = n.subtree {
                let search = searchable && scope.reader.as_ref().is_some_and(|r| allows(r, crate::access::X));
                stack.push((p, sub, search));
            }
        }
    }
    out
}

/// Brute force: the versions a scope sees, cut like [`brute`] from its visible paths alone
/// (exactly as a catalog of a repository holding nothing else would cut them).
fn brute_scoped(snaps: &[(SnapshotInfo, Fs, Perms)], store: &Store, scope: &Scope) -> Vec<Expect> {
    let mut by_host: BTreeMap<String, Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snaps {
        by_host.entry(s.0.host.clone()).or_default().push(&s.0);
    }
    let mut out = Vec::new();
    for (host, list) in by_host {
        let mut seen: BTreeMap<String, Vec<(usize, ScopedIdent)>> = BTreeMap::new();
        for (i, info) in list.iter().enumerate() {
            for (p, id) in visible_in(info, store, scope) {
                seen.entry(p).or_default().push((i, id));
            }
        }
        let ids: Vec<SnapshotId> = list.iter().map(|s| s.id).collect();
        cut_versions(&host, &ids, seen, |id| &id.0, &mut out);
    }
    out.sort();
    out
}

fn expect_of(v: &FileVersion) -> Expect {
    Expect {
        host: v.host.clone(),
        path: v.path.clone(),
        kind: v.kind.clone(),
        uid: v.uid,
        content: v.content.clone(),
        first: v.first_seen.id.clone(),
        last: v.last_seen.id.clone(),
        present: v.present,
        gone_by: v.deleted.as_ref().map(|d| d.first_absent.id.clone()),
    }
}

fn scopes() -> Vec<(&'static str, Scope)> {
    let reader = |uid, gids: &[u32]| Some(Reader { uid, gids: gids.to_vec() });
    vec![
        ("nothing", Scope::default()),
        ("owner", Scope { owner: Some(1001), ..Scope::default() }),
        ("paths", Scope { paths: vec!["/d1".into(), "/d2/sub1".into()], ..Scope::default() }),
        ("host", Scope { hosts: vec!["beta".into()], ..Scope::default() }),
        ("reader 1001", Scope { reader: reader(1001, &[1001, 77]), ..Scope::default() }),
        ("reader 1002", Scope { reader: reader(1002, &[1002]), ..Scope::default() }),
        ("owner+paths", Scope { owner: Some(1000), paths: vec!["/d3".into()], ..Scope::default() }),
        ("reader+paths", Scope { paths: vec!["/d0".into()], reader: reader(1000, &[1000]), ..Scope::default() }),
        ("owner+host", Scope { owner: Some(1002), hosts: vec!["alpha".into()], ..Scope::default() }),
    ]
}

/// A scope sees exactly what it would see in a repository where everything out of it was
/// never backed up: versions, their intervals and deletions, brute-forced; and a catalog of
/// that smaller repository answers every query with the same results in the same order, page
/// by page.
#[test]
fn scopes_equal_their_own_repository() {
    let mut split_by_access = 0;
    let mut deleted_for_scope_only = 0;
    // Versions a scope sees again from a later snapshot on, a folder above them open again.
    let mut seen_again = 0;
    // Paths inside disk images that a scope's rules match (and the scope must not show).
    let mut matched_inside = 0;
    // Changes of access of folders inside images.
    let mut varied_inside = 0;
    for seed in [5u64, 13, 31] {
        let (store, snaps) = history_access(seed, 10, &["alpha", "beta"]);
        let (_d, mut cat) = fresh();
        let source = WithImages::new(&store.trees);
        for i in 0..snaps.len() {
            let w: Vec<(SnapshotInfo, Fs)> = snaps[..=i].iter().map(|s| (s.0.clone(), s.1.clone())).collect();
            cat.sync_to(&source, wanted(&w)).unwrap();
        }
        let everything = actual(&cat, &Query::default());
        varied_inside += cat
            .conn
            .query_row("SELECT count(*) FROM folder_access f JOIN dirs d ON d.id = f.dir WHERE d.image = 2", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        // Without a scope (admins), what is inside images is found like the rest.
        let inside = everything.iter().filter(|e| inside_image(&e.path)).count();
        assert!(inside > 20 && everything.iter().any(|e| e.path.ends_with(".img.d/p1")), "seed {seed}: {inside}");
        // The versions as cut by content and owner alone, without access.
        let plain: Vec<(SnapshotInfo, Fs)> = snaps.iter().map(|s| (s.0.clone(), s.1.clone())).collect();
        let by_content = brute(&plain, &store);
        for (label, scope) in scopes() {
            let want = brute_scoped(&snaps, &store, &scope);
            matched_inside += snaps
                .iter()
                .map(|s| visible_by_rules(&s.0, &store, &scope).keys().filter(|p| inside_image(p)).count())
                .sum::<usize>();
            let q = Query { scope: Some(scope.clone()), ..Query::default() };
            assert_eq!(actual(&cat, &q), want, "seed {seed}, {label}");
            // The history of a path inside an image that the rules match is empty for the scope.
            let matched: std::collections::BTreeSet<String> =
                snaps.iter().flat_map(|s| visible_by_rules(&s.0, &store, &scope).into_keys()).collect();
            for path in matched.iter().filter(|p| inside_image(p)).take(10) {
                assert!(cat.history(None, path.as_bytes(), Some(&scope)).unwrap().is_empty(), "{label}: {path}");
                assert!(!cat.history(None, path.as_bytes(), None).unwrap().is_empty(), "{label}: {path}");
            }
            let deleted: Vec<Expect> = want.iter().filter(|e| e.gone_by.is_some()).cloned().collect();
            assert_eq!(actual(&cat, &Query { deleted: true, ..q.clone() }), deleted, "seed {seed}, {label}: deleted");
            deleted_for_scope_only += deleted
                .iter()
                .filter(|e| !everything.iter().any(|a| a.path == e.path && a.first == e.first && a.gone_by.is_some()))
                .count();
            split_by_access += want.iter().filter(|e| !by_content.contains(e)).count();
            seen_again +=
                want.iter().filter(|e| !everything.iter().any(|a| a.path == e.path && a.first == e.first)).count();
            // History, per path, as the scope sees it.
            for path in want.iter().map(|e| e.path.clone()).collect::<std::collections::BTreeSet<_>>().iter().take(20) {
                let mut got: Vec<Expect> =
                    cat.history(None, path.as_bytes(), Some(&scope)).unwrap().iter().map(expect_of).collect();
                got.sort();
                let w: Vec<Expect> = want.iter().filter(|e| &e.path == path).cloned().collect();
                assert_eq!(got, w, "seed {seed}, {label}: history of {path}");
            }

            // The scope's own repository: every snapshot holds only what the scope sees (with its
            // metadata) and the folders on the way to it, which carry nothing the scope could
            // observe: neutral metadata (root's, searchable by all, never changing), so that any
            // dependence on their real metadata shows as a difference.
            let mut own_store = Store { trees: HashMap::new() };
            let mut own: Vec<(SnapshotInfo, Fs)> = Vec::new();
            for (info, fs, perms) in &snaps {
                let seen = visible_in(info, &store, &scope);
                let mut own_perms = perms.clone();
                let keep: Fs = fs
                    .iter()
                    .filter(|(p, _)| {
                        let p = format!("/{p}");
                        seen.keys().any(|v| *v == p || v.starts_with(&format!("{p}/")))
                    })
                    .map(|(k, v)| {
                        if seen.contains_key(&format!("/{k}")) {
                            (k.clone(), *v)
                        } else {
                            own_perms.insert(k.clone(), (0o711, 0, 0));
                            (k.clone(), (NodeKind::Dir, 0, 0, 0))
                        }
                    })
                    .collect();
                let tree = own_store.put_with(&keep, &own_perms, "");
                own.push((SnapshotInfo { tree, ..info.clone() }, keep));
            }
            let (_d2, mut sub) = fresh();
            for i in 0..own.len() {
                sub.sync_to(&own_store.trees, wanted(&own[..=i])).unwrap();
            }
            for order in [Order::RecentFirst, Order::OldestFirst, Order::Path] {
                for deleted in [false, true] {
                    for name in [
                        None,
                        Some(NameMatch::Glob("{file*,notes?.md}".into())),
                        Some(NameMatch::Substring("e".into())),
                    ] {
                        let q = Query { scope: Some(scope.clone()), order, deleted, name, ..Query::default() };
                        for limit in [1, 2, 3] {
                            let a: Vec<Expect> = keyset_pages(&cat, &q, limit).iter().map(expect_of).collect();
                            let b: Vec<Expect> = keyset_pages(&sub, &q, limit).iter().map(expect_of).collect();
                            assert_eq!(a, b, "seed {seed}, {label}: {q:?} by {limit}");
                        }
                    }
                }
            }
        }
    }
    assert!(split_by_access > 0, "access changes cut versions a scope sees");
    assert!(seen_again > 0, "some versions are seen again after a folder above them opened again");
    assert!(deleted_for_scope_only > 0, "some paths are deleted for a scope only");
    assert!(matched_inside > 100, "the rules match many paths inside images: {matched_inside}");
    assert!(varied_inside > 0, "folders inside images change access");
}

/// A scope with no rule that sees anything (a user with no uid, home or host) finds nothing,
/// whichever way a query is answered. A name's first page, read from the partial index of open
/// versions, once failed instead ("no query solution": SQLite plans no constant-false query
/// through an index named by INDEXED BY).
#[test]
fn an_empty_scope_finds_nothing() {
    let (store, snaps) = history(3, 8, &["h"]);
    let (_d, mut cat) = fresh();
    cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
    let unbudgeted = Catalog { scan_budget: 0, ..Catalog::open_read_only(cat.path()).unwrap() };
    let names = [
        None,
        Some(NameMatch::Substring("report".into())),
        Some(NameMatch::Glob("*.txt".into())),
        Some(NameMatch::Substring("e".into())),
    ];
    for name in names {
        for order in [Order::RecentFirst, Order::OldestFirst, Order::Path] {
            for deleted in [false, true] {
                let q = Query { name: name.clone(), order, deleted, limit: 1, ..Query::default() };
                assert!(!cat.find(&q).unwrap().items.is_empty(), "{q:?} finds something without a scope");
                let q = Query { scope: Some(Scope::default()), ..q };
                for c in [&cat, &unbudgeted] {
                    assert_eq!(c.find(&q).unwrap().items, vec![], "{q:?}");
                }
            }
        }
    }
    let path = &actual(&cat, &Query::default())[0].path;
    assert!(!cat.history(None, path.as_bytes(), None).unwrap().is_empty());
    assert!(cat.history(None, path.as_bytes(), Some(&Scope::default())).unwrap().is_empty());
}

/// Removing snapshots keeps every scope's view equal to the brute force over the kept ones:
/// versions merged or dropped, and deletions as each scope sees them.
#[test]
fn scopes_after_removed_snapshots() {
    for seed in [9u64, 17] {
        let (store, snaps) = history_access(seed, 12, &["alpha", "beta"]);
        let (_d, mut cat) = fresh();
        let source = WithImages::new(&store.trees);
        let all: Vec<(SnapshotInfo, Fs)> = snaps.iter().map(|s| (s.0.clone(), s.1.clone())).collect();
        cat.sync_to(&source, wanted(&all)).unwrap();
        let mut rng = Rng::new(seed * 7 + 1);
        let mut kept = snaps.clone();
        for round in 0..3 {
            let n = kept.len();
            let mut i = 0;
            kept.retain(|_| {
                i += 1;
                i == n || rng.below(3) != 0 || round == 2 && i == 1
            });
            let w: Vec<(SnapshotInfo, Fs)> = kept.iter().map(|s| (s.0.clone(), s.1.clone())).collect();
            let report = cat.sync_to(&source, wanted(&w)).unwrap();
            assert!(report.hosts_rebuilt.is_empty(), "{report:?}");
            for (label, scope) in scopes() {
                let want = brute_scoped(&kept, &store, &scope);
                let q = Query { scope: Some(scope), ..Query::default() };
                assert_eq!(actual(&cat, &q), want, "seed {seed} round {round}: {label}");
                let deleted: Vec<Expect> = want.into_iter().filter(|e| e.gone_by.is_some()).collect();
                assert_eq!(actual(&cat, &Query { deleted: true, ..q }), deleted, "seed {seed} round {round}: {label}");
            }
        }
    }
}

/// Names that are not UTF-8 are names like any other: two that read alike as lossy text stay
/// apart in paths, prefixes, history and the path order, and each result gives its exact bytes.
#[test]
fn names_are_bytes() {
    let mut store = Store { trees: HashMap::new() };
    let mut put = |mut nodes: Vec<Node>| {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let tree = Tree { nodes };
        let id = Tree::id(&tree.encode());
        store.trees.insert(id, Arc::new(tree));
        id
    };
    let file = |name: &[u8], seed: u64| {
        let mut n = Node::new(name.to_vec(), NodeKind::File);
        n.size = seed;
        n.content = vec![ChunkId(Hash::of(&seed.to_le_bytes()))];
        n
    };
    let dir = |name: &[u8], sub: TreeId| {
        let mut n = Node::new(name.to_vec(), NodeKind::Dir);
        n.mode = 0o755;
        n.subtree = Some(sub);
        n
    };
    // "café/ré.txt" in Latin-1 and the same with è: both read "caf\u{fffd}/r\u{fffd}.txt".
    let e9 = put(vec![file(b"r\xe9.txt", 1)]);
    let e8 = put(vec![file(b"r\xe8.txt", 2), file(b"plain.txt", 3)]);
    let root = put(vec![dir(b"caf\xe9", e9), dir(b"caf\xe8", e8)]);
    let snap = SnapshotInfo {
        id: SnapshotId(Hash::of(b"one")),
        host: "h".into(),
        time: jiff::Timestamp::from_second(1_000_000).unwrap(),
        tree: root,
    };
    let (_dir, mut cat) = fresh();
    cat.sync_to(&store.trees, BTreeMap::from([("h".to_string(), vec![snap])])).unwrap();
    let files = |q: Query| -> Vec<Vec<u8>> {
        let q = Query { kind: Some(NodeKind::File), ..q };
        cat.find(&q).unwrap().items.iter().map(|v| v.path_bytes().to_vec()).collect()
    };
    let under = |p: &[u8]| files(Query { path_prefix: Some(p.to_vec()), ..Query::default() });
    assert_eq!(under(b"/caf\xe9"), vec![b"/caf\xe9/r\xe9.txt".to_vec()]);
    let mut e8_files = under(b"/caf\xe8/");
    e8_files.sort();
    assert_eq!(e8_files, vec![b"/caf\xe8/plain.txt".to_vec(), b"/caf\xe8/r\xe8.txt".to_vec()]);
    assert_eq!(under(b"/caf\xe8/r\xe8.txt"), vec![b"/caf\xe8/r\xe8.txt".to_vec()]);
    // The name matching reads the lossy text: both are found by it.
    let by_name = files(Query { name: Some(NameMatch::Substring("r\u{fffd}.txt".into())), ..Query::default() });
    assert_eq!(by_name.len(), 2, "{by_name:?}");
    let hist = cat.history(None, b"/caf\xe9/r\xe9.txt", None).unwrap();
    assert_eq!((hist.len(), hist[0].size, hist[0].path.as_str()), (1, 1, "/caf\u{fffd}/r\u{fffd}.txt"));
    assert_eq!(hist[0].path_bytes(), b"/caf\xe9/r\xe9.txt");
    assert!(cat.history(None, b"/caf\xe7/r\xe9.txt", None).unwrap().is_empty());
    // The path order is (folder, name) in byte order, and its positions page through names
    // that read alike.
    let q = Query { order: Order::Path, ..Query::default() };
    let paged: Vec<Vec<u8>> = keyset_pages(&cat, &q, 1).iter().map(|v| v.path_bytes().to_vec()).collect();
    let mut sorted = paged.clone();
    sorted.sort_by_key(|p| {
        let at = p.iter().rposition(|&b| b == b'/').unwrap();
        (p[..at].to_vec(), p[at + 1..].to_vec())
    });
    assert_eq!((paged.len(), &paged), (5, &sorted));
    // A scope's home is bytes too.
    let scope = Scope { paths: vec![b"/caf\xe9".to_vec()], ..Scope::default() };
    assert_eq!(files(Query { scope: Some(scope), ..Query::default() }), vec![b"/caf\xe9/r\xe9.txt".to_vec()]);
}

/// A long-lived writer (a portal's sync) shares its catalog file with other processes: backups
/// that apply new snapshots, and a `rewind catalog rebuild` that renumbers every name and
/// folder. The writer's cached ids of names and folders must not outlive another process's
/// commit (they did: after a rebuild beside it, up to 85 of 145 rows named other files; found
/// in a review).
#[test]
fn a_writer_sharing_its_file_with_other_processes_keeps_the_catalog_right() {
    for seed in [1u64, 7, 42] {
        let (store, snaps) = history(seed, 12, &["alpha", "beta"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut portal = Catalog::open(&path, "repo").unwrap();
        let half = 14;
        for i in 0..half {
            portal.sync_to(&store.trees, wanted(&snaps[..=i])).unwrap();
        }
        // Another process rebuilds the file from scratch (one transaction) and goes.
        Catalog::open(&path, "repo").unwrap().rebuild_from(&store.trees, wanted(&snaps[..half])).unwrap();
        for i in half..snaps.len() {
            // Every third snapshot is applied by yet another process (a backup's update).
            if i % 3 == 0 {
                Catalog::open(&path, "repo").unwrap().sync_to(&store.trees, wanted(&snaps[..=i])).unwrap();
            } else {
                portal.sync_to(&store.trees, wanted(&snaps[..=i])).unwrap();
            }
        }
        assert_eq!(actual(&portal, &Query::default()), brute(&snaps, &store), "seed {seed}");
    }
}

/// A catalog is complete once a sync has run to its end: a fresh one, or one whose first build
/// was cut short, is not (the portal does not answer from it until its own sync has).
#[test]
fn a_catalog_is_complete_once_a_sync_has_run_to_its_end() {
    let (store, snaps) = history(3, 4, &["alpha"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sqlite");
    assert!(!Catalog::is_complete(&path), "no file");
    let mut cat = Catalog::open(&path, "repo").unwrap();
    assert!(!Catalog::is_complete(&path), "fresh");
    // A first build cut short: snapshots applied one by one, the sync never reaching its end.
    cat.apply(&store.trees, &snaps[0].0).unwrap();
    assert!(!Catalog::is_complete(&path), "cut short");
    cat.sync_to(&store.trees, wanted(&snaps)).unwrap();
    assert!(Catalog::is_complete(&path));
    // Replaced (another repository's): not complete until synced again.
    drop(cat);
    let mut other = Catalog::open(&path, "another repo").unwrap();
    assert!(!Catalog::is_complete(&path));
    other.sync_to(&store.trees, wanted(&snaps)).unwrap();
    assert!(Catalog::is_complete(&path));
}
