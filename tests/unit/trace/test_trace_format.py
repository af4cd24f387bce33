"""Reader, writer and recorder on synthetic streams: round trips and damage."""

import io
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.errors import EmuError
from emu.trace import Recorder, TraceError, encode_events, iter_batches, read_all, read_meta
from emu.trace.events import (
    EVENT,
    FETCH,
    MARK,
    PROC_EXIT,
    PROC_START,
    READ,
    SYSCALL,
    SYSCALL_REC,
    VCPU_EXIT,
    VCPU_START,
    WRITE,
)
from emu.trace.format import HDR_SIZE, MAX_REC


def make_stream(rng: np.random.Generator, n: int, pids=(100, 200), vcpus=(0, 1, 2)):
    """n random events in runs of one (pid, vcpu), icounts non-decreasing per thread."""
    ev = np.zeros(n, EVENT)
    sc = []
    icount: dict[tuple[int, int], int] = {}
    i = 0
    while i < n:
        pid, vcpu = int(rng.choice(pids)), int(rng.choice(vcpus))
        run = int(rng.integers(1, 600))
        for _ in range(min(run, n - i)):
            kind = int(rng.choice([READ, WRITE, READ, WRITE, FETCH, SYSCALL, MARK,
                                   VCPU_START, VCPU_EXIT, PROC_START, PROC_EXIT]))
            key = (pid, vcpu)
            icount[key] = icount.get(key, 0) + int(rng.integers(0, 1 << 20))
            e = ev[i]
            e["kind"], e["pid"], e["vcpu"], e["icount"] = kind, pid, vcpu, icount[key]
            if kind in (READ, WRITE, FETCH):
                e["addr"] = int(rng.integers(0, 1 << 35)) << 12
                e["count"] = int(rng.integers(1, 1 << 32)) if kind != FETCH else 1
                e["pad"] = int(rng.integers(0, 2)) if kind != FETCH else 0
            elif kind == SYSCALL:
                e["count"] = len(sc)
                sc.append((int(rng.integers(-5, 500)), rng.integers(0, 1 << 63, 6, dtype=np.uint64),
                           int(rng.integers(-4096, 1 << 40))))
                e["addr"] = 0
            else:
                e["addr"] = int(rng.integers(0, 1 << 40))
                e["count"] = 1
            i += 1
    return ev, np.array(sc, dtype=SYSCALL_REC)


def same(a, b):
    """Events equal, with SYSCALL rows compared through their syscall records."""
    ea, sa = a
    eb, sb = b
    assert len(ea) == len(eb)
    for f in ("kind", "pad", "vcpu", "pid", "addr", "icount"):
        np.testing.assert_array_equal(ea[f], eb[f], err_msg=f)
    ns = ea["kind"] != SYSCALL
    np.testing.assert_array_equal(ea["count"][ns], eb["count"][ns])
    s = ~ns
    np.testing.assert_array_equal(sa[ea["count"][s]], sb[eb["count"][s]])


def test_round_trip_many_chunks():
    rng = np.random.default_rng(1)
    ev, sc = make_stream(rng, 20000)
    raw = encode_events(ev, sc)
    got = read_all(io.BytesIO(raw))
    same((ev, sc), (got.events, got.syscalls))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 2**32 - 1))
def test_round_trip_property(n, seed):
    ev, sc = make_stream(np.random.default_rng(seed), n)
    got = read_all(io.BytesIO(encode_events(ev, sc)), background=bool(seed & 1))
    same((ev, sc), (got.events, got.syscalls))


def test_batches_depend_only_on_bytes():
    """Batch boundaries do not depend on read sizes: live and replay match."""
    ev, sc = make_stream(np.random.default_rng(2), 30000)
    raw = encode_events(ev, sc)

    class Dribble(io.RawIOBase):
        def __init__(self, data):
            self.data, self.pos = data, 0

        def readinto(self, mv):
            n = min(len(mv), 777, len(self.data) - self.pos)
            mv[:n] = self.data[self.pos:self.pos + n]
            self.pos += n
            return n

    a = [len(b.events) for b in iter_batches(io.BytesIO(raw), batch_chunks=16)]
    b = [len(b.events) for b in iter_batches(Dribble(raw), batch_chunks=16)]
    assert a == b and len(a) > 3


def chunk_offsets(raw: bytes) -> list[int]:
    offs, pos = [], 0
    while pos < len(raw):
        offs.append(pos)
        nrec = int.from_bytes(raw[pos + 24:pos + 26], "little")
        nsys = int.from_bytes(raw[pos + 26:pos + 28], "little")
        pos += HDR_SIZE + 16 * nrec + 64 * nsys
    return offs


def offset_in(msg: str) -> int:
    m = re.search(r"byte (\d+)", msg)
    assert m, msg
    return int(m.group(1))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_bit_flip_names_chunk_offset(where):
    ev, sc = make_stream(np.random.default_rng(3), 3000)
    raw = bytearray(encode_events(ev, sc))
    offs = chunk_offsets(bytes(raw))
    victim = offs[len(offs) // 2]
    raw[victim + (HDR_SIZE + 5 if where == "payload" else 13)] ^= 0x10
    with pytest.raises(TraceError) as e:
        read_all(io.BytesIO(bytes(raw)))
    msg = str(e.value)
    assert "\n" not in msg
    assert offset_in(msg) == victim


def test_truncation_names_offset():
    ev, sc = make_stream(np.random.default_rng(4), 3000)
    raw = encode_events(ev, sc)
    offs = chunk_offsets(raw)
    cut = offs[-2] + 40
    with pytest.raises(TraceError, match="truncated") as e:
        read_all(io.BytesIO(raw[:cut]))
    assert offset_in(str(e.value)) == offs[-2]


def test_lost_chunk_is_detected():
    ev = np.zeros(2 * MAX_REC + 10, EVENT)
    ev["kind"], ev["pid"], ev["vcpu"], ev["count"] = READ, 7, 0, 1
    ev["addr"] = np.arange(len(ev), dtype=np.uint64) << 12
    raw = encode_events(ev, np.zeros(0, SYSCALL_REC))
    offs = chunk_offsets(raw)
    assert len(offs) == 3
    with pytest.raises(TraceError, match="sequence") as e:
        read_all(io.BytesIO(raw[:offs[1]] + raw[offs[2]:]))
    assert offset_in(str(e.value)) == offs[1]


def test_recording_round_trip_and_meta(tmp_path):
    ev, sc = make_stream(np.random.default_rng(5), 5000)
    raw = encode_events(ev, sc)
    path = tmp_path / "t.emutrace"
    live = list(iter_batches(io.BytesIO(raw), record=path, meta={"arch": "arm64"},
                             batch_chunks=8))
    assert read_meta(path) == {"arch": "arm64"}
    replay = list(iter_batches(path, batch_chunks=8))
    assert len(live) == len(replay)
    for a, b in zip(live, replay, strict=True):
        assert a.events.tobytes() == b.events.tobytes()
        assert a.syscalls.tobytes() == b.syscalls.tobytes()


def test_recorder_refuses_overwrite(tmp_path):
    path = tmp_path / "t.emutrace"
    path.write_bytes(b"precious")
    with pytest.raises(EmuError, match="exists"):
        Recorder(path)
    assert path.read_bytes() == b"precious"
    Recorder(path, force=True).close()
    assert read_meta(path) == {}


def test_damaged_recording(tmp_path):
    ev, sc = make_stream(np.random.default_rng(6), 20000)
    path = tmp_path / "t.emutrace"
    list(iter_batches(io.BytesIO(encode_events(ev, sc)), record=path))
    data = path.read_bytes()
    cut = tmp_path / "cut.emutrace"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(TraceError, match="truncated") as e:
        read_all(cut)
    assert "\n" not in str(e.value)
    offset_in(str(e.value))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    bad = tmp_path / "flip.emutrace"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(TraceError) as e:
        read_all(bad)
    offset_in(str(e.value))


def test_not_a_recording(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"hello world, this is not a stream")
    with pytest.raises(TraceError, match="byte 0"):
        read_all(p)
    with pytest.raises(EmuError):
        read_all(tmp_path / "missing")


def test_every_bit_flip_of_a_recording_is_found(tmp_path):
    """Header, metadata, every compressed byte and the end record are all checked:
    no single flipped bit anywhere in the file goes unnoticed."""
    ev, sc = make_stream(np.random.default_rng(7), 300)
    path = tmp_path / "t.emutrace"
    list(iter_batches(io.BytesIO(encode_events(ev, sc)), record=path,
                      meta={"arch": "x86_64", "argv": ["a", "b"]}))
    data = path.read_bytes()
    bad = tmp_path / "bad.emutrace"
    missed = []
    for pos in range(len(data)):
        for bit in (0x01, 0x80):
            b = bytearray(data)
            b[pos] ^= bit
            bad.write_bytes(bytes(b))
            try:
                read_meta(bad)
                read_all(bad)
            except TraceError as e:
                assert "\n" not in str(e)
                offset_in(str(e))
                continue
            missed.append((pos, bit))
    assert not missed
