#!/usr/bin/env bash
# Retention benchmark (issue 7): the scale-1 corpus with 10 generations, a backup of each by rewind
# and restic; then forget to the last 3 and prune, timed side by side; bytes reclaimed; and a copy
# of all snapshots to an empty repository (MB/s of stored data).
#   scripts/bench-prune.sh [WORK_DIR]      (after `cargo build --release`; needs restic)
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
REWIND="${REWIND:-$HERE/target/release/rewind}"
W="${1:-/tmp/rewind-bench-prune}"
CORPUS="$HERE/../shared/bench/corpus.py"
export RESTIC_PASSWORD=bench RESTIC_PROGRESS_FPS=0.01
rm -rf "$W"; mkdir -p "$W"
python3 "$CORPUS" make "$W/src" --scale 1 >/dev/null
"$REWIND" init "$W/rewind" >/dev/null
restic init --repository-version 2 -r "$W/restic" >/dev/null
for g in $(seq 0 9); do
  [ "$g" -gt 0 ] && python3 "$CORPUS" step "$W/src" --gen "$g" >/dev/null
  "$REWIND" backup --repo "$W/rewind" --host bench "$W/src" >/dev/null
  restic -r "$W/restic" backup --host bench "$W/src" >/dev/null
done
size() { du -sb "$1" | awk '{print $1}'; }
now() { date +%s.%N; }
rb=$(size "$W/rewind"); tb=$(size "$W/restic")
s=$(now); "$REWIND" forget --repo "$W/rewind" --keep-last 3 >/dev/null 2>&1; "$REWIND" prune --repo "$W/rewind" >/dev/null; e=$(now)
rt=$(echo "$e - $s" | bc)
s=$(now); restic -r "$W/restic" forget --keep-last 3 --prune >/dev/null; e=$(now)
tt=$(echo "$e - $s" | bc)
ra=$(size "$W/rewind"); ta=$(size "$W/restic")
"$REWIND" check --repo "$W/rewind" --read-data >/dev/null
"$REWIND" init "$W/copy" >/dev/null
stored=$(du -sb "$W/rewind/data" | awk '{print $1}')
s=$(now); "$REWIND" copy --repo "$W/rewind" --to "$W/copy" >/dev/null; e=$(now)
ct=$(echo "$e - $s" | bc)
printf '%-28s %12s %12s\n' measure rewind restic
printf '%-28s %12.3f %12.3f\n' forget_prune_s "$rt" "$tt"
printf '%-28s %12.1f %12.1f\n' repo_before_mib "$(echo "$rb/1048576" | bc -l)" "$(echo "$tb/1048576" | bc -l)"
printf '%-28s %12.1f %12.1f\n' repo_after_mib "$(echo "$ra/1048576" | bc -l)" "$(echo "$ta/1048576" | bc -l)"
printf '%-28s %12.1f %12.1f\n' reclaimed_mib "$(echo "($rb-$ra)/1048576" | bc -l)" "$(echo "($tb-$ta)/1048576" | bc -l)"
printf '%-28s %12.3f %12s\n' copy_all_s "$ct" -
printf '%-28s %12.1f %12s\n' copy_mb_per_s "$(echo "$stored/1000000/$ct" | bc -l)" -
