"""Swap entries made by MADV_PAGEOUT through the core paths:
fault (swap-in), fork (swap_duplicate), zap/exit (swap_free), MADV_FREE."""

import pytest
from kernel_model_helpers import PAGE, MiB, make_kernel, mmap, order_at, touch

BASE = 0x40000000


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_pageout_fork_swapin_and_exit_keep_swap_balanced(arch):
    k = make_kernel(arch, mthp={64: "always"})
    swap = k.swap
    mm = k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    for i in range(32):
        touch(k, 1, BASE + i * PAGE)
    k.physmem.version[k.arch.pfn(k.pt.get_pte(mm, BASE + 2 * PAGE))] = 77
    k.syscall(1, 0, "madvise", (BASE, 8 * PAGE, 21), 0)          # MADV_PAGEOUT
    assert mm.counters["MM_SWAPENTS"] == 8 and swap.nr_used == 8
    assert k.arch.is_swap(k.pt.get_pte(mm, BASE + 2 * PAGE))
    child = k.fork(1, 2)
    assert child.counters["MM_SWAPENTS"] == 8 and swap.nr_used == 8
    assert touch(k, 2, BASE + 2 * PAGE, write=False)               # swap-in in the child
    pfn = k.arch.pfn(k.pt.get_pte(child, BASE + 2 * PAGE))
    assert k.physmem.version[pfn] == 77 and order_at(k, 2, BASE + 2 * PAGE) == 0
    assert child.counters["MM_SWAPENTS"] == 7 and swap.nr_used == 8   # parent still holds it
    k.syscall(1, 0, "madvise", (BASE, 4 * PAGE, 8), 0)             # MADV_FREE drops entries
    assert mm.counters["MM_SWAPENTS"] == 4
    k.syscall(2, 0, "munmap", (BASE, MiB), 0)
    k.exit_mm(1)
    k.exit_mm(2)
    assert swap.nr_used == 0
    assert not any(f.anon for f in k.folios.values())
