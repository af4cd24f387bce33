"""The anonymous cases of tools/testing/selftests/mm/khugepaged.c, as model scenarios.

Each ``case_*`` builds the state the selftest builds (same BASE_ADDR, same faults,
same madvise calls, same knob values; kernel-mthp.md §7) on a :class:`Scenario` —
the Kernel emu runs, with its Hardware — and runs the collapse in one of the two
contexts:

* ``khugepaged``: MADV_HUGEPAGE, then poll every 0.5 s of simulated time, six
  times, until the area is huge or ``full_scans`` has grown by 2;
* ``madvise``: global THP ``never``, MADV_HUGEPAGE, MADV_COLLAPSE (retried once on
  EAGAIN).

They return :class:`Outcome` facts; the tests compare them with the upstream
expectations.  The harness is our own rewrite, not the selftest's code.
"""

import errno
from dataclasses import dataclass, field

from scenario import HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, Proc, Scenario

from emu.kernel.config import ThpConfig, order_to_kb

BASE_ADDR = 1 << 30
TICK_NS = 500_000_000
POLLS = 6
COMPOUND_MIB = 2560     # memory for case_collapse_compound_extreme
CONTEXTS = ("khugepaged", "madvise")


@dataclass
class Outcome:
    """What a collapse context observed."""

    huge: int                     # PMD-mapped THPs in the area afterwards
    ret: int | None = None        # MADV_COLLAPSE return value (madvise context)
    timed_out: bool = False       # khugepaged context: no collapse seen within 3 s
    lost: list[int] = field(default_factory=list)   # validate_memory() failures
    sizes: dict = field(default_factory=dict)       # mapping sizes (order -> count)


def selftest_kernel(algo: str = "v19", mthp: dict[int, str] | None = None,
                    arch: str = "x86_64", mib: int = 256, **knobs: int) -> Scenario:
    """The selftest's pushed settings: thp madvise, PMD inherit, use_zero_page 0."""
    thp = ThpConfig(enabled="madvise", use_zero_page=False,
                    hugepages={order_to_kb(o): m for o, m in (mthp or {}).items()})
    sim = Scenario(arch, algo, thp, preset="selftest", mib=mib)
    for name, value in knobs.items():
        sim.knobs.set(name, value)
    return sim


class Run:
    """One selftest process with a simulated clock."""

    def __init__(self, sim: Scenario, proc: Proc | None = None) -> None:
        self.sim = sim
        self.p = proc or sim.new_proc()
        self.now = 0

    @property
    def mm(self):
        return self.sim.mm(self.p)

    def alloc_mapping(self, nr: int = 1) -> int:
        return self.sim.mmap(self.p, BASE_ADDR, nr * HPAGE_PMD_SIZE, now_ns=self.now)

    def fault(self, start: int, end: int) -> None:
        self.sim.fault_range(self.p, start, (end - start) // PAGE_SIZE)

    def madvise(self, start: int, length: int, advice: str) -> int:
        return self.sim.madvise(self.p, start, length, advice, self.now)

    def alloc_hpage(self) -> int:
        """alloc_hpage(): fault a whole PMD, MADV_COLLAPSE it, then MADV_HUGEPAGE."""
        p = self.alloc_mapping(1)
        self.fault(p, p + HPAGE_PMD_SIZE)
        ret = self.madvise(p, HPAGE_PMD_SIZE, "MADV_COLLAPSE")
        if ret or self.huge(p, 1) != 1:
            raise AssertionError(f"alloc_hpage failed: {ret}")
        self.madvise(p, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
        return p

    def huge(self, p: int, nr: int) -> int:
        return self.sim.nr_pmd_mapped(self.p, p, p + nr * HPAGE_PMD_SIZE)

    def collapse(self, ctx: str, p: int, nr: int, expect: bool) -> Outcome:
        if ctx == "khugepaged":
            return self._khugepaged(p, nr, expect)
        return self._madvise(p, nr)

    def _khugepaged(self, p: int, nr: int, expect: bool) -> Outcome:
        for change in self.sim.before_khugepaged:    # settings a variant changes now
            change()
        self.madvise(p, nr * HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
        khugepaged = self.sim.khugepaged
        target = khugepaged.full_scans + 2
        timed_out = True
        for _ in range(POLLS):
            if self.huge(p, nr) == nr or khugepaged.full_scans >= target:
                timed_out = False
                break
            self.now += TICK_NS
            self.sim.tick(self.now)
        return self._outcome(p, nr, timed_out=timed_out)

    def _madvise(self, p: int, nr: int) -> Outcome:
        saved = self.sim.thp.enabled
        self.sim.thp.enabled = "never"
        self.madvise(p, nr * HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
        ret = self.madvise(p, nr * HPAGE_PMD_SIZE, "MADV_COLLAPSE")
        if ret == -errno.EAGAIN:
            ret = self.madvise(p, nr * HPAGE_PMD_SIZE, "MADV_COLLAPSE")
        self.sim.thp.enabled = saved
        return self._outcome(p, nr, ret=ret)

    def _outcome(self, p: int, nr: int, **kw) -> Outcome:
        return Outcome(huge=self.huge(p, nr), lost=self.sim.validate(self.p),
                       sizes=dict(self.sim.mapping_sizes(self.p, p, p + nr * HPAGE_PMD_SIZE)),
                       **kw)


def passed(ctx: str, out: Outcome, nr: int, expect: bool) -> bool:
    """The selftest's verdict for one collapse call."""
    if out.lost:
        return False
    if ctx == "khugepaged":
        if out.timed_out:
            return not expect
        return out.huge == (nr if expect else 0)
    return (out.ret == 0) == expect and out.huge == (nr if expect else 0)


# ---------------------------------------------------------------- the cases (§7.2)

def case_alloc_at_fault(sim: Scenario) -> tuple[int, int]:
    """#0: thp=always, one write at the PMD start; then MADV_DONTNEED of the first page."""
    sim.thp.enabled = "always"
    r = Run(sim)
    p = r.alloc_mapping(1)
    sim.write(r.p, p)
    before = r.huge(p, 1)
    r.madvise(p, PAGE_SIZE, "MADV_DONTNEED")
    return before, r.huge(p, 1)


def case_collapse_full(sim: Scenario, ctx: str) -> Outcome:
    r = Run(sim)
    p = r.alloc_mapping(4)
    r.fault(p, p + 4 * HPAGE_PMD_SIZE)
    return r.collapse(ctx, p, 4, True)


def case_collapse_empty(sim: Scenario, ctx: str) -> Outcome:
    r = Run(sim)
    p = r.alloc_mapping(1)
    return r.collapse(ctx, p, 1, False)


def case_collapse_single_pte_entry(sim: Scenario, ctx: str) -> Outcome:
    r = Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + PAGE_SIZE)
    return r.collapse(ctx, p, 1, True)


def case_collapse_max_ptes_none(sim: Scenario, ctx: str,
                                fault_nr_pages: int = 1) -> list[Outcome]:
    """#4: phase A with max_ptes_none+fault_nr_pages none PTEs; phase B (khugepaged
    only) on a fresh area with exactly max_ptes_none none PTEs."""
    sim.knobs.set("max_ptes_none", HPAGE_PMD_NR // 2)
    max_none = sim.knobs.max_ptes_none
    r = Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + (HPAGE_PMD_NR - max_none - fault_nr_pages) * PAGE_SIZE)
    outs = [r.collapse(ctx, p, 1, ctx != "khugepaged")]
    if ctx == "khugepaged":
        sim.exit(r.p)
        r = Run(sim)
        r.now = sim.khugepaged.cc.now_ns
        p = r.alloc_mapping(1)
        r.fault(p, p + (HPAGE_PMD_NR - max_none) * PAGE_SIZE)
        outs.append(r.collapse(ctx, p, 1, True))
    return outs


def case_collapse_swapin_single_pte(sim: Scenario, ctx: str) -> Outcome:
    r = Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + HPAGE_PMD_SIZE)
    r.madvise(p, PAGE_SIZE, "MADV_PAGEOUT")
    return r.collapse(ctx, p, 1, True)


def case_collapse_max_ptes_swap(sim: Scenario, ctx: str) -> list[Outcome]:
    max_swap = sim.knobs.max_ptes_swap
    r = Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + HPAGE_PMD_SIZE)
    r.madvise(p, (max_swap + 1) * PAGE_SIZE, "MADV_PAGEOUT")
    outs = [r.collapse(ctx, p, 1, ctx != "khugepaged")]
    if ctx == "khugepaged":
        r.fault(p, p + HPAGE_PMD_SIZE)
        r.madvise(p, max_swap * PAGE_SIZE, "MADV_PAGEOUT")
        outs.append(r.collapse(ctx, p, 1, True))
    return outs


def case_collapse_single_pte_entry_compound(sim: Scenario, ctx: str) -> Outcome:
    r = Run(sim)
    p = r.alloc_hpage()
    r.madvise(p, HPAGE_PMD_SIZE, "MADV_NOHUGEPAGE")
    r.madvise(p + PAGE_SIZE, HPAGE_PMD_SIZE - PAGE_SIZE, "MADV_DONTNEED")
    return r.collapse(ctx, p, 1, True)


def case_collapse_full_of_compound(sim: Scenario, ctx: str) -> Outcome:
    r = Run(sim)
    p = r.alloc_hpage()
    r.madvise(p, PAGE_SIZE, "MADV_NOHUGEPAGE")       # VMA split -> PMD split
    r.madvise(p, HPAGE_PMD_SIZE, "MADV_NOHUGEPAGE")  # merge again
    return r.collapse(ctx, p, 1, True)


def case_collapse_compound_extreme(sim: Scenario, ctx: str) -> Outcome:
    """#9: every PTE maps one page of a different PMD-order folio.

    As the selftest builds it: 512 rounds of "fault a PMD THP at a scratch address,
    mremap its i-th page to page i of the area, unmap the rest of the scratch".
    Every source THP stays allocated with one page mapped: it needs COMPOUND_MIB.
    """
    r = Run(sim)
    p = r.alloc_mapping(1)
    r.madvise(p, HPAGE_PMD_SIZE, "MADV_NOHUGEPAGE")
    scratch = BASE_ADDR + 4 * HPAGE_PMD_SIZE
    enabled = sim.thp.enabled
    sim.thp.enabled = "always"
    for i in range(HPAGE_PMD_NR):
        sim.mmap(r.p, scratch, HPAGE_PMD_SIZE, r.now)
        sim.write(r.p, scratch + i * PAGE_SIZE)       # a PMD THP at fault
        assert sim.nr_pmd_mapped(r.p, scratch, scratch + HPAGE_PMD_SIZE) == 1
        sim.madvise(r.p, scratch, HPAGE_PMD_SIZE, "MADV_NOHUGEPAGE", r.now)
        sim.mremap(r.p, scratch + i * PAGE_SIZE, PAGE_SIZE, p + i * PAGE_SIZE, PAGE_SIZE)
        sim.munmap(r.p, scratch, HPAGE_PMD_SIZE)
    sim.thp.enabled = enabled
    return r.collapse(ctx, p, 1, True)


def case_collapse_fork(sim: Scenario, ctx: str) -> tuple[Outcome, int]:
    """#10: returns the child's outcome and the parent's huge count afterwards."""
    parent = Run(sim)
    p = parent.alloc_mapping(1)
    parent.fault(p, p + PAGE_SIZE)
    child = Run(sim, sim.fork(parent.p))
    child.now = parent.now
    child.fault(p + PAGE_SIZE, p + 2 * PAGE_SIZE)
    out = child.collapse(ctx, p, 1, True)
    sim.exit(child.p)
    return out, parent.huge(p, 1)


def case_collapse_fork_compound(sim: Scenario, ctx: str) -> tuple[Outcome, int]:
    parent = Run(sim)
    p = parent.alloc_hpage()
    child = Run(sim, sim.fork(parent.p))
    child.madvise(p, PAGE_SIZE, "MADV_NOHUGEPAGE")
    child.madvise(p, HPAGE_PMD_SIZE, "MADV_NOHUGEPAGE")
    child.fault(p, p + PAGE_SIZE)
    sim.knobs.set("max_ptes_shared", HPAGE_PMD_NR - 1)
    out = child.collapse(ctx, p, 1, True)
    sim.exit(child.p)
    return out, parent.huge(p, 1)


def case_collapse_max_ptes_shared(sim: Scenario, ctx: str) -> tuple[list[Outcome], int]:
    max_shared = sim.knobs.max_ptes_shared
    parent = Run(sim)
    p = parent.alloc_hpage()
    child = Run(sim, sim.fork(parent.p))
    child.fault(p, p + (HPAGE_PMD_NR - max_shared - 1) * PAGE_SIZE)
    outs = [child.collapse(ctx, p, 1, ctx != "khugepaged")]
    if ctx == "khugepaged":
        child.fault(p, p + (HPAGE_PMD_NR - max_shared) * PAGE_SIZE)
        outs.append(child.collapse(ctx, p, 1, True))
    sim.exit(child.p)
    return outs, parent.huge(p, 1)


def case_madvise_collapse_existing_thps(sim: Scenario) -> list[Outcome]:
    r = Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + HPAGE_PMD_SIZE)
    return [r.collapse("madvise", p, 1, True), r.collapse("madvise", p, 1, True)]
