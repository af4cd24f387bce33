"""x86-64 4-level paging descriptors (Intel SDM Vol. 3A §4.5, tables 4-14..4-20).

Bit positions are the architecture's; the PROT_NONE marker (G with P clear)
is Linux's _PAGE_PROTNONE.  On a PS=1 leaf, bit 12 is PAT; we never set it, so
the frame field reads the same at every level.
"""

from emu.arch.base import PROT_EXEC, PROT_WRITE, Arch

P = 1 << 0
RW = 1 << 1
US = 1 << 2
PWT = 1 << 3
PCD = 1 << 4
A = 1 << 5
D = 1 << 6
PS = 1 << 7
G = 1 << 8
PROTNONE = G          # Linux _PAGE_PROTNONE: G is ignored while P is clear
PFN_SHIFT = 12
PFN_MASK = ((1 << 52) - 1) & ~((1 << 12) - 1)   # bits 12..51
NX = 1 << 63

ATTR_COMPARE_MASK = ((1 << 64) - 1) & ~(PFN_MASK | A | D)


class X86_64(Arch):
    """x86-64, 4-level paging, 4 KiB pages, 2 MiB (PD) and 1 GiB (PDPT) leaves."""

    name = "x86_64"
    arch_id = 0
    levels = 4
    va_bits = 48
    cont_ptes = 1
    leaf_levels = (1, 2)
    attr_compare_mask = ATTR_COMPARE_MASK
    level_names = ("pml4e", "pdpte", "pde", "pte")

    def mk_table(self, pfn: int) -> int:
        # Linux _PAGE_TABLE minus A/D: the walker sets A, which tests can observe.
        return P | RW | US | (pfn << PFN_SHIFT)

    def _leaf(self, pfn: int, prot: int, young: bool, dirty: bool) -> int:
        d = (pfn << PFN_SHIFT) | US
        d |= P if prot else PROTNONE
        if prot & PROT_WRITE:
            d |= RW
        if not prot & PROT_EXEC:
            d |= NX
        if young:
            d |= A
        if dirty:
            d |= D
        return d

    def mk_pte(self, pfn: int, prot: int, young: bool = False, dirty: bool = False,
               cont: bool = False) -> int:
        return self._leaf(pfn, prot, young, dirty)

    def mk_block(self, pfn: int, prot: int, level: int, young: bool = False,
                 dirty: bool = False) -> int:
        if level not in self.leaf_levels:
            raise ValueError(f"x86-64 has no leaf at level {level}")
        if pfn & ((1 << (self.level_shifts[level] - 12)) - 1):
            raise ValueError(f"pfn {pfn:#x} not aligned for a level-{level} leaf")
        return self._leaf(pfn, prot, young, dirty) | PS

    def is_valid(self, d: int) -> bool:
        return bool(d & P)

    def is_protnone(self, d: int) -> bool:
        return (d & (P | PROTNONE)) == PROTNONE and not d & 2

    def is_present(self, d: int) -> bool:
        return bool(d & P) or self.is_protnone(d)

    def is_leaf(self, d: int, level: int) -> bool:
        if level == self.levels - 1:
            return self.is_present(d)
        return self.is_present(d) and bool(d & PS)

    def pfn(self, d: int) -> int:
        return (d & PFN_MASK) >> PFN_SHIFT

    def young(self, d: int) -> bool:
        return bool(d & A)

    def dirty(self, d: int) -> bool:
        return bool(d & D)

    def writable(self, d: int) -> bool:
        return bool(d & RW)

    def executable(self, d: int) -> bool:
        return not d & NX

    def mkold(self, d: int) -> int:
        return d & ~A

    def mkyoung(self, d: int) -> int:
        return d | A

    def mkclean(self, d: int) -> int:
        return d & ~D

    def mkdirty(self, d: int) -> int:
        return d | D

    def wrprotect(self, d: int) -> int:
        return d & ~RW

    def mkwrite(self, d: int) -> int:
        return d | RW

    def modify_prot(self, d: int, prot: int) -> int:
        keep = d & (PFN_MASK | A | D | PS)
        new = self._leaf(0, prot, False, False) & ~PFN_MASK
        return keep | new
