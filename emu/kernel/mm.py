"""The address space of one process (struct mm_struct, as far as emu needs it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.kernel.stats import MM_COUNTERS
from emu.kernel.vma import VmaTree


@dataclass(eq=False)
class MM:
    """VMAs, the root page table, the CPUs that ran it and the rss counters.

    ``deposit`` holds, per PMD-mapped THP address, the PTE-table frame the
    kernel deposits at fault time (pgtable_trans_huge_deposit) so that a later
    PMD split never needs to allocate.
    """

    pid: int
    asid: int
    pgd_pfn: int
    vmas: VmaTree = field(default_factory=VmaTree)
    cpumask: set[int] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MM_COUNTERS, 0))
    nr_pgtables: int = 0            # all page-table pages, the PGD included
    nr_ptes: int = 0                # PTE-level tables, deposited ones included
    deposit: dict[int, int] = field(default_factory=dict)
    start_brk: int = 0
    brk: int = 0
    thp_disabled: bool = False      # prctl(PR_SET_THP_DISABLE) -> MMF_DISABLE_THP
    exited: bool = False
    # Who holds mmap_lock across simulated time: None, "read" or "write" (a collapse in
    # progress); with "write" the collapse also holds ``locked_vma``'s per-VMA lock.
    mmap_lock: str | None = None
    locked_vma: object = None
    # The VA range whose entries a collapse has cleared and not yet re-installed.
    collapse_cleared: tuple[int, int] | None = None
    # What that collapse cleared and keeps (the detached table, or the PTE values it
    # would restore): the invariant checker counts those mappings too.
    collapse_saved: dict | None = None

    @property
    def rss(self) -> int:
        """get_mm_rss(): file + anon + shmem pages."""
        c = self.counters
        return c["MM_FILEPAGES"] + c["MM_ANONPAGES"] + c["MM_SHMEMPAGES"]

    @property
    def pgtables_bytes(self) -> int:
        return self.nr_pgtables * 4096

    def add_counter(self, name: str, n: int) -> None:
        self.counters[name] += n

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out.update(RSS=self.rss, nr_ptes=self.nr_ptes, nr_pgtables=self.nr_pgtables,
                   pgtables_bytes=self.pgtables_bytes, nr_vmas=len(self.vmas))
        return out
