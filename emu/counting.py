"""Per-page access counts straight from the stream: the ground truth every model
result is checked against (pages touched, reads, writes per VMA).

A numba open-addressing hash table keyed by page number; it stays small for the
working sets emu runs (1 GiB touched is 262144 pages) and costs a few ns per
event, so the raw counts never slow the model down.
"""

import numba as nb
import numpy as np

from emu.trace.events import PAGE_SHIFT, READ, WRITE

_EMPTY = np.uint64(0)


@nb.njit(cache=True, nogil=True)
def _hash(page: np.uint64, mask: np.int64) -> np.int64:
    return np.int64((page * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) & mask


@nb.njit(cache=True, nogil=True)
def _count(keys, reads, writes, kinds, addrs, counts, start, used):
    """Add READ/WRITE records from ``start`` until done or the table is half full.

    Returns (next record, pages in use) so the caller can grow and resume.
    """
    mask = np.int64(keys.shape[0] - 1)
    limit = keys.shape[0] // 2
    for i in range(start, kinds.shape[0]):
        if used >= limit:
            return i, used
        k = kinds[i]
        if k != READ and k != WRITE:
            continue
        key = (addrs[i] >> np.uint64(PAGE_SHIFT)) + np.uint64(1)
        h = _hash(key, mask)
        while keys[h] != key and keys[h] != _EMPTY:
            h = (h + 1) & mask
        if keys[h] == _EMPTY:
            keys[h] = key
            used += 1
        if k == READ:
            reads[h] += counts[i]
        else:
            writes[h] += counts[i]
    return kinds.shape[0], used


class PageCounts:
    """Reads and writes per 4 KiB virtual page, per process."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._alloc(capacity)
        self.nr_pages = 0

    def _alloc(self, capacity: int) -> None:
        self.keys = np.zeros(capacity, dtype=np.uint64)
        self.reads = np.zeros(capacity, dtype=np.uint64)
        self.writes = np.zeros(capacity, dtype=np.uint64)

    def add(self, kinds: np.ndarray, addrs: np.ndarray, counts: np.ndarray) -> None:
        i = 0
        while True:
            i, self.nr_pages = _count(self.keys, self.reads, self.writes,
                                      kinds, addrs, counts, i, self.nr_pages)
            if i == len(kinds):
                return
            self._grow()

    def _grow(self) -> None:
        pages, reads, writes = self.arrays()
        self._alloc(2 * len(self.keys))
        self.nr_pages = 0
        addrs = pages << np.uint64(PAGE_SHIFT)
        # Reinsert every page, with its reads, then its writes.
        for kind, counts in ((READ, reads), (WRITE, writes)):
            kinds = np.full(len(pages), kind, np.uint8)
            _, self.nr_pages = _count(self.keys, self.reads, self.writes,
                                      kinds, addrs, counts, 0, 0 if kind == READ else self.nr_pages)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pages, reads, writes), sorted by page number."""
        used = self.keys != _EMPTY
        pages = self.keys[used] - np.uint64(1)
        order = np.argsort(pages)
        return pages[order], self.reads[used][order], self.writes[used][order]

    def in_range(self, start: int, end: int) -> tuple[int, int, int]:
        """(pages touched, reads, writes) for virtual addresses [start, end)."""
        pages, reads, writes = self.arrays()
        lo = np.searchsorted(pages, start >> PAGE_SHIFT)
        hi = np.searchsorted(pages, (end + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT)
        return int(hi - lo), int(reads[lo:hi].sum()), int(writes[lo:hi].sum())
