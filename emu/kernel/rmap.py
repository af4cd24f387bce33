"""Folio bookkeeping: allocation from the buddy, rmap add/remove with the kernel's
counters (nr_anon, partially mapped / deferred split), split_folio, the page cache.

A mixin of emu.kernel.kernel.Kernel: the fault, zap, fork and collapse paths all
count through these, so they agree.
"""

from __future__ import annotations

from emu.kernel.config import PMD_ORDER
from emu.kernel.folio import Folio
from emu.kernel.mm import MM


class FolioMixin:
    """Folio allocation, rmap and the counters that follow them."""

    def folio_of_pfn(self, pfn: int) -> Folio | None:
        if pfn < 0 or pfn >= len(self._head):
            return None
        h = int(self._head[pfn])
        return self.folios.get(h) if h >= 0 else None

    def folio_alloc(self, order: int, anon: bool = True) -> Folio | None:
        """A zero-filled folio from the buddy, or None (the caller counts fallback)."""
        pfn = None if order in self.fail_page_alloc else self.buddy.alloc(order)
        if pfn is None:
            return None
        nr = 1 << order
        self.physmem.zero(pfn, nr)
        f = Folio(pfn, order, anon)
        self.folios[pfn] = f
        self._head[pfn:pfn + nr] = pfn
        if anon:
            self.stats.count_mthp_stat(order, "nr_anon")
        return f

    def folio_free(self, f: Folio) -> None:
        """Give an unmapped folio back to the buddy."""
        nr = f.nr_pages
        del self.folios[f.pfn]
        self._head[f.pfn:f.pfn + nr] = -1
        if f.anon:
            self.stats.count_mthp_stat(f.order, "nr_anon", -1)
            if f.partially_mapped:
                self.stats.count_mthp_stat(f.order, "nr_anon_partially_mapped", -1)
        self.buddy.free(f.pfn, f.order)

    def folio_add_rmap_ptes(self, f: Folio, mm: MM, page: int, nr: int = 1) -> None:
        """nr PTE mappings of pages [page, page+nr) of f in mm (+ rss counters)."""
        if nr == 1:
            f.page_mapcount[page] += 1
        else:
            f.page_mapcount[page:page + nr] += 1
        f.mm_mapcount[mm.asid] += nr
        f.refcount += nr
        mm.add_counter(self._rss_counter(f), nr)

    def folio_add_rmap_pmd(self, f: Folio, mm: MM) -> None:
        f.entire_mapcount += 1
        f.mm_mapcount[mm.asid] += f.nr_pages
        f.refcount += 1
        mm.add_counter(self._rss_counter(f), f.nr_pages)

    def folio_remove_rmap_ptes(self, f: Folio, mm: MM, page: int, nr: int = 1) -> None:
        """Drop nr PTE mappings; frees an anon folio that is no longer mapped, and
        queues a large one that became partially mapped (deferred split)."""
        f.page_mapcount[page:page + nr] -= 1
        f.mm_mapcount[mm.asid] -= nr
        f.refcount -= nr
        mm.add_counter(self._rss_counter(f), -nr)
        self._after_unmap(f)

    def folio_remove_rmap_pmd(self, f: Folio, mm: MM) -> None:
        f.entire_mapcount -= 1
        f.mm_mapcount[mm.asid] -= f.nr_pages
        f.refcount -= 1
        mm.add_counter(self._rss_counter(f), -f.nr_pages)
        self._after_unmap(f)

    def _after_unmap(self, f: Folio) -> None:
        if not f.anon:
            return
        if not f.mapped():
            self.folio_free(f)
            return
        if f.large and not f.partially_mapped and f.nr_pages_mapped() < f.nr_pages:
            f.partially_mapped = True
            self.stats.count_mthp_stat(f.order, "split_deferred")
            self.stats.count_mthp_stat(f.order, "nr_anon_partially_mapped")
            if f.order == PMD_ORDER:
                self.stats.count_vm_event("thp_deferred_split_page")

    def _rss_counter(self, f: Folio) -> str:
        if f.anon:
            return "MM_ANONPAGES"
        return "MM_SHMEMPAGES" if f.file and f.file.startswith("shmem:") else "MM_FILEPAGES"

    def split_folio(self, f: Folio) -> list[Folio]:
        """split_folio() to order 0: every page becomes its own folio, unmapped ones
        are freed.  PMD mappings must have been split first."""
        if not f.large or f.entire_mapcount:
            self.stats.count_mthp_stat(f.order, "split_failed")
            return [f]
        self.stats.count_mthp_stat(f.order, "split")
        if f.order == PMD_ORDER:
            self.stats.count_vm_event("thp_split_page")
        if f.anon:
            self.stats.count_mthp_stat(f.order, "nr_anon", -1)
            if f.partially_mapped:
                self.stats.count_mthp_stat(f.order, "nr_anon_partially_mapped", -1)
        del self.folios[f.pfn]
        out = []
        # page i's mm attribution is not tracked per page: give each new folio the
        # mms in proportion of the old one (exact when one mm maps the folio)
        mms = [m for m, c in f.mm_mapcount.items() if c > 0]
        for i in range(f.nr_pages):
            g = Folio(f.pfn + i, 0, f.anon, f.file, f.index + i)
            g.exclusive = f.exclusive
            g.lazyfree = f.lazyfree
            mc = int(f.page_mapcount[i])
            g.page_mapcount[0] = mc
            g.refcount = mc + (0 if f.anon else 1)
            if mc:
                g.mm_mapcount[mms[0] if len(mms) == 1 else -1] = mc
                if len(mms) > 1:
                    g.mm_mapcount[-2] = 1      # "mapped by several": keep it shared
            self.folios[g.pfn] = g
            self._head[g.pfn] = g.pfn
            if f.anon:
                self.stats.count_mthp_stat(0, "nr_anon")
            if f.anon and not mc:
                self.folio_free(g)
            else:
                out.append(g)
                if not f.anon:
                    self.page_cache[(f.file or "", g.index)] = g
        return out

    def _page_cache_folio(self, file: str, index: int, create: bool) -> Folio | None:
        """The page-cache folio of (file, index); created when ``create`` or when the
        file is known to be cached whole (the guest's ELF, read at exec)."""
        key = (file, index)
        f = self.page_cache.get(key)
        if f is None and (create or index < self.file_pages.get(file, 0)):
            f = self.folio_alloc(0, anon=False)
            if f is not None:
                f.file, f.index = key
                self.page_cache[key] = f
        return f
