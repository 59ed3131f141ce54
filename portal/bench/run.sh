#!/bin/bash
# Portal benchmarks on the scale-1 corpus (shared/bench/corpus.py), as reported in the portal's
# closing note. Needs: cargo build --release, python3, curl, wrk, fuse3 (for the FUSE comparison).
# Usage: portal/bench/run.sh [WORKDIR]   (default /tmp/portal-bench; ~2.5 GB of disk)
# ONLY="download concurrent api" (any of them) runs only those parts.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${1:-/tmp/portal-bench}
B=$W/rewind
mkdir -p "$W"
cp "${REWIND_BIN:-$ROOT/target/release/rewind}" "$B"
cd "$W"
if [ ! -d corpus ]; then
    python3 "$ROOT/../shared/bench/corpus.py" make corpus --scale 1
    "$B" init repo >/dev/null
    "$B" backup --repo repo --host fileserver "$W/corpus" >/dev/null
    python3 "$ROOT/../shared/bench/corpus.py" step corpus --gen 1
    "$B" backup --repo repo --host fileserver "$W/corpus" >/dev/null
fi
H=$(echo -n pw | "$B" passwd)
cat > users.toml <<EOT
[users.alice]
hash = "$H"
uid = 2001
gids = [2001]
home = "/home/alice"
[users.ada]
hash = "$H"
role = "admin"
EOT
portal_toml() { # $1: catalog_cache_ms
cat > portal.toml <<EOT
listen = "127.0.0.1:0"
repository = "$W/repo"
audit_log = "$W/audit.jsonl"
catalog_sync_secs = 86400
catalog_cache_ms = $1
[session]
key_file = "$W/session.key"
[authz]
rules = ["owner", "home"]
[[authz.home_rewrite]]
from = "/home"
to = "$W/corpus/users"
[limits]
failures_per_address = 100000
[[realm]]
kind = "file"
name = "local"
users_file = "$W/users.toml"
EOT
}
PID=
start() {
    "$B" serve --config portal.toml > serve.out 2> serve.err &
    PID=$!
    for _ in $(seq 100); do grep -q listening serve.out 2>/dev/null && break; sleep 0.1; done
    A=$(sed 's|.*://||' serve.out | head -1)
    until curl -sf "http://$A/healthz" >/dev/null; do sleep 0.1; done
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }
cookie() {
    curl -s -D - -o /dev/null -H 'Content-Type: application/json' --data "{\"username\":\"$1\",\"password\":\"pw\"}" \
        "http://$A/api/login" | grep -i '^set-cookie' | sed 's/^[Ss]et-[Cc]ookie: //; s/;.*//'
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
IMG=$W/corpus/vm/disk-0.img
ONLY=${ONLY:-download concurrent api}
want() { [[ " $ONLY " == *" $1 "* ]]; }

if want download; then
echo "## 256 MiB file: portal cold/warm vs FUSE cold vs cat"
portal_toml 2000
for trial in 1 2 3; do
    drop_caches; start; C=$(cookie ada)
    S=$(curl -s -b "$C" "http://$A/api/snapshots" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
    curl -s -b "$C" -o /dev/null -w "portal cold: %{time_total} s\n" "http://$A/api/download?snapshot=$S&path=$IMG"
    curl -s -b "$C" -o /dev/null -w "portal warm: %{time_total} s\n" "http://$A/api/download?snapshot=$S&path=$IMG"
    stop
    if [ -e /dev/fuse ]; then
        drop_caches; mkdir -p mnt
        "$B" mount --repo repo mnt > mount.out 2>&1 &
        for _ in $(seq 100); do [ -d mnt/hosts ] && break; sleep 0.1; done
        /usr/bin/time -f "FUSE cold: %e s" cat "mnt/hosts/fileserver/latest$IMG" > /dev/null
        fusermount3 -u mnt; sleep 0.5
    fi
done
cat "$IMG" > /dev/null; /usr/bin/time -f "cat from the page cache: %e s" cat "$IMG" > /dev/null
fi

if want concurrent; then
echo "## 200 concurrent downloads (190 corpus files + 10 x the 256 MiB image)"
drop_caches; start; C=$(cookie ada)
S=$(curl -s -b "$C" "http://$A/api/snapshots" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
python3 - "$S" "$W" > urls.txt <<'PY'
import os, random, sys, urllib.parse
random.seed(5)
files = []
for d, _, fs in os.walk(sys.argv[2] + '/corpus/users'):
    files += [os.path.join(d, f) for f in fs]
files.sort()
pick = random.sample(files, 190) + [sys.argv[2] + '/corpus/vm/disk-0.img'] * 10
random.shuffle(pick)
for p in pick:
    print(os.path.getsize(p), 'snapshot=%s&path=%s' % (sys.argv[1], urllib.parse.quote(p, safe='')))
PY
for round in 1 2; do
    xargs -P 200 -L 1 sh -c 'out=$(curl -s -o /dev/null -b "$0" -w "%{http_code} %{size_download}" "http://$1/api/download?$3"); echo "$out $2"' "$C" "$A" < urls.txt > results.txt
    awk '{ if ($1 != 200 || $2 != $3) bad++; n++; bytes += $2 } END { printf "round: %d downloads, %d errors, %.0f MiB\n", n, bad, bytes/1048576 }' results.txt
    grep VmHWM "/proc/$PID/status"
done
stop
fi

want api && for cache in ${CACHES:-2000 0}; do
    echo "## search and deleted at 50 connections (catalog_cache_ms = $cache)"
    portal_toml $cache; start
    for who in ${WHO:-alice ada}; do
        C=$(cookie $who)
        for q in "search?q=report&limit=50" "deleted?limit=50"; do
            echo "# $who /api/$q"
            wrk -t2 -c50 -d15s --latency -H "Cookie: $C" "http://$A/api/$q" | grep -E " 50%| 99%|Requests/sec|Non-2xx|errors"
        done
        echo "# $who mixed words and page sizes"
        wrk -t2 -c50 -d15s --latency -s "$HERE/mixed.lua" -H "Cookie: $C" "http://$A" | grep -E " 50%| 99%|Requests/sec|Non-2xx|errors"
    done
    stop
done
