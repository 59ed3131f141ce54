#!/usr/bin/env bash
# rewind and restic side by side on one single-node Garage (S3) on loopback: the same corpus and
# history as ../shared/bench/compare.sh, in one run, one bucket per tool.
#
#   bench/s3.sh [--tools "rewind restic"] [--scale 1] [--gens 3] [--work DIR]
#               [--make-cmd 'CMD DIR'] [--step-cmd 'CMD DIR GEN'] [--big RELPATH]
#
# Rows: backup_genN, bucket_mib, restore_s (the latest snapshot, into an empty tmpfs; the median
# of three rounds, tools in turn),
# mount_ready_cold_s (empty local caches), read_big_cold_s (the large file through the mount, just
# after a cold mount), mount_ready_warm_s (caches kept from the cold mount), read_big_mb_s, and
# for rewind mount_ready_warm_keyfile_s (warm, opened with a raw key file: no password KDF).
# Times are wall seconds. The machine is noisy: read the ratios between tools of one run.
#
# Needs: garage (on PATH, or GARAGE=...; the test command caches one under
# ~/.cache/rewind-test), restic, python3, fuse3; the corpus generator of ../shared/bench
# unless --make-cmd/--step-cmd give another. Runs $REWIND (default target/release/rewind).
set -euo pipefail

TOOLS="rewind restic"
SCALE=1
GENS=3
WORK=/tmp/rewind-s3bench
HERE="$(cd "$(dirname "$0")" && pwd)"
CORPUS="${CORPUS:-$HERE/../../shared/bench/corpus.py}"
REWIND="${REWIND:-$PWD/target/release/rewind}"
MAKE_CMD=""
STEP_CMD=""
BIG="vm/disk-0.img"
PORT=39950
while [ $# -gt 0 ]; do
  case "$1" in
    --tools) TOOLS="$2"; shift 2 ;;
    --scale) SCALE="$2"; shift 2 ;;
    --gens) GENS="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --make-cmd) MAKE_CMD="$2"; shift 2 ;;
    --step-cmd) STEP_CMD="$2"; shift 2 ;;
    --big) BIG="$2"; shift 2 ;;
    *) echo "s3.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

GARAGE="${GARAGE:-$(command -v garage || ls "$HOME"/.cache/rewind-test/garage-*/bin/garage 2>/dev/null | tail -1)}"
[ -x "$GARAGE" ] || { echo "s3.sh: garage not found (set GARAGE=/path/to/garage)" >&2; exit 1; }
[ -x "$REWIND" ] || { echo "s3.sh: $REWIND not found (cargo build --release)" >&2; exit 1; }

KEY=GK0123456789abcdef01234567
SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
export AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=garage AWS_DEFAULT_REGION=garage
export REWIND_PASSWORD=bench RESTIC_PASSWORD=bench RESTIC_PROGRESS_FPS=0.01
ENDPOINT="http://127.0.0.1:$PORT"
SRC="$WORK/src"
RES="$WORK/results.tsv"

now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }
rec() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RES"; }
repo() { case "$1" in rewind) echo "s3:$ENDPOINT/rewind" ;; restic) echo "s3:$ENDPOINT/restic" ;; esac; }

# --- one Garage node, wiped and started afresh
stop_garage() { if [ -f "$WORK/garage.pid" ]; then kill "$(cat "$WORK/garage.pid")" 2>/dev/null || true; fi; rm -f "$WORK/garage.pid"; }
# (set -e holds in the trap too: every step that may fail there says || true.)
trap 'for m in "$WORK"/mnt-*; do fusermount3 -u "$m" 2>/dev/null || true; done; umount "$WORK/restore" 2>/dev/null || true; stop_garage' EXIT
stop_garage || true
rm -rf "$WORK"
mkdir -p "$WORK/garage"
cat > "$WORK/garage/garage.toml" <<EOF
metadata_dir = "$WORK/garage/meta"
data_dir = "$WORK/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((PORT + 1))"
rpc_public_addr = "127.0.0.1:$((PORT + 1))"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$PORT"
EOF
g() { "$GARAGE" -c "$WORK/garage/garage.toml" "$@"; }
RUST_LOG=garage=warn "$GARAGE" -c "$WORK/garage/garage.toml" server >"$WORK/garage/log" 2>&1 &
echo $! > "$WORK/garage.pid"
for _ in $(seq 1 100); do g status >/dev/null 2>&1 && break; sleep 0.2; done
NODE=$(g node id -q | cut -d@ -f1)
g layout assign -z dc1 -c 10G "$NODE" >/dev/null
g layout apply --version 1 >/dev/null
g key import --yes -n bench "$KEY" "$SECRET" >/dev/null
for t in $TOOLS; do
  g bucket create "$t" >/dev/null
  g bucket allow --read --write --owner "$t" --key "$KEY" >/dev/null
done
bucket_mib() { g bucket info "$1" | awk '/^ *Size:/ { for (i = 1; i <= NF; i++) if ($i ~ /^\(/) { gsub(/[()]/, "", $i); print $i; exit } }'; }

# --- corpus and history
: > "$RES"
if [ -n "$MAKE_CMD" ]; then $MAKE_CMD "$SRC" >/dev/null; else python3 "$CORPUS" make "$SRC" --scale "$SCALE" >/dev/null; fi
echo "corpus: $(find "$SRC" -type f | wc -l) files, $(du -sm "$SRC" | cut -f1) MiB, $GENS later generations, on Garage $("$GARAGE" --version 2>/dev/null | head -1)" >&2

for t in $TOOLS; do
  case "$t" in
    rewind) REWIND_CACHE_DIR="$WORK/cache-$t" "$REWIND" init "$(repo rewind)" >/dev/null ;;
    restic) restic --cache-dir "$WORK/cache-$t" init --repository-version 2 -r "$(repo restic)" >/dev/null ;;
  esac
done
for gen in $(seq 0 "$GENS"); do
  if [ "$gen" -gt 0 ]; then
    if [ -n "$STEP_CMD" ]; then $STEP_CMD "$SRC" "$gen" >/dev/null; else python3 "$CORPUS" step "$SRC" --gen "$gen" >/dev/null; fi
  fi
  for t in $TOOLS; do
    s=$(now)
    case "$t" in
      rewind) REWIND_CACHE_DIR="$WORK/cache-$t" "$REWIND" backup --repo "$(repo rewind)" --host bench "$SRC" >/dev/null ;;
      restic) restic --cache-dir "$WORK/cache-$t" -r "$(repo restic)" backup --host bench "$SRC" >/dev/null ;;
    esac
    rec "$t" "backup_gen$gen" "$(since "$s")"
  done
done
for t in $TOOLS; do rec "$t" bucket_mib "$(bucket_mib "$t")"; done

# --- restore of the latest snapshot, caches as the backups left them. Into a tmpfs when we may
# mount one: the row measures reading from the bucket, and a disk's inode allocator slows down
# after many files are deleted (the tool restoring second would pay for the first's).
mkdir -p "$WORK/restore"
mount -t tmpfs -o size=$(( $(du -sm "$SRC" | cut -f1) * 2 + 256 ))m tmpfs "$WORK/restore" 2>/dev/null \
  || echo "s3.sh: restoring to disk (no tmpfs: not root?)" >&2
# Three rounds, the tools in turn, the median kept: the first reads after the backups also meet
# the object store's own work after a burst of writes, which would fall on whichever tool goes first.
for round in 1 2 3; do
  for t in $TOOLS; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    s=$(now)
    case "$t" in
      rewind) REWIND_CACHE_DIR="$WORK/cache-$t" "$REWIND" restore --repo "$(repo rewind)" --target "$WORK/restore/$t" latest >/dev/null ;;
      restic) restic --cache-dir "$WORK/cache-$t" -r "$(repo restic)" restore latest --target "$WORK/restore/$t" >/dev/null ;;
    esac
    echo "$t $(since "$s")" >> "$WORK/restores"
    diff -r "$SRC" "$WORK/restore/$t$SRC" >/dev/null || echo "s3.sh: $t did not restore the source exactly" >&2
    rm -rf "$WORK/restore/$t"
  done
done
for t in $TOOLS; do
  rec "$t" restore_s "$(awk -v t="$t" '$1 == t { print $2 }' "$WORK/restores" | sort -n | sed -n 2p)"
done
umount "$WORK/restore" 2>/dev/null || true

# --- mounts: cold (empty cache folder), then warm (the cache the cold mount filled)
mount_once() { # tool cache-dir mnt
  case "$1" in
    rewind) REWIND_CACHE_DIR="$2" "$REWIND" mount --repo "$(repo rewind)" "$3" >"$WORK/mount-$1.log" 2>&1 & ;;
    restic) restic --cache-dir "$2" -r "$(repo restic)" mount "$3" >"$WORK/mount-$1.log" 2>&1 & ;;
  esac
  echo $! > "$WORK/mount-$1.pid"
}
umount_once() { # tool mnt
  fusermount3 -u "$2" 2>/dev/null || umount "$2" 2>/dev/null || true
  wait "$(cat "$WORK/mount-$1.pid")" 2>/dev/null || true
}
BIG_BYTES=$(stat -c %s "$SRC/$BIG")
for t in $TOOLS; do
  MNT="$WORK/mnt-$t"; mkdir -p "$MNT"
  ROOT="$MNT/hosts/bench/latest$SRC"
  for phase in cold warm; do
    [ "$phase" = cold ] && rm -rf "$WORK/mcache-$t"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    s=$(now); mount_once "$t" "$WORK/mcache-$t" "$MNT"
    for _ in $(seq 1 1200); do [ -n "$(ls -A "$ROOT" 2>/dev/null)" ] && break; sleep 0.02; done
    rec "$t" "mount_ready_${phase}_s" "$(since "$s")"
    if [ "$phase" = cold ]; then
      s=$(now); cat "$ROOT/$BIG" >/dev/null; took=$(since "$s")
      rec "$t" read_big_cold_s "$took"
      rec "$t" read_big_mb_s "$(python3 -c "print('%.0f' % ($BIG_BYTES / 1e6 / max($took, 1e-6)))")"
    fi
    umount_once "$t" "$MNT"
  done
done
# A password costs its KDF (argon2id, about 0.1 s here) at every start; a mount that runs
# unattended opens the repository with a raw key file instead.
if [[ " $TOOLS " == *" rewind "* ]]; then
  REWIND_CACHE_DIR="$WORK/mcache-rewind" "$REWIND" key add --repo "$(repo rewind)" --new-raw-key-file "$WORK/raw.key" >/dev/null
  MNT="$WORK/mnt-rewind"; ROOT="$MNT/hosts/bench/latest$SRC"
  s=$(now)
  env -u REWIND_PASSWORD REWIND_KEY_FILE="$WORK/raw.key" REWIND_CACHE_DIR="$WORK/mcache-rewind" "$REWIND" mount --repo "$(repo rewind)" "$MNT" >"$WORK/mount-rewind.log" 2>&1 &
  echo $! > "$WORK/mount-rewind.pid"
  for _ in $(seq 1 1200); do [ -n "$(ls -A "$ROOT" 2>/dev/null)" ] && break; sleep 0.01; done
  rec rewind mount_ready_warm_keyfile_s "$(since "$s")"
  umount_once rewind "$MNT"
fi

python3 - "$RES" <<'EOF'
import sys, collections
rows = collections.OrderedDict()
tools = []
for line in open(sys.argv[1]):
    tool, key, val = line.rstrip("\n").split("\t")
    rows.setdefault(key, {})[tool] = val
    if tool not in tools: tools.append(tool)
print("measure".ljust(24) + "".join(t.rjust(12) for t in tools))
for key, vals in rows.items():
    print(key.ljust(24) + "".join(vals.get(t, "-").rjust(12) for t in tools))
EOF
