"""What the scan and the isolate step see of one PMD range: 512 ``PTE_INFO`` records.

The kernel's loops look at a PTE and then at the folio behind it; here one pass
decodes the architecture's descriptors (emu.arch) and the kernel's folios into a
structured array, so the scan's checks run vectorised (khugepaged/scan.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emu.arch import PMD_NR

# Page-table entry kinds as the scan distinguishes them.
PTE_NONE = 0
PTE_PRESENT = 1      # maps a normal page
PTE_ZERO = 2         # maps the shared zero page (present, special)
PTE_SWAP = 3         # swap entry
PTE_NONPRESENT = 4   # other non-present entry (migration, device-private, ...)

PTE_INFO = np.dtype([
    ("kind", np.uint8),
    ("pfn", np.int64),
    ("young", np.bool_),        # pte_young(): A (x86) / AF (arm64), set by the walker
    ("dirty", np.bool_),
    ("write", np.bool_),
    ("uffd_wp", np.bool_),
    ("folio", np.int64),        # head pfn of the folio, -1 for none/zero/swap or no page
    ("folio_order", np.int8),
    ("anon", np.bool_),
    ("shared", np.bool_),       # folio_maybe_mapped_shared()
    ("lru", np.bool_),
    ("locked", np.bool_),
    ("refcount_ok", np.bool_),  # is_refcount_suitable()
    ("referenced", np.bool_),   # folio_test_young() || folio_test_referenced()
    ("lazyfree", np.bool_),
])


def pmd_kind(k: Any, mm: Any, pmd_addr: int) -> str:
    """'none', 'table' or 'huge' (find_pmd_or_thp_or_none's view of the PMD)."""
    d = k.pt.get_pmd(mm, pmd_addr)
    if d == 0:
        return "none"
    return "huge" if k.pt.pmd_is_leaf(d) else "table"


def decode_table(k: Any, table_pfn: int, first: int = 0, nr: int = PMD_NR) -> np.ndarray:
    """PTE_INFO of the PTE table in frame ``table_pfn``; folio facts for [first, first+nr)."""
    return decode_entries(k, k.physmem.pgtables.table(table_pfn), first, nr)


def decode_entries(k: Any, tab: np.ndarray, first: int = 0, nr: int = PMD_NR) -> np.ndarray:
    """PTE_INFO of 512 descriptors (a table, or the values a collapse cleared)."""
    arch = k.arch
    out = np.zeros(PMD_NR, dtype=PTE_INFO)
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
        rec["lru"] = True                             # no LRU is modelled
        rec["refcount_ok"] = f.refcount == (int(f.page_mapcount.sum()) + f.entire_mapcount
                                            + (0 if f.anon else 1))
        rec["lazyfree"] = f.lazyfree
    return out


def read_ptes(k: Any, mm: Any, pmd_addr: int) -> np.ndarray:
    """PTE_INFO of the live PTE table under pmd_addr."""
    return decode_table(k, k.pt.pte_table(mm, pmd_addr))
