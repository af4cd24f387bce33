"""``enum scan_result``: how every khugepaged / MADV_COLLAPSE attempt ends.

Names follow mm/khugepaged.c of the v19 era (kernel-mthp.md §5.3): SCAN_PAGE_RO
is gone, SCAN_NO_PTE_TABLE replaces SCAN_PMD_NULL/SCAN_PMD_NONE, SCAN_PAGE_LAZYFREE
and SCAN_PAGE_DIRTY_OR_WRITEBACK exist.  Numeric values are our own; the kernel's
shift between releases, so nothing should key on them.
"""

import errno
from enum import Enum, auto


class ScanResult(Enum):
    """One kernel result code; ``status`` is the string the tracepoints print."""

    SCAN_FAIL = auto()
    SCAN_SUCCEED = auto()
    SCAN_NO_PTE_TABLE = auto()
    SCAN_PMD_MAPPED = auto()
    SCAN_EXCEED_NONE_PTE = auto()
    SCAN_EXCEED_SWAP_PTE = auto()
    SCAN_EXCEED_SHARED_PTE = auto()
    SCAN_PTE_NON_PRESENT = auto()
    SCAN_PTE_UFFD_WP = auto()
    SCAN_PTE_MAPPED_HUGEPAGE = auto()
    SCAN_LACK_REFERENCED_PAGE = auto()
    SCAN_PAGE_NULL = auto()
    SCAN_SCAN_ABORT = auto()
    SCAN_PAGE_COUNT = auto()
    SCAN_PAGE_LRU = auto()
    SCAN_PAGE_LOCK = auto()
    SCAN_PAGE_ANON = auto()
    SCAN_PAGE_LAZYFREE = auto()
    SCAN_PAGE_COMPOUND = auto()
    SCAN_ANY_PROCESS = auto()
    SCAN_VMA_NULL = auto()
    SCAN_VMA_CHECK = auto()
    SCAN_ADDRESS_RANGE = auto()
    SCAN_DEL_PAGE_LRU = auto()
    SCAN_ALLOC_HUGE_PAGE_FAIL = auto()
    SCAN_CGROUP_CHARGE_FAIL = auto()
    SCAN_TRUNCATED = auto()
    SCAN_PAGE_HAS_PRIVATE = auto()
    SCAN_STORE_FAILED = auto()
    SCAN_COPY_MC = auto()
    SCAN_PAGE_FILLED = auto()
    SCAN_PAGE_DIRTY_OR_WRITEBACK = auto()

    @property
    def status(self) -> str:
        return SCAN_STATUS[self]


S = ScanResult

# include/trace/events/huge_memory.h SCAN_STATUS strings; the last three are not
# in the torvalds snapshot we read (UNCONFIRMED, kernel-mthp.md §5.3).
SCAN_STATUS: dict[ScanResult, str] = {
    S.SCAN_FAIL: "failed",
    S.SCAN_SUCCEED: "succeeded",
    S.SCAN_NO_PTE_TABLE: "no_pte_table",
    S.SCAN_PMD_MAPPED: "page_pmd_mapped",
    S.SCAN_EXCEED_NONE_PTE: "exceed_none_pte",
    S.SCAN_EXCEED_SWAP_PTE: "exceed_swap_pte",
    S.SCAN_EXCEED_SHARED_PTE: "exceed_shared_pte",
    S.SCAN_PTE_NON_PRESENT: "pte_non_present",
    S.SCAN_PTE_UFFD_WP: "pte_uffd_wp",
    S.SCAN_PTE_MAPPED_HUGEPAGE: "pte_mapped_hugepage",
    S.SCAN_LACK_REFERENCED_PAGE: "lack_referenced_page",
    S.SCAN_PAGE_NULL: "page_null",
    S.SCAN_SCAN_ABORT: "scan_aborted",
    S.SCAN_PAGE_COUNT: "not_suitable_page_count",
    S.SCAN_PAGE_LRU: "page_not_in_lru",
    S.SCAN_PAGE_LOCK: "page_locked",
    S.SCAN_PAGE_ANON: "page_not_anon",
    S.SCAN_PAGE_LAZYFREE: "page_lazyfree",
    S.SCAN_PAGE_COMPOUND: "page_compound",
    S.SCAN_ANY_PROCESS: "no_process_for_page",
    S.SCAN_VMA_NULL: "vma_null",
    S.SCAN_VMA_CHECK: "vma_check_failed",
    S.SCAN_ADDRESS_RANGE: "not_suitable_address_range",
    S.SCAN_DEL_PAGE_LRU: "could_not_delete_page_from_lru",
    S.SCAN_ALLOC_HUGE_PAGE_FAIL: "alloc_huge_page_failed",
    S.SCAN_CGROUP_CHARGE_FAIL: "ccgroup_charge_failed",
    S.SCAN_TRUNCATED: "truncated",
    S.SCAN_PAGE_HAS_PRIVATE: "page_has_private",
    S.SCAN_STORE_FAILED: "store_failed",
    S.SCAN_COPY_MC: "copy_poisoned_page",
    S.SCAN_PAGE_FILLED: "page_filled",
    S.SCAN_PAGE_DIRTY_OR_WRITEBACK: "page_dirty_or_writeback",
}

# v19 12/14: results after which mthp_collapse() tries the same offset at the next
# lower enabled order.  Everything else except SUCCEED/PTE_MAPPED_HUGEPAGE stops the PMD.
MTHP_TRY_LOWER = frozenset({
    S.SCAN_ALLOC_HUGE_PAGE_FAIL, S.SCAN_LACK_REFERENCED_PAGE, S.SCAN_EXCEED_NONE_PTE,
    S.SCAN_EXCEED_SWAP_PTE, S.SCAN_EXCEED_SHARED_PTE, S.SCAN_PAGE_LOCK, S.SCAN_PAGE_COUNT,
    S.SCAN_PAGE_NULL, S.SCAN_DEL_PAGE_LRU, S.SCAN_PTE_NON_PRESENT, S.SCAN_PTE_UFFD_WP,
    S.SCAN_PAGE_LAZYFREE,
})

# madvise_collapse(): results after which the walk records last_fail and goes on to
# the next PMD; any other failure ends the call.
MADVISE_CONTINUE = frozenset({
    S.SCAN_NO_PTE_TABLE, S.SCAN_PTE_NON_PRESENT, S.SCAN_PTE_UFFD_WP,
    S.SCAN_LACK_REFERENCED_PAGE, S.SCAN_PAGE_NULL, S.SCAN_PAGE_COUNT, S.SCAN_PAGE_LOCK,
    S.SCAN_PAGE_COMPOUND, S.SCAN_PAGE_LRU, S.SCAN_DEL_PAGE_LRU, S.SCAN_PAGE_FILLED,
})


def madvise_collapse_errno(result: ScanResult) -> int:
    """madvise_collapse_errno(): the negative errno MADV_COLLAPSE returns for a failure."""
    if result is S.SCAN_ALLOC_HUGE_PAGE_FAIL:
        return -errno.ENOMEM
    if result in (S.SCAN_CGROUP_CHARGE_FAIL, S.SCAN_EXCEED_NONE_PTE):
        return -errno.EBUSY
    if result in (S.SCAN_PAGE_COUNT, S.SCAN_PAGE_LOCK, S.SCAN_PAGE_LRU, S.SCAN_DEL_PAGE_LRU,
                  S.SCAN_PAGE_FILLED, S.SCAN_PAGE_DIRTY_OR_WRITEBACK):
        return -errno.EAGAIN
    return -errno.EINVAL
