"""khugepaged: its own thread of execution on its own CPU, in simulated time.

The machine calls :meth:`Khugepaged.tick` with the simulated time; the thread wakes
every ``scan_sleep_millisecs``, runs one pass (khugepaged_do_scan) that scans until
``pages_to_scan`` of progress, and goes back to sleep.  mms are visited round robin
from a list of slots (khugepaged_scan.mm_head) with a cursor (mm_slot, address)
that survives between passes, as in mm/khugepaged.c.  A pass runs to completion at
the time it starts; its own duration (the costed steps) moves the thread's clock,
which decides when it next wakes.
"""

from collections import Counter
from typing import Any

from emu.kernel.collapse import CollapseControl, Tracer, collapse_possible
from emu.kernel.collapse_ops import (
    HPAGE_PMD_MASK,
    HPAGE_PMD_SIZE,
    TVA_KHUGEPAGED,
    CollapseOps,
    VmaInfo,
)
from emu.kernel.khugepaged_knobs import CollapseCosts, KhugepagedKnobs
from emu.kernel.scan import collapse_scan_pmd
from emu.kernel.scan_result import ScanResult

S = ScanResult
NS_PER_MS = 1_000_000

COLLAPSE_ALGOS = ("v19", "v5")


class Khugepaged:
    """The khugepaged kthread with its mm list, cursor and counters."""

    def __init__(self, ops: CollapseOps, knobs: KhugepagedKnobs | None = None,
                 algo: str = "v19", tracer: Tracer | None = None,
                 costs: CollapseCosts | None = None) -> None:
        if algo not in COLLAPSE_ALGOS:
            raise ValueError(f"collapse algo must be one of {COLLAPSE_ALGOS}")
        self.ops = ops
        self.knobs = knobs or KhugepagedKnobs()
        self.tracer = tracer or Tracer()
        self.cc = CollapseControl(is_khugepaged=True, knobs=self.knobs, tracer=self.tracer,
                                  costs=costs or CollapseCosts.load(), algo=algo)
        self.mm_slots: list[Any] = []          # khugepaged_scan.mm_head, in list order
        self.scan_mm: Any = None               # khugepaged_scan.mm_slot
        self.scan_address = 0                  # khugepaged_scan.address
        self.pages_collapsed = 0
        self.full_scans = 0
        self.passes = 0
        self.alloc_sleeps = 0
        self.results: Counter[ScanResult] = Counter()   # per PMD range scanned
        self.next_wake_ns: int | None = None   # None: asleep until an mm is registered
        self.busy_ns = 0                       # time spent running passes

    # ------------------------------------------------------------ registration
    def khugepaged_enter_vma(self, mm: Any, vma: VmaInfo, now_ns: int = 0) -> bool:
        """Register mm if this VMA could ever be collapsed (mmap, brk, MADV_HUGEPAGE, fault)."""
        if not self.ops.thp.hugepage_enabled():
            return False
        if not collapse_possible(self.ops, mm, vma, TVA_KHUGEPAGED):
            return False
        return self._enter(mm, now_ns)

    def _enter(self, mm: Any, now_ns: int) -> bool:
        """__khugepaged_enter(): add at the tail, wake the thread if the list was empty."""
        if mm in self.mm_slots:
            return False
        wakeup = not self.mm_slots
        self.mm_slots.append(mm)
        if wakeup and (self.next_wake_ns is None or self.next_wake_ns > now_ns):
            self.next_wake_ns = now_ns
        return True

    def khugepaged_fork(self, child: Any, parent: Any, now_ns: int = 0) -> None:
        """A child of a registered mm is registered too (MMF_VM_HUGEPAGE is inherited)."""
        if parent in self.mm_slots:
            self._enter(child, now_ns)

    def khugepaged_exit(self, mm: Any) -> None:
        """mm is gone: drop its slot, moving the cursor past it first."""
        if mm not in self.mm_slots:
            return
        if self.scan_mm is mm:
            self._advance_cursor(mm)
        self.mm_slots.remove(mm)

    def start_stop(self, now_ns: int = 0) -> None:
        """start_stop_khugepaged(): after a THP sysfs change, wake a sleeping thread that
        has work again (it stops by itself when hugepage_enabled() is false)."""
        if (self.next_wake_ns is None and self.mm_slots
                and self.ops.thp.hugepage_enabled()):
            self.next_wake_ns = now_ns

    def set_knob(self, name: str, value: int, now_ns: int = 0) -> None:
        """Write a sysfs knob; writing the sleep times wakes the thread, as in the kernel."""
        self.knobs.set(name, value)
        if name in ("scan_sleep_millisecs", "alloc_sleep_millisecs") and self.mm_slots:
            self.next_wake_ns = now_ns

    # ------------------------------------------------------------ the thread
    def tick(self, now_ns: int) -> int:
        """Run every pass due by now_ns; returns the number of passes run."""
        ran = 0
        while self.next_wake_ns is not None and self.next_wake_ns <= now_ns:
            if not self.ops.thp.hugepage_enabled() or not self.mm_slots:
                self.next_wake_ns = None
                break
            start = self.next_wake_ns
            self.cc.now_ns = start
            self.khugepaged_do_scan()
            self.cc.now_ns = max(self.cc.now_ns, start + self.cc.costs.scan_pmd_ns)
            self.busy_ns += self.cc.now_ns - start
            self.passes += 1
            ran += 1
            # khugepaged_wait_work(): sleep scan_sleep_millisecs, or until there is work.
            self.next_wake_ns = (self.cc.now_ns + self.knobs.scan_sleep_millisecs * NS_PER_MS
                                 if self.mm_slots else None)
        return ran

    def khugepaged_do_scan(self) -> None:
        """One pass: scan until pages_to_scan progress or the list head passed twice."""
        pages = self.knobs.pages_to_scan
        progress = 0
        pass_through_head = 0
        wait = True
        result = S.SCAN_FAIL
        while True:
            if self.scan_mm is None:
                pass_through_head += 1
            if self.mm_slots and pass_through_head < 2:
                got, result = self.collapse_scan_mm_slot(pages - progress, result)
                progress += got
            else:
                progress = pages
            if progress >= pages:
                break
            if result is S.SCAN_ALLOC_HUGE_PAGE_FAIL:
                if not wait:
                    break
                wait = False
                self.alloc_sleeps += 1                 # khugepaged_alloc_sleep()
                self.cc.step(self.knobs.alloc_sleep_millisecs * NS_PER_MS)

    def _advance_cursor(self, mm: Any) -> None:
        idx = self.mm_slots.index(mm)
        if idx + 1 < len(self.mm_slots):
            self.scan_mm = self.mm_slots[idx + 1]
            self.scan_address = 0
        else:
            self.scan_mm = None
            self.full_scans += 1

    def collapse_scan_mm_slot(self, pages: int, result: ScanResult) -> tuple[int, ScanResult]:
        """Scan the cursor's mm from the cursor's address; (progress, last result)."""
        ops, cc = self.ops, self.cc
        if self.scan_mm is None:
            self.scan_mm = self.mm_slots[0]
            self.scan_address = 0
        mm = self.scan_mm
        progress = 0
        finished_mm = True           # the kernel's "vma == NULL" after for_each_vma
        if ops.mm_exiting(mm):
            progress += 1
        else:
            for vma in sorted(ops.vmas(mm), key=lambda v: v.start):
                if vma.end <= self.scan_address:
                    continue
                if ops.mm_exiting(mm):
                    progress += 1
                    break
                if not collapse_possible(ops, mm, vma, TVA_KHUGEPAGED):
                    progress += 1
                    continue
                hstart = (vma.start + HPAGE_PMD_SIZE - 1) & HPAGE_PMD_MASK
                hend = vma.end & HPAGE_PMD_MASK
                if self.scan_address > hend:
                    progress += 1
                    continue
                self.scan_address = max(self.scan_address, hstart)
                stop = False
                while self.scan_address < hend:
                    cc.progress = 0
                    scanned_table = ops.pmd_kind(mm, self.scan_address) == "table"
                    result = collapse_scan_pmd(ops, mm, vma, self.scan_address, cc)
                    self.results[result] += 1
                    if result is S.SCAN_SUCCEED:
                        self.pages_collapsed += 1
                    self.scan_address += HPAGE_PMD_SIZE
                    progress += cc.progress
                    # A collapse attempt dropped mmap_lock: leave the mm for now.
                    if scanned_table and cc.collapse_attempted:
                        return progress, result
                    if progress >= pages:
                        stop = True
                        break
                if stop:
                    finished_mm = False
                    break
        if ops.mm_exiting(mm) or finished_mm:
            self._advance_cursor(mm)
            if ops.mm_exiting(mm):
                self.mm_slots.remove(mm)          # collect_mm_slot()
        return progress, result

    # ------------------------------------------------------------ reporting
    def stats(self) -> dict:
        """Counters under the sysfs names plus results by SCAN code."""
        return {
            "pages_collapsed": self.pages_collapsed,
            "full_scans": self.full_scans,
            "passes": self.passes,
            "alloc_sleeps": self.alloc_sleeps,
            "busy_ns": self.busy_ns,
            "results": {r.name: n for r, n in sorted(self.results.items(),
                                                     key=lambda kv: kv[0].name)},
            "algo": self.cc.algo,
            "knobs": dict(vars(self.knobs)),
        }


def attach_khugepaged(kernel: Any, preset: str = "default", algo: str = "v19",
                      tracer: Tracer | None = None) -> Any:
    """Bind khugepaged, MADV_COLLAPSE and swap to an emu.kernel.kernel.Kernel.

    Returns the binding (emu.kernel.collapse_kernel.KernelCollapse): the machine calls
    its ``tick(now_ns)``; ``report()`` gives the results for text/JSON output.
    """
    from emu.kernel.collapse_kernel import bind_collapse
    return bind_collapse(kernel, KhugepagedKnobs.preset(preset), algo=algo, tracer=tracer)
