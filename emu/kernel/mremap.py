"""mremap to a new address: move VMAs and page-table entries.

A mixin of emu.kernel.kernel.Kernel.
"""

from __future__ import annotations

import numpy as np

from emu.kernel.mm import MM
from emu.kernel.vma import (
    VMA,
)


class MremapMixin:
    """move_vma() / move_page_tables()."""

    def move_range(self, mm: MM, old: int, old_len: int, new: int, new_len: int,
                   keep_old: bool = False) -> None:
        """mremap() to a new address: move VMAs and page-table entries (folios keep
        their mappings), then trim or grow as asked."""
        move_len = min(old_len, new_len)
        self.do_munmap(mm, new, new + new_len)
        self.bus.publish("emu_move", 0, asid=mm.asid, old=old, new=new,
                         length=min(old_len, new_len))
        src = mm.vmas.carve(old, old + move_len)
        if not src:
            return
        moved = [VMA(new + (v.start - old), new + (v.end - old), v.flags, v.kind, v.name,
                     v.file, v.pgoff, v.anon_vma) for v in src]
        self._move_ptes(mm, old, new, move_len)
        if not keep_old:
            for v in src:
                mm.vmas.remove(v)
        for v in moved:
            mm.vmas.insert(v)
        if not keep_old:
            self.free_pgtables(mm, old, old + move_len)
        self._flush(mm, old, old + move_len, self.page_shift, False)
        if new_len > old_len:
            moved[-1].end = new + new_len
        mm.vmas.merge_around(new, new + new_len)
        if old_len > new_len and not keep_old:
            self.do_munmap(mm, old + move_len, old + old_len)

    def _move_ptes(self, mm: MM, old: int, new: int, length: int) -> None:
        pt = self.pt
        off = 0
        while off < length:
            s, d = old + off, new + off
            pmd = pt.get_pmd(mm, s)
            if pmd == 0:
                off = ((s | (pt.pmd_size - 1)) + 1) - old
                continue
            if pt.pmd_is_leaf(pmd):
                if s % pt.pmd_size == 0 and d % pt.pmd_size == 0 and length - off >= pt.pmd_size:
                    slot = pt.pmd_slot(mm, s)
                    assert slot is not None
                    self.physmem.pgtables.write(slot[0], slot[1], 0)
                    old_d = pt.get_pmd(mm, d)
                    if old_d and not pt.pmd_is_leaf(old_d):   # an empty PTE table: free it
                        dslot = pt.pmd_slot(mm, d)
                        assert dslot is not None
                        self.physmem.pgtables.write(dslot[0], dslot[1], 0)
                        self._free_table_tree(mm, self.arch.pfn(old_d), pt.pte_level)
                    pt.set_pmd(mm, d, pmd)
                    if s in mm.deposit:
                        mm.deposit[d] = mm.deposit.pop(s)
                    off += pt.pmd_size
                    continue
                self.split_huge_pmd(mm, s)
            # The PTEs up to the end of the source or the destination PTE table.
            n = min(length - off, pt.pmd_size - s % pt.pmd_size,
                    pt.pmd_size - d % pt.pmd_size) >> self.page_shift
            self._move_pte_run(mm, s, d, n)
            off += n << self.page_shift

    def _move_pte_run(self, mm: MM, s: int, d: int, n: int) -> None:
        """move_ptes(): n PTEs from s to d, both inside one PTE table each.

        A slice of each table at once (busybox sort grows its line array with
        hundreds of mremap()s, which entry by entry took most of `emu run`'s model
        time); entry by entry where an arm64 contiguous block is involved, since
        clearing and setting those unfolds and folds (pgtable.py)."""
        pt, store = self.pt, self.physmem.pgtables
        src = pt.pte_table(mm, s)
        if src is None:
            return
        i0 = (s >> self.page_shift) & pt.index_mask
        nz = np.flatnonzero(store.table(src)[i0:i0 + n])
        if len(nz) == 0:
            return
        if pt.cont_ptes > 1:
            vals = store.table(src)[i0 + nz]
            dst = pt.pte_table(mm, d)
            dvals = () if dst is None else store.table(dst)[
                ((d >> self.page_shift) & pt.index_mask) + nz]
            if any(self.arch.cont(int(x)) for x in (*vals, *dvals)):
                for j in nz.tolist():
                    e = pt.clear_pte(mm, s + (j << self.page_shift))
                    pt.set_pte(mm, d + (j << self.page_shift), e)
                return
        slot = pt.pte_slot(mm, d, alloc=True)     # may grow the store: views after it
        assert slot is not None
        stab, dtab = store.table(src), store.table(slot[0])
        dtab[slot[1] + nz] = stab[i0 + nz]
        stab[i0 + nz] = 0
        if pt.cont_ptes > 1:
            # set_pte() tries to fold after the last entry of each aligned block.
            last = pt.cont_ptes - 1
            for j in nz.tolist():
                va = d + (j << self.page_shift)
                if (va >> self.page_shift) & last == last:
                    pt.contpte_try_fold(mm, va)
