#!/usr/bin/env bash
# Fuzz one decoder of repository files with cargo-fuzz (libFuzzer), growing its corpus in
# store/fuzz/corpus/TARGET (commit what it adds; `cargo test -p rewind-store` replays it).
#   scripts/fuzz.sh TARGET SECONDS      targets: pack index tree snapshot config pending lock key
#                                       pack-v2 index-v2 snapshot-v2 config-v2 lock-v2 dict-v2 group
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Crashes are saved in store/fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../store/fuzz"
target=${1:?usage: scripts/fuzz.sh TARGET SECONDS}
secs=${2:?usage: scripts/fuzz.sh TARGET SECONDS}
jobs=${JOBS:-1}
exec nice cargo +nightly fuzz run "$target" "corpus/$target" -- \
  -max_total_time="$secs" -rss_limit_mb=4096 -max_len=65536 -jobs="$jobs" -workers="$jobs"
