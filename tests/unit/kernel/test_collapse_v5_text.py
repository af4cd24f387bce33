"""The v5 walk against the series' own text (issue 11 item 6): "[PATCH v5 06/12]
khugepaged: introduce khugepaged_scan_bitmap for mTHP support", "[PATCH v5 07/12]
khugepaged: add mTHP support" (as quoted in Hugh Dickins' reply of 2025-04-28) and
"[PATCH v5 09/12] khugepaged: avoid unnecessary mTHP collapse attempts" on LKML."""

from types import SimpleNamespace

import numpy as np
import pytest
from scenario import ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, Scenario

from emu.bus import EventBus
from emu.kernel.config import ThpConfig
from emu.kernel.huge_memory import BIT
from emu.kernel.khugepaged.collapse import CollapseControl, run_steps
from emu.kernel.khugepaged.knobs import CollapseCosts, KhugepagedKnobs
from emu.kernel.khugepaged.results import ScanResult
from emu.kernel.khugepaged.scan import mthp_collapse_v5, v5_chunk_bitmap

S = ScanResult
B = 1 << 30
ARCH = pytest.mark.parametrize("arch", ARCHS)


def test_v5_chunk_bit_k_is_set_from_chunk_k_minus_1():
    """v5 07/12 khugepaged_scan_pmd(): at i % 4 == 0 the loop tests the previous chunk's
    none count against max_ptes_none >> 7 and sets bit i / 4; bit 0 is always set and
    the last chunk is never tested."""
    none = np.ones(HPAGE_PMD_NR, dtype=bool)
    none[0:4] = False          # chunk 0: 0 none
    none[9] = False            # chunk 2: 3 none
    none[12:14] = False        # chunk 3: 2 none
    none[508:512] = False      # chunk 127: 0 none, never tested
    want = np.zeros(128, dtype=bool)
    want[[0, 1, 3, 4]] = True  # bit 0 always; bit 1 <- chunk 0; bit 3 <- chunk 2; bit 4 <- 3
    assert np.array_equal(v5_chunk_bitmap(none, 511), want)        # scaled 3
    want[3] = False                                                # chunk 2: 3 > 2
    assert np.array_equal(v5_chunk_bitmap(none, 300), want)        # scaled 2
    want[4] = False                                                # chunk 3: 2 > 0
    assert np.array_equal(v5_chunk_bitmap(none, 0), want)          # scaled 0


ENABLED = BIT(9) | BIT(4) | BIT(2)


def _walk(answer, enabled=ENABLED):
    calls = []

    def collapse(k, mm, addr, referenced, unmapped, cc, order):
        calls.append(((addr - B) // PAGE_SIZE, order))
        yield cc.now_ns                   # a generator of steps, as collapse_huge_page
        return answer(order)

    cc = CollapseControl(is_khugepaged=True, knobs=KhugepagedKnobs.preset(),
                         bus=EventBus(), costs=CollapseCosts.load(), algo="v5")
    cc.mthp_bitmap[:] = True
    k = SimpleNamespace(config=ThpConfig(enabled="madvise"))
    return run_steps(mthp_collapse_v5(k, None, B, 1, 0, cc, enabled, collapse=collapse)), calls


def test_v5_walk_stops_after_a_result_outside_the_09_12_list():
    """v5 09/12: after SCAN_LACK_REFERENCED_PAGE (not in the list) the walk breaks."""
    result, calls = _walk(lambda order: S.SCAN_LACK_REFERENCED_PAGE)
    assert calls == [(0, 9)] and result is S.SCAN_FAIL


def test_v5_walk_descends_after_a_listed_result_and_alloc_failure_is_scan_fail():
    """v5 09/12: SCAN_ALLOC_HUGE_PAGE_FAIL is listed, so the walk goes on to the halves
    (every enabled order, left first); 07/12 maps "nothing collapsed" to SCAN_FAIL."""
    result, calls = _walk(lambda order: S.SCAN_ALLOC_HUGE_PAGE_FAIL)
    assert result is S.SCAN_FAIL
    assert calls[:3] == [(0, 9), (0, 4), (0, 2)]
    assert len(calls) == 1 + 32 + 128


@ARCH
def test_v5_alloc_failure_never_reaches_alloc_sleep(arch):
    """v5 07/12: khugepaged_scan_pmd() turns the walk's count into SCAN_SUCCEED or
    SCAN_FAIL, so khugepaged_do_scan() never sees SCAN_ALLOC_HUGE_PAGE_FAIL and never
    sleeps alloc_sleep_millisecs; v19 passes it on (mthp_collapse()) and sleeps once."""
    answers = {}
    for algo in ("v19", "v5"):
        sim = Scenario(arch, algo, thp=ThpConfig(enabled="never", use_zero_page=False))
        p = sim.new_proc()
        sim.mmap(p, B, 2 * HPAGE_PMD_SIZE)
        sim.fault_range(p, B, 2 * HPAGE_PMD_NR)
        sim.kernel.thp_sysfs_store(enabled="always")
        sim.madvise(p, B, 2 * HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
        sim.kernel.fail_page_alloc = {9}
        sim.tick(0)
        answers[algo] = (sim.khugepaged.alloc_sleeps, dict(sim.khugepaged.results))
    assert answers["v19"] == (1, {S.SCAN_ALLOC_HUGE_PAGE_FAIL: 2})
    assert answers["v5"] == (0, {S.SCAN_FAIL: 2})


@ARCH
def test_v5_scan_applies_no_none_limit_when_mthp_is_enabled(arch):
    """v5 07/12 khugepaged_scan_pmd(): with an mTHP order enabled the none check is
    skipped (!is_pmd_only), so a PTE table of 512 none entries passes it and fails on
    the base's writable check (SCAN_PAGE_RO); v19 raises the limit to 511 only and
    fails with SCAN_EXCEED_NONE_PTE."""
    got = {}
    for algo in ("v19", "v5"):
        sim = Scenario(arch, algo, thp=ThpConfig(enabled="never", use_zero_page=False))
        p = sim.new_proc()
        sim.mmap(p, B, HPAGE_PMD_SIZE)
        sim.write(p, B)
        sim.madvise(p, B, PAGE_SIZE, "MADV_DONTNEED")       # the table stays, all none
        sim.kernel.thp_sysfs_store(enabled="always", hugepages={64: "always"})
        sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_HUGEPAGE")
        sim.tick(0)
        got[algo] = dict(sim.khugepaged.results)
    assert got == {"v19": {S.SCAN_EXCEED_NONE_PTE: 1}, "v5": {S.SCAN_PAGE_RO: 1}}
