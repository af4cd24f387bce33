"""Page-table pages: 512 uint64 descriptors each, found by frame number.

``tables[slot_of_pfn[pfn]]`` is the table held in frame ``pfn``; a slot of -1
means the frame is not a page-table page.  Numba kernels take ``tables`` and
``slot_of_pfn`` as arguments, so the store may grow between calls (callers
must re-read the attributes after any ``add``).  Descriptor formats belong to
emu.arch; this module stores bits and never interprets them.
"""

import numpy as np

PTRS_PER_TABLE = 512


class PageTableStore:
    """Storage for every page-table page of every mm in the machine."""

    def __init__(self, nr_frames: int, capacity: int = 64) -> None:
        self.tables = np.zeros((capacity, PTRS_PER_TABLE), dtype=np.uint64)
        self.slot_of_pfn = np.full(nr_frames, -1, dtype=np.int32)
        self._free_slots: list[int] = list(range(capacity - 1, -1, -1))
        self.nr_tables = 0

    def add(self, pfn: int) -> np.ndarray:
        """Make frame ``pfn`` a zeroed page-table page; returns its 512 entries (a view)."""
        if self.slot_of_pfn[pfn] >= 0:
            raise ValueError(f"pfn {pfn:#x} is already a page table")
        if not self._free_slots:
            old = self.tables.shape[0]
            self.tables = np.concatenate([self.tables, np.zeros_like(self.tables)])
            self._free_slots = list(range(2 * old - 1, old - 1, -1))
        slot = self._free_slots.pop()
        self.tables[slot] = 0
        self.slot_of_pfn[pfn] = slot
        self.nr_tables += 1
        return self.tables[slot]

    def remove(self, pfn: int) -> None:
        """Frame ``pfn`` stops being a page table (the kernel frees the frame itself)."""
        slot = int(self.slot_of_pfn[pfn])
        if slot < 0:
            raise ValueError(f"pfn {pfn:#x} is not a page table")
        self.slot_of_pfn[pfn] = -1
        self._free_slots.append(slot)
        self.nr_tables -= 1

    def is_table(self, pfn: int) -> bool:
        return bool(self.slot_of_pfn[pfn] >= 0)

    def table(self, pfn: int) -> np.ndarray:
        """The 512 descriptors in frame ``pfn`` (a view; writes land in the store)."""
        slot = int(self.slot_of_pfn[pfn])
        if slot < 0:
            raise ValueError(f"pfn {pfn:#x} is not a page table")
        return self.tables[slot]

    def read(self, pfn: int, index: int) -> int:
        return int(self.table(pfn)[index])

    def write(self, pfn: int, index: int, desc: int) -> None:
        self.table(pfn)[index] = desc
