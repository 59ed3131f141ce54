use std::process::ExitCode;

use anyhow::Result;

use crate::cli::UnlockArgs;
use crate::cmd::open_repo;

pub fn run(a: UnlockArgs) -> Result<ExitCode> {
    let repo = open_repo(&a.repo)?;
    let r = rewind_store::unlock(&repo, a.remove_all)?;
    for l in &r.removed {
        outln!("removed lock {l}");
    }
    for l in &r.kept {
        eprintln!(
            "rewind: kept live lock {l} (--remove-all removes it too, when no rewind process uses the repository)"
        );
    }
    for t in &r.tmp_removed {
        outln!("removed tmp/{t}");
    }
    outln!(
        "unlock: {} lock(s) removed, {} kept, {} leftover temporary file(s) removed",
        r.removed.len(),
        r.kept.len(),
        r.tmp_removed.len()
    );
    Ok(ExitCode::SUCCESS)
}
