#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine (real FUSE, a real
# slapd, a real Chromium), then runs every test of the workspace. Run from the repository root:
#   scripts/test.sh            (extra arguments go to `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 slapd ldap-utils openssl chromium chromium-driver unzip python3 util-linux acl curl
  qemu-utils e2fsprogs dosfstools mtools ntfs-3g fdisk gdisk)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# slapd's package starts its own daemon; the tests run private ones on loopback ports.
if command -v systemctl >/dev/null 2>&1; then systemctl stop slapd >/dev/null 2>&1 || true; fi
pkill -x slapd -U openldap 2>/dev/null || true
[ -e /dev/fuse ] || { echo "test.sh: /dev/fuse is missing; the mount tests need FUSE" >&2; exit 1; }

cargo test --workspace --no-fail-fast "$@"
