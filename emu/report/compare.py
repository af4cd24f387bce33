"""`emu compare`: one workload across architectures and policies, as a table.

Each run is one replay's result (emu.report.result); a row takes the counters
that mean the same thing on both architectures (emu.report.samples: the last
TLB level missed, L1 dTLB misses) and the kernel's page faults, and its ratio
to the first policy of the same architecture.
"""

from __future__ import annotations

from typing import Any

from emu.report.samples import L1D_MISSES, L2_MISSES, l1d_misses, l2_misses

METRICS = ["L2 TLB misses", "L1 dTLB misses", "page faults"]


def row(arch: str, policy: str, options: str, result: dict[str, Any]) -> dict[str, Any]:
    tlb = result.get("tlb", {}).get("total", {})
    return {"arch": arch, "policy": policy, "options": options,
            "instructions": result["instructions"],
            "metrics": {"L2 TLB misses": l2_misses(arch, tlb),
                        "L1 dTLB misses": l1d_misses(arch, tlb),
                        "page faults": result.get("kernel", {}).get("vmstat", {})
                        .get("pgfault", 0)},
            "counters": {"L2 TLB misses": list(L2_MISSES[arch]),
                         "L1 dTLB misses": list(L1D_MISSES[arch])},
            "rss_kB": sum(s["rss_kB"] for s in result.get("thpmaps", []) if s["at"] == "exit")}


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's metrics divided by those of its architecture's first row."""
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        base = first.setdefault(r["arch"], r)
        r["ratios"] = {m: (r["metrics"][m] / base["metrics"][m] if base["metrics"][m] else None)
                       for m in METRICS}
    return rows


def render(cmp: dict[str, Any]) -> str:
    """The table, then one line per architecture on what its last policy changed."""
    lines = [f" emu compare: {' '.join(cmp['argv'])}", ""]
    head = f"   {'arch':<7} {'policy':<12} {'instructions':>14}" + "".join(
        f" {m:>16} {'ratio':>6}" for m in METRICS)
    lines.append(head)
    for r in cmp["rows"]:
        cells = "".join(f" {r['metrics'][m]:>16,} {_ratio(r['ratios'].get(m)):>6}"
                        for m in METRICS)
        lines.append(f"   {r['arch']:<7} {r['policy']:<12} {r['instructions']:>14,}{cells}")
    lines.append("")
    lines.append("   L2 TLB misses: " + "; ".join(
        f"{arch}: {' + '.join(names)}" for arch, names in
        {r["arch"]: r["counters"]["L2 TLB misses"] for r in cmp["rows"]}.items()))
    for arch in dict.fromkeys(r["arch"] for r in cmp["rows"]):
        mine = [r for r in cmp["rows"] if r["arch"] == arch]
        if len(mine) < 2:
            continue
        ratio = mine[-1]["ratios"]["L2 TLB misses"]
        if ratio is None:
            continue
        verdict = "cuts" if ratio < 0.9 else "raises" if ratio > 1.1 else "leaves"
        lines.append(f"   {arch}: {mine[-1]['policy']} {verdict} L2 TLB misses"
                     f" (x{ratio:.3f} of {mine[0]['policy']})")
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
