"""The creep (kernel-mthp.md §1.6): v5's order-scaled max_ptes_none grows a sparse region
one order per scan up to a PMD THP; v19 (limit 0 or 511 for mTHP) does not."""

import pytest
import selftest_cases as st
from scenario import ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE

ARCH = pytest.mark.parametrize("arch", ARCHS)


def _sparse_region(arch: str, algo: str, max_ptes_none: int, present: int):
    """Pages 0..present-1 of one PMD faulted small; then every anon size 'madvise'."""
    sim = st.selftest_kernel(algo=algo, arch=arch)
    sim.knobs.set("max_ptes_none", max_ptes_none)
    r = st.Run(sim)
    p = r.alloc_mapping(1)
    r.fault(p, p + present * PAGE_SIZE)
    for order in range(2, 9):
        sim.set_size(order, "madvise")
    r.madvise(p, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
    return sim, r, p


def _scan_pass(sim, r):
    """Advance simulated time by one scan_sleep_millisecs and let khugepaged run."""
    r.now += sim.knobs.scan_sleep_millisecs * 1_000_000 + 1
    sim.tick(r.now)


def _largest_order(sim, r, p):
    sizes = sim.mapping_sizes(r.p, p, p + HPAGE_PMD_SIZE)
    return max((o for o in sizes if o >= 0), default=-1)


@ARCH
def test_v5_creeps_to_pmd_with_max_ptes_none_300(arch):
    sim, r, p = _sparse_region(arch, "v5", 300, present=2)
    history = [_largest_order(sim, r, p)]
    for _ in range(12):
        _scan_pass(sim, r)
        history.append(_largest_order(sim, r, p))
        if r.huge(p, 1):
            break
    assert r.huge(p, 1) == 1, history
    # It grew step by step: each pass collapsed the next larger order around the last.
    grown = [o for o in history if o >= 2]
    assert grown == sorted(grown) and len(set(grown)) >= 5, history
    assert not sim.validate(r.p)
    # Two written pages became a 2 MiB folio: 510 zero-filled pages materialised.
    assert sim.mthp(9, "collapse_alloc") == 1


@ARCH
def test_v19_does_not_creep_with_max_ptes_none_300(arch):
    sim, r, p = _sparse_region(arch, "v19", 300, present=2)
    for _ in range(12):
        _scan_pass(sim, r)
    assert r.huge(p, 1) == 0
    assert _largest_order(sim, r, p) == 0
    assert sum(sim.mthp(o, "collapse_alloc") for o in range(2, 10)) == 0
    assert sim.bus.named("pr_warn_once"), "max_ptes_none=300 must warn for mTHP"


@ARCH
def test_v19_with_511_goes_straight_to_highest_order_not_creep(arch):
    """max_ptes_none=511: v19 collapses to the highest enabled order at once."""
    sim, r, p = _sparse_region(arch, "v19", 511, present=2)
    _scan_pass(sim, r)
    assert r.huge(p, 1) == 1
    assert sim.mthp(9, "collapse_alloc") == 1
    assert all(sim.mthp(o, "collapse_alloc") == 0 for o in range(2, 9))


@pytest.mark.parametrize("algo", ["v5", "v19"])
@ARCH
def test_max_ptes_none_0_never_adds_pages(arch, algo):
    sim, r, p = _sparse_region(arch, algo, 0, present=HPAGE_PMD_NR // 4 + 3)
    for _ in range(6):
        _scan_pass(sim, r)
    sizes = sim.mapping_sizes(r.p, p, p + HPAGE_PMD_SIZE)
    pages = sum(n << o for o, n in sizes.items() if o >= 0)
    assert pages == HPAGE_PMD_NR // 4 + 3          # nothing new became present
    assert sizes.get(7) == 1                       # the full first 128 pages
    assert not sim.validate(r.p)
