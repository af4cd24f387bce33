"""Counters under the kernel's names: /proc/vmstat thp_* and per-size mTHP stats.

``VmStat.vmstat`` mirrors /proc/vmstat entries; ``VmStat.mthp`` mirrors
/sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/stats/ keyed by size
in kB.  Other rooms (khugepaged, collapse) count into the same objects with
``count_vm_event`` / ``count_mthp_stat``.
"""

from __future__ import annotations

from emu.kernel.config import anon_orders, order_to_kb

VMSTAT_NAMES = (
    "pgfault", "pgmajfault",
    "thp_fault_alloc", "thp_fault_fallback", "thp_fault_fallback_charge",
    "thp_collapse_alloc", "thp_collapse_alloc_failed",
    "thp_file_alloc", "thp_file_fallback", "thp_file_fallback_charge", "thp_file_mapped",
    "thp_split_page", "thp_split_page_failed", "thp_deferred_split_page",
    "thp_underused_split_page", "thp_split_pmd",
    "thp_scan_exceed_none_pte", "thp_scan_exceed_swap_pte", "thp_scan_exceed_share_pte",
    "thp_split_pud", "thp_zero_page_alloc", "thp_zero_page_alloc_failed",
    "thp_swpout", "thp_swpout_fallback",
    "emu_cow_copy", "emu_cow_reuse",        # emu's own: COW write faults that copied / reused
    "emu_contpte_fold", "emu_contpte_unfold",   # emu's own: arm64 contiguous-bit changes
)

# CONFIG_DEBUG_TLBFLUSH names, as emu.kernel.tlbflush returns them.  Only arch/x86/mm/tlb.c
# increments them, so an arm64 kernel's /proc/vmstat shows them at 0 and emu's arm64
# vmstat leaves them out rather than report counts no arm64 kernel keeps.
TLBFLUSH_NAMES = (
    "nr_tlb_remote_flush", "nr_tlb_remote_flush_received",
    "nr_tlb_local_flush_all", "nr_tlb_local_flush_one",
)

MTHP_STAT_NAMES = (
    "anon_fault_alloc", "anon_fault_fallback", "anon_fault_fallback_charge",
    "zswpout", "swpin", "swpin_fallback", "swpin_fallback_charge", "swpout", "swpout_fallback",
    "shmem_alloc", "shmem_fallback", "shmem_fallback_charge",
    "split", "split_failed", "split_deferred",
    "nr_anon", "nr_anon_partially_mapped",
    "collapse_alloc", "collapse_alloc_failed",
    "collapse_exceed_swap_pte", "collapse_exceed_none_pte", "collapse_exceed_shared_pte",
)

# include/linux/mm_types_task.h: enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES }
MM_COUNTERS = ("MM_FILEPAGES", "MM_ANONPAGES", "MM_SWAPENTS", "MM_SHMEMPAGES")


class VmStat:
    """Machine-wide event counters and per-size THP stats."""

    def __init__(self, tlbflush_counters: bool = True) -> None:
        names = VMSTAT_NAMES + (TLBFLUSH_NAMES if tlbflush_counters else ())
        self.vmstat: dict[str, int] = dict.fromkeys(names, 0)
        self.mthp: dict[int, dict[str, int]] = {
            order_to_kb(o): dict.fromkeys(MTHP_STAT_NAMES, 0) for o in anon_orders()}

    def count_vm_event(self, name: str, n: int = 1) -> None:
        self.vmstat[name] = self.vmstat.get(name, 0) + n

    def count_mthp_stat(self, order: int, name: str, n: int = 1) -> None:
        """Count at this order; order 0/1 have no per-size directory and are dropped."""
        d = self.mthp.get(order_to_kb(order))
        if d is not None:
            d[name] = d.get(name, 0) + n
