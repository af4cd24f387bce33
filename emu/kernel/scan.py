"""collapse_scan_pmd() and the choice of collapse orders: v19 (default) and v5.

v19 (kernel-mthp.md §1.3-§1.4): one bitmap bit per PTE; swap/shared limits at PMD
order over the whole PMD; max_ptes_none raised to 511 for the scan when mTHP orders
are enabled; then a forward walk over (offset, order), highest order first, left
first.  v5 (§1.1, §1.6): one bit per 4-PTE chunk, a depth-first stack, and
max_ptes_none scaled by order, which lets collapses "creep" up to a PMD THP.
"""

from typing import Any

import numpy as np

from emu.kernel.collapse import (
    CollapseControl,
    collapse_huge_page,
    collapse_max_ptes_none,
    collapse_max_ptes_shared,
    collapse_max_ptes_swap,
    collapse_possible_orders,
    find_pmd_or_thp_or_none,
)
from emu.kernel.collapse_ops import (
    BIT,
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    KHUGEPAGED_MAX_PTES_LIMIT,
    KHUGEPAGED_MIN_MTHP_ORDER,
    PAGE_SIZE,
    PTE_NONE,
    PTE_NONPRESENT,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
    TVA_FORCED_COLLAPSE,
    TVA_KHUGEPAGED,
    CollapseOps,
    VmaInfo,
)
from emu.kernel.scan_result import MTHP_TRY_LOWER, ScanResult

S = ScanResult

# Per-PTE failure codes, in the order collapse_scan_pmd() checks them (0 = passes).
_FAIL_CODES = (None, S.SCAN_EXCEED_NONE_PTE, S.SCAN_PTE_NON_PRESENT, S.SCAN_EXCEED_SWAP_PTE,
               S.SCAN_PTE_UFFD_WP, S.SCAN_PAGE_NULL, S.SCAN_PAGE_ANON,
               S.SCAN_EXCEED_SHARED_PTE, S.SCAN_PAGE_LRU, S.SCAN_PAGE_LOCK,
               S.SCAN_PAGE_LAZYFREE, S.SCAN_PAGE_COUNT)


def scan_ptes(ptes: np.ndarray, max_none: int, max_swap: int, max_shared: int,
              is_khugepaged: bool) -> tuple[ScanResult, int, dict]:
    """The per-PTE loop of collapse_scan_pmd(), vectorised.

    Returns (result, PTEs examined, counts).  Every PTE before the first failing one
    passed every check, so running counts with cumsum reproduce the loop exactly.
    """
    kind = ptes["kind"]
    none_or_zero = (kind == PTE_NONE) | (kind == PTE_ZERO)
    swap = kind == PTE_SWAP
    unmapped = swap | (kind == PTE_NONPRESENT)
    present = kind == PTE_PRESENT
    has_folio = present & (ptes["folio"] >= 0)
    anon = has_folio & ptes["anon"]
    shared = anon & ptes["shared"] & ~ptes["uffd_wp"]
    conds = [
        none_or_zero & (np.cumsum(none_or_zero) > max_none),
        kind == PTE_NONPRESENT,
        swap & is_khugepaged & (np.cumsum(unmapped) > max_swap),
        (swap | present) & ptes["uffd_wp"],
        present & ~has_folio,
        has_folio & ~ptes["anon"],
        shared & is_khugepaged & (np.cumsum(shared) > max_shared),
        present & ~ptes["lru"],
        present & ptes["locked"],
        present & ptes["lazyfree"],
        present & ~ptes["refcount_ok"],
    ]
    code = np.select(conds, np.arange(1, len(conds) + 1), 0)
    bad = np.flatnonzero(code)
    end = int(bad[0]) if bad.size else HPAGE_PMD_NR
    counts = {
        "none_or_zero": int(none_or_zero[:end + 1].sum()),
        "unmapped": int(unmapped[:end + 1].sum()),
        "shared": int(shared[:end + 1].sum()),
        "referenced": int((present & (ptes["young"] | ptes["referenced"]))[:end].sum())
        if is_khugepaged else 0,
    }
    if bad.size:
        return _FAIL_CODES[int(code[end])], end + 1, counts
    return S.SCAN_SUCCEED, HPAGE_PMD_NR, counts


def collapse_scan_pmd(ops: CollapseOps, mm: Any, vma: VmaInfo, start_addr: int,
                      cc: CollapseControl) -> ScanResult:
    """Scan one PMD range and, if it qualifies, collapse it (PMD or mTHP orders).

    Adds the PTEs examined to ``cc.progress`` (1 if there is no PTE table).
    """
    cc.step(cc.costs.scan_pmd_ns)
    cc.collapse_attempted = False
    result = find_pmd_or_thp_or_none(ops, mm, start_addr)
    if result is not S.SCAN_SUCCEED:
        cc.progress += 1
        cc.tracer.emit("mm_khugepaged_scan_pmd", cc.now_ns, mm=mm, address=start_addr,
                       referenced=0, none_or_zero=0, status=result.status, unmapped=0)
        return result
    cc.mthp_present_ptes[:] = False
    tva = TVA_KHUGEPAGED if cc.is_khugepaged else TVA_FORCED_COLLAPSE
    enabled_orders = collapse_possible_orders(ops, mm, vma, tva)
    max_none = collapse_max_ptes_none(cc, vma, HPAGE_PMD_ORDER)
    if enabled_orders != BIT(HPAGE_PMD_ORDER):
        max_none = KHUGEPAGED_MAX_PTES_LIMIT
    ptes = ops.read_ptes(mm, start_addr)
    result, examined, counts = scan_ptes(
        ptes, max_none, collapse_max_ptes_swap(cc, HPAGE_PMD_ORDER),
        collapse_max_ptes_shared(cc, HPAGE_PMD_ORDER), cc.is_khugepaged)
    cc.progress += examined
    cc.step(cc.costs.scan_pte_ns * examined)
    if result is S.SCAN_EXCEED_NONE_PTE:
        ops.count_vm_event("thp_scan_exceed_none_pte")
        ops.count_mthp_stat(HPAGE_PMD_ORDER, "collapse_exceed_none_pte")
    elif result is S.SCAN_EXCEED_SWAP_PTE:
        ops.count_vm_event("thp_scan_exceed_swap_pte")
        ops.count_mthp_stat(HPAGE_PMD_ORDER, "collapse_exceed_swap_pte")
    elif result is S.SCAN_EXCEED_SHARED_PTE:
        ops.count_vm_event("thp_scan_exceed_share_pte")
        ops.count_mthp_stat(HPAGE_PMD_ORDER, "collapse_exceed_shared_pte")
    referenced, unmapped = counts["referenced"], counts["unmapped"]
    if result is S.SCAN_SUCCEED and cc.is_khugepaged and (
            referenced == 0 or (unmapped and referenced < HPAGE_PMD_NR // 2)):
        result = S.SCAN_LACK_REFERENCED_PAGE
    scan_status = result.status
    if result is S.SCAN_SUCCEED:
        cc.collapse_attempted = True
        cc.mthp_present_ptes[:] = ptes["kind"] == PTE_PRESENT
        before = mapping_census(ptes)
        if cc.algo == "v5":
            result = mthp_collapse_v5(ops, mm, start_addr, referenced, unmapped, cc,
                                      enabled_orders)
        else:
            result = mthp_collapse(ops, mm, start_addr, referenced, unmapped, cc,
                                   enabled_orders)
        kind = ops.pmd_kind(mm, start_addr)
        after = ({HPAGE_PMD_ORDER: HPAGE_PMD_NR} if kind == "huge" else
                 mapping_census(ops.read_ptes(mm, start_addr)) if kind == "table" else {})
        if after != before:
            cc.tracer.emit("emu_collapse_census", cc.now_ns, mm=mm, address=start_addr,
                           before=before, after=after)
    if cc.clear_young and cc.is_khugepaged and ops.pmd_kind(mm, start_addr) == "table":
        live = ops.read_ptes(mm, start_addr)
        for i in np.flatnonzero(live["young"]):
            ops.test_and_clear_young(mm, start_addr + int(i) * PAGE_SIZE)
    cc.tracer.emit("mm_khugepaged_scan_pmd", cc.now_ns, mm=mm, address=start_addr,
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
        return HPAGE_PMD_ORDER
    return min((offset & -offset).bit_length() - 1, HPAGE_PMD_ORDER)


def mthp_collapse(ops: CollapseOps, mm: Any, pmd_addr: int, referenced: int, unmapped: int,
                  cc: CollapseControl, enabled_orders: int) -> ScanResult:
    """v19 11/14 + 12/14: the forward walk over the present-PTE bitmap."""
    bitmap = cc.mthp_present_ptes
    offset, order = 0, HPAGE_PMD_ORDER
    collapsed = 0
    alloc_failed = False
    last = S.SCAN_FAIL
    while offset < HPAGE_PMD_NR:
        n = 1 << order
        lower = True
        if enabled_orders & BIT(order):
            limit = collapse_max_ptes_none(cc, None, order)
            occupied = int(bitmap[offset:offset + n].sum())
            if order == HPAGE_PMD_ORDER and cc.pmd_precheck_counts_swap:
                occupied += unmapped
            if occupied >= n - limit:
                r = collapse_huge_page(ops, mm, pmd_addr + offset * PAGE_SIZE, referenced,
                                       unmapped, cc, order)
                if r is S.SCAN_SUCCEED:
                    collapsed += n
                    lower = False
                elif r is S.SCAN_PTE_MAPPED_HUGEPAGE:
                    lower = False
                elif r in MTHP_TRY_LOWER:
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
V5_BITS = HPAGE_PMD_NR // V5_CHUNK               # 128


def v5_chunk_bitmap(present: np.ndarray, max_ptes_none: int) -> np.ndarray:
    """One bit per 4-PTE chunk that is "utilized".

    UNCONFIRMED rule (kernel-mthp.md §1.1): a chunk counts when its none PTEs are
    within max_ptes_none scaled to order 2 (``max_ptes_none >> 7``): any present
    page at 511, two of four at 256..383, all four at 0.
    """
    occ = present.reshape(V5_BITS, V5_CHUNK).sum(axis=1)
    return occ >= V5_CHUNK - (max_ptes_none >> (HPAGE_PMD_ORDER - KHUGEPAGED_MIN_MTHP_ORDER))


def mthp_collapse_v5(ops: CollapseOps, mm: Any, pmd_addr: int, referenced: int,
                     unmapped: int, cc: CollapseControl, enabled_orders: int) -> ScanResult:
    """v5 07/12 khugepaged_scan_bitmap(): depth-first over the chunk bitmap."""
    m = cc.knobs.max_ptes_none if cc.is_khugepaged else KHUGEPAGED_MAX_PTES_LIMIT
    bitmap = v5_chunk_bitmap(cc.mthp_present_ptes, m)
    cc.mthp_bitmap[:] = bitmap
    is_pmd_only = enabled_orders == BIT(HPAGE_PMD_ORDER)
    always = ops.thp._mask("always") if cc.is_khugepaged else 0
    stack = [(HPAGE_PMD_ORDER - KHUGEPAGED_MIN_MTHP_ORDER, 0)]
    collapsed = 0
    last = S.SCAN_FAIL
    while stack:
        chunk_order, chunk_off = stack.pop()
        order = chunk_order + KHUGEPAGED_MIN_MTHP_ORDER
        num_chunks = 1 << chunk_order
        if enabled_orders & BIT(order):
            bits_set = int(bitmap[chunk_off:chunk_off + num_chunks].sum())
            threshold = (HPAGE_PMD_NR - m - 1) >> (HPAGE_PMD_ORDER - chunk_order)
            if bits_set > threshold or is_pmd_only or always & BIT(order):
                r = collapse_huge_page(ops, mm, pmd_addr + chunk_off * V5_CHUNK * PAGE_SIZE,
                                       referenced, unmapped, cc, order)
                last = r
                if r is S.SCAN_SUCCEED:
                    collapsed += 1 << order
                    continue
        if chunk_order > 0:
            stack.append((chunk_order - 1, chunk_off + num_chunks // 2))
            stack.append((chunk_order - 1, chunk_off))
    return S.SCAN_SUCCEED if collapsed else last
