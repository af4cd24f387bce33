"""emu's end of the shared-memory ring, against a writer that follows the plugin's protocol."""

import mmap
import os
import struct
import zlib

import pytest

from emu.errors import EmuError
from emu.guest.ring import _HEAD, _TAIL, CHUNK_MAGIC, RING_CTL, Ring, RingStream


class Writer:
    """The plugin's half (plugin/emu.c ring_write), one writer, no waiting."""

    def __init__(self, ring: Ring):
        self.m = mmap.mmap(ring.fd, RING_CTL + ring.cap)
        self.cap = ring.cap

    def reserve(self, n: int) -> int:
        pos = struct.unpack_from("<Q", self.m, _HEAD)[0]
        tail = struct.unpack_from("<Q", self.m, _TAIL)[0]
        assert pos + n - tail <= self.cap, "test writer would have to wait"
        struct.pack_into("<Q", self.m, _HEAD, pos + n)
        return pos

    def put(self, pos: int, chunk: bytes, publish: bool = True) -> None:
        for i in range(8, len(chunk)):
            self.m[RING_CTL + (pos + i) % self.cap] = chunk[i]
        if publish:
            self.m[RING_CTL + pos % self.cap:RING_CTL + pos % self.cap + 8] = chunk[:8]

    def write(self, chunk: bytes) -> None:
        self.put(self.reserve(len(chunk)), chunk)


def chunk(seq: int, nrec: int, nsys: int = 0) -> bytes:
    """A chunk with a valid header layout; the payload is arbitrary bytes."""
    payload = os.urandom(16 * nrec + 64 * nsys)
    hdr = struct.pack("<IHHIIQHH", CHUNK_MAGIC, 1, 0, 4242, seq, 0, nrec, nsys)
    return hdr + struct.pack("<I", zlib.crc32(payload)) + payload


def read_all(stream, size: int) -> bytes:
    out = bytearray()
    buf = bytearray(size)
    while (n := stream.readinto(memoryview(buf))):
        out += buf[:n]
    return bytes(out)


@pytest.fixture
def fifo(tmp_path):
    path = str(tmp_path / "stream")
    os.mkfifo(path)
    return path


def test_chunks_come_out_in_order_across_the_wrap_and_their_room_is_freed():
    ring = Ring(1 << 12)
    w = Writer(ring)
    sent = bytearray()
    got = bytearray()
    buf = memoryview(bytearray(1000))   # reads cut chunks anywhere
    for seq in range(200):              # ~7 laps of the 4 KiB ring
        c = chunk(seq, 1 + seq % 7, seq % 2)
        w.write(c)
        sent += c
        while (n := ring.take_into(buf)):
            got += buf[:n]
    assert bytes(got) == bytes(sent)
    assert ring.tail == len(sent) == struct.unpack_from("<Q", w.m, _TAIL)[0]
    assert not any(w.m[RING_CTL:]), "consumed bytes must be zeroed for the next lap"
    ring.close()


def test_an_unpublished_chunk_holds_back_the_ones_after_it():
    ring = Ring(1 << 16)
    w = Writer(ring)
    a, b = chunk(0, 3), chunk(1, 2)
    pa = w.reserve(len(a))
    w.write(b)                          # published, but behind a
    buf = memoryview(bytearray(1 << 16))
    assert ring.take_into(buf) == 0
    w.put(pa, a)
    n = ring.take_into(buf)
    assert bytes(buf[:n]) == a + b
    ring.close()


def test_a_non_chunk_in_the_ring_is_a_clear_error():
    ring = Ring(1 << 12)
    w = Writer(ring)
    w.write(b"\x01" * 48)
    with pytest.raises(EmuError, match="corrupted at stream byte 0"):
        ring.take_into(memoryview(bytearray(64)))
    ring.close()


@pytest.mark.parametrize("killed", [False, True], ids=["clean", "writer-killed-mid-chunk"])
def test_stream_ends_when_the_last_writer_closes_the_fifo(fifo, killed):
    """A hole a killed writer left is reported, not waited for."""
    ring = Ring(1 << 16)
    stream = RingStream(fifo, ring)
    w = Writer(ring)
    fd = os.open(fifo, os.O_WRONLY)
    c, lost = chunk(0, 2), chunk(1, 4)
    w.write(c)
    if killed:                          # reserved and written, never published
        w.put(w.reserve(len(lost)), lost, publish=False)
    stream.prefetch()
    os.close(fd)
    assert read_all(stream, 1 << 12) == c
    assert stream.unfinished == (len(lost) if killed else 0)
    stream.close()


def test_qemu_gone_before_attaching_reads_as_end_of_stream(fifo):
    class Gone:
        def poll(self):
            return 1

    stream = RingStream(fifo, Ring(1 << 12), proc=Gone())
    stream.prefetch()
    assert stream.readinto(memoryview(bytearray(16))) == 0
    stream.close()


def test_closing_tells_writers_to_stop_waiting():
    ring = Ring(1 << 12)
    w = Writer(ring)
    ring.close()
    assert struct.unpack_from("<I", w.m, 20)[0] == 1


@pytest.mark.parametrize("cap", [0, 1000, 1 << 11])
def test_ring_size_must_be_a_power_of_two_of_a_page_or_more(cap):
    with pytest.raises(ValueError):
        Ring(cap)
