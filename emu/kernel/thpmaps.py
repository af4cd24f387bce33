"""What maps each VMA, by folio size: the census tools/mm/thpmaps prints.

Read from the page tables and folios at the moment asked (the machine asks
when a process exits, before its memory is torn down).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np


def size_name(order: int, page_shift: int = 12) -> str:
    kb = (1 << (order + page_shift)) >> 10
    return f"{kb // 1024}M" if kb >= 1024 and kb % 1024 == 0 else f"{kb}K"


def mapped_entries(kernel: Any, mm: Any, start: int, end: int
                   ) -> Iterator[tuple[str, int, int, int]]:
    """What maps [start, end), read from the page tables: ("pmd", addr, nr_pages,
    PMD descriptor) for each PMD leaf, ("pte", va, 1, PTE descriptor) for each
    present PTE; both censuses below count from it."""
    pt, arch, store = kernel.pt, kernel.arch, kernel.physmem.pgtables
    page = kernel.page_size
    pmd_size = pt.pmd_size
    addr = start
    while addr < end:
        chunk_end = min((addr | (pmd_size - 1)) + 1, end)
        slot = pt.pmd_slot(mm, addr)
        pmd = store.read(*slot) if slot else 0
        n = (chunk_end - addr) // page
        if pmd and pt.pmd_is_leaf(pmd):
            yield "pmd", addr, n, pmd
        elif pmd:
            table = pt.pte_table(mm, addr)
            if table is not None:
                tab = store.table(table)
                i0 = arch.index(addr, pt.pte_level)
                for i in np.flatnonzero(tab[i0:i0 + n]).tolist():
                    d = int(tab[i0 + i])
                    if arch.is_present(d):
                        yield "pte", addr + i * page, 1, d
        addr = chunk_end


def vma_census(kernel: Any, mm: Any, start: int, end: int) -> dict[str, int]:
    """Pages of [start, end) by how they are mapped.

    Keys: "<size>" for pages of anonymous folios of that size mapped by PTEs,
    "<size>-pmd" for PMD-mapped folios, "file" for page-cache pages, "zero"
    for the shared zero pages, "cont" for pages whose PTE has the arm64
    contiguous bit (counted again: a subset of the others).
    """
    arch = kernel.arch
    out: Counter[str] = Counter()
    for kind, _va, n, d in mapped_entries(kernel, mm, start, end):
        pfn = arch.pfn(d)
        if kind == "pmd":
            if pfn == kernel.huge_zero_pfn:
                out["zero"] += n
            else:
                f = kernel.folio_of_pfn(pfn)
                out[size_name(f.order if f else kernel.pmd_order) + "-pmd"] += n
            continue
        if arch.cont(d):
            out["cont"] += 1
        if pfn == kernel.zero_pfn:
            out["zero"] += 1
            continue
        f = kernel.folio_of_pfn(pfn)
        out[size_name(f.order) if f is not None and f.anon else "file"] += 1
    return dict(sorted(out.items()))


# -- thpmaps's own grammar ------------------------------------------------------------
#
# tools/mm/thpmaps reads pagemap and kpageflags and prints, per VMA, the kB of
# memory in large folios by how they are mapped: PMD-mapped
# ("anon-thp-pmd-aligned-2048kB"), wholly PTE-mapped with the folio's first page
# at a virtual address aligned to its size ("anon-thp-pte-aligned-64kB") or not
# ("...-unaligned-64kB"), partly mapped ("anon-thp-pte-partial"), and, with
# --cont SIZE, memory virtually and physically contiguous over aligned blocks of
# SIZE inside one folio ("anon-cont-pte-aligned-64kB", arm64's contpte blocks).
# Here the same counters come from the model's page tables and folios.  Pages
# thpmaps does not count (small folios: order 0 and 1) get emu's own keys
# "anon-small" and "file-small", so that the anon and file keys add up to the
# VMA's Rss; "zero" (zero pages, not in Rss) and "cont-bit" (PTEs with arm64's
# contiguous bit, a subset of the others) are emu's extras.  Counts are pages.

MIN_THP_ORDER = 2      # the smallest anonymous mTHP order; thpmaps lists orders >= 2


def cont_orders(kernel: Any) -> tuple[int, ...]:
    """The --cont sizes thpmaps would be asked for: arm64's contpte block, if any."""
    n = int(getattr(kernel.arch, "cont_ptes", 0) or 0)
    return (n.bit_length() - 1,) if n > 1 else ()


def _kb(order: int, page_shift: int) -> int:
    return (1 << (order + page_shift)) >> 10


def vma_thpmaps(kernel: Any, mm: Any, start: int, end: int,
                runs: list[tuple[int, int, str]] | None = None) -> dict[str, int]:
    """Pages of [start, end) under thpmaps's counter names (see above).

    With ``runs``, also appends (start, end, label) address ranges by mapping
    size ("2M-pmd", "64K", "4K", "file", "zero"), merged where adjacent, for
    pictures of the address space.
    """
    arch = kernel.arch
    page, shift = kernel.page_size, kernel.page_shift
    out: Counter[str] = Counter()
    vfns: list[np.ndarray] = []
    pfns: list[np.ndarray] = []
    cont_bits = 0

    def run(lo: int, hi: int, label: str) -> None:
        if runs is None:
            return
        if runs and runs[-1][1] == lo and runs[-1][2] == label:
            runs[-1] = (runs[-1][0], hi, label)
        else:
            runs.append((lo, hi, label))

    for kind, va, n, d in mapped_entries(kernel, mm, start, end):
        if kind == "pmd":
            pfn = arch.pfn(d)
            f = None if pfn == kernel.huge_zero_pfn else kernel.folio_of_pfn(pfn)
            if f is None:
                out["zero"] += n
                run(va, va + n * page, "zero")
            else:
                side = "anon" if f.anon else "file"
                out[f"{side}-thp-pmd-aligned-{_kb(f.order, shift)}kB"] += n
                run(va, va + n * page, f"{size_name(f.order, shift)}-pmd" if f.anon else "file")
            continue
        cont_bits += bool(arch.cont(d))
        vfns.append(va >> shift)
        pfns.append(arch.pfn(d))
    # Group the PTE-mapped pages by folio, as thpmaps groups pagemap ranges by head page.
    by_folio: dict[int, list[tuple[int, int]]] = {}
    folio_of: dict[int, Any] = {}
    labels: dict[int, str] = {}
    for vfn, pfn in zip(vfns, pfns, strict=True):
        if pfn == kernel.zero_pfn:
            out["zero"] += 1
            labels[vfn] = "zero"
            continue
        f = kernel.folio_of_pfn(pfn)
        side = "anon" if f is not None and f.anon else "file"
        if f is None or f.order < MIN_THP_ORDER:
            out[f"{side}-small"] += 1
            labels[vfn] = "4K" if side == "anon" else "file"
            continue
        by_folio.setdefault(f.pfn, []).append((vfn, pfn))
        folio_of[f.pfn] = f
        labels[vfn] = size_name(f.order, shift) if side == "anon" else "file"
    corders = cont_orders(kernel)
    for head, pages in by_folio.items():
        f = folio_of[head]
        side = "anon" if f.anon else "file"
        nr = 1 << f.order
        offsets = {vfn - pfn for vfn, pfn in pages}
        if len(pages) == nr and len(offsets) == 1:
            head_vfn = head + offsets.pop()
            align = "aligned" if head_vfn % nr == 0 else "unaligned"
            out[f"{side}-thp-pte-{align}-{_kb(f.order, shift)}kB"] += nr
        else:
            out[f"{side}-thp-pte-partial"] += len(pages)
        for c in corders:
            if c > f.order:
                continue
            blocks: Counter[int] = Counter()
            for vfn, pfn in pages:
                if (vfn - pfn) % (1 << c) == 0:       # physically aligned like virtually
                    blocks[vfn >> c] += 1
            full = sum(1 for k in blocks.values() if k == 1 << c)
            out[f"{side}-cont-pte-aligned-{_kb(c, shift)}kB"] += full << c
    if cont_bits:
        out["cont-bit"] += cont_bits
    if runs is not None:
        for vfn in sorted(labels):
            run(vfn << shift, (vfn + 1) << shift, labels[vfn])
        runs[:] = _merged(sorted(runs))
    return dict(sorted(out.items()))


def _merged(runs: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for lo, hi, label in runs:
        if out and out[-1][1] == lo and out[-1][2] == label:
            out[-1] = (out[-1][0], hi, label)
        else:
            out.append((lo, hi, label))
    return out


def rss_of(counters: dict[str, int]) -> tuple[int, int]:
    """(anon pages, file pages) of a vma_thpmaps result: what smaps calls Anonymous
    and Rss - Anonymous (thpmaps's denominators)."""
    anon = file = 0
    for key, n in counters.items():
        if key.startswith("anon-") and "-cont-" not in key:
            anon += n
        elif key.startswith("file-") and "-cont-" not in key:
            file += n
    return anon, file


def _prot(flags: int) -> str:
    """The PROT column of /proc/PID/maps (and of thpmaps's VMA header)."""
    from emu.kernel.vma import VM_EXEC, VM_READ, VM_SHARED, VM_WRITE
    return ("r" if flags & VM_READ else "-") + ("w" if flags & VM_WRITE else "-") \
        + ("x" if flags & VM_EXEC else "-") + ("s" if flags & VM_SHARED else "p")


def mm_thpmaps(kernel: Any, mm: Any, with_runs: bool = False) -> dict[str, Any]:
    """thpmaps for every VMA of mm, the process rollup and the mm's own rss counter."""
    vmas = []
    rollup: Counter[str] = Counter()
    runs: list[tuple[int, int, str]] | None = [] if with_runs else None
    for v in mm.vmas:
        c = vma_thpmaps(kernel, mm, v.start, v.end, runs)
        rollup.update(c)
        vmas.append({"start": v.start, "end": v.end, "prot": _prot(v.flags), "kind": v.kind,
                     "name": v.file or v.name, "counters": c})
    out: dict[str, Any] = {"pid": mm.pid, "vmas": vmas, "rollup": dict(sorted(rollup.items())),
                           "rss_pages": mm.rss}
    if runs is not None:
        out["runs"] = runs
    return out
