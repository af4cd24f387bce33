#!/usr/bin/env bash
# emu's one entry point on a fresh Debian 12 machine (as root, or with sudo).
#   bash setup.sh run    install what is missing, build, run the default workload
#   bash setup.sh test   install what is missing, build, run the whole test suite
#   bash setup.sh        install and build only
# Idempotent: on a machine already set up it does no network work.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

apt_pkgs=(qemu-user gcc make libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross
          dpkg-dev xz-utils python3 python3-venv busybox-static)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# qemu-plugin.h is in no binary package: take it from the source package of the
# installed qemu-user, so the plugin is built against the exact API it loads into.
src_list=/etc/apt/sources.list.d/emu-deb-src.sources
need_update=0
if [ ! -f "$src_list" ] && ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  $SUDO tee "$src_list" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q >/dev/null
  need_update=0
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
fi

mkdir -p build
if [ ! -f build/include/qemu-plugin.h ]; then
  [ $need_update = 1 ] && $SUDO apt-get update -q >/dev/null
  ver=$(dpkg-query -W -f='${source:Version}' qemu-user)
  echo "setup: fetching qemu-plugin.h from Debian source qemu=$ver"
  rm -rf build/qemu-src && mkdir -p build/qemu-src build/include
  ( cd build/qemu-src && apt-get source --download-only -q "qemu=$ver" >/dev/null 2>&1 )
  orig=$(ls build/qemu-src/qemu_*.orig.tar.xz | head -1)
  tar -xJf "$orig" -C build/qemu-src --wildcards '*/include/qemu/qemu-plugin.h'
  cp build/qemu-src/*/include/qemu/qemu-plugin.h build/include/qemu-plugin.h
  rm -rf build/qemu-src
fi

if [ ! -x .venv/bin/python ] || [ ! -f .venv/.emu-installed ] || [ pyproject.toml -nt .venv/.emu-installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.emu-installed
fi

make -s build

case "${1:-}" in
  run)  make -s demo ;;
  test) make -s test ;;
  "")   ;;
  *)    echo "usage: bash setup.sh [run|test]" >&2; exit 2 ;;
esac
