//! A reader that opened the repository before a prune keeps reading correct bytes after the
//! prune moved or deleted the packs it had resolved.

use std::path::Path;

use rewind_store::prune::{PruneOptions, PruneProgress, forget, prune};
use rewind_store::{BackupOptions, BackupProgress, CacheSizes, ChunkerParams, CompressionParams, Repository, backup};

/// `n` files of 300,000 letters a-g from the workspace's seeded test generator (ChaCha8).
fn write_files(dir: &Path, seed: u64, n: usize) {
    use rand::{Rng, SeedableRng};
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for i in 0..n {
        let data: Vec<u8> = (0..300_000).map(|_| rng.random_range(b'a'..=b'g')).collect();
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
}

#[test]
fn reader_survives_prune() {
    let d = tempfile::tempdir().unwrap();
    let repo = Repository::init(
        &d.path().join("repo"),
        ChunkerParams { min_size: 16 << 10, avg_size: 64 << 10, max_size: 256 << 10 },
        CompressionParams::default(),
        rewind_store::NewKey::test(),
    )
    .unwrap();
    let src = d.path().join("src");
    let report = |p: &Path, e: &rewind_store::Error| panic!("{}: {e}", p.display());
    let opts = BackupOptions { paths: vec![src.clone()], host: "h".into(), ..Default::default() };
    write_files(&src.join("keep"), 1, 20);
    write_files(&src.join("gone"), 2, 20);
    let indexed = repo.open_indexed(CacheSizes { chunk_bytes: 0, tree_bytes: 0, group_bytes: 0 }).unwrap();
    let first = backup(&indexed, &opts, &BackupProgress::default(), &report).unwrap();
    std::fs::remove_dir_all(src.join("gone")).unwrap();
    let second = backup(&indexed, &opts, &BackupProgress::default(), &report).unwrap();

    // A reader resolves every kept file before the prune.
    let reader = repo.open_indexed(CacheSizes { chunk_bytes: 0, tree_bytes: 0, group_bytes: 0 }).unwrap();
    let files: Vec<_> = (0..20)
        .map(|i| {
            let p = format!("{}/keep/f{i}", src.display());
            let node = reader.node_at(&second.snapshot, p.as_bytes()).unwrap();
            (p, reader.open_file(&node).unwrap())
        })
        .collect();

    forget(&repo, &[first.id]).unwrap();
    let r = prune(&repo, &PruneOptions { dry_run: false, max_repack_percent: 100 }, &PruneProgress::default()).unwrap();
    assert!(r.packs_deleted > 0, "{r:?}");
    assert!(r.packs_repacked > 0, "the packs mixed kept and forgotten data: {r:?}");

    for (p, f) in files {
        let mut buf = vec![0u8; f.size() as usize];
        assert_eq!(f.read_at(0, &mut buf).unwrap(), buf.len());
        let name = p.rsplit('/').next().unwrap();
        assert_eq!(buf, std::fs::read(src.join("keep").join(name)).unwrap(), "{p}");
    }
}
