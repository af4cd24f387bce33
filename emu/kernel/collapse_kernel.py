"""CollapseOps on the kernel model's real page tables, folios and TLB flushes.

``bind_collapse(kernel)`` attaches khugepaged, MADV_COLLAPSE and a swap device to an
emu.kernel.kernel.Kernel through the hooks it offers (``kernel.khugepaged.enter``,
``kernel.madvise_collapse_handler``).  PTEs are read and written as the
architecture's descriptors (emu.arch), so the hardware model's walker sees every
step: the PMD cleared by pmdp_collapse_flush, the flush through emu.kernel.tlbflush,
the huge PMD or the set_ptes (contiguous on arm64 for aligned order >= 4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emu.kernel.collapse import Tracer
from emu.kernel.collapse_ops import (
    HPAGE_PMD_MASK,
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    HPAGE_PMD_SIZE,
    KHUGEPAGED_MIN_MTHP_ORDER,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_INFO,
    PTE_NONPRESENT,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
    ThpSettings,
    VmaInfo,
)
from emu.kernel.khugepaged import Khugepaged
from emu.kernel.khugepaged_knobs import CollapseCosts, KhugepagedKnobs
from emu.kernel.madvise_collapse import MadviseCollapseRecord, madvise_collapse
from emu.kernel.swap import SwapSpace


class KernelThp:
    """ThpSettings' questions answered from the kernel model's live ThpConfig."""

    _mask = ThpSettings._mask
    anon_orders = ThpSettings.anon_orders
    hugepage_enabled = ThpSettings.hugepage_enabled

    def __init__(self, config) -> None:
        self.config = config

    @property
    def enabled(self) -> str:
        return self.config.enabled

    @property
    def hugepages(self) -> dict[int, str]:
        return {o: self.config.per_size(o)
                for o in range(KHUGEPAGED_MIN_MTHP_ORDER, HPAGE_PMD_ORDER + 1)}


class KernelCollapseOps:
    """The CollapseOps protocol over emu.kernel.kernel.Kernel."""

    def __init__(self, kernel, swap: SwapSpace | None = None) -> None:
        if kernel.page_shift != PAGE_SHIFT or kernel.pmd_order != HPAGE_PMD_ORDER:
            raise ValueError("collapse is modelled for 4 KiB base pages only")
        self.k = kernel
        self.arch = kernel.arch
        self.pt = kernel.pt
        self.store = kernel.physmem.pgtables
        self.thp = KernelThp(kernel.config)
        self.swap = swap or SwapSpace()
        self.costs = CollapseCosts.load()

    # ---------------------------------------------------------------- looking
    def mm_exiting(self, mm) -> bool:
        return bool(mm.exited)

    def mm_thp_disabled(self, mm) -> bool:
        return bool(mm.thp_disabled)

    @staticmethod
    def _info(vma) -> VmaInfo:
        return VmaInfo(vma.start, vma.end, vma.flags, anon=vma.is_anon,
                       anon_vma=vma.anon_vma, ident=vma)

    def vmas(self, mm) -> list[VmaInfo]:
        return [self._info(v) for v in mm.vmas]

    def find_vma(self, mm, addr: int) -> VmaInfo | None:
        v = mm.vmas.find(addr)
        return None if v is None else self._info(v)

    def pmd_kind(self, mm, pmd_addr: int) -> str:
        d = self.pt.get_pmd(mm, pmd_addr)
        if d == 0:
            return "none"
        return "huge" if self.pt.pmd_is_leaf(d) else "table"

    def _decode(self, table_pfn: int, first: int = 0, nr: int = HPAGE_PMD_NR) -> np.ndarray:
        arch, k = self.arch, self.k
        tab = self.store.table(table_pfn)
        out = np.zeros(HPAGE_PMD_NR, dtype=PTE_INFO)
        out["folio"] = -1
        for i in np.flatnonzero(tab).tolist():
            d = int(tab[i])
            rec = out[i]
            if not arch.is_present(d):
                rec["kind"] = PTE_SWAP if arch.is_swap(d) else PTE_NONPRESENT
                continue
            pfn = arch.pfn(d)
            rec["pfn"] = pfn
            rec["young"] = arch.young(d)
            rec["dirty"] = arch.dirty(d)
            rec["write"] = arch.writable(d)
            if pfn == k.zero_pfn:
                rec["kind"] = PTE_ZERO
                continue
            rec["kind"] = PTE_PRESENT
            f = k.folio_of_pfn(pfn)
            if f is None:
                continue                                  # vm_normal_page() NULL
            rec["folio"] = f.pfn
            if not first <= i < first + nr:
                continue
            rec["folio_order"] = f.order
            rec["anon"] = f.anon
            rec["shared"] = f.maybe_mapped_shared()
            rec["lru"] = True
            rec["refcount_ok"] = f.refcount == (int(f.page_mapcount.sum()) + f.entire_mapcount
                                                + (0 if f.anon else 1))
            rec["lazyfree"] = f.lazyfree
        return out

    def read_ptes(self, mm, pmd_addr: int) -> np.ndarray:
        t = self.pt.pte_table(mm, pmd_addr)
        return self._decode(t)

    def read_detached(self, saved, first: int = 0, nr: int = HPAGE_PMD_NR) -> np.ndarray:
        return self._decode(saved["table"], first, nr)

    def test_and_clear_young(self, mm, addr: int) -> bool:
        s = self.pt.pte_slot(mm, addr)
        if s is None:
            return False
        d = self.store.read(*s)
        if not d or not self.arch.is_present(d) or not self.arch.young(d):
            return False
        self.store.write(s[0], s[1], self.arch.mkold(d))   # ptep_test_and_clear_young
        return True

    # ---------------------------------------------------------------- acting
    def alloc_folio(self, order: int, light: bool) -> Any:
        return self.k.folio_alloc(order, anon=True)

    def free_folio(self, folio) -> None:
        self.k.folio_free(folio)

    def _prot(self, vma: VmaInfo) -> int:
        from emu.kernel.kernel import vm_prot
        return vm_prot(vma.flags)

    def swapin(self, mm, vma: VmaInfo, addr: int) -> bool:
        return do_swap_page(self, mm, vma.ident, addr)

    def pmdp_collapse_flush(self, mm, vma: VmaInfo, pmd_addr: int) -> tuple[Any, int]:
        slot = self.pt.pmd_slot(mm, pmd_addr)
        d = self.store.read(*slot)
        self.store.write(slot[0], slot[1], 0)               # pmdp_huge_get_and_clear
        before = self.k.stats.vmstat.copy()
        self.k._flush(mm, pmd_addr, pmd_addr + HPAGE_PMD_SIZE, PAGE_SHIFT, False)
        self.k.stats.count_vm_event("emu_collapse_flush")
        delta = {n: v - before.get(n, 0) for n, v in self.k.stats.vmstat.items()
                 if v != before.get(n, 0)}
        return ({"slot": slot, "pmd": d, "table": self.arch.pfn(d), "flush": delta},
                self.costs.flush_ns(delta))

    def pmd_populate(self, mm, pmd_addr: int, saved) -> None:
        slot = saved["slot"]
        assert self.store.read(*slot) == 0, "pmd_populate over a live PMD"
        self.store.write(slot[0], slot[1], saved["pmd"])

    def isolate_folio(self, folio_id: int) -> bool:
        return True                                         # no LRU is modelled

    def putback_folio(self, folio_id: int) -> None:
        return None

    def collapse_copy(self, mm, saved, folio, first: int, nr: int) -> int:
        arch, k, phys = self.arch, self.k, self.k.physmem
        tab = self.store.table(saved["table"])
        zero = 0
        unmap: dict[int, list[int]] = {}
        for j in range(nr):
            d = int(tab[first + j])
            if not d or not arch.is_present(d) or arch.pfn(d) == k.zero_pfn:
                phys.zero(folio.pfn + j)                    # clear_user_highpage
                zero += 1
                continue
            pfn = arch.pfn(d)
            phys.copy(folio.pfn + j, pfn)                   # copy_mc_user_highpage
            f = k.folio_of_pfn(pfn)
            if f is not None:
                unmap.setdefault(f.pfn, []).append(pfn - f.pfn)
        tab[first:first + nr] = 0                           # ptep_clear on the detached table
        for head, pages in unmap.items():
            f = k.folios[head]
            for p in pages:
                k.folio_remove_rmap_ptes(f, mm, p)
        return zero

    def install_pmd(self, mm, vma: VmaInfo, pmd_addr: int, folio, saved) -> None:
        slot = saved["slot"]
        assert self.store.read(*slot) == 0
        old = mm.deposit.get(pmd_addr)
        if old is not None:
            self.pt.free_table(mm, old, pte_level=True)
        mm.deposit[pmd_addr] = saved["table"]                # pgtable_trans_huge_deposit
        w = bool(vma.flags & 0x2)
        self.pt.set_pmd(mm, pmd_addr, self.arch.mk_pmd_leaf(folio.pfn, self._prot(vma),
                                                             young=True, dirty=w))
        self.k.folio_add_rmap_pmd(folio, mm)
        vma.ident.anon_vma = True

    def install_ptes(self, mm, vma: VmaInfo, addr: int, folio, order: int, saved) -> None:
        self.pmd_populate(mm, addr & HPAGE_PMD_MASK, saved)  # the same table, first
        w = bool(vma.flags & 0x2)
        desc = self.arch.mk_pte(folio.pfn, self._prot(vma), young=True, dirty=w)
        self.pt.set_ptes(mm, addr, desc, 1 << order)         # PTE_CONT where arm64 allows
        self.k.folio_add_rmap_ptes(folio, mm, 0, 1 << order)
        vma.ident.anon_vma = True

    # ---------------------------------------------------------------- accounting
    def count_vm_event(self, name: str, n: int = 1) -> None:
        self.k.stats.count_vm_event(name, n)

    def count_mthp_stat(self, order: int, name: str, n: int = 1) -> None:
        self.k.stats.count_mthp_stat(order, name, n)


# ==================================================================== swap

def do_swap_page(ops: KernelCollapseOps, mm, vma, va: int) -> bool:
    """Swap the page at va back in as an order-0 folio; False if no frame."""
    k, arch = ops.k, ops.arch
    s = ops.pt.pte_slot(mm, va)
    d = ops.store.read(*s) if s is not None else 0
    if not d or not arch.is_swap(d):
        return False
    f = k.folio_alloc(0, anon=True)
    if f is None:
        return False
    slot = arch.swp_offset(d)
    k.physmem.version[f.pfn] = ops.swap.swap_in(slot)
    ops.swap.free(slot)
    from emu.kernel.kernel import vm_prot
    ops.store.write(s[0], s[1], arch.mk_pte(f.pfn, vm_prot(vma.flags), young=True))
    k.folio_add_rmap_ptes(f, mm, 0)
    mm.add_counter("MM_SWAPENTS", -1)
    k.stats.count_vm_event("pswpin")
    k.stats.count_vm_event("pgmajfault")
    return True


def pageout(ops: KernelCollapseOps, mm, start: int, end: int) -> int:
    """MADV_PAGEOUT: write exclusive anonymous small pages to swap; large folios the
    range covers are split first (PMD-mapped ones after a PMD split).  Returns the
    number of pages swapped out."""
    k, arch, pt = ops.k, ops.arch, ops.pt
    n = 0
    for haddr in range(start & HPAGE_PMD_MASK, end, HPAGE_PMD_SIZE):
        d = pt.get_pmd(mm, haddr)
        if d and pt.pmd_is_leaf(d):
            k.split_huge_pmd(mm, haddr)
    va = start & ~(PAGE_SIZE - 1)
    while va < end:
        s = pt.pte_slot(mm, va)
        d = ops.store.read(*s) if s is not None else 0
        if not d or not arch.is_present(d) or arch.pfn(d) == k.zero_pfn:
            va += PAGE_SIZE
            continue
        f = k.folio_of_pfn(arch.pfn(d))
        if f is None or not f.anon or f.maybe_mapped_shared():
            va += PAGE_SIZE
            continue
        if f.large:
            fva = va - ((arch.pfn(d) - f.pfn) << PAGE_SHIFT)
            pt.unfold_partial(mm, fva, fva + (f.nr_pages << PAGE_SHIFT))
            k.split_folio(f)
            f = k.folio_of_pfn(arch.pfn(d))
            d = ops.store.read(*s)
        slot_no = ops.swap.swap_out(int(k.physmem.version[f.pfn]))
        pt.clear_pte(mm, va)
        k._flush(mm, va, va + PAGE_SIZE, PAGE_SHIFT, True)
        ops.store.write(s[0], s[1], arch.mk_swap(0, slot_no))
        k.folio_remove_rmap_ptes(f, mm, 0)
        mm.add_counter("MM_SWAPENTS", 1)
        k.stats.count_vm_event("pswpout")
        k.stats.count_mthp_stat(0, "swpout")
        n += 1
        va += PAGE_SIZE
    return n


# ==================================================================== binding

class KernelCollapse:
    """khugepaged + MADV_COLLAPSE + swap, attached to one Kernel."""

    def __init__(self, kernel, knobs: KhugepagedKnobs | None = None, algo: str = "v19",
                 tracer: Tracer | None = None) -> None:
        self.kernel = kernel
        self.tracer = tracer or Tracer()
        self.ops = KernelCollapseOps(kernel)
        self.knobs = knobs or KhugepagedKnobs()
        self.khugepaged = Khugepaged(self.ops, self.knobs, algo=algo, tracer=self.tracer)
        self.madvise_records: list[MadviseCollapseRecord] = []
        self.now_ns = 0
        self._next_sweep_ns = 0

    # hooks the kernel model calls
    def enter(self, mm, now_ns: int | None = None) -> None:
        """khugepaged_enter_vma() for every VMA of mm (mmap, brk, MADV_HUGEPAGE, fault)."""
        t = self.now_ns if now_ns is None else now_ns
        for v in self.ops.vmas(mm):
            if self.khugepaged.khugepaged_enter_vma(mm, v, t):
                break

    def exit(self, mm) -> None:
        self.khugepaged.khugepaged_exit(mm)

    def fork(self, child, parent) -> None:
        self.khugepaged.khugepaged_fork(child, parent, self.now_ns)

    def _sweep(self, now_ns: int) -> None:
        """Register every live mm that has a VMA khugepaged could collapse.

        Stands in for khugepaged_enter_vma() at mmap/brk/fault time, which the kernel
        model does not call (it calls ``enter`` on MADV_HUGEPAGE only); the resulting
        mm list is the same, its order is the order of the sweep.
        """
        slots = self.khugepaged.mm_slots
        for mm in list(self.kernel.mms.values()):
            if not mm.exited and mm not in slots:
                self.enter(mm, now_ns)
        self.khugepaged.start_stop(now_ns)

    def tick(self, now_ns: float) -> int:
        """Run khugepaged up to now_ns on its own CPU (flushes come from no vCPU)."""
        now_ns = int(now_ns)
        self.now_ns = now_ns
        if now_ns >= self._next_sweep_ns:
            self._sweep(now_ns)
            self._next_sweep_ns = now_ns + max(1, self.knobs.scan_sleep_millisecs) * 1_000_000
        wake = self.khugepaged.next_wake_ns
        if wake is None or wake > now_ns:
            return 0
        saved, self.kernel.current_cpu = self.kernel.current_cpu, None
        try:
            return self.khugepaged.tick(now_ns)
        finally:
            self.kernel.current_cpu = saved

    def madvise_collapse(self, mm, start: int, end: int) -> MadviseCollapseRecord:
        rec = madvise_collapse(self.ops, mm, start, end - start, self.now_ns, self.knobs,
                               self.tracer)
        self.madvise_records.append(rec)
        return rec

    def pageout(self, mm, start: int, end: int) -> int:
        return pageout(self.ops, mm, start, end)

    def do_swap_page(self, mm, vma, va: int) -> bool:
        return do_swap_page(self.ops, mm, vma, va)

    def report(self) -> dict:
        """khugepaged activity, collapses per size and MADV_COLLAPSE results (JSON-able)."""
        made: dict[int, int] = {}
        for (name, status, order), n in self.tracer.counts.items():
            if name == "mm_collapse_huge_page" and status == "succeeded":
                made[4 << order] = made.get(4 << order, 0) + n
        census = {"before": {}, "after": {}}
        for e in self.tracer.named("emu_collapse_census"):
            for side in ("before", "after"):
                for order, n in e.args[side].items():
                    key = "zero_page" if order < 0 else f"{4 << order}kB"
                    census[side][key] = census[side].get(key, 0) + n
        return {"khugepaged": self.khugepaged.stats(),
                "trace_events_dropped": self.tracer.dropped,
                "collapses_by_size_kb": dict(sorted(made.items())),
                "pages_by_mapping_size": census,
                "madvise_collapse": [r.to_json() for r in self.madvise_records]}

    def render(self) -> str:
        """The report as text, for the run summary."""
        return render_report(self.report())


def bind_collapse(kernel, knobs: KhugepagedKnobs | None = None, algo: str = "v19",
                  tracer: Tracer | None = None) -> KernelCollapse:
    """Attach khugepaged and MADV_COLLAPSE to kernel through its hooks."""
    c = KernelCollapse(kernel, knobs, algo, tracer)
    kernel.khugepaged = c
    kernel.madvise_collapse_handler = c.madvise_collapse
    return c


def render_report(r: dict) -> str:
    """Text lines for khugepaged / MADV_COLLAPSE activity (report() as input)."""
    kh = r["khugepaged"]
    lines = [f" khugepaged ({kh['algo']}): {kh['passes']} passes, full_scans {kh['full_scans']},"
             f" pages_collapsed {kh['pages_collapsed']}, busy {kh['busy_ns'] / 1e6:.3f} ms"
             " (estimated)"]
    if kh["results"]:
        lines.append("   PMD scans by result: " + ", ".join(
            f"{name} {n}" for name, n in kh["results"].items()))
    if r["collapses_by_size_kb"]:
        lines.append("   collapses by size: " + ", ".join(
            f"{kb}kB x{n}" for kb, n in r["collapses_by_size_kb"].items()))
    census = r.get("pages_by_mapping_size", {})
    for side in ("before", "after"):
        if census.get(side):
            lines.append(f"   pages in scanned-and-collapsed PMDs, {side}: " + ", ".join(
                f"{k} {n}" for k, n in census[side].items()))
    for m in r["madvise_collapse"]:
        res = ", ".join(p["result"] for p in m["pmds"]) or "no whole PMD"
        lines.append(f"   MADV_COLLAPSE {m['start']:#x}+{m['length']:#x} = {m['ret']}"
                     f"{' ' + m['errno'] if m['errno'] else ''} [{res}]")
    return "\n".join(lines)
