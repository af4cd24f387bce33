#!/usr/bin/env python3
"""What a collapse costs the running CPUs, PMD clear+flush against PTE clear+flush.

Records each guest once per architecture (no model), then replays the recording
under khugepaged with each --collapse-strategy and the integrity oracle, with THP
off while the guest populates and one size switched on at mark 1.  Prints one row
per (guest, arch, size, strategy); docs/collapse.md quotes a run of it.

    .venv/bin/python benchmarks/collapse_strategies.py [--arch x86_64,arm64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMU = [sys.executable, "-m", "emu.cli"]
GUESTS = {"rwthreads -t 4": ["-t", "4", "-m", "8", "-i", "300000"],
          "rwthreads -t 1": ["-t", "1", "-m", "8", "-i", "600000"]}
SIZES = {"64K": "1:mthp=64K=always", "2M": "1:thp=always"}
STRATEGIES = ("pmd", "pte", "unsafe-noflush")


def emu(*args: str) -> None:
    subprocess.run([*EMU, *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def row(r: dict) -> dict[str, int]:
    t, kh = r["tlb"]["total"], r["khugepaged"]
    received = sum(v for k, v in t.items() if k.startswith("flush.") and k.endswith(".received"))
    return {"collapses": sum(kh["collapses_by_size_kb"].values()),
            "entries flushed": t.get("emu.tlb_entries_flushed", 0),
            "IPIs+TLBIs received": received,
            "faults waited": kh["guest_stalls"]["faults"],
            "wait us": kh["guest_stalls"]["total_ns"] // 1000,
            "TLB hits in cleared": kh["guest_stalls"]["tlb_hits_in_cleared_ranges"],
            "lost writes": r["integrity"]["lost_writes"],
            "untranslatable": r["tlb"]["unresolved_faults"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="x86_64,arm64")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="emu-collapse-") as tmp:
        for arch in args.arch.split(","):
            for name, gargs in GUESTS.items():
                trace = Path(tmp) / f"{name.replace(' ', '')}-{arch}.emutrace"
                emu("run", "-q", "--no-hw", "--record", str(trace), "--",
                    str(REPO / "build" / "guest" / arch / "rwthreads"), *gargs)
                for size, mark in SIZES.items():
                    for strategy in STRATEGIES:
                        out = Path(tmp) / "r.json"
                        emu("replay", "-q", "--force", "--oracle", "--json", str(out),
                            "--khugepaged", "fast", "--collapse-strategy", strategy,
                            "--thp", "never", "--at-mark", mark, str(trace))
                        rows.append(((name, arch, size, strategy),
                                     row(json.loads(out.read_text()))))
    cols = list(rows[0][1])
    print("| guest | arch | size | strategy | " + " | ".join(cols) + " |")
    print("|---|---|---|---|" + "---:|" * len(cols))
    for key, r in rows:
        print("| " + " | ".join(key) + " | " + " | ".join(f"{r[c]:,}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
