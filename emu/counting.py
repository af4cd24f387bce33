"""Per-page access counts straight from the stream: the ground truth every model
result is checked against (pages touched, reads, writes per VMA).

Pages are counted in blocks of BLOCK_PAGES (64 KiB of address space): a small
open-addressing directory maps a block number to a row of read and write
counters.  Working sets are dense in blocks, so the directory stays in the
host's L1 and a 64 MiB working set's counters in its L2; a page-keyed hash
with separate key and counter arrays took two cache misses per event there.
A worst-case sparse set (one page per block) costs 256 bytes per page.
"""

import numba as nb
import numpy as np

from emu.trace.columns import KIND_MASK
from emu.trace.events import PAGE_SHIFT, READ, WRITE

BLOCK_SHIFT = 4                      # pages per block = 16 (64 KiB)
BLOCK_PAGES = 1 << BLOCK_SHIFT
_EMPTY = np.uint64(0)


@nb.njit(cache=True, nogil=True)
def _hash(key: np.uint64, mask: np.int64) -> np.int64:
    return np.int64((key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)) & mask


@nb.njit(cache=True, nogil=True)
def _count(dir_ent, counts_rw, nr_rows, kinds, addrs, counts, start):
    """Add READ/WRITE records from ``start`` until done or out of room.

    dir_ent[h] is (block + 1, row), 0 when free; counts_rw[row, 0:16] are
    the reads of the block's pages, [row, 16:32] the writes.  Returns (next
    record, rows in use) so the caller can grow the directory and rows and
    resume.
    """
    mask = np.int64(dir_ent.shape[0] - 1)
    dir_limit = dir_ent.shape[0] // 2
    row_limit = counts_rw.shape[0]
    last_key = _EMPTY
    last_row = 0
    off_mask = np.uint64(BLOCK_PAGES - 1)
    for i in range(start, kinds.shape[0]):
        k = kinds[i] & KIND_MASK       # micro-TLB hits count too (columns.KIND_ABSORBED)
        if k != READ and k != WRITE:
            continue
        page = addrs[i] >> np.uint64(PAGE_SHIFT)
        key = (page >> np.uint64(BLOCK_SHIFT)) + np.uint64(1)
        if key != last_key:
            h = _hash(key, mask)
            while dir_ent[h, 0] != key and dir_ent[h, 0] != _EMPTY:
                h = (h + 1) & mask
            if dir_ent[h, 0] == _EMPTY:
                if nr_rows >= dir_limit or nr_rows >= row_limit:
                    return i, nr_rows
                dir_ent[h, 0] = key
                dir_ent[h, 1] = nr_rows
                nr_rows += 1
            last_key = key
            last_row = np.int64(dir_ent[h, 1])
        col = np.int64(page & off_mask) + (BLOCK_PAGES if k == WRITE else 0)
        counts_rw[last_row, col] += counts[i]
    return kinds.shape[0], nr_rows


class PageCounts:
    """Reads and writes per 4 KiB virtual page, per process."""

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.dir_ent = np.zeros((capacity, 2), dtype=np.uint64)
        self.counts_rw = np.zeros((capacity // 2, 2 * BLOCK_PAGES), dtype=np.uint64)
        self.nr_rows = 0

    def add(self, kinds: np.ndarray, addrs: np.ndarray, counts: np.ndarray) -> None:
        i = 0
        while True:
            i, self.nr_rows = _count(self.dir_ent, self.counts_rw, self.nr_rows,
                                     kinds, addrs, counts, i)
            if i == len(kinds):
                return
            self._grow()

    def _grow(self) -> None:
        """Double the directory (rehashing block keys) and the counter rows."""
        live = self.dir_ent[self.dir_ent[:, 0] != _EMPTY]
        cap = 2 * len(self.dir_ent)
        self.dir_ent = np.zeros((cap, 2), dtype=np.uint64)
        _rehash(self.dir_ent, live)
        grown = np.zeros((cap // 2, 2 * BLOCK_PAGES), dtype=np.uint64)
        grown[:self.nr_rows] = self.counts_rw[:self.nr_rows]
        self.counts_rw = grown

    @property
    def nr_pages(self) -> int:
        """Distinct pages touched so far."""
        rw = self.counts_rw[:self.nr_rows]
        return int(np.count_nonzero(rw[:, :BLOCK_PAGES] | rw[:, BLOCK_PAGES:]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pages, reads, writes) of every touched page, sorted by page number."""
        live = self.dir_ent[self.dir_ent[:, 0] != _EMPTY]
        blocks = live[:, 0] - np.uint64(1)
        rw = self.counts_rw[live[:, 1].astype(np.int64)]
        reads, writes = rw[:, :BLOCK_PAGES], rw[:, BLOCK_PAGES:]
        pages = (blocks[:, None] << np.uint64(BLOCK_SHIFT)) + np.arange(BLOCK_PAGES,
                                                                         dtype=np.uint64)
        touched = (reads | writes) != 0
        pages, reads, writes = pages[touched], reads[touched], writes[touched]
        order = np.argsort(pages)
        return pages[order], reads[order], writes[order]

    def in_range(self, start: int, end: int) -> tuple[int, int, int]:
        """(pages touched, reads, writes) for virtual addresses [start, end)."""
        pages, reads, writes = self.arrays()
        lo = np.searchsorted(pages, start >> PAGE_SHIFT)
        hi = np.searchsorted(pages, (end + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT)
        return int(hi - lo), int(reads[lo:hi].sum()), int(writes[lo:hi].sum())


@nb.njit(cache=True, nogil=True)
def _rehash(dir_ent, live):
    mask = np.int64(dir_ent.shape[0] - 1)
    for j in range(live.shape[0]):
        h = _hash(live[j, 0], mask)
        while dir_ent[h, 0] != _EMPTY:
            h = (h + 1) & mask
        dir_ent[h, 0] = live[j, 0]
        dir_ent[h, 1] = live[j, 1]
