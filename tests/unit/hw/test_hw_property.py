"""Property: the TLBs never serve a translation a fresh walk would not give,
unless the page tables changed without a flush (then only an older translation)."""

from hw_test_helpers import BASE, make
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.arch import PROT_READ, PROT_WRITE
from emu.kernel import tlbflush

RW = PROT_READ | PROT_WRITE
PAGE = 0x1000
NPAGES = 16

# Few pages mostly, so accesses, changes and flushes meet on the same page.
page = st.integers(0, 3) | st.integers(0, NPAGES - 1)
cpu = st.integers(0, 1)
BUILD = {
    "access": st.tuples(st.just("access"), page, st.integers(0, 1), cpu),
    "remap": st.tuples(st.just("remap"), page, st.integers(0, 63), st.booleans(), cpu),
    "unmap": st.tuples(st.just("unmap"), page, st.booleans(), cpu),
    "flush_mm": st.tuples(st.just("flush_mm"), cpu),
    "flush_range": st.tuples(st.just("flush_range"), page, st.integers(1, 20), cpu),
}
# Weighted: whole-mm and range flushes are rare, or they would hide every stale entry.
op = st.sampled_from(["access"] * 6 + ["remap"] * 3 + ["unmap", "flush_mm", "flush_range"]
                     ).flatmap(BUILD.__getitem__)


def machine(arch_name, profile):
    # Fresh page tables per example, but one compiled/allocated Hardware per profile.
    m = make(arch_name, profile, nr_cpus=2)
    return m


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from([("x86_64", "generic-x86_64"), ("x86_64", "zen4"),
                             ("arm64", "generic-arm64"), ("arm64", "neoverse_n1")]),
       cont=st.booleans(), ops=st.lists(op, min_size=20, max_size=80))
def test_tlb_agrees_with_walk(arch, cont, ops):
    arch_name, profile = arch
    m = machine(arch_name, profile)
    use_cont = cont and arch_name == "arm64"
    current: list[int | None] = []
    for i in range(NPAGES):
        pfn = 0x4000 + i
        m.b.map_4k(BASE + i * PAGE, pfn, RW, cont=use_cont)
        current.append(pfn)
    allowed = [{p} for p in current]

    def flushed(i):
        allowed[i] = {current[i]}

    for o in ops:
        if o[0] == "access":
            _, i, kind, cpu = o
            got = m.hw.access(cpu, 1, m.root, BASE + i * PAGE, kind)
            if current[i] is not None:
                assert got is not None, f"fault on mapped page {i}: {m.hw.fault}"
            if got is not None:
                assert got in allowed[i], (i, got, allowed[i])
            assert m.b.soft_walk(BASE + i * PAGE) == (
                None if current[i] is None else (current[i], 3))
        elif o[0] == "remap":
            _, i, pfn_sel, flush, cpu = o
            new = 0x4000 + pfn_sel
            m.b.map_4k(BASE + i * PAGE, new, RW, cont=use_cont)
            current[i] = new
            allowed[i].add(new)
            if flush:
                tlbflush.flush_tlb_page(m.hw, 1, {0, 1}, BASE + i * PAGE, this_cpu=cpu)
                flushed(i)
        elif o[0] == "unmap":
            _, i, flush, cpu = o
            m.b.set(BASE + i * PAGE, 3, 0)
            current[i] = None
            allowed[i].add(None)
            if flush:
                tlbflush.flush_tlb_page(m.hw, 1, {0, 1}, BASE + i * PAGE, this_cpu=cpu)
                flushed(i)
        elif o[0] == "flush_mm":
            tlbflush.flush_tlb_mm(m.hw, 1, {0, 1}, this_cpu=o[1])
            for i in range(NPAGES):
                flushed(i)
        else:
            _, i, n, cpu = o
            end = min(NPAGES, i + n)
            tlbflush.flush_tlb_range(m.hw, 1, {0, 1}, BASE + i * PAGE, BASE + end * PAGE,
                                     this_cpu=cpu)
            for j in range(i, end):
                flushed(j)
