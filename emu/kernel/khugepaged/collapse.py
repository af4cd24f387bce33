"""collapse_huge_page() step by step (kernel-mthp.md §2), for PMD and mTHP orders.

Follows the v19 form of the khugepaged mTHP series: entered and left with the mmap
lock dropped; the whole PMD is detached by pmdp_collapse_flush even for a 16 KiB
target; isolate never modifies PTEs, so a failure reinstalls the saved table and
every PTE is as it was.  Each step advances ``cc.now_ns`` by an estimated duration
(data/collapse_costs.toml) and is recorded in the attempt's event.  The page-table
work is done on the kernel's real tables, so the hardware model walks every
state: the cleared PMD, the flush through emu.kernel.tlbflush, the huge PMD or
the set_ptes (contiguous on arm64 where the order allows).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu.arch import PAGE_SHIFT, PAGE_SIZE, PMD_NR, PMD_ORDER, PMD_SIZE
from emu.bus import EventBus
from emu.kernel.huge_memory import (
    BIT,
    THP_ORDERS_ALL_ANON,
    TVA_FORCED_COLLAPSE,
    TVA_KHUGEPAGED,
    thp_vma_allowable_orders,
    thp_vma_suitable_order,
)
from emu.kernel.khugepaged.knobs import KHUGEPAGED_MAX_PTES_LIMIT, CollapseCosts, KhugepagedKnobs
from emu.kernel.khugepaged.pte_info import (
    PTE_NONE,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
    decode_entries,
    pmd_kind,
    read_ptes,
)
from emu.kernel.khugepaged.results import ScanResult
from emu.kernel.vma import VM_DROPPABLE, VM_WRITE, VMA, vm_prot

S = ScanResult
PMD_MASK = ~(PMD_SIZE - 1)
COLLAPSE_STRATEGIES = ("pmd", "pte", "unsafe-noflush", "unsafe-nonatomic")
# A collapse as steps: yields the simulated time its next step begins, returns a result.
Steps = Generator[int, None, ScanResult]
KHUGEPAGED_MIN_MTHP_ORDER = 2

MTHP_NONE_WARNING = ("mTHP collapse does not support max_ptes_none values other than "
                     "0 or 511, defaulting to 0.")


@dataclass
class CollapseControl:
    """struct collapse_control: who is collapsing, with what knobs, and scan state."""

    is_khugepaged: bool
    knobs: KhugepagedKnobs
    bus: EventBus
    costs: CollapseCosts
    algo: str = "v19"
    now_ns: int = 0
    progress: int = 0
    collapse_attempted: bool = False    # the last scan dropped mmap_lock to collapse
    mthp_present_ptes: np.ndarray = field(
        default_factory=lambda: np.zeros(PMD_NR, dtype=np.bool_))
    # v5: one bit per KHUGEPAGED_MIN_MTHP_ORDER chunk of 4 PTEs (128 bits).
    mthp_bitmap: np.ndarray = field(default_factory=lambda: np.zeros(128, dtype=np.bool_))
    # "mm/khugepaged: fix PMD collapse swap PTE accounting" (linux-next, after v19; from
    # Lance Yang's review of v19 11/14): the PMD-order pre-check of mthp_collapse()
    # counts the swap PTEs the scan accepted as occupied.  False = v19 as posted.
    pmd_precheck_counts_swap: bool = True
    # Stand-in for reclaim's LRU aging: if set, the isolate step test-and-clears the
    # PTE young bits it counted, so a page untouched since the last visit counts as
    # not referenced next time.  The kernel's scan itself only tests (docs/khugepaged.md).
    clear_young: bool = False
    # How the collapse stops the other walkers (--collapse-strategy): "pmd" clears and
    # flushes the whole PMD (upstream); "pte" clears and flushes only the target PTEs,
    # keeping their values to restore; "unsafe-noflush" clears the PMD without any
    # flush, to prove the integrity oracle; "unsafe-nonatomic" is "pte" with a plain
    # read of the PTEs one step before a plain clear, so a hardware A/D update in
    # between is lost (the race the atomic get-and-clear closes).
    strategy: str = "pmd"
    # Failure injection (tests): "isolate" fails the isolate step, "copy" the copy.
    fail_at: str | None = None

    def step(self, ns: int) -> None:
        self.now_ns += int(ns)


# ---------------------------------------------------------------- limits (§1.5)

def collapse_max_ptes_none(cc: CollapseControl, vma: VMA | None, order: int) -> int:
    """How many none/zero PTEs a range of 2**order may hold (v19 03/14 + fixups)."""
    if vma is not None and vma.uffd_armed:
        return 0
    if not cc.is_khugepaged:
        return PMD_NR
    sysfs = cc.knobs.max_ptes_none
    if order == PMD_ORDER:
        return sysfs
    if cc.algo == "v5":
        # v5: the PMD limit scaled down by order (the cause of the creep, §1.6).
        return sysfs >> (PMD_ORDER - order)
    if sysfs == KHUGEPAGED_MAX_PTES_LIMIT:
        return (1 << order) - 1
    if sysfs != 0:
        cc.bus.warn_once(MTHP_NONE_WARNING, cc.now_ns)
    return 0


def collapse_max_ptes_swap(cc: CollapseControl, order: int) -> int:
    if not cc.is_khugepaged:
        return PMD_NR
    return cc.knobs.max_ptes_swap if order == PMD_ORDER else 0


def collapse_max_ptes_shared(cc: CollapseControl, order: int) -> int:
    if not cc.is_khugepaged:
        return PMD_NR
    return cc.knobs.max_ptes_shared if order == PMD_ORDER else 0


def count_collapse_event(k: Any, order: int, vm_event: str, mthp_stat: str) -> None:
    """The mTHP stat always, the vm event for PMD order only (count_collapse_event())."""
    if order == PMD_ORDER:
        k.stats.count_vm_event(vm_event)
    k.stats.count_mthp_stat(order, mthp_stat)


# ---------------------------------------------------------------- eligibility (§1.2)

def collapse_possible_orders(k: Any, mm: Any, vma: VMA, tva: int) -> int:
    """collapse_possible_orders(): all anon orders for khugepaged, PMD otherwise."""
    mask = THP_ORDERS_ALL_ANON if (tva == TVA_KHUGEPAGED and vma.is_anon) else BIT(PMD_ORDER)
    return thp_vma_allowable_orders(vma, tva, mask, k.config, mm.thp_disabled)


def collapse_possible(k: Any, mm: Any, vma: VMA, tva: int) -> bool:
    return bool(collapse_possible_orders(k, mm, vma, tva))


def hugepage_vma_revalidate(k: Any, mm: Any, address: int, expect_anon: bool,
                            cc: CollapseControl, order: int) -> tuple[ScanResult, VMA | None]:
    """Re-find the VMA after the lock was dropped and check it can take 2**order."""
    cc.step(cc.costs.revalidate_ns)
    if mm.exited or mm.thp_disabled:
        return S.SCAN_ANY_PROCESS, None
    vma = mm.vmas.find(address)
    if vma is None:
        return S.SCAN_VMA_NULL, None
    # v19 01/14: always the whole PMD, since the collapse detaches the whole table.
    if not thp_vma_suitable_order(vma, address, PMD_ORDER):
        return S.SCAN_ADDRESS_RANGE, None
    tva = TVA_KHUGEPAGED if cc.is_khugepaged else TVA_FORCED_COLLAPSE
    if not thp_vma_allowable_orders(vma, tva, BIT(order), k.config, mm.thp_disabled):
        return S.SCAN_VMA_CHECK, None
    if expect_anon and (not vma.is_anon or not vma.anon_vma):
        return S.SCAN_PAGE_ANON, None
    return S.SCAN_SUCCEED, vma


def find_pmd_or_thp_or_none(k: Any, mm: Any, pmd_addr: int) -> ScanResult:
    kind = pmd_kind(k, mm, pmd_addr)
    if kind == "huge":
        return S.SCAN_PMD_MAPPED
    if kind != "table":
        return S.SCAN_NO_PTE_TABLE
    return S.SCAN_SUCCEED


# ---------------------------------------------------------------- steps

def alloc_charge_folio(k: Any, cc: CollapseControl,
                       order: int) -> tuple[ScanResult, Any]:
    """Allocate the target folio (the GFP_TRANSHUGE vs _LIGHT choice of defrag is not
    modelled: the buddy has no compaction to skip)."""
    folio = k.folio_alloc(order, anon=True)
    cc.step(cc.costs.alloc_base_ns + cc.costs.alloc_per_page_ns * (1 << order))
    if folio is None:
        count_collapse_event(k, order, "thp_collapse_alloc_failed", "collapse_alloc_failed")
        return S.SCAN_ALLOC_HUGE_PAGE_FAIL, None
    count_collapse_event(k, order, "thp_collapse_alloc", "collapse_alloc")
    return S.SCAN_SUCCEED, folio


def collapse_huge_page_swapin(k: Any, mm: Any, vma: VMA, start_addr: int,
                              referenced: int, cc: CollapseControl, order: int) -> ScanResult:
    """__collapse_huge_page_swapin(): swap in the range (PMD); mTHP bails at a swap PTE."""
    pmd_addr = start_addr & PMD_MASK
    first = (start_addr - pmd_addr) >> PAGE_SHIFT
    ptes = read_ptes(k, mm, pmd_addr)
    swapped_in = 0
    result = S.SCAN_SUCCEED
    for i in range(first, first + (1 << order)):
        if ptes["kind"][i] != PTE_SWAP:
            continue
        if order != PMD_ORDER:
            k.stats.count_mthp_stat(order, "collapse_exceed_swap_pte")
            result = S.SCAN_EXCEED_SWAP_PTE
            break
        if not k.do_swap_page(mm, vma, pmd_addr + i * PAGE_SIZE):
            result = S.SCAN_FAIL
            break
        swapped_in += 1
        cc.step(cc.costs.swapin_page_ns)
    cc.bus.publish("mm_collapse_huge_page_swapin", cc.now_ns, mm=mm, swapped_in=swapped_in,
                   referenced=referenced, ret=result.status, order=order)
    return result


def collapse_huge_page_isolate(k: Any, mm: Any, vma: VMA, start_addr: int,
                               ptes: np.ndarray, cc: CollapseControl,
                               order: int) -> tuple[ScanResult, list[int]]:
    """__collapse_huge_page_isolate(): check and isolate the folios of the target range.

    Reads the detached table; never changes a PTE.  On failure the folios isolated so
    far are put back and the list is empty.
    """
    first = (start_addr & ~PMD_MASK) >> PAGE_SHIFT
    max_none = collapse_max_ptes_none(cc, vma, order)
    max_shared = collapse_max_ptes_shared(cc, order)
    none_or_zero = shared = referenced = 0
    writable = False
    isolated: list[int] = []
    result = S.SCAN_SUCCEED
    for i in range(first, first + (1 << order)):
        p = ptes[i]
        kind = int(p["kind"])
        if kind in (PTE_NONE, PTE_ZERO):
            none_or_zero += 1
            if none_or_zero > max_none:
                count_collapse_event(k, order, "thp_scan_exceed_none_pte",
                                     "collapse_exceed_none_pte")
                result = S.SCAN_EXCEED_NONE_PTE
                break
            continue
        if kind != PTE_PRESENT:
            result = S.SCAN_PTE_NON_PRESENT
            break
        if p["uffd_wp"]:
            result = S.SCAN_PTE_UFFD_WP
            break
        folio = int(p["folio"])
        if folio < 0:
            result = S.SCAN_PAGE_NULL
            break
        if (cc.is_khugepaged and not vma.flags & VM_DROPPABLE and p["lazyfree"]
                and not p["dirty"]):
            result = S.SCAN_PAGE_LAZYFREE           # mm tree: khugepaged only
            break
        # v5 08/12 tests the folio order before the shared count; v19 07/14 after it.
        if cc.algo == "v5" and order != PMD_ORDER and int(p["folio_order"]) >= order:
            result = S.SCAN_PTE_MAPPED_HUGEPAGE
            break
        if p["shared"]:
            shared += 1
            if shared > max_shared:
                count_collapse_event(k, order, "thp_scan_exceed_share_pte",
                                     "collapse_exceed_shared_pte")
                result = S.SCAN_EXCEED_SHARED_PTE
                break
        if order != PMD_ORDER and int(p["folio_order"]) >= order:
            result = S.SCAN_PTE_MAPPED_HUGEPAGE
            break
        if folio not in isolated:
            if p["locked"]:
                result = S.SCAN_PAGE_LOCK
                break
            if not p["refcount_ok"]:
                result = S.SCAN_PAGE_COUNT
                break
            if not p["lru"]:
                result = S.SCAN_DEL_PAGE_LRU
                break
            isolated.append(folio)
            cc.step(cc.costs.isolate_folio_ns)
        if cc.is_khugepaged and (p["young"] or p["referenced"]):
            referenced += 1
        writable |= bool(p["write"])
    if result is S.SCAN_SUCCEED and cc.algo == "v5" and not writable:
        result = S.SCAN_PAGE_RO                  # v5's 2025 base still had the check
    elif result is S.SCAN_SUCCEED and cc.is_khugepaged and not referenced:
        result = S.SCAN_LACK_REFERENCED_PAGE
    if result is S.SCAN_SUCCEED and cc.fail_at == "isolate":
        result = S.SCAN_DEL_PAGE_LRU                      # injected: isolation fails
    if result is not S.SCAN_SUCCEED:
        isolated = []                     # putback: no LRU is modelled
    cc.bus.publish("mm_collapse_huge_page_isolate", cc.now_ns, none_or_zero=none_or_zero,
                   referenced=referenced, status=result.status, order=order)
    return result, isolated


@dataclass
class CollapseAttempt:
    """What one collapse_huge_page() call did, for reports and the machine's clock."""

    mm: Any
    address: int
    order: int
    result: ScanResult = S.SCAN_FAIL
    t_start_ns: int = 0
    t_end_ns: int = 0
    # Simulated interval in which the PMD was cleared (guest walks there fault and wait).
    pmd_cleared_ns: tuple[int, int] | None = None
    steps: list[tuple[str, int]] = field(default_factory=list)
    zero_filled: int = 0
    flush_ns: int = 0
    strategy: str = "pmd"
    cleared: tuple[int, int] = (0, 0)      # the VA range whose entries were cleared


def collapse_huge_page(k: Any, mm: Any, address: int, referenced: int, unmapped: int,
                       cc: CollapseControl, order: int) -> Steps:
    """Collapse [address, address + 4K << order) into one new folio of that order.

    A generator of steps on the simulated clock: it yields the time its next step
    begins and is resumed when the machine's clock gets there, so guest accesses
    run between the steps and meet each state the page tables pass through (the
    cleared PMD, or with the ``pte`` strategy the cleared PTEs).  Its value is
    the ScanResult.
    """
    att = CollapseAttempt(mm, address, order, t_start_ns=cc.now_ns, strategy=cc.strategy)
    pmd_addr = address & PMD_MASK
    first = (address - pmd_addr) >> PAGE_SHIFT
    nr = 1 << order
    costs = cc.costs
    # PMD order replaces the table with a huge PMD, so it always detaches the table.
    by_pte = cc.strategy in ("pte", "unsafe-nonatomic") and order != PMD_ORDER

    def mark(name: str, t0: int) -> None:
        att.steps.append((name, cc.now_ns - t0))
        cc.bus.publish("emu_collapse_step", t0, mm=mm, address=address, order=order,
                       step=name, duration_ns=cc.now_ns - t0, strategy=cc.strategy)

    mm.mmap_lock = None                                   # entered with mmap_lock dropped
    yield cc.now_ns
    t = cc.now_ns
    result, folio = alloc_charge_folio(k, cc, order)
    mark("alloc", t)
    vma: VMA | None = None
    saved = None
    isolated_ok = False
    if result is S.SCAN_SUCCEED:
        yield cc.now_ns
        t = cc.now_ns
        mm.mmap_lock = "read"                             # mmap_read_lock
        cc.step(costs.mmap_lock_ns)
        result, vma = hugepage_vma_revalidate(k, mm, pmd_addr, True, cc, order)
        if result is S.SCAN_SUCCEED:
            result = find_pmd_or_thp_or_none(k, mm, pmd_addr)
        mark("revalidate", t)
    if result is S.SCAN_SUCCEED and unmapped:
        yield cc.now_ns
        t = cc.now_ns
        result = collapse_huge_page_swapin(k, mm, vma, address, referenced, cc, order)
        mark("swapin", t)
    if result is S.SCAN_SUCCEED:
        yield cc.now_ns
        t = cc.now_ns
        cc.step(2 * costs.mmap_lock_ns)                   # read unlock, write lock
        result, vma = hugepage_vma_revalidate(k, mm, pmd_addr, True, cc, order)
        if result is S.SCAN_SUCCEED:
            result = find_pmd_or_thp_or_none(k, mm, pmd_addr)   # check_pmd_still_valid
        if result is S.SCAN_SUCCEED:
            mm.mmap_lock, mm.locked_vma = "write", vma    # and vma_start_write()
        cc.step(costs.anon_vma_lock_ns)
        mark("mmap_write_lock", t)
    if result is S.SCAN_SUCCEED:
        yield cc.now_ns
        t = cc.now_ns
        stale = None
        if by_pte and cc.strategy == "unsafe-nonatomic":
            # ptep_get() of each target PTE, then (a step later) a plain clear: the
            # other CPUs' walkers may set A/D in between.
            stale = [k.pt.get_pte(mm, address + (j << PAGE_SHIFT)) for j in range(nr)]
            cc.step(costs.pmd_lock_ns)
            mark("pte_read", t)
            yield cc.now_ns
            t = cc.now_ns
        cc.step(costs.mmu_notifier_ns + costs.pmd_lock_ns)
        if by_pte:
            saved, flush_ns = ptep_collapse_flush(k, mm, address, nr, cc.strategy, stale)
        else:
            saved, flush_ns = pmdp_collapse_flush(k, mm, pmd_addr, cc.strategy)
        att.flush_ns = flush_ns if flush_ns else costs.flush_fallback_ns
        att.cleared = mm.collapse_cleared = saved["cleared"]
        mm.collapse_saved = saved
        cc.step(att.flush_ns)
        cleared_at = t
        mark("pte_clear_flush" if by_pte else "pmdp_collapse_flush", t)
        yield cc.now_ns
        t = cc.now_ns
        ptes = decode_entries(k, saved["entries"], first, nr)
        result, isolated = collapse_huge_page_isolate(k, mm, vma, address, ptes, cc, order)
        mark("isolate", t)
        if result is S.SCAN_SUCCEED and cc.fail_at == "copy":
            result = S.SCAN_COPY_MC                       # injected: a poisoned source page
        if result is not S.SCAN_SUCCEED:
            yield cc.now_ns
            t = cc.now_ns
            restore(k, mm, saved)                         # rollback: every entry as it was
            cc.step(costs.rollback_ns)
            mark("rollback", t)
        else:
            isolated_ok = True
            yield cc.now_ns
            t = cc.now_ns                                 # the sources as they are now
            att.zero_filled = collapse_copy(k, mm, saved, folio, first, nr)
            cc.step(costs.copy_page_ns * (nr - att.zero_filled)
                    + costs.zero_page_ns * att.zero_filled)
            mark("copy", t)
            yield cc.now_ns
            t = cc.now_ns
            if order == PMD_ORDER:
                install_pmd(k, mm, vma, pmd_addr, folio, saved)
            else:
                install_ptes(k, mm, vma, address, folio, order, saved)
            folio = None
            cc.step(costs.install_ns + costs.pmd_lock_ns)
            mark("install", t)
        att.pmd_cleared_ns = (cleared_at, cc.now_ns)
        mm.collapse_cleared = mm.collapse_saved = None
        cc.step(costs.mmap_lock_ns)                        # mmap_write_unlock
    if folio is not None:
        k.folio_free(folio)
    mm.mmap_lock = mm.locked_vma = None
    att.result = result
    att.t_end_ns = cc.now_ns
    cc.bus.publish("mm_collapse_huge_page", cc.now_ns, mm=mm, isolated=isolated_ok,
                   status=result.status, order=order, address=address, attempt=att)
    return result


def run_steps(steps: Steps) -> Any:
    """Run a generator of steps to its end at once (a caller that holds the CPU:
    MADV_COLLAPSE in the caller's context); its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def range_addr(pmd_addr: int, offset: int) -> int:
    return pmd_addr + offset * PAGE_SIZE


# ---------------------------------------------------------------- page-table work

def pmdp_collapse_flush(k: Any, mm: Any, pmd_addr: int,
                        strategy: str = "pmd") -> tuple[dict, int]:
    """Clear the PMD (detaching its PTE table) and flush the 2 MiB; (saved, cost_ns).

    ``unsafe-noflush`` skips the flush: TLBs keep translations into the detached
    table's pages, which is what the integrity oracle must catch."""
    store = k.physmem.pgtables
    slot = k.pt.pmd_slot(mm, pmd_addr)
    d = store.read(*slot)
    store.write(slot[0], slot[1], 0)                      # pmdp_huge_get_and_clear
    delta = {}
    if strategy != "unsafe-noflush":
        delta = k._flush(mm, pmd_addr, pmd_addr + PMD_SIZE, PAGE_SHIFT, False)  # flush_tlb_range
    k.stats.count_vm_event("emu_collapse_flush")
    if strategy != "unsafe-noflush":
        # tlb_remove_table_sync_one() (collapse_huge_page, after the flush): IPIs to
        # every other online CPU, counted; their time is not yet in the step costs
        k.tlb_remove_table_sync_one()
    table = k.arch.pfn(d)
    return ({"kind": "pmd", "slot": slot, "pmd": d, "table": table,
             "entries": store.table(table), "cleared": (pmd_addr, pmd_addr + PMD_SIZE),
             "flush": delta}, k.khugepaged.costs.flush_ns(delta))


def ptep_collapse_flush(k: Any, mm: Any, address: int, nr: int, strategy: str,
                        stale: list[int] | None = None) -> tuple[dict, int]:
    """The ``pte`` strategy: get-and-clear only the target range's PTEs in the table
    that stays attached, keeping every old value, and flush only that range (no page
    table is detached, so no tlb_remove_table_sync_one).  With ``stale`` (the
    unsafe-nonatomic variant) the values kept are those read earlier, not those the
    clear removed."""
    pmd_addr = address & PMD_MASK
    first = (address - pmd_addr) >> PAGE_SHIFT
    table = k.pt.pte_table(mm, pmd_addr)
    old = [k.pt.clear_pte(mm, address + (j << PAGE_SHIFT)) for j in range(nr)]
    if stale is not None:
        lost = sum(1 for a, b in zip(old, stale, strict=True)
                   if a and b and k.arch.dirty(a) and not k.arch.dirty(b))
        if lost:
            k.stats.count_vm_event("emu_collapse_dirty_lost", lost)
        old = stale
    entries = k.physmem.pgtables.table(table).copy()     # what isolate and copy read
    entries[first:first + nr] = old
    end = address + (nr << PAGE_SHIFT)
    delta = k._flush(mm, address, end, PAGE_SHIFT, True)
    k.stats.count_vm_event("emu_collapse_flush")
    return ({"kind": "pte", "table": table, "entries": entries, "old": old,
             "first": first, "cleared": (address, end), "flush": delta},
            k.khugepaged.costs.flush_ns(delta))


def pmd_populate(k: Any, saved: dict) -> None:
    """Put the detached table back where it was (rollback, or before set_ptes)."""
    store, slot = k.physmem.pgtables, saved["slot"]
    assert store.read(*slot) == 0, "pmd_populate over a live PMD"
    store.write(slot[0], slot[1], saved["pmd"])


def restore(k: Any, mm: Any, saved: dict) -> None:
    """Rollback: the detached table back under the PMD, or every cleared PTE back
    (arm64 contiguous blocks fold again where all their entries agree)."""
    if saved["kind"] == "pmd":
        pmd_populate(k, saved)
        return
    lo = saved["cleared"][0]
    for j, d in enumerate(saved["old"]):
        if d:
            k.pt.set_pte(mm, lo + (j << PAGE_SHIFT), d)


def collapse_copy(k: Any, mm: Any, saved: dict, folio: Any, first: int, nr: int) -> int:
    """__collapse_huge_page_copy(): copy (or zero-fill) the sources of entries
    [first, first+nr) into folio as they are now, clear those entries and drop the
    sources' rmap.  Returns the number of zero-filled pages."""
    arch, phys = k.arch, k.physmem
    tab = saved["entries"]
    zero = 0
    unmap: dict[int, list[int]] = {}
    for j in range(nr):
        d = int(tab[first + j])
        if not d or not arch.is_present(d) or arch.pfn(d) == k.zero_pfn:
            phys.zero(folio.pfn + j)                      # clear_user_highpage
            zero += 1
            continue
        pfn = arch.pfn(d)
        phys.copy(folio.pfn + j, pfn)                     # copy_mc_user_highpage
        f = k.folio_of_pfn(pfn)
        if f is not None:
            unmap.setdefault(f.pfn, []).append(pfn - f.pfn)
    tab[first:first + nr] = 0                             # ptep_clear: the sources are gone
    for head, pages in unmap.items():
        f = k.folios[head]
        for p in pages:
            k.folio_remove_rmap_ptes(f, mm, p)
    return zero


def install_pmd(k: Any, mm: Any, vma: VMA, pmd_addr: int, folio: Any, saved: dict) -> None:
    """Map the new PMD-order folio; the old table is deposited for a later split."""
    store, slot = k.physmem.pgtables, saved["slot"]
    assert store.read(*slot) == 0
    old = mm.deposit.get(pmd_addr)
    if old is not None:
        k.pt.free_table(mm, old, pte_level=True)
    mm.deposit[pmd_addr] = saved["table"]                 # pgtable_trans_huge_deposit
    w = bool(vma.flags & VM_WRITE)
    k.pt.set_pmd(mm, pmd_addr, k.arch.mk_pmd_leaf(folio.pfn, vm_prot(vma.flags),
                                                  young=True, dirty=w))
    k.folio_add_rmap_pmd(folio, mm)
    vma.anon_vma = True


def install_ptes(k: Any, mm: Any, vma: VMA, addr: int, folio: Any, order: int,
                 saved: dict) -> None:
    """set_ptes() the new mTHP folio into the table (put back first if detached)."""
    if saved["kind"] == "pmd":
        pmd_populate(k, saved)
    w = bool(vma.flags & VM_WRITE)
    desc = k.arch.mk_pte(folio.pfn, vm_prot(vma.flags), young=True, dirty=w)
    k.pt.set_ptes(mm, addr, desc, 1 << order)             # PTE_CONT where arm64 allows
    k.folio_add_rmap_ptes(folio, mm, 0, 1 << order)
    vma.anon_vma = True
