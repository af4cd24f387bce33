"""khugepaged: its own thread of execution on its own CPU, in simulated time.

The machine calls :meth:`Khugepaged.tick` with the simulated time; the thread wakes
every ``scan_sleep_millisecs``, runs one pass (khugepaged_do_scan) that scans until
``pages_to_scan`` of progress, and goes back to sleep.  mms are visited round robin
from a list of slots (khugepaged_scan.mm_head) with a cursor (mm_slot, address)
that survives between passes, as in mm/khugepaged.c.  A pass runs to completion at
the time it starts; its own duration (the costed steps) moves the thread's clock,
which decides when it next wakes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from emu.arch import PMD_SIZE
from emu.kernel.huge_memory import TVA_KHUGEPAGED, hugepage_enabled
from emu.kernel.khugepaged.collapse import (
    COLLAPSE_STRATEGIES,
    CollapseControl,
    Steps,
    collapse_possible,
)
from emu.kernel.khugepaged.knobs import CollapseCosts, KhugepagedKnobs
from emu.kernel.khugepaged.pte_info import pmd_kind
from emu.kernel.khugepaged.results import ScanResult
from emu.kernel.khugepaged.scan import collapse_scan_pmd
from emu.kernel.vma import VMA

S = ScanResult
NS_PER_MS = 1_000_000
PMD_MASK = ~(PMD_SIZE - 1)

COLLAPSE_ALGOS = ("v19", "v5")


class Khugepaged:
    """The khugepaged kthread of one Kernel, with its mm list, cursor and counters."""

    def __init__(self, kernel: Any, knobs: KhugepagedKnobs, algo: str = "v19",
                 strategy: str = "pmd") -> None:
        if algo not in COLLAPSE_ALGOS:
            raise ValueError(f"collapse algo must be one of {COLLAPSE_ALGOS}")
        if strategy not in COLLAPSE_STRATEGIES:
            raise ValueError(f"collapse strategy must be one of {COLLAPSE_STRATEGIES}")
        self.k = kernel
        self.knobs = knobs
        self.costs = CollapseCosts.load()
        self.cc = CollapseControl(is_khugepaged=True, knobs=knobs, bus=kernel.bus,
                                  costs=self.costs, algo=algo, strategy=strategy)
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
        self.now_ns = 0                        # the simulated time the machine last gave
        self.mms_registered = 0                # __khugepaged_enter() calls that added an mm
        self._pass: Steps | None = None        # the pass in progress, as steps
        self._pass_start = 0
        self._resume_ns = 0                    # when the pass's next step begins
        # khugepaged_thread exists: started at boot (hugepage_init) and by sysfs stores
        # (start_stop_khugepaged) when some THP size is enabled.
        self.running = hugepage_enabled(kernel.config)

    # ------------------------------------------------------------ registration
    def khugepaged_enter_vma(self, mm: Any, vma: VMA, now_ns: int | None = None) -> bool:
        """khugepaged_enter_vma(): register mm if this VMA could be collapsed now.

        The kernel calls it from hugepage_madvise() (MADV_HUGEPAGE), a VMA merge or
        expansion (mmap, brk, mprotect), a PMD-order anonymous fault and, for a new
        mapping, __mmap_new_vma(); it needs hugepage_enabled() and collapse_possible(),
        which needs an anon_vma (thp_vma_allowable_orders()), so a VMA never written
        registers nothing.  An mm already registered (MMF_VM_HUGEPAGE) returns at once.
        """
        if mm in self.mm_slots or mm.exited:
            return False
        if not hugepage_enabled(self.k.config):
            return False
        if not collapse_possible(self.k, mm, vma, TVA_KHUGEPAGED):
            return False
        return self._enter(mm, self.now_ns if now_ns is None else now_ns)

    def enter(self, mm: Any, now_ns: int | None = None) -> None:
        """khugepaged_enter_vma() for every VMA of mm, until one registers it."""
        for v in mm.vmas:
            if self.khugepaged_enter_vma(mm, v, now_ns):
                break

    def _enter(self, mm: Any, now_ns: int) -> bool:
        """__khugepaged_enter(): add at the tail; wake a running thread that waited for
        work (the list was empty)."""
        if mm in self.mm_slots:
            return False
        wakeup = not self.mm_slots
        self.mm_slots.append(mm)
        self.mms_registered += 1
        if wakeup and self.running and (self.next_wake_ns is None
                                        or self.next_wake_ns > now_ns):
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

    def start_stop(self, now_ns: int | None = None) -> None:
        """start_stop_khugepaged(), after a THP sysfs store: start the thread if some
        size is enabled (a new thread scans at once when it has mms), stop it if none
        is.  A running thread in its timed sleep keeps sleeping (the wake-up does not
        end it: khugepaged_should_wakeup() waits for the sleep to expire)."""
        t = self.now_ns if now_ns is None else now_ns
        if hugepage_enabled(self.k.config):
            if not self.running:
                self.running = True
                self.next_wake_ns = t if self.mm_slots else None
        else:
            self.running = False
            self.next_wake_ns = None

    def set_knob(self, name: str, value: int, now_ns: int = 0) -> None:
        """Write a sysfs knob; writing the sleep times wakes the thread, as in the kernel."""
        self.knobs.set(name, value)
        if (name in ("scan_sleep_millisecs", "alloc_sleep_millisecs") and self.mm_slots
                and self.running):
            self.next_wake_ns = now_ns

    # ------------------------------------------------------------ the thread
    def tick(self, now_ns: int) -> int:
        """Run the thread up to now_ns: every step due by then, passes started and
        finished included; returns the number of passes finished."""
        ran = 0
        while True:
            if self._pass is None:
                if self.next_wake_ns is None or self.next_wake_ns > now_ns:
                    break
                if not self._has_work():
                    self.next_wake_ns = None
                    break
                self._start_pass()
            if self._resume_ns > now_ns:
                break
            if self._step():
                ran += 1
        return ran

    def _has_work(self) -> bool:
        """The thread runs, some size is enabled, and it has mms to scan."""
        return self.running and hugepage_enabled(self.k.config) and bool(self.mm_slots)

    def _start_pass(self) -> None:
        """A pass begins at the wake-up time (khugepaged_do_scan, as steps)."""
        self._pass_start = self._resume_ns = self.next_wake_ns
        self.cc.now_ns = self._pass_start
        self._pass = self.khugepaged_do_scan()

    def _step(self) -> bool:
        """Run the pass's next step; True when that finished the pass."""
        try:
            self._resume_ns = next(self._pass)
            return False
        except StopIteration:
            pass
        self._pass = None
        start = self._pass_start
        self.cc.now_ns = max(self.cc.now_ns, start + self.cc.costs.scan_pmd_ns)
        self.busy_ns += self.cc.now_ns - start
        self.passes += 1
        # khugepaged_wait_work(): sleep scan_sleep_millisecs, or until there is work.
        self.next_wake_ns = (self.cc.now_ns + self.knobs.scan_sleep_millisecs * NS_PER_MS
                             if self.mm_slots else None)
        return True

    @property
    def next_step_ns(self) -> int | None:
        """When the thread next does something: its next step, or its next wake-up."""
        return self._resume_ns if self._pass is not None else self.next_wake_ns

    def step_once(self) -> bool:
        """Run one step, starting the next pass if none is in progress (tests and
        debugging: watch the page tables between the steps); False if asleep."""
        if self._pass is None:
            if self.next_wake_ns is None or not self._has_work():
                return False
            self._start_pass()
        saved, self.k.current_cpu = self.k.current_cpu, None
        try:
            self._step()
        finally:
            self.k.current_cpu = saved
        return True

    def finish_pass(self) -> int:
        """Run the pass in progress to its end, whatever its steps' times (a caller
        with nothing else running in between); 1 if a pass finished."""
        while self._pass is not None:
            if self._step():
                return 1
        return 0

    def run_until_unlocked(self, mm: Any,
                           before_step: Callable[[int], None] | None = None) -> int:
        """Run the steps that hold mm's mmap_lock, whatever their time (someone waits
        for the lock); returns the simulated time it is released.  ``before_step(t)``
        lets the machine's other actors run up to each step's time first."""
        saved, self.k.current_cpu = self.k.current_cpu, None
        try:
            while mm.mmap_lock is not None and self._pass is not None:
                if before_step is not None:
                    before_step(self._resume_ns)
                    if mm.mmap_lock is None or self._pass is None:
                        break
                self._step()
        finally:
            self.k.current_cpu = saved
        return self.cc.now_ns

    def khugepaged_do_scan(self) -> Steps:
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
                got, result = yield from self.collapse_scan_mm_slot(pages - progress, result)
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

    def collapse_scan_mm_slot(self, pages: int, result: ScanResult) -> Any:
        """Scan the cursor's mm from the cursor's address; (progress, last result).

        A generator of steps: each PMD range's scan is one, with mmap_lock read-held
        around it (dropped for a collapse attempt, which takes its own)."""
        k, cc = self.k, self.cc
        if self.scan_mm is None:
            self.scan_mm = self.mm_slots[0]
            self.scan_address = 0
        mm = self.scan_mm
        progress = 0
        finished_mm = True           # the kernel's "vma == NULL" after for_each_vma
        if mm.exited:
            progress += 1
        else:
            for vma in mm.vmas:
                if vma.end <= self.scan_address:
                    continue
                if mm.exited:
                    progress += 1
                    break
                if not collapse_possible(k, mm, vma, TVA_KHUGEPAGED):
                    progress += 1
                    continue
                hstart = (vma.start + PMD_SIZE - 1) & PMD_MASK
                hend = vma.end & PMD_MASK
                if self.scan_address > hend:
                    progress += 1
                    continue
                self.scan_address = max(self.scan_address, hstart)
                stop = False
                while self.scan_address < hend:
                    mm.mmap_lock = "read"             # held across the scan of the mm
                    cc.progress = 0
                    scanned_table = pmd_kind(k, mm, self.scan_address) == "table"
                    result = yield from collapse_scan_pmd(k, mm, vma, self.scan_address, cc)
                    self.results[result] += 1
                    if result is S.SCAN_SUCCEED:
                        self.pages_collapsed += 1
                    self.scan_address += PMD_SIZE
                    progress += cc.progress
                    # A collapse attempt dropped mmap_lock: leave the mm for now.
                    if scanned_table and cc.collapse_attempted:
                        mm.mmap_lock = None
                        return progress, result
                    if progress >= pages:
                        stop = True
                        break
                if stop:
                    finished_mm = False
                    break
        mm.mmap_lock = None
        if mm.exited or finished_mm:
            self._advance_cursor(mm)
            if mm.exited:
                self.mm_slots.remove(mm)          # collect_mm_slot()
        return progress, result

    # ------------------------------------------------------------ the machine's clock
    def run(self, now_ns: float) -> int:
        """Run the thread up to now_ns on its own CPU (its flushes come from no vCPU)."""
        now_ns = int(now_ns)
        self.now_ns = now_ns
        nxt = self.next_step_ns
        if nxt is None or nxt > now_ns:
            return 0
        saved, self.k.current_cpu = self.k.current_cpu, None
        try:
            return self.tick(now_ns)
        finally:
            self.k.current_cpu = saved

    # ------------------------------------------------------------ reporting
    def why_idle(self, end_ns: float) -> str | None:
        """Why a thread that was asked for ran no pass by end_ns, in one line (None: it ran)."""
        if self.passes:
            return None
        if not hugepage_enabled(self.k.config):
            return ("THP disabled: enabled=never and no hugepages-<size>kB/enabled is always or"
                    " madvise, so hugepage_enabled() is false and the thread sleeps")
        if self.next_wake_ns is not None:
            return (f"no time: the run ended at {end_ns / 1e6:.3f} ms of simulated time, before"
                    f" the first wake at {self.next_wake_ns / 1e6:.3f} ms")
        if not self.mms_registered:
            return ("nothing registered: khugepaged_enter_vma() never added an mm (it runs at"
                    " MADV_HUGEPAGE, at VMA merges, at a PMD-order fault and at fork, for a"
                    " VMA with an anon_vma that some enabled size allows; a THP setting"
                    " changed alone registers nothing)")
        return "its mms exited before it woke"

    def stats(self) -> dict:
        """Counters under the sysfs names plus results by SCAN code."""
        return {
            "pages_collapsed": self.pages_collapsed,
            "full_scans": self.full_scans,
            "passes": self.passes,
            "alloc_sleeps": self.alloc_sleeps,
            "busy_ns": self.busy_ns,
            "next_wake_ns": self.next_wake_ns,
            "mms_registered": self.mms_registered,
            "results": {r.name: n for r, n in sorted(self.results.items(),
                                                     key=lambda kv: kv[0].name)},
            "algo": self.cc.algo,
            "knobs": dict(vars(self.knobs)),
        }
