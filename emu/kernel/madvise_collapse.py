"""MADV_COLLAPSE: synchronous PMD collapse in the caller's context (kernel-mthp.md §4.1).

QEMU 7.2 returns 0 to the guest for MADV_COLLAPSE without doing anything, so emu
keeps the model's own answer for every call — return value, errno name and the
SCAN result of each PMD — as a :class:`MadviseCollapseRecord` for the report.
"""

import errno
from dataclasses import dataclass, field
from typing import Any

from emu.kernel.collapse import CollapseControl, Tracer, collapse_possible
from emu.kernel.collapse_ops import (
    HPAGE_PMD_MASK,
    HPAGE_PMD_SIZE,
    TVA_FORCED_COLLAPSE,
    CollapseOps,
)
from emu.kernel.khugepaged_knobs import CollapseCosts, KhugepagedKnobs
from emu.kernel.scan import collapse_scan_pmd
from emu.kernel.scan_result import MADVISE_CONTINUE, ScanResult, madvise_collapse_errno

S = ScanResult


@dataclass
class MadviseCollapseRecord:
    """One MADV_COLLAPSE call as the model answered it."""

    mm: Any
    start: int
    length: int
    ret: int = 0
    pmds: list[tuple[int, ScanResult]] = field(default_factory=list)
    t_start_ns: int = 0
    t_end_ns: int = 0

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(-self.ret, "") if self.ret else ""

    def to_json(self) -> dict:
        return {"start": self.start, "length": self.length, "ret": self.ret,
                "errno": self.errno_name, "duration_ns": self.t_end_ns - self.t_start_ns,
                "pmds": [{"addr": a, "result": r.name} for a, r in self.pmds]}


def _collapse_vma_range(ops: CollapseOps, mm: Any, vma, start: int, end: int,
                        cc: CollapseControl, rec: MadviseCollapseRecord) -> int:
    """madvise_collapse() for one VMA's part of the range."""
    if not collapse_possible(ops, mm, vma, TVA_FORCED_COLLAPSE):
        return -errno.EINVAL
    hstart = (start + HPAGE_PMD_SIZE - 1) & HPAGE_PMD_MASK
    hend = end & HPAGE_PMD_MASK
    thps = 0
    last_fail = S.SCAN_FAIL
    for addr in range(hstart, hend, HPAGE_PMD_SIZE):
        cc.progress = 0
        result = collapse_scan_pmd(ops, mm, vma, addr, cc)
        rec.pmds.append((addr, result))
        if result in (S.SCAN_SUCCEED, S.SCAN_PMD_MAPPED):
            thps += 1
        elif result in MADVISE_CONTINUE:
            last_fail = result
        else:
            last_fail = result
            break
    nr = max(0, (hend - hstart) // HPAGE_PMD_SIZE)
    return 0 if thps == nr else madvise_collapse_errno(last_fail)


def madvise_collapse(ops: CollapseOps, mm: Any, start: int, length: int, now_ns: int = 0,
                     knobs: KhugepagedKnobs | None = None, tracer: Tracer | None = None,
                     costs: CollapseCosts | None = None) -> MadviseCollapseRecord:
    """madvise(start, length, MADV_COLLAPSE) as madvise_walk_vmas() drives it."""
    cc = CollapseControl(is_khugepaged=False, knobs=knobs or KhugepagedKnobs(),
                         tracer=tracer or Tracer(), costs=costs or CollapseCosts.load(),
                         now_ns=now_ns)
    rec = MadviseCollapseRecord(mm, start, length, t_start_ns=now_ns)
    end = start + length
    pos = start
    unmapped_gap = False
    for vma in sorted(ops.vmas(mm), key=lambda v: v.start):
        if vma.end <= pos or vma.start >= end:
            continue
        if vma.start > pos:
            unmapped_gap = True
        ret = _collapse_vma_range(ops, mm, vma, max(pos, vma.start), min(end, vma.end), cc, rec)
        pos = min(end, vma.end)
        if ret:
            rec.ret = ret
            break
    else:
        if pos < end or unmapped_gap:
            rec.ret = -errno.ENOMEM
    rec.t_end_ns = cc.now_ns
    return rec
