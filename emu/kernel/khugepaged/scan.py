"""collapse_scan_pmd() and the choice of collapse orders: v19 (default) and v5.

v19 (kernel-mthp.md §1.3-§1.4): one bitmap bit per PTE; swap/shared limits at PMD
order over the whole PMD; max_ptes_none raised to 511 for the scan when mTHP orders
are enabled; then a forward walk over (offset, order), highest order first, left
first.  v5 (§1.1, §1.6): one bit per 4-PTE chunk, a depth-first stack, and
max_ptes_none scaled by order, which lets collapses "creep" up to a PMD THP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from emu.arch import PAGE_SIZE, PMD_NR, PMD_ORDER
from emu.kernel.huge_memory import (
    BIT,
    THP_ORDERS_ALL_ANON,
    TVA_FORCED_COLLAPSE,
    TVA_KHUGEPAGED,
    thp_vma_allowable_orders,
)
from emu.kernel.khugepaged.collapse import (
    KHUGEPAGED_MIN_MTHP_ORDER,
    CollapseControl,
    Steps,
    collapse_huge_page,
    collapse_max_ptes_none,
    collapse_max_ptes_shared,
    collapse_max_ptes_swap,
    collapse_possible_orders,
    find_pmd_or_thp_or_none,
)
from emu.kernel.khugepaged.knobs import KHUGEPAGED_MAX_PTES_LIMIT
from emu.kernel.khugepaged.pte_info import (
    PTE_NONE,
    PTE_NONPRESENT,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
    pmd_kind,
    read_ptes,
)
from emu.kernel.khugepaged.results import ScanResult
from emu.kernel.vma import VM_DROPPABLE, VMA

# collapse_huge_page()'s signature, so the order walks can be driven with another
# (tests give them a recorder of the candidates they choose); a generator of steps.
CollapseFn = Callable[..., Steps]

S = ScanResult


def scan_ptes(ptes: np.ndarray, max_none: int, max_swap: int, max_shared: int,
              is_khugepaged: bool, droppable: bool = False) -> tuple[ScanResult, int, dict]:
    """The per-PTE loop of collapse_scan_pmd(), vectorised.

    The checks and their order are the mm tree's (mm/khugepaged.c collapse_scan_pmd()
    with the v19 series, mid-2026): every non-present entry, swap or not, counts as
    unmapped against max_swap (a migration entry fails only later, in isolate); a
    lazy-free folio whose PTE is clean stops khugepaged (not MADV_COLLAPSE) unless the
    VMA is VM_DROPPABLE.  Returns (result, PTEs examined, counts).  Every PTE before
    the first failing one passed every check, so cumsum reproduces the loop exactly.
    """
    kind = ptes["kind"]
    none_or_zero = (kind == PTE_NONE) | (kind == PTE_ZERO)
    swap = kind == PTE_SWAP
    unmapped = swap | (kind == PTE_NONPRESENT)
    present = kind == PTE_PRESENT
    has_folio = present & (ptes["folio"] >= 0)
    anon = has_folio & ptes["anon"]
    shared = anon & ptes["shared"]
    skip_lazyfree = is_khugepaged and not droppable
    lazyfree = has_folio & ptes["lazyfree"] & ~ptes["dirty"] & skip_lazyfree
    # The per-PTE checks, in the order collapse_scan_pmd() makes them.
    checks = [
        (none_or_zero & (np.cumsum(none_or_zero) > max_none), S.SCAN_EXCEED_NONE_PTE),
        (unmapped & (np.cumsum(unmapped) > max_swap), S.SCAN_EXCEED_SWAP_PTE),
        ((unmapped | present) & ptes["uffd_wp"], S.SCAN_PTE_UFFD_WP),
        (present & ~has_folio, S.SCAN_PAGE_NULL),
        (lazyfree, S.SCAN_PAGE_LAZYFREE),
        (has_folio & ~ptes["anon"], S.SCAN_PAGE_ANON),
        (shared & (np.cumsum(shared) > max_shared), S.SCAN_EXCEED_SHARED_PTE),
        (present & ~ptes["lru"], S.SCAN_PAGE_LRU),
        (present & ptes["locked"], S.SCAN_PAGE_LOCK),
        (present & ~ptes["refcount_ok"], S.SCAN_PAGE_COUNT),
    ]
    code = np.select([c for c, _ in checks], np.arange(1, len(checks) + 1), 0)
    bad = np.flatnonzero(code)
    end = int(bad[0]) if bad.size else PMD_NR
    counts = {
        "none_or_zero": int(none_or_zero[:end + 1].sum()),
        "unmapped": int(unmapped[:end + 1].sum()),
        "shared": int(shared[:end + 1].sum()),
        "referenced": int((present & (ptes["young"] | ptes["referenced"]))[:end].sum())
        if is_khugepaged else 0,
    }
    if bad.size:
        return checks[int(code[end]) - 1][1], end + 1, counts
    return S.SCAN_SUCCEED, PMD_NR, counts


def collapse_scan_pmd(k: Any, mm: Any, vma: VMA, start_addr: int,
                      cc: CollapseControl) -> Steps:
    """Scan one PMD range and, if it qualifies, collapse it (PMD or mTHP orders).

    A generator of steps (collapse.collapse_huge_page): the scan is one step, each
    collapse attempt several.  Adds the PTEs examined to ``cc.progress`` (1 if there
    is no PTE table).
    """
    yield cc.now_ns
    cc.step(cc.costs.scan_pmd_ns)
    cc.collapse_attempted = False
    result = find_pmd_or_thp_or_none(k, mm, start_addr)
    if result is not S.SCAN_SUCCEED:
        cc.progress += 1
        cc.bus.publish("mm_khugepaged_scan_pmd", cc.now_ns, mm=mm, address=start_addr,
                       referenced=0, none_or_zero=0, status=result.status, unmapped=0)
        return result
    cc.mthp_present_ptes[:] = False
    tva = TVA_KHUGEPAGED if cc.is_khugepaged else TVA_FORCED_COLLAPSE
    max_none = collapse_max_ptes_none(cc, vma, PMD_ORDER)
    if cc.algo == "v5":
        # v5 07/12: every anon order thp_vma_allowable_orders() allows, for MADV_COLLAPSE
        # too (no TVA_ENFORCE_SYSFS there: every size); unless the PMD order is the only
        # one, the scan applies no none limit at all (only userfaultfd's).
        enabled_orders = thp_vma_allowable_orders(vma, tva, THP_ORDERS_ALL_ANON, k.config,
                                                  mm.thp_disabled)
        if enabled_orders != BIT(PMD_ORDER):
            max_none = 0 if vma.uffd_armed else PMD_NR
    else:
        enabled_orders = collapse_possible_orders(k, mm, vma, tva)
        if enabled_orders != BIT(PMD_ORDER):
            max_none = KHUGEPAGED_MAX_PTES_LIMIT
    ptes = read_ptes(k, mm, start_addr)
    result, examined, counts = scan_ptes(
        ptes, max_none, collapse_max_ptes_swap(cc, PMD_ORDER),
        collapse_max_ptes_shared(cc, PMD_ORDER), cc.is_khugepaged,
        bool(vma.flags & VM_DROPPABLE))
    cc.progress += examined
    cc.step(cc.costs.scan_pte_ns * examined)
    if result is S.SCAN_EXCEED_NONE_PTE:
        k.stats.count_vm_event("thp_scan_exceed_none_pte")
        k.stats.count_mthp_stat(PMD_ORDER, "collapse_exceed_none_pte")
    elif result is S.SCAN_EXCEED_SWAP_PTE:
        k.stats.count_vm_event("thp_scan_exceed_swap_pte")
        k.stats.count_mthp_stat(PMD_ORDER, "collapse_exceed_swap_pte")
    elif result is S.SCAN_EXCEED_SHARED_PTE:
        k.stats.count_vm_event("thp_scan_exceed_share_pte")
        k.stats.count_mthp_stat(PMD_ORDER, "collapse_exceed_shared_pte")
    referenced, unmapped = counts["referenced"], counts["unmapped"]
    if (result is S.SCAN_SUCCEED and cc.algo == "v5"
            and not ((ptes["kind"] == PTE_PRESENT) & ptes["write"]).any()):
        result = S.SCAN_PAGE_RO                  # v5's 2025 base still had the check
    elif result is S.SCAN_SUCCEED and cc.is_khugepaged and (
            referenced == 0 or (unmapped and referenced < PMD_NR // 2)):
        result = S.SCAN_LACK_REFERENCED_PAGE
    scan_status = result.status
    if result is S.SCAN_SUCCEED:
        cc.collapse_attempted = True
        cc.mthp_present_ptes[:] = ptes["kind"] == PTE_PRESENT
        before = mapping_census(ptes)
        if cc.algo == "v5":
            cc.mthp_bitmap[:] = v5_chunk_bitmap(
                (ptes["kind"] == PTE_NONE) | (ptes["kind"] == PTE_ZERO),
                cc.knobs.max_ptes_none)
            result = yield from mthp_collapse_v5(k, mm, start_addr, referenced, unmapped,
                                                 cc, enabled_orders)
        else:
            result = yield from mthp_collapse(k, mm, start_addr, referenced, unmapped, cc,
                                              enabled_orders)
        kind = pmd_kind(k, mm, start_addr)
        after = ({PMD_ORDER: PMD_NR} if kind == "huge" else
                 mapping_census(read_ptes(k, mm, start_addr)) if kind == "table" else {})
        if after != before:
            cc.bus.publish("emu_collapse_census", cc.now_ns, mm=mm, address=start_addr,
                           before=before, after=after)
    if cc.clear_young and cc.is_khugepaged and pmd_kind(k, mm, start_addr) == "table":
        live = read_ptes(k, mm, start_addr)
        for i in np.flatnonzero(live["young"]):
            ptep_test_and_clear_young(k, mm, start_addr + int(i) * PAGE_SIZE)
    cc.bus.publish("mm_khugepaged_scan_pmd", cc.now_ns, mm=mm, address=start_addr,
                   referenced=referenced, none_or_zero=counts["none_or_zero"],
                   status=result.status, scan_status=scan_status, unmapped=unmapped)
    return result


def mapping_census(ptes: np.ndarray) -> dict[int, int]:
    """Pages of one PMD range by the order of the folio mapping them (-1: zero page)."""
    out: dict[int, int] = {}
    present = ptes["kind"] == PTE_PRESENT
    orders, counts = np.unique(ptes["folio_order"][present & (ptes["folio"] >= 0)],
                               return_counts=True)
    for o, n in zip(orders.tolist(), counts.tolist(), strict=True):
        out[o] = n
    zero = int((ptes["kind"] == PTE_ZERO).sum())
    if zero:
        out[-1] = zero
    return out


def max_order_from_offset(offset: int) -> int:
    """The largest order the PTE offset is naturally aligned to (PMD order at 0)."""
    if offset == 0:
        return PMD_ORDER
    return min((offset & -offset).bit_length() - 1, PMD_ORDER)


def mthp_collapse(k: Any, mm: Any, pmd_addr: int, referenced: int, unmapped: int,
                  cc: CollapseControl, enabled_orders: int,
                  collapse: CollapseFn = collapse_huge_page) -> Steps:
    """v19 11/14 + 12/14: the forward walk over the present-PTE bitmap."""
    bitmap = cc.mthp_present_ptes
    offset, order = 0, PMD_ORDER
    collapsed = 0
    alloc_failed = False
    last = S.SCAN_FAIL
    while offset < PMD_NR:
        n = 1 << order
        lower = True
        if enabled_orders & BIT(order):
            limit = collapse_max_ptes_none(cc, None, order)
            occupied = int(bitmap[offset:offset + n].sum())
            if order == PMD_ORDER and cc.pmd_precheck_counts_swap:
                occupied += unmapped
            if occupied >= n - limit:
                r = yield from collapse(k, mm, pmd_addr + offset * PAGE_SIZE, referenced,
                                        unmapped, cc, order)
                if r is S.SCAN_SUCCEED:
                    collapsed += n
                    lower = False
                elif r is S.SCAN_PTE_MAPPED_HUGEPAGE:
                    lower = False
                elif r.try_lower:
                    last = r
                    alloc_failed |= r is S.SCAN_ALLOC_HUGE_PAGE_FAIL
                else:
                    last = r
                    break
        below = enabled_orders & (BIT(order) - 1) & ~(BIT(KHUGEPAGED_MIN_MTHP_ORDER) - 1)
        if lower and order > KHUGEPAGED_MIN_MTHP_ORDER and below:
            order -= 1
            continue
        offset += n
        order = max_order_from_offset(offset)
    if collapsed:
        return S.SCAN_SUCCEED
    return S.SCAN_ALLOC_HUGE_PAGE_FAIL if alloc_failed else last


V5_CHUNK = 1 << KHUGEPAGED_MIN_MTHP_ORDER       # 4 PTEs per bitmap bit
V5_BITS = PMD_NR // V5_CHUNK               # 128


def v5_chunk_bitmap(none: np.ndarray, max_ptes_none: int) -> np.ndarray:
    """The chunk bitmap as v5 07/12 khugepaged_scan_pmd() fills it.

    At the top of every 4-PTE chunk the loop tests the none/zero count of the chunk
    before it against ``khugepaged_max_ptes_none >> 7`` and sets the bit of the chunk
    it is entering, then resets the count: bit 0 is always set, bit k (k >= 1) says
    chunk k-1 had few enough none PTEs, and the last chunk's count is never tested.
    Swap PTEs do not count as none (the loop's swap branch comes first).
    """
    scaled_none = max_ptes_none >> (PMD_ORDER - KHUGEPAGED_MIN_MTHP_ORDER)
    counts = none.reshape(V5_BITS, V5_CHUNK).sum(axis=1)
    bits = np.ones(V5_BITS, dtype=np.bool_)
    bits[1:] = counts[:-1] <= scaled_none
    return bits


# v5 09/12 "avoid unnecessary mTHP collapse attempts": after these results the walk
# goes on to the halves; after any other failure it stops (break).
V5_TRY_LOWER = frozenset({
    S.SCAN_EXCEED_NONE_PTE, S.SCAN_EXCEED_SWAP_PTE, S.SCAN_EXCEED_SHARED_PTE,
    S.SCAN_PTE_NON_PRESENT, S.SCAN_PTE_UFFD_WP, S.SCAN_ALLOC_HUGE_PAGE_FAIL,
    S.SCAN_CGROUP_CHARGE_FAIL, S.SCAN_COPY_MC, S.SCAN_PAGE_LOCK, S.SCAN_PAGE_COUNT})


def mthp_collapse_v5(k: Any, mm: Any, pmd_addr: int, referenced: int,
                     unmapped: int, cc: CollapseControl, enabled_orders: int,
                     collapse: CollapseFn = collapse_huge_page) -> Steps:
    """v5 06/12 khugepaged_scan_bitmap() with 09/12: depth-first over cc.mthp_bitmap.

    The threshold uses the sysfs max_ptes_none for every caller; a success skips the
    range's halves; the walk returns how much it collapsed, which 07/12 turns into
    SCAN_SUCCEED or SCAN_FAIL, so an allocation failure never reaches khugepaged's
    alloc_sleep back-off.
    """
    m = cc.knobs.max_ptes_none
    bitmap = cc.mthp_bitmap
    is_pmd_only = enabled_orders == BIT(PMD_ORDER)
    always = k.config.orders_with("always")
    stack = [(PMD_ORDER - KHUGEPAGED_MIN_MTHP_ORDER, 0)]
    collapsed = 0
    while stack:
        chunk_order, chunk_off = stack.pop()
        order = chunk_order + KHUGEPAGED_MIN_MTHP_ORDER
        num_chunks = 1 << chunk_order
        if enabled_orders & BIT(order):
            bits_set = int(bitmap[chunk_off:chunk_off + num_chunks].sum())
            threshold = (PMD_NR - m - 1) >> (PMD_ORDER - chunk_order)
            if bits_set > threshold or is_pmd_only or always & BIT(order):
                r = yield from collapse(k, mm, pmd_addr + chunk_off * V5_CHUNK * PAGE_SIZE,
                                        referenced, unmapped, cc, order)
                if r is S.SCAN_SUCCEED:
                    collapsed += 1 << order
                    continue
                if r not in V5_TRY_LOWER:
                    break
        if chunk_order > 0:
            stack.append((chunk_order - 1, chunk_off + num_chunks // 2))
            stack.append((chunk_order - 1, chunk_off))
    return S.SCAN_SUCCEED if collapsed else S.SCAN_FAIL


def ptep_test_and_clear_young(k: Any, mm: Any, addr: int) -> bool:
    """Clear the PTE's accessed bit (no flush, as ptep_clear_flush_young on x86)."""
    store = k.physmem.pgtables
    s = k.pt.pte_slot(mm, addr)
    if s is None:
        return False
    d = store.read(*s)
    if not d or not k.arch.is_present(d) or not k.arch.young(d):
        return False
    store.write(s[0], s[1], k.arch.mkold(d))
    return True
