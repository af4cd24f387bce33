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
