"""mremap to a new address: move VMAs and page-table entries.

A mixin of emu.kernel.kernel.Kernel.
"""

from __future__ import annotations

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
            e = pt.get_pte(mm, s)
            if e:
                e = pt.clear_pte(mm, s)
                pt.set_pte(mm, d, e)
            off += self.page_size
