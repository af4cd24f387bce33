"""The walker: A/D (x86), AF/DBM (arm64), faults at every level, walk caches, resumption."""

from dataclasses import replace

import numpy as np
from hw_test_helpers import BASE, FETCH, READ, WRITE, events, make

from emu.arch import PROT_EXEC, PROT_READ, PROT_WRITE
from emu.arch import arm64 as A64
from emu.arch import x86_64 as X86

RW = PROT_READ | PROT_WRITE


def test_translation_and_fault_at_each_level(arch_name):
    m = make(arch_name)
    va = BASE + 0x123000
    # level 0: an empty root
    assert m.hw.access(0, 1, m.root, va) is None
    assert (m.hw.fault.level, m.hw.fault.reason, m.hw.fault.va) == (0, "not-present", va)
    for lvl in (1, 2, 3):
        m.b.table_for(va, lvl)            # create tables down to this level, entry empty
        assert m.hw.access(0, 1, m.root, va) is None
        assert (m.hw.fault.level, m.hw.fault.reason) == (lvl, "not-present")
    m.b.map_4k(va, 0x777, RW)
    assert m.hw.access(0, 1, m.root, va) == 0x777


def test_write_protect_and_exec_faults(arch_name):
    m = make(arch_name)
    m.b.map_4k(BASE, 0x500, PROT_READ)
    m.b.map_2m(BASE + (2 << 20), 0x800, PROT_READ)
    assert m.hw.access(0, 1, m.root, BASE, WRITE) is None
    assert (m.hw.fault.level, m.hw.fault.reason, m.hw.fault.kind) == (3, "write-protect",
                                                                      "write")
    assert m.hw.access(0, 1, m.root, BASE + (2 << 20) + 0x5000, WRITE) is None
    assert (m.hw.fault.level, m.hw.fault.reason) == (2, "write-protect")
    assert m.hw.access(0, 1, m.root, BASE, FETCH) is None
    assert m.hw.fault.reason == "exec"
    m.b.map_4k(BASE + 0x1000, 0x501, PROT_READ | PROT_EXEC)
    assert m.hw.access(0, 1, m.root, BASE + 0x1000, FETCH) == 0x501


def test_permission_fault_after_tlb_fill_rewalks():
    """A read fills the TLB; a later write to the read-only page still faults."""
    m = make("x86_64")
    m.b.map_4k(BASE, 0x500, PROT_READ)
    assert m.hw.access(0, 1, m.root, BASE, READ) == 0x500
    assert m.hw.access(0, 1, m.root, BASE, WRITE) is None
    assert m.hw.fault.reason == "write-protect"
    # the kernel makes it writable without a flush (x86 re-walks on a permission miss)
    m.b.map_4k(BASE, 0x500, RW)
    assert m.hw.access(0, 1, m.root, BASE, WRITE) == 0x500


def test_x86_accessed_dirty():
    m = make("x86_64")
    va = BASE + 0x3000
    m.b.map_4k(va, 0x600, RW)
    assert m.hw.access(0, 1, m.root, va, READ) == 0x600
    pte = m.b.get(va, 3)
    assert pte & X86.A and not pte & X86.D
    for lvl in range(3):                               # A on every paging-structure entry
        assert m.b.get(va, lvl) & X86.A
    assert m.hw.access(0, 1, m.root, va, WRITE) == 0x600
    assert m.b.get(va, 3) & X86.D
    c = m.hw.counters(0)
    assert c["emu.dirty_assists"] == 1                 # D set through the TLB-hit path
    assert c["dtlb_store_misses.walk_completed"] == 0  # ... which is no TLB miss
    assert c["emu.ad_updates.dirty"] == 1
    # huge leaf: A and D land in the PDE
    m.b.map_2m(BASE + (2 << 20), 0x1000, RW)
    m.hw.access(0, 1, m.root, BASE + (2 << 20) + 0x4000, WRITE)
    pde = m.b.get(BASE + (2 << 20), 2)
    assert pde & X86.A and pde & X86.D and pde & X86.PS


def test_arm64_hafdbs():
    m = make("arm64")
    va = BASE + 0x7000
    m.b.map_4k(va, 0x900, RW)                          # AF=0, DBM=1, AP[2]=1: clean
    assert m.hw.access(0, 1, m.root, va, READ) == 0x900
    pte = m.b.get(va, 3)
    assert pte & A64.AF and pte & A64.RDONLY
    assert m.hw.access(0, 1, m.root, va, WRITE) == 0x900
    pte = m.b.get(va, 3)
    assert not pte & A64.RDONLY and m.arch.dirty(pte)   # DBM: hardware cleared AP[2]
    # read-only without DBM: a permission fault, descriptor untouched
    m.b.map_4k(va + 0x1000, 0x901, PROT_READ)
    before = m.b.get(va + 0x1000, 3)
    assert m.hw.access(0, 1, m.root, va + 0x1000, WRITE) is None
    assert m.hw.fault.reason == "write-protect"
    assert m.b.get(va + 0x1000, 3) == before


def test_arm64_without_hafdbs_faults_for_af_and_dirty():
    from hw_test_helpers import load_profile
    prof = replace(load_profile("generic-arm64"), hafdbs=False)
    m = make("arm64", prof)
    m.b.map_4k(BASE, 0x900, RW)
    assert m.hw.access(0, 1, m.root, BASE, READ) is None
    assert m.hw.fault.reason == "access-flag"
    m.b.set(BASE, 3, m.arch.mkyoung(m.b.get(BASE, 3)))
    assert m.hw.access(0, 1, m.root, BASE, READ) == 0x900
    assert m.hw.access(0, 1, m.root, BASE, WRITE) is None
    assert m.hw.fault.reason == "write-protect"


def test_bad_table_pointer(arch_name):
    m = make(arch_name)
    t = m.b.table_for(BASE, 3)
    # the PMD points at a frame that is no page table (a freed table, say)
    m.b.set(BASE, 2, m.arch.mk_table(t + 1000))
    assert m.hw.access(0, 1, m.root, BASE) is None
    assert (m.hw.fault.level, m.hw.fault.reason) == (3, "bad-table")


def test_walk_refs_and_walk_cache(arch_name):
    m = make(arch_name)
    m.b.map_range(BASE, 0x1000, 1 << 20, RW)
    m.hw.access(0, 1, m.root, BASE)
    c = m.hw.counters(0)
    assert c["emu.walk_refs"] == 4                   # cold: every level read once
    m.hw.access(0, 1, m.root, BASE + 0x1000)
    c = m.hw.counters(0)
    assert c["emu.walk_refs"] == 5                   # the PDE / L2 walk cache skips 3 levels
    hits = [v for k, v in c.items() if k.startswith(("emu.psc_hits", "emu.walk_cache_hits"))]
    assert sum(hits) == 1


def test_run_returns_fault_index_and_resumes(arch_name):
    m = make(arch_name)
    m.b.map_4k(BASE, 0x10, RW)
    m.b.map_4k(BASE + 0x1000, 0x11, RW)
    k, a, n = events([BASE, BASE + 0x1000, BASE + 0x2000, BASE], count=3)
    out = np.full(4, -1, dtype=np.int64)
    assert m.hw.run(0, 1, m.root, k, a, n, 0, 4, out) == 2
    assert m.hw.fault.va == BASE + 0x2000
    m.b.map_4k(BASE + 0x2000, 0x12, RW)               # the "kernel" handles the fault
    assert m.hw.run(0, 1, m.root, k, a, n, 2, 4, out) == 4
    assert list(out) == [0x10, 0x11, 0x12, 0x10]
    c = m.hw.counters(0)
    assert c["dTLB-loads"] == 12                      # each record counted once, x3 accesses
    assert c["emu.faults"] == 1


def test_non_memory_events_are_skipped(arch_name):
    m = make(arch_name)
    kinds = np.array([3, 4, 6], dtype=np.uint8)       # syscall, vcpu_start, mark
    z = np.zeros(3, dtype=np.uint64)
    assert m.hw.run(0, 1, m.root, kinds, z, z) == 3
    assert m.hw.counters(0)["dTLB-loads"] == 0


def test_dirty_read_only_pte_still_write_protects_through_the_tlb(arch_name):
    """A write-protected COW page keeps its dirty state; a read that filled the TLB
    must not let a later write through (found by the kernel model's fork tests)."""
    m = make(arch_name)
    m.b.map_4k(BASE, 0x500, PROT_READ, young=True, dirty=True)
    assert m.hw.access(0, 1, m.root, BASE, READ) == 0x500
    assert m.hw.access(0, 1, m.root, BASE, WRITE) is None
    assert m.hw.fault.reason == "write-protect"
