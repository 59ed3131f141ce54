use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result};
use rewind_store::{Overwrite, RestoreOptions, RestoreProgress, restore, restore_from_view};

use crate::cli::{OverwriteArg, RestoreArgs};
use crate::cmd::{Progress, human_bytes, human_duration, open_indexed};

pub fn run(a: RestoreArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let (spec, path) = match a.what.split_once(':') {
        Some((s, p)) => (s, p),
        None => (a.what.as_str(), "/"),
    };
    let repo = open_indexed(&a.repo)?;
    let snap = repo.repo().find_snapshot(spec, a.host.as_deref())?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let overwrite = match a.overwrite {
        None => Overwrite::Refuse,
        Some(OverwriteArg::Always) => Overwrite::Always,
        Some(OverwriteArg::IfChanged) => Overwrite::IfChanged,
        Some(OverwriteArg::Never) => Overwrite::Never,
    };
    let opts = RestoreOptions { owners: root && !a.no_owners, overwrite };
    let progress = Arc::new(RestoreProgress::default());
    let p = progress.clone();
    let bar = Progress::start(move || {
        format!("{} files, {}", p.files.load(Ordering::Relaxed), human_bytes(p.bytes.load(Ordering::Relaxed)))
    });
    let report =
        |path: &std::path::Path, e: &rewind_store::Error| eprintln!("rewind: cannot restore {}: {e}", path.display());
    let inside = match repo.node_at(&snap.snapshot, path.as_bytes()) {
        Err(rewind_store::Error::NotFound(_)) => crate::cmd::inside_image(&repo, snap.id, path)?,
        _ => None,
    };
    let errors = match inside {
        Some((view, entry, name)) => restore_from_view(&view, &entry, &name, &a.target, &opts, &progress, &report),
        None => restore(&repo, &snap.snapshot, path.as_bytes(), &a.target, &opts, &progress, &report),
    }
    .with_context(|| format!("cannot restore {path} of snapshot {}", snap.id.short()))?;
    drop(bar);
    outln!(
        "restored {} files, {} from snapshot {} into {} in {}{}",
        progress.files.load(Ordering::Relaxed),
        human_bytes(progress.bytes.load(Ordering::Relaxed)),
        snap.id.short(),
        a.target.display(),
        human_duration(started.elapsed()),
        if errors > 0 { format!(", {errors} errors") } else { String::new() }
    );
    Ok(if errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
