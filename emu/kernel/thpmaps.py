"""What maps each VMA, by folio size: the census tools/mm/thpmaps prints.

Read from the page tables and folios at the moment asked (the machine asks
when a process exits, before its memory is torn down).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np


def size_name(order: int, page_shift: int = 12) -> str:
    kb = (1 << (order + page_shift)) >> 10
    return f"{kb // 1024}M" if kb >= 1024 and kb % 1024 == 0 else f"{kb}K"


def vma_census(kernel: Any, mm: Any, start: int, end: int) -> dict[str, int]:
    """Pages of [start, end) by how they are mapped.

    Keys: "<size>" for pages of anonymous folios of that size mapped by PTEs,
    "<size>-pmd" for PMD-mapped folios, "file" for page-cache pages, "zero"
    for the shared zero pages, "cont" for pages whose PTE has the arm64
    contiguous bit (counted again: a subset of the others).
    """
    pt, arch, store = kernel.pt, kernel.arch, kernel.physmem.pgtables
    page = kernel.page_size
    pmd_size = pt.pmd_size
    out: Counter[str] = Counter()
    addr = start
    while addr < end:
        chunk_end = min((addr | (pmd_size - 1)) + 1, end)
        slot = pt.pmd_slot(mm, addr)
        pmd = store.read(*slot) if slot else 0
        n = (chunk_end - addr) // page
        if pmd and pt.pmd_is_leaf(pmd):
            pfn = arch.pfn(pmd)
            if pfn == kernel.huge_zero_pfn:
                out["zero"] += n
            else:
                f = kernel.folio_of_pfn(pfn)
                out[size_name(f.order if f else kernel.pmd_order) + "-pmd"] += n
        elif pmd:
            table = pt.pte_table(mm, addr)
            if table is not None:
                tab = store.table(table)
                i0 = arch.index(addr, pt.pte_level)
                for i in np.flatnonzero(tab[i0:i0 + n]).tolist():
                    d = int(tab[i0 + i])
                    if not arch.is_present(d):
                        continue
                    pfn = arch.pfn(d)
                    if arch.cont(d):
                        out["cont"] += 1
                    if pfn == kernel.zero_pfn:
                        out["zero"] += 1
                        continue
                    f = kernel.folio_of_pfn(pfn)
                    out[size_name(f.order) if f is not None and f.anon else "file"] += 1
        addr = chunk_end
    return dict(sorted(out.items()))
