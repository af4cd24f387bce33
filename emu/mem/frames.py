"""The frame-allocator interface the kernel's buddy allocator implements."""

from typing import Protocol


class FrameAllocator(Protocol):
    """Hands out naturally aligned runs of 2**order frames."""

    def alloc(self, order: int) -> int | None:
        """First pfn of a free, naturally aligned run of 2**order frames, or None."""
        ...

    def free(self, pfn: int, order: int) -> None:
        """Return a run obtained from alloc(order)."""
        ...


class BumpAllocator:
    """Never-reusing allocator for unit tests of rooms that need frames but no policy."""

    def __init__(self, nr_frames: int, first_pfn: int = 1) -> None:
        self.nr_frames = nr_frames
        self.next_pfn = first_pfn
        self.nr_free_calls = 0

    def alloc(self, order: int) -> int | None:
        size = 1 << order
        pfn = (self.next_pfn + size - 1) & ~(size - 1)
        if pfn + size > self.nr_frames:
            return None
        self.next_pfn = pfn + size
        return pfn

    def free(self, pfn: int, order: int) -> None:
        self.nr_free_calls += 1
