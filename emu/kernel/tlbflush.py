"""Linux's TLB-flush policy per architecture, applied with emu.hw's flush primitives.

x86 (arch/x86/mm/tlb.c, flush_tlb_mm_range): a range of more than
``tlb_single_page_flush_ceiling`` (33) strides becomes a full flush of the
mm's PCID (a CR3 reload); otherwise one INVLPG per stride.  Every other CPU in
the mm's cpumask gets an IPI and runs the same flush locally; the issuing CPU
flushes locally only if it is in the mask.

arm64 (arch/arm64/include/asm/tlbflush.h, __flush_tlb_range): broadcast TLBI,
no IPIs.  Without FEAT_TLBIRANGE a range of ``MAX_DVM_OPS`` (PTRS_PER_PTE = 512)
strides or more becomes TLBI ASIDE1IS; with it, ranges of at least
MAX_TLBI_RANGE_PAGES do.  Otherwise one TLBI VAE1IS (VALE1IS when only leaf
entries changed) per stride, or RVAE1IS/RVALE1IS operations covering
(NUM+1)*2^(5*SCALE+1) pages each, SCALE growing from 0.

Each call returns the vmstat increments Linux keeps under CONFIG_DEBUG_TLBFLUSH
(nr_tlb_remote_flush, nr_tlb_remote_flush_received, nr_tlb_local_flush_all,
nr_tlb_local_flush_one) so the kernel model can add them to its stats.
"""

from __future__ import annotations

from collections.abc import Iterable

from emu.hw import Hardware

PAGE_SHIFT = 12
tlb_single_page_flush_ceiling = 33
MAX_DVM_OPS = 512                       # PTRS_PER_PTE with 4 KiB pages
MAX_TLBI_RANGE_PAGES = (31 + 1) << (5 * 3 + 1)


def _stats() -> dict[str, int]:
    return {"nr_tlb_remote_flush": 0, "nr_tlb_remote_flush_received": 0,
            "nr_tlb_local_flush_all": 0, "nr_tlb_local_flush_one": 0}


def _x86_local(hw: Hardware, cpu: int, asid: int, addrs: list[int] | None,
               st: dict[str, int]) -> None:
    if addrs is None:
        hw.cr3_flush(cpu, asid)
        st["nr_tlb_local_flush_all"] += 1
    else:
        for va in addrs:
            hw.invlpg(cpu, va, asid)
        st["nr_tlb_local_flush_one"] += len(addrs)


def _x86_flush(hw: Hardware, asid: int, cpus: Iterable[int], addrs: list[int] | None,
               this_cpu: int | None) -> dict[str, int]:
    st = _stats()
    targets = sorted(set(cpus))
    remote = [c for c in targets if c != this_cpu]
    if this_cpu is not None and this_cpu in targets:
        _x86_local(hw, this_cpu, asid, addrs, st)
    if remote:
        st["nr_tlb_remote_flush"] += 1
        for c in remote:
            hw.ipi(this_cpu, c)
            st["nr_tlb_remote_flush_received"] += 1
            _x86_local(hw, c, asid, addrs, st)
    return st


def _tlbi_range_ops(start: int, pages: int) -> list[tuple[int, int, int]]:
    """(va, scale, num) range operations covering ``pages`` pages from ``start``."""
    ops = []
    scale = 0
    while pages > 0 and scale <= 3:
        num = ((pages >> (5 * scale + 1)) & 31) - 1
        if num >= 0:
            n = (num + 1) << (5 * scale + 1)
            ops.append((start, scale, num))
            start += n << PAGE_SHIFT
            pages -= n
        scale += 1
    return ops


def flush_tlb_range(hw: Hardware, mm_asid: int, cpus: Iterable[int], start: int, end: int,
                    stride_shift: int = PAGE_SHIFT, last_level_only: bool = False,
                    this_cpu: int | None = None) -> dict[str, int]:
    """Flush [start, end) of the mm with ASID/PCID ``mm_asid`` wherever it may be cached.

    ``cpus`` is the mm's cpumask; ``this_cpu`` the vCPU doing the flush (None
    for a CPU that runs no vCPU, such as khugepaged's).  ``last_level_only``
    says only leaf entries changed (no table was freed): arm64 then uses the
    VALE1IS forms that keep walk caches.
    """
    if end <= start:
        return _stats()
    stride = 1 << stride_shift
    start &= ~(stride - 1)
    if hw.arch.name == "x86_64":
        n = (end - start) >> stride_shift
        if n > tlb_single_page_flush_ceiling:
            return _x86_flush(hw, mm_asid, cpus, None, this_cpu)
        return _x86_flush(hw, mm_asid, cpus, list(range(start, end, stride)), this_cpu)
    st = _stats()
    pages = (end - start) >> PAGE_SHIFT
    if ((not hw.profile.tlbi_range and (end - start) >= MAX_DVM_OPS * stride)
            or pages >= MAX_TLBI_RANGE_PAGES):
        hw.tlbi_aside1is(this_cpu, mm_asid)
        st["nr_tlb_local_flush_all"] += 1
        return st
    va = start
    while pages > 0:
        if not hw.profile.tlbi_range or pages == 1 or stride != 1 << PAGE_SHIFT:
            if last_level_only:
                hw.tlbi_vale1is(this_cpu, mm_asid, va)
            else:
                hw.tlbi_vae1is(this_cpu, mm_asid, va)
            st["nr_tlb_local_flush_one"] += 1
            va += stride
            pages -= stride >> PAGE_SHIFT
            continue
        ops = _tlbi_range_ops(va, pages & ~1 if pages & 1 else pages)
        for op_va, scale, num in ops:
            covered = hw.tlbi_rvae1is(this_cpu, mm_asid, op_va, scale, num, last_level_only)
            st["nr_tlb_local_flush_one"] += 1
            va += covered << PAGE_SHIFT
            pages -= covered
    return st


def flush_tlb_mm(hw: Hardware, asid: int, cpus: Iterable[int],
                 this_cpu: int | None = None) -> dict[str, int]:
    """Flush every translation of the mm: x86 CR3 reload + IPIs; arm64 TLBI ASIDE1IS."""
    if hw.arch.name == "x86_64":
        return _x86_flush(hw, asid, cpus, None, this_cpu)
    hw.tlbi_aside1is(this_cpu, asid)
    st = _stats()
    st["nr_tlb_local_flush_all"] += 1
    return st


def flush_tlb_page(hw: Hardware, asid: int, cpus: Iterable[int], va: int,
                   this_cpu: int | None = None) -> dict[str, int]:
    """Flush one base page (a leaf change): x86 INVLPG (+IPIs), arm64 TLBI VALE1IS."""
    return flush_tlb_range(hw, asid, cpus, va, va + (1 << PAGE_SHIFT), PAGE_SHIFT,
                           last_level_only=True, this_cpu=this_cpu)
