"""Linux's TLB-flush policy per architecture, applied with emu.hw's flush primitives.

x86 (arch/x86/mm/tlb.c, flush_tlb_mm_range/flush_tlb_func): a range of more than
``tlb_single_page_flush_ceiling`` (33) strides becomes a full flush of the
mm's PCID (a CR3 reload); otherwise one INVLPG per stride.  When another CPU
is in the mm's cpumask, flush_tlb_multi runs the flush on every CPU of the mask
(an IPI to each other one); else the issuing CPU flushes alone if it has the mm
loaded.  With a ``TlbState`` (the kernel passes one) the targets follow
native_flush_tlb_multi and should_flush_tlb: without ``freed_tables`` no IPI to
a lazy-TLB CPU nor to one that runs another mm (except once a second, when the
mask is trimmed); a CPU that gets an IPI for an mm it no longer runs clears
itself from the mask; a lazy one switches to init_mm.  Per CPU, tlb_gen decides
between the partial flush and a full one (a CPU that missed a generation flushes
everything), and switch_mm flushes a PCID whose generation is stale.

arm64 (arch/arm64/include/asm/tlbflush.h, __flush_tlb_range): broadcast TLBI,
no IPIs.  __flush_tlb_range_limit_excess: without FEAT_TLBIRANGE a range of
``MAX_DVM_OPS`` (PTRS_PER_PTE = 512) strides or more, with it more than
MAX_TLBI_RANGE_PAGES pages, becomes TLBI ASIDE1IS.  Otherwise
__flush_tlb_range_op: one TLBI VAE1IS (VALE1IS when only leaf entries changed)
per stride without FEAT_TLBIRANGE or for a single page, else RVAE1IS/RVALE1IS
operations of (NUM+1)*2^(5*SCALE+1) pages with SCALE falling from 3 (Linux 6.9+).

Each flush returns the vmstat increments Linux keeps under CONFIG_DEBUG_TLBFLUSH.
Only x86 counts them (count_vm_tlb_event is called from arch/x86/mm/tlb.c
alone): nr_tlb_remote_flush per flush_tlb_multi, nr_tlb_remote_flush_received
per IPI, nr_tlb_local_flush_all/_one only for the issuing CPU's own flush.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from emu.hw import Hardware

PAGE_SHIFT = 12
PMD_SHIFT = 21
PUD_SHIFT = 30
tlb_single_page_flush_ceiling = 33
MAX_DVM_OPS = 512                       # PTRS_PER_PTE with 4 KiB pages
MAX_TLBI_RANGE_PAGES = (31 + 1) << (5 * 3 + 1)
HZ_NS = 1_000_000_000                   # should_trim_cpumask: once a second (jiffies + HZ)


def _stats() -> dict[str, int]:
    return {"nr_tlb_remote_flush": 0, "nr_tlb_remote_flush_received": 0,
            "nr_tlb_local_flush_all": 0, "nr_tlb_local_flush_one": 0}


@dataclass
class TlbState:
    """x86 per-CPU TLB state (cpu_tlbstate) and per-mm generations (context.tlb_gen).

    ``loaded[cpu]`` is the ASID the CPU has loaded (None: init_mm), ``lazy`` the CPUs
    in lazy-TLB mode, ``seen[(cpu, asid)]`` the generation the CPU's TLB holds for
    that mm, ``gen[asid]`` the mm's generation, ``next_trim[asid]`` when the mm's
    cpumask is next trimmed (ns of simulated time).
    """

    loaded: dict[int, int | None] = field(default_factory=dict)
    lazy: set[int] = field(default_factory=set)
    seen: dict[tuple[int, int], int] = field(default_factory=dict)
    gen: dict[int, int] = field(default_factory=dict)
    next_trim: dict[int, int] = field(default_factory=dict)
    now_ns: int = 0

    def should_trim_cpumask(self, asid: int) -> bool:
        """arch/x86/mm/tlb.c should_trim_cpumask(): true at most once a second per mm."""
        nxt = self.next_trim.setdefault(asid, self.now_ns + HZ_NS)
        if self.now_ns > nxt:
            self.next_trim[asid] = self.now_ns + HZ_NS
            return True
        return False

    def should_flush_tlb(self, cpu: int, asid: int, trim: bool) -> bool:
        """arch/x86/mm/tlb.c should_flush_tlb(): skip lazy CPUs and, unless trimming,
        CPUs that have another mm loaded."""
        if cpu in self.lazy:
            return False
        if self.loaded.get(cpu) == asid:
            return True
        return trim


def switch_mm(hw: Hardware | None, state: TlbState, cpu: int, asid: int) -> bool:
    """switch_mm_irqs_off() to the mm with ``asid`` on ``cpu``; True if it flushed.

    Leaving lazy mode or coming back to an mm whose generation moved on while the
    CPU ran something else reloads CR3 with a flush of that PCID (each mm keeps
    its own PCID in the model, so the first load finds nothing cached).
    """
    if state.loaded.get(cpu) == asid and cpu not in state.lazy:
        return False
    state.lazy.discard(cpu)
    state.loaded[cpu] = asid
    gen = state.gen.setdefault(asid, 0)
    seen = state.seen.get((cpu, asid))
    state.seen[(cpu, asid)] = gen
    if seen is not None and seen < gen and hw is not None and hw.arch.name == "x86_64":
        hw.cr3_flush(cpu, asid)
        return True
    return False


def _x86_func(hw: Hardware, cpu: int, asid: int, addrs: list[int] | None, local: bool,
              st: dict[str, int], state: TlbState | None, new_gen: int) -> None:
    """flush_tlb_func() on ``cpu`` for an mm it has loaded (not lazy)."""
    if state is not None:
        seen = state.seen.get((cpu, asid), new_gen - 1)
        if seen >= new_gen:
            return                                   # already flushed up to this generation
        if seen != new_gen - 1:
            addrs = None                             # missed a generation: full flush
        state.seen[(cpu, asid)] = new_gen
    if addrs is None:
        hw.cr3_flush(cpu, asid)
        if local:
            st["nr_tlb_local_flush_all"] += 1
    else:
        for va in addrs:
            hw.invlpg(cpu, va, asid)
        if local:
            st["nr_tlb_local_flush_one"] += len(addrs)


def _x86_flush(hw: Hardware, asid: int, cpus: Iterable[int], addrs: list[int] | None,
               this_cpu: int | None, freed_tables: bool = False,
               state: TlbState | None = None) -> dict[str, int]:
    st = _stats()
    mask = cpus if isinstance(cpus, set) else set(cpus)
    targets = sorted(mask)
    new_gen = 0
    if state is not None:
        new_gen = state.gen.get(asid, 0) + 1             # inc_mm_tlb_gen()
        state.gen[asid] = new_gen
    if any(c != this_cpu for c in targets):              # flush_tlb_multi()
        st["nr_tlb_remote_flush"] += 1
        trim = state.should_trim_cpumask(asid) if state is not None else False
        for c in targets:
            if c == this_cpu:
                _x86_func(hw, c, asid, addrs, True, st, state, new_gen)
                continue
            if state is not None and not freed_tables \
                    and not state.should_flush_tlb(c, asid, trim):
                continue
            hw.ipi(this_cpu, c)
            st["nr_tlb_remote_flush_received"] += 1
            if state is not None:
                if state.loaded.get(c) != asid:          # switched away: leave the mask
                    mask.discard(c)
                    continue
                if c in state.lazy:                      # lazy: switch to init_mm
                    state.lazy.discard(c)
                    state.loaded[c] = None
                    continue
            _x86_func(hw, c, asid, addrs, False, st, state, new_gen)
    elif this_cpu is not None and this_cpu in mask and (
            state is None or state.loaded.get(this_cpu) == asid):
        _x86_func(hw, this_cpu, asid, addrs, True, st, state, new_gen)
    return st


def _tlbi_range_ops(start: int, pages: int) -> list[tuple[int, int, int]]:
    """(va, scale, num) range operations for ``pages`` pages from ``start``, SCALE
    falling from 3 with NUM clamped to 31 (__flush_tlb_range_op, Linux 6.9+); an odd
    last page is left to a single TLBI."""
    ops = []
    scale = 3
    while pages > 1 and scale >= 0:
        num = (min(pages, (31 + 1) << (5 * scale + 1)) >> (5 * scale + 1)) - 1
        if num >= 0:
            n = (num + 1) << (5 * scale + 1)
            ops.append((start, scale, num))
            start += n << PAGE_SHIFT
            pages -= n
        scale -= 1
    return ops


def __flush_tlb_range_limit_excess(tlbi_range: bool, pages: int, stride: int) -> bool:
    """arm64: too many pages for range operations (more than MAX_TLBI_RANGE_PAGES, the
    comparison of Linux 6.10+), or for one TLBI per stride (MAX_DVM_OPS or more)."""
    if tlbi_range:
        return pages > MAX_TLBI_RANGE_PAGES
    return pages >= (MAX_DVM_OPS * stride) >> PAGE_SHIFT


def flush_tlb_range(hw: Hardware, mm_asid: int, cpus: Iterable[int], start: int, end: int,
                    stride_shift: int = PAGE_SHIFT, last_level_only: bool = False,
                    this_cpu: int | None = None, freed_tables: bool = False,
                    state: TlbState | None = None) -> dict[str, int]:
    """Flush [start, end) of the mm with ASID/PCID ``mm_asid`` wherever it may be cached.

    ``cpus`` is the mm's cpumask (a set the kernel passes live, so x86 CPUs can leave
    it); ``this_cpu`` the vCPU doing the flush (None for a CPU that runs no vCPU,
    such as khugepaged's).  ``last_level_only`` says only leaf entries changed:
    arm64 then uses the VALE1IS forms that keep walk caches.  ``freed_tables``
    (x86) sends IPIs to lazy and switched-away CPUs too.
    """
    if end <= start:
        return _stats()
    stride = 1 << stride_shift
    start &= ~(stride - 1)
    if hw.arch.name == "x86_64":
        n = (end - start) >> stride_shift
        addrs = None if n > tlb_single_page_flush_ceiling else list(range(start, end, stride))
        return _x86_flush(hw, mm_asid, cpus, addrs, this_cpu, freed_tables, state)
    end = (end + stride - 1) & ~(stride - 1)         # round_up(end, stride)
    pages = (end - start) >> PAGE_SHIFT
    if __flush_tlb_range_limit_excess(hw.profile.tlbi_range, pages, stride):
        hw.tlbi_aside1is(this_cpu, mm_asid)
        return _stats()
    va = start
    while pages > 0:
        if not hw.profile.tlbi_range or pages == 1:
            if last_level_only:
                hw.tlbi_vale1is(this_cpu, mm_asid, va)
            else:
                hw.tlbi_vae1is(this_cpu, mm_asid, va)
            va += stride
            pages -= stride >> PAGE_SHIFT
            continue
        for op_va, scale, num in _tlbi_range_ops(va, pages):
            covered = hw.tlbi_rvae1is(this_cpu, mm_asid, op_va, scale, num, last_level_only)
            va += covered << PAGE_SHIFT
            pages -= covered
    return _stats()


def flush_tlb_mm(hw: Hardware, asid: int, cpus: Iterable[int],
                 this_cpu: int | None = None, state: TlbState | None = None) -> dict[str, int]:
    """Flush every translation of the mm: x86 CR3 reload + IPIs (freed_tables, as
    flush_tlb_mm passes); arm64 TLBI ASIDE1IS."""
    if hw.arch.name == "x86_64":
        return _x86_flush(hw, asid, cpus, None, this_cpu, True, state)
    hw.tlbi_aside1is(this_cpu, asid)
    return _stats()


def flush_tlb_page(hw: Hardware, asid: int, cpus: Iterable[int], va: int,
                   this_cpu: int | None = None, state: TlbState | None = None) -> dict[str, int]:
    """Flush one base page (a leaf change): x86 INVLPG (+IPIs), arm64 TLBI VALE1IS."""
    return flush_tlb_range(hw, asid, cpus, va, va + (1 << PAGE_SHIFT), PAGE_SHIFT,
                           last_level_only=True, this_cpu=this_cpu, state=state)


def tlb_remove_table_sync_one(hw: Hardware, this_cpu: int | None) -> int:
    """mm/mmu_gather.c tlb_remove_table_sync_one() with MMU_GATHER_RCU_TABLE_FREE (x86
    and arm64): smp_call_function() -- an IPI to every other online CPU, so no
    lockless walker (GUP-fast) still reads a table being freed.  Returns the IPIs."""
    n = 0
    for c in range(hw.nr_cpus):
        if c != this_cpu:
            hw.ipi(this_cpu, c)
            n += 1
    return n


# ---------------------------------------------------------------- mmu_gather

@dataclass
class MmuGather:
    """struct mmu_gather's range tracking (include/asm-generic/tlb.h): the span of the
    entries actually cleared or changed, which levels they were at, and whether page
    tables were freed.  ``tlb_finish_mmu`` flushes that span, or nothing."""

    start: int = 1 << 64
    end: int = 0
    cleared_ptes: bool = False
    cleared_pmds: bool = False
    cleared_puds: bool = False
    freed_tables: bool = False

    def _adjust(self, addr: int, size: int) -> None:
        self.start = min(self.start, addr)
        self.end = max(self.end, addr + size)

    def tlb_flush_pte_range(self, addr: int, size: int) -> None:
        self._adjust(addr, size)
        self.cleared_ptes = True

    def tlb_flush_pmd_range(self, addr: int, size: int) -> None:
        self._adjust(addr, size)
        self.cleared_pmds = True

    def tlb_flush_pud_range(self, addr: int, size: int) -> None:
        self._adjust(addr, size)
        self.cleared_puds = True

    def free_table(self, pte_table: bool, addr: int) -> None:
        """pte_free_tlb (a PTE table: its PMD entry changed) or pmd/pud_free_tlb (an
        upper table): one page at ``addr`` joins the range, tables were freed."""
        self.freed_tables = True
        if pte_table:
            self.tlb_flush_pmd_range(addr, 1 << PAGE_SHIFT)
        else:
            self.tlb_flush_pud_range(addr, 1 << PAGE_SHIFT)

    @property
    def needs_flush(self) -> bool:
        return self.freed_tables or self.cleared_ptes or self.cleared_pmds or self.cleared_puds

    def unmap_shift(self) -> int:
        """tlb_get_unmap_shift(): the stride of the lowest level that changed."""
        if self.cleared_ptes:
            return PAGE_SHIFT
        if self.cleared_pmds:
            return PMD_SHIFT
        if self.cleared_puds:
            return PUD_SHIFT
        return PAGE_SHIFT
