emu run -q --no-hw --force --record tests/data/forker-x86_64.emu -- build/guest/x86_64/forker -m 32 -c 8 -s 2
