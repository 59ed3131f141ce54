//! One module per command, each a small `run` function; shared helpers below.
//!
//! Output goes through [`outln!`]: a write to a closed pipe (`rewind snapshots | head -1`) is an
//! error that `main` turns into a quiet exit with status 0, as ripgrep does.

/// `println!` that returns the write's error (to end the command) instead of panicking.
macro_rules! outln {
    () => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock())?;
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

pub mod backup;
pub mod catalog;
pub mod check;
pub mod demo;
pub mod init;
pub mod keys;
pub mod ls;
pub mod maintain;
pub mod mount;
pub mod restore;
pub mod serve;
pub mod signals;
pub mod snapshots;
pub mod unlock;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result};
use rewind_store::{CacheSizes, Entry, Images, IndexedRepository, Repository, View};

use crate::cli::RepoArg;

/// Allocator settings for the long-running readers (`mount`, `serve`, `demo`), set before their
/// threads start. glibc gives threads that allocate arenas of their own (up to eight per core),
/// and what is freed in an arena stays with the process. These processes pass every chunk they
/// read (128 KiB to 4 MiB) through a bounded cache from many threads, so left alone the freed
/// buffers pile up in many arenas: the portal's peak under 200 concurrent downloads
/// (`portal/bench/run.sh`) was 200 MiB with default arenas, 110 MiB with two.
/// `mmap_threshold` gives buffers from that size a mapping of their own, returned when freed
/// (glibc would otherwise raise it after the first frees). A fresh mapping costs a page fault and
/// a zeroed page for every 4 KiB, so the mount sets it above its largest chunk (twice the
/// chunker's maximum) and takes every chunk buffer from the heap, where freed ones are reused. A
/// cold read of a 256 MiB file through the mount took 422-460 ms of the mount's CPU with a
/// 1 MiB threshold and 353-393 ms with 8 MiB (wall 275-312 ms, 241-284 ms). Resident memory
/// after a `find`, two reads and a `tar` was 87-143 MiB with either threshold; what keeps it
/// down is the mount's trimming of free heap memory (`fs/src/latency.rs`).
pub fn tune_allocator(mmap_threshold: Option<i32>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        if let Some(bytes) = mmap_threshold {
            libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
        }
    }
    let _ = mmap_threshold;
}

/// Open the repository a command names (asking for its password if it is encrypted and none
/// is given).
pub fn open_repo(repo: &RepoArg) -> Result<Repository> {
    keys::open(&repo.repo, &repo.key)
}

/// What a summary line says about a repository's encryption: nothing when encrypted (the
/// default), a warning when not.
pub fn encryption_note(repo: &Repository) -> &'static str {
    if repo.is_encrypted() { "" } else { "; repository NOT encrypted (format version 1)" }
}

pub fn open_indexed(repo: &RepoArg) -> Result<IndexedRepository> {
    let r = open_repo(repo)?;
    r.open_indexed(CacheSizes::default()).with_context(|| format!("cannot load the index of {}", repo.repo.display()))
}

/// Bytes for people: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1}s") } else { format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64) }
}

/// A progress bar on a terminal, nothing elsewhere. `message` is polled ten times a second.
pub struct Progress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(message: impl Fn() -> String + Send + 'static) -> Progress {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { stop, thread: None };
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("template"),
        );
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                bar.set_message(message());
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Progress { stop, thread: Some(thread) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Show a name that may not be UTF-8: invalid bytes and control characters escaped.
pub fn show_bytes(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() { out.extend(c.escape_default()) } else { out.push(c) }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The view's entry for `path` of a snapshot when it lies inside a disk image
/// (`/vms/disk0.qcow2.d/p1/etc`), with its name; `None` when it is not (the caller then says the
/// path is missing).
pub fn inside_image(
    repo: &IndexedRepository,
    id: rewind_store::SnapshotId,
    path: &str,
) -> Result<Option<(View, Entry, Vec<u8>)>> {
    if !path.split('/').any(|c| c.len() > 2 && c.ends_with(".d")) {
        return Ok(None);
    }
    let view = View::new(repo.clone()).context("cannot read the snapshots")?;
    let mut entry = Entry::Snapshot(id);
    let mut name = Vec::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        entry = match view.lookup(&entry, comp.as_bytes(), Images::Show) {
            Ok(e) => e,
            Err(rewind_store::Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot look {path} up")),
        };
        name = comp.as_bytes().to_vec();
    }
    Ok(matches!(entry, Entry::Image(_)).then_some((view, entry, name)))
}
