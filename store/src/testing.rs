//! What the unit tests of several modules set up alike: a repository in a temporary folder and
//! a backup into it.

use std::path::Path;

use crate::{
    BackupOptions, BackupProgress, CacheSizes, ChunkerParams, CompressionParams, IndexedRepository, Repository,
    SnapshotEntry, backup,
};

/// A new encrypted repository at `dir/repo` with the default parameters, its index loaded.
pub(crate) fn repo_in(dir: &Path) -> IndexedRepository {
    Repository::init(&dir.join("repo"), ChunkerParams::default(), CompressionParams::default(), crate::NewKey::test())
        .unwrap()
        .open_indexed(CacheSizes::default())
        .unwrap()
}

/// Back `src` up as host `h`; any file that cannot be read fails the test.
pub(crate) fn back_up(repo: &IndexedRepository, src: &Path) -> SnapshotEntry {
    let opts = BackupOptions { paths: vec![src.to_path_buf()], host: "h".into(), ..BackupOptions::default() };
    backup(repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap()
}
