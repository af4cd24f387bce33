"""The invariant checker (--check) finds each kind of broken book it claims to."""

import pytest
from scenario import ARCHS, HPAGE_PMD_SIZE, PAGE_SIZE, Scenario

from emu.checker import InvariantViolation

B = 1 << 30
ARCH = pytest.mark.parametrize("arch", ARCHS)


def _sim(arch):
    sim = Scenario(arch)
    p = sim.new_proc()
    sim.mmap(p, B, HPAGE_PMD_SIZE)
    sim.fault_range(p, B, 8)
    return sim, p


def _folio(sim, p, va):
    mm = sim.mm(p)
    return sim.kernel.folio_of_pfn(sim.kernel.arch.pfn(sim.kernel.pt.get_pte(mm, va)))


@ARCH
def test_a_consistent_model_passes(arch):
    sim, p = _sim(arch)
    sim.checker.check_all()
    assert sim.checker.full_checks == 1


@ARCH
@pytest.mark.parametrize("breakage, message", [
    ("mapcount", "page_mapcount"),
    ("refcount", "refcount"),
    ("rss", "MM_ANONPAGES"),
    ("overlap", "two folios"),
    ("table", "page table"),
])
def test_broken_books_are_found(arch, breakage, message):
    sim, p = _sim(arch)
    k = sim.kernel
    f = _folio(sim, p, B + PAGE_SIZE)
    if breakage == "mapcount":
        f.page_mapcount[0] += 1
        f.refcount += 1
    elif breakage == "refcount":
        f.refcount += 1
    elif breakage == "rss":
        sim.mm(p).counters["MM_ANONPAGES"] += 1
    elif breakage == "overlap":
        # a folio whose frames run into the next folio's: two owners of one frame
        heads = sorted(k.folios)
        a = next(h for h, nxt in zip(heads, heads[1:], strict=False) if nxt == h + 1)
        k.folios[a].order = 1
    elif breakage == "table":
        mm = sim.mm(p)
        table = k.pt.pte_table(mm, B)
        k.physmem.pgtables.slot_of_pfn[f.pfn] = k.physmem.pgtables.slot_of_pfn[table]
    check = sim.checker._check_owners if breakage in ("overlap", "table") \
        else sim.checker.check_all
    with pytest.raises(InvariantViolation, match=message):
        check()


@ARCH
def test_stale_tlb_entry_to_a_freed_frame_is_found(arch):
    """A TLB entry survives a zap that skipped its flush: the frame went back to the
    buddy while the entry still reaches it."""
    sim, p = _sim(arch)
    k = sim.kernel
    sim.read(p, B + PAGE_SIZE)                       # the entry is in p's CPU's TLB
    f = _folio(sim, p, B + PAGE_SIZE)
    mm = sim.mm(p)
    k.pt.clear_pte(mm, B + PAGE_SIZE)                # no flush
    k.folio_remove_rmap_ptes(f, mm, 0)               # freed
    with pytest.raises(InvariantViolation, match="TLB entry .* freed"):
        sim.checker.check_tlbs()
