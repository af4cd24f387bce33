"""Simulated physical memory: the room below both emu.hw and emu.kernel.

Page tables live here, as real descriptors in numpy arrays addressed by the
frame number of the page-table page.  The kernel model writes them (after
taking frames from its allocator); the hardware model walks them and sets
accessed/dirty bits.  Nothing here decides policy.
"""

from emu.mem.frames import BumpAllocator, FrameAllocator
from emu.mem.pgtable import PTRS_PER_TABLE, PageTableStore
from emu.mem.physmem import PhysMem

__all__ = ["BumpAllocator", "FrameAllocator", "PTRS_PER_TABLE", "PageTableStore", "PhysMem"]
