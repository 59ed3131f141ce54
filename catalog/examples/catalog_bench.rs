//! Benchmark of the catalog on a synthetic history, generated in memory and fed through the
//! catalog's own update path (`Catalog::apply`, the code a backup's update runs).
//!
//! ```text
//! cargo run --release -p rewind-catalog --example catalog_bench -- \
//!     [--files 1000000] [--gens 30] [--churn 0.3] [--update-churn 0.01] [--out /tmp/bench.sqlite]
//! ```
//!
//! Reports: the time of the full build (every generation from scratch, as `catalog rebuild`
//! does), the time of one more update at `--update-churn`, bytes per version on disk, then two
//! permission changes (a `chmod` of one user's home, then of `/home` itself: the versions, bytes
//! and time each adds), and p50/p99 of name-substring queries (first 100 results), of `deleted`
//! for one owner, and of both for one reader under the `readable` rule (a [`Scope`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rewind_catalog::{Catalog, NameMatch, Query, Reader, Scope, SnapshotInfo};
use rewind_store::{ChunkId, Hash, Node, NodeKind, SnapshotId, Time, Tree, TreeId};

const WORDS: &[&str] = &[
    "report",
    "budget",
    "meeting",
    "quarter",
    "invoice",
    "client",
    "draft",
    "final",
    "review",
    "project",
    "schedule",
    "notes",
    "summary",
    "design",
    "backup",
    "restore",
    "server",
    "policy",
    "network",
    "storage",
    "offsite",
    "retention",
    "snapshot",
    "archive",
    "recovery",
    "plan",
    "user",
    "ticket",
    "helpdesk",
    "audit",
    "table",
    "figure",
    "chapter",
    "appendix",
    "data",
    "contract",
    "payroll",
    "minutes",
    "slides",
    "photo",
];
const EXTS: &[&str] = &["txt", "pdf", "docx", "xlsx", "jpg", "rs", "md", "csv"];

/// The workspace's seeded generator (ChaCha8, as the tests and the demo), so that every run
/// builds the same catalog.
struct Rng(rand_chacha::ChaCha8Rng);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
    fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        rand::Rng::random_range(&mut self.0, 0..n)
    }
}

const USERS: usize = 100;
const PROJECTS: usize = 10;

struct World {
    rng: Rng,
    /// Leaf directories: (user, nodes sorted by name).
    leaves: Vec<(usize, Vec<Node>)>,
    leaf_ids: Vec<TreeId>,
    dirs_per_project: usize,
    counter: u64,
    generation: i64,
    /// Permission bits of `/home` and of each user's folder (`chmod` generations change them).
    home_mode: u32,
    user_modes: Vec<u32>,
}

impl World {
    fn file(&mut self, user: usize) -> Node {
        let r = &mut self.rng;
        let name = format!(
            "{}-{}-{:05}.{}",
            WORDS[r.below(WORDS.len())],
            WORDS[r.below(WORDS.len())],
            r.below(100_000),
            EXTS[r.below(EXTS.len())]
        );
        let mut n = Node::new(name.into_bytes(), NodeKind::File);
        self.counter += 1;
        n.content = vec![ChunkId(Hash::of(&self.counter.to_le_bytes()))];
        n.size = self.rng.next() % 5_000_000;
        n.mode = 0o644;
        n.uid = 2000 + user as u32;
        n.gid = n.uid;
        n.mtime = Time { sec: 1_767_225_600 + self.generation * 86_400, nsec: 0 };
        n
    }

    fn new(files: usize) -> World {
        let leaves_n = (files / 40).max(1);
        let mut w = World {
            rng: Rng::new(801),
            leaves: Vec::new(),
            leaf_ids: Vec::new(),
            dirs_per_project: leaves_n.div_ceil(USERS * PROJECTS),
            counter: 0,
            generation: 0,
            home_mode: 0o755,
            user_modes: vec![0o755; USERS],
        };
        for l in 0..leaves_n {
            let user = l % USERS;
            let mut nodes: Vec<Node> = (0..40).map(|_| w.file(user)).collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes.dedup_by(|a, b| a.name == b.name);
            w.leaves.push((user, nodes));
        }
        w
    }

    /// Edit, delete and add `churn` of the files (2/3 edits, 1/6 deletions, 1/6 additions).
    fn step(&mut self, files: usize, churn: f64) -> Vec<bool> {
        self.generation += 1;
        let changes = (files as f64 * churn) as usize;
        let mut dirty = vec![false; self.leaves.len()];
        for c in 0..changes {
            let l = self.rng.below(self.leaves.len());
            dirty[l] = true;
            let user = self.leaves[l].0;
            match c % 6 {
                0 => {
                    if !self.leaves[l].1.is_empty() {
                        let i = self.rng.below(self.leaves[l].1.len());
                        self.leaves[l].1.remove(i);
                    }
                }
                1 => {
                    let n = self.file(user);
                    let nodes = &mut self.leaves[l].1;
                    if let Err(i) = nodes.binary_search_by(|x| x.name.cmp(&n.name)) {
                        nodes.insert(i, n);
                    }
                }
                _ => {
                    if !self.leaves[l].1.is_empty() {
                        let i = self.rng.below(self.leaves[l].1.len());
                        self.counter += 1;
                        let gen_time = 1_767_225_600 + self.generation * 86_400;
                        let n = &mut self.leaves[l].1[i];
                        n.content = vec![ChunkId(Hash::of(&self.counter.to_le_bytes()))];
                        n.size = n.size / 2 + 17;
                        n.mtime = Time { sec: gen_time, nsec: 0 };
                    }
                }
            }
        }
        dirty
    }

    /// Encode the trees that changed; returns the root and the trees of this generation.
    fn trees(&mut self, dirty: Option<&[bool]>, store: &mut HashMap<TreeId, Arc<Tree>>) -> TreeId {
        let mut put = |tree: Tree| {
            let id = Tree::id(&tree.encode());
            store.insert(id, Arc::new(tree));
            id
        };
        if self.leaf_ids.len() != self.leaves.len() {
            self.leaf_ids = vec![TreeId::default(); self.leaves.len()];
        }
        for (i, (_, nodes)) in self.leaves.iter().enumerate() {
            if dirty.is_none_or(|d| d[i]) {
                self.leaf_ids[i] = put(Tree { nodes: nodes.clone() });
            }
        }
        let dir = |name: String, id: TreeId, mode: u32| {
            let mut n = Node::new(name.into_bytes(), NodeKind::Dir);
            n.mode = mode;
            n.subtree = Some(id);
            n
        };
        let mut users = Vec::new();
        for u in 0..USERS {
            let mut projects = Vec::new();
            for p in 0..PROJECTS {
                let mut leaves = Vec::new();
                for d in 0..self.dirs_per_project {
                    let l = (p * self.dirs_per_project + d) * USERS + u;
                    if l < self.leaf_ids.len() {
                        leaves.push(dir(format!("dir{d:03}"), self.leaf_ids[l], 0o755));
                    }
                }
                projects.push(dir(format!("proj{p}"), put(Tree { nodes: leaves }), 0o755));
            }
            users.push(dir(format!("u{u:03}"), put(Tree { nodes: projects }), self.user_modes[u]));
        }
        let home = dir("home".into(), put(Tree { nodes: users }), self.home_mode);
        put(Tree { nodes: vec![home] })
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut files, mut gens, mut churn, mut update_churn) = (1_000_000usize, 30usize, 0.3f64, 0.01f64);
    let mut out = std::path::PathBuf::from("/tmp/rewind-catalog-bench.sqlite");
    let mut queries_only = false;
    let mut forget = false;
    while let Some(a) = args.next() {
        let v = args.next().expect("value");
        match a.as_str() {
            "--files" => files = v.parse().unwrap(),
            "--gens" => gens = v.parse().unwrap(),
            "--churn" => churn = v.parse().unwrap(),
            "--update-churn" => update_churn = v.parse().unwrap(),
            "--out" => out = v.into(),
            "--queries-only" => queries_only = v == "yes",
            "--forget" => forget = v == "yes",
            _ => panic!("unknown argument {a}"),
        }
    }
    if !queries_only {
        build(&out, files, gens, churn, update_churn);
    }
    queries(&out);
    if forget {
        forget_on_copy(&out);
    }
}

/// Retention on a copy of the catalog: drop the oldest snapshot, then one in the middle, each as
/// `sync` does when the repository no longer has it.
fn forget_on_copy(out: &std::path::Path) {
    let copy = out.with_extension("forget.sqlite");
    Catalog::remove(&copy).unwrap();
    std::fs::copy(out, &copy).unwrap();
    let mut cat = Catalog::open(&copy, "bench").unwrap();
    let mut snaps: Vec<SnapshotInfo> = cat
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|s| SnapshotInfo {
            id: SnapshotId(Hash(hex::decode(&s.id).unwrap().try_into().unwrap())),
            host: s.host,
            time: s.time,
            // Catalogued snapshots are never read again.
            tree: TreeId::default(),
        })
        .collect();
    let no_trees: HashMap<TreeId, Arc<Tree>> = HashMap::new();
    for (label, index) in [("the oldest snapshot", 0), ("a snapshot in the middle", snaps.len() / 2)] {
        snaps.remove(index);
        let wanted = std::collections::BTreeMap::from([("fileserver".to_string(), snaps.clone())]);
        let t = Instant::now();
        let report = cat.sync_to(&no_trees, wanted).unwrap();
        println!(
            "forget {label}: {:.2}s ({} versions dropped, hosts rebuilt: {})",
            t.elapsed().as_secs_f64(),
            report.versions_dropped,
            report.hosts_rebuilt.len()
        );
    }
    drop(cat);
    Catalog::remove(&copy).unwrap();
}

fn build(out: &std::path::Path, files: usize, gens: usize, churn: f64, update_churn: f64) {
    Catalog::remove(out).unwrap();
    let mut cat = Catalog::open(out, "bench").unwrap();
    let mut world = World::new(files);
    let mut store: HashMap<TreeId, Arc<Tree>> = HashMap::new();
    let mut build = Duration::ZERO;
    let snap = |cat: &mut Catalog, store: &HashMap<TreeId, Arc<Tree>>, g: usize, root: TreeId| -> Duration {
        let info = SnapshotInfo {
            id: SnapshotId(Hash::of(format!("bench-{g}").as_bytes())),
            host: "fileserver".into(),
            time: jiff::Timestamp::from_second(1_767_225_600 + g as i64 * 86_400).unwrap(),
            tree: root,
        };
        let t = Instant::now();
        assert!(cat.apply(store, &info).unwrap());
        t.elapsed()
    };
    let mut root = world.trees(None, &mut store);
    for g in 0..gens {
        if g > 0 {
            let dirty = world.step(files, churn);
            let mut next = HashMap::new();
            root = world.trees(Some(&dirty), &mut next);
            // Keep this generation's trees and the previous one's (the diff reads both).
            for id in &world.leaf_ids {
                if let Some(t) = store.get(id) {
                    next.entry(*id).or_insert_with(|| t.clone());
                }
            }
            let mut both = next.clone();
            both.extend(store.drain());
            let d = snap(&mut cat, &both, g, root);
            build += d;
            store = next;
        } else {
            build += snap(&mut cat, &store, g, root);
        }
        eprintln!("generation {g}: built in {:.1}s so far", build.as_secs_f64());
    }
    // One more backup, at the update churn.
    let dirty = world.step(files, update_churn);
    let mut next = HashMap::new();
    root = world.trees(Some(&dirty), &mut next);
    for id in &world.leaf_ids {
        if let Some(t) = store.get(id) {
            next.entry(*id).or_insert_with(|| t.clone());
        }
    }
    next.extend(store.drain());
    let update = snap(&mut cat, &next, gens, root);
    store = next;

    // Permission changes: what one `chmod` of a folder adds to the catalog.
    let mut chmods = Vec::new();
    for (g, label) in [(gens + 1, "chmod 0750 of one user's home"), (gens + 2, "chmod 0751 of /home")] {
        if g == gens + 1 {
            world.user_modes[0] = 0o750;
        } else {
            world.home_mode = 0o751;
        }
        world.generation += 1;
        let mut next = HashMap::new();
        root = world.trees(Some(&vec![false; world.leaves.len()]), &mut next);
        next.extend(store.drain());
        let (before, bytes_before) = versions_and_bytes(&mut cat, out);
        let took = snap(&mut cat, &next, g, root);
        let (after, bytes_after) = versions_and_bytes(&mut cat, out);
        chmods.push(format!(
            "{label}: {:.3}s, {} versions added, {:.1} MiB added",
            took.as_secs_f64(),
            after - before,
            (bytes_after as f64 - bytes_before as f64) / (1 << 20) as f64
        ));
        store = next;
    }
    drop(store);

    drop(cat);
    {
        let c = rusqlite_checkpoint(out);
        assert!(c, "checkpoint");
    }
    let cat = Catalog::open_read_only(out).unwrap();
    let st = cat.stats().unwrap();
    println!(
        "catalog: {} versions ({} deleted), {} names, {} dirs, {} snapshots; {:.1} MiB on disk = {:.1} bytes/version",
        st.versions,
        st.deleted,
        st.names,
        st.dirs,
        st.snapshots,
        st.bytes_on_disk as f64 / (1 << 20) as f64,
        st.bytes_on_disk as f64 / st.versions as f64
    );
    println!(
        "full build of {} generations: {:.2}s; update after {:.0}% churn: {:.3}s = {:.2}% of the full build",
        gens + 1,
        build.as_secs_f64() + update.as_secs_f64(),
        update_churn * 100.0,
        update.as_secs_f64(),
        100.0 * update.as_secs_f64() / (build.as_secs_f64() + update.as_secs_f64())
    );
    for line in chmods {
        println!("{line}");
    }
}

/// Versions in the catalog, and its bytes on disk once checkpointed (the writer is closed and
/// opened again around the checkpoint).
fn versions_and_bytes(cat: &mut Catalog, out: &std::path::Path) -> (u64, u64) {
    *cat = Catalog::open(out, "bench").unwrap();
    let st = cat.stats().unwrap();
    (st.versions, st.bytes_on_disk)
}

/// Makes a query pattern of one class.
type Pattern = Box<dyn Fn(&mut Rng) -> String>;

fn queries(out: &std::path::Path) {
    let cat = Catalog::open_read_only(out).unwrap();
    let mut rng = Rng::new(7);
    let classes: [(&str, Pattern); 4] = [
        ("one word (~5% of names)", Box::new(|r: &mut Rng| WORDS[r.below(WORDS.len())].to_uppercase())),
        (
            "two words (~0.06%)",
            Box::new(|r: &mut Rng| format!("{}-{}", WORDS[r.below(WORDS.len())], WORDS[r.below(WORDS.len())])),
        ),
        ("a number (~0.001%)", Box::new(|r: &mut Rng| format!("-{:05}.", r.below(100_000)))),
        ("glob *word-*.pdf", Box::new(|r: &mut Rng| format!("*{}-*.pdf", WORDS[r.below(WORDS.len())]))),
    ];
    for (label, make) in &classes {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..200 {
            let p = make(&mut rng);
            let q = Query { name: Some(NameMatch::guess(&p)), limit: 100, ..Default::default() };
            let t = Instant::now();
            let page = cat.find(&q).unwrap();
            times.push(t.elapsed());
            if t.elapsed() > Duration::from_millis(50) {
                eprintln!("slow: {p:?} {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
            }
            hits += page.items.len();
        }
        println!(
            "find {label}: first 100, p50 {:.1} ms, p99 {:.1} ms (avg {} results)",
            pct(&mut times, 0.5).as_secs_f64() * 1e3,
            pct(&mut times, 0.99).as_secs_f64() * 1e3,
            hits / 200
        );
    }
    let mut times = Vec::new();
    let mut hits = 0;
    for i in 0..200 {
        let q = Query { deleted: true, uid: Some(2000 + (i % USERS) as u32), limit: 100, ..Default::default() };
        let t = Instant::now();
        let page = cat.deleted(&q).unwrap();
        times.push(t.elapsed());
        hits += page.items.len();
    }
    println!(
        "deleted for one owner: first 100, p50 {:.1} ms, p99 {:.1} ms (avg {} results)",
        pct(&mut times, 0.5).as_secs_f64() * 1e3,
        pct(&mut times, 0.99).as_secs_f64() * 1e3,
        hits / 200
    );
    // One reader's view under `readable`: the portal's narrowing of a user who is not root.
    for deleted in [false, true] {
        let mut times = Vec::new();
        let mut hits = 0;
        for i in 0..200 {
            let uid = 2001 + (i % (USERS - 1)) as u32;
            let scope = Scope { reader: Some(Reader { uid, gids: vec![uid] }), ..Default::default() };
            let name = (!deleted).then(|| NameMatch::guess(&WORDS[rng.below(WORDS.len())].to_uppercase()));
            let q = Query { name, deleted, scope: Some(scope), limit: 100, ..Default::default() };
            let t = Instant::now();
            let page = cat.find(&q).unwrap();
            times.push(t.elapsed());
            hits += page.items.len();
        }
        println!(
            "{} for one reader (readable): first 100, p50 {:.1} ms, p99 {:.1} ms (avg {} results)",
            if deleted { "deleted" } else { "find one word" },
            pct(&mut times, 0.5).as_secs_f64() * 1e3,
            pct(&mut times, 0.99).as_secs_f64() * 1e3,
            hits / 200
        );
    }
}

/// Fold the WAL into the database so the size on disk is the database's.
fn rusqlite_checkpoint(path: &std::path::Path) -> bool {
    // Opening and closing a writable catalog checkpoints it.
    Catalog::open(path, "bench").is_ok()
}
