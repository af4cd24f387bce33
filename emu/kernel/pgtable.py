"""The kernel's page-table helpers: walk/allocate tables, set and clear entries,
arm64 contpte fold/unfold.  Descriptor bits come from emu.arch; storage is
emu.mem's PageTableStore.  khugepaged/collapse build on these, so they are kept
small and stable:

    pt.pmd_slot(mm, va, alloc)  -> (table_pfn, index) of the PMD entry, or None
    pt.pte_slot(mm, va, alloc)  -> (table_pfn, index) of the PTE, or None when the
                                   PMD is none (and not alloc) or is a huge leaf
    pt.get_pmd / get_pte(mm, va) -> descriptor int (0 when no table)
    pt.set_ptes(mm, va, first_desc, nr)   install nr PTEs of consecutive frames onto
                                          none entries (contpte fold where aligned)
    pt.set_pte(mm, va, desc)              change one PTE (unfold first, try fold after)
    pt.clear_pte(mm, va) -> old           clear one PTE (unfolds a contpte block)
    pt.contpte_unfold(mm, va)             break-before-make without PTE_CONT
"""

from __future__ import annotations

from collections.abc import Callable

from emu.arch.base import Arch
from emu.kernel.mm import MM
from emu.kernel.stats import VmStat
from emu.mem.physmem import PhysMem

FlushFn = Callable[[MM, int, int, int, bool], None]


class PageTableOps:
    """Page-table manipulation for every mm of one machine."""

    def __init__(self, arch: Arch, physmem: PhysMem, alloc, stats: VmStat,
                 flush: FlushFn) -> None:
        self.arch = arch
        self.physmem = physmem
        self.store = physmem.pgtables
        self.alloc = alloc          # FrameAllocator (the buddy)
        self.stats = stats
        self.flush = flush          # flush(mm, start, end, stride_shift, last_level_only)
        self.levels = arch.levels
        self.shifts = arch.level_shifts
        self.index_mask = arch.ptrs_per_table - 1
        self.pmd_level = arch.levels - 2
        self.pte_level = arch.levels - 1
        self.page_shift = arch.page_shift
        self.page_size = 1 << arch.page_shift
        self.pmd_shift = arch.level_shifts[self.pmd_level]
        self.pmd_size = 1 << self.pmd_shift
        self.cont_ptes = arch.cont_ptes
        self.cont_size = self.cont_ptes << self.page_shift

    # --- table pages ---------------------------------------------------------

    def alloc_table(self, mm: MM | None, pte_level: bool = False) -> int:
        """A zeroed page-table page from the buddy (counted in the mm)."""
        pfn = self.alloc.alloc(0)
        if pfn is None:
            raise MemoryError("out of simulated memory for a page table")
        self.physmem.zero(pfn)
        self.store.add(pfn)
        if mm is not None:
            mm.nr_pgtables += 1
            if pte_level:
                mm.nr_ptes += 1
        return pfn

    def free_table(self, mm: MM | None, pfn: int, pte_level: bool = False) -> None:
        self.store.remove(pfn)
        self.alloc.free(pfn, 0)
        if mm is not None:
            mm.nr_pgtables -= 1
            if pte_level:
                mm.nr_ptes -= 1

    # --- walking -------------------------------------------------------------

    def _descend(self, mm: MM, va: int, to_level: int, alloc: bool) -> int | None:
        """Frame of the table at ``to_level`` covering va, allocating on the way."""
        arch, store, shifts = self.arch, self.store, self.shifts
        mask = self.index_mask
        table = mm.pgd_pfn
        for level in range(to_level):
            idx = (va >> shifts[level]) & mask
            d = int(store.tables[store.slot_of_pfn[table], idx])
            if d == 0:
                if not alloc:
                    return None
                new = self.alloc_table(mm, pte_level=(level + 1 == self.pte_level))
                store.write(table, idx, arch.mk_table(new))
                table = new
                continue
            if not arch.is_valid(d) or arch.is_leaf(d, level):
                return None
            table = arch.pfn(d)
        return table

    def pmd_slot(self, mm: MM, va: int, alloc: bool = False) -> tuple[int, int] | None:
        t = self._descend(mm, va, self.pmd_level, alloc)
        return None if t is None else (t, (va >> self.shifts[self.pmd_level]) & self.index_mask)

    def pte_slot(self, mm: MM, va: int, alloc: bool = False) -> tuple[int, int] | None:
        t = self._descend(mm, va, self.pte_level, alloc)
        return None if t is None else (t, (va >> self.page_shift) & self.index_mask)

    def pte_table(self, mm: MM, va: int) -> int | None:
        """Frame of the PTE table covering va, if there is one (not a huge PMD)."""
        return self._descend(mm, va, self.pte_level, False)

    def get_pmd(self, mm: MM, va: int) -> int:
        s = self.pmd_slot(mm, va)
        return 0 if s is None else self.store.read(*s)

    def set_pmd(self, mm: MM, va: int, desc: int) -> None:
        s = self.pmd_slot(mm, va, alloc=True)
        assert s is not None
        self.store.write(s[0], s[1], desc)

    def pmd_is_leaf(self, d: int) -> bool:
        return d != 0 and self.arch.is_leaf(d, self.pmd_level)

    def get_pte(self, mm: MM, va: int) -> int:
        s = self.pte_slot(mm, va)
        return 0 if s is None else self.store.read(*s)

    # --- PTE updates (contpte aware) ----------------------------------------------

    def _block_start(self, va: int) -> int:
        return va & ~(self.cont_size - 1)

    def set_ptes(self, mm: MM, va: int, desc: int, nr: int) -> None:
        """set_ptes(): nr entries mapping consecutive frames from desc's, onto none
        entries.  On arm64 each aligned 16-entry piece whose frames are aligned too
        is written with PTE_CONT, as contpte_set_ptes() does."""
        arch = self.arch
        pfn0 = arch.pfn(desc)
        step = 1 << 12          # frame field starts at bit 12 on both architectures
        i = 0
        while i < nr:
            addr = va + (i << self.page_shift)
            s = self.pte_slot(mm, addr, alloc=True)
            assert s is not None
            table, idx = s
            pfn = pfn0 + i
            cont = (self.cont_ptes > 1 and addr % self.cont_size == 0
                    and nr - i >= self.cont_ptes and pfn % self.cont_ptes == 0)
            run = self.cont_ptes if cont else 1
            run = min(run, 512 - idx)
            for j in range(run):
                d = desc + ((i + j) * step)
                if cont:
                    d = arch.mkcont(d)
                self.store.write(table, idx + j, d)
            i += run

    def set_pte(self, mm: MM, va: int, desc: int, try_fold: bool = True) -> None:
        """Change one PTE: unfold a contpte block first, then try to fold (arm64)."""
        s = self.pte_slot(mm, va, alloc=True)
        assert s is not None
        old = self.store.read(*s)
        if old and self.arch.cont(old):
            self.contpte_unfold(mm, va)
        self.store.write(s[0], s[1], self.arch.mknoncont(desc) if self.cont_ptes > 1 else desc)
        if try_fold and self.cont_ptes > 1 and desc and self.arch.is_valid(desc):
            self.contpte_try_fold(mm, va)

    def clear_pte(self, mm: MM, va: int) -> int:
        """ptep_get_and_clear(), unfolding a contpte block first; returns the old entry."""
        s = self.pte_slot(mm, va)
        if s is None:
            return 0
        old = self.store.read(*s)
        if old and self.arch.cont(old):
            self.contpte_unfold(mm, va)
            old = self.store.read(*s)
        self.store.write(s[0], s[1], 0)
        return old

    def contpte_unfold(self, mm: MM, va: int) -> None:
        """contpte_convert() without PTE_CONT: clear 16 entries, flush the 64 KiB
        block, rewrite them with the block's young/dirty ORed in."""
        self._contpte_convert(mm, va, cont=False)
        self.stats.count_vm_event("emu_contpte_unfold")

    def _contpte_convert(self, mm: MM, va: int, cont: bool) -> None:
        arch = self.arch
        start = self._block_start(va)
        s = self.pte_slot(mm, start)
        assert s is not None
        table, idx0 = s
        tab = self.store.table(table)
        entries = [int(tab[idx0 + j]) for j in range(self.cont_ptes)]
        young = any(arch.young(d) for d in entries if d)
        dirty = any(arch.dirty(d) for d in entries if d)
        tab[idx0:idx0 + self.cont_ptes] = 0              # break
        self.flush(mm, start, start + self.cont_size, self.page_shift, True)
        for j, d in enumerate(entries):                  # make
            if d == 0:
                continue
            d = arch.mkcont(d) if cont else arch.mknoncont(d)
            if young:
                d = arch.mkyoung(d)
            if dirty and arch.writable(d):
                d = arch.mkdirty(d)
            tab[idx0 + j] = d

    def contpte_try_fold(self, mm: MM, va: int) -> bool:
        """contpte_try_fold(): after setting the last entry of an aligned block, fold
        the 16 entries if they map 16 consecutive, aligned frames of one folio with
        equal attributes (AF and dirty ignored)."""
        arch = self.arch
        n = self.cont_ptes
        if ((va >> self.page_shift) & (n - 1)) != n - 1:
            return False
        start = self._block_start(va)
        s = self.pte_slot(mm, start)
        if s is None:
            return False
        tab = self.store.table(s[0])
        entries = [int(tab[s[1] + j]) for j in range(n)]
        d0 = entries[0]
        if not d0 or not arch.is_valid(d0) or arch.cont(d0):
            return False
        pfn0 = arch.pfn(d0)
        if pfn0 % n:
            return False
        folio_of = getattr(self, "folio_of_pfn", None)
        f0 = folio_of(pfn0) if folio_of else None
        if f0 is None or f0.nr_pages < n:
            return False
        for j, d in enumerate(entries):
            if not d or not arch.is_valid(d) or arch.pfn(d) != pfn0 + j:
                return False
            if not arch.attrs_equal(d, d0):
                return False
        self._contpte_convert(mm, start, cont=True)
        self.stats.count_vm_event("emu_contpte_fold")
        return True

    def unfold_partial(self, mm: MM, start: int, end: int) -> None:
        """contpte_try_unfold_partial(): unfold blocks that [start, end) cuts."""
        if self.cont_ptes == 1:
            return
        for edge in (start, end):
            if edge % self.cont_size == 0:
                continue
            va = edge if edge == start else edge - self.page_size
            d = self.get_pte(mm, va)
            if d and self.arch.cont(d):
                self.contpte_unfold(mm, va)
