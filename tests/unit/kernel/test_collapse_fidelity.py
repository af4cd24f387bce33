"""Kernel details of the scan, isolate and eligibility, each after the mm-tree function
named in its test (issue 11 items 1, 3, 4, 5), on Kernel + Hardware through the
scenario harness, both architectures and both collapse algorithms."""

import errno

import numpy as np
import pytest
from scenario import ALGOS, ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, UAPI, Scenario

from emu.bus import EventBus
from emu.kernel.config import ThpConfig
from emu.kernel.khugepaged.collapse import CollapseControl, collapse_huge_page_isolate
from emu.kernel.khugepaged.knobs import CollapseCosts, KhugepagedKnobs
from emu.kernel.khugepaged.pte_info import PTE_INFO, PTE_NONPRESENT, PTE_PRESENT, PTE_SWAP
from emu.kernel.khugepaged.results import ScanResult
from emu.kernel.khugepaged.scan import scan_ptes
from emu.kernel.vma import VM_DROPPABLE, VM_READ, VM_WRITE, VMA

S = ScanResult
B = 1 << 30
QUARTER = HPAGE_PMD_NR // 4


@pytest.fixture(params=[(a, g) for a in ARCHS for g in ALGOS], ids=lambda p: f"{p[0]}-{p[1]}")
def sim(request):
    arch, algo = request.param
    return Scenario(arch, algo, thp=ThpConfig(enabled="never", use_zero_page=False))


def _lazyfree_pmd(sim, droppable=False):
    """The host-observed pattern: write a whole PMD at 4 KiB, MADV_FREE its first half,
    write its first quarter again (dirty again; the second quarter stays clean)."""
    p = sim.new_proc()
    if droppable:                  # mmap(MAP_DROPPABLE): VM_DROPPABLE (mm/mmap.c, 6.11+)
        flags = UAPI["MAP_DROPPABLE"] | UAPI["MAP_ANONYMOUS"] | UAPI["MAP_FIXED"]
        sim.kernel.syscall(p.pid, p.cpu, "mmap",
                           (B, HPAGE_PMD_SIZE, 3, flags, (1 << 64) - 1, 0), B)
        assert sim.mm(p).vmas.find(B).flags & VM_DROPPABLE
    else:
        sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, HPAGE_PMD_NR)
    sim.madvise(p, B, HPAGE_PMD_SIZE // 2, "MADV_FREE")
    sim.fault_range(p, B, QUARTER)
    return p


# ------------------------------------------------------------ item 1: lazy-free folios

def test_madvise_collapse_takes_lazyfree_folios(sim):
    """mm/khugepaged.c collapse_scan_pmd()/__collapse_huge_page_isolate(): the lazy-free
    skip is for cc->is_khugepaged only, so MADV_COLLAPSE collapses (host 6.18: 0)."""
    p = _lazyfree_pmd(sim)
    assert sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_COLLAPSE") == 0
    assert sim.nr_pmd_mapped(p, B, B + HPAGE_PMD_SIZE) == 1
    assert not sim.validate(p)          # lazy-free data not reclaimed: copied as it was


def test_khugepaged_skips_a_clean_lazyfree_folio(sim):
    """mm/khugepaged.c collapse_scan_pmd(): khugepaged stops at the first lazy-free folio
    whose PTE is clean (page QUARTER: the re-written first quarter is dirty)."""
    p = _lazyfree_pmd(sim)
    sim.kernel.thp_sysfs_store(enabled="always")
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
    events = []
    sim.bus.subscribe("mm_khugepaged_scan_pmd", events.append)
    sim.tick(0)
    assert sim.khugepaged.results == {S.SCAN_PAGE_LAZYFREE: 1}
    assert events[0].args["none_or_zero"] == 0
    assert sim.nr_pmd_mapped(p, B, B + HPAGE_PMD_SIZE) == 0


def test_khugepaged_collapses_lazyfree_in_a_droppable_vma(sim):
    """mm/khugepaged.c: a VM_DROPPABLE VMA keeps the lazy-free property across the
    collapse, so khugepaged does not skip its folios."""
    p = _lazyfree_pmd(sim, droppable=True)
    sim.kernel.thp_sysfs_store(enabled="always")
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
    sim.tick(0)
    assert sim.khugepaged.results == {S.SCAN_SUCCEED: 1}
    assert sim.nr_pmd_mapped(p, B, B + HPAGE_PMD_SIZE) == 1
    assert not sim.validate(p)


def test_khugepaged_takes_lazyfree_folios_written_again(sim):
    """mm/khugepaged.c collapse_scan_pmd(): a lazy-free folio whose PTE is dirty again
    (written after MADV_FREE) is not skipped."""
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, HPAGE_PMD_NR)
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_FREE")
    sim.fault_range(p, B, HPAGE_PMD_NR)
    sim.kernel.thp_sysfs_store(enabled="always")
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
    sim.tick(0)
    assert sim.khugepaged.results == {S.SCAN_SUCCEED: 1}
    assert not sim.validate(p)


# ------------------------------------------------------------ item 3: swap pre-check

def _pmd_only_one_swap(sim, counts_swap):
    """PMD-only mode, max_ptes_none=0: 511 present PTEs and one swap PTE."""
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, HPAGE_PMD_NR)
    assert sim.kernel.madvise_pageout(sim.mm(p), B + 100 * PAGE_SIZE,
                                      B + 101 * PAGE_SIZE) == 1
    sim.knobs.set("max_ptes_none", 0)
    sim.khugepaged.cc.pmd_precheck_counts_swap = counts_swap
    sim.kernel.thp_sysfs_store(enabled="always")
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
    sim.tick(0)
    return p


def test_pmd_precheck_counts_swap_ptes(sim):
    """mthp_collapse() with "mm/khugepaged: fix PMD collapse swap PTE accounting"
    (linux-next after v19): 511 + 1 swap PTE pass the PMD pre-check at max_ptes_none=0,
    the swap-in brings the page back and the PMD collapses, as legacy PMD collapse did."""
    p = _pmd_only_one_swap(sim, counts_swap=True)
    assert sim.nr_pmd_mapped(p, B, B + HPAGE_PMD_SIZE) == 1
    assert sim.vmstat["pswpin"] == 1 and sim.vmstat["thp_collapse_alloc"] == 1
    assert not sim.validate(p)


def test_pmd_precheck_as_posted_v19_never_tries(sim):
    """mthp_collapse() as posted in v19 11/14: the swap PTE sets no bitmap bit, 511 <
    512 - 0, so collapse_huge_page() is never called (Lance Yang's report)."""
    p = _pmd_only_one_swap(sim, counts_swap=False)
    if sim.khugepaged.cc.algo == "v5":
        # v5 06/12 khugepaged_scan_bitmap(): is_pmd_only bypasses the threshold.
        assert sim.nr_pmd_mapped(p, B, B + HPAGE_PMD_SIZE) == 1
        return
    assert sim.nr_pmd_mapped(p, B, B + HPAGE_PMD_SIZE) == 0
    assert sim.vmstat["thp_collapse_alloc"] == 0 and sim.vmstat["pswpin"] == 0
    assert sim.khugepaged.results == {S.SCAN_FAIL: 1}


# ------------------------------------------------------------ item 4: eligibility

def test_madvise_collapse_refuses_a_vma_never_written(sim):
    """mm/khugepaged.c madvise_collapse(): thp_vma_allowable_order(TVA_FORCED_COLLAPSE)
    is 0 without an anon_vma (mm/huge_memory.c __thp_vma_allowable_orders()): -EINVAL
    up front, no PMD scanned."""
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    assert sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_COLLAPSE") == -errno.EINVAL
    assert sim.madvise_records[-1].pmds == []


def test_khugepaged_skips_vmas_never_written(sim):
    """mm/khugepaged.c collapse_scan_mm_slot(): collapse_possible() fails for a VMA
    without an anon_vma, so its PMDs are not scanned (one unit of progress each VMA)."""
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, HPAGE_PMD_NR)
    sim.mmap(p, 2 * B, 4 * HPAGE_PMD_SIZE)               # never written
    sim.kernel.thp_sysfs_store(enabled="always")
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
    sim.tick(0)
    assert sim.khugepaged.results == {S.SCAN_SUCCEED: 1}   # no SCAN_NO_PTE_TABLE


# ------------------------------------------------------------ item 5: non-present PTEs

def _ptes(n_nonpresent, kind=PTE_NONPRESENT):
    ptes = np.zeros(HPAGE_PMD_NR, dtype=PTE_INFO)
    ptes["kind"] = PTE_PRESENT
    ptes["folio"] = np.arange(HPAGE_PMD_NR)
    ptes["anon"] = ptes["lru"] = ptes["refcount_ok"] = ptes["young"] = True
    ptes["kind"][:n_nonpresent] = kind
    ptes["folio"][:n_nonpresent] = -1
    return ptes


@pytest.mark.parametrize("kind", [PTE_NONPRESENT, PTE_SWAP])
def test_scan_counts_non_present_entries_against_max_ptes_swap(kind):
    """mm/khugepaged.c collapse_scan_pmd(): !pte_present() entries, swap or not (a
    migration entry), count as unmapped against max_ptes_swap; the scan does not fail
    on them itself."""
    result, examined, counts = scan_ptes(_ptes(64, kind), 511, 64, 256, True)
    assert (result, examined, counts["unmapped"]) == (S.SCAN_SUCCEED, HPAGE_PMD_NR, 64)
    result, examined, _ = scan_ptes(_ptes(65, kind), 511, 64, 256, True)
    assert (result, examined) == (S.SCAN_EXCEED_SWAP_PTE, 65)


def test_isolate_fails_on_a_non_present_entry():
    """mm/khugepaged.c __collapse_huge_page_isolate(): a non-present entry left after
    the swap-in (not swap: nothing swapped it in) fails with SCAN_PTE_NON_PRESENT."""
    cc = CollapseControl(is_khugepaged=True, knobs=KhugepagedKnobs.preset(),
                         bus=EventBus(), costs=CollapseCosts.load())
    vma = VMA(B, B + HPAGE_PMD_SIZE, VM_READ | VM_WRITE, anon_vma=True)
    result, isolated = collapse_huge_page_isolate(None, None, vma, B, _ptes(1), cc, 9)
    assert (result, isolated) == (S.SCAN_PTE_NON_PRESENT, [])


# ------------------------------------------------------------ issue 16: re-attempts

def test_v19_reattempts_completed_64k_ranges_every_pass(sim):
    """mm/khugepaged.c mthp_collapse() (v19 11/14) and collapse_huge_page(): a PMD range
    already made of 32 x 64K mTHPs passes the bitmap pre-check again on every pass;
    each of the 32 attempts allocates a 64K folio, clears the PMD and flushes 2 MiB
    before isolate answers SCAN_PTE_MAPPED_HUGEPAGE (07/14).  v5 (08/12 + 09/12) stops
    its walk at the first such answer: one attempt per pass."""
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, HPAGE_PMD_NR)
    sim.kernel.thp_sysfs_store(hugepages={64: "always", 2048: "never"})
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
    kh = sim.khugepaged
    sim.tick(0)
    assert sim.mapping_sizes(p, B, B + HPAGE_PMD_SIZE) == {4: 32}
    per_pass = 32 if kh.cc.algo == "v19" else 1
    for n in (1, 2):
        allocs, flushes = sim.mthp(4, "collapse_alloc"), sim.vmstat["emu_collapse_flush"]
        for j in range(0, HPAGE_PMD_NR, 16):              # the guest keeps them young
            sim.read(p, B + j * PAGE_SIZE)
        sim.tick(kh.next_wake_ns)
        assert sim.mthp(4, "collapse_alloc") - allocs == per_pass
        assert sim.vmstat["emu_collapse_flush"] - flushes == per_pass
        assert kh.results[S.SCAN_FAIL] == n               # nothing new: SCAN_FAIL
    assert sim.mapping_sizes(p, B, B + HPAGE_PMD_SIZE) == {4: 32}
    assert not sim.validate(p)
