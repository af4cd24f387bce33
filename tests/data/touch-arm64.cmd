emu run -q --no-hw --force --record tests/data/touch-arm64.emu -- build/guest/arm64/touch -m 2 -p full
