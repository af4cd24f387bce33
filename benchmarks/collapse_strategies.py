#!/usr/bin/env python3
"""What a collapse costs the running CPUs, PMD clear+flush against PTE clear+flush.

Records each guest once per architecture (no model), then replays the recording
under khugepaged with each --collapse-strategy and the integrity oracle, with THP
off while the guest populates and one size switched on at mark 1.  Prints one row
per (guest, arch, size, strategy); then a second table with a synthetic GUP-fast
user pinning the program's memory during the collapses (--gup-fast-rate), for the
safe strategies.  docs/collapse.md quotes a run of it.

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
STRATEGIES = ("pmd", "pte", "unsafe-noflush", "unsafe-nonatomic")
GUP_RATE = "1000000"          # pins per simulated second, 16 pages each, held 10 us


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
            "dirty bits lost": r["kernel"]["vmstat"].get("emu_collapse_dirty_lost", 0),
            "TLB hits in cleared": kh["guest_stalls"]["tlb_hits_in_cleared_ranges"],
            "lost writes": r["integrity"]["lost_writes"],
            "untranslatable": r["tlb"]["unresolved_faults"]}


def gup_row(r: dict) -> dict[str, int]:
    g, kh = r["gup"], r["khugepaged"]
    return {"collapses": sum(kh["collapses_by_size_kb"].values()),
            "SCAN_PAGE_COUNT": kh["khugepaged"]["results"].get("SCAN_PAGE_COUNT", 0),
            "GUP-fast calls": g["gup_fast_attempts"],
            "pages pinned locklessly": g["gup_fast_pages"],
            "fallbacks": g["gup_fast_fallbacks"],
            "on a collapse": g["gup_fast_fallbacks_collapse"],
            "recheck failed": g["gup_fast_recheck_failed"],
            "slow-path wait us": g["gup_slow_wait_ns"] // 1000,
            "lost writes": r["integrity"]["lost_writes"]}


def table(rows: list) -> None:
    cols = list(rows[0][1])
    print("| guest | arch | size | strategy | " + " | ".join(cols) + " |")
    print("|---|---|---|---|" + "---:|" * len(cols))
    for key, r in rows:
        print("| " + " | ".join(key) + " | " + " | ".join(f"{r[c]:,}" for c in cols) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="x86_64,arm64")
    args = ap.parse_args()
    rows, gup_rows = [], []
    with tempfile.TemporaryDirectory(prefix="emu-collapse-") as tmp:
        for arch in args.arch.split(","):
            for name, gargs in GUESTS.items():
                trace = Path(tmp) / f"{name.replace(' ', '')}-{arch}.emutrace"
                # --utlb 0: the plugin's micro-TLB would not see the collapses' flushes
                emu("run", "-q", "--no-hw", "--utlb", "0", "--record", str(trace), "--",
                    str(REPO / "build" / "guest" / arch / "rwthreads"), *gargs)
                for size, mark in SIZES.items():
                    for strategy in STRATEGIES:
                        out = Path(tmp) / "r.json"
                        emu("replay", "-q", "--force", "--oracle", "--json", str(out),
                            "--khugepaged", "fast", "--collapse-strategy", strategy,
                            "--thp", "never", "--at-mark", mark, str(trace))
                        rows.append(((name, arch, size, strategy),
                                     row(json.loads(out.read_text()))))
                        if strategy not in ("pmd", "pte"):
                            continue
                        emu("replay", "-q", "--force", "--oracle", "--check", "--json",
                            str(out), "--khugepaged", "fast", "--collapse-strategy", strategy,
                            "--thp", "never", "--at-mark", mark, "--gup-fast-rate", GUP_RATE,
                            str(trace))
                        gup_rows.append(((name, arch, size, strategy),
                                         gup_row(json.loads(out.read_text()))))
    table(rows)
    print()
    table(gup_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
