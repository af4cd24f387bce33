"""Binary buddy allocator over the simulated physical frames (orders 0..MAX_ORDER).

It implements emu.mem.FrameAllocator.  Free blocks of each order sit in a min-heap
with lazy deletion (``_free_order`` is the truth; lowest pfn is handed out
first, so runs are deterministic); freeing merges with
the buddy while the buddy of the same order is free.  ``fragment()`` is the
knob that makes high orders scarce so the kernel's fallback paths run.
"""

from __future__ import annotations

import heapq
import random

import numpy as np

MAX_ORDER = 10          # the kernel's MAX_PAGE_ORDER on 4K x86-64/arm64 defaults


class BuddyAllocator:
    """Free lists per order over frames [first_pfn, nr_frames)."""

    def __init__(self, nr_frames: int, first_pfn: int = 0, max_order: int = MAX_ORDER) -> None:
        self.nr_frames = nr_frames
        self.max_order = max_order
        self.free_area: list[list[int]] = [[] for _ in range(max_order + 1)]
        self._nr_blocks = [0] * (max_order + 1)
        # order of the free block starting at pfn, or -1 (not a free block head)
        self._free_order = np.full(nr_frames, -1, dtype=np.int8)
        self.nr_free = 0
        self.nr_alloc_fail = [0] * (max_order + 1)
        pfn = first_pfn
        while pfn < nr_frames:
            order = max_order
            while order > 0 and (pfn & ((1 << order) - 1) or pfn + (1 << order) > nr_frames):
                order -= 1
            self._put(pfn, order)
            pfn += 1 << order

    def _put(self, pfn: int, order: int) -> None:
        heapq.heappush(self.free_area[order], pfn)
        self._free_order[pfn] = order
        self._nr_blocks[order] += 1
        self.nr_free += 1 << order

    def _take(self, pfn: int, order: int) -> None:
        # the heap entry goes stale; _pop_lowest skips it
        self._free_order[pfn] = -1
        self._nr_blocks[order] -= 1
        self.nr_free -= 1 << order

    def _pop_lowest(self, order: int) -> int | None:
        heap = self.free_area[order]
        while heap:
            pfn = heapq.heappop(heap)
            if self._free_order[pfn] == order:
                self._take(pfn, order)
                return pfn
        return None

    def alloc(self, order: int) -> int | None:
        """Lowest free naturally aligned run of 2**order frames, or None."""
        if order > self.max_order:
            return None
        for o in range(order, self.max_order + 1):
            if self._nr_blocks[o]:
                pfn = self._pop_lowest(o)
                assert pfn is not None
                while o > order:      # split, keep the low half
                    o -= 1
                    self._put(pfn + (1 << o), o)
                return pfn
        self.nr_alloc_fail[order] += 1
        return None

    def free(self, pfn: int, order: int) -> None:
        """Return a run; merges with free buddies up to max_order."""
        if pfn & ((1 << order) - 1):
            raise ValueError(f"free of unaligned pfn {pfn:#x} at order {order}")
        while order < self.max_order:
            buddy = pfn ^ (1 << order)
            if buddy + (1 << order) > self.nr_frames or self._free_order[buddy] != order:
                break
            self._take(buddy, order)
            pfn = min(pfn, buddy)
            order += 1
        self._put(pfn, order)

    def nr_free_blocks(self, order: int) -> int:
        """Free blocks of exactly this order (the /proc/buddyinfo column)."""
        return self._nr_blocks[order]

    def can_alloc(self, order: int) -> bool:
        return any(self._nr_blocks[o] for o in range(order, self.max_order + 1))

    def fragment(self, fraction: float, max_free_order: int = 0, seed: int = 0) -> list[int]:
        """Pre-fragment memory: pin one frame in ``fraction`` of the blocks of
        2**(max_free_order+1) frames, so no free block above ``max_free_order``
        survives there.  Returns the pinned pfns (they stay allocated).

        fraction=1.0, max_free_order=0 leaves only order-0 blocks free: every
        mTHP allocation fails and anon_fault_fallback counts each try.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fragment fraction must be in [0, 1]")
        rng = random.Random(seed)
        step = 1 << (max_free_order + 1)
        pinned: list[int] = []
        for base in range(0, self.nr_frames - step + 1, step):
            if rng.random() >= fraction:
                continue
            target = base + rng.randrange(step)
            if self._pin(target):
                pinned.append(target)
        return pinned

    def _pin(self, target: int) -> bool:
        """Allocate the single frame ``target`` out of whatever free block holds it."""
        for order in range(self.max_order + 1):
            head = target & ~((1 << order) - 1)
            if self._free_order[head] == order:
                self._take(head, order)
                # give back every part of the block except target
                while order > 0:
                    order -= 1
                    half = 1 << order
                    if target >= head + half:
                        self._put(head, order)
                        head += half
                    else:
                        self._put(head + half, order)
                return True
        return False
