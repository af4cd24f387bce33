"""What collapse sees of an address space: the small interface the collapse core needs.

The scan and collapse algorithms (emu.kernel.scan, emu.kernel.collapse) never touch
page tables, folios or TLBs directly.  They read one PMD range as a snapshot of 512
``PTE_INFO`` records and act through a :class:`CollapseOps` object.  Two
implementations exist: :class:`emu.kernel.collapse_sim.SimKernel`, a self-contained
address-space model used by the tests (and by anything that wants the algorithm
without QEMU), and the binding to the kernel model's real descriptors (see
docs/khugepaged.md for what is bound).  Keeping the boundary this narrow is what lets
the selftest scenarios and the v5/v19 comparison run in milliseconds.
"""

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER
HPAGE_PMD_SIZE = PAGE_SIZE << HPAGE_PMD_ORDER
HPAGE_PMD_MASK = ~(HPAGE_PMD_SIZE - 1)
KHUGEPAGED_MIN_MTHP_ORDER = 2
KHUGEPAGED_MAX_PTES_LIMIT = HPAGE_PMD_NR - 1


def BIT(n: int) -> int:  # noqa: N802 - the kernel macro's name
    return 1 << n


# include/linux/huge_mm.h: orders 2..PMD_ORDER; order 1 is not supported for anon.
THP_ORDERS_ALL_ANON = (BIT(HPAGE_PMD_ORDER + 1) - 1) & ~(BIT(0) | BIT(1))

# vm_flags bits with the kernel's values (include/linux/mm.h).
VM_WRITE = 0x00000002
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000

# Page-table entry kinds as the scan distinguishes them.
PTE_NONE = 0
PTE_PRESENT = 1      # maps a normal page
PTE_ZERO = 2         # maps the shared zero page (present, special)
PTE_SWAP = 3         # swap entry
PTE_NONPRESENT = 4   # other non-present entry (migration, device-private, ...)

# One record per PTE of a PMD range, with what the scan asks of the mapped folio.
PTE_INFO = np.dtype([
    ("kind", np.uint8),
    ("pfn", np.int64),
    ("young", np.bool_),        # pte_young(): A (x86) / AF (arm64), set by the walker
    ("dirty", np.bool_),
    ("write", np.bool_),
    ("uffd_wp", np.bool_),
    ("folio", np.int64),        # folio id, -1 for none/zero/swap or vm_normal_page() NULL
    ("folio_order", np.int8),
    ("anon", np.bool_),
    ("shared", np.bool_),       # folio_maybe_mapped_shared()
    ("lru", np.bool_),
    ("locked", np.bool_),
    ("refcount_ok", np.bool_),  # is_refcount_suitable()
    ("referenced", np.bool_),   # folio_test_young() || folio_test_referenced()
    ("lazyfree", np.bool_),
])

# Callers of thp_vma_allowable_orders() (enum tva_type).
TVA_SMAPS, TVA_PAGEFAULT, TVA_KHUGEPAGED, TVA_FORCED_COLLAPSE = range(4)

THP_MODES = ("always", "inherit", "madvise", "never")


@dataclass
class ThpSettings:
    """The THP sysfs the collapse decisions read (anonymous memory only).

    ``enabled`` is /sys/kernel/mm/transparent_hugepage/enabled; ``hugepages[order]``
    is hugepages-<size>kB/enabled.  Kernel defaults: PMD ``inherit``, others ``never``.
    """

    enabled: str = "madvise"
    hugepages: dict[int, str] = field(default_factory=lambda: {
        o: ("inherit" if o == HPAGE_PMD_ORDER else "never")
        for o in range(KHUGEPAGED_MIN_MTHP_ORDER, HPAGE_PMD_ORDER + 1)})

    def _mask(self, mode: str) -> int:
        return sum(BIT(o) for o, m in self.hugepages.items() if m == mode)

    def anon_orders(self, vm_flags: int) -> int:
        """The sysfs part of thp_vma_allowable_orders() for an anonymous VMA."""
        hugepage = bool(vm_flags & VM_HUGEPAGE)
        mask = self._mask("always")
        if hugepage:
            mask |= self._mask("madvise")
        if self.enabled == "always" or (hugepage and self.enabled != "never"):
            mask |= self._mask("inherit")
        return mask

    def hugepage_enabled(self) -> bool:
        """hugepage_enabled() (v19 13/14): khugepaged runs when any anon size can be on."""
        return bool(self._mask("always") or self._mask("madvise")
                    or (self._mask("inherit") and self.enabled != "never"))


@dataclass
class VmaInfo:
    """The part of a VMA the collapse checks."""

    start: int
    end: int
    flags: int = VM_WRITE
    anon: bool = True
    uffd_armed: bool = False
    anon_vma: bool = True
    ident: Any = None        # the owner's VMA object, for the binding


def thp_vma_suitable_order(vma: VmaInfo, addr: int, order: int) -> bool:
    """The naturally aligned 2**order block containing addr lies inside the VMA."""
    size = PAGE_SIZE << order
    haddr = addr & ~(size - 1)
    return haddr >= vma.start and haddr + size <= vma.end


def thp_vma_allowable_orders(vma: VmaInfo, tva: int, orders: int, thp: ThpSettings,
                             mm_thp_disabled: bool = False) -> int:
    """Orders of ``orders`` allowed in ``vma`` (__thp_vma_allowable_orders, anon only).

    File and shmem collapse are not modelled: a file VMA allows nothing here.
    """
    if tva != TVA_FORCED_COLLAPSE:
        orders &= thp.anon_orders(vma.flags)
    orders &= THP_ORDERS_ALL_ANON
    if not orders or not vma.anon:
        return 0
    if vma.flags & VM_NOHUGEPAGE or mm_thp_disabled:
        return 0
    if tva != TVA_PAGEFAULT:
        # Drop orders, highest first, until one fits at the VMA's end.
        for order in range(HPAGE_PMD_ORDER, -1, -1):
            if not orders & BIT(order):
                continue
            if thp_vma_suitable_order(vma, vma.end - (PAGE_SIZE << order), order):
                break
            orders &= ~BIT(order)
    return orders


class CollapseOps(Protocol):
    """The address-space operations collapse needs; mm objects are opaque to the core."""

    thp: ThpSettings

    # --- looking
    def mm_exiting(self, mm: Any) -> bool: ...
    def mm_thp_disabled(self, mm: Any) -> bool: ...
    def vmas(self, mm: Any) -> list[VmaInfo]: ...
    def find_vma(self, mm: Any, addr: int) -> VmaInfo | None: ...
    def pmd_kind(self, mm: Any, pmd_addr: int) -> str:
        """'none', 'table' or 'huge'."""
        ...
    def read_ptes(self, mm: Any, pmd_addr: int) -> np.ndarray:
        """512 PTE_INFO records of the live table under pmd_addr."""
        ...
    def read_detached(self, saved: Any, first: int = 0, nr: int = HPAGE_PMD_NR) -> np.ndarray:
        """512 PTE_INFO records of the table detached by pmdp_collapse_flush; only
        [first, first+nr) need carry folio facts."""
        ...
    def test_and_clear_young(self, mm: Any, addr: int) -> bool: ...

    # --- acting (each returns its simulated duration in ns where it has one)
    def alloc_folio(self, order: int, light: bool) -> Any | None: ...
    def free_folio(self, folio: Any) -> None: ...
    def swapin(self, mm: Any, vma: VmaInfo, addr: int) -> bool:
        """do_swap_page() for the swap PTE at addr; False on error."""
        ...
    def pmdp_collapse_flush(self, mm: Any, vma: VmaInfo, pmd_addr: int) -> tuple[Any, int]:
        """Clear the PMD (detach its PTE table), flush the 2 MiB; (saved, cost_ns)."""
        ...
    def pmd_populate(self, mm: Any, pmd_addr: int, saved: Any) -> None: ...
    def isolate_folio(self, folio_id: int) -> bool: ...
    def putback_folio(self, folio_id: int) -> None: ...
    def collapse_copy(self, mm: Any, saved: Any, folio: Any, first: int, nr: int) -> int:
        """Copy (or zero-fill) PTEs [first, first+nr) of the detached table into folio,
        then clear those PTEs and drop the sources' rmap (…_copy_succeeded).
        Returns the number of zero-filled pages."""
        ...
    def install_pmd(self, mm: Any, vma: VmaInfo, pmd_addr: int, folio: Any,
                    saved: Any) -> None: ...
    def install_ptes(self, mm: Any, vma: VmaInfo, addr: int, folio: Any, order: int,
                     saved: Any) -> None: ...

    # --- accounting
    def count_vm_event(self, name: str, n: int = 1) -> None: ...
    def count_mthp_stat(self, order: int, name: str, n: int = 1) -> None: ...
