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
/// Setting `mmap_threshold` stops glibc's own tuning of the trim threshold too, which would stay
/// at 128 KiB: every free that left that much at the top of a heap would hand it back, and the
/// next allocation fault it in again. On huge pages ([`reexec_with_huge_pages`]) each such
/// regrowth zeroes 2 MiB, under the heap's lock (a cold read of 122 ms rather than 50 had a
/// third of its samples zeroing huge pages in `sysmalloc`, and the other readers waiting). So
/// the trim threshold is set as glibc would have set it, twice the mmap threshold. (Slow runs
/// still come now and then, one in ten or twenty: a heap's first growth zeroes its huge pages
/// under the lock too.)
pub fn tune_allocator(mmap_threshold: Option<i32>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        if let Some(bytes) = mmap_threshold {
            libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
            libc::mallopt(libc::M_TRIM_THRESHOLD, bytes.saturating_mul(2));
        }
    }
    let _ = mmap_threshold;
}

/// The tunable that has glibc back its heaps with transparent huge pages (glibc 2.35 and later).
const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb";

/// Where the kernel says whether it gives transparent huge pages always, never, or to memory
/// marked for them (`[madvise]`, the default of Debian's kernels).
const THP_MODE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The mount's heap on transparent huge pages: start the mount again (the same process, through
/// `exec`) with `glibc.malloc.hugetlb=1` added to `GLIBC_TUNABLES`, which glibc reads only when a
/// program starts. The decompressed chunks a read brings into the cache are fresh memory, and
/// the kernel sets up fresh memory page by page: with 4 KiB pages that was 12% of the CPU of a
/// cold read through the mount (page faults, zeroing, memory accounting), with 2 MiB pages one
/// fault in 512. glibc (2.36) marks only its main heap, and only where it grows by 2 MiB or more
/// at once, so how much of the cache lies on huge pages varies from run to run (none to 55 MiB
/// of a 56 MiB read). A cold read of a 56 MiB library (`bench/realdata.py`'s big file) on a fresh
/// mount after a `find`: median 51.7 ms against 60.6 ms (20 runs each, alternating, 2-core VM),
/// after `compare.sh`'s steps 54.5 against 62.0 ms (10 runs each); of the synthetic corpus's
/// 256 MiB file, which passes through the full cache, 156 against 160 ms; a `tar` of the
/// real-data corpus 2-3% faster; resident memory after it 107-111 MiB against 104-118.
/// Not kept: one heap for all threads (`M_ARENA_MAX` 1, so all of it is marked) read the 56 MiB
/// cold in 47 ms, but the 256 MiB file took 230-270 ms in 5 of 16 runs (145-170 ms in the rest).
/// Only where the kernel gives huge pages to memory marked for them (`[madvise]`): with
/// `[always]` the heap has them already, with `[never]` not at all. A `GLIBC_TUNABLES` that names
/// the tunable already is left as it is (`glibc.malloc.hugetlb=0` turns this off). Call before
/// any thread starts; returns only if the process was not replaced.
pub fn reexec_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let mode = std::fs::read_to_string(THP_MODE).unwrap_or_default();
        let Some(value) = huge_pages_tunables(std::env::var_os("GLIBC_TUNABLES"), &mode) else { return };
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_default();
        // /proc/self/exe: the very program running, even if its file was replaced meanwhile.
        let err =
            std::process::Command::new("/proc/self/exe").arg0(arg0).args(args).env("GLIBC_TUNABLES", value).exec();
        tracing::debug!("cannot start again with huge pages: {err}");
    }
}

/// The `GLIBC_TUNABLES` to start again with, given the current one and the kernel's THP mode;
/// `None` when there is no reason to.
fn huge_pages_tunables(current: Option<std::ffi::OsString>, thp_mode: &str) -> Option<std::ffi::OsString> {
    let current = current.unwrap_or_default();
    let named = String::from_utf8_lossy(current.as_encoded_bytes()).contains(HUGE_PAGES_TUNABLE);
    if named || !thp_mode.contains("[madvise]") {
        return None;
    }
    let mut value = current;
    if !value.is_empty() {
        value.push(":");
    }
    value.push(format!("{HUGE_PAGES_TUNABLE}=1"));
    Some(value)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn huge_pages_are_asked_for_only_where_marked_memory_gets_them_and_nobody_chose_otherwise() {
        let madvise = "always [madvise] never\n";
        let ask = |current: Option<&str>, mode: &str| huge_pages_tunables(current.map(OsString::from), mode);
        assert_eq!(ask(None, madvise), Some("glibc.malloc.hugetlb=1".into()));
        assert_eq!(ask(Some(""), madvise), Some("glibc.malloc.hugetlb=1".into()));
        assert_eq!(
            ask(Some("glibc.malloc.arena_max=2"), madvise),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1".into())
        );
        assert_eq!(ask(Some("glibc.malloc.hugetlb=0"), madvise), None, "the user's choice stands");
        assert_eq!(ask(Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"), madvise), None, "asked already");
        assert_eq!(ask(None, "[always] madvise never\n"), None, "huge pages without asking");
        assert_eq!(ask(None, "always madvise [never]\n"), None, "no huge pages whatever is asked");
        assert_eq!(ask(None, ""), None, "a kernel without THP");
    }
}
