"""VMA bookkeeping through the mm syscalls: mmap, mprotect, brk, mremap, exec."""

import numpy as np
import pytest
from kernel_model_helpers import PAGE, MiB, make_kernel, mmap, order_at, touch

from emu.guest.elf import Segment
from emu.kernel.vma import VM_EXEC, VM_HUGEPAGE, VM_NOHUGEPAGE, VM_WRITE, VMA, VmaTree

BASE = 0x40000000


def test_vma_tree_split_merge():
    t = VmaTree()
    a = t.insert(VMA(0x1000, 0x9000, 3))
    t.carve(0x3000, 0x5000)
    assert [(v.start, v.end) for v in t] == [(0x1000, 0x3000), (0x3000, 0x5000),
                                            (0x5000, 0x9000)]
    t.find(0x3000).flags = 1
    t.merge_around(0x3000, 0x5000)
    assert len(t) == 3
    t.find(0x3000).flags = 3
    t.merge_around(0x3000, 0x5000)
    assert len(t) == 1 and a.end == 0x9000
    with pytest.raises(ValueError):
        t.insert(VMA(0x8000, 0xA000, 3))


def test_mprotect_splits_merges_and_write_protects():
    k = make_kernel()
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 16 * PAGE)
    for i in range(16):
        touch(k, 1, BASE + i * PAGE)
    k.syscall(1, 0, "mprotect", (BASE + 4 * PAGE, 4 * PAGE, 1), 0)
    assert len(mm.vmas) == 3
    assert not k.arch.writable(k.pt.get_pte(mm, BASE + 5 * PAGE))
    assert k.arch.writable(k.pt.get_pte(mm, BASE + 3 * PAGE))
    assert not touch(k, 1, BASE + 5 * PAGE)
    k.syscall(1, 0, "mprotect", (BASE + 4 * PAGE, 4 * PAGE, 3), 0)
    assert len(mm.vmas) == 1
    assert k.arch.writable(k.pt.get_pte(mm, BASE + 5 * PAGE))   # exclusive: write restored
    k.syscall(1, 0, "mprotect", (BASE, PAGE, 0), 0)             # PROT_NONE keeps the page
    d = k.pt.get_pte(mm, BASE)
    assert k.arch.is_protnone(d) and mm.counters["MM_ANONPAGES"] == 16
    k.syscall(1, 0, "mprotect", (BASE, PAGE, 7), 0)
    assert next(iter(mm.vmas)).flags & VM_EXEC


def test_mprotect_inside_contpte_block_unfolds_arm64():
    k = make_kernel("arm64", mthp={64: "always"})
    mm = k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)
    assert k.arch.cont(k.pt.get_pte(mm, BASE))
    k.syscall(1, 0, "mprotect", (BASE + 2 * PAGE, PAGE, 1), 0)
    assert not any(k.arch.cont(k.pt.get_pte(mm, BASE + i * PAGE)) for i in range(16))
    assert k.vmstat["emu_contpte_unfold"] == 1
    k.syscall(1, 0, "mprotect", (BASE + 2 * PAGE, PAGE, 3), 0)
    touch(k, 1, BASE + 15 * PAGE)        # no change: try_fold needs a set_pte at the last entry
    assert order_at(k, 1, BASE) == 4


def test_brk_grows_and_shrinks_heap():
    k = make_kernel()
    mm = k.new_mm(1)
    mm.start_brk = mm.brk = 0x600000
    k.syscall(1, 0, "brk", (0x600000 + 5 * PAGE,), 0x600000 + 5 * PAGE)
    heap = mm.vmas.find(0x600000)
    assert heap.kind == "heap" and heap.end == 0x605000
    k.syscall(1, 0, "brk", (0x600000 + 9 * PAGE,), 0x600000 + 9 * PAGE)
    assert len(mm.vmas) == 1 and mm.vmas.find(0x600000).end == 0x609000
    touch(k, 1, 0x608000)
    k.syscall(1, 0, "brk", (0x602000,), 0x602000)
    assert mm.vmas.find(0x600000).end == 0x602000 and mm.counters["MM_ANONPAGES"] == 0
    k.syscall(1, 0, "brk", (0x700000,), -12)                  # failed: nothing changes
    assert mm.brk == 0x602000


def test_mremap_moves_pages_and_keeps_data():
    k = make_kernel(enabled="always")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 2 * MiB)
    touch(k, 1, BASE)                                         # PMD THP
    pfn = k.arch.pfn(k.pt.get_pmd(mm, BASE))
    new = BASE + 16 * MiB
    k.syscall(1, 0, "mremap", (BASE, 2 * MiB, 4 * MiB, 1, 0), new)
    assert mm.vmas.find(BASE) is None
    assert mm.vmas.find(new).end == new + 4 * MiB
    assert k.arch.pfn(k.pt.get_pmd(mm, new)) == pfn and order_at(k, 1, new) == 9
    k2 = make_kernel()
    mm2 = k2.new_mm(1)
    mmap(k2, 1, BASE, 8 * PAGE)
    touch(k2, 1, BASE + PAGE)
    pfn = k2.arch.pfn(k2.pt.get_pte(mm2, BASE + PAGE))
    touch(k2, 1, BASE + 6 * PAGE)
    k2.syscall(1, 0, "mremap", (BASE, 8 * PAGE, 4 * PAGE, 1, 0), BASE + MiB)   # shrink + move
    assert k2.arch.pfn(k2.pt.get_pte(mm2, BASE + MiB + PAGE)) == pfn
    assert mm2.counters["MM_ANONPAGES"] == 1 and mm2.vmas.find(BASE) is None
    assert mm2.vmas.find(BASE + MiB).end == BASE + MiB + 4 * PAGE


def test_madvise_hugepage_flags_and_merge():
    k = make_kernel()
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    k.syscall(1, 0, "madvise", (BASE + MiB, MiB, 14), 0)
    v = mm.vmas.find(BASE + MiB)
    assert v.flags & VM_HUGEPAGE and len(mm.vmas) == 3
    k.syscall(1, 0, "madvise", (BASE + MiB, MiB, 15), 0)
    v = mm.vmas.find(BASE + MiB)
    assert v.flags & VM_NOHUGEPAGE and not v.flags & VM_HUGEPAGE
    k.syscall(1, 0, "madvise", (BASE, 4 * MiB, 14), 0)
    assert len(mm.vmas) == 1


class _Elf:
    path = "/bin/prog"
    segments = (Segment(0x400000, 0x2345, 0x2345, 0, "r-x", 0x1000),
                Segment(0x403e10, 0x3000, 0x500, 0x2e10, "rw-", 0x1000))
    brk = 0x407000


def test_exec_mm_builds_initial_vmas():
    k = make_kernel()
    mm = k.exec_mm(7, _Elf())
    kinds = [(v.start, v.end, v.kind, v.name) for v in mm.vmas]
    assert kinds == [(0x400000, 0x403000, "file", "text"), (0x403000, 0x405000, "file", "data"),
                     (0x405000, 0x407000, "anon", "bss")]
    data = mm.vmas.find(0x403000)
    assert data.pgoff == 2 and data.flags & VM_WRITE
    assert touch(k, 7, 0x401000, write=False)
    assert not touch(k, 7, 0x401000)
    assert touch(k, 7, 0x404000)                  # private file write: anon copy
    k.syscall(7, 0, "brk", (0,), 0x407000)
    k.syscall(7, 0, "brk", (0x409000,), 0x409000)
    assert mm.vmas.find(0x408000).kind == "heap"


def test_mremap_loop_does_not_leak():
    k = make_kernel(enabled="always", mthp={64: "always"})
    k.new_mm(1)
    mmap(k, 1, 0x7000000, PAGE)
    touch(k, 1, 0x7000000)
    free0, tables0 = k.nr_free_frames, k.physmem.pgtables.nr_tables
    for it in range(4):
        a, b = BASE + (it % 2) * 8 * MiB, BASE + ((it + 1) % 2) * 8 * MiB
        mmap(k, 1, a, 4 * MiB)
        if it:
            touch(k, 1, b + 5 * PAGE)               # an implicit VMA left at the target
        for off in range(0, 4 * MiB, 0x11000):
            touch(k, 1, a + off)
        k.syscall(1, 0, "mremap", (a, 4 * MiB, 6 * MiB, 1, 0), b)
        touch(k, 1, b + 5 * MiB)
        k.syscall(1, 0, "munmap", (b, 6 * MiB), 0)
        huge_zero = 512 if k.huge_zero_pfn is not None else 0
        assert k.nr_free_frames + huge_zero == free0
        assert k.physmem.pgtables.nr_tables == tables0


class _StaticPie(_Elf):
    is_pie = True
    interp = None
    entry = 0x1234
    segments = (Segment(0x0, 0x2345, 0x2345, 0, "r-x", 0x1000),
                Segment(0x3e10, 0x3000, 0x500, 0x2e10, "rw-", 0x1000))
    brk = 0x7000


def test_static_pie_is_placed_at_the_first_fetch():
    k = make_kernel()
    mm = k.exec_mm(3, _StaticPie())
    assert len(mm.vmas) == 0
    base = 0x5555_0000_0000
    assert k.handle_mm_fault(3, 0, base + 0x1000, 2, None)     # the entry page, fetched
    assert [(v.start - base, v.name) for v in mm.vmas] == [(0, "text"), (0x3000, "data"),
                                                           (0x5000, "bss")]
    assert mm.start_brk == base + 0x7000
    assert k.handle_mm_fault(3, 0, base + 0x4000, 1, None)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("mthp", [None, {64: "always"}])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mremap_moves_every_entry_as_one_by_one(arch, mthp, seed):
    """mremap() moves PTEs a table slice at a time: each entry of the old range ends
    up, unchanged, at the same offset of the new range (arm64 contiguous blocks too,
    which fold again where the new range keeps them aligned), the old range is empty,
    and nothing leaks: a sparse range that crosses PMD boundaries, moved to an
    unaligned destination."""
    rng = np.random.default_rng(seed)
    k = make_kernel(arch, mthp=mthp)                  # no PMD THP: every page has a PTE
    mm = k.new_mm(1)
    length = 3 * MiB + 5 * PAGE
    src = BASE + 2 * MiB - 7 * PAGE                   # crosses two PMD boundaries
    mmap(k, 1, src, length)
    for i in rng.choice(length // PAGE, size=300, replace=False).tolist():
        touch(k, 1, src + i * PAGE, write=bool(i % 3))
    arch_ = k.arch
    before = [k.pt.get_pte(mm, src + i * PAGE) for i in range(length // PAGE)]
    dst = BASE + 64 * MiB + int(rng.integers(1, 512)) * PAGE
    if mthp is not None and seed == 3:
        dst -= dst % (16 * PAGE)                      # blocks stay aligned: they may fold
    free0 = k.nr_free_frames
    k.syscall(1, 0, "mremap", (src, length, length, 1, 0), dst)
    after = [k.pt.get_pte(mm, dst + i * PAGE) for i in range(length // PAGE)]
    for b, a in zip(before, after, strict=True):
        if arch == "arm64":       # the contiguous hint may change, nothing else
            b, a = arch_.mknoncont(b), arch_.mknoncont(a)
        assert a == b
    assert all(k.pt.get_pte(mm, src + i * PAGE) == 0 for i in range(length // PAGE))
    assert mm.vmas.find(src) is None and mm.vmas.find(dst).end == dst + length
    k.syscall(1, 0, "munmap", (dst, length), 0)
    assert k.nr_free_frames > free0
    assert mm.counters["MM_ANONPAGES"] == 0
