//! The shared harness: temporary repositories, the built binary, the corpus and its history
//! (`corpus`), the seeded generator (`rng`), waiting on conditions (`wait`), and tree
//! comparison. Everything a test needs is built here: nothing is read from outside the
//! repository.

#![allow(dead_code)]

/// Tests whose body takes a [`TempRepo`], run once on a local repository and once on one in a
/// bucket of the shared Garage node: `NAME::local` and `NAME::s3`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn local() {
                super::$name($crate::support::TempRepo::new())
            }
            #[test]
            fn s3() {
                super::$name($crate::support::TempRepo::on_s3(stringify!($name)))
            }
        }
    )*};
}

pub mod access;
pub mod corpus;
pub mod faults;
pub mod garage;
/// Source trees and disk images built with the real tools: the store's image tests' helpers,
/// shared rather than written twice.
#[path = "../../store/tests/image_tools/mod.rs"]
pub mod image_tools;
pub mod portal;
pub mod rng;
pub mod slapd;
pub mod wait;

pub use corpus::{corpus_make, corpus_step};
pub use rng::pseudo_random;
pub use wait::{PATIENCE, wait_until};

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Flip a byte in the middle of chunk `id` where its pack stores it: the chunk no longer reads.
pub fn damage_chunk(t: &TempRepo, indexed: &rewind_store::IndexedRepository, id: rewind_store::ChunkId) {
    let loc = indexed.locate(id.into()).unwrap();
    let hex = loc.pack.to_hex();
    let pack = t.repo.join("data").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
}

/// The `rewind` binary under test.
pub fn rewind_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rewind"))
}

/// The password of the tests' encrypted repositories.
pub const TEST_PASSWORD: &str = "rewind-test-password";

/// `rewind` with the tests' password, and a cheap key derivation for the repositories it
/// creates (recorded in their key files; the real cost is tested on its own).
pub fn rewind_cmd() -> Command {
    let mut c = Command::new(rewind_bin());
    c.env("REWIND_PASSWORD", TEST_PASSWORD).env("REWIND_KDF_MEMORY_KIB", "64").env("REWIND_KDF_ITERATIONS", "1");
    c
}

/// The tests' password as the store takes it.
pub fn test_secret() -> rewind_store::Secret {
    rewind_store::Secret::password(TEST_PASSWORD)
}

/// A temporary directory holding a repository (`repo/`) and room for sources and targets.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    /// Encrypted (the default) with [`TEST_PASSWORD`], or plaintext (format version 1).
    pub encrypted: bool,
}

impl TempRepo {
    /// In the system's temporary directory.
    pub fn new() -> TempRepo {
        TempRepo::in_dir(tempfile::Builder::new().prefix("rewind-test-").tempdir().expect("tempdir"))
    }

    /// Directly under `/`, for a test that asserts on the metadata of every directory a snapshot
    /// records: a snapshot holds each ancestor of its source paths (not `/` itself), and `/tmp`
    /// changes its mtime whenever anyone creates a file there, so only a directory of its own at
    /// the top keeps every recorded ancestor the test's. Needs root.
    pub fn owning_its_ancestors() -> TempRepo {
        assert!(is_root(), "a test directory directly under / needs root");
        TempRepo::in_dir(tempfile::Builder::new().prefix("rewind-test-").tempdir_in("/").expect("tempdir in /"))
    }

    /// Encrypted with its own key, but cutting and naming content as `other` does
    /// (`init --copy-chunker-params`): ids of the same content are the same in both.
    pub fn with_content_identity_of(other: &TempRepo) -> TempRepo {
        let dir = tempfile::Builder::new().prefix("rewind-test-").tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let out = rewind_cmd().arg("init").arg(&repo).arg("--copy-chunker-params").arg(&other.repo).output().unwrap();
        assert_success(&out, "rewind init --copy-chunker-params");
        TempRepo::made(dir, repo, true)
    }

    /// Unencrypted (`init --insecure-no-encryption`, format version 1).
    pub fn plain() -> TempRepo {
        let dir = tempfile::Builder::new().prefix("rewind-test-").tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let out = Command::new(rewind_bin()).arg("init").arg("--insecure-no-encryption").arg(&repo).output().unwrap();
        assert_success(&out, "rewind init --insecure-no-encryption");
        TempRepo::made(dir, repo, false)
    }

    fn in_dir(dir: tempfile::TempDir) -> TempRepo {
        let repo = dir.path().join("repo");
        let out = rewind_cmd().arg("init").arg(&repo).output().expect("run rewind init");
        assert_success(&out, "rewind init");
        TempRepo::made(dir, repo, true)
    }

    /// An encrypted repository in a prefix of its own on the shared Garage node; its local
    /// caches in the temporary directory.
    pub fn on_s3(name: &str) -> TempRepo {
        TempRepo::on_garage(garage::Garage::shared(), name)
    }

    /// [`TempRepo::on_s3`] on the cluster `g` (through its node 0).
    pub fn on_garage(g: &garage::Garage, name: &str) -> TempRepo {
        garage::credentials_in_env();
        let dir = tempfile::Builder::new().prefix("rewind-test-").tempdir().expect("tempdir");
        let repo = PathBuf::from(g.repo_url(name));
        let t = TempRepo::made(dir, repo, true);
        let out = t.cmd().arg("init").arg(&t.repo).output().expect("run rewind init");
        assert_success(&out, "rewind init (S3)");
        t
    }

    /// With its cache folder made at once: one made by its first backup would change the test
    /// folder's mtime, which snapshots of sources in it record.
    fn made(dir: tempfile::TempDir, repo: PathBuf, encrypted: bool) -> TempRepo {
        let t = TempRepo { dir, repo, encrypted };
        std::fs::create_dir_all(t.cache_dir()).expect("the test's cache folder");
        t
    }

    /// Whether the repository is in an S3 bucket.
    pub fn is_s3(&self) -> bool {
        self.repo.to_str().is_some_and(|s| s.starts_with("s3:"))
    }

    /// The repository opened in process.
    pub fn open(&self) -> rewind_store::Repository {
        let secret = self.encrypted.then(test_secret);
        let storage = rewind_s3::storage_at(&self.repo).expect("the test repository's storage");
        rewind_store::Repository::open_in(storage, secret.as_ref()).expect("open the test repository")
    }

    /// A path inside the temporary directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Give another program (a shell that runs rewind) what rewind needs for this repository:
    /// `REWIND_REPO` and, if encrypted, its password.
    pub fn cmd_env<'c>(&self, c: &'c mut Command) -> &'c mut Command {
        if self.encrypted {
            c.env("REWIND_PASSWORD", TEST_PASSWORD);
        }
        c.env("REWIND_REPO", &self.repo).env("RUST_LOG", "warn").env("REWIND_CACHE_DIR", self.cache_dir())
    }

    /// The local cache folder every rewind this test runs uses (`REWIND_CACHE_DIR`): the
    /// catalog, and a remote repository's copies of its files. A portal started on a local
    /// repository's path finds the same folder ([`Portal::start_env`]).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Where this repository's catalog is by default (in [`TempRepo::cache_dir`]).
    pub fn catalog_path(&self) -> PathBuf {
        self.cache_dir().join(self.open().config().id.to_hex()).join("catalog.sqlite")
    }

    /// `rewind ARGS` with `REWIND_REPO` set to this repository.
    pub fn cmd(&self) -> Command {
        let mut c = if self.encrypted { rewind_cmd() } else { Command::new(rewind_bin()) };
        c.env("REWIND_REPO", &self.repo).env("RUST_LOG", "warn").env("REWIND_CACHE_DIR", self.cache_dir());
        if self.is_s3() {
            garage::Garage::env(&mut c);
        }
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.cmd().args(args).output().expect("run rewind")
    }

    /// Run and require success; returns stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        let what = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        assert_success(&out, &format!("rewind {what}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Back up `paths` as host `host`; returns the snapshot as JSON.
    pub fn backup(&self, host: &str, paths: &[&Path]) -> serde_json::Value {
        let mut args: Vec<&OsStr> =
            vec![OsStr::new("backup"), OsStr::new("--json"), OsStr::new("--host"), OsStr::new(host)];
        args.extend(paths.iter().map(|p| p.as_os_str()));
        let out = self.ok(&args);
        serde_json::from_str(out.trim()).expect("backup --json prints one JSON object")
    }

    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["snapshots", "--json"])).expect("snapshots --json")
    }

    /// Restore `SNAPSHOT[:PATH]` into a new directory and return it.
    pub fn restore(&self, what: &str, target: &Path) {
        self.ok(&[OsStr::new("restore"), OsStr::new(what), OsStr::new("--target"), target.as_os_str()]);
    }
}

/// Start `rewind serve --config CONFIG`; returns the process and the URL it says it listens on
/// (`http://127.0.0.1:PORT` or `https://...`).
pub fn spawn_serve(config: &Path) -> (std::process::Child, String) {
    spawn_serve_env(config, &[])
}

/// [`spawn_serve`] with more environment variables.
pub fn spawn_serve_env(config: &Path, env: &[(&str, &OsStr)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = rewind_cmd()
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start rewind serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|_| line.contains("listening on"))
        .unwrap_or_else(|| panic!("rewind serve did not start: {line:?}"))
        .to_string();
    (child, url)
}

pub fn run(bin: &Path, args: &[&OsStr]) -> Output {
    Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Run SQL statements on the SQLite database `db` with another program's SQLite (python3's):
/// to make files rewind must take or leave as they are. Returns the rows of the last, printed.
pub fn sqlite(db: &Path, statements: &[&str]) -> String {
    let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nr = None\nfor s in sys.argv[2:]:\n    r = c.execute(s).fetchall()\nc.commit()\nprint(r)\n";
    let out = Command::new("python3").args(["-c", script]).arg(db).args(statements).output().expect("run python3");
    assert_success(&out, "python3 sqlite3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a tree looks like, entry by entry: kind, mode, owner, size, mtime, content hash, link
/// target, xattrs, and which entries are hard links of each other.
#[derive(Debug, PartialEq, Eq)]
pub struct EntryShape {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub content: Option<String>,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For hard links: the first path (in sorted order) sharing the inode.
    pub link_of: Option<Vec<u8>>,
    pub rdev: u64,
}

pub struct ShapeOptions {
    pub owners: bool,
    pub dir_mtimes: bool,
    pub xattrs: bool,
}

impl Default for ShapeOptions {
    fn default() -> Self {
        ShapeOptions { owners: true, dir_mtimes: true, xattrs: true }
    }
}

/// Every entry under `root` (relative path bytes -> shape), `root` itself excluded.
pub fn tree_shape(root: &Path, opts: &ShapeOptions) -> BTreeMap<Vec<u8>, EntryShape> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, m));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, m) in all {
        let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else if ft.is_socket() {
            "socket"
        } else {
            "file"
        };
        let content =
            if kind == "file" { Some(blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string()) } else { None };
        let target = if kind == "symlink" {
            Some(std::fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec())
        } else {
            None
        };
        let link_of = if kind == "file" && m.nlink() > 1 {
            let first = inodes.entry((m.dev(), m.ino())).or_insert_with(|| rel.clone()).clone();
            Some(first)
        } else {
            None
        };
        let xattrs = if opts.xattrs && kind != "symlink" {
            xattr::list(&p)
                .map(|names| {
                    names
                        .filter_map(|n| xattr::get(&p, &n).ok().flatten().map(|v| (n.as_bytes().to_vec(), v)))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        out.insert(
            rel,
            EntryShape {
                kind,
                mode: if kind == "symlink" { 0 } else { m.mode() & 0o7777 },
                uid: if opts.owners { m.uid() } else { 0 },
                gid: if opts.owners { m.gid() } else { 0 },
                size: if kind == "dir" { 0 } else { m.len() },
                mtime: if kind == "dir" && !opts.dir_mtimes { (0, 0) } else { (m.mtime(), m.mtime_nsec()) },
                content,
                target,
                xattrs,
                link_of,
                rdev: if kind == "chardev" || kind == "blockdev" { m.rdev() } else { 0 },
            },
        );
    }
    out
}

/// Assert that two trees are equal entry by entry, naming the first difference.
pub fn assert_same_tree(expected: &Path, actual: &Path, opts: &ShapeOptions) {
    let a = tree_shape(expected, opts);
    let b = tree_shape(actual, opts);
    for (path, shape) in &a {
        match b.get(path) {
            None => panic!("{} is missing from {}", String::from_utf8_lossy(path), actual.display()),
            Some(other) => assert_eq!(shape, other, "{} differs", String::from_utf8_lossy(path)),
        }
    }
    for path in b.keys() {
        assert!(a.contains_key(path), "{} is extra in {}", String::from_utf8_lossy(path), actual.display());
    }
}

/// Files of the repository of a kind (`data`, `index`, `snapshots`).
pub fn repo_files(repo: &Path, kind: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(kind)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
