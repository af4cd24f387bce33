emu run -q --no-hw --force --record tests/data/sparse-x86_64.emu -- build/guest/x86_64/sparse -r 2 -n 16 -i 20 -L
