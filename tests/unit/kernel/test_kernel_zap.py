"""Zap: munmap, MADV_DONTNEED, MADV_FREE, exit; partial mapping; PMD split; no leaks."""

import pytest
from kernel_model_helpers import PAGE, MiB, make_kernel, mmap, order_at, touch

BASE = 0x40000000


def test_partial_munmap_of_large_folio_is_partially_mapped():
    k = make_kernel(mthp={64: "always"})
    mm = k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)
    k.syscall(1, 0, "munmap", (BASE + 4 * PAGE, 4 * PAGE), 0)
    st = k.mthp_stats[64]
    assert st["nr_anon"] == 1 and st["nr_anon_partially_mapped"] == 1
    assert st["split_deferred"] == 1 and mm.counters["MM_ANONPAGES"] == 12
    assert len(mm.vmas) == 2
    k.syscall(1, 0, "munmap", (BASE, MiB), 0)
    st = k.mthp_stats[64]
    assert st["nr_anon"] == 0 and st["nr_anon_partially_mapped"] == 0


def test_full_munmap_of_large_folio_is_not_partially_mapped():
    k = make_kernel(mthp={64: "always"})
    k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)
    k.syscall(1, 0, "munmap", (BASE, 16 * PAGE), 0)
    assert k.mthp_stats[64]["split_deferred"] == 0 and k.mthp_stats[64]["nr_anon"] == 0


def test_partial_dontneed_of_pmd_thp_splits_pmd():
    k = make_kernel(enabled="always")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 2 * MiB)
    touch(k, 1, BASE)
    k.syscall(1, 0, "madvise", (BASE, PAGE, 4), 0)          # MADV_DONTNEED first page
    assert k.vmstat["thp_split_pmd"] == 1
    assert k.pt.get_pte(mm, BASE) == 0 and order_at(k, 1, BASE + PAGE) == 9
    assert k.mthp_stats[2048]["nr_anon_partially_mapped"] == 1
    assert k.vmstat["thp_deferred_split_page"] == 1
    assert mm.counters["MM_ANONPAGES"] == 511
    assert len(mm.vmas) == 1                                # DONTNEED keeps the VMA
    touch(k, 1, BASE)
    assert order_at(k, 1, BASE) == 0


def test_madvise_free_marks_lazyfree_and_splits_partial_folios():
    k = make_kernel(mthp={64: "always"})
    mm = k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)
    touch(k, 1, BASE + 0x10000)
    k.syscall(1, 0, "madvise", (BASE + 0x10000, 0x10000, 8), 0)   # whole folio
    f = k.folio_of_pfn(k.arch.pfn(k.pt.get_pte(mm, BASE + 0x10000)))
    assert f.lazyfree and f.order == 4
    assert not k.arch.dirty(k.pt.get_pte(mm, BASE + 0x10000))
    k.syscall(1, 0, "madvise", (BASE, 2 * PAGE, 8), 0)            # part of a folio
    assert k.mthp_stats[64]["split"] == 1
    assert order_at(k, 1, BASE) == 0 and order_at(k, 1, BASE + 8 * PAGE) == 0
    assert mm.counters["MM_ANONPAGES"] == 32


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("cfg", [dict(enabled="never"), dict(enabled="always"),
                                 dict(enabled="never", mthp={16: "always", 64: "always"})])
def test_mmap_touch_munmap_loop_does_not_leak(arch, cfg):
    k = make_kernel(arch, **cfg)
    mm = k.new_mm(1)
    mmap(k, 1, 0x7000000, PAGE)                   # keeps the upper tables alive
    touch(k, 1, 0x7000000)
    free0, tables0 = k.nr_free_frames, k.physmem.pgtables.nr_tables
    for it in range(6):
        base = BASE + it * 3 * MiB + (it % 3) * 0x5000
        mmap(k, 1, base, 3 * MiB)
        for off in range(0, 3 * MiB, 0x7000):
            touch(k, 1, base + off, write=bool(off & 0x8000))
        if it % 2:
            k.syscall(1, 0, "munmap", (base + MiB, PAGE * 3), 0)
        k.syscall(1, 0, "munmap", (base, 3 * MiB), 0)
        huge_zero = 512 if k.huge_zero_pfn is not None else 0   # allocated once, kept
        assert k.nr_free_frames + huge_zero == free0
        assert k.physmem.pgtables.nr_tables == tables0
    assert all(v["nr_anon"] == 0 for v in k.mthp_stats.values())
    assert mm.counters["MM_ANONPAGES"] == 1


def test_exit_frees_everything_including_forked_children():
    k = make_kernel(enabled="always", mthp={64: "always"})
    free0 = k.nr_free_frames
    k.new_mm(1)
    mmap(k, 1, BASE, 5 * MiB)
    for off in range(0, 5 * MiB, 0x9000):
        touch(k, 1, BASE + off)
    k.fork(1, 2)
    for off in range(0, 5 * MiB, 0x13000):
        touch(k, 2, BASE + off)
    k.exit_mm(1)
    k.exit_mm(2)
    assert k.huge_zero_pfn is None and k.nr_free_frames == free0
    assert not k.folios


def test_vma_split_inside_pmd_thp_splits_the_pmd():
    """selftest collapse_full_of_compound's set-up: MADV_NOHUGEPAGE on the first page."""
    k = make_kernel(enabled="always")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 2 * MiB)
    touch(k, 1, BASE)
    k.syscall(1, 0, "madvise", (BASE, PAGE, 15), 0)
    assert k.vmstat["thp_split_pmd"] == 1 and len(mm.vmas) == 2
    k.syscall(1, 0, "madvise", (BASE, 2 * MiB, 15), 0)
    assert len(mm.vmas) == 1
    assert all(order_at(k, 1, BASE + i * PAGE) == 9 for i in range(0, 512, 37))
    assert not k.pt.pmd_is_leaf(k.pt.get_pmd(mm, BASE))
    assert k.mthp_stats[2048]["nr_anon_partially_mapped"] == 0


def test_out_of_memory_fails_the_fault_not_the_run():
    k = make_kernel(mib=1, mthp={64: "always"})
    k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    results = [touch(k, 1, BASE + i * PAGE) for i in range(0, 1024, 3)]
    assert results[0] and not results[-1]
    assert k.nr_free_frames == 0 or not k.buddy.can_alloc(0)
    k.syscall(1, 0, "munmap", (BASE, 4 * MiB), 0)
    assert touch(k, 1, 0x7000000)                 # memory came back
