"""Anonymous faults: alloc_anon_folio's order choice, PMD THP, zero pages, file COW."""

import pytest
from kernel_model_helpers import PAGE, MiB, make_kernel, mmap, order_at, touch

from emu.kernel.config import ThpConfig
from emu.kernel.fault import choose_anon_order, thp_fault_orders
from emu.kernel.vma import VM_HUGEPAGE, VM_NOHUGEPAGE, VM_READ, VM_WRITE, VMA

BASE = 0x40000000          # 1 GiB: 2 MiB aligned


def _orders(cfg, size, flags, anon, thp_disabled, addr, max_order=9):
    vma = VMA(BASE, BASE + size, flags, "anon" if anon else "file", "",
              None if anon else "f", 0)
    return thp_fault_orders(cfg, vma, thp_disabled, addr, max_order)


def test_thp_fault_orders_is_pure_and_follows_alignment_and_bounds():
    cfg = ThpConfig(enabled="never", hugepages={16: "always", 64: "always", 2048: "always"})
    rw = VM_READ | VM_WRITE
    # VMA of 40 KiB at a 64 KiB boundary: 64K does not fit, 16K does
    assert _orders(cfg, 40 * 1024, rw, True, False, BASE + PAGE) == [2]
    assert _orders(cfg, 4 * MiB, rw, True, False, BASE) == [9, 4, 2]
    assert _orders(cfg, 4 * MiB, rw, True, False, BASE, 8) == [4, 2]
    assert _orders(cfg, 4 * MiB, rw | VM_NOHUGEPAGE, True, False, BASE) == []
    assert _orders(cfg, 4 * MiB, rw, True, True, BASE) == []
    assert _orders(cfg, 4 * MiB, rw, False, False, BASE) == []
    cfg = ThpConfig(enabled="madvise", hugepages={64: "madvise"})
    assert _orders(cfg, 4 * MiB, rw, True, False, BASE) == []
    assert _orders(cfg, 4 * MiB, rw | VM_HUGEPAGE, True, False, BASE) == [9, 4]


def test_choose_anon_order_skips_populated_ranges():
    populated = {BASE + 3 * PAGE}
    def none(base, nr):
        return not any(base <= p < base + nr * PAGE for p in populated)
    assert choose_anon_order([4, 2], BASE, none) == [0]
    assert choose_anon_order([4, 2], BASE + 0x10000, none) == [4, 2, 0]
    assert choose_anon_order([4, 2], BASE + 5 * PAGE, none) == [2, 0]
    populated.add(BASE + 5 * PAGE)
    assert choose_anon_order([4, 2], BASE + 6 * PAGE, none) == [0]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_write_fault_takes_highest_enabled_aligned_order(arch):
    k = make_kernel(arch, mthp={16: "always", 64: "always"})
    k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    assert touch(k, 1, BASE + 0x23000)
    assert order_at(k, 1, BASE + 0x20000) == 4 and order_at(k, 1, BASE + 0x2F000) == 4
    assert order_at(k, 1, BASE + 0x30000) is None
    st = k.mthp_stats
    assert st[64]["anon_fault_alloc"] == 1 and st[64]["nr_anon"] == 1
    assert k.mm(1).counters["MM_ANONPAGES"] == 16
    # a populated page inside the next 64K block forces 16K for its neighbours
    touch(k, 1, BASE + 0x31000, write=False)      # zero page, not none
    touch(k, 1, BASE + 0x34000)
    assert order_at(k, 1, BASE + 0x34000) == 2
    touch(k, 1, BASE + 0x30000)
    assert order_at(k, 1, BASE + 0x30000) == 0    # 16K block 0x30000 holds the zero PTE
    assert k.mthp_stats[16]["anon_fault_alloc"] == 1
    if arch == "arm64":
        d = k.pt.get_pte(k.mm(1), BASE + 0x20000)
        assert k.arch.cont(d)                     # the 64 KiB folio is born contiguous
        assert not k.arch.cont(k.pt.get_pte(k.mm(1), BASE + 0x34000))


def test_vma_bounds_limit_the_order():
    k = make_kernel(mthp={64: "always", 16: "always"})
    k.new_mm(1)
    mmap(k, 1, BASE + 0x8000, 0x10000)            # 64 KiB but not 64K aligned
    touch(k, 1, BASE + 0x8000)
    assert order_at(k, 1, BASE + 0x8000) == 2
    touch(k, 1, BASE + 0x10000)
    assert order_at(k, 1, BASE + 0x10000) == 2


def test_allocation_failure_falls_back_and_counts():
    k = make_kernel(mthp={64: "always", 16: "always"}, fragment=1.0, fragment_max_order=2)
    k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE)
    assert order_at(k, 1, BASE) == 2
    assert k.mthp_stats[64]["anon_fault_fallback"] == 1
    assert k.mthp_stats[16]["anon_fault_alloc"] == 1


def test_pmd_thp_at_fault_and_fallback():
    k = make_kernel(enabled="always")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    touch(k, 1, BASE + 0x1234)
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(mm, BASE))
    assert order_at(k, 1, BASE + 0x1FF000) == 9
    assert k.vmstat["thp_fault_alloc"] == 1 and k.mthp_stats[2048]["anon_fault_alloc"] == 1
    assert mm.counters["MM_ANONPAGES"] == 512
    k2 = make_kernel(enabled="always", fragment=1.0, fragment_max_order=8)
    k2.new_mm(1)
    mmap(k2, 1, BASE, 4 * MiB)
    touch(k2, 1, BASE)
    assert order_at(k2, 1, BASE) == 0
    assert k2.vmstat["thp_fault_fallback"] == 1
    assert k2.mthp_stats[2048]["anon_fault_fallback"] == 1


def test_read_faults_map_zero_pages():
    k = make_kernel(enabled="always")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    touch(k, 1, BASE, write=False)                # huge zero page
    assert k.pt.get_pmd(mm, BASE) and k.arch.pfn(k.pt.get_pmd(mm, BASE)) == k.huge_zero_pfn
    assert k.vmstat["thp_zero_page_alloc"] == 1 and mm.counters["MM_ANONPAGES"] == 0
    touch(k, 1, BASE + PAGE)                      # write: a real THP replaces it
    assert order_at(k, 1, BASE) == 9 and k.vmstat["thp_fault_alloc"] == 1
    k = make_kernel(enabled="never")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, MiB)
    touch(k, 1, BASE, write=False)
    d = k.pt.get_pte(mm, BASE)
    assert k.arch.pfn(d) == k.zero_pfn and not k.arch.writable(d)
    touch(k, 1, BASE)                             # write after read: COW from the zero page
    assert order_at(k, 1, BASE) == 0 and k.arch.writable(k.pt.get_pte(mm, BASE))


def test_no_huge_zero_page_when_use_zero_page_off():
    k = make_kernel(enabled="always")
    k.config.use_zero_page = False
    k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    touch(k, 1, BASE, write=False)
    assert order_at(k, 1, BASE) == 9


def test_madvise_and_prctl_gate_thp():
    k = make_kernel(enabled="madvise", mthp={64: "inherit"})
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    touch(k, 1, BASE)
    assert order_at(k, 1, BASE) == 0
    k.syscall(1, 0, "madvise", (BASE + 2 * MiB, 2 * MiB, 14), 0)   # MADV_HUGEPAGE
    assert len(mm.vmas) == 2
    touch(k, 1, BASE + 2 * MiB)
    assert order_at(k, 1, BASE + 2 * MiB) == 9
    k.syscall(1, 0, "prctl", (41, 1, 0, 0, 0), 0)                    # PR_SET_THP_DISABLE
    k.syscall(1, 0, "munmap", (BASE + 2 * MiB, 2 * MiB), 0)
    mmap(k, 1, BASE + 2 * MiB, 2 * MiB)
    k.syscall(1, 0, "madvise", (BASE + 2 * MiB, 2 * MiB, 14), 0)
    touch(k, 1, BASE + 2 * MiB)
    assert order_at(k, 1, BASE + 2 * MiB) == 0


def test_map_stack_is_nohugepage():
    k = make_kernel(enabled="always")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB, flags=0x20022)      # MAP_STACK
    assert next(iter(mm.vmas)).flags & VM_NOHUGEPAGE
    touch(k, 1, BASE)
    assert order_at(k, 1, BASE) == 0


def test_file_private_write_copies_to_anon():
    k = make_kernel(enabled="always")
    mm = k.new_mm(1)
    k.syscall(1, 0, "mmap", (0, MiB, 3, 0x2, 3, 0), BASE)   # MAP_PRIVATE file, fd 3
    touch(k, 1, BASE, write=False)
    d = k.pt.get_pte(mm, BASE)
    f = k.folio_of_pfn(k.arch.pfn(d))
    assert not f.anon and not k.arch.writable(d) and mm.counters["MM_FILEPAGES"] == 1
    k.physmem.version[f.pfn] = 5                  # the file page's content
    touch(k, 1, BASE)
    g = k.folio_of_pfn(k.arch.pfn(k.pt.get_pte(mm, BASE)))
    assert g.anon and g.order == 0 and k.physmem.version[g.pfn] == 5
    assert mm.counters == {**mm.counters, "MM_FILEPAGES": 0, "MM_ANONPAGES": 1}
    touch(k, 1, BASE + 4 * PAGE)                  # write fault on a none file PTE
    assert k.folio_of_pfn(k.arch.pfn(k.pt.get_pte(mm, BASE + 4 * PAGE))).anon


def test_implicit_vmas_for_qemu_setup():
    k = make_kernel()
    mm = k.new_mm(1)
    top = 0x7FFF0000
    assert touch(k, 1, top + 0x10)                # first unknown access: the stack
    assert touch(k, 1, top - 5 * PAGE)            # grows down
    assert touch(k, 1, top + 3 * PAGE, write=False)   # argv/env above
    stacks = [v for v in mm.vmas if v.kind == "stack"]
    assert len(stacks) == 1 and stacks[0].start == top - 5 * PAGE
    assert touch(k, 1, 0x1000000)                 # far away: an implicit page VMA
    assert touch(k, 1, 0x1001000)
    imp = [v for v in mm.vmas if v.kind == "implicit"]
    assert len(imp) == 1 and imp[0].end - imp[0].start == 2 * PAGE


def test_write_to_readonly_vma_is_refused():
    k = make_kernel()
    k.new_mm(1)
    mmap(k, 1, BASE, MiB, prot=1)
    assert not touch(k, 1, BASE)
    assert touch(k, 1, BASE, write=False)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_access_flag_and_dirty_faults_are_resolved_in_the_entry(arch):
    """Hardware without AF/DBM management faults on an old or clean entry: the
    kernel sets young (and dirty for a write) itself, so the walk then succeeds."""
    k = make_kernel(arch, enabled="always")
    mm = k.new_mm(1)
    mmap(k, 1, BASE, 4 * MiB)
    touch(k, 1, BASE)
    touch(k, 1, BASE + 2 * MiB + 5 * PAGE, write=False)         # huge zero page
    k.syscall(1, 0, "madvise", (BASE + 4 * PAGE, PAGE, 4), 0)    # split the PMD
    va = BASE + 3 * PAGE
    d = k.pt.get_pte(mm, va)
    s = k.pt.pte_slot(mm, va)
    k.physmem.pgtables.write(*s, k.arch.mkclean(k.arch.mkold(d)))
    assert touch(k, 1, va, write=False)
    d = k.pt.get_pte(mm, va)
    assert k.arch.young(d) and not k.arch.dirty(d)
    assert touch(k, 1, va)
    assert k.arch.dirty(k.pt.get_pte(mm, va)) and order_at(k, 1, va) == 9
    pmd = k.pt.get_pmd(mm, BASE + 2 * MiB)
    k.pt.set_pmd(mm, BASE + 2 * MiB, k.arch.mkold(pmd))
    assert touch(k, 1, BASE + 2 * MiB, write=False)
    assert k.arch.young(k.pt.get_pmd(mm, BASE + 2 * MiB))


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_file_read_fault_maps_the_cached_fault_around_window(arch):
    k = make_kernel(arch)
    mm = k.new_mm(1)
    k.file_pages["/bin/prog"] = 100                  # the ELF: cached whole
    mm.vmas.insert(VMA(BASE, BASE + 40 * PAGE, VM_READ, "file", "text", "/bin/prog", 3))
    assert touch(k, 1, BASE + 21 * PAGE, write=False)
    mapped = [i for i in range(40) if k.pt.get_pte(mm, BASE + i * PAGE)]
    assert mapped == list(range(16, 32))             # the aligned 64 KiB window
    assert mm.counters["MM_FILEPAGES"] == 16
    d = k.pt.get_pte(mm, BASE + 22 * PAGE)
    assert k.arch.young(d) == (arch == "x86_64")     # arm64 (hardware AF) prefaults old
    assert k.arch.young(k.pt.get_pte(mm, BASE + 21 * PAGE))
    f = k.folio_of_pfn(k.arch.pfn(d))
    assert (f.file, f.index) == ("/bin/prog", 3 + 22)
    # near the VMA end the window is clipped to the VMA
    assert touch(k, 1, BASE + 39 * PAGE, write=False)
    assert [i for i in range(32, 40) if k.pt.get_pte(mm, BASE + i * PAGE)] == list(range(32, 40))
    # an unknown file (mmap of an fd): only pages already in the cache are prefaulted
    k.syscall(1, 0, "mmap", (0, 64 * PAGE, 1, 0x2, 5, 0), BASE + MiB)
    touch(k, 1, BASE + MiB + 2 * PAGE, write=False)
    assert mm.counters["MM_FILEPAGES"] == 25


def test_implicit_code_is_executable_and_guesses_widen_to_what_qemu_allowed():
    k = make_kernel()
    mm = k.new_mm(1)
    assert touch(k, 1, 0x7FFF0000)                          # the stack
    assert k.handle_mm_fault(1, 0, 0x7F000000, 2, None)      # a fetch: ld.so-like code
    code = mm.vmas.find(0x7F000000)
    assert code.name == "[implicit]" and code.flags & VM_WRITE
    assert k.handle_mm_fault(1, 0, 0x7FFF0000, 2, None)      # code on the stack: allowed
    assert k.vmstat["emu_implicit_prot_upgrade"] == 1
