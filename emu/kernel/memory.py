"""The fault path (mm/memory.c, mm/huge_memory.c): handle_mm_fault, anonymous
faults with alloc_anon_folio's order choice, PMD THP and the huge zero page,
file faults with fault-around, COW (wp_page_reuse / wp_page_copy).

A mixin of emu.kernel.kernel.Kernel.
"""

from __future__ import annotations

from emu.arch import PROT_WRITE
from emu.kernel.fault import choose_anon_order, thp_fault_orders
from emu.kernel.folio import Folio
from emu.kernel.mm import MM
from emu.kernel.vma import (
    VM_EXEC,
    VM_GROWSDOWN,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    VMA,
    vm_prot,
)

ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC = 0, 1, 2

# Implicit VMAs (QEMU's own set-up, unseen by the plugin): a fault within this
# distance of the implicit stack grows it; anything else gets a page VMA.
STACK_WINDOW = 8 << 20
IMPLICIT_NAMES = ("[stack]", "[implicit]")


class FaultMixin:
    """handle_mm_fault and everything it calls."""

    def handle_mm_fault(self, pid: int, cpu: int, va: int, access: int, reason=None) -> bool:
        """Resolve a fault at va; True when the mapping now allows the access."""
        mm = self.enter(pid, cpu)
        self.stats.count_vm_event("pgfault")
        if self.flush_cause is None:              # a fault inside a syscall keeps its cause
            self.flush_cause = "fault"
            try:
                return self._handle_mm_fault(mm, pid, va, access)
            finally:
                self.flush_cause = None
        return self._handle_mm_fault(mm, pid, va, access)

    def _handle_mm_fault(self, mm: MM, pid: int, va: int, access: int) -> bool:
        va &= ~(self.page_size - 1)
        vma = mm.vmas.find(va)
        if vma is None and access == ACCESS_EXEC and pid in self._pending_pie:
            elf = self._pending_pie.pop(pid)
            self._map_elf(mm, elf, va - (int(elf.entry) & ~(self.page_size - 1)))
            vma = mm.vmas.find(va)
        if vma is None and access == ACCESS_EXEC and pid in self._pending_interp:
            self._map_interp(mm, va)
            vma = mm.vmas.find(va)
        if vma is None:
            vma = self._implicit_vma(mm, va, access)
        if not self._access_ok(vma, access):
            if vma.name not in IMPLICIT_NAMES:
                self.stats.count_vm_event("emu_fault_bad_access")
                return False
            # our own guess at QEMU's set-up was too strict: QEMU allowed the access
            vma.flags |= (VM_READ, VM_WRITE, VM_EXEC)[access]
            self.stats.count_vm_event("emu_implicit_prot_upgrade")
        try:
            return self._fault(mm, vma, va, access)
        except MemoryError:                       # no frame even for a page table
            self.stats.count_vm_event("emu_fault_oom")
            return False

    @staticmethod
    def _access_ok(vma: VMA, access: int) -> bool:
        if access == ACCESS_WRITE:
            return bool(vma.flags & VM_WRITE)
        if access == ACCESS_EXEC:
            return bool(vma.flags & VM_EXEC)
        return bool(vma.flags & (VM_READ | VM_WRITE | VM_EXEC))

    def _implicit_vma(self, mm: MM, va: int, access: int = ACCESS_READ) -> VMA:
        """A VMA for memory QEMU set up before the guest ran (see docs/kernel.md)."""
        rwx = VM_READ | VM_WRITE | VM_EXEC
        if access != ACCESS_EXEC:                 # fetches: code QEMU loaded (ld.so, vdso)
            stack = next((v for v in mm.vmas if v.kind == "stack" and v.name == "[stack]"),
                         None)
            if stack is None:
                return mm.vmas.insert(VMA(va, va + self.page_size,
                                          VM_READ | VM_WRITE | VM_GROWSDOWN, "stack", "[stack]"))
            if stack.start - STACK_WINDOW <= va < stack.start and not mm.vmas.overlapping(
                    va, stack.start):
                mm.vmas.set_start(stack, va)
                return stack
            if stack.end <= va < stack.end + STACK_WINDOW and not mm.vmas.overlapping(
                    stack.end, va + self.page_size):
                stack.end = va + self.page_size
                return stack
        mm.vmas.insert(VMA(va, va + self.page_size, rwx, "implicit", "[implicit]"))
        mm.vmas.merge_around(va, va + self.page_size)
        found = mm.vmas.find(va)
        assert found is not None
        return found

    def _pte_prot(self, vma: VMA, writable: bool) -> int:
        p = vm_prot(vma.flags)
        return p if writable else p & ~PROT_WRITE

    def _pmd_thp_allowed(self, mm: MM, vma: VMA, va: int) -> bool:
        orders = thp_fault_orders(self.config, vma, mm.thp_disabled, va, self.pmd_order)
        return bool(orders) and orders[0] == self.pmd_order

    def _fault(self, mm: MM, vma: VMA, va: int, access: int) -> bool:
        write = access == ACCESS_WRITE
        pt, arch, store = self.pt, self.arch, self.physmem.pgtables
        ps = pt.pmd_slot(mm, va, alloc=True)
        assert ps is not None
        pmd = store.read(*ps)
        if pmd == 0 and vma.is_anon and self._pmd_thp_allowed(mm, vma, va):
            # do_huge_pmd_anonymous_page(): vmf_anon_prepare(), then khugepaged_enter_vma()
            vma.anon_vma = True
            self.khugepaged_enter_vma(mm, vma)
            if not write and self.config.use_zero_page:
                if self._map_huge_zero_pmd(mm, vma, va):
                    return True
            elif self._do_huge_pmd_anonymous_page(mm, vma, va):
                return True
            pmd = store.read(*ps)
        if pt.pmd_is_leaf(pmd):
            return self._huge_pmd_fault(mm, vma, va, access, pmd)
        if pmd == 0:                              # __pte_alloc
            table = pt.alloc_table(mm, pte_level=True)
            store.write(ps[0], ps[1], arch.mk_table(table))
        else:
            table = arch.pfn(pmd)
        idx = (va >> self.page_shift) & pt.index_mask
        pte = int(store.table(table)[idx])
        if pte == 0:
            return self._do_pte_missing(mm, vma, va, write, table)
        if not arch.is_present(pte):
            if not arch.is_swap(pte) or not self.do_swap_page(mm, vma, va):
                return False
            pte = int(store.table(table)[idx])
        if arch.is_protnone(pte):                 # VMA allows it now: refresh
            pt.set_pte(mm, va, arch.modify_prot(pte, self._pte_prot(vma, False)))
            pte = int(store.table(table)[idx])
        if write and not arch.writable(pte):
            return self._do_wp_page(mm, vma, va, pte)
        if access == ACCESS_EXEC and not arch.executable(pte) and vma.flags & VM_EXEC:
            # The VMA became executable after this page was mapped from a guess
            # (an implicit area QEMU set up unseen): take the VMA's protection.
            pt.set_pte(mm, va, arch.modify_prot(pte, self._pte_prot(vma, arch.writable(pte))))
            pte = int(store.table(table)[idx])
        # ptep_set_access_flags(): hardware without AF/DBM updates faults here
        new = arch.mkyoung(pte)
        if write:
            new = arch.mkdirty(new)
        if new != pte:
            store.table(table)[idx] = new
        return True

    def _do_pte_missing(self, mm: MM, vma: VMA, va: int, write: bool, table: int) -> bool:
        arch, pt = self.arch, self.pt
        if vma.is_anon:
            if not write:                         # do_anonymous_page: the zero page
                pt.set_pte(mm, va, arch.mk_pte(self.zero_pfn, self._pte_prot(vma, False),
                                               young=True), try_fold=False)
                return True
            return self._do_anonymous_page(mm, vma, va, table)
        shared = bool(vma.flags & VM_SHARED)
        if not write and self.fault_around_bytes > self.page_size:
            self._do_fault_around(mm, vma, va, table)
            if self.physmem.pgtables.table(table)[(va >> self.page_shift) & pt.index_mask]:
                return True
        f = self._page_cache_folio(vma.file or "", vma.file_index(va), create=True)
        if f is None:
            return False
        if write and not shared:                  # do_cow_fault
            g = self.folio_alloc(0, anon=True)
            if g is None:
                return False
            self.physmem.copy(g.pfn, f.pfn)
            pt.set_pte(mm, va, arch.mk_pte(g.pfn, self._pte_prot(vma, True), True, True))
            self.folio_add_rmap_ptes(g, mm, 0)
            vma.anon_vma = True
            self._cow(mm, va, "copy")
            return True
        pt.set_pte(mm, va, arch.mk_pte(f.pfn, self._pte_prot(vma, shared), True, write))
        self.folio_add_rmap_ptes(f, mm, 0)
        return True

    def _do_fault_around(self, mm: MM, vma: VMA, va: int, table: int) -> None:
        """do_fault_around() + filemap_map_pages(): map the cached pages of the
        fault_around_bytes window around a file read fault (none PTEs only, inside
        the VMA and the PTE table).  Prefaulted entries are old where the arch
        wants them old (arm64 with hardware AF), young otherwise."""
        arch, shift, mask = self.arch, self.page_shift, self.pt.index_mask
        nr = self.fault_around_bytes >> shift
        pte_off = (va >> shift) & mask
        vma_off = (va - vma.start) >> shift
        from_pte = max(pte_off & ~(nr - 1), pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + nr, mask + 1, pte_off + vma.nr_pages - vma_off)
        tab = self.physmem.pgtables.table(table)
        prot = self._pte_prot(vma, bool(vma.flags & VM_SHARED))
        old_prefault = arch.name == "arm64" and bool(
            getattr(getattr(self.hw, "profile", None), "hafdbs", True))
        base = va - (pte_off << shift)
        for i in range(from_pte, to_pte):
            if tab[i]:
                continue
            a = base + (i << shift)
            f = self._page_cache_folio(vma.file or "", vma.file_index(a), create=False)
            if f is None:
                continue
            tab[i] = arch.mk_pte(f.pfn, prot, young=(a == va or not old_prefault))
            self.folio_add_rmap_ptes(f, mm, 0)

    def _do_anonymous_page(self, mm: MM, vma: VMA, va: int, table: int) -> bool:
        """Anonymous write fault: alloc_anon_folio()'s order choice, then set_ptes."""
        orders = thp_fault_orders(self.config, vma, mm.thp_disabled, va, self.pmd_order - 1)
        if orders:
            tab = self.physmem.pgtables.table(table)
            mask, shift = self.pt.index_mask, self.page_shift

            def range_none(base: int, nr: int) -> bool:
                i = (base >> shift) & mask
                return not tab[i:i + nr].any()

            tries = choose_anon_order(orders, va, range_none, self.page_shift)
        else:
            tries = [0]
        folio = None
        for order in tries:
            folio = self.folio_alloc(order, anon=True)
            if folio is not None:
                break
            if order:
                self.stats.count_mthp_stat(order, "anon_fault_fallback")
        if folio is None:
            return False                          # VM_FAULT_OOM
        nr = folio.nr_pages
        addr = va & ~((nr << self.page_shift) - 1)
        desc = self.arch.mk_pte(folio.pfn, self._pte_prot(vma, True), young=True, dirty=True)
        if nr == 1 and self.pt.cont_ptes == 1:
            idx = (addr >> self.page_shift) & self.pt.index_mask
            self.physmem.pgtables.table(table)[idx] = desc
        elif nr == 1:
            self.pt.set_pte(mm, addr, desc)
        else:
            self.pt.set_ptes(mm, addr, desc, nr)
        self.folio_add_rmap_ptes(folio, mm, 0, nr)
        vma.anon_vma = True
        if folio.order:
            self.stats.count_mthp_stat(folio.order, "anon_fault_alloc")
        return True

    def pte_range_none(self, mm: MM, base: int, nr: int) -> bool:
        """pte_range_none(): every PTE of [base, base + nr pages) is none."""
        s = self.pt.pte_slot(mm, base)
        if s is None:
            return self.pt.get_pmd(mm, base) == 0
        tab = self.physmem.pgtables.table(s[0])
        return not tab[s[1]:s[1] + nr].any()

    def _do_huge_pmd_anonymous_page(self, mm: MM, vma: VMA, va: int) -> bool:
        haddr = va & ~(self.pt.pmd_size - 1)
        f = self.folio_alloc(self.pmd_order, anon=True)
        if f is None:
            self.stats.count_vm_event("thp_fault_fallback")
            self.stats.count_mthp_stat(self.pmd_order, "anon_fault_fallback")
            return False
        self._install_huge_pmd(mm, vma, haddr, f)
        self.stats.count_vm_event("thp_fault_alloc")
        self.stats.count_mthp_stat(self.pmd_order, "anon_fault_alloc")
        return True

    def _install_huge_pmd(self, mm: MM, vma: VMA, haddr: int, f: Folio) -> None:
        """Map f with a PMD leaf (writable, young, dirty) and deposit a PTE table."""
        if haddr not in mm.deposit:
            mm.deposit[haddr] = self.pt.alloc_table(mm, pte_level=True)
        self.pt.set_pmd(mm, haddr, self.arch.mk_pmd_leaf(
            f.pfn, self._pte_prot(vma, True), young=True, dirty=True))
        self.folio_add_rmap_pmd(f, mm)
        vma.anon_vma = True

    def _map_huge_zero_pmd(self, mm: MM, vma: VMA, va: int) -> bool:
        if self.huge_zero_pfn is None:
            pfn = self.buddy.alloc(self.pmd_order)
            if pfn is None:
                self.stats.count_vm_event("thp_zero_page_alloc_failed")
                self.stats.count_vm_event("thp_fault_fallback")
                return False
            self.physmem.zero(pfn, 1 << self.pmd_order)
            self.huge_zero_pfn = pfn
            self.stats.count_vm_event("thp_zero_page_alloc")
        haddr = va & ~(self.pt.pmd_size - 1)
        if haddr not in mm.deposit:
            mm.deposit[haddr] = self.pt.alloc_table(mm, pte_level=True)
        self.pt.set_pmd(mm, haddr, self.arch.mk_pmd_leaf(
            self.huge_zero_pfn, self._pte_prot(vma, False), young=True))
        vma.anon_vma = True          # do_huge_pmd_anonymous_page: vmf_anon_prepare() first
        return True

    def _huge_pmd_fault(self, mm: MM, vma: VMA, va: int, access: int, pmd: int) -> bool:
        arch = self.arch
        haddr = va & ~(self.pt.pmd_size - 1)
        if access != ACCESS_WRITE or arch.writable(pmd):
            new = arch.mkyoung(pmd)               # pmdp_set_access_flags()
            if access == ACCESS_WRITE:
                new = arch.mkdirty(new)
            if new != pmd:
                self.pt.set_pmd(mm, haddr, new)
            return True
        if arch.pfn(pmd) == self.huge_zero_pfn:      # do_huge_zero_wp_pmd
            f = self.folio_alloc(self.pmd_order, anon=True)
            if f is not None:
                self.pt.set_pmd(mm, haddr, 0)          # pmdp_huge_clear_flush
                self.flush_pmd_tlb_range(mm, haddr, haddr + self.pt.pmd_size)
                self._install_huge_pmd(mm, vma, haddr, f)
                self.stats.count_vm_event("thp_fault_alloc")
                self.stats.count_mthp_stat(self.pmd_order, "anon_fault_alloc")
                return True
            self.stats.count_vm_event("thp_fault_fallback")
            self.stats.count_mthp_stat(self.pmd_order, "anon_fault_fallback")
            self.split_huge_pmd(mm, haddr)
            return self._fault(mm, vma, va, access)
        f = self.folio_of_pfn(arch.pfn(pmd))
        if f is not None and f.anon and f.only_mm(mm.asid) and f.entire_mapcount == 1 \
                and not f.page_mapcount.any():    # do_huge_pmd_wp_page: reuse
            self.pt.set_pmd(mm, haddr, arch.mkdirty(arch.mkyoung(arch.mkwrite(pmd))))
            f.exclusive = True
            self._cow(mm, va, "reuse")
            return True
        self.split_huge_pmd(mm, haddr)               # then COW one page at PTE level
        return self._fault(mm, vma, va, access)

    def _do_wp_page(self, mm: MM, vma: VMA, va: int, pte: int) -> bool:
        arch, pt = self.arch, self.pt
        pfn = arch.pfn(pte)
        f = self.folio_of_pfn(pfn)
        if vma.flags & VM_SHARED and f is not None and not f.anon:
            pt.set_pte(mm, va, arch.mkdirty(arch.mkyoung(arch.mkwrite(pte))), try_fold=False)
            return True
        if f is not None and f.anon and (f.exclusive or self.wp_can_reuse_anon_folio(f, mm)):
            # wp_page_reuse -> ptep_set_access_flags: unfolds a contpte block (the write
            # bit changes) and, unlike set_ptes, never tries to fold again
            pt.set_pte(mm, va, arch.mkdirty(arch.mkyoung(arch.mkwrite(pte))), try_fold=False)
            if not f.large:                 # SetPageAnonExclusive(page): the folio is the page
                f.exclusive = True
            self._cow(mm, va, "reuse")
            return True
        g = self.folio_alloc(0, anon=True)                                         # wp_page_copy
        if g is None:
            return False
        if pfn != self.zero_pfn:
            self.physmem.copy(g.pfn, pfn)
        pt.clear_pte(mm, va)                                  # ptep_clear_flush
        self.flush_tlb_page(mm, va)
        pt.set_pte(mm, va, arch.mk_pte(g.pfn, self._pte_prot(vma, True), True, True))
        self.folio_add_rmap_ptes(g, mm, 0)
        vma.anon_vma = True
        if f is not None:
            self.folio_remove_rmap_ptes(f, mm, pfn - f.pfn)
            self._cow(mm, va, "copy")
        return True

    @staticmethod
    def wp_can_reuse_anon_folio(f: Folio, mm: MM) -> bool:
        """wp_can_reuse_anon_folio() (mm/memory.c): may a write fault on a page that is
        not PageAnonExclusive reuse its folio?

        Large folios (__wp_can_reuse_large_anon_folio): only with more than one
        mapping (a folio mapped by one page is copied so the rest can be freed), no
        other mm mapping it (FOLIO_MM_IDS_SHARED clear) and every reference a
        mapping.  Small folios: the only reference is this mapping.
        """
        if f.large:
            large_mapcount = int(f.page_mapcount.sum()) + f.entire_mapcount
            if large_mapcount <= 1:
                return False
            if not f.only_mm(mm.asid):
                return False
            return large_mapcount == f.refcount
        return f.refcount == 1

    def _cow(self, mm: MM, va: int, what: str) -> None:
        self.stats.count_vm_event("emu_cow_" + what)
        if self.cow_log is not None:
            self.cow_log.append((mm.pid, va, what))
