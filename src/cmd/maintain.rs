//! `forget`, `prune` and `copy`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rewind_store::prune::{self, PruneOptions, PruneProgress};
use rewind_store::retention::{self, Policy};
use rewind_store::{CacheSizes, SnapshotEntry};

use crate::cli::{CopyArgs, ForgetArgs, PruneArgs};
use crate::cmd::{Progress, human_bytes, human_duration, open_indexed, open_repo};

pub fn forget(a: ForgetArgs) -> Result<ExitCode> {
    let repo = open_repo(&a.repo)?;
    let all = repo.snapshots()?;
    let policy = Policy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within.as_deref().map(retention::parse_duration).transpose()?,
    };
    // Named snapshots, or a policy over groups of (host, paths).
    let mut decisions: Vec<(SnapshotEntry, Vec<&'static str>)> = Vec::new();
    let mut damaged_ids = Vec::new();
    if !a.snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("give either snapshot ids or --keep-* rules, not both");
        }
        for spec in &a.snapshots {
            match repo.find_snapshot(spec, a.host.as_deref()) {
                Ok(s) => decisions.push((s, Vec::new())),
                // A damaged snapshot can be forgotten by its id: nothing of it needs reading.
                Err(e) if e.is_corrupt() => {
                    let (_, damaged) = repo.snapshots_and_damage()?;
                    let d = damaged.iter().find(|d| d.id.to_hex().starts_with(&spec.to_ascii_lowercase())).ok_or(e)?;
                    damaged_ids.push(d.id);
                }
                Err(e) => return Err(e.into()),
            }
        }
    } else {
        if policy.is_empty() {
            bail!("no --keep-* rule given: refusing to forget every snapshot (name snapshots to forget them)");
        }
        let filter = retention::Filter { host: a.host.clone(), tag: a.tag.clone() };
        for d in retention::decide(&policy, all, &filter, &jiff::tz::TimeZone::system()) {
            decisions.push((d.entry, d.reasons.iter().map(|r| r.as_str()).collect()));
        }
    }
    let mut remove: Vec<_> = decisions.iter().filter(|(_, r)| r.is_empty()).map(|(s, _)| s.id).collect();
    for id in &damaged_ids {
        outln!("{} (damaged) remove", id.short());
    }
    remove.extend(damaged_ids.iter().copied());
    if a.json {
        let v: Vec<serde_json::Value> = decisions
            .iter()
            .map(|(s, r)| {
                serde_json::json!({"id": s.id.to_hex(), "time": s.snapshot.time, "host": s.snapshot.host,
                "paths": s.snapshot.paths, "keep": !r.is_empty(), "reasons": r})
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (s, r) in &decisions {
            let what = if r.is_empty() { "remove".to_string() } else { format!("keep ({})", r.join(", ")) };
            outln!(
                "{} {} {:<16} {}",
                s.id.short(),
                s.snapshot.time.strftime("%Y-%m-%d %H:%M:%S"),
                s.snapshot.host,
                what
            );
        }
    }
    if !a.dry_run {
        prune::forget(&repo, &remove)?;
        crate::cmd::catalog::update_after_backup(&repo.open_indexed(CacheSizes::default())?, a.repo.catalog.as_deref());
    }
    eprintln!(
        "forget: {} snapshot(s) {}, {} kept{}",
        remove.len(),
        if a.dry_run { "would be removed" } else { "removed" },
        decisions.len() + damaged_ids.len() - remove.len(),
        if a.dry_run || remove.is_empty() { "" } else { "; run `rewind prune` to free their data" }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn prune(a: PruneArgs) -> Result<ExitCode> {
    crate::cmd::signals::handle_interrupts();
    let started = Instant::now();
    let repo = open_repo(&a.repo)?;
    let progress = Arc::new(PruneProgress::default());
    let p = progress.clone();
    let bar = Progress::start(move || {
        format!(
            "repacking {}/{} packs, {}",
            p.packs_done.load(Ordering::Relaxed),
            p.packs_total.load(Ordering::Relaxed),
            human_bytes(p.bytes_repacked.load(Ordering::Relaxed))
        )
    });
    let opts = PruneOptions { dry_run: a.dry_run, max_repack_percent: a.max_repack };
    let r = prune::prune(&repo, &opts, &progress)?;
    drop(bar);
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    }
    let verb = if a.dry_run { "would free" } else { "freed" };
    outln!(
        "prune: {} snapshots, {} packs ({}, {} used); {} unused and {} repacked packs ({} rewritten); {verb} {}{}{} in {}",
        r.snapshots,
        r.packs,
        human_bytes(r.bytes_total),
        human_bytes(r.bytes_used),
        r.packs_unused,
        r.packs_repacked,
        human_bytes(r.bytes_repacked),
        human_bytes(r.bytes_freed),
        if r.packs_deferred > 0 {
            format!(
                "; {} packs ({}) wait for running backups and go with the next prune",
                r.packs_deferred,
                human_bytes(r.bytes_deferred)
            )
        } else {
            String::new()
        },
        if r.packs_reindexed > 0 {
            format!("; {} unindexed packs indexed again", r.packs_reindexed)
        } else {
            String::new()
        },
        human_duration(started.elapsed())
    );
    Ok(ExitCode::SUCCESS)
}

pub fn copy(a: CopyArgs) -> Result<ExitCode> {
    crate::cmd::signals::handle_interrupts();
    let started = Instant::now();
    let src = open_indexed(&a.repo)?;
    // The target opens with its own secret if one is given, else with the source's.
    let to = crate::cmd::keys::to_source(&a.to_key);
    let to = if to.given() { to } else { crate::cmd::keys::source(&a.repo.key) };
    let dst = crate::cmd::keys::open_with(&a.to, &to)
        .with_context(|| format!("cannot open target repository {}", a.to.display()))?;
    crate::cmd::keys::refuse_plain_with_password(&dst, &a.repo.key).or_else(|e| {
        // Copying out of an encrypted repository into a plaintext one is the user's choice to
        // make knowingly; into one when only the source's password was given is refused.
        if src.repo().is_encrypted() { Err(e) } else { Ok(()) }
    })?;
    let dst = dst.open_indexed(CacheSizes::default())?;
    let all = src.repo().snapshots()?;
    let chosen: Vec<SnapshotEntry> = if a.snapshots.is_empty() {
        all.into_iter().filter(|s| a.host.as_ref().is_none_or(|h| &s.snapshot.host == h)).collect()
    } else {
        a.snapshots
            .iter()
            .map(|s| src.repo().find_snapshot(s, a.host.as_deref()))
            .collect::<rewind_store::Result<_>>()?
    };
    let progress = Arc::new(rewind_store::copy::CopyProgress::default());
    let p = progress.clone();
    let bar = Progress::start(move || {
        format!(
            "{}/{} blobs, {}",
            p.blobs_done.load(Ordering::Relaxed),
            p.blobs_total.load(Ordering::Relaxed),
            human_bytes(p.bytes.load(Ordering::Relaxed))
        )
    });
    let r = rewind_store::copy::copy(&src, &dst, &chosen, &progress)?;
    drop(bar);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    if r.mode == "renamed" && r.snapshots_copied > 0 {
        eprintln!(
            "note: the repositories name content differently (other keys or chunkers): the copies were cut and named anew, and deduplicate only among themselves (`init --copy-chunker-params` avoids this)"
        );
    }
    outln!(
        "copy: {} snapshots copied, {} already there; {} blobs, {} ({}/s) in {}",
        r.snapshots_copied,
        r.snapshots_present,
        r.blobs_copied,
        human_bytes(r.bytes_copied),
        human_bytes((r.bytes_copied as f64 / secs) as u64),
        human_duration(started.elapsed())
    );
    crate::cmd::catalog::update_after_backup(&dst, None);
    Ok(ExitCode::SUCCESS)
}
