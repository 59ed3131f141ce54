use std::process::ExitCode;

use anyhow::{Context, Result};
use rewind_store::{ChunkerParams, CompressionParams, Repository};

use crate::cli::InitArgs;

pub fn run(a: InitArgs) -> Result<ExitCode> {
    let d = ChunkerParams::default();
    let chunker = ChunkerParams {
        min_size: a.chunk_min.unwrap_or(d.min_size),
        avg_size: a.chunk_avg.unwrap_or(d.avg_size),
        max_size: a.chunk_max.unwrap_or(d.max_size),
    };
    let mut compression = CompressionParams::default();
    if let Some(l) = a.compression_level {
        compression.level = l;
    }
    let repo = Repository::init(&a.repo, chunker, compression)
        .with_context(|| format!("cannot create a repository at {}", a.repo.display()))?;
    outln!("created repository {} at {}", &repo.config().id.to_hex()[..8], a.repo.display());
    Ok(ExitCode::SUCCESS)
}
