"""The README's first command ends here: the bundled workload on both architectures.

`random` over 32 MiB, every page written first, then 2 M random reads and
writes.  Each architecture runs once with the kernel's default THP settings,
its summary printed in full; then quietly with 4 KiB pages only (and, on
arm64, with 64 KiB mTHP, which the contiguous bit turns into 64 KiB TLB
entries), and the headline counts are set side by side.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from emu.cli import main as emu_main

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = ["random", "-m", "32", "-i", "2000000", "-P", "-q"]
POLICIES = {
    "x86_64": [("defaults", []), ("4K only", ["--thp", "never"])],
    "arm64": [("defaults", []), ("4K only", ["--thp", "never"]),
              ("64K mTHP", ["--thp", "never", "--mthp", "64K=always"])],
}


def _walks(r: dict) -> int:
    return sum(v for k, v in r["tlb"]["total"].items() if k.startswith("emu.walks."))


def _l2_misses(r: dict) -> int:
    t = r["tlb"]["total"]
    return t.get("L2D_TLB_REFILL", t.get("dtlb_load_misses.walk_completed", 0)
                 + t.get("dtlb_store_misses.walk_completed", 0))


ROWS = [("instructions", lambda r: r["instructions"]),
        ("data accesses", lambda r: r["accesses"]["read"] + r["accesses"]["write"]),
        ("pages touched", lambda r: r["pages_touched"]),
        ("dTLB-load-misses", lambda r: r["tlb"]["total"].get("dTLB-load-misses", 0)),
        ("last-level TLB misses", _l2_misses),
        ("page walks", _walks)]


def main() -> int:
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="emu-demo-") as tmp:
        for arch, policies in POLICIES.items():
            binary = REPO / "build" / "guest" / arch / WORKLOAD[0]
            for name, opts in policies:
                out = Path(tmp) / f"{arch}-{len(results)}.json"
                quiet = ["-q"] if name != "defaults" else []
                if not quiet:
                    print(f"\n=== emu run -- {binary.relative_to(REPO)} {' '.join(WORKLOAD[1:])}",
                          file=sys.stderr, flush=True)
                status = emu_main(["run", *quiet, *opts, "--json", str(out), "--",
                                   str(binary), *WORKLOAD[1:]])
                if status != 0:
                    return status
                results[(arch, name)] = json.loads(out.read_text())
    cols = list(results)
    print("\n=== side by side (same program; page-size policy and architecture vary)",
          file=sys.stderr)
    print(f"{'':>22}" + "".join(f"{a:>15}" for a, _ in cols), file=sys.stderr)
    print(f"{'':>22}" + "".join(f"{n:>15}" for _, n in cols), file=sys.stderr)
    for label, get in ROWS:
        print(f"{label:>22}" + "".join(f"{get(results[c]):>15,}" for c in cols),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
