"""Access records of a batch as plain columns, split into per-thread runs.

The models' numba kernels take contiguous arrays; gathering them field by
field with numpy costs a pass over the batch per field (the batch is larger
than the host's L2), so one kernel gathers every column in a single pass.
"""

import numpy as np
from numba import njit

from emu.trace.events import FETCH, PC, READ, WRITE
from emu.trace.format import F_ABSORBED

# A READ or WRITE the plugin's micro-TLB absorbed has this bit set in its kinds
# column: the page counts take it (kind & KIND_MASK), the TLB model skips it
# (kinds above FETCH make no lookup), absorbed_counts sums it.  The bit lies above
# every record kind (PC is 9), so masking never turns another kind into an access.
KIND_ABSORBED = 16
KIND_MASK = 15


@njit(cache=True, nogil=True)
def access_columns(events, lo, hi, kinds, addrs, counts, flags, starts):
    """Copy the access records (and PC records, kept in place before the access they
    annotate; the models skip their kind) from lo up to the first other record (or hi).

    kinds/addrs/counts/flags[0:end-lo] receive them; starts the offsets where
    a run of one (pid, vCPU) begins, followed by end - lo.  Returns (end,
    number of runs, FETCH records): events[end] is the SYSCALL/MARK/... record
    that stopped the copy, or end == hi.
    """
    n_runs = 0
    n_fetch = 0
    pid = np.uint32(0)
    vcpu = np.uint16(0)
    end = hi
    for i in range(lo, hi):
        e = events[i]
        if e.kind > FETCH and e.kind != PC:     # PC rows stay: they annotate the next
            end = i
            break
        j = i - lo
        if j == 0 or e.pid != pid or e.vcpu != vcpu:
            starts[n_runs] = j
            n_runs += 1
            pid = e.pid
            vcpu = e.vcpu
        kinds[j] = e.kind | (KIND_ABSORBED if e.pad & F_ABSORBED and e.kind <= WRITE else 0)
        addrs[j] = e.addr
        counts[j] = e.count
        flags[j] = e.pad
        n_fetch += e.kind == FETCH
    starts[n_runs] = end - lo
    return end, n_runs, n_fetch


@njit(cache=True, nogil=True)
def absorbed_counts(kinds, counts):
    """(loads, stores) of the absorbed records among kinds/counts (one pass)."""
    loads = np.uint64(0)
    stores = np.uint64(0)
    for i in range(kinds.shape[0]):
        k = kinds[i]
        if k == KIND_ABSORBED | READ:
            loads += counts[i]
        elif k == KIND_ABSORBED | WRITE:
            stores += counts[i]
    return loads, stores


class Columns:
    """Reusable column buffers, grown to the largest batch seen."""

    def __init__(self, size: int = 1 << 17) -> None:
        self._alloc(size)

    def _alloc(self, size: int) -> None:
        self.kinds = np.empty(size, np.uint8)
        self.addrs = np.empty(size, np.uint64)
        self.counts = np.empty(size, np.uint64)
        self.flags = np.empty(size, np.uint8)
        self.starts = np.empty(size + 1, np.int64)

    def gather(self, events: np.ndarray, lo: int, hi: int) -> tuple[int, list[int], int]:
        """Fill the columns from the access records at events[lo:]:

        (end, run boundaries, FETCH count), where end is the index of the
        first record that is not an access (or hi)."""
        if hi - lo > len(self.kinds):
            self._alloc(hi - lo)
        end, n_runs, n_fetch = access_columns(events, lo, hi, self.kinds, self.addrs,
                                              self.counts, self.flags, self.starts)
        return int(end), self.starts[:n_runs + 1].tolist(), int(n_fetch)
