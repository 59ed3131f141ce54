use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rewind_store::{BackupOptions, BackupProgress, backup, hostname};

use crate::cli::BackupArgs;
use crate::cmd::{Progress, human_bytes, human_duration, open_indexed, show_bytes};

/// Exit status of a backup that saved a snapshot but left some entries out.
pub const EXIT_INCOMPLETE: u8 = 3;

pub fn run(a: BackupArgs) -> Result<ExitCode> {
    crate::cmd::signals::handle_interrupts();
    let started = Instant::now();
    let repo = open_indexed(&a.repo)?;
    crate::cmd::keys::refuse_plain_with_password(repo.repo(), &a.repo.key)?;
    let opts = BackupOptions {
        paths: a.paths.clone(),
        host: a.host.clone().unwrap_or_else(hostname),
        tags: a.tags.clone(),
        excludes: a.excludes.clone(),
        parent: None,
        force: a.force,
    };
    let progress = Arc::new(BackupProgress::default());
    let p = progress.clone();
    let bar = Progress::start(move || {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let read = p.bytes_read.load(Ordering::Relaxed);
        format!(
            "{} files, {} dirs, read {} ({}/s), added {}, {} errors",
            p.files.load(Ordering::Relaxed),
            p.dirs.load(Ordering::Relaxed),
            human_bytes(read),
            human_bytes((read as f64 / secs) as u64),
            human_bytes(p.bytes_added.load(Ordering::Relaxed)),
            p.errors.load(Ordering::Relaxed)
        )
    });
    let report = |path: &std::path::Path, e: &rewind_store::Error| {
        let msg = e.to_string();
        let shown = show_bytes(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()));
        if msg.contains(&path.display().to_string()) {
            eprintln!("rewind: skipped: {msg}");
        } else {
            eprintln!("rewind: skipped {shown}: {msg}");
        }
    };
    let result = backup(&repo, &opts, &progress, &report);
    drop(bar);
    let saved = result.context("backup failed; no snapshot was written")?;
    let s = &saved.snapshot.summary;
    if a.json {
        let mut v = serde_json::to_value(&saved.snapshot)?;
        v["id"] = saved.id.to_hex().into();
        outln!("{}", serde_json::to_string(&v)?);
    } else {
        outln!(
            "snapshot {} saved: {} files ({} new, {} changed, {} unchanged), {} skipped; read {}, added {} (stored {}) in {}",
            saved.id.short(),
            s.files_new + s.files_changed + s.files_unchanged,
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.errors,
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_added),
            human_bytes(s.bytes_stored),
            human_duration(Duration::from_millis(s.duration_ms)),
        );
    }
    // The catalog is a cache: failing to update it never fails the backup.
    crate::cmd::catalog::update_after_backup(&repo, a.repo.catalog.as_deref());
    if s.errors > 0 {
        eprintln!("rewind: {} entries could not be read and are not in snapshot {}", s.errors, saved.id.short());
        return Ok(ExitCode::from(EXIT_INCOMPLETE));
    }
    Ok(ExitCode::SUCCESS)
}
