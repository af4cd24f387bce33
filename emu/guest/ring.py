"""The shared-memory ring the plugin writes chunks into (plugin argument ringfd=N).

Why: through a FIFO every byte costs a write() in QEMU's thread and a read()
in emu's; on arm64 `random` those system calls and wake-ups cost QEMU 0.5-0.6×
of plain QEMU's time (docs/pipeline-speed.md).  Here the plugin copies each
chunk into shared memory and emu copies it out.

Layout (plugin/emu.c has the writer's half): one control page, then CAP data
bytes, CAP a power of two.  head (offset 64) and tail (offset 128) are
absolute byte positions that only grow; stream byte pos lives at data[pos %
CAP], so ring positions are the stream offsets errors report.  A writer adds
its chunk's length to head, waits for room, copies the chunk in and stores
its first 8 bytes last; a chunk is published when its magic is non-zero.
emu reads published chunks in position order, zeroes what it consumed, then
moves tail.  The FIFO named by out= carries no data: when every guest process
has closed it, no writer is left and the ring's end is the stream's end.

Reading published bytes after their magic relies on the host not reordering
loads (x86-64); GuestRun uses the FIFO transport on other hosts.
"""

import ctypes
import mmap
import os
import select
import struct
import subprocess

from emu.errors import EmuError
from emu.guest.backlog import Backlogged

RING_MAGIC = 0x31474E4952554D45   # "EMURING1"
RING_CTL = 4096                   # control page; the data follow
# Default data size.  16 MiB (was 64): the ring is in both QEMU's and emu's
# resident memory, and 1-64 MiB measured the same speed (docs/pipeline-speed.md);
# the prefetch backlog, not the ring, covers the model's start-up.
RING_BYTES = 16 << 20
CHUNK_MAGIC = 0x43554D45          # docs/trace-format.md
_CLOSED, _ATTACHED, _HEAD, _TAIL = 20, 24, 64, 128   # magic, cap, consumer at 0, 8, 16
_WAIT_MS = 2                      # poll interval while the ring is empty


class Ring:
    """The ring's memory and emu's end of its protocol (single reader)."""

    def __init__(self, cap: int = RING_BYTES):
        if cap < 4096 or cap & (cap - 1):
            raise ValueError("ring size must be a power of two of at least 4096")
        self.cap = cap
        self._mask = cap - 1
        self.fd = os.memfd_create("emu-ring", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, RING_CTL + cap)
        self._map = mmap.mmap(self.fd, RING_CTL + cap)
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._data = memoryview(self._map)[RING_CTL:]
        struct.pack_into("<QQI", self._map, 0, RING_MAGIC, cap, os.getpid())
        self.tail = 0    # consumed (and zeroed) up to here
        self.ready = 0   # published chunks end here

    @property
    def attached(self) -> int:
        """Guest processes that mapped the ring at start-up."""
        return struct.unpack_from("<I", self._map, _ATTACHED)[0]

    @property
    def head(self) -> int:
        """Bytes writers have reserved, published or not."""
        return struct.unpack_from("<Q", self._map, _HEAD)[0]

    def scan(self, want: int) -> int:
        """Move ready over published chunks until want bytes wait; return ready - tail."""
        m, mask, pos = self._map, self._mask, self.ready
        end = self.tail + min(want, self.cap)
        while pos < end:
            off = RING_CTL + (pos & mask)
            magic = struct.unpack_from("<I", m, off)[0]
            if magic != CHUNK_MAGIC:
                if magic == 0:
                    break          # not yet published
                raise EmuError(f"stream ring corrupted at stream byte {pos}")
            nrec, nsys = struct.unpack_from("<HH", m, RING_CTL + ((pos + 24) & mask))
            pos += 32 + 16 * nrec + 64 * nsys
        self.ready = pos
        return pos - self.tail

    def take_into(self, mv) -> int:
        """Copy up to len(mv) published bytes out, free their room; the count."""
        n = min(len(mv), self.scan(len(mv)))
        if n <= 0:
            return 0
        off = self.tail & self._mask
        first = min(n, self.cap - off)
        mv[:first] = self._data[off:off + first]
        ctypes.memset(self._base + RING_CTL + off, 0, first)
        if first < n:
            mv[first:n] = self._data[:n - first]
            ctypes.memset(self._base + RING_CTL, 0, n - first)
        self.tail += n
        struct.pack_into("<Q", self._map, _TAIL, self.tail)
        return n

    def stop(self) -> None:
        """No more reading: writers waiting for room drop their chunks instead."""
        struct.pack_into("<I", self._map, _CLOSED, 1)

    def close(self) -> None:
        if self.fd < 0:
            return
        self.stop()
        self._data.release()
        self._base = 0
        self._map.close()
        os.close(self.fd)
        self.fd = -1


class RingStream(Backlogged):
    """The stream of a run whose plugin writes into a Ring.

    fifo: the path given to the plugin as out=, opened here before QEMU
    starts; it only tells when the last guest process is gone.
    """


    def __init__(self, fifo: str, ring: Ring, proc: subprocess.Popen | None = None):
        super().__init__()
        self.name = fifo
        self.ring = ring
        self.proc = proc
        self._fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN | select.POLLHUP)
        self._writers_gone = False
        # The ring holds ~0.06 s of QEMU's output on `random`: too little to serve
        # the start-up backlog from, so the prefetch thread keeps draining while
        # the reader works the backlog off (up to backlog.PREFETCH_MAX in all).
        self.drain_while_backlogged = True
        self.unfinished = 0   # bytes reserved but never published (a writer was killed)

    def _wait(self) -> bool:
        """Sleep briefly for more chunks; False once none can come."""
        if self._writers_gone:
            # The FIFO's end is the stream's end.  A guest that closed every
            # descriptor may still run: it must not wait for room forever.
            self.ring.stop()
            self.unfinished = self.ring.head - self.ring.tail
            return False
        if self._poll.poll(_WAIT_MS):
            # No data travels on the FIFO: readable means every writer closed
            # it.  Chunks published before that are in the ring: look again.
            self._writers_gone = True
        elif (self.ring.attached == 0 and self.proc is not None
              and self.proc.poll() is not None):
            return False   # QEMU exited before the plugin attached
        return True

    def _next_block(self) -> bytes | bytearray | None:
        n = self.ring.scan(1 << 20)
        if not n:   # no buffer to allocate and zero-fill for an empty ring
            return b"" if self._wait() else None
        buf = bytearray(n)
        with memoryview(buf) as mv:
            self.ring.take_into(mv)
        return buf

    def _read_direct(self, mv) -> int:
        while True:
            n = self.ring.take_into(mv)
            if n or not self._wait():
                return n

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self._stop_drainer()
        if self._fd >= 0:
            self.ring.close()
            os.close(self._fd)
            self._fd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0
