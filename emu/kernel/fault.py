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

from emu.kernel.config import PMD_ORDER, ThpConfig
from emu.kernel.vma import PAGE_SHIFT, VM_HUGEPAGE, VM_NOHUGEPAGE


def thp_disabled(vm_flags: int, mm_thp_disabled: bool) -> bool:
    """vma_thp_disabled(): VM_NOHUGEPAGE or prctl(PR_SET_THP_DISABLE)."""
    return bool(vm_flags & VM_NOHUGEPAGE) or mm_thp_disabled


def suitable(vma_start: int, vma_end: int, addr: int, order: int,
             page_shift: int = PAGE_SHIFT) -> bool:
    """thp_vma_suitable_order(): the aligned block around addr lies inside the VMA."""
    size = 1 << (order + page_shift)
    base = addr & ~(size - 1)
    return base >= vma_start and base + size <= vma_end


def thp_fault_orders(config: ThpConfig, vma_start: int, vma_end: int, vm_flags: int,
                     anon: bool, mm_thp_disabled: bool, addr: int,
                     max_order: int = PMD_ORDER) -> list[int]:
    """Orders <= max_order a fault at addr may try, highest first (order 0 excluded)."""
    if not anon or thp_disabled(vm_flags, mm_thp_disabled):
        return []
    allowed = config.sysfs_orders(bool(vm_flags & VM_HUGEPAGE))
    return [o for o in sorted(allowed, reverse=True)
            if o <= max_order and suitable(vma_start, vma_end, addr, o)]


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
