"""Folios: the unit of allocation, with enough rmap to answer "mapped shared?".

A folio is 2**order frames starting at ``pfn``.  Mapcounts follow the kernel:
``page_mapcount[i]`` counts PTE mappings of page i, ``entire_mapcount`` counts
PMD mappings of the whole folio, and ``mm_mapcount`` counts mappings per mm
(the MM_ID idea), which is what "maybe mapped shared" and COW reuse ask.
Anonymous folios are freed when their last mapping goes; page-cache folios
hold one extra reference from the cache.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class Folio:
    """One folio; anon or page cache, order 0..PMD_ORDER."""

    __slots__ = ("pfn", "order", "anon", "page_mapcount", "entire_mapcount", "mm_mapcount",
                 "refcount", "partially_mapped", "lazyfree", "file", "index", "exclusive")

    def __init__(self, pfn: int, order: int, anon: bool, file: str | None = None,
                 index: int = 0) -> None:
        self.pfn = pfn
        self.order = order
        self.anon = anon
        self.page_mapcount = np.zeros(1 << order, dtype=np.int32)
        self.entire_mapcount = 0
        self.mm_mapcount: defaultdict[int, int] = defaultdict(int)
        self.refcount = 0 if anon else 1     # the page cache holds file folios
        self.partially_mapped = False        # on the deferred split queue
        self.lazyfree = False                # MADV_FREE'd, not yet reclaimed
        self.exclusive = True                # PageAnonExclusive (folio-wide here)
        self.file = file
        self.index = index                   # file page index of the first page

    @property
    def nr_pages(self) -> int:
        return 1 << self.order

    @property
    def large(self) -> bool:
        return self.order > 0

    def mapcount(self) -> int:
        """folio_mapcount(): PTE mappings plus PMD mappings counted per page."""
        return int(self.page_mapcount.sum()) + self.entire_mapcount * self.nr_pages

    def nr_pages_mapped(self) -> int:
        """Pages mapped by at least one PTE or PMD."""
        if self.entire_mapcount:
            return self.nr_pages
        return int(np.count_nonzero(self.page_mapcount))

    def mapped(self) -> bool:
        return self.entire_mapcount > 0 or bool(self.page_mapcount.any())

    def maybe_mapped_shared(self) -> bool:
        """folio_maybe_mapped_shared(): mapped by more than one mm (or twice, if small)."""
        mms = sum(1 for c in self.mm_mapcount.values() if c > 0)
        if mms > 1:
            return True
        return not self.large and self.mapcount() > 1

    def only_mm(self, mm_id: int) -> bool:
        """Every mapping of the folio belongs to mm_id (COW may reuse it)."""
        return all(c == 0 for m, c in self.mm_mapcount.items() if m != mm_id)

    def __repr__(self) -> str:
        kind = "anon" if self.anon else f"file:{self.file}"
        return f"Folio(pfn={self.pfn:#x} order={self.order} {kind} mapcount={self.mapcount()})"
