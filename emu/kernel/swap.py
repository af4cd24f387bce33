"""Swap: a minimal but real device whose slots hold a page's write version, and the
kernel paths that use it (do_swap_page, MADV_PAGEOUT).

MADV_PAGEOUT writes an exclusive anonymous page to a slot and leaves a swap entry in
its PTE; a fault or a PMD collapse swaps it back in (do_swap_page).  The integrity
oracle survives the round trip because the slot keeps the page's version.  fork
duplicates entries (swap_duplicate), so slots are reference counted.
"""

from dataclasses import dataclass, field

from emu.arch import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE
from emu.errors import EmuError
from emu.kernel.vma import vm_prot


@dataclass
class SwapSpace:
    """nr_slots swap slots; slot 0 is never handed out (a zero swp_entry is invalid)."""

    nr_slots: int = 1 << 20
    version: dict[int, int] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)
    _next: int = 1
    _free: list[int] = field(default_factory=list)
    pswpout: int = 0
    pswpin: int = 0

    def swap_out(self, version: int) -> int:
        """Store one page; returns its slot."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._next >= self.nr_slots:
                raise EmuError("swap space exhausted")
            slot = self._next
            self._next += 1
        self.version[slot] = version
        self.refs[slot] = 1
        self.pswpout += 1
        return slot

    def swap_in(self, slot: int) -> int:
        """Read one page back; returns its version (the slot keeps its other users)."""
        self.pswpin += 1
        return self.version[slot]

    def duplicate(self, slot: int) -> None:
        self.refs[slot] += 1

    def free(self, slot: int) -> None:
        """Drop one reference (swap_free); the slot is reusable at zero."""
        self.refs[slot] -= 1
        if self.refs[slot] == 0:
            del self.refs[slot]
            del self.version[slot]
            self._free.append(slot)

    @property
    def nr_used(self) -> int:
        return len(self.refs)


class SwapMixin:
    """do_swap_page() and MADV_PAGEOUT on the kernel's swap device (``self.swap``)."""

    def do_swap_page(self, mm, vma, va: int) -> bool:
        """Swap the page at va back in as an order-0 folio; False if there is no frame."""
        arch, store = self.arch, self.physmem.pgtables
        s = self.pt.pte_slot(mm, va)
        d = store.read(*s) if s is not None else 0
        if not d or not arch.is_swap(d):
            return False
        f = self.folio_alloc(0, anon=True)
        if f is None:
            return False
        slot = arch.swp_offset(d)
        self.physmem.version[f.pfn] = self.swap.swap_in(slot)
        self.swap.free(slot)
        store.write(s[0], s[1], arch.mk_pte(f.pfn, vm_prot(vma.flags), young=True))
        self.folio_add_rmap_ptes(f, mm, 0)
        mm.add_counter("MM_SWAPENTS", -1)
        self.stats.count_vm_event("pswpin")
        self.stats.count_vm_event("pgmajfault")
        return True

    def _discard_lazyfree(self, mm, f, va: int, s: tuple[int, int]) -> int:
        """try_to_unmap_one() on a lazy-free folio: clear and flush the PTE; if neither
        it nor anyone's reference says the page was written since MADV_FREE, drop it
        (the next read finds zeroes); else remap it, swap-backed again.  A PTE whose
        dirty bit was lost is how a lazy-free page loses data (docs/collapse.md)."""
        arch = self.arch
        d = self.pt.clear_pte(mm, va)                    # ptep_clear_flush
        self._flush(mm, va, va + PAGE_SIZE, PAGE_SHIFT, True)
        if not arch.dirty(d) and f.refcount == f.mapcount():
            self.folio_remove_rmap_ptes(f, mm, 0)         # the last mapping: freed
            self.stats.count_vm_event("pglazyfreed")
            self.bus.publish("emu_lazyfree_discard", 0, asid=mm.asid, va=va)
            return 1
        self.physmem.pgtables.write(s[0], s[1], d)       # redirtied: set_pte_at back
        f.lazyfree = False                               # folio_set_swapbacked()
        return 0

    def madvise_pageout(self, mm, start: int, end: int) -> int:
        """MADV_PAGEOUT: write exclusive anonymous small pages to swap; large folios the
        range covers are split first (PMD-mapped ones after a PMD split).  Lazy-free
        pages are dropped if clean, kept if written again.  Returns the number of pages
        reclaimed."""
        arch, pt, store = self.arch, self.pt, self.physmem.pgtables
        n = 0
        for haddr in range(start & ~(PMD_SIZE - 1), end, PMD_SIZE):
            d = pt.get_pmd(mm, haddr)
            if d and pt.pmd_is_leaf(d):
                self.split_huge_pmd(mm, haddr)
        va = start & ~(PAGE_SIZE - 1)
        while va < end:
            s = pt.pte_slot(mm, va)
            d = store.read(*s) if s is not None else 0
            if not d or not arch.is_present(d) or arch.pfn(d) == self.zero_pfn:
                va += PAGE_SIZE
                continue
            f = self.folio_of_pfn(arch.pfn(d))
            if f is None or not f.anon or f.maybe_mapped_shared():
                va += PAGE_SIZE
                continue
            if f.large:
                fva = va - ((arch.pfn(d) - f.pfn) << PAGE_SHIFT)
                pt.unfold_partial(mm, fva, fva + (f.nr_pages << PAGE_SHIFT))
                self.split_folio(f)
                f = self.folio_of_pfn(arch.pfn(d))
            if f.lazyfree:
                n += self._discard_lazyfree(mm, f, va, s)
                va += PAGE_SIZE
                continue
            slot_no = self.swap.swap_out(int(self.physmem.version[f.pfn]))
            pt.clear_pte(mm, va)
            self._flush(mm, va, va + PAGE_SIZE, PAGE_SHIFT, True)
            store.write(s[0], s[1], arch.mk_swap(0, slot_no))
            self.folio_remove_rmap_ptes(f, mm, 0)
            mm.add_counter("MM_SWAPENTS", 1)
            self.stats.count_vm_event("pswpout")
            self.stats.count_mthp_stat(0, "swpout")
            n += 1
            va += PAGE_SIZE
        return n
