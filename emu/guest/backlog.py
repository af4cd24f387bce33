"""A stream's read end that a thread empties into memory while emu loads the model.

QEMU starts as soon as the options are checked, while emu imports numba and
builds the model (about a second).  Without a reader the transport (pipe or
ring) would fill and stall the guest for all that time, so prefetch() starts
a thread that moves blocks into a backlog; readinto() serves the backlog
first, in order.  For a pipe the thread keeps draining until the reader has
caught up; a ring large enough to wait in stops it at the first read.
"""

import threading
from collections import deque

# Past this much backlog QEMU waits on the transport as it would without one.
# It bounds emu's memory (issue 13: peak RSS within 2x the guest's touched
# memory + 200 MiB): the ring's 16 MiB plus this is all the stream that can
# wait for the model.  At `random`'s ~250 MB/s it covers about 0.2 s of the
# model's start-up; after that QEMU waits instead of emu's memory growing
# (measured: `random -m 64` peak PSS 352 -> 268 MiB, its wall time unchanged).
PREFETCH_MAX = 32 << 20


class Backlogged:
    """Base of the FIFO and ring streams: the prefetch thread and its backlog.

    A subclass provides _next_block() (one block, b"" if nothing arrived
    within a short wait, None at end of stream) and _read_direct(mv).
    """

    # Keep draining while the reader works off the backlog (a pipe's 1 MiB
    # fills in milliseconds), or stop at its first read (a ring that holds
    # long enough: each byte then is copied once, not twice).
    drain_while_backlogged = True

    def __init__(self) -> None:
        self._pending: deque[bytes | bytearray] = deque()
        self._pending_off = 0
        self._eof = False
        self._error: Exception | None = None
        self._drainer: threading.Thread | None = None
        self._stop = threading.Event()

    def _next_block(self) -> bytes | bytearray | None:
        raise NotImplementedError

    def _read_direct(self, mv) -> int:
        raise NotImplementedError

    def prefetch(self, limit: int = PREFETCH_MAX) -> None:
        self._drainer = threading.Thread(target=self._drain, args=(limit,),
                                         name="emu-prefetch", daemon=True)
        self._drainer.start()

    def _drain(self, limit: int) -> None:
        total = 0
        try:
            while total < limit and not self._stop.is_set():
                data = self._next_block()
                if data is None:
                    self._eof = True
                    return
                if data:
                    self._pending.append(data)
                    total += len(data)
        except Exception as e:  # re-raised by readinto() in the main thread
            self._error = e

    def _stop_drainer(self) -> None:
        if self._drainer is not None:
            self._stop.set()
            self._drainer.join()
            self._drainer = None

    def _from_pending(self, mv) -> int:
        """Copy as much of the backlog as fits into mv."""
        got = 0
        while self._pending and got < len(mv):
            data = self._pending[0]
            n = min(len(mv) - got, len(data) - self._pending_off)
            mv[got:got + n] = data[self._pending_off:self._pending_off + n]
            got += n
            self._pending_off += n
            if self._pending_off == len(data):
                self._pending.popleft()
                self._pending_off = 0
        return got

    def readinto(self, mv) -> int:
        # While a backlog is served the thread keeps draining, so QEMU does
        # not stall while the model catches up; then reads go direct.
        if self._drainer is not None and (not self._pending
                                          or not self.drain_while_backlogged):
            self._stop_drainer()
            if self._error is not None:
                raise self._error
        if self._pending:
            return self._from_pending(mv)
        if self._eof:
            return 0
        return self._read_direct(mv)

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(1 << 20 if n < 0 else n)
        k = self.readinto(memoryview(buf))
        return bytes(buf[:k])
