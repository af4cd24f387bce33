"""The integrity oracle (design.md): does every read see the guest's last write?

QEMU is always right about memory, so the guest's writes define the truth: every
write record gives its virtual page a new version, which also lands in the frame
the modelled hardware reached.  A read that reaches a frame holding another
version than its page's truth read stale data: a write was lost (it landed in a
frame that is no longer the page's) or the read went to the wrong frame.  Pages
whose contents the kernel drops (zap) leave the truth; mremap moves them; fork
copies them.  MADV_FREE makes a page's contents the kernel's to drop until it is
written again: reclaim may then discard it, and only a discarded page that was
written after MADV_FREE (its dirty bit lost) leaves a lost write behind.  The
checks run in a numba kernel over the batch's frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba as nb
import numpy as np
from numba import types
from numba.typed import Dict

from emu.arch import PAGE_SHIFT

KIND_READ, KIND_WRITE = 0, 1
# truth key: the mm's ASID above the virtual page number (48-bit VAs: 36-bit pages)
ASID_SHIFT = 36
MAX_REPORTS = 16


@nb.njit(cache=True)
def _check(kinds, addrs, pfns, lo, hi, key_base, truth, frame_version, version, lost):
    """Apply writes, check reads of [lo, hi); returns (next version, checked reads).

    lost[j] = record index of the j-th lost read (lost[-1] holds the count)."""
    checked = 0
    for i in range(lo, hi):
        k = kinds[i]
        if k == KIND_WRITE:
            version += 1
            truth[key_base | (addrs[i] >> PAGE_SHIFT)] = version
            frame_version[pfns[i]] = version
        elif k == KIND_READ:
            key = key_base | (addrs[i] >> PAGE_SHIFT)
            if key in truth:
                checked += 1
                if frame_version[pfns[i]] != truth[key]:
                    n = lost[-1]
                    if n < len(lost) - 1:
                        lost[n] = i
                    lost[-1] = n + 1
    return version, checked


@nb.njit(cache=True)
def _drop(truth, key_lo, key_hi):
    """Forget the pages [key_lo, key_hi) (their contents are gone)."""
    if key_hi - key_lo < len(truth):
        for key in range(key_lo, key_hi):
            if key in truth:
                del truth[key]
        return
    doomed = [key for key in truth.keys() if key_lo <= key < key_hi]
    for key in doomed:
        del truth[key]


@nb.njit(cache=True)
def _items_in(truth, key_lo, key_hi):
    """(keys, versions) of the truth in [key_lo, key_hi), by the cheaper of a probe per
    key and a pass over the table (as _drop)."""
    keys = []
    vals = []
    if key_hi - key_lo < len(truth):
        for key in range(key_lo, key_hi):
            if key in truth:
                keys.append(key)
                vals.append(truth[key])
    else:
        for key, v in truth.items():
            if key_lo <= key < key_hi:
                keys.append(key)
                vals.append(v)
    return keys, vals


@nb.njit(cache=True)
def _copy(truth, src_lo, src_hi, dst_lo, drop_src):
    """Copy (or move) the truth of keys [src_lo, src_hi) to start at dst_lo."""
    pairs = [(key, v) for key, v in truth.items() if src_lo <= key < src_hi]
    if drop_src:
        for key, _v in pairs:
            del truth[key]
    for key, v in pairs:
        truth[dst_lo + (key - src_lo)] = v


@dataclass
class Oracle:
    """The truth table and what the checks found."""

    frame_version: np.ndarray
    truth: object = None
    version: int = 0
    checked_reads: int = 0
    lost_writes: int = 0
    reports: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.truth = Dict.empty(key_type=types.int64, value_type=types.int64)
        self._lost = np.zeros(MAX_REPORTS + 1, dtype=np.int64)
        self._lazyfree: dict[int, int] = {}     # key -> version at MADV_FREE

    def lazyfree(self, asid: int, start: int, end: int) -> None:
        """MADV_FREE: remember each written page's version at this moment."""
        base = self._base(asid)
        keys, vals = _items_in(self.truth, base + (start >> PAGE_SHIFT),
                               base + (end >> PAGE_SHIFT))
        self._lazyfree.update(zip(keys, vals, strict=True))

    def discard(self, asid: int, va: int) -> None:
        """Reclaim dropped a lazy-free page: its truth goes only if it was not written
        since MADV_FREE (otherwise the next read reports the lost write)."""
        key = self._base(asid) + (va >> PAGE_SHIFT)
        v = self._lazyfree.pop(key, None)
        if v is not None and self.truth.get(key, -1) == v:
            del self.truth[key]

    @staticmethod
    def _base(asid: int) -> int:
        return asid << ASID_SHIFT

    def check(self, asid: int, kinds: np.ndarray, addrs: np.ndarray, pfns: np.ndarray,
              lo: int, hi: int) -> list[int]:
        """Run writes and reads [lo, hi) whose frames are in pfns; the lost reads' indices."""
        self._lost[-1] = 0
        self.version, checked = _check(kinds, addrs, pfns, lo, hi, self._base(asid),
                                       self.truth, self.frame_version, self.version,
                                       self._lost)
        self.checked_reads += checked
        n = int(self._lost[-1])
        self.lost_writes += n
        return self._lost[:min(n, MAX_REPORTS)].tolist()

    def drop(self, asid: int, start: int, end: int) -> None:
        base = self._base(asid)
        _drop(self.truth, base + (start >> PAGE_SHIFT), base + (end >> PAGE_SHIFT))

    def move(self, asid: int, old: int, new: int, length: int) -> None:
        base = self._base(asid)
        lo = base + (old >> PAGE_SHIFT)
        _copy(self.truth, lo, lo + (length >> PAGE_SHIFT), base + (new >> PAGE_SHIFT), True)

    def fork(self, parent_asid: int, child_asid: int) -> None:
        lo = self._base(parent_asid)
        _copy(self.truth, lo, lo + (1 << ASID_SHIFT), self._base(child_asid), False)
