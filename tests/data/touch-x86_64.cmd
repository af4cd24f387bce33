emu run -q --no-hw --force --record tests/data/touch-x86_64.emu -- build/guest/x86_64/touch -m 2 -p full
