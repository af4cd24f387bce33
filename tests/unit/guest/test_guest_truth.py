"""emu.guest.truth: reading a guest's EMU-TRUTH line and its per-page digest."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.guest.truth import (
    page_checksum,
    pages_to_ranges,
    parse_truth,
    range_pages,
    splitmix64,
)


def test_parse_single_line():
    out = 'hello\nEMU-TRUTH {"v":1,"workload":"touch","reads":3}\nbye\n'
    assert parse_truth(out) == {"v": 1, "workload": "touch", "reads": 3}


@pytest.mark.parametrize("out", ["", "no truth here\n",
                                 "EMU-TRUTH {}\nEMU-TRUTH {}\n", "EMU-TRUTH {broken\n"])
def test_parse_rejects(out):
    with pytest.raises(ValueError):
        parse_truth(out)


def test_big_addresses_survive():
    out = 'EMU-TRUTH {"checksum":18446744073709551615,"start":140737488355328}\n'
    t = parse_truth(out)
    assert t["checksum"] == (1 << 64) - 1 and t["start"] == 1 << 47


@given(st.sets(st.integers(0, 5000), max_size=200))
def test_ranges_round_trip(pages):
    ranges = pages_to_ranges(pages)
    assert range_pages(ranges) == sorted(pages)
    for (_, e), (s, _) in zip(ranges, ranges[1:], strict=False):
        assert e < s, "ranges are maximal: separated by a gap"


def test_splitmix64_reference():
    # first outputs of the reference SplitMix64 generator seeded with 0
    # (state advances by the golden gamma; splitmix64(x) mixes x + gamma)
    gamma = 0x9E3779B97F4A7C15
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(gamma) == 0x6E789E6AA1B965F4


counts = st.dictionaries(st.integers(0, 1 << 20),
                         st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 40)),
                         max_size=50)


@given(counts)
def test_checksum_order_independent_and_ignores_empty(c):
    shuffled = dict(reversed(list(c.items())))
    assert page_checksum(c) == page_checksum(shuffled)
    with_empty = dict(c)
    with_empty[(1 << 21) + 7] = (0, 0)
    assert page_checksum(with_empty) == page_checksum(c)
    assert 0 <= page_checksum(c) < 1 << 64


@given(counts.filter(bool), st.data())
def test_checksum_sees_a_changed_count(c, data):
    page = data.draw(st.sampled_from(sorted(c)))
    r, w = c[page]
    changed = dict(c)
    changed[page] = (r + 1, w) if data.draw(st.booleans()) else (r, w + 1)
    assert page_checksum(changed) != page_checksum(c)
