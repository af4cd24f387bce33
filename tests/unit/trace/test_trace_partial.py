"""A recording cut short: refused by default, replayed up to its last whole chunk on request."""

import io

import numpy as np
import pytest
from test_trace_format import make_stream

from emu.trace import TraceError, encode_events, iter_batches, read_all


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    ev, sc = make_stream(np.random.default_rng(11), 30000)
    path = tmp_path_factory.mktemp("rec") / "t.emutrace"
    list(iter_batches(io.BytesIO(encode_events(ev, sc)), record=path))
    return path.read_bytes(), read_all(path)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95, -3])
def test_partial_replays_a_prefix_of_the_events(tmp_path, recording, keep):
    data, whole = recording
    n = len(data) + keep if keep < 0 else int(len(data) * keep)   # -3: inside the end record
    cut = tmp_path / "cut.emutrace"
    cut.write_bytes(data[:n])
    with pytest.raises(TraceError, match="--partial") as e:
        read_all(cut)
    assert "\n" not in str(e.value)
    warnings: list[str] = []
    got = read_all(cut, partial=True, warn=warnings.append)
    assert 0 < len(got.events) <= len(whole.events)
    assert got.events.tobytes() == whole.events[:len(got.events)].tobytes()
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"truncated at file byte {n}" in warnings[0]


def test_partial_leaves_a_whole_recording_alone(tmp_path, recording):
    data, whole = recording
    path = tmp_path / "whole.emutrace"
    path.write_bytes(data)
    warnings: list[str] = []
    got = read_all(path, partial=True, warn=warnings.append)
    assert got.events.tobytes() == whole.events.tobytes() and warnings == []


def _frame(data: bytes) -> tuple[int, bytes]:
    """(offset of the zstd frame in a recording file, the frame's bytes)."""
    from emu.trace.format import FILE_END, FILE_HDR
    hdr = np.frombuffer(data[:FILE_HDR.itemsize], dtype=FILE_HDR)[0]
    base = FILE_HDR.itemsize + int(hdr["meta_len"])
    return base, data[base:len(data) - FILE_END.itemsize]


def test_a_recording_is_one_zstd_frame_and_nothing_after(recording):
    import zstandard
    d = zstandard.ZstdDecompressor().decompressobj()
    d.decompress(_frame(recording[0])[1])
    assert d.eof and d.unused_data == b""


@pytest.mark.parametrize("feed_end", ["at", "inside"])
def test_bytes_after_the_frame_are_read_wherever_the_feeds_end(tmp_path, recording,
                                                               monkeypatch, feed_end):
    """Recordings written before 2026-12-02 end with an empty second zstd frame; the
    reader once failed ('cannot use a decompressobj multiple times') when a feed ended
    at or inside it.  Rebuild such a recording and end a feed at both places."""
    import zlib

    import zstandard

    from emu.trace import reader
    from emu.trace.format import END_MAGIC, FILE_END
    data, events = recording
    base, frame = _frame(data)
    empty = zstandard.ZstdCompressor(write_checksum=True).compress(b"")
    assert empty and zstandard.ZstdDecompressor().decompress(empty) == b""
    body = frame + empty
    end = np.zeros(1, FILE_END)
    end["magic"], end["frame_len"], end["frame_crc"] = END_MAGIC, len(body), zlib.crc32(body)
    old = tmp_path / "old.emutrace"
    old.write_bytes(data[:base] + body + end.tobytes())
    monkeypatch.setattr(reader, "FEED_BLOCK", len(frame) + (0 if feed_end == "at" else 5))
    got = read_all(old)
    assert np.array_equal(got.events, events.events)
    assert np.array_equal(got.syscalls, events.syscalls)


@pytest.mark.parametrize("damage", [None, "flip", "cut"])
def test_the_background_reader_changes_nothing(tmp_path, recording, damage):
    """The background reader (a thread, a bounded queue) yields the batches the
    one-thread reader yields, and on damage an error after a prefix of them."""
    whole = tmp_path / "whole.emutrace"
    whole.write_bytes(recording[0])
    want = [b.events.tobytes() + b.syscalls.tobytes()
            for b in iter_batches(whole, background=False, batch_chunks=8)]
    data = bytearray(recording[0])
    if damage == "flip":
        base, frame = _frame(bytes(data))
        data[base + len(frame) // 2] ^= 0x40
    elif damage == "cut":
        data = data[:len(data) * 2 // 3]
    path = tmp_path / "r.emutrace"
    path.write_bytes(bytes(data))
    for background in (False, True):
        got: list[bytes] = []
        error = None
        try:
            for b in iter_batches(path, background=background, batch_chunks=8):
                got.append(b.events.tobytes() + b.syscalls.tobytes())
        except TraceError as e:
            error = str(e)
        assert got == want[:len(got)]
        if damage is None:
            assert error is None and len(got) == len(want) > 1
        else:
            assert error is not None and "\n" not in error and len(got) < len(want)
