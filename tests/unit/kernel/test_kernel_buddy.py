"""Buddy allocator: alignment, splitting, merging, fragmentation knob."""

from hypothesis import given, settings
from hypothesis import strategies as st

from emu.kernel.buddy import BuddyAllocator


def test_alloc_is_aligned_and_free_merges_back():
    b = BuddyAllocator(4096, first_pfn=1)
    start = b.nr_free
    blocks = [(b.alloc(o), o) for o in (0, 3, 9, 2, 10, 0)]
    for pfn, o in blocks:
        assert pfn is not None and pfn % (1 << o) == 0
    assert b.nr_free == start - sum(1 << o for _, o in blocks)
    for pfn, o in reversed(blocks):
        b.free(pfn, o)
    assert b.nr_free == start
    assert b.nr_free_blocks(10) == start // 1024   # everything merged again (but block 0)


def test_exhaustion_returns_none():
    b = BuddyAllocator(1024)
    assert b.alloc(10) == 0
    assert b.alloc(0) is None


def test_fragment_leaves_only_small_blocks():
    b = BuddyAllocator(8192)
    pinned = b.fragment(1.0, max_free_order=1, seed=3)
    assert len(pinned) == 8192 // 4
    assert not b.can_alloc(2)
    assert b.alloc(2) is None and b.alloc(1) is not None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10), min_size=1, max_size=60), st.randoms())
def test_random_alloc_free_conserves_frames(orders, rnd):
    b = BuddyAllocator(1 << 14)
    got = [(b.alloc(o), o) for o in orders]
    got = [(p, o) for p, o in got if p is not None]
    spans = sorted((p, p + (1 << o)) for p, o in got)
    assert all(a[1] <= c[0] for a, c in zip(spans, spans[1:], strict=False))   # no overlap
    rnd.shuffle(got)
    for p, o in got:
        b.free(p, o)
    assert b.nr_free == 1 << 14 and b.nr_free_blocks(10) == 16
