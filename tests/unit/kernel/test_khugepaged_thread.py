"""khugepaged as a thread in simulated time: knobs, wake-ups, progress, round robin,
registration, allocation back-off."""

import pytest

from emu.errors import EmuError
from emu.kernel.collapse_ops import (
    HPAGE_PMD_NR,
    HPAGE_PMD_SIZE,
    PAGE_SIZE,
    VM_HUGEPAGE,
    VM_NOHUGEPAGE,
    VM_WRITE,
    ThpSettings,
)
from emu.kernel.collapse_sim import SimKernel
from emu.kernel.khugepaged import NS_PER_MS
from emu.kernel.khugepaged_knobs import KhugepagedKnobs
from emu.kernel.scan_result import ScanResult

B = 1 << 30


def test_default_knobs_are_the_kernels():
    k = KhugepagedKnobs.preset("default")
    assert k == KhugepagedKnobs()
    assert (k.pages_to_scan, k.scan_sleep_millisecs, k.alloc_sleep_millisecs) == \
        (8 * HPAGE_PMD_NR, 10000, 60000)
    assert (k.max_ptes_none, k.max_ptes_swap, k.max_ptes_shared, k.defrag) == \
        (HPAGE_PMD_NR - 1, HPAGE_PMD_NR // 8, HPAGE_PMD_NR // 2, 1)
    assert KhugepagedKnobs.preset("fast").scan_sleep_millisecs < k.scan_sleep_millisecs


@pytest.mark.parametrize("name,value", [("max_ptes_none", 512), ("pages_to_scan", 0),
                                        ("defrag", 2), ("nonsense", 1),
                                        ("max_ptes_swap", -1)])
def test_bad_knob_values_are_rejected(name, value):
    with pytest.raises(EmuError):
        KhugepagedKnobs().set(name, value)
    with pytest.raises(EmuError):
        KhugepagedKnobs.preset("nope")


def _sim(**knobs):
    k = KhugepagedKnobs.preset("default")
    for n, v in knobs.items():
        k.set(n, v)
    return SimKernel(ThpSettings(enabled="always"), k, use_zero_page=False)


def _populated_mm(sim, nr_pmds, start=B, young=True):
    mm = sim.new_mm()
    sim.thp.enabled = "never"
    sim.mmap(mm, start, nr_pmds * HPAGE_PMD_SIZE)
    sim.fault_range(mm, start, nr_pmds * HPAGE_PMD_NR)
    sim.thp.enabled = "always"
    if not young:
        for e in mm.pmds.values():
            e.ptes["young"] = False
    sim.khugepaged.khugepaged_enter_vma(mm, mm.vmas[0])
    return mm


def test_wakes_every_scan_sleep_millisecs():
    sim = _sim()
    _populated_mm(sim, 1, young=False)
    kh = sim.khugepaged
    assert kh.next_wake_ns == 0
    assert kh.tick(0) == 1
    first_end = kh.next_wake_ns - 10000 * NS_PER_MS
    assert first_end > 0                                  # the pass itself took time
    assert kh.tick(kh.next_wake_ns - 1) == 0
    assert kh.tick(kh.next_wake_ns) == 1
    assert kh.tick(kh.next_wake_ns + 4 * 10000 * NS_PER_MS + 4 * NS_PER_MS) == 5


def test_asleep_without_mms_and_woken_by_registration():
    sim = _sim()
    kh = sim.khugepaged
    assert kh.tick(10**12) == 0 and kh.next_wake_ns is None
    mm = sim.new_mm()
    sim.mmap(mm, B, HPAGE_PMD_SIZE, now_ns=5 * 10**9)     # thp=always: registers
    assert kh.mm_slots == [mm] and kh.next_wake_ns == 5 * 10**9


def test_progress_counts_ptes_and_pages_to_scan_bounds_a_pass():
    sim = _sim(pages_to_scan=4 * HPAGE_PMD_NR)
    _populated_mm(sim, 10, young=False)     # every PMD: 512 PTEs examined, no collapse
    kh = sim.khugepaged
    kh.tick(0)
    assert kh.results[ScanResult.SCAN_LACK_REFERENCED_PAGE] == 4
    assert kh.scan_address == B + 4 * HPAGE_PMD_SIZE and kh.full_scans == 0
    kh.tick(kh.next_wake_ns)
    kh.tick(kh.next_wake_ns)
    # The third pass finished the mm (full_scans 1) and went on from its start.
    assert kh.full_scans == 1 and kh.results[ScanResult.SCAN_LACK_REFERENCED_PAGE] == 12


def test_no_pte_table_counts_one():
    sim = _sim(pages_to_scan=HPAGE_PMD_NR)
    mm = sim.new_mm()
    sim.mmap(mm, B, 64 * HPAGE_PMD_SIZE)
    sim.khugepaged.tick(0)
    # 64 empty PMDs cost 64 units of progress: the whole mm in one pass.
    assert sim.khugepaged.results[ScanResult.SCAN_NO_PTE_TABLE] == 64
    assert sim.khugepaged.full_scans == 1


def test_mm_slots_round_robin_and_pages_collapsed():
    sim = _sim(pages_to_scan=HPAGE_PMD_NR)
    a = _populated_mm(sim, 2, start=B)
    b = _populated_mm(sim, 2, start=2 * B)
    kh = sim.khugepaged
    seen = []
    for _ in range(4):
        kh.tick(kh.next_wake_ns)
        seen.append(sum(1 for m in (a, b) for e in m.pmds.values() if e.kind == "huge"))
    assert sim.nr_pmd_mapped(a, B, B + 2 * HPAGE_PMD_SIZE) == 2
    assert sim.nr_pmd_mapped(b, 2 * B, 2 * B + 2 * HPAGE_PMD_SIZE) == 2
    assert seen == [1, 2, 3, 4]                 # one collapse per pass, a then b
    assert kh.pages_collapsed == 4 and kh.full_scans == 0   # each pass left after a collapse
    kh.tick(kh.next_wake_ns)
    assert kh.full_scans >= 1
    assert sim.vmstat["thp_collapse_alloc"] == 4


def test_alloc_failure_sleeps_once_then_ends_the_pass():
    sim = _sim(pages_to_scan=8 * HPAGE_PMD_NR, alloc_sleep_millisecs=60000)
    _populated_mm(sim, 4)
    sim.alloc_fail_orders = {9}
    kh = sim.khugepaged
    kh.tick(0)
    assert kh.alloc_sleeps == 1
    assert sim.vmstat["thp_collapse_alloc_failed"] == 2
    assert kh.cc.now_ns >= 60000 * NS_PER_MS
    assert kh.next_wake_ns >= (60000 + 10000) * NS_PER_MS


@pytest.mark.parametrize("enabled,sizes,flags,registered", [
    ("never", {}, VM_WRITE, False),
    ("madvise", {}, VM_WRITE, False),
    ("madvise", {}, VM_WRITE | VM_HUGEPAGE, True),
    ("never", {4: "always", 9: "never"}, VM_WRITE, True),        # mTHP-only config
    ("always", {}, VM_WRITE | VM_NOHUGEPAGE, False),
])
def test_registration_rules(enabled, sizes, flags, registered):
    thp = ThpSettings(enabled=enabled)
    thp.hugepages.update(sizes)
    sim = SimKernel(thp)
    mm = sim.new_mm()
    sim.mmap(mm, B, 4 * HPAGE_PMD_SIZE, flags=flags)
    assert (mm in sim.khugepaged.mm_slots) == registered


def test_small_vma_is_never_collapsed_by_khugepaged():
    """Only whole aligned PMD ranges inside the VMA are scanned, even for mTHP."""
    thp = ThpSettings(enabled="never")
    thp.hugepages[2] = "always"
    sim = SimKernel(thp, use_zero_page=False)
    mm = sim.new_mm()
    thp.hugepages[2] = "never"
    sim.mmap(mm, B, 16 * PAGE_SIZE)
    sim.fault_range(mm, B, 16)
    thp.hugepages[2] = "always"
    sim.khugepaged.khugepaged_enter_vma(mm, mm.vmas[0])
    sim.khugepaged.tick(10**10)
    assert sim.mapping_sizes(mm, B, B + HPAGE_PMD_SIZE) == {0: 16}


def test_exit_removes_the_slot_and_moves_the_cursor():
    sim = _sim(pages_to_scan=HPAGE_PMD_NR)
    a = _populated_mm(sim, 3, young=False)
    b = _populated_mm(sim, 1, start=2 * B, young=False)
    kh = sim.khugepaged
    kh.tick(0)
    assert kh.scan_mm is a
    sim.exit_mm(a)
    assert kh.mm_slots == [b] and kh.scan_mm is b


def test_young_aging_option_needs_a_fresh_access():
    """With cc.clear_young (reclaim-aging stand-in), a PMD nobody touched since the last
    visit lacks referenced PTEs; one access makes it collapsible again."""
    sim = _sim(pages_to_scan=HPAGE_PMD_NR)
    mm = _populated_mm(sim, 1)
    kh = sim.khugepaged
    kh.cc.clear_young = True
    folio = sim.folios[int(mm.pmds[B].ptes["folio"][7])]
    folio.pins = 1                                   # a GUP pin: SCAN_PAGE_COUNT
    kh.tick(0)
    assert kh.results[ScanResult.SCAN_PAGE_COUNT] == 1
    assert not mm.pmds[B].ptes["young"].any()        # aged after the visit
    folio.pins = 0
    kh.tick(kh.next_wake_ns)
    assert kh.results[ScanResult.SCAN_LACK_REFERENCED_PAGE] == 1
    sim.read(mm, B + 3 * PAGE_SIZE)
    kh.tick(kh.next_wake_ns)
    assert sim.nr_pmd_mapped(mm, B, B + HPAGE_PMD_SIZE) == 1


def test_thp_off_stops_the_thread_and_on_restarts_it():
    sim = _sim()
    mm = _populated_mm(sim, 1, young=False)
    kh = sim.khugepaged
    sim.thp.enabled = "never"
    kh.tick(0)
    assert kh.passes == 0 and kh.next_wake_ns is None and kh.mm_slots == [mm]
    sim.thp.enabled = "always"
    kh.start_stop(5)
    assert kh.next_wake_ns == 5 and kh.tick(5) == 1
