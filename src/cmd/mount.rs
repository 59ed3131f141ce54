//! `rewind mount`: every snapshot as a read-only filesystem, in the foreground until unmounted.

use std::process::ExitCode;

use anyhow::{Context, Result};
use rewind_fs::MountOptions;
use rewind_store::CacheSizes;

use crate::cli::MountArgs;
use crate::cmd::open_repo;

pub fn run(a: MountArgs) -> Result<ExitCode> {
    let repo = open_repo(&a.repo)?;
    // Every chunk buffer from the heap, reused: see `tune_allocator`.
    let largest = i32::try_from(repo.config().chunker.max_size).unwrap_or(i32::MAX);
    crate::cmd::tune_allocator(Some(largest.saturating_mul(2).clamp(1 << 20, 32 << 20)));
    let caches =
        CacheSizes { chunk_bytes: usize::try_from(a.cache_size).unwrap_or(usize::MAX), ..CacheSizes::default() };
    let indexed =
        repo.open_indexed(caches).with_context(|| format!("cannot load the index of {}", a.repo.repo.display()))?;
    // Read ahead a quarter of the cache at most, so prefetching never evicts what is being read.
    // From a remote repository every load waits on the network: more ahead, more at once.
    let remote = indexed.repo().local_path().is_none();
    let readahead_bytes = (a.cache_size / 4).min(if remote { 64 << 20 } else { 16 << 20 });
    let opts = MountOptions {
        allow_other: a.allow_other,
        readahead_bytes,
        workers: if remote { 16 } else { 0 },
        latency_hint: !a.no_latency_hint,
        on_second_signal: Some(exit_now),
    };
    rewind_fs::mount(indexed, &a.mountpoint, &opts)
        .with_context(|| format!("cannot mount {}", a.repo.repo.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// A second signal while the unmount waits for open files: leave at once, the mount detached.
fn exit_now(sig: i32) {
    eprintln!("rewind: second signal: exiting with the mount detached (open files there fail from now on)");
    #[allow(clippy::exit)]
    std::process::exit(128 + sig);
}
