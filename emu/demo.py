"""The README's first command ends here: the bundled workload on both architectures.

`random` over 32 MiB, with MADV_HUGEPAGE-free kernel-default THP settings,
once as an x86-64 guest and once as an arm64 guest, each summary printed in
full, then the headline counts side by side.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from emu.cli import main as emu_main

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = ["random", "-m", "32", "-i", "2000000", "-q"]


def main() -> int:
    results = {}
    with tempfile.TemporaryDirectory(prefix="emu-demo-") as tmp:
        for arch in ("x86_64", "arm64"):
            binary = REPO / "build" / "guest" / arch / WORKLOAD[0]
            out = Path(tmp) / f"{arch}.json"
            print(f"\n=== emu run -- {binary.relative_to(REPO)} {' '.join(WORKLOAD[1:])}",
                  file=sys.stderr, flush=True)
            status = emu_main(["run", "--json", str(out), "--", str(binary), *WORKLOAD[1:]])
            if status != 0:
                return status
            results[arch] = json.loads(out.read_text())
    print("\n=== side by side", file=sys.stderr)
    rows = [("instructions", lambda r: r["instructions"]),
            ("data reads", lambda r: r["accesses"]["read"]),
            ("data writes", lambda r: r["accesses"]["write"]),
            ("pages touched", lambda r: r["pages_touched"]),
            ("dTLB-load-misses", lambda r: r["tlb"]["total"].get("dTLB-load-misses", 0)),
            ("page walks", lambda r: sum(v for k, v in r["tlb"]["total"].items()
                                         if k.startswith("emu.walks.")))]
    print(f"{'':>20} {'x86_64':>16} {'arm64':>16}", file=sys.stderr)
    for name, get in rows:
        print(f"{name:>20} {get(results['x86_64']):>16,} {get(results['arm64']):>16,}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
