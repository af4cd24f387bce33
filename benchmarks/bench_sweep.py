#!/usr/bin/env python3
"""Time `emu sweep` against the same cells run as serial `emu replay` processes (a script).

    .venv/bin/python benchmarks/bench_sweep.py [--workers N] [--iterations I] [--repeat R]

Records `random -m 16 -i I` and `touch -m 16` on both architectures once, then
replays the 24 cells of a 2 workloads × 2 architectures × 6 configurations grid
three ways, in turn each round: one `emu replay` process per cell one after
another (what a shell loop does), `emu sweep --workers 1` (one warm worker: the
gain from not starting a process per cell), and `emu sweep --workers N` (N
defaults to the cores).  Sweep times are the whole command: grid checks,
LocalCluster start, cells, table.  Wall-clock seconds, best of --repeat rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMU = [sys.executable, "-m", "emu.cli"]

GRID = """
[[workload]]
name = "random"
recording = "random-{arch}.trace"
[[workload]]
name = "touch"
recording = "touch-{arch}.trace"
[[config]]
name = "base"
[[config]]
name = "mthp64"
mthp = "64K=always,2M=never"
[[config]]
name = "khugepaged"
khugepaged = "fast"
at_mark = "1:max_ptes_none=0"
[grid]
thp = ["always", "never"]
"""


def emu(*args: str) -> None:
    subprocess.run([*EMU, *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--iterations", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="emu-bench-sweep-"))
    try:
        for arch in ("x86_64", "arm64"):
            for name, gargs in (("random", ["-m", "16", "-i", str(a.iterations), "-q"]),
                                ("touch", ["-m", "16"])):
                emu("run", "-q", "--no-hw", "--record", str(work / f"{name}-{arch}.trace"),
                    "--", str(REPO / "build" / "guest" / arch / name), *gargs)
        grid = work / "grid.toml"
        grid.write_text(GRID)
        emu("sweep", str(grid), "-q", "--workers", "1", "--output", str(work / "plan"))
        cells = [json.loads(p.read_text()) for p in (work / "plan" / "cells").glob("*.json")]

        def serial() -> None:
            for c in cells:
                emu("replay", "-q", "--force", "--json", str(work / "r.json"), *c["flags"],
                    c["recording"])

        def sweep(n: int):
            def go() -> None:
                shutil.rmtree(work / "out", ignore_errors=True)
                emu("sweep", str(grid), "-q", "--workers", str(n), "--output", str(work / "out"))
            return go

        rows = {"serial emu replay": serial, "emu sweep --workers 1": sweep(1),
                f"emu sweep --workers {a.workers}": sweep(a.workers)}
        best = {k: float("inf") for k in rows}
        for _ in range(a.repeat):
            for k, fn in rows.items():
                best[k] = min(best[k], timed(fn))
        base = best["serial emu replay"]
        print(f"{len(cells)} cells, {os.cpu_count()} cores, best of {a.repeat}")
        print(f"{'':<24} {'seconds':>8} {'per cell':>9} {'speed-up':>9}")
        for k, t in best.items():
            print(f"{k:<24} {t:8.2f} {t / len(cells):9.3f} {base / t:8.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
