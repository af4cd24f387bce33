"""What every architecture offers the kernel and hardware models: descriptor layout and geometry.

Descriptors are plain Python ints here (the kernel model builds them one at a
time); the hardware model's numba kernels use the same bit constants, which
are module-level ints in emu.arch.x86_64 / emu.arch.arm64 so numba folds them.

Levels are numbered from the top: level 0 is the PGD (x86 PML4, arm64 L0),
level ``levels - 1`` holds the PTEs.  ``prot`` arguments take mmap's PROT_*
bits so the kernel model can pass a VMA's protection straight through.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4

# Page-size codes shared by emu.arch and emu.hw (TLB entries are tagged with one).
SIZE_4K = 0
SIZE_16K = 1     # AMD coalesced 4 x 4 KiB
SIZE_64K = 2     # arm64 contiguous 16 x 4 KiB
SIZE_2M = 3
SIZE_32M = 4     # arm64 contiguous 16 x 2 MiB blocks (not modelled by the walker yet)
SIZE_1G = 5
NR_SIZES = 6
SIZE_SHIFT = (12, 14, 16, 21, 25, 30)
SIZE_NAMES = ("4k", "16k", "64k", "2m", "32m", "1g")

# Swap entries: not present to hardware (bit 0 clear on both architectures),
# marked by bit 1, type in bits 2..6, offset in bits 12..57.  Our own layout,
# chosen so it never collides with the PROT_NONE marker of either architecture.
SWP_MARK = 1 << 1
SWP_TYPE_SHIFT = 2
SWP_TYPE_MASK = 0x1F
SWP_OFFSET_SHIFT = 12
SWP_OFFSET_MASK = (1 << 46) - 1


# The granule emu implements on both architectures (4 KiB): the paging geometry
# every room uses, defined here once.  An Arch of another granule is refused.
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PMD_ORDER = PAGE_SHIFT - 3          # one table level of 8-byte descriptors
PMD_NR = 1 << PMD_ORDER
PMD_SIZE = PAGE_SIZE << PMD_ORDER

class Arch(ABC):
    """Descriptor formats and paging geometry of one architecture and granule."""

    name: str
    arch_id: int          # 0 = x86_64, 1 = arm64 (the numba kernels branch on it)
    page_shift: int
    levels: int
    va_bits: int
    cont_ptes: int        # arm64 contiguous run length at the PTE level; 1 where none
    leaf_levels: tuple[int, ...]   # levels (besides the last) that may hold a block/huge leaf

    def __init__(self, granule: int = 4096) -> None:
        if granule != 4096:
            raise NotImplementedError(
                f"{self.__class__.__name__}: only the 4 KiB granule is implemented")
        self.granule = granule
        self.page_shift = granule.bit_length() - 1
        self.bits_per_level = self.page_shift - 3
        self.ptrs_per_table = 1 << self.bits_per_level

    # ---- geometry -------------------------------------------------------
    @functools.cached_property
    def level_shifts(self) -> tuple[int, ...]:
        """VA shift of the entries at each level, top first: (39, 30, 21, 12) for 4 KiB.

        Computed once: every page-table walk of the kernel model asks for it."""
        return tuple(self.page_shift + self.bits_per_level * (self.levels - 1 - lvl)
                     for lvl in range(self.levels))

    def index(self, va: int, level: int) -> int:
        """Index into the table at ``level`` for ``va``."""
        return (va >> self.level_shifts[level]) & (self.ptrs_per_table - 1)

    @property
    def pmd_order(self) -> int:
        return self.bits_per_level

    @property
    def pud_order(self) -> int:
        return 2 * self.bits_per_level

    @property
    def anon_mthp_orders(self) -> tuple[int, ...]:
        """Folio orders anonymous memory may use: 2..PMD_ORDER (Linux THP_ORDERS_ALL_ANON)."""
        return tuple(range(2, self.pmd_order + 1))

    # ---- swap entries (same layout on both architectures) ------------------
    @staticmethod
    def mk_swap(swp_type: int, offset: int) -> int:
        """A not-present descriptor carrying a swap (type, offset)."""
        if not 0 <= swp_type <= SWP_TYPE_MASK or not 0 <= offset <= SWP_OFFSET_MASK:
            raise ValueError(f"swap entry out of range: type {swp_type}, offset {offset}")
        return SWP_MARK | (swp_type << SWP_TYPE_SHIFT) | (offset << SWP_OFFSET_SHIFT)

    def is_swap(self, d: int) -> bool:
        return not self.is_present(d) and bool(d & SWP_MARK)

    @staticmethod
    def swp_type(d: int) -> int:
        return (d >> SWP_TYPE_SHIFT) & SWP_TYPE_MASK

    @staticmethod
    def swp_offset(d: int) -> int:
        return (d >> SWP_OFFSET_SHIFT) & SWP_OFFSET_MASK

    @staticmethod
    def is_none(d: int) -> bool:
        """pte_none: an empty slot."""
        return d == 0

    # ---- constructors -----------------------------------------------------
    @abstractmethod
    def mk_table(self, pfn: int) -> int:
        """A table descriptor pointing at the page-table page in frame ``pfn``."""

    @abstractmethod
    def mk_pte(self, pfn: int, prot: int, young: bool = False, dirty: bool = False,
               cont: bool = False) -> int:
        """A last-level page descriptor for one base page."""

    @abstractmethod
    def mk_block(self, pfn: int, prot: int, level: int, young: bool = False,
                 dirty: bool = False) -> int:
        """A leaf above the last level (x86 PS=1 PDE/PDPTE; arm64 block descriptor)."""

    def mk_pmd_leaf(self, pfn: int, prot: int, young: bool = False, dirty: bool = False) -> int:
        """A 2 MiB leaf (with the 4 KiB granule)."""
        return self.mk_block(pfn, prot, self.levels - 2, young, dirty)

    def mk_pud_leaf(self, pfn: int, prot: int, young: bool = False, dirty: bool = False) -> int:
        """A 1 GiB leaf (with the 4 KiB granule)."""
        return self.mk_block(pfn, prot, self.levels - 3, young, dirty)

    # ---- accessors --------------------------------------------------------
    @abstractmethod
    def is_valid(self, d: int) -> bool:
        """The hardware may use this descriptor (x86 P, arm64 valid bit)."""

    @abstractmethod
    def is_present(self, d: int) -> bool:
        """Linux pte_present: valid, or a PROT_NONE mapping the hardware cannot use."""

    @abstractmethod
    def is_protnone(self, d: int) -> bool: ...

    @abstractmethod
    def is_leaf(self, d: int, level: int) -> bool:
        """Maps memory at ``level`` (a PTE at the last level, a block/huge leaf above)."""

    @abstractmethod
    def pfn(self, d: int) -> int: ...

    @abstractmethod
    def young(self, d: int) -> bool: ...

    @abstractmethod
    def dirty(self, d: int) -> bool: ...

    @abstractmethod
    def writable(self, d: int) -> bool: ...

    @abstractmethod
    def executable(self, d: int) -> bool: ...

    def cont(self, d: int) -> bool:
        return False

    # ---- modifiers (return new descriptors) --------------------------------
    @abstractmethod
    def mkold(self, d: int) -> int: ...

    @abstractmethod
    def mkyoung(self, d: int) -> int: ...

    @abstractmethod
    def mkclean(self, d: int) -> int: ...

    @abstractmethod
    def mkdirty(self, d: int) -> int: ...

    @abstractmethod
    def wrprotect(self, d: int) -> int: ...

    @abstractmethod
    def mkwrite(self, d: int) -> int: ...

    def mkcont(self, d: int) -> int:
        return d

    def mknoncont(self, d: int) -> int:
        return d

    @abstractmethod
    def modify_prot(self, d: int, prot: int) -> int:
        """pte_modify: new protection, keeping the frame, young and dirty."""

    def attrs_equal(self, a: int, b: int) -> bool:
        """Equal except frame, accessed and dirty state: what contpte/coalescing compare."""
        m = self.attr_compare_mask
        return (a & m) == (b & m)

    attr_compare_mask: int = 0

    def describe(self, d: int, level: int | None = None) -> str:
        """One-line human reading of a descriptor, for debugging and reports."""
        if d == 0:
            return "none"
        if self.is_swap(d):
            return f"swap type={self.swp_type(d)} offset={self.swp_offset(d):#x}"
        if not self.is_present(d):
            return f"not-present {d:#018x}"
        lvl = self.levels - 1 if level is None else level
        kind = "leaf" if self.is_leaf(d, lvl) else "table"
        flags = "".join(c for c, on in (("W", self.writable(d)), ("X", self.executable(d)),
                                        ("A", self.young(d)), ("D", self.dirty(d)),
                                        ("C", self.cont(d))) if on)
        return f"{kind} pfn={self.pfn(d):#x} {flags}" + (" protnone" if self.is_protnone(d)
                                                            else "")
