"""A collapse as running CPUs see it: steps that change the tables the hardware walks.

Each test stops khugepaged between two steps (Khugepaged.step_once) and looks at
the real page tables and TLBs: the cleared PMD (``pmd``, upstream), the cleared
target PTEs (``pte``), the missing flush (``unsafe-noflush``), the rollback.
"""

import numpy as np
import pytest
from scenario import ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, Scenario

from emu.kernel.config import ThpConfig, order_to_kb

B = 1 << 30
ARCH = pytest.mark.parametrize("arch", ARCHS)


def _setup(arch, strategy, order, fail_at=None):
    """One process with a PMD range written at 4 KiB, then the size of ``order`` on."""
    # the invariant checker stops unsafe-noflush at its first stale TLB entry
    sim = Scenario(arch, thp=ThpConfig(enabled="never", use_zero_page=False),
                   preset="fast", check=strategy != "unsafe-noflush")
    sim.khugepaged.cc.strategy = strategy
    sim.khugepaged.cc.fail_at = fail_at
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, HPAGE_PMD_NR)
    if order == 9:
        sim.kernel.thp_sysfs_store(enabled="always")
    else:
        sim.kernel.thp_sysfs_store(hugepages={order_to_kb(order): "always"})
    sim.register(p)
    return sim, p


def _until_cleared(sim, p):
    """Run khugepaged step by step until a collapse has cleared its range."""
    mm = sim.mm(p)
    for _ in range(10_000):
        if mm.collapse_cleared is not None:
            return mm.collapse_cleared
        assert sim.khugepaged.step_once(), "khugepaged went to sleep before a collapse"
    raise AssertionError("no collapse cleared anything")


def _walk_cold(sim, p, va, kind=0):
    """What a CPU with an empty TLB reaches (a frame, or None on a fault)."""
    mm = sim.mm(p)
    cpu = (p.cpu + 1) % 4
    sim.hw.flush_all()
    return sim.hw.access(cpu, mm.asid, mm.pgd_pfn, va, kind)


@ARCH
@pytest.mark.parametrize("order", [9, 4])
def test_pmd_strategy_clears_the_pmd_that_walkers_meet(arch, order):
    """pmdp_collapse_flush (mm/khugepaged.c collapse_huge_page): the whole PMD is
    cleared and flushed, for an mTHP target too; a walk meets it and faults."""
    sim, p = _setup(arch, "pmd", order)
    lo, hi = _until_cleared(sim, p)
    assert (lo, hi) == (B, B + HPAGE_PMD_SIZE)
    assert sim.kernel.pt.get_pmd(sim.mm(p), B) == 0
    assert sim.mm(p).mmap_lock == "write"
    # The process's own CPU was flushed too: its next access walks and faults.
    mm = sim.mm(p)
    assert sim.hw.access(p.cpu, mm.asid, mm.pgd_pfn, B + 5 * PAGE_SIZE, 0) is None
    assert sim.hw.fault.reason == "not-present"
    sim.khugepaged.finish_pass()
    assert sim.mm(p).mmap_lock is None and sim.mm(p).collapse_cleared is None
    assert _walk_cold(sim, p, B + 5 * PAGE_SIZE) is not None
    assert not sim.validate(p)


@ARCH
def test_pte_strategy_clears_only_the_target_ptes(arch):
    """The alternative of the v5 review thread: only the 64K target's PTEs are cleared
    (get-and-clear in the attached table) and flushed; the rest of the PMD stays
    mapped and walkable."""
    sim, p = _setup(arch, "pte", 4)
    lo, hi = _until_cleared(sim, p)
    assert (lo, hi) == (B, B + 16 * PAGE_SIZE)
    mm = sim.mm(p)
    assert sim.kernel.pt.get_pmd(mm, B) != 0
    assert all(sim.kernel.pt.get_pte(mm, B + j * PAGE_SIZE) == 0 for j in range(16))
    assert _walk_cold(sim, p, B + 16 * PAGE_SIZE) is not None       # outside: mapped
    assert _walk_cold(sim, p, B + 3 * PAGE_SIZE) is None            # inside: cleared
    sim.khugepaged.finish_pass()
    assert sim.mapping_sizes(p, B, B + HPAGE_PMD_SIZE)[4] == 32
    assert not sim.validate(p)


def _layout(sim, p):
    """Every page's frame offset in its folio and the folio's order (pfns aside)."""
    out = []
    for j in range(HPAGE_PMD_NR):
        f = sim.folio_at(p, B + j * PAGE_SIZE)
        d = sim.kernel.pt.get_pte(sim.mm(p), B + j * PAGE_SIZE)
        out.append((f.order, sim.arch.pfn(d) - f.pfn))
    return out


@ARCH
def test_pmd_and_pte_end_with_the_same_mappings(arch):
    layouts = []
    for strategy in ("pmd", "pte"):
        sim, p = _setup(arch, strategy, 4)
        sim.tick(0)
        assert not sim.validate(p)
        layouts.append(_layout(sim, p))
    assert layouts[0] == layouts[1]
    assert {o for o, _ in layouts[0]} == {4}


@ARCH
@pytest.mark.parametrize("strategy", ["pmd", "pte"])
@pytest.mark.parametrize("fail_at", ["isolate", "copy"])
def test_a_failure_rolls_back_to_identical_tables(arch, strategy, fail_at):
    """__collapse_huge_page_isolate() failing, or the copy (copy_mc): every entry is
    as it was (the detached table comes back, or each cleared PTE is restored)."""
    sim, p = _setup(arch, strategy, 4, fail_at=fail_at)
    before = sim.ptes(p, B).copy()
    pmd_before = sim.kernel.pt.get_pmd(sim.mm(p), B)
    _until_cleared(sim, p)
    sim.khugepaged.finish_pass()
    assert sim.kernel.pt.get_pmd(sim.mm(p), B) == pmd_before
    assert np.array_equal(sim.ptes(p, B), before)
    assert sim.mapping_sizes(p, B, B + HPAGE_PMD_SIZE) == {0: HPAGE_PMD_NR}
    steps = [e.args["attempt"].steps[-1][0] for e in sim.bus.named("mm_collapse_huge_page")]
    assert steps and set(steps) == {"rollback"}
    assert not sim.validate(p)


@ARCH
def test_unsafe_noflush_lets_a_stale_tlb_entry_lose_a_write(arch):
    """Without the flush, the process's CPU keeps its translation into the old page:
    a write there after the copy never reaches the new folio (the oracle's case)."""
    sim, p = _setup(arch, "unsafe-noflush", 4)
    sim.read(p, B + 2 * PAGE_SIZE)                # the translation is in the TLB
    _until_cleared(sim, p)
    mm = sim.mm(p)
    done = []
    sim.bus.subscribe("emu_collapse_step", lambda e: done.append(e.args["step"]))
    while "copy" not in done:
        assert sim.khugepaged.step_once()
    sim.write(p, B + 2 * PAGE_SIZE)               # a TLB hit: the old frame
    sim.khugepaged.finish_pass()
    assert sim.validate(p) == [(B + 2 * PAGE_SIZE) >> 12]
    assert sim.hw.access(p.cpu, mm.asid, mm.pgd_pfn, B + 2 * PAGE_SIZE, 0) is not None

