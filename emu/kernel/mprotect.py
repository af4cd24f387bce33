"""mprotect: change_protection over PTEs and PMD leaves, contpte-aware.

A mixin of emu.kernel.kernel.Kernel.
"""

from __future__ import annotations

import numpy as np

from emu.arch import PROT_WRITE
from emu.kernel.mm import MM
from emu.kernel.tlbflush import MmuGather
from emu.kernel.vma import (
    VM_SHARED,
    VMA,
    vm_prot,
)


class MprotectMixin:
    """change_protection()."""

    def _pte_needs_flush(self, old: int, new: int) -> bool:
        """pte_needs_flush()/huge_pmd_needs_flush(): x86 (arch/x86/include/asm/tlbflush.h)
        only when a cached entry can be wrong -- the old entry was present to the
        hardware and its protection bits changed (the accessed bit ignored); arm64
        has no override, so every present entry counts (the generic answer, true)."""
        arch = self.arch
        if arch.name != "x86_64":
            return True
        return arch.is_valid(old) and arch.mkyoung(old) != arch.mkyoung(new)

    def change_protection(self, mm: MM, vma: VMA, start: int, end: int,
                          tlb: MmuGather | None = None) -> None:
        """change_protection(): rewrite the PTEs/PMDs of [start, end) with the VMA's
        new protection.  Write permission is granted only where the kernel would
        (exclusive anonymous pages, shared mappings); COW stays pending elsewhere.
        Entries that need a flush join ``tlb``, which the caller finishes."""
        pt, arch, store = self.pt, self.arch, self.physmem.pgtables
        gather = MmuGather() if tlb is None else tlb
        prot = vm_prot(vma.flags)
        shared = bool(vma.flags & VM_SHARED)

        def eff(d: int) -> int:
            if not prot & PROT_WRITE or shared:
                return prot
            # can_change_pte_writable() (mm/mprotect.c): private pages only when
            # PageAnonExclusive (folio-wide here: cleared by fork, set by COW reuse)
            f = self.folio_of_pfn(arch.pfn(d))
            ok = f is not None and f.anon and f.exclusive
            return prot if ok else prot & ~PROT_WRITE

        addr = start
        while addr < end:
            chunk_end = min((addr | (pt.pmd_size - 1)) + 1, end)
            slot = pt.pmd_slot(mm, addr)
            pmd = store.read(*slot) if slot else 0
            if pmd and pt.pmd_is_leaf(pmd):
                haddr = addr & ~(pt.pmd_size - 1)
                if addr == haddr and chunk_end == haddr + pt.pmd_size:
                    p = prot & ~PROT_WRITE if arch.pfn(pmd) == self.huge_zero_pfn else eff(pmd)
                    new = arch.modify_prot(pmd, p)
                    if arch.name != "x86_64":         # generic pmdp_invalidate_ad flushes
                        store.write(slot[0], slot[1], 0)
                        self.flush_pmd_tlb_range(mm, haddr, haddr + pt.pmd_size)
                    store.write(slot[0], slot[1], new)
                    if self._pte_needs_flush(pmd, new):
                        gather.tlb_flush_pmd_range(haddr, pt.pmd_size)
                    addr = chunk_end
                    continue
                self.split_huge_pmd(mm, haddr)
            table = pt.pte_table(mm, addr)
            if table is None:
                addr = chunk_end
                continue
            pt.unfold_partial(mm, addr, chunk_end)
            tab = store.table(table)
            i0 = arch.index(addr, pt.pte_level)
            n = (chunk_end - addr) >> self.page_shift
            for i in np.flatnonzero(tab[i0:i0 + n]):
                d = int(tab[i0 + i])
                if not arch.is_present(d):
                    continue
                p = prot & ~PROT_WRITE if arch.pfn(d) == self.zero_pfn else eff(d)
                new = arch.modify_prot(d, p)
                tab[i0 + i] = new
                if self._pte_needs_flush(d, new):
                    gather.tlb_flush_pte_range(addr + (int(i) << self.page_shift),
                                               self.page_size)
            if pt.cont_ptes > 1:                   # a block whose entries now differ
                b = addr & ~(pt.cont_size - 1)
                while b < chunk_end:
                    d0 = pt.get_pte(mm, b)
                    if d0 and arch.cont(d0):
                        bi = arch.index(b, pt.pte_level)
                        blk = [int(x) for x in tab[bi:bi + pt.cont_ptes]]
                        if not all(x and arch.attrs_equal(x, d0) for x in blk):
                            pt.contpte_unfold(mm, b)
                    b += pt.cont_size
            addr = chunk_end
        if tlb is None:
            self.tlb_finish_mmu(mm, gather)
