use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Result;
use rewind_store::maintenance::{self, CheckProgress};

use crate::cli::{CheckArgs, RepoArg};
use crate::cmd::{Progress, human_bytes, human_duration, open_repo};

pub fn run(a: CheckArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let repo = open_repo(&a.repo)?;
    let progress = Arc::new(CheckProgress::default());
    let p = progress.clone();
    let bar = Progress::start(move || {
        format!(
            "packs {}/{}, {} read",
            p.packs_done.load(Ordering::Relaxed),
            p.packs_total.load(Ordering::Relaxed),
            human_bytes(p.bytes_read.load(Ordering::Relaxed))
        )
    });
    let mut report = maintenance::check(&repo, a.read_data, &progress)?;
    drop(bar);
    // The catalog is a cache outside the repository: damage there loses nothing, but say so.
    if let Some(problem) = crate::cmd::catalog::check_catalog(&a.repo, &repo) {
        report.warnings.push(problem);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    for d in &report.damaged {
        eprintln!("damaged: {:?} blob {} in pack {}: {}", d.id.kind, d.id.hash.to_hex(), d.pack.short(), d.error);
        if d.used_by.is_empty() {
            eprintln!("  used by no snapshot");
        }
        for (snap, path) in &d.used_by {
            eprintln!("  used by snapshot {} at {path}", snap.short());
        }
    }
    let verified =
        if a.read_data { format!(", {} verified", human_bytes(report.bytes_verified)) } else { String::new() };
    let status = if report.ok() { "no errors" } else { "ERRORS FOUND" };
    let protection = if repo.is_encrypted() {
        if a.read_data { ", every blob authenticated (AES-256-GCM)" } else { ", encrypted" }
    } else {
        crate::cmd::encryption_note(&repo)
    };
    outln!(
        "check: {} snapshots, {} trees, {} blobs, {} packs{verified}: {status} ({} errors, {} damaged blobs){protection} in {}",
        report.snapshots,
        report.trees,
        report.blobs,
        report.packs,
        report.errors.len(),
        report.damaged.len(),
        human_duration(started.elapsed())
    );
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn rebuild_index(a: RepoArg) -> Result<ExitCode> {
    let repo = open_repo(&a)?;
    let r = maintenance::rebuild_index(&repo)?;
    for (pack, e) in &r.bad_packs {
        eprintln!("warning: pack {pack} skipped: {e}");
    }
    for pack in &r.recovered_from_head {
        eprintln!("warning: pack {pack}: its trailer is damaged; indexed from the copy after its header");
    }
    if r.unindexed_left > 0 {
        eprintln!(
            "warning: {} pack(s) no index file described were left out while a backup runs; run rebuild-index again when none does",
            r.unindexed_left
        );
    }
    outln!(
        "rebuilt index: {} packs, {} blobs, {} index files written, {} removed{}",
        r.packs,
        r.blobs,
        r.index_files_written,
        r.index_files_removed,
        if r.bad_packs.is_empty() { String::new() } else { format!(", {} unreadable packs", r.bad_packs.len()) }
    );
    Ok(if r.bad_packs.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
