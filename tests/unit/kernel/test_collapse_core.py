"""The collapse core in isolation: limits, eligibility, the scan loop, the order walk,
rollback, MADV_COLLAPSE errno mapping, and swap refusal for mTHP."""

import errno

import numpy as np
import pytest
import selftest_cases as st
from hypothesis import given, settings
from hypothesis import strategies as hs
from scenario import ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, Scenario

from emu.bus import EventBus
from emu.kernel.config import ThpConfig
from emu.kernel.huge_memory import (
    BIT,
    THP_ORDERS_ALL_ANON,
    TVA_KHUGEPAGED,
    hugepage_enabled,
    thp_vma_allowable_orders,
)
from emu.kernel.khugepaged.collapse import CollapseControl, collapse_max_ptes_none, run_steps
from emu.kernel.khugepaged.knobs import CollapseCosts, KhugepagedKnobs
from emu.kernel.khugepaged.pte_info import (
    PTE_INFO,
    PTE_NONE,
    PTE_NONPRESENT,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
)
from emu.kernel.khugepaged.results import ScanResult
from emu.kernel.khugepaged.scan import max_order_from_offset, mthp_collapse, scan_ptes
from emu.kernel.vma import VM_HUGEPAGE, VM_NOHUGEPAGE, VM_READ, VM_WRITE, VMA

S = ScanResult
B = 1 << 30


RW = VM_READ | VM_WRITE
ARCH = pytest.mark.parametrize("arch", ARCHS)


def _cc(khugepaged=True, **knobs):
    k = KhugepagedKnobs.preset()
    for n, v in knobs.items():
        k.set(n, v)
    return CollapseControl(is_khugepaged=khugepaged, knobs=k, bus=EventBus(keep=True),
                           costs=CollapseCosts.load())


def _vma(start, end, flags=RW, anon_vma=True, **kw):
    """A VMA that has been written (it has an anon_vma)."""
    return VMA(start, end, flags, anon_vma=anon_vma, **kw)


def test_every_result_has_a_distinct_status_string_and_an_errno():
    assert len({r.status for r in ScanResult}) == len(ScanResult)
    assert ScanResult.SCAN_SUCCEED.errno == 0
    assert all(r.errno < 0 for r in ScanResult if r is not ScanResult.SCAN_SUCCEED)
    # madvise_collapse_errno(): the four errnos MADV_COLLAPSE can give
    assert ScanResult.SCAN_ALLOC_HUGE_PAGE_FAIL.errno == -errno.ENOMEM
    assert ScanResult.SCAN_EXCEED_NONE_PTE.errno == -errno.EBUSY
    assert ScanResult.SCAN_PAGE_LOCK.errno == -errno.EAGAIN
    assert ScanResult.SCAN_PMD_MAPPED.errno == -errno.EINVAL


@pytest.mark.parametrize("sysfs,order,expect", [
    (511, 9, 511), (256, 9, 256), (0, 9, 0),
    (511, 4, 15), (511, 2, 3), (0, 4, 0), (256, 4, 0), (300, 8, 0),
])
def test_collapse_max_ptes_none_v19(sysfs, order, expect):
    cc = _cc(max_ptes_none=sysfs)
    assert collapse_max_ptes_none(cc, None, order) == expect
    warned = bool(cc.bus.named("pr_warn_once"))
    assert warned == (order < 9 and sysfs not in (0, 511))


def test_collapse_max_ptes_none_madvise_and_uffd():
    assert collapse_max_ptes_none(_cc(False), None, 9) == HPAGE_PMD_NR
    uffd = _vma(B, B + HPAGE_PMD_SIZE, uffd_armed=True)
    assert collapse_max_ptes_none(_cc(False), uffd, 9) == 0
    v5 = _cc(max_ptes_none=300)
    v5.algo = "v5"
    assert collapse_max_ptes_none(v5, None, 4) == 300 >> 5


def test_max_order_from_offset():
    assert [max_order_from_offset(o) for o in (0, 4, 16, 48, 256, 384)] == [9, 2, 4, 4, 8, 7]


def test_allowable_orders_sysfs_and_vma_end():
    thp = ThpConfig(enabled="madvise", hugepages={64: "always"})
    vma = _vma(B, B + 2 * HPAGE_PMD_SIZE)
    assert thp_vma_allowable_orders(vma, TVA_KHUGEPAGED, THP_ORDERS_ALL_ANON, thp) == BIT(4)
    vma.flags |= VM_HUGEPAGE
    assert thp_vma_allowable_orders(vma, TVA_KHUGEPAGED, THP_ORDERS_ALL_ANON, thp) == \
        BIT(4) | BIT(9)
    # A VMA ending 64K past a PMD boundary still fits a PMD block below its end.
    small = _vma(B, B + 64 * 1024, RW | VM_HUGEPAGE)
    assert thp_vma_allowable_orders(small, TVA_KHUGEPAGED, THP_ORDERS_ALL_ANON, thp) == BIT(4)
    vma.flags |= VM_NOHUGEPAGE
    assert thp_vma_allowable_orders(vma, TVA_KHUGEPAGED, THP_ORDERS_ALL_ANON, thp) == 0


def test_hugepage_enabled_counts_mthp_only_configs():
    thp = ThpConfig(enabled="never")
    assert not hugepage_enabled(thp)
    thp.set_order(4, "always")
    assert hugepage_enabled(thp)
    thp = ThpConfig(enabled="never")
    thp.set_order(6, "madvise")
    assert hugepage_enabled(thp)


# ------------------------------------------------------------ the scan loop

def _reference_scan(ptes, max_none, max_swap, max_shared, khugepaged, droppable):
    """mm/khugepaged.c collapse_scan_pmd()'s per-PTE loop as the mm tree has it (v19,
    mid-2026), written as a plain loop, to check the vectorised one."""
    none = unmapped = shared = 0
    rows = [dict(zip(ptes.dtype.names, r, strict=True)) for r in ptes.tolist()]
    for i, p in enumerate(rows):
        k = p["kind"]
        if k in (PTE_NONE, PTE_ZERO):
            none += 1
            if none > max_none:
                return S.SCAN_EXCEED_NONE_PTE, i + 1
            continue
        if k in (PTE_SWAP, PTE_NONPRESENT):          # !pte_present(): swap or not
            unmapped += 1
            if unmapped > max_swap:
                return S.SCAN_EXCEED_SWAP_PTE, i + 1
            if p["uffd_wp"]:
                return S.SCAN_PTE_UFFD_WP, i + 1
            continue
        if p["uffd_wp"]:
            return S.SCAN_PTE_UFFD_WP, i + 1
        if p["folio"] < 0:
            return S.SCAN_PAGE_NULL, i + 1
        if khugepaged and not droppable and p["lazyfree"] and not p["dirty"]:
            return S.SCAN_PAGE_LAZYFREE, i + 1
        if not p["anon"]:
            return S.SCAN_PAGE_ANON, i + 1
        if p["shared"]:
            shared += 1
            if shared > max_shared:
                return S.SCAN_EXCEED_SHARED_PTE, i + 1
        if not p["lru"]:
            return S.SCAN_PAGE_LRU, i + 1
        if p["locked"]:
            return S.SCAN_PAGE_LOCK, i + 1
        if not p["refcount_ok"]:
            return S.SCAN_PAGE_COUNT, i + 1
    return S.SCAN_SUCCEED, HPAGE_PMD_NR


@settings(max_examples=200, deadline=None)
@given(seed=hs.integers(0, 2**32 - 1), p_none=hs.floats(0, 0.9), p_swap=hs.floats(0, 0.2),
       nr_rare=hs.integers(0, 4), shared_every=hs.integers(1, 9), max_none=hs.integers(0, 511),
       max_swap=hs.integers(0, 80), max_shared=hs.integers(0, 300), khugepaged=hs.booleans(),
       droppable=hs.booleans())
def test_scan_ptes_matches_the_plain_loop(seed, p_none, p_swap, nr_rare, shared_every,
                                          max_none, max_swap, max_shared, khugepaged,
                                          droppable):
    rng = np.random.default_rng(seed)
    u = rng.random(HPAGE_PMD_NR)
    kinds = np.where(u < p_none, rng.choice([PTE_NONE, PTE_ZERO], HPAGE_PMD_NR),
                     np.where(u < p_none + p_swap, PTE_SWAP, PTE_PRESENT))
    ptes = np.zeros(HPAGE_PMD_NR, dtype=PTE_INFO)
    ptes["kind"] = kinds
    present = ptes["kind"] == PTE_PRESENT
    ptes["folio"] = np.where(present, np.arange(HPAGE_PMD_NR), -1)
    ptes["anon"] = present
    ptes["lru"] = True
    ptes["refcount_ok"] = True
    ptes["dirty"] = present & (rng.random(HPAGE_PMD_NR) < 0.5)
    ptes["shared"] = present & (np.arange(HPAGE_PMD_NR) % shared_every == 0)
    rare = ["uffd_wp", "locked", "lazyfree", "nolru", "pin", "file", "null", "nonpresent"]
    for _ in range(nr_rare):
        i, what = int(rng.integers(0, HPAGE_PMD_NR)), rare[int(rng.integers(0, len(rare)))]
        if what == "nolru":
            ptes["lru"][i] = False
        elif what == "pin":
            ptes["refcount_ok"][i] = False
        elif what == "file":
            ptes["anon"][i] = False
        elif what == "null":
            ptes["folio"][i] = -1
        elif what == "nonpresent":
            ptes["kind"][i] = PTE_NONPRESENT
        else:
            ptes[what][i] = True
    got, examined, _ = scan_ptes(ptes, max_none, max_swap, max_shared, khugepaged, droppable)
    assert (got, examined) == _reference_scan(ptes, max_none, max_swap, max_shared,
                                              khugepaged, droppable)


# ------------------------------------------------------------ the order walk

def _walk(bitmap, enabled, answer, **knobs):
    """Run mthp_collapse with a collapse that records its candidates and answers
    answer(offset, order)."""
    calls = []

    def collapse(k, mm, addr, referenced, unmapped, cc, order):
        off = (addr - B) // PAGE_SIZE
        calls.append((off, order))
        yield cc.now_ns                   # a generator of steps, as collapse_huge_page
        return answer(off, order)

    cc = _cc(**knobs)
    cc.mthp_present_ptes[:] = bitmap
    result = run_steps(mthp_collapse(None, None, B, 1, 0, cc, enabled, collapse=collapse))
    return result, calls


def test_walk_highest_first_left_first_then_lower():
    full = np.ones(HPAGE_PMD_NR, bool)
    enabled = BIT(9) | BIT(8) | BIT(4)
    fail_big = lambda off, order: S.SCAN_LACK_REFERENCED_PAGE if order > 4 else S.SCAN_SUCCEED  # noqa: E731
    result, calls = _walk(full, enabled, fail_big)
    assert result is S.SCAN_SUCCEED
    assert calls[:3] == [(0, 9), (0, 8), (0, 4)]
    assert calls[3] == (16, 4)
    assert (256, 8) in calls and calls.index((256, 8)) > calls.index((240, 4))
    assert len([c for c in calls if c[1] == 4]) == 32


def test_walk_pte_mapped_hugepage_skips_lower_orders():
    full = np.ones(HPAGE_PMD_NR, bool)
    enabled = BIT(6) | BIT(4) | BIT(2)
    result, calls = _walk(full, enabled,
                          lambda off, order: S.SCAN_PTE_MAPPED_HUGEPAGE)
    assert all(order == 6 for _, order in calls) and len(calls) == 8
    assert result is S.SCAN_FAIL


def test_walk_fatal_result_stops_the_pmd():
    full = np.ones(HPAGE_PMD_NR, bool)
    result, calls = _walk(full, BIT(4) | BIT(2),
                          lambda off, order: S.SCAN_PMD_MAPPED)
    assert calls == [(0, 4)] and result is S.SCAN_PMD_MAPPED


def test_walk_alloc_failure_reported_when_nothing_collapsed():
    full = np.ones(HPAGE_PMD_NR, bool)
    result, _ = _walk(full, BIT(9) | BIT(4),
                      lambda off, order: S.SCAN_ALLOC_HUGE_PAGE_FAIL)
    assert result is S.SCAN_ALLOC_HUGE_PAGE_FAIL


def test_walk_precheck_skips_sparse_ranges():
    bitmap = np.zeros(HPAGE_PMD_NR, bool)
    bitmap[0:16] = True
    bitmap[20] = True
    _, calls = _walk(bitmap, BIT(4), lambda off, order: S.SCAN_SUCCEED,
                     max_ptes_none=0)
    assert calls == [(0, 4)]
    _, calls = _walk(bitmap, BIT(4), lambda off, order: S.SCAN_SUCCEED,
                     max_ptes_none=511)
    assert calls == [(0, 4), (16, 4)]


# ------------------------------------------------------- collapse_huge_page on Kernel + Hardware

def _flushes(sim):
    """(start, end) of every TLB flush the kernel published."""
    return [(e.args["start"], e.args["end"]) for e in sim.bus.named("tlb_flush")]


@ARCH
def test_mthp_isolate_failure_rolls_back_every_pte(arch):
    """A shared page passes the whole-PMD scan (1 <= 256) but mTHP's shared limit is 0:
    isolate fails after the PMD was cleared and flushed; the table comes back as it was."""
    sim = st.selftest_kernel(arch=arch)
    parent = st.Run(sim)
    p = parent.alloc_mapping(1)
    parent.fault(p, p + PAGE_SIZE)
    child = st.Run(sim, sim.fork(parent.p))
    child.fault(p + PAGE_SIZE, p + HPAGE_PMD_SIZE)
    sim.set_size(4, "always")
    sim.set_size(9, "never")
    before = sim.ptes(child.p, p).copy()
    sim.register(child.p)
    flushed = len(_flushes(sim))
    sim.tick(0)
    after = sim.ptes(child.p, p)
    assert np.array_equal(before[:16], after[:16])
    assert sim.mthp(4, "collapse_exceed_shared_pte") == 1
    iso = [e for e in sim.bus.named("mm_collapse_huge_page")
           if e.args["status"] == "exceed_shared_pte"]
    assert len(iso) == 1 and iso[0].args["attempt"].steps[-1][0] == "rollback"
    sizes = sim.mapping_sizes(child.p, p, p + HPAGE_PMD_SIZE)
    assert sizes[4] == 31
    assert not sim.validate(child.p) and not sim.validate(parent.p)
    # Every attempt, rolled back or not, cleared and flushed the whole 2 MiB.
    attempts = sim.bus.named("mm_collapse_huge_page")
    new = _flushes(sim)[flushed:]
    assert len(new) == len(attempts) == 32
    assert all(end - start == HPAGE_PMD_SIZE for start, end in new)


@ARCH
def test_mthp_refuses_ranges_with_swap_entries(arch):
    sim = st.selftest_kernel(arch=arch)
    sim.thp.enabled = "never"
    sim.set_size(9, "never")
    r = st.Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + HPAGE_PMD_SIZE)
    r.madvise(p + 3 * PAGE_SIZE, PAGE_SIZE, "MADV_PAGEOUT")
    sim.set_size(4, "always")
    sim.register(r.p)
    sim.tick(0)
    sizes = sim.mapping_sizes(r.p, p, p + HPAGE_PMD_SIZE)
    assert sizes[4] == 31 and sizes[0] == 15
    assert sim.mthp(4, "collapse_exceed_swap_pte") == 1
    assert sim.vmstat["pswpin"] == 0 and sim.kernel.swap.nr_used == 1
    assert not sim.validate(r.p)


@ARCH
def test_pmd_collapse_swaps_in(arch):
    sim = st.selftest_kernel(arch=arch)
    r = st.Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + HPAGE_PMD_SIZE)
    r.madvise(p, 10 * PAGE_SIZE, "MADV_PAGEOUT")
    out = r.collapse("khugepaged", p, 1, True)
    assert out.huge == 1 and not out.lost
    assert sim.vmstat["pswpin"] == 10
    swapins = sim.bus.named("mm_collapse_huge_page_swapin")
    assert swapins[0].args["swapped_in"] == 10


@ARCH
def test_madvise_collapse_errnos(arch):
    sim = Scenario(arch, thp=ThpConfig(enabled="madvise", use_zero_page=False))
    proc = sim.new_proc()
    sim.mmap(proc, B, HPAGE_PMD_SIZE)
    sim.fault_range(proc, B, HPAGE_PMD_NR)
    sim.kernel.fail_page_alloc = {9}
    assert sim.madvise(proc, B, HPAGE_PMD_SIZE, "MADV_COLLAPSE") == -errno.ENOMEM
    assert sim.vmstat["thp_collapse_alloc_failed"] == 1
    sim.kernel.fail_page_alloc = set()
    sim.madvise(proc, B, HPAGE_PMD_SIZE, "MADV_NOHUGEPAGE")
    assert sim.madvise(proc, B, HPAGE_PMD_SIZE, "MADV_COLLAPSE") == -errno.EINVAL
    small = Scenario(arch)
    p2 = small.new_proc()
    small.mmap(p2, B, 64 * PAGE_SIZE)
    assert small.madvise(p2, B, 64 * PAGE_SIZE, "MADV_COLLAPSE") == -errno.EINVAL
    assert small.madvise(p2, 2 * B, HPAGE_PMD_SIZE, "MADV_COLLAPSE") == -errno.ENOMEM
    rec = small.madvise_records[-1].to_json()
    assert rec["errno"] == "ENOMEM" and rec["pmds"] == []


@ARCH
def test_collapse_steps_are_costed_and_ordered(arch):
    sim = Scenario(arch, thp=ThpConfig(enabled="madvise", use_zero_page=False))
    proc = sim.new_proc()
    sim.mmap(proc, B, HPAGE_PMD_SIZE)
    sim.fault_range(proc, B, 100)
    assert sim.madvise(proc, B, HPAGE_PMD_SIZE, "MADV_COLLAPSE") == 0
    att = sim.bus.named("mm_collapse_huge_page")[-1].args["attempt"]
    names = [n for n, _ in att.steps]
    assert names == ["alloc", "revalidate", "mmap_write_lock", "pmdp_collapse_flush",
                     "isolate", "copy", "install"]
    assert all(d > 0 for _, d in att.steps)
    assert att.t_end_ns - att.t_start_ns >= sum(d for _, d in att.steps)
    lo, hi = att.pmd_cleared_ns
    assert att.t_start_ns < lo < hi <= att.t_end_ns
    assert att.zero_filled == HPAGE_PMD_NR - 100
    assert not sim.validate(proc)
