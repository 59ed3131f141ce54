#!/usr/bin/env bash
# The long run of the fault suite's concurrency test: backups (some killed), forget + prune
# (some killed), restores and FUSE mount readers at once, then check --read-data and a restore
# of every snapshot kept. Prints trials, wrong bytes and lost snapshots; fails on any of either.
#   scripts/torture.sh [SECONDS]      (default 1800; the test command runs it for 20)
# Then the deterministic faults (a kill at every protocol step, flipped bytes, a full disk).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
REWIND_TORTURE_SECS=$secs nice cargo test --test main faults::concurrency_run -- --nocapture --test-threads=1
nice cargo test --test main faults:: -- --skip concurrency_run --test-threads=1
