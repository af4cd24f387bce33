"""fork: dup_mmap / copy_page_range with COW write protection on both sides.

A mixin of emu.kernel.kernel.Kernel.
"""

from __future__ import annotations

import numpy as np

from emu.kernel.mm import MM
from emu.kernel.vma import (
    VM_DONTCOPY,
    VM_SHARED,
    VM_WIPEONFORK,
    VMA,
)


class ForkMixin:
    """dup_mmap()."""

    def fork(self, parent_pid: int, child_pid: int) -> MM:
        """dup_mmap(): the child shares every anonymous folio; private writable
        mappings are write-protected on both sides (COW).  Page tables are copied only
        for VMAs with an anon_vma (vma_needs_copy)."""
        parent = self.mms.get(parent_pid)
        if parent is None:
            parent = self._new_mm(parent_pid)
        child = self._new_mm(child_pid)
        child.start_brk, child.brk = parent.start_brk, parent.brk
        child.thp_disabled = parent.thp_disabled
        self.files.fork(parent_pid, child_pid)      # copy_files(): the fd table too
        for vma in parent.vmas:
            if vma.flags & VM_DONTCOPY:
                continue
            nv = VMA(vma.start, vma.end, vma.flags, vma.kind, vma.name, vma.file, vma.pgoff)
            child.vmas.insert(nv)
            if vma.flags & VM_WIPEONFORK:
                continue
            if not vma.anon_vma:
                # vma_needs_copy() (mm/memory.c): only a VMA with an anon_vma (no
                # VM_PFNMAP/MIXEDMAP/UFFD_WP here) has entries a fault could not
                # recreate; the child refaults the rest (page cache, zero page)
                continue
            nv.anon_vma = vma.anon_vma
            self._copy_range(parent, child, vma)
        saved, self.flush_cause = self.flush_cause, "fork"
        self._flush_mm(parent)                      # dup_mmap: flush_tlb_mm(oldmm)
        self.flush_cause = saved
        self.bus.publish("emu_dup_mmap", 0, parent_asid=parent.asid, child_asid=child.asid)
        if self.khugepaged is not None:             # khugepaged_fork() in dup_mmap()
            self.khugepaged.khugepaged_fork(child, parent, self.khugepaged.now_ns)
        return child

    def _copy_range(self, src: MM, dst: MM, vma: VMA) -> None:
        pt, arch, store = self.pt, self.arch, self.physmem.pgtables
        cow = not vma.flags & VM_SHARED
        addr = vma.start
        while addr < vma.end:
            chunk_end = min((addr | (pt.pmd_size - 1)) + 1, vma.end)
            slot = pt.pmd_slot(src, addr)
            pmd = store.read(*slot) if slot else 0
            if pmd and pt.pmd_is_leaf(pmd):
                haddr = addr & ~(pt.pmd_size - 1)
                pfn = arch.pfn(pmd)
                if pfn != self.huge_zero_pfn:
                    f = self.folio_of_pfn(pfn)
                    if f is not None:
                        self.folio_add_rmap_pmd(f, dst)
                        f.exclusive = False
                    if cow:
                        pmd = arch.wrprotect(pmd)
                        store.write(slot[0], slot[1], pmd)
                dst.deposit[haddr] = pt.alloc_table(dst, pte_level=True)
                pt.set_pmd(dst, haddr, arch.mkold(pmd))
                addr = chunk_end
                continue
            table = pt.pte_table(src, addr) if pmd else None
            if table is None:
                addr = chunk_end
                continue
            tab = store.table(table)
            i0 = arch.index(addr, pt.pte_level)
            n = (chunk_end - addr) >> self.page_shift
            dslot = None
            for i in np.flatnonzero(tab[i0:i0 + n]):
                d = int(tab[i0 + i])
                va = addr + (int(i) << self.page_shift)
                if arch.is_swap(d):                       # swap_duplicate()
                    dst.add_counter("MM_SWAPENTS", 1)
                    self.swap.duplicate(arch.swp_offset(d))
                if arch.is_present(d):
                    pfn = arch.pfn(d)
                    if pfn != self.zero_pfn:
                        f = self.folio_of_pfn(pfn)
                        if f is not None:
                            self.folio_add_rmap_ptes(f, dst, pfn - f.pfn)
                            if f.anon:
                                f.exclusive = False
                            if cow and arch.writable(d):
                                d = arch.wrprotect(d)     # whole blocks keep PTE_CONT
                                tab[i0 + i] = d
                    d = arch.mkold(d)
                if dslot is None:
                    dslot = pt.pte_slot(dst, va, alloc=True)
                    assert dslot is not None
                store.write(dslot[0], arch.index(va, pt.pte_level), d)
            addr = chunk_end
