"""Per-instruction event counts for `run --annotate` (emu.guest.annotate names them).

The stream then has a PC record before each access record (docs/trace-format.md);
the machine asks the hardware which records missed and counts each kind of event
per (pid, instruction address).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from emu.trace import events as ev


def record_pcs(kinds: np.ndarray, addrs: np.ndarray) -> np.ndarray:
    """Each record's instruction address: the PC record just before it (0: none)."""
    pcs = np.zeros(len(kinds), dtype=np.uint64)
    if len(kinds) > 1:
        is_pc = kinds[:-1] == ev.PC
        pcs[1:][is_pc] = addrs[:-1][is_pc]
    return pcs


class PcCounts:
    """kind (emu.guest.annotate.KINDS) -> Counter of (pid, instruction address)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[tuple[int, int]]] = {}

    def add(self, kind: str, pid: int, pcs: np.ndarray) -> None:
        c = self.counts.setdefault(kind, Counter())
        for pc, n in zip(*np.unique(pcs, return_counts=True), strict=True):
            c[(pid, int(pc))] += int(n)

    def add_misses(self, pid: int, miss: np.ndarray, pcs: np.ndarray,
                   kinds: np.ndarray) -> None:
        """The data-side L1 misses hw.run marked (1 L2 hit, 2 walk), by instruction
        (an instruction fetch carries no address of its own: not attributed)."""
        hit = np.nonzero(miss * (kinds != ev.FETCH))[0]
        if len(hit):
            codes = miss[hit]
            self.add("l2_hit", pid, pcs[hit[codes == 1]])
            self.add("walk", pid, pcs[hit[codes == 2]])
