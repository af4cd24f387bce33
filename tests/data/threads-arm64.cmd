emu run -q --no-hw --force --record tests/data/threads-arm64.emu -- build/guest/arm64/threads -t 3 -p 8 -r 2
