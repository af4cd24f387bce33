"""TLB behaviour: LRU replacement, ASID tags, contiguous/coalesced entries, splintering,
flushes, and stale entries that only a flush removes."""

import numpy as np
import pytest
from hw_test_helpers import BASE, READ, WRITE, events, make, tiny_profile

from emu.arch import PROT_READ, PROT_WRITE

RW = PROT_READ | PROT_WRITE
PAGE = 0x1000


def test_lru_replacement(arch_name):
    m = make(arch_name, tiny_profile(arch_name, l1_ways=4))
    m.b.map_range(BASE, 0x100, 16 * PAGE, RW)
    va = [BASE + i * PAGE for i in range(5)]
    for v in va[:4]:
        m.hw.access(0, 1, m.root, v)
    m.hw.access(0, 1, m.root, va[0])           # A becomes most recent; B is LRU
    m.hw.access(0, 1, m.root, va[4])           # evicts B
    assert m.hw.probe(0, 1, va[1]) is None
    for v in (va[0], va[2], va[3], va[4]):
        assert m.hw.probe(0, 1, v) is not None
    walks = m.hw.counters(0)["emu.walk_refs"]
    m.hw.access(0, 1, m.root, va[1])           # B misses again
    assert m.hw.counters(0)["emu.walk_refs"] > walks


def test_set_index_isolates_sets(arch_name):
    m = make(arch_name, tiny_profile(arch_name, l1_ways=1, l1_sets=2))
    m.b.map_range(BASE, 0x100, 4 * PAGE, RW)
    m.hw.access(0, 1, m.root, BASE)            # set 0
    m.hw.access(0, 1, m.root, BASE + PAGE)     # set 1: does not evict set 0
    assert m.hw.probe(0, 1, BASE) is not None
    m.hw.access(0, 1, m.root, BASE + 2 * PAGE)  # set 0 again: evicts BASE
    assert m.hw.probe(0, 1, BASE) is None and m.hw.probe(0, 1, BASE + PAGE) is not None


def test_asid_tags_separate_address_spaces(arch_name):
    m = make(arch_name)
    from emu.hw.builder import PageTableBuilder
    other = PageTableBuilder(m.arch, m.pm, m.alloc)
    m.b.map_4k(BASE, 0x100, RW)
    other.map_4k(BASE, 0x200, RW)
    assert m.hw.access(0, 1, m.root, BASE) == 0x100
    assert m.hw.access(0, 2, other.root, BASE) == 0x200
    assert m.hw.access(0, 1, m.root, BASE) == 0x100
    assert m.hw.probe(0, 2, BASE) == (0x200, "4k")


def _cont_block(m, pfn0, tweak=None):
    for i in range(16):
        pfn = pfn0 + i
        prot = RW
        if tweak:
            pfn, prot = tweak(i, pfn, prot)
        m.b.map_4k(BASE + i * PAGE, pfn, prot, cont=True)


def _walks_for_block(m):
    k, a, n = events([BASE + i * PAGE for i in range(16)])
    assert m.hw.run(0, 1, m.root, k, a, n) == 16
    return m.hw.counters(0)["DTLB_WALK"]


def test_contiguous_entry_forms():
    m = make("arm64")
    _cont_block(m, 0x1000)
    assert _walks_for_block(m) == 1
    assert m.hw.probe(0, 1, BASE + 7 * PAGE) == (0x1007, "64k")
    assert m.hw.counters(0)["emu.contpte_64k_fills"] == 1


@pytest.mark.parametrize("case", ["unaligned_pa", "not_contiguous", "differing_attrs",
                                  "missing_cont_bit"])
def test_contiguous_entry_absent(case):
    m = make("arm64")
    if case == "unaligned_pa":
        _cont_block(m, 0x1001)
    elif case == "not_contiguous":
        _cont_block(m, 0x1000, lambda i, p, pr: (0x5000 if i == 9 else p, pr))
    elif case == "differing_attrs":
        _cont_block(m, 0x1000, lambda i, p, pr: (p, PROT_READ if i == 3 else pr))
    else:
        _cont_block(m, 0x1000)
        m.b.set(BASE + 5 * PAGE, 3, m.arch.mknoncont(m.b.get(BASE + 5 * PAGE, 3)))
    assert _walks_for_block(m) == 16
    assert m.hw.probe(0, 1, BASE + 2 * PAGE)[1] == "4k"


def test_contiguous_needs_va_alignment():
    """A run of 16 that straddles a 64 KiB VA boundary is no block."""
    m = make("arm64")
    for i in range(16):
        m.b.map_4k(BASE + (i + 8) * PAGE, 0x1000 + i, RW, cont=True)
    k, a, n = events([BASE + (i + 8) * PAGE for i in range(16)])
    m.hw.run(0, 1, m.root, k, a, n)
    assert m.hw.counters(0)["DTLB_WALK"] == 16


def test_amd_coalescing_4x4k():
    m = make("x86_64", "zen4")
    m.b.map_range(BASE, 0x2000, 8 * PAGE, RW)          # aligned, contiguous
    m.b.map_range(BASE + 8 * PAGE, 0x3001, 4 * PAGE, RW)   # PA not 16K aligned
    k, a, n = events([BASE + i * PAGE for i in range(12)])
    m.hw.run(0, 1, m.root, k, a, n)
    c = m.hw.counters(0)
    # A group coalesces once all four PTEs are accessed (per-PTE A bits stay exact):
    # the first pass walks every page, the 4th of each aligned group makes a 16K entry.
    assert c["dtlb_load_misses.walk_completed"] == 12
    assert c["emu.coalesced_16k_fills"] == 2
    m.hw.flush_all()
    m.hw.run(0, 1, m.root, k, a, n)
    c = m.hw.counters(0)
    assert c["dtlb_load_misses.walk_completed"] == 12 + 2 + 4
    assert c["emu.coalesced_16k_fills"] == 4
    assert m.hw.probe(0, 1, BASE + 5 * PAGE) == (0x2005, "16k")
    assert m.hw.probe(0, 1, BASE + 9 * PAGE) == (0x3002, "4k")


def test_huge_entries_and_splintering():
    # Neoverse N1's L1 dTLB holds no 1 GiB entries: the walk fills L2 with 1G, L1 with 2M.
    m = make("arm64", "neoverse_n1", frames=1 << 19)
    m.b.map_1g(BASE, 1 << 18, RW)
    va = BASE + (5 << 21) + 0x3000
    assert m.hw.access(0, 1, m.root, va) == (1 << 18) + (va - BASE >> 12)
    assert m.hw.probe(0, 1, va)[1] == "2m"             # the L1 entry is a splinter
    c = m.hw.counters(0)
    assert c["emu.walks.1g"] == 1
    # another 2 MiB of the same 1 GiB page: L1 misses, L2 (1G entry) hits, no walk
    m.hw.access(0, 1, m.root, BASE + (9 << 21))
    c = m.hw.counters(0)
    assert c["DTLB_WALK"] == 1 and c["L2D_TLB"] == 2 and c["L2D_TLB_REFILL"] == 1


def test_stale_entry_until_flushed_x86():
    m = make("x86_64", nr_cpus=2)
    m.b.map_4k(BASE, 0x100, RW)
    assert m.hw.access(0, 1, m.root, BASE) == 0x100
    assert m.hw.access(1, 1, m.root, BASE) == 0x100
    m.b.map_4k(BASE, 0x200, RW)                        # changed, not flushed
    assert m.hw.access(0, 1, m.root, BASE) == 0x100    # stale entries are real
    m.hw.invlpg(0, BASE, 1)
    assert m.hw.probe(0, 1, BASE) is None
    assert m.hw.access(0, 1, m.root, BASE) == 0x200
    assert m.hw.access(1, 1, m.root, BASE) == 0x100    # INVLPG is local: CPU 1 still stale
    m.hw.invpcid_asid(1, 1)
    assert m.hw.access(1, 1, m.root, BASE) == 0x200
    c = m.hw.counters(1)
    assert c["flush.invpcid_asid.issued"] == 1 and c["flush.invpcid_asid.received"] == 1


def test_stale_entry_until_flushed_arm64():
    m = make("arm64", nr_cpus=2)
    m.b.map_4k(BASE, 0x100, RW)
    for cpu in (0, 1):
        assert m.hw.access(cpu, 1, m.root, BASE) == 0x100
    m.b.map_4k(BASE, 0x200, RW)
    assert m.hw.access(1, 1, m.root, BASE) == 0x100
    m.hw.tlbi_vale1is(0, 1, BASE)                      # broadcast: both CPUs
    for cpu in (0, 1):
        assert m.hw.probe(cpu, 1, BASE) is None
        assert m.hw.access(cpu, 1, m.root, BASE) == 0x200
    assert m.hw.counters(1)["flush.tlbi_vale1is.received"] == 1
    assert m.hw.totals()["flush.tlbi_vale1is.issued"] == 1


def test_flush_kinds_scope():
    m = make("arm64")
    m.b.map_range(BASE, 0x100, 64 * PAGE, RW)
    k, a, n = events([BASE + i * PAGE for i in range(64)])
    m.hw.run(0, 1, m.root, k, a, n)
    m.hw.run(0, 2, m.root, k, a, n)
    m.hw.tlbi_aside1is(0, 1)
    assert m.hw.probe(0, 1, BASE + 63 * PAGE) is None
    assert m.hw.probe(0, 2, BASE + 63 * PAGE) is not None
    m.hw.tlbi_vmalle1is(0)
    assert m.hw.probe(0, 2, BASE + 63 * PAGE) is None


def test_range_tlbi_covers_exactly():
    m = make("arm64", "neoverse_v2")
    m.b.map_range(BASE, 0x100, 80 * PAGE, RW)
    k, a, n = events([BASE + i * PAGE for i in range(80)])
    m.hw.run(0, 1, m.root, k, a, n)
    pages = m.hw.tlbi_rvae1is(0, 1, BASE, 1, 0)        # (0+1) * 2^(5+1) = 64 pages
    assert pages == 64
    assert m.hw.probe(0, 1, BASE + 63 * PAGE) is None
    assert m.hw.probe(0, 1, BASE + 64 * PAGE) is not None
    with pytest.raises(ValueError):
        make("arm64", "neoverse_n1").hw.tlbi_rvae1is(0, 1, BASE, 0, 0)


def test_huge_entry_flushed_by_any_address_in_it(arch_name):
    m = make(arch_name)
    m.b.map_2m(BASE, 0x200, RW)
    m.hw.access(0, 1, m.root, BASE + 0x1000)
    if arch_name == "x86_64":
        m.hw.invlpg(0, BASE + 0x15000, 1)
    else:
        m.hw.tlbi_vae1is(0, 1, BASE + 0x15000)
    assert m.hw.probe(0, 1, BASE + 0x1000) is None


def test_merged_counts_hit_l1(arch_name):
    m = make(arch_name)
    m.b.map_4k(BASE, 0x100, RW)
    k, a, n = events([BASE], kind=WRITE, count=10)
    m.hw.run(0, 1, m.root, k, a, n)
    c = m.hw.counters(0)
    assert c["dTLB-stores"] == 10
    assert c["dTLB-store-misses"] == 1


def test_flush_all_and_memory():
    m = make("x86_64", nr_cpus=4)
    m.b.map_4k(BASE, 0x100, RW)
    for cpu in range(4):
        m.hw.access(cpu, 1, m.root, BASE, READ)
    m.hw.flush_all()
    assert all(m.hw.probe(cpu, 1, BASE) is None for cpu in range(4))
    assert m.hw.memory_bytes() < 1 << 20
    assert np.count_nonzero(m.hw.tag) == 0


def test_split_itlb_and_dtlb():
    from emu.arch import PROT_EXEC
    m = make("x86_64", "skylake")
    m.b.map_4k(BASE, 0x100, PROT_READ | PROT_EXEC)
    m.hw.access(0, 1, m.root, BASE, READ)              # fills the dTLB (and the STLB)
    m.hw.access(0, 1, m.root, BASE, 2)                 # fetch: iTLB miss, STLB hit
    c = m.hw.counters(0)
    assert c["iTLB-loads"] == 1 and c["emu.l1_itlb_misses"] == 1
    assert c["itlb_misses.stlb_hit"] == 1 and c["itlb_misses.walk_completed"] == 0
    m.hw.access(0, 1, m.root, BASE, 2)
    assert m.hw.counters(0)["emu.l1_itlb_misses"] == 1  # now an iTLB hit


def test_profile_geometry_errors(tmp_path):
    from emu.arch.profile import load_profile
    from emu.errors import EmuError
    bad = tmp_path / "odd.toml"
    bad.write_text('arch = "arm64"\n[[tlb]]\nname="x"\nside="unified"\nlevel=1\n'
                   'sizes=["4k"]\nentries=15\nways=5\n')
    with pytest.raises(EmuError, match="power of two"):
        load_profile(str(bad))
    with pytest.raises(ValueError):
        make("x86_64", "neoverse_n1")


def test_coalesced_entry_keeps_per_pte_dirty_bits():
    from emu.arch import x86_64 as X86
    m = make("x86_64", "zen4")
    m.b.map_range(BASE, 0x2000, 4 * PAGE, RW)
    for i in range(4):
        m.hw.access(0, 1, m.root, BASE + i * PAGE, WRITE)
        assert m.b.get(BASE + i * PAGE, 3) & X86.D, f"page {i} written but not dirty"
    m.hw.access(0, 1, m.root, BASE, WRITE)
    assert m.hw.probe(0, 1, BASE + 3 * PAGE) == (0x2003, "16k")
