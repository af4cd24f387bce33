"""GUP-fast against the collapse: the lockless walker meets the cleared entry, its
recheck catches a change under it, the slow path waits for the mmap lock, and a pin
makes the collapse fail its refcount check (mm/gup.c gup_fast, kernel-mthp.md §2.1)."""

import pytest
from scenario import ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, UAPI, Scenario
from test_collapse_steps import _setup, _until_cleared

from emu.gup_agent import GupFastAgent
from emu.kernel.khugepaged.results import ScanResult

B = 1 << 30
ARCH = pytest.mark.parametrize("arch", ARCHS)


def _steps(sim, until):
    """Run khugepaged step by step until ``until()`` holds (at most 3000 steps)."""
    for _ in range(3000):
        if until() or not sim.khugepaged.step_once():
            return


def _populated(arch, nr_pages):
    """One process with a PMD-sized mapping whose first nr_pages are written."""
    sim = Scenario(arch)
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, nr_pages)
    return sim, p


def _folio_refcount(sim, p, va):
    mm = sim.mm(p)
    pfn = sim.kernel.gup.pinnable(mm, va, False)
    return sim.kernel.folio_of_pfn(pfn).refcount


@ARCH
def test_pin_and_unpin_a_mapped_page(arch):
    sim, p = _populated(arch, 4)
    gup = sim.kernel.gup
    before = _folio_refcount(sim, p, B + PAGE_SIZE)
    pins, waited = gup.pin_user_pages_fast(sim.mm(p), B + PAGE_SIZE, 2, True, 0)
    assert len(pins) == 2 and waited == 0
    assert _folio_refcount(sim, p, B + PAGE_SIZE) == before + 1
    assert gup.stats.gup_fast_pages == 2 and gup.stats.gup_fast_fallbacks == 0
    gup.unpin_user_pages(pins)
    assert _folio_refcount(sim, p, B + PAGE_SIZE) == before


@ARCH
def test_unpopulated_page_takes_the_slow_path_and_faults_it_in(arch):
    sim, p = _populated(arch, 1)
    gup = sim.kernel.gup
    pins, _ = gup.pin_user_pages_fast(sim.mm(p), B, 2, True, 0)
    assert len(pins) == 2
    st = gup.stats
    assert (st.gup_fast_pages, st.gup_fast_fallbacks, st.gup_fast_fallbacks_collapse,
            st.gup_slow_pages, st.gup_slow_faults) == (1, 1, 0, 1, 1)


@ARCH
@pytest.mark.parametrize("strategy", ["pmd", "pte"])
def test_walker_meets_the_cleared_entry_and_waits_for_the_collapse(arch, strategy):
    """In the window, a pin in the cleared range falls back (counted as caused by the
    collapse) and its slow path waits until the collapse drops mmap_lock."""
    sim, p = _setup(arch, strategy, 4)
    lo, hi = _until_cleared(sim, p)
    mm = sim.mm(p)
    gup = sim.kernel.gup
    now = sim.khugepaged.cc.now_ns
    pins, waited = gup.pin_user_pages_fast(mm, lo, 1, True, now)
    assert gup.stats.gup_fast_fallbacks_collapse == 1
    # the slow path waited from now to the collapse's unlock, khugepaged's clock now
    assert waited == sim.khugepaged.cc.now_ns - now > 0
    assert mm.mmap_lock is None and mm.collapse_cleared is None
    assert len(pins) == 1                       # the slow path pinned it after the collapse
    assert sim.bus.total("emu_gup_fast_fallback") == 1


@ARCH
def test_pte_strategy_leaves_the_rest_of_the_pmd_to_the_lockless_walker(arch):
    """The point of the ``pte`` strategy: outside the target range GUP-fast still works
    during the window; with ``pmd`` the whole 2 MiB falls back."""
    out = {}
    outside = None
    for strategy in ("pte", "pmd"):                 # the same first target both times
        sim, p = _setup(arch, strategy, 4)
        lo, hi = _until_cleared(sim, p)
        if outside is None:
            assert hi - lo == 16 * PAGE_SIZE
            outside = hi if hi < B + HPAGE_PMD_SIZE else lo - PAGE_SIZE
        gup = sim.kernel.gup
        gup.pin_user_pages_fast(sim.mm(p), outside, 1, True, sim.khugepaged.cc.now_ns)
        out[strategy] = (gup.stats.gup_fast_pages, gup.stats.gup_fast_fallbacks_collapse)
    assert out == {"pmd": (0, 1), "pte": (1, 0)}


@ARCH
def test_recheck_catches_an_entry_cleared_under_the_walker(arch):
    """Entries read, then a collapse step clears them before the pin's recheck (the
    steps due within gup_fast_ns run in between): the reference goes back."""
    sim, p = _setup(arch, "pmd", 4)
    mm = sim.mm(p)
    kh = sim.khugepaged
    gup = sim.kernel.gup
    # Step until the next step is the clear: then run it inside the walker's window.
    for _ in range(10_000):
        if kh.cc.now_ns and mm.mmap_lock == "write":
            break
        assert kh.step_once()
    assert mm.collapse_cleared is None
    target = B + 5 * PAGE_SIZE
    ref = _folio_refcount(sim, p, target)
    gup.run_until = lambda t: kh.step_once() if mm.collapse_cleared is None else None
    pins, _ = gup.pin_user_pages_fast(mm, target, 1, True, kh.cc.now_ns)
    assert gup.stats.gup_fast_recheck_failed == 1
    assert gup.stats.gup_fast_fallbacks_collapse == 1
    gup.unpin_user_pages(pins)
    pfn = gup.pinnable(mm, target, False)
    assert pfn is not None
    if sim.kernel.folio_of_pfn(pfn).order == 0:
        assert _folio_refcount(sim, p, target) == ref      # no reference leaked


@ARCH
def test_a_held_pin_fails_the_collapse_with_scan_page_count(arch):
    sim, p = _setup(arch, "pmd", 9)
    gup = sim.kernel.gup
    pins, _ = gup.pin_user_pages_fast(sim.mm(p), B + 7 * PAGE_SIZE, 1, True, 0)
    kh = sim.khugepaged
    _steps(sim, lambda: kh.results[ScanResult.SCAN_PAGE_COUNT])
    assert sim.khugepaged.results[ScanResult.SCAN_PAGE_COUNT] == 1   # the one pinned range
    assert not sim.kernel.pt.pmd_is_leaf(sim.kernel.pt.get_pmd(sim.mm(p), B))
    gup.unpin_user_pages(pins)
    huge = lambda: sim.kernel.pt.pmd_is_leaf(sim.kernel.pt.get_pmd(sim.mm(p), B))  # noqa: E731
    _steps(sim, huge)
    assert sim.kernel.pt.pmd_is_leaf(sim.kernel.pt.get_pmd(sim.mm(p), B))


@ARCH
def test_shared_futex_pins_its_word_private_does_not(arch):
    sim, p = _populated(arch, 1)
    k = sim.kernel
    wake = UAPI["FUTEX_WAKE"]
    k.gup_syscall(p.pid, "futex", (B + 8, wake | UAPI["FUTEX_PRIVATE_FLAG"], 1, 0, 0, 0), 0, 0)
    assert k.gup.stats.gup_fast_attempts == 0
    k.gup_syscall(p.pid, "futex", (B + 8, wake, 1, 0, 0, 0), 0, 0)
    assert k.gup.stats.gup_fast_attempts == 1 and k.gup.stats.gup_fast_pages == 1
    assert k.gup.stats.gup_unpinned == 1
    k.gup_syscall(p.pid, "futex", (B, UAPI["FUTEX_WAKE_OP"], 1, 1, B + 64, 0), 0, 0)
    assert k.gup.stats.gup_fast_attempts == 3           # uaddr and uaddr2


@ARCH
def test_agent_pins_only_populated_memory_and_releases_everything(arch):
    sim, p = _populated(arch, HPAGE_PMD_NR // 2)
    rss = sim.mm(p).rss
    agent = GupFastAgent(sim.kernel, rate_per_s=1e6, pages=4, hold_ns=3_000, seed=1)
    while agent.next_event_ns() < 200_000:
        agent.step()
    agent.release_all()
    st = sim.kernel.gup.stats
    assert st.gup_fast_attempts > 50
    assert st.gup_slow_faults == 0                       # never faulted new memory in
    assert st.gup_unpinned == st.gup_fast_pages + st.gup_slow_pages
    assert sim.mm(p).rss == rss
    for i in range(HPAGE_PMD_NR // 2):
        f = sim.kernel.folio_of_pfn(sim.kernel.gup.pinnable(sim.mm(p), B + i * PAGE_SIZE, False))
        assert f.refcount == f.mapcount()                # every pin given back
