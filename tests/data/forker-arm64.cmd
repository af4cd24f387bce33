emu run -q --no-hw --force --record tests/data/forker-arm64.emu -- build/guest/arm64/forker -m 32 -c 8 -s 2
