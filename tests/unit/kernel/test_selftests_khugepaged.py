"""Every anonymous case of selftests/mm/khugepaged.c, in both contexts, with the upstream
expected outcome (kernel-mthp.md §7.2), plus the mTHP variants of the modelling notes."""

import errno

import pytest
import selftest_cases as st
from scenario import ALGOS, ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE

from emu.kernel.khugepaged.results import ScanResult

CTX = pytest.mark.parametrize("ctx", st.CONTEXTS)
# The khugepaged context's first poll, at 0.5 s, runs every pass due by then: one
# every scan_sleep_millisecs (10 ms) plus the pass's own few microseconds, k = 0..49.
PASSES_BY_FIRST_POLL = 50
ARCH = pytest.mark.parametrize("arch", ARCHS)


@pytest.fixture(params=[(a, g) for a in ARCHS for g in ALGOS], ids=lambda p: f"{p[0]}-{p[1]}")
def kernel(request):
    """selftest_kernel() on each architecture under each collapse algorithm."""
    arch, algo = request.param

    def make(mthp=None, mib=256, **knobs):
        return st.selftest_kernel(algo=algo, mthp=mthp, arch=arch, mib=mib, **knobs)
    return make


def test_alloc_at_fault(kernel):
    before, after = st.case_alloc_at_fault(kernel())
    assert (before, after) == (1, 0)


@CTX
def test_collapse_full(kernel, ctx):
    out = st.case_collapse_full(kernel(), ctx)
    assert st.passed(ctx, out, 4, True), out
    assert out.huge == 4 and out.ret in (None, 0)


@CTX
def test_collapse_empty(kernel, ctx):
    out = st.case_collapse_empty(kernel(), ctx)
    assert st.passed(ctx, out, 1, False), out
    if ctx == "madvise":
        assert out.ret == -errno.EINVAL


@CTX
def test_collapse_single_pte_entry(kernel, ctx):
    sim = kernel()
    out = st.case_collapse_single_pte_entry(sim, ctx)
    assert st.passed(ctx, out, 1, True), out
    # 511 of the 512 pages of the new THP were zero-filled.
    att = sim.bus.named("mm_collapse_huge_page")[-1].args["attempt"]
    assert att.zero_filled == HPAGE_PMD_NR - 1


@CTX
def test_collapse_max_ptes_none(kernel, ctx):
    sim = kernel()
    outs = st.case_collapse_max_ptes_none(sim, ctx)
    if ctx == "khugepaged":
        assert len(outs) == 2
        assert st.passed(ctx, outs[0], 1, False) and outs[0].huge == 0, outs[0]
        assert st.passed(ctx, outs[1], 1, True) and outs[1].huge == 1, outs[1]
        assert sim.vmstat["thp_scan_exceed_none_pte"] == PASSES_BY_FIRST_POLL
    else:
        assert st.passed(ctx, outs[0], 1, True), outs[0]


@CTX
def test_collapse_swapin_single_pte(kernel, ctx):
    sim = kernel()
    out = st.case_collapse_swapin_single_pte(sim, ctx)
    assert st.passed(ctx, out, 1, True), out
    assert sim.vmstat["pswpin"] == 1 and sim.kernel.swap.nr_used == 0


@CTX
def test_collapse_max_ptes_swap(kernel, ctx):
    sim = kernel()
    outs = st.case_collapse_max_ptes_swap(sim, ctx)
    if ctx == "khugepaged":
        assert st.passed(ctx, outs[0], 1, False) and outs[0].huge == 0, outs[0]
        assert sim.vmstat["thp_scan_exceed_swap_pte"] == PASSES_BY_FIRST_POLL
        assert st.passed(ctx, outs[1], 1, True), outs[1]
    else:
        assert st.passed(ctx, outs[0], 1, True), outs[0]
        assert sim.vmstat["pswpin"] == sim.knobs.max_ptes_swap + 1


@CTX
def test_collapse_single_pte_entry_compound(kernel, ctx):
    out = st.case_collapse_single_pte_entry_compound(kernel(), ctx)
    assert st.passed(ctx, out, 1, True), out


@CTX
def test_collapse_full_of_compound(kernel, ctx):
    out = st.case_collapse_full_of_compound(kernel(), ctx)
    assert st.passed(ctx, out, 1, True), out


@CTX
def test_collapse_compound_extreme(kernel, ctx):
    sim = kernel(mib=st.COMPOUND_MIB)
    out = st.case_collapse_compound_extreme(sim, ctx)
    assert st.passed(ctx, out, 1, True), out
    # Every source THP lost its only mapped page and was freed.
    assert len([f for f in sim.kernel.folios.values() if f.order == 9]) == 1


@CTX
def test_collapse_fork(kernel, ctx):
    out, parent_huge = st.case_collapse_fork(kernel(), ctx)
    assert st.passed(ctx, out, 1, True), out
    assert parent_huge == 0


@CTX
def test_collapse_fork_compound(kernel, ctx):
    out, parent_huge = st.case_collapse_fork_compound(kernel(), ctx)
    assert st.passed(ctx, out, 1, True), out
    assert parent_huge == 1


@CTX
def test_collapse_max_ptes_shared(kernel, ctx):
    sim = kernel()
    outs, parent_huge = st.case_collapse_max_ptes_shared(sim, ctx)
    if ctx == "khugepaged":
        assert st.passed(ctx, outs[0], 1, False) and outs[0].huge == 0, outs[0]
        assert sim.vmstat["thp_scan_exceed_share_pte"] == PASSES_BY_FIRST_POLL
        assert st.passed(ctx, outs[1], 1, True), outs[1]
    else:
        assert st.passed(ctx, outs[0], 1, True), outs[0]
    assert parent_huge == 1


def test_madvise_collapse_existing_thps(kernel):
    sim = kernel()
    outs = st.case_madvise_collapse_existing_thps(sim)
    assert all(st.passed("madvise", o, 1, True) for o in outs), outs
    assert sim.madvise_records[-1].pmds[0][1] is ScanResult.SCAN_PMD_MAPPED


# ------------------------------------------------------------ mTHP variants (§7.2 notes, §7.3)

@ARCH
def test_mthp_full_pmd_only_64k_becomes_32_x_64k(arch):
    sim = st.selftest_kernel(arch=arch)
    sim.thp.enabled = "never"
    sim.set_size(9, "never")
    r = st.Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + HPAGE_PMD_SIZE)
    sim.set_size(4, "always")
    out = r.collapse("khugepaged", p, 1, False)
    assert out.huge == 0 and out.sizes == {4: 32}, out.sizes
    assert not out.lost
    made = [e for e in sim.bus.named("mm_collapse_huge_page")
            if e.args["status"] == "succeeded"]
    assert len(made) == 32 and {e.args["order"] for e in made} == {4}
    # Every later pass allocates again for all 32 ranges, then isolate finds
    # folio_order >= 4: PTE_MAPPED_HUGEPAGE.  v19 as posted does this: mthp_collapse()
    # (11/14) pre-checks only bitmap_weight_from(mthp_present_ptes, ...) >= nr_ptes -
    # max_ptes_none, the scan sets a bit for every present anon PTE whatever its
    # folio's order, and collapse_huge_page() allocates (alloc_charge_folio()) before
    # __collapse_huge_page_isolate() makes the folio-order test (07/14).
    assert sim.mthp(4, "collapse_alloc") == 32 * PASSES_BY_FIRST_POLL
    assert sim.vmstat["thp_collapse_alloc"] == 0          # PMD-order only
    assert sim.khugepaged.pages_collapsed == 1            # one PMD range, counted once


@ARCH
def test_mthp_only_empty_pmd_stays_empty(arch):
    sim = st.selftest_kernel(arch=arch, mthp={4: "always", 9: "never"})
    sim.thp.enabled = "never"
    out = st.case_collapse_empty(sim, "khugepaged")
    assert out.huge == 0 and out.sizes == {}


@ARCH
def test_mthp_max_ptes_none_256_gives_fifteen_64k(arch):
    sim = st.selftest_kernel(arch=arch)
    sim.knobs.set("max_ptes_none", 256)
    r = st.Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + 255 * PAGE_SIZE)
    sim.set_size(4, "always")
    out = r.collapse("khugepaged", p, 1, False)
    assert out.huge == 0
    assert out.sizes == {4: 15, 0: 15}, out.sizes
    assert not out.lost
    warns = sim.bus.named("pr_warn_once")
    assert len(warns) == 1 and "0 or 511" in warns[0].args["msg"]


@ARCH
@pytest.mark.parametrize("case", ["swap", "shared"])
def test_mthp_phase_a_whole_pmd_limits_block_mthp_too(arch, case):
    sim = st.selftest_kernel(arch=arch, mthp={4: "always"})
    sim.set_size(4, "never")
    if case == "swap":
        r = st.Run(sim)
        p = r.alloc_mapping(1)
        r.fault(p, p + HPAGE_PMD_SIZE)
        r.madvise(p, (sim.knobs.max_ptes_swap + 1) * PAGE_SIZE, "MADV_PAGEOUT")
    else:
        parent = st.Run(sim)
        p = parent.alloc_hpage()
        r = st.Run(sim, sim.fork(parent.p))
        r.fault(p, p + (HPAGE_PMD_NR - sim.knobs.max_ptes_shared - 1) * PAGE_SIZE)
    sim.set_size(4, "always")
    out = r.collapse("khugepaged", p, 1, False)
    assert out.huge == 0 and 4 not in out.sizes, out.sizes
    assert sim.mthp(4, "collapse_alloc") == 0


@ARCH
@pytest.mark.parametrize("case", [st.case_collapse_full_of_compound,
                                  st.case_collapse_compound_extreme])
def test_mthp_pmd_disabled_existing_thp_is_not_split_into_mthp(arch, case):
    sim = st.selftest_kernel(arch=arch, mthp={4: "always"}, mib=st.COMPOUND_MIB)
    sim.set_size(4, "never")

    def enable_64k_disable_pmd():
        sim.set_size(4, "always")
        sim.set_size(9, "never")

    sim.before_khugepaged.append(enable_64k_disable_pmd)
    out = case(sim, "khugepaged")
    assert 4 not in out.sizes
    mapped_huge = [e for e in sim.bus.named("mm_collapse_huge_page")
                   if e.args["status"] == "pte_mapped_hugepage"]
    assert mapped_huge and all(e.args["order"] == 4 for e in mapped_huge)
