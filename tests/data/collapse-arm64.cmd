emu run -q --no-hw --force --record tests/data/collapse-arm64.emu -- build/guest/arm64/collapse -r 1 -n 64 -a
