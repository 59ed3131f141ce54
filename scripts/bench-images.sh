#!/usr/bin/env bash
# Files inside disk images (issue 18): the benchmark of the issue, at a scale this machine takes.
#   scripts/bench-images.sh [WORK_DIR]     (after `cargo build --release`; run as root: it mounts,
#                                           and drops the page cache before each cold measure)
# Needs e2fsprogs, qemu-utils, fuse3, python3. Environment: TEMPLATE_MIB (2048), TEMPLATE_DATA_MIB
# (1024), CLONES (10), DISK_MIB (4096), FILES (20000), BIG_MIB (200), DROP_CACHES (1 as root).
#
# 1. Clones: a TEMPLATE_MIB ext4 template holding TEMPLATE_DATA_MIB of files, and CLONES copies of
#    it, each with ~4 MiB of files of its own written by debugfs; backed up one after another into
#    one repository: its size against the size after the first image alone (issue: <= 1.15x).
# 2. A DISK_MIB qcow2 holding FILES small files in 200 folders and one BIG_MIB file, backed up;
#    the same files backed up as a plain tree into another repository. Each measure on a fresh
#    `rewind mount` (empty caches) after dropping the page cache:
#    - listing the filesystem's root inside the image (`ls -l .../disk.qcow2.d/`): issue < 0.5 s;
#    - `find` over everything inside the image vs over the plain tree: issue <= 3x;
#    - `cat` of the big file inside the image vs the plain one: issue >= 60% of the speed;
#    - `rewind catalog rebuild` of each repository: the cost of indexing files inside images.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
REWIND="${REWIND:-$HERE/target/release/rewind}"
W="${1:-/tmp/rewind-bench-images}"
TEMPLATE_MIB="${TEMPLATE_MIB:-2048}"
TEMPLATE_DATA_MIB="${TEMPLATE_DATA_MIB:-1024}"
CLONES="${CLONES:-10}"
DISK_MIB="${DISK_MIB:-4096}"
FILES="${FILES:-20000}"
BIG_MIB="${BIG_MIB:-200}"
DROP_CACHES="${DROP_CACHES:-$([ "$(id -u)" = 0 ] && echo 1 || echo 0)}"
export REWIND_PASSWORD=bench REWIND_KDF_MEMORY_KIB=64 REWIND_KDF_ITERATIONS=1
rm -rf "$W"; mkdir -p "$W"
now() { date +%s.%N; }
size() { du -sb "$1" | awk '{print $1}'; }
cold() { sync; if [ "$DROP_CACHES" = 1 ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
MNT=""; MPID=""
mount_repo() {
  MNT="$W/mnt"; mkdir -p "$MNT"
  "$REWIND" mount --repo "$1" "$MNT" 2>>"$W/mount.log" & MPID=$!
  for _ in $(seq 1 200); do mountpoint -q "$MNT" && return; sleep 0.05; done
  echo "mount of $1 failed: $(cat "$W/mount.log")" >&2; exit 1
}
unmount() { fusermount3 -u "$MNT"; wait "$MPID" || true; }
trap '[ -n "$MNT" ] && fusermount3 -u -z "$MNT" 2>/dev/null || true' EXIT

# Random files from a seed: gen.py DIR SEED COUNT MIN MAX [FOLDERS]
cat > "$W/gen.py" <<'EOF'
import os, random, sys
d, seed, count, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
folders = int(sys.argv[6]) if len(sys.argv) > 6 else 1
r = random.Random(seed)
for i in range(count):
    sub = os.path.join(d, f"d{i % folders:03}") if folders > 1 else d
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:05}.bin"), "wb") as f:
        f.write(r.randbytes(r.randint(lo, hi)))
EOF

# --- 1. Clones of a template -------------------------------------------------------------------
mkdir -p "$W/tsrc"
python3 "$W/gen.py" "$W/tsrc" 1 $((TEMPLATE_DATA_MIB * 4)) 131072 393216 30
truncate -s "${TEMPLATE_MIB}M" "$W/template.img"
mkfs.ext4 -q -F -b 4096 -d "$W/tsrc" "$W/template.img"
rm -rf "$W/tsrc"
"$REWIND" init "$W/clones" >/dev/null
mkdir -p "$W/vms"
for i in $(seq 1 "$CLONES"); do
  cp --sparse=always "$W/template.img" "$W/vms/clone$i.img"
  mkdir -p "$W/own$i"
  python3 "$W/gen.py" "$W/own$i" $((100 + i)) 16 200000 320000
  debugfs -w -R "mkdir /clone$i" "$W/vms/clone$i.img" >/dev/null 2>&1
  for f in "$W/own$i"/*; do
    debugfs -w -R "write $f /clone$i/$(basename "$f")" "$W/vms/clone$i.img" >/dev/null 2>&1
  done
  rm -rf "$W/own$i"
  s=$(now); "$REWIND" backup --repo "$W/clones" --host vms "$W/vms" >/dev/null; e=$(now)
  [ "$i" = 1 ] && one=$(size "$W/clones") && t1=$(echo "$e - $s" | bc)
  # Keep the disk use of one clone: the repository holds them all.
  rm -f "$W/vms/clone$i.img"
done
all=$(size "$W/clones")
"$REWIND" check --repo "$W/clones" >/dev/null
# The files each clone has of its own, in MiB (gen.py's sizes, from its seed).
own=$(python3 -c "
import random
t = 0
for i in range(2, $CLONES + 1):
    r = random.Random(100 + i)
    for _ in range(16):
        n = r.randint(200000, 320000); r.randbytes(n); t += n
print(t / max($CLONES - 1, 1) / 1048576)")
rm -rf "$W/clones" "$W/template.img" "$W/vms"

# --- 2. A qcow2 of many files and one big file, against the same files as a plain tree ----------
mkdir -p "$W/plain/tree"
python3 "$W/gen.py" "$W/plain/tree" 2 "$FILES" 512 8192 200
head -c $((BIG_MIB << 20)) /dev/urandom > "$W/plain/tree/big.bin"
truncate -s "${DISK_MIB}M" "$W/disk.raw"
mkfs.ext4 -q -F -b 4096 -d "$W/plain/tree" "$W/disk.raw"
mkdir -p "$W/img"
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/img/disk.qcow2"
rm -f "$W/disk.raw"
"$REWIND" init "$W/repo-plain" >/dev/null
"$REWIND" init "$W/repo-img" >/dev/null
"$REWIND" backup --repo "$W/repo-plain" --host plain "$W/plain/tree" >/dev/null
"$REWIND" backup --repo "$W/repo-img" --host img "$W/img" >/dev/null
PLAIN_AT="hosts/plain/latest${W}/plain/tree"
IMG_AT="hosts/img/latest${W}/img/disk.qcow2.d"

timed() { local s e; s=$(now); "$@" >/dev/null; e=$(now); echo "$e - $s" | bc; }
cold; mount_repo "$W/repo-img"
ls_img=$(timed ls -l "$MNT/$IMG_AT/")
n_img=$(find "$MNT/$IMG_AT" -name 'f*.bin' | wc -l)
unmount
cold; mount_repo "$W/repo-img"; find_img=$(timed find "$MNT/$IMG_AT"); unmount
cold; mount_repo "$W/repo-plain"; find_plain=$(timed find "$MNT/$PLAIN_AT"); unmount
cold; mount_repo "$W/repo-img"; cat_img=$(timed cat "$MNT/$IMG_AT/big.bin"); unmount
cold; mount_repo "$W/repo-plain"; cat_plain=$(timed cat "$MNT/$PLAIN_AT/big.bin"); unmount
cold; mount_repo "$W/repo-plain"; ls_plain=$(timed ls -l "$MNT/$PLAIN_AT/"); unmount
cold; index_img=$(timed "$REWIND" catalog rebuild --repo "$W/repo-img")
cold; index_plain=$(timed "$REWIND" catalog rebuild --repo "$W/repo-plain")
[ "$n_img" = "$FILES" ] || { echo "find saw $n_img files inside the image, not $FILES" >&2; exit 1; }

printf '%-44s %12s\n' measure value
printf '%-44s %12.1f\n' "one ${TEMPLATE_MIB} MiB clone: repository MiB" "$(echo "$one/1048576" | bc -l)"
printf '%-44s %12.1f\n' "$CLONES clones: repository MiB" "$(echo "$all/1048576" | bc -l)"
printf '%-44s %12.3f\n' "$CLONES clones / one (issue <= 1.15)" "$(echo "$all/$one" | bc -l)"
printf '%-44s %12.2f\n' "repository growth per further clone, MiB" "$(echo "($all-$one)/1048576/($CLONES-1)" | bc -l)"
printf '%-44s %12.2f\n' "files of its own per further clone, MiB" "$own"
printf '%-44s %12.2f\n' "backup of the first clone, s" "$t1"
printf '%-44s %12.3f\n' "cold ls -l of the ext4 root in the qcow2, s" "$ls_img"
printf '%-44s %12.3f\n' "cold ls -l of the plain tree's root, s" "$ls_plain"
printf '%-44s %12.3f\n' "cold find inside the image, s" "$find_img"
printf '%-44s %12.3f\n' "cold find over the plain tree, s" "$find_plain"
printf '%-44s %12.2f\n' "find: image / plain (issue <= 3)" "$(echo "$find_img/$find_plain" | bc -l)"
printf '%-44s %12.1f\n' "cold cat of ${BIG_MIB} MiB inside the image, MB/s" "$(echo "$BIG_MIB*1.048576/$cat_img" | bc -l)"
printf '%-44s %12.1f\n' "cold cat of ${BIG_MIB} MiB plain, MB/s" "$(echo "$BIG_MIB*1.048576/$cat_plain" | bc -l)"
printf '%-44s %12.2f\n' "read: image / plain speed (issue >= 0.6)" "$(echo "$cat_plain/$cat_img" | bc -l)"
printf '%-44s %12.3f\n' "cold catalog rebuild, files in the image, s" "$index_img"
printf '%-44s %12.3f\n' "cold catalog rebuild, the plain tree, s" "$index_plain"
