"""Kernel details checked against the function of the modelled kernel each test names
(issue 11).  Expected values are derived from what each test set up."""

import pytest
from kernel_model_helpers import PAGE, MiB, make_kernel, mmap, touch

BASE = 0x40000000


def pte(k, pid, va):
    return k.pt.get_pte(k.mm(pid), va)


def folio_at(k, pid, va):
    return k.folio_of_pfn(k.arch.pfn(pte(k, pid, va)))


def _shared_64k(arch):
    """A 64 KiB folio in pid 1, shared with a forked pid 2 (PageAnonExclusive cleared)."""
    k = make_kernel(arch, mthp={64: "always"})
    k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)
    f = folio_at(k, 1, BASE)
    assert f.order == 4
    k.fork(1, 2)
    return k, f


# --- item 7: mm/memory.c wp_can_reuse_anon_folio / __wp_can_reuse_large_anon_folio ----

@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_wp_can_reuse_large_anon_folio_copies_when_one_page_left(arch):
    """mm/memory.c __wp_can_reuse_large_anon_folio(): folio_large_mapcount <= 1 -> copy,
    even though this mm is the only one mapping the folio."""
    k, f = _shared_64k(arch)
    k.exit_mm(2)                                      # the parent maps it alone now
    k.syscall(1, 0, "munmap", (BASE + PAGE, 15 * PAGE), 0)   # 15 of its 16 pages go
    assert f.mapcount() == 1 and f.only_mm(k.mm(1).asid)
    assert touch(k, 1, BASE)
    assert k.vmstat.get("emu_cow_copy", 0) == 1 and k.vmstat.get("emu_cow_reuse", 0) == 0
    assert folio_at(k, 1, BASE) is not f and k.folio_of_pfn(f.pfn) is None   # freed


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_wp_can_reuse_large_anon_folio_reuses_exclusive_mapping(arch):
    """mm/memory.c __wp_can_reuse_large_anon_folio(): more than one mapping, all in this
    mm, refcount == mapcount -> reuse (the page stays, now writable)."""
    k, f = _shared_64k(arch)
    k.exit_mm(2)
    k.syscall(1, 0, "munmap", (BASE + 2 * PAGE, 14 * PAGE), 0)   # two pages stay mapped
    assert touch(k, 1, BASE + PAGE)
    assert k.vmstat.get("emu_cow_reuse", 0) == 1 and k.vmstat.get("emu_cow_copy", 0) == 0
    assert k.arch.pfn(pte(k, 1, BASE + PAGE)) == f.pfn + 1
    assert k.arch.writable(pte(k, 1, BASE + PAGE))


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_wp_can_reuse_large_anon_folio_copies_while_other_mm_maps_it(arch):
    """mm/memory.c __wp_can_reuse_large_anon_folio(): FOLIO_MM_IDS_SHARED (another mm
    still maps one page) -> copy."""
    k, f = _shared_64k(arch)
    k.syscall(2, 0, "munmap", (BASE + PAGE, 15 * PAGE), 0)   # the child keeps page 0
    assert touch(k, 1, BASE + 4 * PAGE)
    assert k.vmstat.get("emu_cow_copy", 0) == 1 and k.vmstat.get("emu_cow_reuse", 0) == 0


def test_can_change_pte_writable_needs_anon_exclusive():
    """mm/mprotect.c can_change_pte_writable(): mprotect(RW) makes a private page
    writable only when PageAnonExclusive; fork cleared it, a child's exit does not set
    it again, so the parent's pages stay read-only until the write fault reuses them."""
    k, f = _shared_64k("x86_64")
    k.exit_mm(2)
    k.syscall(1, 0, "mprotect", (BASE, MiB, 1), 0)
    k.syscall(1, 0, "mprotect", (BASE, MiB, 3), 0)
    assert not k.arch.writable(pte(k, 1, BASE))
    assert touch(k, 1, BASE)
    assert k.vmstat.get("emu_cow_reuse", 0) == 1


# --- item 11: mm/memory.c vma_needs_copy --------------------------------------------------

@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_vma_needs_copy_skips_vmas_without_anon_vma(arch):
    """mm/memory.c vma_needs_copy(): copy_page_range copies only VMAs with an anon_vma.
    A VMA only read (small zero pages, no anon_vma: do_anonymous_page's read path never
    prepares one) is not copied -- the child refaults; a written VMA is."""
    k = make_kernel(arch)
    k.new_mm(1)
    mmap(k, 1, BASE, MiB)                       # read only: zero pages
    mmap(k, 1, BASE + 2 * MiB, MiB)             # written: anonymous pages
    for i in range(3):
        touch(k, 1, BASE + i * PAGE, write=False)
        touch(k, 1, BASE + 2 * MiB + i * PAGE)
    assert not k.mm(1).vmas.find(BASE).anon_vma
    k.fork(1, 2)
    assert all(pte(k, 2, BASE + i * PAGE) == 0 for i in range(3))
    assert all(k.arch.pfn(pte(k, 2, BASE + 2 * MiB + i * PAGE))
               == k.arch.pfn(pte(k, 1, BASE + 2 * MiB + i * PAGE)) for i in range(3))
    assert k.arch.pfn(pte(k, 1, BASE)) == k.zero_pfn          # the parent keeps its entries
    assert touch(k, 2, BASE, write=False)
    assert k.arch.pfn(pte(k, 2, BASE)) == k.zero_pfn          # refaulted


def test_vma_needs_copy_huge_zero_pmd_has_an_anon_vma():
    """mm/huge_memory.c do_huge_pmd_anonymous_page(): vmf_anon_prepare() runs before the
    huge-zero-page read path, so that VMA has an anon_vma and fork copies its PMD."""
    k = make_kernel("x86_64", enabled="always")
    k.new_mm(1)
    mmap(k, 1, BASE, 2 * MiB)
    touch(k, 1, BASE, write=False)
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(k.mm(1), BASE))
    k.fork(1, 2)
    assert k.arch.pfn(k.pt.get_pmd(k.mm(2), BASE)) == k.huge_zero_pfn
