"""khugepaged as a thread in simulated time: knobs, wake-ups, progress, round robin,
registration, allocation back-off — on the Kernel emu runs, with its Hardware."""

import pytest
from scenario import ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, Scenario

from emu.errors import EmuError
from emu.kernel.config import ThpConfig, order_to_kb
from emu.kernel.khugepaged.daemon import NS_PER_MS
from emu.kernel.khugepaged.knobs import KhugepagedKnobs
from emu.kernel.khugepaged.results import ScanResult

B = 1 << 30


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


def test_default_knobs_are_the_kernels():
    k = KhugepagedKnobs.preset("default")
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
        KhugepagedKnobs.preset().set(name, value)
    with pytest.raises(EmuError):
        KhugepagedKnobs.preset("nope")


def _sim(arch, **knobs):
    sim = Scenario(arch, thp=ThpConfig(enabled="always", use_zero_page=False),
                   preset="default")
    for n, v in knobs.items():
        sim.knobs.set(n, v)
    return sim


def _populated_mm(sim, nr_pmds, start=B, young=True):
    """A process with nr_pmds PMD ranges written at 4 KiB, then registered."""
    p = sim.new_proc()
    sim.thp.enabled = "never"
    sim.mmap(p, start, nr_pmds * HPAGE_PMD_SIZE)
    sim.fault_range(p, start, nr_pmds * HPAGE_PMD_NR)
    sim.thp.enabled = "always"
    if not young:
        sim.mkold(p, start, start + nr_pmds * HPAGE_PMD_SIZE)
    sim.register(p)
    return p


def test_wakes_every_scan_sleep_millisecs(arch):
    sim = _sim(arch)
    _populated_mm(sim, 1, young=False)
    kh = sim.khugepaged
    assert kh.next_wake_ns == 0
    assert sim.tick(0) == 1
    first_end = kh.next_wake_ns - 10000 * NS_PER_MS
    assert first_end > 0                                  # the pass itself took time
    assert sim.tick(kh.next_wake_ns - 1) == 0
    assert sim.tick(kh.next_wake_ns) == 1
    assert sim.tick(kh.next_wake_ns + 4 * 10000 * NS_PER_MS + 4 * NS_PER_MS) == 5


def test_asleep_without_mms_and_woken_by_registration(arch):
    """mm/khugepaged.c __khugepaged_enter(): the first mm wakes the waiting thread; the
    mmap itself registers nothing (no anon_vma), the first PMD-order fault does
    (mm/huge_memory.c do_huge_pmd_anonymous_page() -> khugepaged_enter_vma())."""
    sim = _sim(arch)
    kh = sim.khugepaged
    assert sim.tick(10**12) == 0 and kh.next_wake_ns is None
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE, now_ns=5 * 10**9)
    assert kh.mm_slots == [] and kh.next_wake_ns is None
    sim.write(p, B)                                       # thp=always: a PMD fault
    assert kh.mm_slots == [sim.mm(p)] and kh.next_wake_ns == 5 * 10**9


def test_progress_counts_ptes_and_pages_to_scan_bounds_a_pass(arch):
    sim = _sim(arch, pages_to_scan=4 * HPAGE_PMD_NR)
    _populated_mm(sim, 10, young=False)     # every PMD: 512 PTEs examined, no collapse
    kh = sim.khugepaged
    sim.tick(0)
    assert kh.results[ScanResult.SCAN_LACK_REFERENCED_PAGE] == 4
    assert kh.scan_address == B + 4 * HPAGE_PMD_SIZE and kh.full_scans == 0
    sim.tick(kh.next_wake_ns)
    sim.tick(kh.next_wake_ns)
    # The third pass finished the mm (full_scans 1) and went on from its start.
    assert kh.full_scans == 1 and kh.results[ScanResult.SCAN_LACK_REFERENCED_PAGE] == 12


def test_no_pte_table_counts_one(arch):
    sim = _sim(arch, pages_to_scan=HPAGE_PMD_NR)
    p = sim.new_proc()
    sim.mmap(p, B, 65 * HPAGE_PMD_SIZE)
    sim.write(p, B + 64 * HPAGE_PMD_SIZE)              # a PMD THP; registers the mm
    sim.tick(0)
    # 64 empty PMDs cost 64 units of progress (the THP one more): the whole mm in one pass.
    assert sim.khugepaged.results[ScanResult.SCAN_NO_PTE_TABLE] == 64
    assert sim.khugepaged.results[ScanResult.SCAN_PMD_MAPPED] == 1
    assert sim.khugepaged.full_scans == 1


def test_mm_slots_round_robin_and_pages_collapsed(arch):
    sim = _sim(arch, pages_to_scan=HPAGE_PMD_NR)
    a = _populated_mm(sim, 2, start=B)
    b = _populated_mm(sim, 2, start=2 * B)
    kh = sim.khugepaged
    seen = []
    for _ in range(4):
        sim.tick(kh.next_wake_ns)
        seen.append([sim.nr_pmd_mapped(a, B, B + 2 * HPAGE_PMD_SIZE),
                     sim.nr_pmd_mapped(b, 2 * B, 2 * B + 2 * HPAGE_PMD_SIZE)])
    assert seen == [[1, 0], [2, 0], [2, 1], [2, 2]]   # one collapse per pass, a then b
    assert kh.pages_collapsed == 4 and kh.full_scans == 0   # each pass left after a collapse
    sim.tick(kh.next_wake_ns)
    assert kh.full_scans == 2                          # both mms scanned to their end
    assert sim.vmstat["thp_collapse_alloc"] == 4
    assert not sim.validate(a) and not sim.validate(b)


def test_alloc_failure_sleeps_once_then_ends_the_pass(arch):
    sim = _sim(arch, pages_to_scan=8 * HPAGE_PMD_NR, alloc_sleep_millisecs=60000)
    _populated_mm(sim, 4)
    sim.kernel.fail_page_alloc = {9}
    kh = sim.khugepaged
    sim.tick(0)
    assert kh.alloc_sleeps == 1
    assert sim.vmstat["thp_collapse_alloc_failed"] == 2
    assert kh.cc.now_ns >= 60000 * NS_PER_MS
    assert kh.next_wake_ns >= (60000 + 10000) * NS_PER_MS


@pytest.mark.parametrize("enabled,sizes,steps,registered", [
    ("never", {}, ("write", "MADV_HUGEPAGE"), False),     # hugepage_enabled() false
    ("madvise", {}, (), False),                           # mmap alone: no anon_vma
    ("madvise", {}, ("MADV_HUGEPAGE",), False),           # never written: no anon_vma
    ("madvise", {}, ("write", "MADV_HUGEPAGE"), True),    # hugepage_madvise()
    ("madvise", {}, ("MADV_HUGEPAGE", "write"), True),    # the PMD-order fault
    ("never", {4: "always", 9: "never"}, ("write",), False),   # mTHP faults do not
    ("never", {4: "always", 9: "never"}, ("write", "MADV_HUGEPAGE"), True),
    ("always", {}, ("MADV_NOHUGEPAGE", "write"), False),        # VM_NOHUGEPAGE
])
def test_registration_rules(arch, enabled, sizes, steps, registered):
    """khugepaged_enter_vma() (mm/khugepaged.c) as the mm tree calls it: from
    hugepage_madvise(), do_huge_pmd_anonymous_page(), VMA merges and fork; it needs
    hugepage_enabled() and collapse_possible(), whose thp_vma_allowable_orders()
    (mm/huge_memory.c) gives khugepaged nothing for a VMA without an anon_vma."""
    thp = ThpConfig(enabled=enabled, use_zero_page=False,
                    hugepages={order_to_kb(o): m for o, m in sizes.items()})
    sim = Scenario(arch, thp=thp)
    p = sim.new_proc()
    sim.mmap(p, B, 4 * HPAGE_PMD_SIZE)
    for step in steps:
        if step == "write":
            sim.write(p, B)
        else:
            sim.madvise(p, B, 4 * HPAGE_PMD_SIZE, step)
    assert (sim.mm(p) in sim.khugepaged.mm_slots) == registered


def test_registration_by_merge_and_by_fork(arch):
    """vma_merge_new_range() (mm/vma.c) calls khugepaged_enter_vma() on the merged VMA,
    which has the written neighbour's anon_vma; khugepaged_fork() registers the child
    of a registered mm (MMF_VM_HUGEPAGE)."""
    sim = Scenario(arch, thp=ThpConfig(enabled="never", use_zero_page=False))
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, 8)
    sim.kernel.thp_sysfs_store(enabled="always")
    assert sim.khugepaged.mm_slots == []                  # the store registers nothing
    sim.mmap(p, B + HPAGE_PMD_SIZE, HPAGE_PMD_SIZE)       # merges with the written VMA
    assert sim.khugepaged.mm_slots == [sim.mm(p)]
    child = sim.fork(p)
    assert sim.khugepaged.mm_slots == [sim.mm(p), sim.mm(child)]


def test_small_vma_is_never_collapsed_by_khugepaged(arch):
    """Only whole aligned PMD ranges inside the VMA are scanned, even for mTHP."""
    sim = Scenario(arch, thp=ThpConfig(enabled="never", use_zero_page=False))
    p = sim.new_proc()
    sim.mmap(p, B, 16 * PAGE_SIZE)
    sim.fault_range(p, B, 16)
    sim.set_size(2, "always")
    sim.register(p)
    sim.tick(10**10)
    assert sim.mapping_sizes(p, B, B + HPAGE_PMD_SIZE) == {0: 16}


def test_exit_removes_the_slot_and_moves_the_cursor(arch):
    sim = _sim(arch, pages_to_scan=HPAGE_PMD_NR)
    a = _populated_mm(sim, 3, young=False)
    b = _populated_mm(sim, 1, start=2 * B, young=False)
    kh = sim.khugepaged
    sim.tick(0)
    assert kh.scan_mm is sim.mm(a)
    sim.exit(a)
    assert kh.mm_slots == [sim.mm(b)] and kh.scan_mm is sim.mm(b)


def test_young_aging_option_needs_a_fresh_access(arch):
    """With cc.clear_young (reclaim-aging stand-in), a PMD nobody touched since the last
    visit lacks referenced PTEs; one access that walks makes it collapsible again."""
    sim = _sim(arch, pages_to_scan=HPAGE_PMD_NR)
    p = _populated_mm(sim, 1)
    kh = sim.khugepaged
    kh.cc.clear_young = True
    folio = sim.folio_at(p, B + 7 * PAGE_SIZE)
    folio.refcount += 1                              # a GUP pin: SCAN_PAGE_COUNT
    sim.tick(0)
    assert kh.results[ScanResult.SCAN_PAGE_COUNT] == 1
    tab = sim.ptes(p, B)
    assert not any(sim.arch.young(int(d)) for d in tab)   # aged after the visit
    folio.refcount -= 1
    sim.tick(kh.next_wake_ns)
    assert kh.results[ScanResult.SCAN_LACK_REFERENCED_PAGE] == 1
    # Clearing A/AF needs no flush, so a TLB hit would not set it again: the process
    # runs on another CPU, whose TLB is cold, and its access walks.
    p.cpu = (p.cpu + 1) % 4
    sim.read(p, B + 3 * PAGE_SIZE)
    sim.tick(kh.next_wake_ns)
    assert sim.nr_pmd_mapped(p, B, B + HPAGE_PMD_SIZE) == 1
    assert not sim.validate(p)


def test_thp_off_stops_the_thread_and_on_restarts_it(arch):
    sim = _sim(arch)
    p = _populated_mm(sim, 1, young=False)
    kh = sim.khugepaged
    sim.kernel.thp_sysfs_store(enabled="never")          # start_stop_khugepaged(): stop
    sim.tick(0)
    assert kh.passes == 0 and kh.next_wake_ns is None and kh.mm_slots == [sim.mm(p)]
    assert not kh.running
    kh.now_ns = 5
    sim.kernel.thp_sysfs_store(enabled="always")         # a new thread scans at once
    assert kh.next_wake_ns == 5 and sim.tick(5) == 1
