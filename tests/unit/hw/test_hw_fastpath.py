"""The fast paths of emu.hw.kernels choose exactly what the plain scans choose.

Fully associative arrays (more than FA_MIN_WAYS ways in one set) use an LRU
list and a hash index instead of scanning every way.  Building the same
Hardware with FA_MIN_WAYS raised past every array turns that off, so the two
implementations run side by side here: every counter, TLB entry and
descriptor must come out identical, through fills, evictions, flushes of
every kind (which leave stale slots in the hash index) and page-table
changes without a flush.
"""

from dataclasses import replace

import numpy as np
import pytest
from hw_test_helpers import BASE, make
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.arch import PROT_EXEC, PROT_READ, PROT_WRITE
from emu.arch.profile import PscSpec, TlbSpec, load_profile
from emu.hw import kernels as K

RW = PROT_READ | PROT_WRITE
PAGE = 0x1000


def fa_profile(arch_name: str, l1_ways: int = 17, l2_ways: int = 20):
    """Small fully associative L1s and L2, so a few dozen pages exercise eviction."""
    base = load_profile(f"generic-{arch_name}")
    sizes = (0, 2, 3, 5) if arch_name == "arm64" else (0, 3, 5)
    return replace(base, tlbs=(
        TlbSpec("L1i", "instr", 1, sizes, l1_ways, l1_ways),
        TlbSpec("L1d", "data", 1, sizes, l1_ways + 1, l1_ways + 1),
        TlbSpec("L2", "unified", 2, sizes, l2_ways, l2_ways),
    ), pscs=(PscSpec("pde", 2, 2, 2),))


def pair(arch_name, profile, nr_cpus, monkeypatch):
    """(fast, plain) machines with identical page tables."""
    fast = make(arch_name, profile, nr_cpus=nr_cpus)
    with monkeypatch.context() as mp:
        mp.setattr(K, "FA_MIN_WAYS", 1 << 30)
        plain = make(arch_name, profile, nr_cpus=nr_cpus)
    assert (fast.hw.probes[:, K.P_HBASE] >= 0).any()
    assert (plain.hw.probes[:, K.P_HBASE] < 0).all()
    return fast, plain


def map_pages(m, arch_name, npages, seed):
    rng = np.random.default_rng(seed)
    for i in range(npages):
        prot = RW | (PROT_EXEC if rng.random() < 0.5 else 0)
        if rng.random() < 0.1:
            prot = PROT_READ
        m.b.map_4k(BASE + i * PAGE, 0x4000 + i, prot, young=bool(rng.random() < 0.5),
                   dirty=bool(rng.random() < 0.3))
    m.b.map_2m(BASE + (1 << 21) * 8, 0x8000, RW | PROT_EXEC)


def same(fast, plain, nr_cpus):
    for c in range(nr_cpus):
        assert fast.hw.counters(c) == plain.hw.counters(c)
    assert np.array_equal(fast.hw.tag, plain.hw.tag)
    assert np.array_equal(fast.hw.data, plain.hw.data)
    assert np.array_equal(fast.pm.pgtables.tables, plain.pm.pgtables.tables)


def flush(m, arch_name, op, va, cpu):
    hw = m.hw
    if arch_name == "x86_64":
        (hw.invlpg, lambda c, v: hw.cr3_flush(c, 1), lambda c, v: hw.invpcid_all(c),
         lambda c, v: hw.invpcid_single(c, 1, v))[op % 4](cpu, va)
    else:
        (lambda c, v: hw.tlbi_vae1is(c, 1, v), lambda c, v: hw.tlbi_vale1is(c, 1, v),
         lambda c, v: hw.tlbi_aside1is(c, 1), lambda c, v: hw.tlbi_vmalle1is(c))[op % 4](cpu, va)


@pytest.mark.parametrize("profile", ["fa", "neoverse_n1", "zen4"])
def test_fast_fully_associative_matches_scan(arch_name, profile, monkeypatch):
    if profile != "fa" and load_profile(profile).arch != arch_name:
        pytest.skip("profile of the other architecture")
    prof = fa_profile(arch_name) if profile == "fa" else load_profile(profile)
    fast, plain = pair(arch_name, prof, 2, monkeypatch)
    npages = 160
    for m in (fast, plain):
        map_pages(m, arch_name, npages, seed=5)
    rng = np.random.default_rng(7)
    n = 40_000
    # Random pages, a cyclic window just over the L1 size (LRU's worst case) and 2M hits.
    r = rng.random(n)
    page = np.where(r < 0.5, rng.integers(0, npages, n),
                    np.where(r < 0.85, np.arange(n) % 23, rng.integers(0, 512, n) + 8 * 512))
    addrs = (BASE + (page << 12)).astype(np.uint64)
    kinds = rng.choice(np.array([0, 1, 2], dtype=np.uint8), n, p=[0.6, 0.3, 0.1])
    counts = rng.integers(1, 3, n).astype(np.uint64)
    pos = 0
    while pos < n:
        stop = min(n, pos + int(rng.integers(1, 3000)))
        cpu = int(rng.integers(0, 2))
        res = [m.hw.run(cpu, 1, m.root, kinds, addrs, counts, pos, stop) for m in (fast, plain)]
        assert res[0] == res[1]
        assert fast.hw.fault == plain.hw.fault
        pos = res[0] + 1 if res[0] < stop else stop
        if rng.random() < 0.3:
            op, va = int(rng.integers(0, 4)), int(addrs[int(rng.integers(0, n))])
            for m in (fast, plain):
                flush(m, arch_name, op, va, cpu)
    same(fast, plain, 2)


ops = st.lists(st.tuples(st.sampled_from(["run", "run", "run", "flush", "unmap"]),
                         st.integers(0, 63), st.integers(0, 3), st.integers(0, 2)),
               min_size=5, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(arch_name=st.sampled_from(["x86_64", "arm64"]), seq=ops, seed=st.integers(0, 1000))
def test_fast_path_property(arch_name, seq, seed, monkeypatch):
    """Short random programs of runs, flushes and unmaps: fast and plain never diverge."""
    fast, plain = pair(arch_name, fa_profile(arch_name), 1, monkeypatch)
    for m in (fast, plain):
        map_pages(m, arch_name, 64, seed)
    rng = np.random.default_rng(seed)
    for what, p, op, kind in seq:
        if what == "run":
            pages = (p + rng.integers(0, 40, 200)) % 64
            addrs = (BASE + (pages << 12)).astype(np.uint64)
            kinds = np.full(200, kind, dtype=np.uint8)
            counts = np.ones(200, dtype=np.uint64)
            pos = 0
            while pos < 200:
                res = [m.hw.run(0, 1, m.root, kinds, addrs, counts, pos) for m in (fast, plain)]
                assert res[0] == res[1]
                pos = res[0] + 1
        elif what == "flush":
            for m in (fast, plain):
                flush(m, arch_name, op, BASE + p * PAGE, 0)
        else:
            for m in (fast, plain):
                m.b.set(BASE + p * PAGE, 3, 0)
    same(fast, plain, 1)
