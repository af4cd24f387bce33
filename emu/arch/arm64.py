"""arm64 VMSAv8-64 stage-1 descriptors, 4 KiB granule (Arm ARM D8.3).

Hardware bits: valid 0, table/page 1, AttrIndx 2..4, NS 5, AP[1] 6 (EL0
access), AP[2] 7 (read-only), SH 8..9, AF 10, nG 11, OA 12..47, DBM 51,
Contiguous 52, PXN 53, UXN 54.  Linux's software bits are used where Linux
has them: PTE_DIRTY 55 and PTE_PROT_NONE 58.  Dirty state follows Linux:
dirty = software dirty, or writable (DBM) with AP[2] clear; clean-writable is
DBM with AP[2] set, which FEAT_HAFDBS hardware clears on the first write.
"""

from emu.arch.base import PROT_EXEC, PROT_WRITE, Arch

VALID = 1 << 0
TABLE = 1 << 1        # bit 1: table (levels 0..2) or page (level 3); clear for a block
ATTRINDX_SHIFT = 2
ATTRINDX_MASK = 7 << ATTRINDX_SHIFT
MT_NORMAL = 0         # Linux's MAIR index for normal memory
NS = 1 << 5
AP_USER = 1 << 6      # AP[1]
RDONLY = 1 << 7       # AP[2]
SH_SHIFT = 8
SH_INNER = 3 << SH_SHIFT
AF = 1 << 10
NG = 1 << 11
OA_MASK = ((1 << 48) - 1) & ~((1 << 12) - 1)    # bits 12..47
PFN_SHIFT = 12
DBM = 1 << 51
CONT = 1 << 52
PXN = 1 << 53
UXN = 1 << 54
SW_DIRTY = 1 << 55    # Linux PTE_DIRTY
PROT_NONE_BIT = 1 << 58   # Linux PTE_PROT_NONE (older headers)

ATTR_COMPARE_MASK = ((1 << 64) - 1) & ~(OA_MASK | AF | RDONLY | SW_DIRTY)

CONT_PTES = 16


class Arm64(Arch):
    """arm64 with the 4 KiB granule: 4 levels, 2 MiB and 1 GiB blocks, 64 KiB contpte."""

    name = "arm64"
    arch_id = 1
    levels = 4
    va_bits = 48
    cont_ptes = CONT_PTES
    leaf_levels = (1, 2)
    attr_compare_mask = ATTR_COMPARE_MASK
    level_names = ("l0", "l1", "l2", "l3")

    def mk_table(self, pfn: int) -> int:
        return VALID | TABLE | (pfn << PFN_SHIFT)

    def _leaf(self, pfn: int, prot: int, young: bool, dirty: bool) -> int:
        d = (pfn << PFN_SHIFT) | (MT_NORMAL << ATTRINDX_SHIFT) | SH_INNER | NG | AP_USER | PXN
        d |= VALID if prot else PROT_NONE_BIT
        if not prot & PROT_EXEC:
            d |= UXN
        if prot & PROT_WRITE:
            d |= DBM
            if not dirty:
                d |= RDONLY
        else:
            d |= RDONLY
        if dirty:
            d |= SW_DIRTY
        if young:
            d |= AF
        return d

    def mk_pte(self, pfn: int, prot: int, young: bool = False, dirty: bool = False,
               cont: bool = False) -> int:
        d = self._leaf(pfn, prot, young, dirty)
        if d & VALID:
            d |= TABLE          # page descriptor: bits[1:0] = 0b11
        return d | (CONT if cont else 0)

    def mk_block(self, pfn: int, prot: int, level: int, young: bool = False,
                 dirty: bool = False) -> int:
        if level not in self.leaf_levels:
            raise ValueError(f"arm64 (4 KiB granule) has no block at level {level}")
        if pfn & ((1 << (self.level_shifts[level] - 12)) - 1):
            raise ValueError(f"pfn {pfn:#x} not aligned for a level-{level} block")
        return self._leaf(pfn, prot, young, dirty)   # bits[1:0] = 0b01

    def is_valid(self, d: int) -> bool:
        return bool(d & VALID)

    def is_protnone(self, d: int) -> bool:
        return not d & VALID and bool(d & PROT_NONE_BIT)

    def is_present(self, d: int) -> bool:
        return bool(d & VALID) or self.is_protnone(d)

    def is_leaf(self, d: int, level: int) -> bool:
        if not self.is_present(d):
            return False
        if level == self.levels - 1:
            return True
        if self.is_protnone(d):
            return level in self.leaf_levels
        return not d & TABLE

    def pfn(self, d: int) -> int:
        return (d & OA_MASK) >> PFN_SHIFT

    def young(self, d: int) -> bool:
        return bool(d & AF)

    def dirty(self, d: int) -> bool:
        return bool(d & SW_DIRTY) or (bool(d & DBM) and not d & RDONLY)

    def writable(self, d: int) -> bool:
        return bool(d & DBM)

    def executable(self, d: int) -> bool:
        return not d & UXN

    def cont(self, d: int) -> bool:
        return bool(d & CONT)

    def mkold(self, d: int) -> int:
        return d & ~AF

    def mkyoung(self, d: int) -> int:
        return d | AF

    def mkclean(self, d: int) -> int:
        return (d & ~SW_DIRTY) | RDONLY

    def mkdirty(self, d: int) -> int:
        d |= SW_DIRTY
        if d & DBM:
            d &= ~RDONLY
        return d

    def wrprotect(self, d: int) -> int:
        if d & DBM and not d & RDONLY:
            d |= SW_DIRTY
        return (d & ~DBM) | RDONLY

    def mkwrite(self, d: int) -> int:
        d |= DBM
        if d & SW_DIRTY:
            d &= ~RDONLY
        return d

    def mkcont(self, d: int) -> int:
        return d | CONT

    def mknoncont(self, d: int) -> int:
        return d & ~CONT

    def modify_prot(self, d: int, prot: int) -> int:
        young, dirty = self.young(d), self.dirty(d)
        page = bool(d & TABLE) or not d & VALID
        new = self._leaf(self.pfn(d), prot, young, dirty) | (d & CONT)
        if page and new & VALID:
            new |= TABLE
        return new
