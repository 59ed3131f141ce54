use std::process::ExitCode;

use anyhow::Result;

use crate::cli::SnapshotsArgs;
use crate::cmd::{human_bytes, open_repo};

pub fn run(a: SnapshotsArgs) -> Result<ExitCode> {
    let repo = open_repo(&a.repo)?;
    let (all, damaged) = repo.snapshots_and_damage()?;
    for d in &damaged {
        eprintln!(
            "rewind: snapshot {} ({}) is damaged and not listed: {}; `rewind forget {}` removes it",
            d.id.short(),
            d.path.display(),
            d.error,
            d.id.short()
        );
    }
    let snaps: Vec<_> = all.into_iter().filter(|s| a.host.as_ref().is_none_or(|h| &s.snapshot.host == h)).collect();
    if a.json {
        let v: Vec<serde_json::Value> = snaps
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(&s.snapshot).expect("snapshot serializes");
                v["id"] = s.id.to_hex().into();
                v["short_id"] = s.id.short().into();
                v
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<9} {:<20} {:<16} {:>10}  {:<16} paths", "id", "time (local)", "host", "size", "tags");
    for s in &snaps {
        let t = s.snapshot.time.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string();
        outln!(
            "{:<9} {:<20} {:<16} {:>10}  {:<16} {}",
            s.id.short(),
            t,
            s.snapshot.host,
            human_bytes(s.snapshot.summary.bytes_total),
            s.snapshot.tags.join(","),
            s.snapshot.paths.join(" ")
        );
    }
    outln!("{} snapshot(s){}", snaps.len(), crate::cmd::encryption_note(&repo));
    Ok(ExitCode::SUCCESS)
}
