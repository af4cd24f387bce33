emu run -q --no-hw --force --record tests/data/churn-x86_64.emu -- build/guest/x86_64/churn -i 2 -p 8
