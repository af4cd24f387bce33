"""fork: sharing and write protection, COW copy of one page, reuse, contpte unfold."""

import pytest
from kernel_model_helpers import PAGE, MiB, make_kernel, mmap, order_at, touch

BASE = 0x40000000


def pte(k, pid, va):
    return k.pt.get_pte(k.mm(pid), va)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_fork_shares_and_write_protects_then_cow_copies_one_page(arch):
    k = make_kernel(arch, mthp={64: "always"})
    parent = k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)                             # one 64 KiB folio
    f = k.folio_of_pfn(k.arch.pfn(pte(k, 1, BASE)))
    k.physmem.version[f.pfn + 3] = 42
    child = k.fork(1, 2)
    assert f.maybe_mapped_shared() and f.mapcount() == 32
    for pid in (1, 2):
        for i in range(16):
            d = pte(k, pid, BASE + i * PAGE)
            assert k.arch.pfn(d) == f.pfn + i and not k.arch.writable(d)
    assert child.counters["MM_ANONPAGES"] == 16
    # the child writes page 3: one new order-0 page with the data, the rest stays shared
    assert touch(k, 2, BASE + 3 * PAGE)
    g = k.folio_of_pfn(k.arch.pfn(pte(k, 2, BASE + 3 * PAGE)))
    assert g is not f and g.order == 0 and k.physmem.version[g.pfn] == 42
    assert k.arch.writable(pte(k, 2, BASE + 3 * PAGE))
    assert f.page_mapcount[3] == 1 and f.mapcount() == 31 and not f.partially_mapped
    assert k.vmstat["emu_cow_copy"] == 1
    if arch == "arm64":
        assert k.arch.cont(pte(k, 1, BASE))           # parent's block untouched
        assert not k.arch.cont(pte(k, 2, BASE))       # child's block was unfolded
        assert k.vmstat["emu_contpte_unfold"] == 1
    # the child exits: the parent's folio is exclusive again and is reused on write
    k.exit_mm(2)
    assert not f.maybe_mapped_shared()
    assert touch(k, 1, BASE + 5 * PAGE)
    assert k.arch.pfn(pte(k, 1, BASE + 5 * PAGE)) == f.pfn + 5
    assert k.vmstat["emu_cow_reuse"] == 1 and parent.counters["MM_ANONPAGES"] == 16


def test_fork_of_pmd_thp_then_write_splits_pmd_and_copies():
    k = make_kernel(enabled="always")
    k.new_mm(1)
    mmap(k, 1, BASE, 2 * MiB)
    touch(k, 1, BASE)
    k.fork(1, 2)
    touch(k, 2, BASE + 7 * PAGE)
    assert k.vmstat["thp_split_pmd"] == 1
    assert order_at(k, 2, BASE + 7 * PAGE) == 0
    assert order_at(k, 2, BASE + 8 * PAGE) == 9
    assert order_at(k, 1, BASE + 7 * PAGE) == 9
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(k.mm(1), BASE))
    # the parent writes: the folio is still mapped by the child -> split the PMD + copy
    touch(k, 1, BASE)
    assert order_at(k, 1, BASE) == 0 and k.vmstat["thp_split_pmd"] == 2


def test_forker_like_counts():
    """What guest/forker does: parent fills N pages, child writes M of them."""
    k = make_kernel()
    k.new_mm(1)
    n, m = 64, 20
    mmap(k, 1, BASE, n * PAGE)
    for i in range(n):
        touch(k, 1, BASE + i * PAGE)
    k.fork(1, 2)
    for i in range(m):
        touch(k, 2, BASE + i * PAGE)
    assert k.vmstat["emu_cow_copy"] == m and k.vmstat["emu_cow_reuse"] == 0
    shared = sum(1 for i in range(n) if k.arch.pfn(pte(k, 1, BASE + i * PAGE))
                 == k.arch.pfn(pte(k, 2, BASE + i * PAGE)))
    assert shared == n - m
    k.exit_mm(2)
    for i in range(n):
        touch(k, 1, BASE + i * PAGE)
    assert k.vmstat["emu_cow_reuse"] == n             # fork write-protected all of the parent's


def test_dontfork_and_wipeonfork():
    k = make_kernel()
    k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    mmap(k, 1, BASE + 2 * MiB, MiB)
    touch(k, 1, BASE)
    touch(k, 1, BASE + 2 * MiB)
    k.syscall(1, 0, "madvise", (BASE, MiB, 10), 0)            # MADV_DONTFORK
    k.syscall(1, 0, "madvise", (BASE + 2 * MiB, MiB, 18), 0)  # MADV_WIPEONFORK
    child = k.fork(1, 2)
    assert child.vmas.find(BASE) is None
    assert child.vmas.find(BASE + 2 * MiB) is not None
    assert pte(k, 2, BASE + 2 * MiB) == 0 and child.counters["MM_ANONPAGES"] == 0


def test_arm64_reuse_after_fork_unfolds_and_does_not_refold():
    k = make_kernel("arm64", mthp={64: "always"})
    k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)
    k.fork(1, 2)
    assert k.arch.cont(pte(k, 1, BASE)) and k.arch.cont(pte(k, 2, BASE))
    k.exit_mm(2)
    for i in range(16):                       # the last entry written last
        assert touch(k, 1, BASE + i * PAGE)
    assert k.vmstat["emu_cow_reuse"] == 16
    # ptep_set_access_flags() unfolds once and never folds (only set_ptes() does)
    assert k.vmstat["emu_contpte_unfold"] == 1 and k.vmstat["emu_contpte_fold"] == 0
    ptes = [pte(k, 1, BASE + i * PAGE) for i in range(16)]
    assert all(not k.arch.cont(d) and k.arch.writable(d) for d in ptes)
    # moving the block (mremap: set_pte_at per entry) folds it again at its last entry
    k.syscall(1, 0, "mremap", (BASE, 16 * PAGE, 16 * PAGE, 1, 0), BASE + MiB)
    assert k.vmstat["emu_contpte_fold"] == 1
    assert all(k.arch.cont(pte(k, 1, BASE + MiB + i * PAGE)) for i in range(16))
