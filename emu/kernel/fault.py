"""Which folio orders an anonymous fault may use: pure functions, no state.

These mirror the checks of the kernel's fault path (mm/memory.c,
include/linux/huge_mm.h) so they can be tested and reused on their own:

* ``thp_fault_orders``: thp_vma_allowable_orders(..., TVA_PAGEFAULT, mask)
  followed by thp_vma_suitable_orders() at the fault address;
* ``choose_anon_order``: alloc_anon_folio()'s walk from the highest order
  down to the first whose naturally aligned PTE range is all none.
"""

from __future__ import annotations

from collections.abc import Callable

from emu.arch import PAGE_SHIFT, PMD_ORDER
from emu.kernel.config import ThpConfig
from emu.kernel.huge_memory import (
    BIT,
    TVA_PAGEFAULT,
    orders_highest_first,
    thp_vma_allowable_orders,
    thp_vma_suitable_orders,
)
from emu.kernel.vma import VMA


def thp_fault_orders(config: ThpConfig, vma: VMA, mm_thp_disabled: bool, addr: int,
                     max_order: int = PMD_ORDER) -> list[int]:
    """Orders <= max_order a fault at addr may try, highest first (order 0 excluded)."""
    mask = thp_vma_allowable_orders(vma, TVA_PAGEFAULT, BIT(max_order + 1) - 1, config,
                                    mm_thp_disabled)
    return orders_highest_first(thp_vma_suitable_orders(vma, addr, mask))


def choose_anon_order(orders: list[int], addr: int,
                      range_none: Callable[[int, int], bool],
                      page_shift: int = PAGE_SHIFT) -> list[int]:
    """alloc_anon_folio() step 5: drop the orders (highest first) whose aligned PTE
    range is not all none; what remains is the allocation order list, then 0."""
    for i, order in enumerate(orders):
        nr = 1 << order
        base = addr & ~((nr << page_shift) - 1)
        if range_none(base, nr):
            return orders[i:] + [0]
    return [0]
