"""TLB flushes as the modelled kernel issues them (issue 11, items 8-10): the span
mmu_gather collected, the targets x86 picks, the counters each architecture keeps.
Each test names the kernel function it follows; expected spans are derived from the
entries the test made present."""

import pytest
from kernel_model_helpers import PAGE, MiB, mmap

from emu.arch import get_arch
from emu.arch.profile import load_profile
from emu.hw.hardware import Hardware
from emu.kernel.config import ThpConfig
from emu.kernel.kernel import Kernel
from emu.kernel.khugepaged.knobs import KhugepagedKnobs
from emu.mem.physmem import PhysMem

BASE = 0x40000000              # 1 GiB aligned: PMD and PTE tables start here
FAR = BASE + 512 * MiB         # a second VMA in the same 1 GiB keeps the PMD table alive
PMD = 2 * MiB
MADV_DONTNEED, MADV_FREE, MADV_COLLAPSE = 4, 8, 25
PROFILE = {"x86_64": "skylake", "arm64": "neoverse_n1"}     # n1: no FEAT_TLBIRANGE


def machine(arch, nr_cpus=2, khugepaged=False, **cfg):
    physmem = PhysMem(128 * MiB // PAGE)
    hw = Hardware(get_arch(arch), load_profile(PROFILE[arch]), physmem, nr_cpus)
    knobs = KhugepagedKnobs.preset("default") if khugepaged else None
    k = Kernel(arch, ThpConfig(**({"enabled": "never"} | cfg)), hw, physmem, khugepaged=knobs)
    k.bus.keep = True
    k.new_mm(1)
    mmap(k, 1, FAR, PAGE)
    k.handle_mm_fault(1, 0, FAR, 1)
    return k, hw


def touch(k, va, cpu=0, write=True):
    assert k.handle_mm_fault(1, cpu, va, 1 if write else 0)


def flushes(k, since=0):
    """(start, end, stride_shift, last_level) of every tlb_flush since event ``since``."""
    return [(e.args["start"], e.args["end"], e.args["stride_shift"], e.args["last_level"])
            for e in k.bus.named("tlb_flush")[since:]]


def ops(hw):
    return {n: v for n, v in hw.totals().items() if n.startswith("flush.") and "issued" in n}


# --- item 8: include/asm-generic/tlb.h mmu_gather, tlb_finish_mmu ---------------------

@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_madv_dontneed_flushes_the_span_of_cleared_ptes(arch):
    """mm/memory.c zap_pte_range -> tlb_remove_tlb_entries: the gather spans the present
    entries cleared (pages 5 and 9 here), not the 1 MiB asked for; nothing when nothing
    was present (tlb_flush_mmu_tlbonly returns early)."""
    k, hw = machine(arch)
    mmap(k, 1, BASE, MiB)
    touch(k, BASE + 5 * PAGE)
    touch(k, BASE + 9 * PAGE)
    n = len(k.bus.named("tlb_flush"))
    before = ops(hw)
    k.syscall(1, 0, "madvise", (BASE, MiB, MADV_DONTNEED), 0)
    assert flushes(k, n) == [(BASE + 5 * PAGE, BASE + 10 * PAGE, 12, True)]
    after = ops(hw)
    if arch == "x86_64":        # 5 strides <= 33: INVLPG each, on this CPU only
        assert after["flush.invlpg.issued"] - before.get("flush.invlpg.issued", 0) == 5
    else:                       # leaf-only: TLBI VALE1IS per page
        assert after["flush.tlbi_vale1is.issued"] - before.get("flush.tlbi_vale1is.issued",
                                                              0) == 5
    k.syscall(1, 0, "madvise", (BASE, MiB, MADV_DONTNEED), 0)     # nothing left to clear
    assert flushes(k, n + 1) == []


def test_munmap_span_includes_the_freed_pte_table():
    """mm/mmap.c vms_clear_ptes: zap + free_pgtables in one gather; pte_free_tlb adds one
    page at the table's start (BASE) and sets freed_tables (no last-level-only flush)."""
    k, hw = machine("x86_64")
    mmap(k, 1, BASE, MiB)
    touch(k, BASE + 3 * PAGE)
    touch(k, BASE + 10 * PAGE)
    n = len(k.bus.named("tlb_flush"))
    k.syscall(1, 0, "munmap", (BASE, MiB), 0)
    assert flushes(k, n) == [(BASE, BASE + 11 * PAGE, 12, False)]
    assert k.vmstat["nr_tlb_local_flush_one"] == 11 and k.vmstat["nr_tlb_local_flush_all"] == 0


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_munmap_of_a_pmd_thp_flushes_with_pmd_stride(arch):
    """asm-generic/tlb.h tlb_get_unmap_shift: only a PMD was cleared (zap_huge_pmd ->
    tlb_remove_pmd_tlb_entry) -> PMD_SHIFT stride: one INVLPG on x86, one TLBI on arm64."""
    k, hw = machine(arch, enabled="always")
    mmap(k, 1, BASE, PMD)
    touch(k, BASE)
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(k.mm(1), BASE))
    n = len(k.bus.named("tlb_flush"))
    before = ops(hw)
    k.syscall(1, 0, "munmap", (BASE, PMD), 0)
    assert flushes(k, n) == [(BASE, BASE + PMD, 21, True)]   # the deposit goes by pte_free
    after = ops(hw)
    kind = "flush.invlpg.issued" if arch == "x86_64" else "flush.tlbi_vale1is.issued"
    assert after[kind] - before.get(kind, 0) == 1
    assert "flush.cr3_flush.issued" not in after and "flush.tlbi_aside1is.issued" not in after


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_pmd_split_uses_flush_pmd_tlb_range(arch):
    """mm/huge_memory.c __split_huge_pmd_locked -> pmdp_invalidate -> flush_pmd_tlb_range:
    arm64 overrides it with PMD stride (one TLBI VAE1IS); x86 falls back to flush_tlb_range,
    PAGE_SIZE stride, so 512 strides > tlb_single_page_flush_ceiling: a full flush."""
    k, hw = machine(arch, enabled="always")
    mmap(k, 1, BASE, PMD)
    touch(k, BASE)
    n = len(k.bus.named("tlb_flush"))
    before = ops(hw)
    k.syscall(1, 0, "madvise", (BASE, PAGE, MADV_DONTNEED), 0)    # split, zap page 0
    got = flushes(k, n)
    after = ops(hw)
    if arch == "x86_64":
        assert got == [(BASE, BASE + PMD, 12, False), (BASE, BASE + PAGE, 12, True)]
        assert after["flush.cr3_flush.issued"] - before.get("flush.cr3_flush.issued", 0) == 1
        assert k.vmstat["nr_tlb_local_flush_all"] == 1
    else:   # the split's set_ptes folds contpte blocks; zapping page 0 unfolds the first
        assert got == [(BASE, BASE + PMD, 21, False), (BASE, BASE + 16 * PAGE, 12, True),
                       (BASE, BASE + PAGE, 12, True)]
        assert after["flush.tlbi_vae1is.issued"] - before.get("flush.tlbi_vae1is.issued",
                                                             0) == 1
        assert "flush.tlbi_aside1is.issued" not in after


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_mprotect_flushes_changed_entries_only(arch):
    """mm/mprotect.c change_pte_range -> prot_commit_flush_ptes: tlb_flush_pte_range for
    each entry pte_needs_flush() accepts; an mprotect that changes nothing on x86 (the
    entries keep their bits) gathers nothing, while arm64's generic pte_needs_flush
    (always true) flushes every present entry it rewrote."""
    k, hw = machine(arch)
    mmap(k, 1, BASE, 64 * PAGE)
    for i in (2, 7):
        touch(k, BASE + i * PAGE)
    n = len(k.bus.named("tlb_flush"))
    k.syscall(1, 0, "mprotect", (BASE, 64 * PAGE, 1), 0)          # RW -> R: both change
    assert flushes(k, n) == [(BASE + 2 * PAGE, BASE + 8 * PAGE, 12, True)]
    k.syscall(1, 0, "mprotect", (BASE, 64 * PAGE, 1), 0)          # R -> R: nothing changes
    want = [] if arch == "x86_64" else [(BASE + 2 * PAGE, BASE + 8 * PAGE, 12, True)]
    assert flushes(k, n + 1) == want


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_madv_free_flushes_only_young_or_dirty_entries(arch):
    """mm/madvise.c madvise_free_pte_range: an entry is made old and clean, and joins the
    gather, only if it was young or dirty -- a second MADV_FREE flushes nothing."""
    k, hw = machine(arch)
    mmap(k, 1, BASE, MiB)
    touch(k, BASE + 4 * PAGE)
    touch(k, BASE + 6 * PAGE)
    n = len(k.bus.named("tlb_flush"))
    k.syscall(1, 0, "madvise", (BASE, MiB, MADV_FREE), 0)
    assert flushes(k, n) == [(BASE + 4 * PAGE, BASE + 7 * PAGE, 12, True)]
    k.syscall(1, 0, "madvise", (BASE, MiB, MADV_FREE), 0)
    assert flushes(k, n + 1) == []


# --- item 9: arch/x86/mm/tlb.c native_flush_tlb_multi, should_flush_tlb, flush_tlb_func --

def test_x86_lazy_cpu_gets_no_ipi_unless_tables_are_freed_then_leaves_the_mask():
    """arch/x86/mm/tlb.c: should_flush_tlb skips a lazy-TLB CPU when no table was freed;
    with freed_tables the IPI goes (on_each_cpu_mask) and flush_tlb_func switches the
    lazy CPU to init_mm; the next IPI finds another mm loaded and the CPU clears itself
    from mm_cpumask, after which no IPI is sent at all."""
    k, hw = machine("x86_64")
    mmap(k, 1, BASE, 4 * MiB)
    touch(k, BASE, cpu=0)
    touch(k, BASE + PAGE, cpu=1)                 # a second thread on CPU 1
    mm = k.mm(1)
    assert mm.cpumask == {0, 1}
    k.enter_lazy_tlb(1)                          # its thread exited: CPU 1 idles lazily
    ipis = hw.totals().get("flush.ipi.issued", 0)
    k.syscall(1, 0, "madvise", (BASE, PAGE, MADV_DONTNEED), 0)     # leaf only
    assert hw.totals().get("flush.ipi.issued", 0) == ipis
    touch(k, BASE + PMD, cpu=0)                  # a PTE table in the second PMD
    k.syscall(1, 0, "munmap", (BASE + PMD, PMD), 0)                # frees that table
    assert hw.totals()["flush.ipi.issued"] == ipis + 1
    assert k.tlbstate.loaded[1] is None and mm.cpumask == {0, 1}   # now on init_mm
    touch(k, BASE + 2 * PAGE, cpu=0)
    k.syscall(1, 0, "munmap", (BASE, PMD), 0)                      # frees the first table
    assert hw.totals()["flush.ipi.issued"] == ipis + 2
    assert mm.cpumask == {0}                                       # CPU 1 left the mask
    assert k.vmstat["nr_tlb_remote_flush_received"] == 2


def test_x86_cpu_back_from_another_mm_flushes_a_stale_pcid():
    """arch/x86/mm/tlb.c switch_mm_irqs_off: a CPU that missed a flush while it ran another
    mm (should_flush_tlb said no) reloads CR3 with a flush when it comes back."""
    k, hw = machine("x86_64")
    mmap(k, 1, BASE, MiB)
    touch(k, BASE, cpu=0)
    mm = k.mm(1)
    assert hw.access(1, mm.asid, mm.pgd_pfn, BASE, 0) is not None   # CPU 1 caches it
    k.switch_mm(1, mm)
    k.new_mm(2)
    k.switch_mm(1, k.mm(2))                                        # CPU 1 runs pid 2 now
    k.syscall(1, 0, "madvise", (BASE, PAGE, MADV_DONTNEED), 0)
    assert hw.totals().get("flush.ipi.issued", 0) == 0             # not loaded there
    assert hw.probe(1, mm.asid, BASE) is not None                  # stale, not in use
    k.switch_mm(1, mm)
    assert hw.probe(1, mm.asid, BASE) is None
    assert hw.counters(1)["flush.cr3_flush.issued"] == 1


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_collapse_sends_tlb_remove_table_sync_one_ipis(arch):
    """mm/khugepaged.c collapse_huge_page -> tlb_remove_table_sync_one (mm/mmu_gather.c,
    MMU_GATHER_RCU_TABLE_FREE on both architectures): smp_call_function, an IPI to every
    other online CPU -- arm64 collapses send IPIs too."""
    k, hw = machine(arch, nr_cpus=4, khugepaged=True)
    mmap(k, 1, BASE, PMD)
    for i in range(512):                                           # THP never: 4 KiB pages
        touch(k, BASE + i * PAGE)
    k.config.enabled = "madvise"
    k.syscall(1, 0, "madvise", (BASE, PMD, 14), 0)                 # MADV_HUGEPAGE
    k.syscall(1, 0, "madvise", (BASE, PMD, MADV_COLLAPSE), 0)
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(k.mm(1), BASE))
    tally = k.flushes_by_cause["madvise_collapse"]
    assert tally["sync_ipis"] == 3                                 # CPUs 1, 2, 3
    # arm64 flushes by broadcast TLBI: its only IPIs are the sync ones; x86's mask is {0}
    assert tally["ipi"] == 3


# --- item 10: counters as the kernel keeps them -----------------------------------------

def test_arm64_vmstat_has_no_x86_only_tlb_counters():
    """Only arch/x86/mm/tlb.c calls count_vm_tlb_event(): an arm64 kernel never counts
    nr_tlb_*, so emu's arm64 vmstat does not report them."""
    k, hw = machine("arm64")
    mmap(k, 1, BASE, MiB)
    touch(k, BASE)
    k.syscall(1, 0, "munmap", (BASE, MiB), 0)
    assert not [n for n in k.vmstat if n.startswith("nr_tlb_")]
    x, _ = machine("x86_64")
    assert "nr_tlb_local_flush_one" in x.vmstat


# --- issue 16: flushes counted where they were issued, by cause -------------------------

@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_khugepaged_flushes_are_issued_by_its_own_cpu(arch):
    """khugepaged runs on a CPU with no vCPU: its collapse flush and the sync IPIs are
    counted as issued there (Hardware.issued_without_vcpu) and under cause khugepaged.
    x86: the mm's mask is {0}, so flush_tlb_multi sends one IPI (CPU 0 flushes the whole
    PCID: 512 strides > 33), then 4 sync IPIs (every online CPU; none is khugepaged's).
    arm64 (no FEAT_TLBIRANGE): 512 strides reach MAX_DVM_OPS, one TLBI ASIDE1IS, then
    the same 4 sync IPIs."""
    k, hw = machine(arch, nr_cpus=4, khugepaged=True)
    mmap(k, 1, BASE, PMD)
    for i in range(512):
        touch(k, BASE + i * PAGE)
    k.thp_sysfs_store(enabled="always")
    k.syscall(1, 0, "madvise", (BASE, PMD, 14), 0)                 # MADV_HUGEPAGE
    before = hw.issued_without_vcpu()
    assert before == {}
    k.khugepaged.run(60 * 10**9)
    assert k.pt.pmd_is_leaf(k.pt.get_pmd(k.mm(1), BASE))
    tally = k.flushes_by_cause["khugepaged"]
    assert tally["flushes"] == 1 and tally["sync_ipis"] == 4
    if arch == "x86_64":
        assert hw.issued_without_vcpu() == {"flush.ipi.issued": 5}
        assert tally == {"flushes": 1, "ipi": 5, "cr3_flush": 1, "sync_ipis": 4}
    else:
        assert hw.issued_without_vcpu() == {"flush.ipi.issued": 4,
                                            "flush.tlbi_aside1is.issued": 1}
        assert tally == {"flushes": 1, "ipi": 4, "tlbi_aside1is": 1, "sync_ipis": 4}
