"""MADV_COLLAPSE: synchronous PMD collapse in the caller's context (kernel-mthp.md §4.1).

The caller waits for the whole call: its steps run at once, and their estimated
duration is the calling thread's time (the machine charges it); other threads of
the process do not run in between (a simplification, see docs/collapse.md).

QEMU 7.2 returns 0 to the guest for MADV_COLLAPSE without doing anything, so emu
keeps the model's own answer for every call — return value, errno name and the
SCAN result of each PMD — as a :class:`MadviseCollapseRecord` for the report.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from emu.arch import PMD_SIZE
from emu.kernel.huge_memory import TVA_FORCED_COLLAPSE
from emu.kernel.khugepaged.collapse import CollapseControl, collapse_possible, run_steps
from emu.kernel.khugepaged.results import ScanResult
from emu.kernel.khugepaged.scan import collapse_scan_pmd

PMD_MASK = ~(PMD_SIZE - 1)
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


def _collapse_vma_range(k: Any, mm: Any, vma, start: int, end: int,
                        cc: CollapseControl, rec: MadviseCollapseRecord) -> int:
    """madvise_collapse() for one VMA's part of the range."""
    if not collapse_possible(k, mm, vma, TVA_FORCED_COLLAPSE):
        return -errno.EINVAL
    hstart = (start + PMD_SIZE - 1) & PMD_MASK
    hend = end & PMD_MASK
    thps = 0
    last_fail = S.SCAN_FAIL
    for addr in range(hstart, hend, PMD_SIZE):
        cc.progress = 0
        result = run_steps(collapse_scan_pmd(k, mm, vma, addr, cc))
        rec.pmds.append((addr, result))
        if result in (S.SCAN_SUCCEED, S.SCAN_PMD_MAPPED):
            thps += 1
        elif result.madvise_continue:
            last_fail = result
        else:
            last_fail = result
            break
    nr = max(0, (hend - hstart) // PMD_SIZE)
    return 0 if thps == nr else last_fail.errno


def madvise_collapse(k: Any, mm: Any, start: int, length: int,
                     now_ns: int = 0) -> MadviseCollapseRecord:
    """madvise(start, length, MADV_COLLAPSE) as madvise_walk_vmas() drives it."""
    kh = k.khugepaged
    cc = CollapseControl(is_khugepaged=False, knobs=kh.knobs, bus=k.bus, costs=kh.costs,
                         algo=kh.cc.algo, now_ns=now_ns, strategy=kh.cc.strategy,
                         fail_at=kh.cc.fail_at,
                         pmd_precheck_counts_swap=kh.cc.pmd_precheck_counts_swap)
    rec = MadviseCollapseRecord(mm, start, length, t_start_ns=now_ns)
    end = start + length
    pos = start
    unmapped_gap = False
    for vma in mm.vmas:
        if vma.end <= pos or vma.start >= end:
            continue
        if vma.start > pos:
            unmapped_gap = True
        ret = _collapse_vma_range(k, mm, vma, max(pos, vma.start), min(end, vma.end), cc, rec)
        pos = min(end, vma.end)
        if ret:
            rec.ret = ret
            break
    else:
        if pos < end or unmapped_gap:
            rec.ret = -errno.ENOMEM
    rec.t_end_ns = cc.now_ns
    return rec
