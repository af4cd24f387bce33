emu run -q --no-hw --force --record tests/data/collapse-x86_64.emu -- build/guest/x86_64/collapse -r 1 -n 64 -a
