"""``enum scan_result``: how every khugepaged / MADV_COLLAPSE attempt ends.

One table: each code carries the string its tracepoints print
(include/trace/events/huge_memory.h SCAN_STATUS), the errno MADV_COLLAPSE turns it
into (madvise_collapse_errno()), whether the v19 order walk tries the next lower
order after it (12/14: ``mthp_collapse``) and whether madvise_collapse() goes on to
the next PMD after it.  Names follow mm/khugepaged.c of the v19 era
(kernel-mthp.md §5.3): SCAN_PAGE_RO is gone from them (only the v5 walk, on its
2025 base, still gives it), SCAN_NO_PTE_TABLE replaces
SCAN_PMD_NULL/SCAN_PMD_NONE.  The last three status strings are not in the
torvalds snapshot read (UNCONFIRMED, §5.3).  Values are our own order; the
kernel's shift between releases, so nothing should key on them.
"""

from __future__ import annotations

import errno
from enum import Enum

_E, _A, _B, _N = errno.EINVAL, errno.EAGAIN, errno.EBUSY, errno.ENOMEM


class ScanResult(Enum):
    """(status string, MADV_COLLAPSE errno, try a lower order, madvise goes on)."""

    SCAN_FAIL = ("failed", _E, False, False)
    SCAN_SUCCEED = ("succeeded", 0, False, False)
    SCAN_NO_PTE_TABLE = ("no_pte_table", _E, False, True)
    SCAN_PMD_MAPPED = ("page_pmd_mapped", _E, False, False)
    SCAN_EXCEED_NONE_PTE = ("exceed_none_pte", _B, True, False)
    SCAN_EXCEED_SWAP_PTE = ("exceed_swap_pte", _E, True, False)
    SCAN_EXCEED_SHARED_PTE = ("exceed_shared_pte", _E, True, False)
    SCAN_PTE_NON_PRESENT = ("pte_non_present", _E, True, True)
    SCAN_PTE_UFFD_WP = ("pte_uffd_wp", _E, True, True)
    SCAN_PTE_MAPPED_HUGEPAGE = ("pte_mapped_hugepage", _E, False, False)
    SCAN_LACK_REFERENCED_PAGE = ("lack_referenced_page", _E, True, True)
    SCAN_PAGE_NULL = ("page_null", _E, True, True)
    SCAN_PAGE_RO = ("page_ro", _E, False, True)            # v5 only (no writable PTE)
    SCAN_SCAN_ABORT = ("scan_aborted", _E, False, False)
    SCAN_PAGE_COUNT = ("not_suitable_page_count", _A, True, True)
    SCAN_PAGE_LRU = ("page_not_in_lru", _A, False, True)
    SCAN_PAGE_LOCK = ("page_locked", _A, True, True)
    SCAN_PAGE_ANON = ("page_not_anon", _E, False, False)
    SCAN_PAGE_LAZYFREE = ("page_lazyfree", _E, True, False)
    SCAN_PAGE_COMPOUND = ("page_compound", _E, False, True)
    SCAN_ANY_PROCESS = ("no_process_for_page", _E, False, False)
    SCAN_VMA_NULL = ("vma_null", _E, False, False)
    SCAN_VMA_CHECK = ("vma_check_failed", _E, False, False)
    SCAN_ADDRESS_RANGE = ("not_suitable_address_range", _E, False, False)
    SCAN_DEL_PAGE_LRU = ("could_not_delete_page_from_lru", _A, True, True)
    SCAN_ALLOC_HUGE_PAGE_FAIL = ("alloc_huge_page_failed", _N, True, False)
    SCAN_CGROUP_CHARGE_FAIL = ("ccgroup_charge_failed", _B, False, False)
    SCAN_TRUNCATED = ("truncated", _E, False, False)
    SCAN_PAGE_HAS_PRIVATE = ("page_has_private", _E, False, False)
    SCAN_STORE_FAILED = ("store_failed", _E, False, False)
    SCAN_COPY_MC = ("copy_poisoned_page", _E, False, False)
    SCAN_PAGE_FILLED = ("page_filled", _A, False, True)
    SCAN_PAGE_DIRTY_OR_WRITEBACK = ("page_dirty_or_writeback", _A, False, False)

    def __init__(self, status: str, err: int, try_lower: bool, madvise_continue: bool) -> None:
        self.status = status
        self.errno = -err          # negative, as madvise() returns it (0 for success)
        self.try_lower = try_lower
        self.madvise_continue = madvise_continue

    # Members with equal tuples would alias one another: make each value unique.
    def __new__(cls, *values: object) -> ScanResult:
        obj = object.__new__(cls)
        obj._value_ = len(cls.__members__) + 1
        return obj


__all__ = ["ScanResult"]
