"""The hardware A/D race against the ``pte`` clear (kernel-mthp.md §2.1).

Between khugepaged reading a PTE and clearing it, another CPU's walker may set the
dirty bit (x86 D; arm64 DBM clears the read-only bit).  ``pte`` clears with an
atomic get-and-clear, so the value it keeps has the bit; ``unsafe-nonatomic`` reads
one step earlier and keeps the stale clean value.  The bit matters for a lazy-free
page: a rollback that restores it clean lets reclaim discard the page and the write
in it is lost.
"""

import pytest
from scenario import ARCHS, HPAGE_PMD_NR, HPAGE_PMD_SIZE, PAGE_SIZE, Proc
from test_collapse_steps import _setup

B = 1 << 30


def _race(arch, strategy):
    sim, p = _setup(arch, strategy, 4)
    mm = sim.mm(p)
    kh = sim.khugepaged
    steps = []
    sim.bus.subscribe("emu_collapse_step",
                     lambda e: steps.append((e.args["step"], e.args["address"])))
    for _ in range(10_000):          # up to the mmap write lock, before the clear
        if mm.mmap_lock == "write":
            break
        assert kh.step_once()
    assert mm.collapse_cleared is None
    target = steps[-1][1]            # the attempt's address
    # The guest frees its memory lazily just before (MADV_FREE: clean, old).
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_FREE")
    if strategy == "unsafe-nonatomic":
        kh.step_once()               # pte_read: the target PTEs as they are now (clean)
        assert steps[-1][0] == "pte_read" and mm.collapse_cleared is None
    # Another CPU writes a target page: its walk sets the dirty bit in the PTE.
    other = Proc(p.pid, (p.cpu + 1) % 4, p.truth)
    written = target + 3 * PAGE_SIZE
    sim.write(other, written)
    kh.step_once()                   # the clear and flush
    assert mm.collapse_cleared is not None
    for _ in range(100):             # isolate, rollback (a lazy-free clean page), unlock
        if mm.mmap_lock is None:
            break
        kh.step_once()
    assert "rollback" in [n for n, _ in steps], steps
    sim.madvise(p, B, HPAGE_PMD_SIZE, "MADV_PAGEOUT")
    return sim, p, written


@pytest.mark.parametrize("arch", ARCHS)
def test_atomic_get_and_clear_keeps_the_dirty_bit(arch):
    sim, p, written = _race(arch, "pte")
    assert sim.read(p, written)                            # kept: it was dirty
    assert sim.vmstat["emu_collapse_dirty_lost"] == 0
    # every other page of the PMD was clean and lazy-free after the rollback: dropped
    assert sim.vmstat["pglazyfreed"] == HPAGE_PMD_NR - 1


@pytest.mark.parametrize("arch", ARCHS)
def test_nonatomic_read_then_clear_loses_the_dirty_bit_and_the_write(arch):
    sim, p, written = _race(arch, "unsafe-nonatomic")
    assert sim.vmstat["emu_collapse_dirty_lost"] == 1
    assert not sim.read(p, written)                        # reclaim dropped the write
