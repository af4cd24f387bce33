"""Physical frames and the write-version oracle.

Every frame carries the version of the last guest write that landed in it; the
kernel copies versions when it copies a page (COW, collapse) and a zero-filled
frame starts at 0.  A read that reaches a frame older than the virtual page's
ground truth is a lost write (design.md, "Integrity oracle").
"""

import numpy as np

from emu.mem.pgtable import PageTableStore

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


class PhysMem:
    """nr_frames frames of PAGE_SIZE bytes, and the page-table pages among them."""

    def __init__(self, nr_frames: int) -> None:
        self.nr_frames = nr_frames
        self.version = np.zeros(nr_frames, dtype=np.uint64)
        self.pgtables = PageTableStore(nr_frames)

    def zero(self, pfn: int, nr: int = 1) -> None:
        self.version[pfn:pfn + nr] = 0

    def copy(self, dst_pfn: int, src_pfn: int, nr: int = 1) -> None:
        self.version[dst_pfn:dst_pfn + nr] = self.version[src_pfn:src_pfn + nr]
