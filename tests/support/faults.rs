//! Helpers of the fault tests: source trees made here (no corpus script), failpoint handshakes
//! with a running `rewind` (store/src/failpoint.rs), byte flips, and checks that every
//! snapshot still restores to what was backed up.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A source tree of `files` files, about `bytes` in all: a mix of incompressible and text-like
/// content in a few directories, varied by `seed`.
pub fn make_source(dir: &Path, files: usize, bytes: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let each = (bytes / files.max(1)).max(1);
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let s = seed.wrapping_mul(1000).wrapping_add(i as u64);
        let data = if i % 3 == 0 {
            let words: Vec<u8> =
                pseudo_random(each / 8 + 1, s).iter().flat_map(|b| format!("w{} ", b % 50).into_bytes()).collect();
            words[..words.len().min(each)].to_vec()
        } else {
            pseudo_random(each, s)
        };
        std::fs::write(sub.join(format!("f{i}.bin")), data).unwrap();
    }
}

/// Change some files of a tree made by [`make_source`], add one and remove one.
pub fn mutate_source(dir: &Path, seed: u64) {
    let mut files = repo_like_files(dir);
    files.sort();
    for (k, f) in files.iter().enumerate() {
        if (k as u64 + seed).is_multiple_of(4) {
            let mut b = std::fs::read(f).unwrap();
            let n = b.len();
            if n > 0 {
                b[n / 2] ^= 0x5a;
            }
            b.extend_from_slice(&pseudo_random(4096, seed + k as u64));
            std::fs::write(f, b).unwrap();
        }
    }
    if let Some(f) = files.first() {
        std::fs::remove_file(f).unwrap();
    }
    std::fs::write(dir.join(format!("d0/new-{seed}.bin")), pseudo_random(300_000, seed)).unwrap();
}

fn repo_like_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

/// A copy of `src` at `dst` (`cp -a`): what a snapshot of it must restore to.
pub fn keep_copy(src: &Path, dst: &Path) {
    assert_success(&Command::new("cp").arg("-a").arg(src).arg(dst).output().unwrap(), "cp -a");
}

/// A directory where failpoint handshakes happen.
pub struct Points {
    pub dir: PathBuf,
}

impl Points {
    pub fn new(t: &TempRepo) -> Points {
        let dir = t.path("failpoints");
        std::fs::create_dir_all(&dir).unwrap();
        Points { dir }
    }

    /// `rewind ARGS` of `t` with failpoints `spec` (`name=action;...`).
    pub fn cmd(&self, t: &TempRepo, spec: &str) -> Command {
        let mut c = t.cmd();
        c.env("REWIND_FAILPOINTS", spec).env("REWIND_FAILPOINT_DIR", &self.dir);
        c
    }

    /// Start `rewind ARGS` with failpoints, output captured.
    pub fn spawn<S: AsRef<OsStr>>(&self, t: &TempRepo, spec: &str, args: &[S]) -> Child {
        self.cmd(t, spec).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start rewind")
    }

    /// Wait until a process paused at `name` (or ended: returns false then).
    pub fn wait(&self, name: &str, child: &mut Child) -> bool {
        let hit = self.dir.join(format!("{name}.hit"));
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if hit.exists() {
                return true;
            }
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no process reached failpoint {name} in two minutes");
    }

    /// Let the process paused at `name` go on.
    pub fn release(&self, name: &str) {
        std::fs::write(self.dir.join(format!("{name}.go")), b"").unwrap();
    }
}

/// Wait for a child and return its output, requiring success.
pub fn finish_ok(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    assert_success(&out, what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flip one byte of a file in place.
pub fn flip_byte(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = offset.min(b.len() - 1);
    b[at] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

/// Every snapshot id, oldest first.
pub fn snapshot_ids(t: &TempRepo) -> Vec<String> {
    t.snapshots().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

/// `check --read-data` must pass.
pub fn check_all(t: &TempRepo) {
    t.ok(&["check", "--read-data"]);
}

/// Restore snapshot `id`'s `src` and compare it with the copy kept when it was made.
pub fn assert_restores(t: &TempRepo, id: &str, src: &Path, expected: &Path) {
    let out = t.path(&format!("restore-{}-{}", &id[..8], COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    t.restore(&format!("{}:{}", &id[..8], src.display()), &out);
    assert_same_tree(expected, &out, &ShapeOptions { dir_mtimes: false, ..Default::default() });
    std::fs::remove_dir_all(&out).unwrap();
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Files of a kind in the repository (`data`, `index`, `snapshots`, `locks`, `pending`, `tmp`).
pub fn files_of(repo: &Path, kind: &str) -> Vec<PathBuf> {
    if !repo.join(kind).exists() {
        return Vec::new();
    }
    repo_files(repo, kind)
}
