"""The FIFO's read end: prefetched bytes come out first, in order, then the rest."""

import os
import threading
import time

import pytest

from emu.guest.qemu import _FifoStream


def _read_all(stream: _FifoStream, size: int) -> bytes:
    out = bytearray()
    buf = bytearray(size)
    while True:
        n = stream.readinto(memoryview(buf))
        if not n:
            return bytes(out)
        out += buf[:n]


def _writer(path: str, payload: bytes, pause_at: int, gate: threading.Event) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, payload[:pause_at])
        gate.wait(5)
        view = memoryview(payload)[pause_at:]
        while view:
            view = view[os.write(fd, view[:4096]):]
    finally:
        os.close(fd)


def _start(tmp_path, size: int, pause_at: int, gate: threading.Event):
    """A FIFO, its read end, and a writer thread sending `size` random bytes."""
    path = str(tmp_path / "stream")
    os.mkfifo(path)
    stream = _FifoStream(path)
    payload = os.urandom(size)
    t = threading.Thread(target=_writer, args=(path, payload, pause_at, gate))
    t.start()
    return stream, payload, t


@pytest.mark.parametrize("read_size", [1000, 1 << 20])
def test_prefetch_keeps_order_and_every_byte(tmp_path, read_size):
    gate = threading.Event()
    stream, payload, t = _start(tmp_path, 3 << 20, 1 << 20, gate)
    stream.prefetch()
    deadline = time.monotonic() + 5
    while not stream._pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream._pending, "the prefetch thread drained nothing"
    gate.set()
    got = _read_all(stream, read_size)
    t.join()
    stream.close()
    assert got == payload


def test_prefetch_limit_leaves_the_rest_in_the_pipe(tmp_path):
    gate = threading.Event()
    gate.set()
    stream, payload, t = _start(tmp_path, 2 << 20, 0, gate)
    stream.prefetch(limit=64 << 10)
    time.sleep(0.2)
    assert sum(len(b) for b in stream._pending) < len(payload)
    got = _read_all(stream, 1 << 16)
    t.join()
    stream.close()
    assert got == payload


def test_writer_that_never_comes_reads_as_end_of_stream(tmp_path):
    """QEMU exited before opening the FIFO: the prefetch must not hang."""
    path = str(tmp_path / "stream")
    os.mkfifo(path)

    class Gone:
        def poll(self):
            return 1

    stream = _FifoStream(path, proc=Gone())
    stream.prefetch()
    assert stream.readinto(memoryview(bytearray(16))) == 0
    stream.close()
