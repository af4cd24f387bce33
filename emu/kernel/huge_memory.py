"""Which THP orders a VMA allows: thp_vma_allowable_orders() and its helpers
(include/linux/huge_mm.h, mm/huge_memory.c), anonymous memory only.

The fault path, khugepaged and MADV_COLLAPSE all ask here, each as its own
caller type (``enum tva_type``), so one definition answers all three.  File and
shmem THPs are not modelled: a file VMA allows nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch import PAGE_SIZE, PMD_ORDER
from emu.kernel.vma import VM_HUGEPAGE, VM_NOHUGEPAGE

if TYPE_CHECKING:
    from emu.kernel.config import ThpConfig
    from emu.kernel.vma import VMA

# enum tva_type: who asks.
TVA_SMAPS, TVA_PAGEFAULT, TVA_KHUGEPAGED, TVA_FORCED_COLLAPSE = range(4)


def BIT(n: int) -> int:  # noqa: N802 - the kernel macro's name
    return 1 << n


# THP_ORDERS_ALL_ANON: orders 2..PMD_ORDER; order 1 is not supported for anon.
THP_ORDERS_ALL_ANON = (BIT(PMD_ORDER + 1) - 1) & ~(BIT(0) | BIT(1))


def thp_vma_suitable_order(vma: VMA, addr: int, order: int) -> bool:
    """The naturally aligned 2**order block around addr lies inside the VMA."""
    size = PAGE_SIZE << order
    haddr = addr & ~(size - 1)
    return haddr >= vma.start and haddr + size <= vma.end


def thp_vma_suitable_orders(vma: VMA, addr: int, orders: int) -> int:
    """The orders of the mask whose aligned block around addr fits the VMA."""
    out = orders
    for order in range(PMD_ORDER, -1, -1):
        if orders & BIT(order) and not thp_vma_suitable_order(vma, addr, order):
            out &= ~BIT(order)
    return out


def vma_thp_disabled(vma: VMA, mm_thp_disabled: bool) -> bool:
    """VM_NOHUGEPAGE, or prctl(PR_SET_THP_DISABLE) on the mm."""
    return bool(vma.flags & VM_NOHUGEPAGE) or mm_thp_disabled


def thp_vma_allowable_orders(vma: VMA, tva: int, orders: int, config: ThpConfig,
                             mm_thp_disabled: bool = False) -> int:
    """The orders of ``orders`` allowed in ``vma`` for this caller (a bit mask).

    The sysfs masks apply except to MADV_COLLAPSE (TVA_FORCED_COLLAPSE); callers
    other than the fault drop orders, highest first, until one fits below the
    VMA's end; a VMA without an anon_vma allows nothing to khugepaged and
    MADV_COLLAPSE (mm/huge_memory.c __thp_vma_allowable_orders()).
    """
    if tva != TVA_FORCED_COLLAPSE:
        orders &= config.anon_orders(bool(vma.flags & VM_HUGEPAGE))
    orders &= THP_ORDERS_ALL_ANON
    if not orders or not vma.is_anon or vma_thp_disabled(vma, mm_thp_disabled):
        return 0
    if tva != TVA_PAGEFAULT:
        for order in range(PMD_ORDER, -1, -1):
            if not orders & BIT(order):
                continue
            if thp_vma_suitable_order(vma, vma.end - (PAGE_SIZE << order), order):
                break
            orders &= ~BIT(order)
    # No anon_vma yet (nothing was ever written, nor PMD-faulted): only smaps and the
    # fault path, which creates it, see orders; khugepaged and MADV_COLLAPSE see none.
    if not vma.anon_vma and tva not in (TVA_SMAPS, TVA_PAGEFAULT):
        return 0
    return orders


def hugepage_enabled(config: ThpConfig) -> bool:
    """khugepaged's hugepage_enabled() (v19 13/14): some anon size can be used."""
    return bool(config.anon_orders(True))


def orders_highest_first(mask: int) -> list[int]:
    return [o for o in range(PMD_ORDER, -1, -1) if mask & BIT(o)]
