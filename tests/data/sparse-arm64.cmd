emu run -q --no-hw --force --record tests/data/sparse-arm64.emu -- build/guest/arm64/sparse -r 2 -n 16 -i 20 -L
