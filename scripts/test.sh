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
# Garage, the S3 service the object-storage tests run against: not in Debian, so built once with
# cargo (about 8 minutes on 2 cores) and cached outside the checkout.
GARAGE_VERSION=2.5.0
garage_root="${REWIND_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rewind-test}/garage-$GARAGE_VERSION"
if [ -z "${REWIND_GARAGE:-}" ]; then
  if command -v garage >/dev/null 2>&1 && garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    REWIND_GARAGE=$(command -v garage)
  else
    if [ ! -x "$garage_root/bin/garage" ]; then
      echo "test.sh: building garage $GARAGE_VERSION into $garage_root (once)" >&2
      cargo install garage --locked --version "$GARAGE_VERSION" --root "$garage_root" --quiet
    fi
    REWIND_GARAGE="$garage_root/bin/garage"
  fi
fi
export REWIND_GARAGE

cargo test --workspace --no-fail-fast "$@"
