emu run -q --no-hw --force --record tests/data/threads-x86_64.emu -- build/guest/x86_64/threads -t 3 -p 8 -r 2
