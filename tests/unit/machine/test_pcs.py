"""emu.pcs: a PC record annotates the access after it; misses are counted per address."""

import numpy as np

from emu.pcs import PcCounts, record_pcs
from emu.trace import events as ev


def test_record_pcs_and_miss_counts() -> None:
    kinds = np.array([ev.PC, ev.READ, ev.FETCH, ev.PC, ev.WRITE, ev.READ], dtype=np.uint8)
    addrs = np.array([0x401000, 0x7000, 0x402000, 0x401008, 0x8000, 0x9000], dtype=np.uint64)
    pcs = record_pcs(kinds, addrs)
    assert pcs.tolist() == [0, 0x401000, 0, 0, 0x401008, 0]
    miss = np.array([0, 2, 2, 0, 1, 0], dtype=np.int8)      # the FETCH walk is not attributed
    c = PcCounts()
    c.add_misses(7, miss, pcs, kinds)
    c.add("fault", 7, pcs[4:5])
    assert c.counts["walk"] == {(7, 0x401000): 1}
    assert c.counts["l2_hit"] == {(7, 0x401008): 1}
    assert c.counts["fault"] == {(7, 0x401008): 1}
