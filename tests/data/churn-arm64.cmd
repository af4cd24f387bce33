emu run -q --no-hw --force --record tests/data/churn-arm64.emu -- build/guest/arm64/churn -i 2 -p 8
