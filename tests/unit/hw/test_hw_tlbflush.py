"""Linux's flush policy (emu.kernel.tlbflush) on top of the hardware primitives."""

from hw_test_helpers import BASE, events, make

from emu.arch import PROT_READ, PROT_WRITE
from emu.kernel import tlbflush

RW = PROT_READ | PROT_WRITE
PAGE = 0x1000


def _fill(m, npages, cpus):
    m.b.map_range(BASE, 0x100, npages * PAGE, RW)
    k, a, n = events([BASE + i * PAGE for i in range(npages)])
    for cpu in cpus:
        m.hw.run(cpu, 1, m.root, k, a, n)


def test_x86_single_page_ceiling():
    m = make("x86_64", nr_cpus=2)
    _fill(m, 8, (0, 1))
    st = tlbflush.flush_tlb_range(m.hw, 1, {0, 1}, BASE, BASE + 33 * PAGE, this_cpu=0)
    t = m.hw.totals()
    assert t["flush.invlpg.issued"] == 66                 # 33 pages on each of 2 CPUs
    assert t["flush.ipi.received"] == 1 and m.hw.counters(1)["flush.ipi.received"] == 1
    # arch/x86/mm/tlb.c flush_tlb_func(): NR_TLB_LOCAL_FLUSH_* only on the initiating CPU
    assert st["nr_tlb_remote_flush"] == 1 and st["nr_tlb_local_flush_one"] == 33
    assert st["nr_tlb_remote_flush_received"] == 1
    assert all(m.hw.probe(c, 1, BASE + 5 * PAGE) is None for c in (0, 1))
    st = tlbflush.flush_tlb_range(m.hw, 1, {0, 1}, BASE, BASE + 34 * PAGE, this_cpu=0)
    t = m.hw.totals()
    assert t["flush.cr3_flush.issued"] == 2 and t["flush.invlpg.issued"] == 66
    assert st["nr_tlb_local_flush_all"] == 1


def test_x86_cpumask_and_issuer():
    m = make("x86_64", nr_cpus=3)
    _fill(m, 4, (0, 1, 2))
    # issued by a CPU outside the mask (khugepaged's): IPIs to every CPU in the mask
    tlbflush.flush_tlb_range(m.hw, 1, {1, 2}, BASE, BASE + PAGE, this_cpu=None)
    t = m.hw.totals()
    assert t["flush.ipi.issued"] == 2 and t["flush.ipi.received"] == 2
    assert m.hw.probe(0, 1, BASE) is not None             # CPU 0 not in the mask: untouched
    assert m.hw.probe(1, 1, BASE) is None and m.hw.probe(2, 1, BASE) is None
    # single-threaded mm flushing itself: no IPI
    tlbflush.flush_tlb_page(m.hw, 1, {0}, BASE, this_cpu=0)
    assert m.hw.totals()["flush.ipi.issued"] == 2
    assert m.hw.probe(0, 1, BASE) is None


def test_x86_stride():
    m = make("x86_64")
    m.b.map_2m(BASE, 0x200, RW)
    m.hw.access(0, 1, m.root, BASE)
    tlbflush.flush_tlb_range(m.hw, 1, {0}, BASE, BASE + (2 << 20), stride_shift=21,
                             this_cpu=0)
    assert m.hw.totals()["flush.invlpg.issued"] == 1
    assert m.hw.probe(0, 1, BASE) is None


def test_arm64_without_range_tlbi():
    m = make("arm64", "neoverse_n1", nr_cpus=2)
    _fill(m, 4, (0, 1))
    tlbflush.flush_tlb_range(m.hw, 1, {0, 1}, BASE, BASE + 511 * PAGE, this_cpu=0)
    t = m.hw.totals()
    assert t["flush.tlbi_vae1is.issued"] == 511
    assert t["flush.tlbi_vae1is.received"] == 511 * 2      # broadcast
    assert "flush.ipi.issued" not in t
    tlbflush.flush_tlb_range(m.hw, 1, {0, 1}, BASE, BASE + 512 * PAGE, this_cpu=0)
    assert m.hw.totals()["flush.tlbi_aside1is.issued"] == 1     # >= MAX_DVM_OPS
    tlbflush.flush_tlb_range(m.hw, 1, {0}, BASE, BASE + 16 * PAGE, last_level_only=True)
    assert m.hw.totals()["flush.tlbi_vale1is.issued"] == 16


def test_arm64_with_range_tlbi():
    m = make("arm64", "neoverse_v2", nr_cpus=2)
    _fill(m, 600, (0, 1))
    tlbflush.flush_tlb_range(m.hw, 1, {0, 1}, BASE, BASE + 512 * PAGE, this_cpu=0)
    t = m.hw.totals()
    assert t["flush.tlbi_rvae1is.issued"] == 1             # (7+1) * 2^6 = 512 pages
    assert "flush.tlbi_aside1is.issued" not in t
    for cpu in (0, 1):
        assert m.hw.probe(cpu, 1, BASE + 511 * PAGE) is None
        assert m.hw.probe(cpu, 1, BASE + 512 * PAGE) is not None
    # 35 pages: 34 by one range op (NUM=16, SCALE=0), the odd one by a single TLBI
    tlbflush.flush_tlb_range(m.hw, 1, {0}, BASE, BASE + 35 * PAGE, this_cpu=0)
    t = m.hw.totals()
    assert t["flush.tlbi_rvae1is.issued"] == 2 and t["flush.tlbi_vae1is.issued"] == 1


def test_range_ops_cover_everything():
    for pages in range(2, 3000, 7):
        even = pages & ~1
        ops = tlbflush._tlbi_range_ops(0, even)
        covered = sum((num + 1) << (5 * scale + 1) for _, scale, num in ops)
        assert covered == even
        assert len(ops) <= 4


def test_flush_tlb_mm():
    x = make("x86_64", nr_cpus=2)
    _fill(x, 4, (0, 1))
    tlbflush.flush_tlb_mm(x.hw, 1, {0, 1}, this_cpu=1)
    assert x.hw.totals()["flush.cr3_flush.issued"] == 2
    assert x.hw.probe(0, 1, BASE) is None
    a = make("arm64", nr_cpus=2)
    _fill(a, 4, (0, 1))
    tlbflush.flush_tlb_mm(a.hw, 1, {0, 1})
    assert a.hw.totals()["flush.tlbi_aside1is.issued"] == 1
    assert a.hw.probe(1, 1, BASE) is None


def test_x86_local_counters_only_for_the_initiating_cpu():
    """arch/x86/mm/tlb.c flush_tlb_func(): a flush from khugepaged's CPU (no vCPU, not in
    the mask) counts nr_tlb_remote_flush once and one received per IPI, no local flush."""
    m = make("x86_64", nr_cpus=3)
    _fill(m, 4, (0, 1, 2))
    st = tlbflush.flush_tlb_range(m.hw, 1, {0, 1, 2}, BASE, BASE + 2 * PAGE, this_cpu=None)
    assert st == {"nr_tlb_remote_flush": 1, "nr_tlb_remote_flush_received": 3,
                  "nr_tlb_local_flush_all": 0, "nr_tlb_local_flush_one": 0}
    assert m.hw.totals()["flush.invlpg.issued"] == 6                   # 2 pages x 3 CPUs


def test_arm64_reports_no_debug_tlbflush_counters():
    """Only arch/x86 calls count_vm_tlb_event(): arm64 flushes return no increments."""
    m = make("arm64", "neoverse_n1", nr_cpus=2)
    _fill(m, 4, (0, 1))
    st = tlbflush.flush_tlb_range(m.hw, 1, {0, 1}, BASE, BASE + 3 * PAGE, this_cpu=0)
    assert not any(st.values())
    assert not any(tlbflush.flush_tlb_mm(m.hw, 1, {0, 1}).values())
    assert m.hw.totals()["flush.tlbi_vae1is.issued"] == 3


def test_arm64_range_limit_and_descending_scale():
    """arch/arm64/include/asm/tlbflush.h __flush_tlb_range_limit_excess(): with
    FEAT_TLBIRANGE only more than MAX_TLBI_RANGE_PAGES (2^21 pages) flushes the ASID;
    __flush_tlb_range_op(): SCALE falls from 3, NUM clamped to 31."""
    assert tlbflush.MAX_TLBI_RANGE_PAGES == 1 << 21
    m = make("arm64", "neoverse_v2", nr_cpus=1)
    _fill(m, 4, (0,))
    exact = tlbflush.MAX_TLBI_RANGE_PAGES * PAGE
    tlbflush.flush_tlb_range(m.hw, 1, {0}, 0, exact, this_cpu=0)
    t = m.hw.totals()
    assert t["flush.tlbi_rvae1is.issued"] == 1 and "flush.tlbi_aside1is.issued" not in t
    tlbflush.flush_tlb_range(m.hw, 1, {0}, 0, exact + PAGE, this_cpu=0)
    assert m.hw.totals()["flush.tlbi_aside1is.issued"] == 1
    # exactly 2^21 pages is one SCALE=3, NUM=31 operation: the pre-6.10 loop (SCALE rising
    # from 0, NUM masked to 5 bits) could not express it, hence the old ">=" comparison.
    # 2^21 - 2 pages: 31 units at each scale from 3 down to 0.
    assert tlbflush._tlbi_range_ops(0, tlbflush.MAX_TLBI_RANGE_PAGES) == [(0, 3, 31)]
    pages = tlbflush.MAX_TLBI_RANGE_PAGES - 2
    ops = tlbflush._tlbi_range_ops(0, pages)
    assert [(s, n) for _, s, n in ops] == [(3, 30), (2, 30), (1, 30), (0, 30)]
    assert sum((n + 1) << (5 * s + 1) for _, s, n in ops) == pages
    # a PMD stride with range operations: 512 pages by one range op, not one per PMD
    tlbflush.flush_tlb_range(m.hw, 1, {0}, BASE, BASE + (4 << 20), stride_shift=21,
                             this_cpu=0)
    assert m.hw.totals()["flush.tlbi_rvae1is.issued"] == 2
