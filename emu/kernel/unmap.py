"""Unmapping: zap_page_range (munmap, MADV_DONTNEED, exit), PMD splits,
free_pgtables, MADV_FREE.

A mixin of emu.kernel.kernel.Kernel.
"""

from __future__ import annotations

import numpy as np

from emu.arch import PROT_EXEC, PROT_READ, PROT_WRITE
from emu.kernel.mm import MM
from emu.kernel.tlbflush import MmuGather


class UnmapMixin:
    """Zap, PMD split, page-table freeing, MADV_FREE."""

    def split_huge_pmd(self, mm: MM, haddr: int) -> None:
        """__split_huge_pmd(): replace a PMD leaf by a PTE table mapping the same
        pages with the same attributes (the deposited table); thp_split_pmd."""
        arch, pt = self.arch, self.pt
        haddr &= ~(pt.pmd_size - 1)
        slot = pt.pmd_slot(mm, haddr)
        if slot is None:
            return
        pmd = self.physmem.pgtables.read(*slot)
        if not pt.pmd_is_leaf(pmd):
            return
        table = mm.deposit.pop(haddr, None)
        if table is None:
            table = pt.alloc_table(mm, pte_level=True)
        self.physmem.pgtables.write(slot[0], slot[1], 0)           # pmdp_invalidate
        self.flush_pmd_tlb_range(mm, haddr, haddr + pt.pmd_size)
        self.stats.count_vm_event("thp_split_pmd")
        pfn = arch.pfn(pmd)
        prot = 0
        if not arch.is_protnone(pmd):
            prot = PROT_READ | (PROT_WRITE if arch.writable(pmd) else 0) \
                | (PROT_EXEC if arch.executable(pmd) else 0)
        young, dirty = arch.young(pmd), arch.dirty(pmd)
        self.physmem.pgtables.write(slot[0], slot[1], arch.mk_table(table))
        if pfn == self.huge_zero_pfn:
            tab = self.physmem.pgtables.table(table)
            tab[:] = arch.mk_pte(self.zero_pfn, prot & ~PROT_WRITE, young=young)
            return
        pt.set_ptes(mm, haddr, arch.mk_pte(pfn, prot, young, dirty), 1 << self.pmd_order)
        f = self.folio_of_pfn(pfn)
        if f is not None:
            f.entire_mapcount -= 1
            f.refcount -= 1
            f.page_mapcount += 1
            f.refcount += f.nr_pages

    def do_munmap(self, mm: MM, start: int, end: int) -> None:
        """Zap and remove [start, end), then free page tables nothing covers; one
        mmu_gather flushes what was cleared and freed (vms_clear_ptes)."""
        vmas = mm.vmas.carve(start, end)
        if not vmas:
            return
        tlb = MmuGather()
        for vma in vmas:
            self.zap_range(mm, vma.start, vma.end, tlb=tlb)
        for vma in vmas:
            mm.vmas.remove(vma)
        self.free_pgtables(mm, start, end, tlb)
        self.tlb_finish_mmu(mm, tlb)

    def vma_adjust_trans_huge(self, mm: MM, start: int, end: int) -> None:
        """Split PMD-mapped THPs that a VMA boundary at start or end now cuts
        (vma_adjust_trans_huge -> split_huge_pmd_address)."""
        for addr in (start, end):
            if addr % self.pt.pmd_size and self.pt.pmd_is_leaf(self.pt.get_pmd(mm, addr)):
                self.split_huge_pmd(mm, addr)

    def zap_range(self, mm: MM, start: int, end: int, flush: bool = True,
                  tlb: MmuGather | None = None) -> None:
        """zap_page_range(): unmap [start, end) (pages stay mapped elsewhere).

        The cleared entries join ``tlb``; without one the range gets its own gather,
        flushed at the end when ``flush`` (exit flushes the whole mm instead)."""
        own = tlb is None
        gather = MmuGather() if tlb is None else tlb
        self.bus.publish("emu_zap", 0, asid=mm.asid, start=start, end=end)
        pt, arch, store = self.pt, self.arch, self.physmem.pgtables
        addr = start
        while addr < end:
            chunk_end = min((addr | (pt.pmd_size - 1)) + 1, end)
            slot = pt.pmd_slot(mm, addr)
            if slot is None:
                addr = chunk_end
                continue
            pmd = store.read(*slot)
            if pmd == 0:
                addr = chunk_end
                continue
            if pt.pmd_is_leaf(pmd):
                haddr = addr & ~(pt.pmd_size - 1)
                if addr == haddr and chunk_end == haddr + pt.pmd_size:
                    store.write(slot[0], slot[1], 0)
                    gather.tlb_flush_pmd_range(haddr, pt.pmd_size)   # tlb_remove_pmd_tlb_entry
                    dep = mm.deposit.pop(haddr, None)
                    if dep is not None:
                        pt.free_table(mm, dep, pte_level=True)
                    f = self.folio_of_pfn(arch.pfn(pmd))
                    if f is not None and arch.pfn(pmd) != self.huge_zero_pfn:
                        self.folio_remove_rmap_pmd(f, mm)
                    addr = chunk_end
                    continue
                self.split_huge_pmd(mm, haddr)
            self._zap_ptes(mm, addr, chunk_end, gather)
            addr = chunk_end
        if own and flush:
            self.tlb_finish_mmu(mm, gather)

    def _zap_ptes(self, mm: MM, start: int, end: int, tlb: MmuGather) -> None:
        pt, arch = self.pt, self.arch
        table = pt.pte_table(mm, start)
        if table is None:
            return
        pt.unfold_partial(mm, start, end)
        tab = self.physmem.pgtables.table(table)
        i0 = arch.index(start, pt.pte_level)
        n = (end - start) >> self.page_shift
        batch: dict[int, list[int]] = {}
        lo = hi = -1                                # present entries cleared: the TLB span
        for i in np.flatnonzero(tab[i0:i0 + n]):
            d = int(tab[i0 + i])
            tab[i0 + i] = 0
            if not arch.is_present(d):
                self._swap_entry_gone(mm, d)
                continue
            if lo < 0:
                lo = int(i)
            hi = int(i)
            pfn = arch.pfn(d)
            if pfn == self.zero_pfn:
                continue
            f = self.folio_of_pfn(pfn)
            if f is not None:
                batch.setdefault(f.pfn, []).append(pfn - f.pfn)
        if lo >= 0:                                 # tlb_remove_tlb_entries()
            tlb.tlb_flush_pte_range(start + (lo << self.page_shift),
                                    (hi - lo + 1) << self.page_shift)
        for head, pages in batch.items():           # one rmap update per folio run
            f = self.folios[head]
            for p in pages:
                f.page_mapcount[p] -= 1
            f.mm_mapcount[mm.asid] -= len(pages)
            f.refcount -= len(pages)
            mm.add_counter(self._rss_counter(f), -len(pages))
            self._after_unmap(f)

    def free_pgtables(self, mm: MM, start: int, end: int, tlb: MmuGather | None = None) -> None:
        """Free page tables whose whole range no VMA covers any more (free_pgtables);
        each freed table joins ``tlb`` (pte_free_tlb/pmd_free_tlb)."""
        self._free_unused(mm, mm.pgd_pfn, 0, start, end, tlb)

    def _free_unused(self, mm: MM, table: int, level: int, start: int, end: int,
                     tlb: MmuGather | None = None) -> None:
        arch, pt = self.arch, self.pt
        shift = arch.level_shifts[level]
        size = 1 << shift
        tab = self.physmem.pgtables.table(table)
        a = start & ~(size - 1)
        while a < end:
            idx = arch.index(a, level)
            d = int(tab[idx])
            if d and level < pt.pte_level and arch.is_valid(d) and not arch.is_leaf(d, level):
                child = arch.pfn(d)
                if not mm.vmas.overlapping(a, a + size):
                    self._free_table_tree(mm, child, level + 1, a, tlb)
                    tab[idx] = 0
                elif level + 1 < pt.pte_level:
                    self._free_unused(mm, child, level + 1, max(a, start), min(a + size, end),
                                      tlb)
            elif d and level < pt.pte_level and arch.is_leaf(d, level) \
                    and not mm.vmas.overlapping(a, a + size):
                tab[idx] = 0
            a += size

    def _free_table_tree(self, mm: MM, table: int, level: int, addr: int = 0,
                         tlb: MmuGather | None = None) -> None:
        """Free a table of ``level`` covering from ``addr`` and every table below it."""
        if level < self.pt.pte_level:
            tab = self.physmem.pgtables.table(table)
            shift = self.arch.level_shifts[level]
            for idx in np.flatnonzero(tab):
                d = int(tab[idx])
                if self.arch.is_valid(d) and not self.arch.is_leaf(d, level):
                    self._free_table_tree(mm, self.arch.pfn(d), level + 1,
                                          addr + (int(idx) << shift), tlb)
        if tlb is not None and level > 0:
            tlb.free_table(level == self.pt.pte_level, addr)
        self.pt.free_table(mm, table, pte_level=(level == self.pt.pte_level))

    def madvise_free(self, mm: MM, start: int, end: int, tlb: MmuGather | None = None) -> None:
        """MADV_FREE: mark exclusive anonymous folios lazy-free and their PTEs old and
        clean; split large folios the range only partly covers.  Reclaim runs only at
        MADV_PAGEOUT (emu.kernel.swap), so the pages stay mapped (what a machine
        without memory pressure shows).  Only entries that were young or dirty change,
        and only those join ``tlb`` (madvise_free_pte_range, madvise_free_huge_pmd)."""
        pt, arch = self.pt, self.arch
        gather = MmuGather() if tlb is None else tlb
        addr = start
        while addr < end:
            chunk_end = min((addr | (pt.pmd_size - 1)) + 1, end)
            pmd = pt.get_pmd(mm, addr)
            if pmd and pt.pmd_is_leaf(pmd):
                haddr = addr & ~(pt.pmd_size - 1)
                f = self.folio_of_pfn(arch.pfn(pmd))
                if addr == haddr and chunk_end == haddr + pt.pmd_size:
                    if f is not None and f.only_mm(mm.asid):
                        f.lazyfree = True
                        if arch.young(pmd) or arch.dirty(pmd):
                            pt.set_pmd(mm, haddr, 0)               # pmdp_invalidate
                            self.flush_pmd_tlb_range(mm, haddr, haddr + pt.pmd_size)
                            pt.set_pmd(mm, haddr, arch.mkclean(arch.mkold(pmd)))
                            gather.tlb_flush_pmd_range(haddr, pt.pmd_size)
                    addr = chunk_end
                    continue
                self.split_huge_pmd(mm, haddr)
            va = addr
            while va < chunk_end:
                d = pt.get_pte(mm, va)
                if d and arch.is_swap(d):                 # free_swap_and_cache()
                    slot = pt.pte_slot(mm, va)
                    assert slot is not None
                    self.physmem.pgtables.write(slot[0], slot[1], 0)
                    self._swap_entry_gone(mm, d)
                    va += self.page_size
                    continue
                f = self.folio_of_pfn(arch.pfn(d)) if d and arch.is_present(d) else None
                if f is None or not f.anon or not f.only_mm(mm.asid):
                    va += self.page_size
                    continue
                fva = va - ((arch.pfn(d) - f.pfn) << self.page_shift)
                fend = fva + (f.nr_pages << self.page_shift)
                if f.large and (fva < start or fend > end):
                    for b in range(fva, fend, pt.cont_size):
                        e = pt.get_pte(mm, b)
                        if e and arch.cont(e):
                            pt.contpte_unfold(mm, b)
                    f = self.split_folio(f)[0] if f.mapped() else f
                    f = self.folio_of_pfn(arch.pfn(d))
                    if f is None:
                        va += self.page_size
                        continue
                f.lazyfree = True
                if arch.young(d) or arch.dirty(d):
                    pt.physmem.pgtables.write(*pt.pte_slot(mm, va), arch.mkclean(arch.mkold(d)))
                    gather.tlb_flush_pte_range(va, self.page_size)
                va += self.page_size
            addr = chunk_end
        # the integrity oracle: pages not written again may be discarded by reclaim
        self.bus.publish("emu_lazyfree", 0, asid=mm.asid, start=start, end=end)
        if tlb is None:
            self.tlb_finish_mmu(mm, gather)
