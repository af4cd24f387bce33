#!/usr/bin/env bash
# Regenerate the small recordings under tests/data/ that the unit tests replay
# without QEMU (tests/data/README.md).  Needs QEMU user-mode, the plugin and
# the guests (bash setup.sh / make guests).  Run from anywhere:
#
#     scripts/make_test_recordings.sh            # every recording
#     scripts/make_test_recordings.sh touch      # only those whose name matches
#
# For each NAME-ARCH it writes NAME-ARCH.emu (the recording), NAME-ARCH.stdout
# (the guest's stdout: its EMU-TRUTH line) and NAME-ARCH.cmd (the command).
set -euo pipefail

cd "$(dirname "$0")/.."
EMU=${EMU:-.venv/bin/emu}
OUT=tests/data
only=${1:-}

# name|guest arguments (kept small: each recording well under 64 KiB)
SPECS=(
  "touch|-m 2 -p full"
  "forker|-m 32 -c 8 -s 2"
  "threads|-t 3 -p 8 -r 2"
  "collapse|-r 1 -n 64 -a"
  "sparse|-r 2 -n 16 -i 20 -L"
  "churn|-i 2 -p 8"
)

mkdir -p "$OUT"
for arch in x86_64 arm64; do
  for spec in "${SPECS[@]}"; do
    name=${spec%%|*}
    gargs=${spec#*|}
    [[ -n $only && $name != *$only* ]] && continue
    base=$OUT/$name-$arch
    # Relative binary path: the recording's argv carries no checkout location.
    cmd="emu run -q --no-hw --force --record $base.emu -- build/guest/$arch/$name $gargs"
    # shellcheck disable=SC2086
    $EMU run -q --no-hw --force --record "$base.emu" -- "build/guest/$arch/$name" $gargs \
      > "$base.stdout"
    echo "$cmd" > "$base.cmd"
    printf '%-28s %6d bytes\n' "$base.emu" "$(stat -c %s "$base.emu")"
  done
done
du -cb "$OUT"/*.emu | tail -1
