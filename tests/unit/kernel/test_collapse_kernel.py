"""The collapse core bound to the kernel model's real descriptors, folios and flushes."""

import errno

import numpy as np
import pytest

from emu.arch import get_arch
from emu.arch.profile import load_profile
from emu.hw import Hardware
from emu.kernel.config import ThpConfig
from emu.kernel.kernel import Kernel
from emu.kernel.khugepaged.knobs import KhugepagedKnobs
from emu.mem.physmem import PhysMem
from emu.report.khugepaged import CollapseLog, render

MiB = 1 << 20
PAGE = 4096
B = 1 << 30
PMD = 2 * MiB


def _machine(arch="x86_64", hw=False, **thp):
    """A kernel with khugepaged (fast preset) and one mm; c: the report's CollapseLog."""
    pm = PhysMem(64 * MiB // PAGE)
    hardware = Hardware(get_arch(arch), load_profile(f"generic-{arch}"), pm, 1) if hw else None
    k = Kernel(arch, ThpConfig(enabled="never"), hardware, pm,
               khugepaged=KhugepagedKnobs.preset("fast"))
    c = CollapseLog(k.bus)
    k.bus.keep = True
    k.new_mm(1)
    k.syscall(1, 0, "mmap", (0, 4 * PMD, 3, 0x22, (1 << 64) - 1, 0), B)
    return k, c, k.mm(1)


def _fault(k, mm, start, nr, versions=True):
    for i in range(nr):
        va = start + i * PAGE
        assert k.handle_mm_fault(1, 0, va, 1, None)
        if versions:
            k.physmem.version[k.arch.pfn(k.pt.get_pte(mm, va))] = va >> 12


def _versions_ok(k, mm, start, nr):
    """Every written page still reads its own version through the page tables."""
    for i in range(nr):
        va = start + i * PAGE
        pmd = k.pt.get_pmd(mm, va)
        if k.pt.pmd_is_leaf(pmd):
            pfn = k.arch.pfn(pmd) + ((va - (va & ~(PMD - 1))) >> 12)
        else:
            pfn = k.arch.pfn(k.pt.get_pte(mm, va))
        if int(k.physmem.version[pfn]) != va >> 12:
            return False
    return True


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_madvise_collapse_installs_a_huge_pmd(arch):
    k, c, mm = _machine(arch)
    _fault(k, mm, B, 300)
    free_before = k.nr_free_frames
    rec = k.madvise_collapse(mm, B, B + PMD)
    assert rec.ret == 0 and rec.pmds[0][1].name == "SCAN_SUCCEED"
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(mm, B))
    assert _versions_ok(k, mm, B, 300)
    pfn = k.arch.pfn(k.pt.get_pmd(mm, B))
    assert k.physmem.version[pfn + 300:pfn + 512].max() == 0        # zero-filled
    assert k.folio_of_pfn(pfn).order == 9
    assert mm.counters["MM_ANONPAGES"] == 512
    # 300 small folios freed, one 512-page folio taken, the PTE table deposited.
    assert k.nr_free_frames == free_before + 300 - 512
    assert k.vmstat["thp_collapse_alloc"] == 1


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_khugepaged_mthp_64k_on_real_tables(arch):
    k, c, mm = _machine(arch)
    _fault(k, mm, B, 512)
    k.thp_sysfs_store(hugepages={64: "always"})
    k.khugepaged.enter(mm, 0)
    k.khugepaged.run(0)
    k.khugepaged.finish_pass()        # nothing else runs: the whole pass
    assert c.section(k.khugepaged)["collapses_by_size_kb"] == {64: 32}
    assert _versions_ok(k, mm, B, 512)
    for i in range(0, 512, 16):
        d = k.pt.get_pte(mm, B + i * PAGE)
        f = k.folio_of_pfn(k.arch.pfn(d))
        assert f.order == 4 and f.pfn == k.arch.pfn(d)
        # arm64: an aligned order-4 folio is born contiguous (contpte_set_ptes).
        assert k.arch.cont(d) == (arch == "arm64")
    assert k.mthp_stats[64]["collapse_alloc"] == 32


def test_rollback_restores_every_descriptor():
    k, c, mm = _machine()
    _fault(k, mm, B, 1)
    k.fork(1, 2)
    child = k.mm(2)
    for i in range(1, 512):
        assert k.handle_mm_fault(2, 0, B + i * PAGE, 1, None)
    table = k.pt.pte_table(child, B)
    before = k.physmem.pgtables.table(table).copy()
    k.thp_sysfs_store(hugepages={64: "always"})
    k.thp_sysfs_store(hugepages={2048: "never"})
    k.khugepaged.enter(child, 0)
    k.khugepaged.run(0)
    k.khugepaged.finish_pass()        # nothing else runs: the whole pass
    after = k.physmem.pgtables.table(k.pt.pte_table(child, B))
    assert k.pt.pte_table(child, B) == table
    assert np.array_equal(before[:16], after[:16])      # the shared page's block untouched
    assert k.mthp_stats[64]["collapse_exceed_shared_pte"] >= 1
    assert c.section(k.khugepaged)["collapses_by_size_kb"] == {64: 31}


def test_pageout_and_swapin_during_pmd_collapse():
    k, c, mm = _machine()
    _fault(k, mm, B, 512)
    assert k.madvise_pageout(mm, B, B + 10 * PAGE) == 10
    assert mm.counters["MM_SWAPENTS"] == 10
    assert k.arch.is_swap(k.pt.get_pte(mm, B))
    k.thp_sysfs_store(enabled="always")
    k.khugepaged.enter(mm, 0)
    k.khugepaged.run(0)
    k.khugepaged.finish_pass()        # nothing else runs: the whole pass
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(mm, B))
    assert _versions_ok(k, mm, B, 512)
    assert k.vmstat["pswpin"] == 10 and k.swap.nr_used == 0
    assert mm.counters["MM_SWAPENTS"] == 0


def test_mthp_collapse_leaves_swap_ranges_alone():
    k, c, mm = _machine()
    _fault(k, mm, B, 512)
    k.madvise_pageout(mm, B + 5 * PAGE, B + 6 * PAGE)
    k.thp_sysfs_store(hugepages={64: "always"})
    k.khugepaged.enter(mm, 0)
    k.khugepaged.run(0)
    k.khugepaged.finish_pass()        # nothing else runs: the whole pass
    assert c.section(k.khugepaged)["collapses_by_size_kb"] == {64: 31}
    assert k.arch.is_swap(k.pt.get_pte(mm, B + 5 * PAGE))
    assert k.mthp_stats[64]["collapse_exceed_swap_pte"] == 1
    assert k.do_swap_page(mm, mm.vmas.find(B), B + 5 * PAGE)
    assert _versions_ok(k, mm, B, 512)


def test_flush_reaches_the_tlbs_and_walks_drop():
    k, c, mm = _machine(hw=True)
    _fault(k, mm, B, 512, versions=False)
    hw = k.hw
    for i in range(512):
        assert hw.access(0, mm.asid, mm.pgd_pfn, B + i * PAGE) is not None
    misses_small = hw.totals()["dTLB-load-misses"]
    old_pfn, size = hw.probe(0, mm.asid, B)
    assert size == "4k"
    k.current_cpu = 0
    assert k.madvise_collapse(mm, B, B + PMD).ret == 0
    assert hw.probe(0, mm.asid, B) is None               # the 2 MiB flush removed it
    for i in range(512):
        hw.access(0, mm.asid, mm.pgd_pfn, B + i * PAGE)
    misses_huge = hw.totals()["dTLB-load-misses"] - misses_small
    assert misses_huge <= 2 and misses_small >= 100
    assert hw.probe(0, mm.asid, B)[1] == "2m"
    assert k.vmstat["emu_collapse_flush"] == 1


def test_madvise_collapse_einval_and_vma_nohugepage():
    k, c, mm = _machine()
    _fault(k, mm, B, 4)
    k.syscall(1, 0, "madvise", (B, PMD, 15, 0, 0, 0), 0)        # MADV_NOHUGEPAGE
    assert k.madvise_collapse(mm, B, B + PMD).ret == -errno.EINVAL
    assert c.section(k.khugepaged)["madvise_collapse"][-1]["errno"] == "EINVAL"


def test_report_has_mapping_sizes_before_and_after():
    k, c, mm = _machine("arm64")
    _fault(k, mm, B, 512)
    k.thp_sysfs_store(hugepages={64: "always"})
    k.khugepaged.enter(mm, 0)
    k.khugepaged.run(0)
    k.khugepaged.finish_pass()        # nothing else runs: the whole pass
    r = c.section(k.khugepaged)
    assert r["pages_by_mapping_size"] == {"before": {"4kB": 512}, "after": {"64kB": 512}}
    text = render(c.section(k.khugepaged))
    assert "64kB x32" in text and "pages_collapsed 1" in text


def test_flush_cost_comes_from_what_the_flush_did():
    k, c, mm = _machine(hw=True)
    _fault(k, mm, B, 512, versions=False)
    mm.cpumask.update({0})
    k.current_cpu = 0
    assert k.madvise_collapse(mm, B, B + PMD).ret == 0
    att = k.bus.named("mm_collapse_huge_page")[-1].args["attempt"]
    # x86: 512 pages > tlb_single_page_flush_ceiling -> one full local flush.
    assert att.flush_ns == k.khugepaged.costs.flush_local_all_ns
