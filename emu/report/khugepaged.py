"""khugepaged and MADV_COLLAPSE in the report: what the kernel's bus said, gathered
while the run goes, then as JSON and as text lines of the summary."""

from __future__ import annotations

from typing import Any

from emu.bus import Event, EventBus


class CollapseLog:
    """Subscribes to one kernel's bus: MADV_COLLAPSE answers and collapse censuses."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.madvise: list[Any] = []                 # MadviseCollapseRecord, in call order
        self.census: dict[str, dict[str, int]] = {"before": {}, "after": {}}
        bus.subscribe("emu_madvise_collapse", self._madvise)
        bus.subscribe("emu_collapse_census", self._census)

    def _madvise(self, e: Event) -> None:
        self.madvise.append(e.args["record"])

    def _census(self, e: Event) -> None:
        for side in ("before", "after"):
            for order, n in e.args[side].items():
                key = "zero_page" if order < 0 else f"{4 << order}kB"
                self.census[side][key] = self.census[side].get(key, 0) + n

    def section(self, khugepaged: Any) -> dict[str, Any]:
        """The JSON section: the thread's counters, collapses by size, MADV_COLLAPSE."""
        made: dict[int, int] = {}
        for (name, status, order), n in self.bus.counts.items():
            if name == "mm_collapse_huge_page" and status == "succeeded":
                made[4 << order] = made.get(4 << order, 0) + n
        return {"khugepaged": khugepaged.stats(),
                "trace_events_dropped": self.bus.dropped,
                "collapses_by_size_kb": dict(sorted(made.items())),
                "pages_by_mapping_size": {side: dict(d) for side, d in self.census.items()},
                "madvise_collapse": [r.to_json() for r in self.madvise]}


def _next_wake(kh: dict[str, Any]) -> str:
    wake = kh.get("next_wake_ns")
    return "; asleep" if wake is None else f"; next wake at {wake / 1e6:,.3f} ms"


def render(r: dict[str, Any]) -> str:
    """Text lines for khugepaged / MADV_COLLAPSE activity (section() as input)."""
    kh = r["khugepaged"]
    lines = [f" khugepaged ({kh['algo']}): {kh['passes']} passes, full_scans {kh['full_scans']},"
             f" pages_collapsed {kh['pages_collapsed']}, busy {kh['busy_ns'] / 1e6:.3f} ms"
             " (estimated)" + _next_wake(kh)]
    if kh["results"]:
        lines.append("   PMD scans by result: " + ", ".join(
            f"{name} {n}" for name, n in kh["results"].items()))
    if r["collapses_by_size_kb"]:
        lines.append("   collapses by size: " + ", ".join(
            f"{kb}kB x{n}" for kb, n in r["collapses_by_size_kb"].items()))
    census = r.get("pages_by_mapping_size", {})
    for side in ("before", "after"):
        if census.get(side):
            lines.append(f"   pages in scanned-and-collapsed PMDs, {side}: " + ", ".join(
                f"{k} {n}" for k, n in census[side].items()))
    for m in r["madvise_collapse"]:
        res = ", ".join(p["result"] for p in m["pmds"]) or "no whole PMD"
        lines.append(f"   MADV_COLLAPSE {m['start']:#x}+{m['length']:#x} = {m['ret']}"
                     f"{' ' + m['errno'] if m['errno'] else ''} [{res}]")
    return "\n".join(lines)
