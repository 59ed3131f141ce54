//! A file server's home directories and their history, deterministic from a seed: the corpus the
//! end-to-end tests back up. Modelled on the benchmarks' `shared/bench/corpus.py`, but built
//! here so that a fresh clone needs nothing beside it (the bytes are not the Python corpus's).
//!
//! Generation 0 ([`corpus_make`]) holds, per user (`users/<name>`, files owned by uid
//! 2001..2008 when run as root):
//! - `Documents/folderNN/`: text-like, compressible files (1 KiB - 400 KiB);
//! - `Code/projN/src/mNN/`: many small source-like files (100 B - 24 KiB);
//! - `Pictures/`: incompressible files (200 KB - 6 MB, smaller below scale 0.25);
//! - `logs/activity.log`, appended to at every step;
//! - `shared/`: the same handbooks in every home (file-level dedup);
//!
//! and `vm/disk-N.img`, one disk-image-like file per scale unit (blocks of text, zeros and
//! random bytes, so that content-defined chunking matters), 256 MiB at scale 1 and at least
//! 8 MiB.
//!
//! Each step ([`corpus_step`]) edits ~3% of the text and code files in the middle (insert,
//! delete or replace bytes), appends to every log, rewrites four 1 MiB regions of each image,
//! deletes ~1.5% of each home's files (at least one per home), adds 2-12 documents per home and
//! renames one `Code/projN` folder (`projN-renamed-genG`): the changes a restore portal shows as
//! deleted or changed. Same seed, scale and generation: same names, bytes, owners and mtimes.
//! Scale 1 is about 930 MiB in 9,600 files; the tests use 0.02 (20 MiB) to 0.3 (260 MiB).

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rand::seq::IndexedRandom;

use super::rng::{Rng, RngCore, TestRng, seeded};

/// The homes' owners, uid 2001 for the first.
pub const USERS: [&str; 8] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];
pub const FIRST_UID: u32 = 2001;
/// 2026-01-01T00:00:00Z: generation 0's files are from the 300 days after; step G's at day 300+G.
pub const BASE_MTIME: i64 = 1_767_225_600;
/// The seed of [`corpus_make`] and [`corpus_step`].
pub const SEED: u64 = 801;

const WORDS: [&str; 35] = [
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
];

/// What a step changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCounts {
    pub edited: usize,
    pub deleted: usize,
    pub added: usize,
}

/// Build generation 0 under `dir` (which must be missing or empty) at `scale`, with [`SEED`];
/// returns the number of files.
pub fn corpus_make(dir: &Path, scale: f64) -> usize {
    make(dir, scale, SEED)
}

/// Turn the corpus at `dir` into generation `generation` (1, 2, ...), with [`SEED`].
pub fn corpus_step(dir: &Path, generation: u32) -> StepCounts {
    step(dir, generation, SEED)
}

/// Generation 0 from `seed`.
pub fn make(root: &Path, scale: f64, seed: u64) -> usize {
    assert!(scale > 0.0, "corpus scale {scale}");
    if let Ok(mut entries) = fs::read_dir(root) {
        assert!(entries.next().is_none(), "corpus: {} is not empty", root.display());
    }
    let mut rng = seeded(seed);
    let mut files = 0;
    let days = |rng: &mut TestRng| BASE_MTIME + rng.random_range(0..=86_400 * 300);
    let docs = (260.0 * scale) as usize;
    // Several documents to a folder even at small scales.
    let folders = (docs / 4).clamp(1, 12);
    let code = (900.0 * scale) as usize;
    let pictures = ((14.0 * scale) as usize).max(1);
    let picture_max = 200_000 + (5_800_000.0 * (scale * 4.0).min(1.0)) as usize;
    for (ui, user) in USERS.iter().enumerate() {
        let uid = FIRST_UID + ui as u32;
        let home = root.join("users").join(user);
        for i in 0..docs {
            let name = format!("{}-{i:04}.txt", WORDS.choose(&mut rng).unwrap());
            let p = home.join("Documents").join(format!("folder{:02}", i % folders)).join(name);
            // Sizes spread evenly on a log scale, 1 KiB to 400 KiB.
            let size = (1024.0 * 400f64.powf(rng.random::<f64>())) as usize;
            let data = text_blob(&mut rng, size);
            write(&p, &data, uid, days(&mut rng));
            files += 1;
        }
        for i in 0..code {
            let p = home.join(format!("Code/proj{}/src/m{:02}/f{i:04}.rs", i % 7, i % 30));
            let size = rng.random_range(100..=24_000);
            let data = code_blob(&mut rng, size);
            write(&p, &data, uid, days(&mut rng));
            files += 1;
        }
        for i in 0..pictures {
            let mut data = vec![0u8; rng.random_range(200_000..=picture_max)];
            rng.fill_bytes(&mut data);
            write(&home.join(format!("Pictures/IMG_{i:04}.jpg")), &data, uid, days(&mut rng));
            files += 1;
        }
        write(&home.join("logs/activity.log"), &text_blob(&mut rng, 200_000), uid, BASE_MTIME);
        files += 1;
    }
    // The same files in every home.
    let mut srng = seeded(seed + 1);
    let shared: Vec<(Vec<u8>, String)> = (0..((20.0 * scale) as usize).max(1))
        .map(|i| {
            let size = srng.random_range(50_000..=900_000);
            (text_blob(&mut srng, size), format!("handbook-{i}.txt"))
        })
        .collect();
    for (ui, user) in USERS.iter().enumerate() {
        for (data, name) in &shared {
            write(&root.join("users").join(user).join("shared").join(name), data, FIRST_UID + ui as u32, BASE_MTIME);
            files += 1;
        }
    }
    let image_mib = ((256.0 * scale.min(1.0)).round() as usize).max(8);
    for i in 0..(scale as usize).max(1) {
        let data = image_blob(&mut rng, image_mib << 20);
        write(&root.join(format!("vm/disk-{i}.img")), &data, 0, BASE_MTIME);
        files += 1;
    }
    files
}

/// Generation `generation` (from the one before) from `seed`.
pub fn step(root: &Path, generation: u32, seed: u64) -> StepCounts {
    assert!(generation >= 1, "generation 0 is made, not stepped to");
    let mut rng = seeded(seed * 1000 + u64::from(generation));
    let mtime = BASE_MTIME + 86_400 * (300 + i64::from(generation));
    let files = all_files(root);
    let mut counts = StepCounts { edited: 0, deleted: 0, added: 0 };

    let texts: Vec<&PathBuf> = files.iter().filter(|f| has_ext(f, "txt") || has_ext(f, "rs")).collect();
    let edits = (texts.len() * 3 / 100).max(1).min(texts.len());
    for i in rand::seq::index::sample(&mut rng, texts.len(), edits) {
        let f = texts[i];
        let mut data = fs::read(f).unwrap_or_else(|e| panic!("corpus: {}: {e}", f.display()));
        let at = rng.random_range(0..=data.len());
        let op = rng.random::<f64>();
        if op < 0.4 {
            let n = rng.random_range(10..=3000);
            let insert = text_blob(&mut rng, n);
            data.splice(at..at, insert);
        } else if op < 0.7 {
            let n = rng.random_range(10..=3000);
            data.drain(at..(at + n).min(data.len()));
        } else {
            let replace = text_blob(&mut rng, 500);
            data.splice(at..(at + 500).min(data.len()), replace);
        }
        write(f, &data, owner_of(root, f), mtime);
        counts.edited += 1;
    }
    for f in files.iter().filter(|f| f.file_name().is_some_and(|n| n == "activity.log")) {
        let mut h = fs::OpenOptions::new().append(true).open(f).unwrap();
        h.write_all(&text_blob(&mut rng, 20_000)).unwrap();
        drop(h);
        set_mtime(f, mtime);
    }
    for f in files.iter().filter(|f| has_ext(f, "img")) {
        let mut h = fs::OpenOptions::new().write(true).open(f).unwrap();
        let mib = (h.metadata().unwrap().len() >> 20).max(2);
        for _ in 0..4 {
            h.seek(SeekFrom::Start(rng.random_range(0..mib - 1) << 20)).unwrap();
            h.write_all(&image_blob(&mut rng, 1 << 20)).unwrap();
        }
        drop(h);
        set_mtime(f, mtime);
    }
    for user in USERS {
        let home = root.join("users").join(user);
        let mine: Vec<&PathBuf> = files
            .iter()
            .filter(|f| f.starts_with(&home) && f.file_name().is_some_and(|n| n != "activity.log"))
            .collect();
        let n = (mine.len() * 15 / 1000).max(1).min(mine.len());
        for i in rand::seq::index::sample(&mut rng, mine.len(), n) {
            fs::remove_file(mine[i]).unwrap();
            counts.deleted += 1;
        }
    }
    for (ui, user) in USERS.iter().enumerate() {
        let dir = root.join("users").join(user).join(format!("Documents/new-gen{generation:03}"));
        for i in 0..rng.random_range(2..=12) {
            let name = format!("{}-{i}.txt", WORDS.choose(&mut rng).unwrap());
            let size = rng.random_range(1000..=120_000);
            let data = text_blob(&mut rng, size);
            write(&dir.join(name), &data, FIRST_UID + ui as u32, mtime);
            counts.added += 1;
        }
    }
    let user = USERS[generation as usize % USERS.len()];
    let src = root.join("users").join(user).join(format!("Code/proj{}", generation % 7));
    if src.is_dir() {
        let mut to = src.clone().into_os_string();
        to.push(format!("-renamed-gen{generation}"));
        fs::rename(&src, to).unwrap();
    }
    counts
}

fn text_blob(rng: &mut TestRng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 128);
    while out.len() < size {
        for w in 0..rng.random_range(4..=14) {
            if w > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS.choose(rng).unwrap().as_bytes());
        }
        out.extend_from_slice(format!(" {}\n", rng.random_range(0..=99_999)).as_bytes());
    }
    out.truncate(size);
    out
}

fn code_blob(rng: &mut TestRng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 128);
    while out.len() < size {
        let (a, b) = (WORDS.choose(rng).unwrap(), WORDS.choose(rng).unwrap());
        let k = rng.random_range(1..=999);
        out.extend_from_slice(format!("fn {a}_{b}(x: u32) -> u32 {{ x.wrapping_mul({k}) }}\n").as_bytes());
    }
    out.truncate(size);
    out
}

/// Disk-image-like: blocks of zeros, text and random bytes.
fn image_blob(rng: &mut TestRng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + (256 << 10));
    while out.len() < size {
        let kind = rng.random::<f64>();
        let n = *[4096, 65_536, 262_144].choose(rng).unwrap();
        if kind < 0.35 {
            out.resize(out.len() + n, 0);
        } else if kind < 0.8 {
            out.extend_from_slice(&text_blob(rng, n));
        } else {
            let at = out.len();
            out.resize(at + n, 0);
            rng.fill_bytes(&mut out[at..]);
        }
    }
    out.truncate(size);
    out
}

fn write(path: &Path, data: &[u8], uid: u32, mtime: i64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap_or_else(|e| panic!("corpus: {}: {e}", path.display()));
    // Owners when run as root (as the tests are); as another user the files stay theirs.
    match std::os::unix::fs::chown(path, Some(uid), Some(uid)) {
        Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => panic!("corpus: chown {}: {e}", path.display()),
        _ => {}
    }
    set_mtime(path, mtime);
}

fn set_mtime(path: &Path, mtime: i64) {
    let t = filetime::FileTime::from_unix_time(mtime, 0);
    filetime::set_file_times(path, t, t).unwrap();
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e == ext)
}

/// The uid a path under `users/<name>/` belongs to (0 elsewhere).
fn owner_of(root: &Path, path: &Path) -> u32 {
    let users = root.join("users");
    let name = path.strip_prefix(&users).ok().and_then(|r| r.iter().next());
    USERS.iter().position(|u| name.is_some_and(|n| n == *u)).map_or(0, |i| FIRST_UID + i as u32)
}

/// Every entry under `root` that is not a directory, sorted (symlinks are not followed).
fn all_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("corpus: {}: {e}", d.display())) {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
