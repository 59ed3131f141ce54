use std::process::ExitCode;

use anyhow::{Context, Result};
use rewind_store::{ChunkerParams, CompressionParams, NewKey, Repository};

use crate::cli::InitArgs;
use crate::cmd::keys;

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
    let key = if a.insecure_no_encryption {
        NewKey::None
    } else {
        let secret = keys::new_secret(&keys::source(&a.key), a.new_raw_key_file.as_deref())?;
        let content_identity_of = match &a.copy_chunker_params {
            None => None,
            Some(from) => {
                // FROM opens with its own options, else with the new repository's secret.
                let source = keys::from_source(&a.from_key);
                let from_repo = if source.given() {
                    keys::open_with(from, &source)?
                } else {
                    Repository::open_in(keys::storage(from)?, Some(&secret))
                        .with_context(|| format!("cannot open {} with the new repository's password (give --from-password-file or --from-key-file)", from.display()))?
                };
                let master = from_repo.master_key().with_context(|| {
                    format!("{} is not encrypted: its content is named by plain BLAKE3, which an encrypted repository cannot share", from.display())
                })?;
                Some(Box::new(master.clone()))
            }
        };
        NewKey::Encrypted { secret, kdf: keys::kdf(&a.kdf), content_identity_of }
    };
    let repo = Repository::init_in(keys::storage(&a.repo)?, chunker, compression, key)
        .with_context(|| format!("cannot create a repository at {}", a.repo.display()))?;
    let how = if repo.is_encrypted() { "encrypted" } else { "NOT encrypted (--insecure-no-encryption)" };
    outln!("created repository {} at {}, {how}", &repo.config().id.to_hex()[..8], a.repo.display());
    if let Some(p) = &a.new_raw_key_file {
        outln!("its raw key is in {}: keep it safe, and apart from the repository", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
