"""SimKernel: a self-contained anonymous address-space model behind CollapseOps.

It holds what collapse looks at and nothing more: VMAs, PMD entries (none, a PTE
table, or a huge PMD), PTEs (none, zero page, present, swap), folios with per-mm
mapcounts (enough for folio_maybe_mapped_shared), a frame allocator, the write-version
oracle (emu.mem.PhysMem) and a swap device.  Guest-like operations (write, read,
fork, madvise) build the states the kernel selftests build, so the collapse core can
be tested against the upstream expectations without QEMU or the full kernel model.
"""

import errno
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu.errors import EmuError
from emu.kernel.collapse import Tracer
from emu.kernel.collapse_ops import (
    BIT,
    HPAGE_PMD_MASK,
    HPAGE_PMD_NR,
    HPAGE_PMD_ORDER,
    HPAGE_PMD_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PTE_INFO,
    PTE_NONE,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_ZERO,
    TVA_PAGEFAULT,
    VM_HUGEPAGE,
    VM_NOHUGEPAGE,
    VM_WRITE,
    ThpSettings,
    VmaInfo,
    thp_vma_allowable_orders,
    thp_vma_suitable_order,
)
from emu.kernel.khugepaged import Khugepaged
from emu.kernel.khugepaged_knobs import KhugepagedKnobs
from emu.kernel.madvise_collapse import MadviseCollapseRecord, madvise_collapse
from emu.kernel.swap import SwapSpace
from emu.mem.frames import BumpAllocator
from emu.mem.physmem import PhysMem

MADV_DONTNEED = 4
MADV_PAGEOUT = 21
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_COLLAPSE = 25

ZERO_PFN = 0

SIM_PTE = np.dtype([("kind", np.uint8), ("pfn", np.int64), ("folio", np.int64),
                    ("young", np.bool_), ("dirty", np.bool_), ("write", np.bool_),
                    ("uffd_wp", np.bool_), ("swap", np.int64)])


@dataclass
class SimFolio:
    """A folio: 2**order frames, mapped by PTEs and/or a PMD in one or more mms."""

    id: int
    pfn: int
    order: int
    maps: Counter = field(default_factory=Counter)   # mm id -> PTE + PMD mappings
    lru: bool = True
    locked: bool = False
    pins: int = 0                 # extra references: is_refcount_suitable() fails
    referenced: bool = False
    lazyfree: bool = False
    isolated: bool = False

    @property
    def mapcount(self) -> int:
        return sum(self.maps.values())

    def maybe_mapped_shared(self) -> bool:
        return len(self.maps) > 1            # entries are deleted when they reach 0


@dataclass
class PmdEntry:
    kind: str                              # "table" or "huge"
    ptes: np.ndarray | None = None         # SIM_PTE[512] for a table
    folio: int = -1                        # for huge
    write: bool = True
    young: bool = True


@dataclass
class SimMM:
    id: int
    vmas: list[VmaInfo] = field(default_factory=list)
    pmds: dict[int, PmdEntry] = field(default_factory=dict)
    truth: dict[int, int] = field(default_factory=dict)   # vpage -> last written version
    exiting: bool = False
    thp_disabled: bool = False

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return self is other


class SimKernel:
    """CollapseOps over a small model of anonymous memory, plus guest-like operations."""

    def __init__(self, thp: ThpSettings | None = None, knobs: KhugepagedKnobs | None = None,
                 algo: str = "v19", nr_frames: int = 1 << 20, use_zero_page: bool = True,
                 tracer: Tracer | None = None) -> None:
        self.thp = thp or ThpSettings()
        self.knobs = knobs or KhugepagedKnobs()
        self.tracer = tracer or Tracer()
        self.physmem = PhysMem(nr_frames)
        self.frames = BumpAllocator(nr_frames, first_pfn=HPAGE_PMD_NR)
        self.swap = SwapSpace()
        self.use_zero_page = use_zero_page
        self.folios: dict[int, SimFolio] = {}
        self.mms: dict[int, SimMM] = {}
        self.vmstat: Counter = Counter()
        self.mthp_stats: dict[int, Counter] = {o: Counter() for o in range(HPAGE_PMD_ORDER + 1)}
        self.flushes: list[tuple[int, int, int]] = []
        self.alloc_fail_orders: set[int] = set()   # orders whose allocation fails
        self.next_version = 0
        self.lost_reads = 0
        self._next_id = 1
        self.khugepaged = Khugepaged(self, self.knobs, algo=algo, tracer=self.tracer)
        self.madvise_records: list[MadviseCollapseRecord] = []

    # ================================================================ CollapseOps
    def mm_exiting(self, mm: SimMM) -> bool:
        return mm.exiting

    def mm_thp_disabled(self, mm: SimMM) -> bool:
        return mm.thp_disabled

    def vmas(self, mm: SimMM) -> list[VmaInfo]:
        return mm.vmas

    def find_vma(self, mm: SimMM, addr: int) -> VmaInfo | None:
        for v in mm.vmas:
            if v.start <= addr < v.end:
                return v
        return None

    def pmd_kind(self, mm: SimMM, pmd_addr: int) -> str:
        e = mm.pmds.get(pmd_addr)
        return "none" if e is None else e.kind

    def _info(self, mm: SimMM, ptes: np.ndarray, first: int = 0,
              nr: int = HPAGE_PMD_NR) -> np.ndarray:
        out = np.zeros(HPAGE_PMD_NR, dtype=PTE_INFO)
        for f in ("kind", "pfn", "folio", "young", "dirty", "write", "uffd_wp"):
            out[f] = ptes[f]
        out["folio"][ptes["kind"] != PTE_PRESENT] = -1
        sel = out["folio"] >= 0
        sel[:first] = False
        sel[first + nr:] = False
        if sel.any():
            uniq, inv = np.unique(out["folio"][sel], return_inverse=True)
            attrs = np.array([(f.order, f.maybe_mapped_shared(), f.lru, f.locked,
                               f.pins == 0, f.referenced, f.lazyfree)
                              for f in map(self.folios.__getitem__, uniq.tolist())],
                             dtype=np.int64)[inv]
            out["folio_order"][sel] = attrs[:, 0]
            out["anon"][sel] = True
            for col, name in enumerate(("shared", "lru", "locked", "refcount_ok",
                                        "referenced", "lazyfree"), start=1):
                out[name][sel] = attrs[:, col].astype(bool)
        return out

    def read_ptes(self, mm: SimMM, pmd_addr: int) -> np.ndarray:
        return self._info(mm, mm.pmds[pmd_addr].ptes)

    def read_detached(self, saved: tuple, first: int = 0, nr: int = HPAGE_PMD_NR) -> np.ndarray:
        mm, _addr, entry = saved
        return self._info(mm, entry.ptes, first, nr)

    def test_and_clear_young(self, mm: SimMM, addr: int) -> bool:
        e = mm.pmds.get(addr & HPAGE_PMD_MASK)
        if e is None or e.kind != "table":
            return False
        i = (addr & ~HPAGE_PMD_MASK) >> PAGE_SHIFT
        young = bool(e.ptes["young"][i])
        e.ptes["young"][i] = False
        return young

    def alloc_folio(self, order: int, light: bool) -> SimFolio | None:
        if order in self.alloc_fail_orders:
            return None
        pfn = self.frames.alloc(order)
        if pfn is None:
            return None
        folio = SimFolio(self._next_id, pfn, order)
        self._next_id += 1
        self.folios[folio.id] = folio
        return folio

    def free_folio(self, folio: SimFolio) -> None:
        self.folios.pop(folio.id, None)
        self.frames.free(folio.pfn, folio.order)

    def swapin(self, mm: SimMM, vma: VmaInfo, addr: int) -> bool:
        e = mm.pmds[addr & HPAGE_PMD_MASK]
        i = (addr & ~HPAGE_PMD_MASK) >> PAGE_SHIFT
        slot = int(e.ptes["swap"][i])
        folio = self.alloc_folio(0, False)
        if folio is None:
            return False
        self.physmem.version[folio.pfn] = self.swap.swap_in(slot)
        self.swap.free(slot)
        e.ptes[i] = (PTE_PRESENT, folio.pfn, folio.id, True, False,
                     bool(vma.flags & VM_WRITE), False, 0)
        folio.maps[mm.id] += 1
        self.vmstat["pswpin"] += 1
        self.mthp_stats[0]["swpin"] += 1
        return True

    def pmdp_collapse_flush(self, mm: SimMM, vma: VmaInfo, pmd_addr: int) -> tuple[Any, int]:
        entry = mm.pmds.pop(pmd_addr)
        self.flushes.append((mm.id, pmd_addr, pmd_addr + HPAGE_PMD_SIZE))
        return (mm, pmd_addr, entry), 0

    def pmd_populate(self, mm: SimMM, pmd_addr: int, saved: tuple) -> None:
        assert pmd_addr not in mm.pmds, "pmd_populate over a live PMD"
        mm.pmds[pmd_addr] = saved[2]

    def isolate_folio(self, folio_id: int) -> bool:
        folio = self.folios[folio_id]
        if folio.isolated or not folio.lru:
            return False
        folio.isolated = True
        return True

    def putback_folio(self, folio_id: int) -> None:
        self.folios[folio_id].isolated = False

    def collapse_copy(self, mm: SimMM, saved: tuple, folio: SimFolio, first: int,
                      nr: int) -> int:
        entry = saved[2]
        ptes = entry.ptes
        zero = 0
        for k in range(nr):
            i = first + k
            kind = int(ptes["kind"][i])
            if kind in (PTE_NONE, PTE_ZERO):
                self.physmem.zero(folio.pfn + k)
                zero += 1
            else:
                self.physmem.copy(folio.pfn + k, int(ptes["pfn"][i]))
        # __collapse_huge_page_copy_succeeded(): clear the PTEs, drop rmap, free sources.
        for fid in set(ptes["folio"][first:first + nr].tolist()):
            if fid in self.folios:
                self.folios[fid].isolated = False
        for k in range(nr):
            i = first + k
            if int(ptes["kind"][i]) == PTE_PRESENT:
                self._unmap_one(mm, int(ptes["folio"][i]))
            ptes[i] = (PTE_NONE, 0, -1, False, False, False, False, 0)
        return zero

    def install_pmd(self, mm: SimMM, vma: VmaInfo, pmd_addr: int, folio: SimFolio,
                    saved: tuple) -> None:
        assert pmd_addr not in mm.pmds
        # The old table is deposited for a later split; the sim just drops it.
        mm.pmds[pmd_addr] = PmdEntry("huge", folio=folio.id,
                                     write=bool(vma.flags & VM_WRITE), young=True)
        folio.maps[mm.id] += 1

    def install_ptes(self, mm: SimMM, vma: VmaInfo, addr: int, folio: SimFolio, order: int,
                     saved: tuple) -> None:
        pmd_addr = addr & HPAGE_PMD_MASK
        entry = saved[2]
        mm.pmds[pmd_addr] = entry                         # pmd_populate first
        first = (addr - pmd_addr) >> PAGE_SHIFT
        w = bool(vma.flags & VM_WRITE)
        for k in range(1 << order):                       # set_ptes
            entry.ptes[first + k] = (PTE_PRESENT, folio.pfn + k, folio.id, True, w, w,
                                     False, 0)
        folio.maps[mm.id] += 1 << order

    def count_vm_event(self, name: str, n: int = 1) -> None:
        self.vmstat[name] += n

    def count_mthp_stat(self, order: int, name: str, n: int = 1) -> None:
        self.mthp_stats[order][name] += n

    # ================================================================ helpers
    def _unmap_one(self, mm: SimMM, fid: int, n: int = 1) -> None:
        folio = self.folios[fid]
        folio.maps[mm.id] -= n
        if folio.maps[mm.id] <= 0:
            del folio.maps[mm.id]
        if folio.mapcount == 0:
            self.free_folio(folio)

    def _table(self, mm: SimMM, pmd_addr: int) -> PmdEntry:
        e = mm.pmds.get(pmd_addr)
        if e is None:
            ptes = np.zeros(HPAGE_PMD_NR, dtype=SIM_PTE)
            ptes["folio"] = -1
            e = mm.pmds[pmd_addr] = PmdEntry("table", ptes=ptes)
        elif e.kind == "huge":
            self.split_pmd(mm, pmd_addr)
            e = mm.pmds[pmd_addr]
        return e

    def split_pmd(self, mm: SimMM, pmd_addr: int) -> None:
        """__split_huge_pmd(): the PMD becomes a table of 512 PTEs into the same folio."""
        e = mm.pmds[pmd_addr]
        if e.kind != "huge":
            return
        folio = self.folios[e.folio]
        ptes = np.zeros(HPAGE_PMD_NR, dtype=SIM_PTE)
        ptes["kind"] = PTE_PRESENT
        ptes["pfn"] = folio.pfn + np.arange(HPAGE_PMD_NR)
        ptes["folio"] = folio.id
        ptes["young"] = e.young
        ptes["write"] = e.write
        folio.maps[mm.id] += HPAGE_PMD_NR - 1
        mm.pmds[pmd_addr] = PmdEntry("table", ptes=ptes)
        self.vmstat["thp_split_pmd"] += 1

    def split_folio(self, fid: int) -> None:
        """split_folio() to order 0, rewriting every mapping (PTE-mapped folios only)."""
        folio = self.folios.pop(fid)
        new = {}
        for k in range(1 << folio.order):
            f = SimFolio(self._next_id, folio.pfn + k, 0)
            self._next_id += 1
            self.folios[f.id] = f
            new[folio.pfn + k] = f
        for mm in self.mms.values():
            for e in mm.pmds.values():
                if e.kind == "huge" and e.folio == fid:
                    raise EmuError("split_folio of a PMD-mapped folio")
                if e.kind != "table":
                    continue
                sel = np.flatnonzero((e.ptes["kind"] == PTE_PRESENT) & (e.ptes["folio"] == fid))
                for i in sel:
                    f = new[int(e.ptes["pfn"][i])]
                    e.ptes["folio"][i] = f.id
                    f.maps[mm.id] += 1
        for f in new.values():
            if f.mapcount == 0:
                self.free_folio(f)
        self.mthp_stats[folio.order]["split"] += 1

    def _pte(self, mm: SimMM, addr: int) -> tuple[PmdEntry, int]:
        return self._table(mm, addr & HPAGE_PMD_MASK), (addr & ~HPAGE_PMD_MASK) >> PAGE_SHIFT

    # ================================================================ guest operations
    def new_mm(self) -> SimMM:
        mm = SimMM(self._next_id)
        self._next_id += 1
        self.mms[mm.id] = mm
        return mm

    def mmap(self, mm: SimMM, start: int, length: int, flags: int = VM_WRITE,
             now_ns: int = 0) -> VmaInfo:
        vma = VmaInfo(start, start + length, flags)
        mm.vmas.append(vma)
        mm.vmas.sort(key=lambda v: v.start)
        self.khugepaged.khugepaged_enter_vma(mm, vma, now_ns)
        return vma

    def _split_vma(self, mm: SimMM, addr: int) -> None:
        vma = self.find_vma(mm, addr)
        if vma is None or vma.start == addr:
            return
        pmd = addr & HPAGE_PMD_MASK
        if addr != pmd and self.pmd_kind(mm, pmd) == "huge":
            self.split_pmd(mm, pmd)             # vma_adjust_trans_huge()
        tail = VmaInfo(addr, vma.end, vma.flags, vma.anon, vma.uffd_armed, vma.anon_vma)
        vma.end = addr
        mm.vmas.append(tail)
        mm.vmas.sort(key=lambda v: v.start)

    def _merge_vmas(self, mm: SimMM) -> None:
        """vma_merge(): adjacent VMAs with equal flags become one."""
        merged: list[VmaInfo] = []
        for v in sorted(mm.vmas, key=lambda v: v.start):
            last = merged[-1] if merged else None
            if (last is not None and last.end == v.start and last.flags == v.flags
                    and last.anon == v.anon and last.uffd_armed == v.uffd_armed):
                last.end = v.end
            else:
                merged.append(v)
        mm.vmas[:] = merged

    def madvise(self, mm: SimMM, start: int, length: int, advice: int,
                now_ns: int = 0) -> int:
        end = start + length
        if advice == MADV_COLLAPSE:
            rec = madvise_collapse(self, mm, start, length, now_ns, self.knobs, self.tracer)
            self.madvise_records.append(rec)
            return rec.ret
        if advice in (MADV_HUGEPAGE, MADV_NOHUGEPAGE):
            self._split_vma(mm, start)
            self._split_vma(mm, end)
            for v in mm.vmas:
                if v.start >= start and v.end <= end:
                    if advice == MADV_HUGEPAGE:
                        v.flags = (v.flags | VM_HUGEPAGE) & ~VM_NOHUGEPAGE
                        self.khugepaged.khugepaged_enter_vma(mm, v, now_ns)
                    else:
                        v.flags = (v.flags | VM_NOHUGEPAGE) & ~VM_HUGEPAGE
            self._merge_vmas(mm)
            return 0
        if advice == MADV_DONTNEED:
            self.zap(mm, start, end)
            return 0
        if advice == MADV_PAGEOUT:
            self.pageout(mm, start, end)
            return 0
        return -errno.EINVAL

    def _split_partial_pmds(self, mm: SimMM, start: int, end: int) -> None:
        for pmd in (start & HPAGE_PMD_MASK, (end - 1) & HPAGE_PMD_MASK):
            e = mm.pmds.get(pmd)
            if e is not None and e.kind == "huge" and not (start <= pmd and
                                                          pmd + HPAGE_PMD_SIZE <= end):
                self.split_pmd(mm, pmd)

    def zap(self, mm: SimMM, start: int, end: int) -> None:
        """MADV_DONTNEED / munmap of anonymous memory."""
        self._split_partial_pmds(mm, start, end)
        for addr in range(start, end, PAGE_SIZE):
            mm.truth.pop(addr >> PAGE_SHIFT, None)
            pmd = addr & HPAGE_PMD_MASK
            e = mm.pmds.get(pmd)
            if e is None:
                continue
            if e.kind == "huge":
                del mm.pmds[pmd]
                self._unmap_one(mm, e.folio)
                continue
            i = (addr - pmd) >> PAGE_SHIFT
            kind = int(e.ptes["kind"][i])
            if kind == PTE_PRESENT:
                self._unmap_one(mm, int(e.ptes["folio"][i]))
            elif kind == PTE_SWAP:
                self.swap.free(int(e.ptes["swap"][i]))
            e.ptes[i] = (PTE_NONE, 0, -1, False, False, False, False, 0)

    def pageout(self, mm: SimMM, start: int, end: int) -> None:
        """MADV_PAGEOUT: swap out exclusive anonymous pages (large folios split first)."""
        self._split_partial_pmds(mm, start, end)
        for pmd in range(start & HPAGE_PMD_MASK, end, HPAGE_PMD_SIZE):
            if self.pmd_kind(mm, pmd) == "huge":
                self.split_pmd(mm, pmd)
        for addr in range(start, end, PAGE_SIZE):
            e = mm.pmds.get(addr & HPAGE_PMD_MASK)
            if e is None:
                continue
            i = (addr & ~HPAGE_PMD_MASK) >> PAGE_SHIFT
            if int(e.ptes["kind"][i]) != PTE_PRESENT:
                continue
            folio = self.folios[int(e.ptes["folio"][i])]
            if folio.maybe_mapped_shared():
                continue
            if folio.order:
                self.split_folio(folio.id)
                folio = self.folios[int(e.ptes["folio"][i])]
            slot = self.swap.swap_out(int(self.physmem.version[folio.pfn]))
            self._unmap_one(mm, folio.id)
            e.ptes[i] = (PTE_SWAP, 0, -1, False, False, False, False, slot)
            self.vmstat["pswpout"] += 1
            self.mthp_stats[0]["swpout"] += 1

    def _fault_order(self, mm: SimMM, vma: VmaInfo, addr: int) -> int:
        """alloc_anon_folio()'s choice: the highest allowed, aligned, all-none order."""
        pmd = addr & HPAGE_PMD_MASK
        if (pmd not in mm.pmds and not mm.thp_disabled
                and thp_vma_allowable_orders(vma, TVA_PAGEFAULT, BIT(HPAGE_PMD_ORDER), self.thp)
                and thp_vma_suitable_order(vma, addr, HPAGE_PMD_ORDER)):
            return HPAGE_PMD_ORDER
        orders = thp_vma_allowable_orders(vma, TVA_PAGEFAULT, BIT(HPAGE_PMD_ORDER) - 1,
                                          self.thp, mm.thp_disabled)
        e = mm.pmds.get(pmd)
        for order in range(HPAGE_PMD_ORDER - 1, 1, -1):
            if not orders & BIT(order) or not thp_vma_suitable_order(vma, addr, order):
                continue
            first = ((addr & ~((PAGE_SIZE << order) - 1)) - pmd) >> PAGE_SHIFT
            if e is None or not e.ptes["kind"][first:first + (1 << order)].any():
                return order
        return 0

    def _anon_fault(self, mm: SimMM, vma: VmaInfo, addr: int) -> None:
        order = self._fault_order(mm, vma, addr)
        while True:
            folio = self.alloc_folio(order, False)
            if folio is not None or order == 0:
                break
            self.mthp_stats[order]["anon_fault_fallback"] += 1
            order = 0
        if folio is None:
            raise EmuError("out of simulated memory")
        self.physmem.zero(folio.pfn, 1 << order)
        self.mthp_stats[order]["anon_fault_alloc"] += 1
        w = bool(vma.flags & VM_WRITE)
        if order == HPAGE_PMD_ORDER:
            self.vmstat["thp_fault_alloc"] += 1
            mm.pmds[addr & HPAGE_PMD_MASK] = PmdEntry("huge", folio=folio.id, write=w)
            folio.maps[mm.id] += 1
            return
        base = addr & ~((PAGE_SIZE << order) - 1)
        e, first = self._pte(mm, base)
        for k in range(1 << order):
            e.ptes[first + k] = (PTE_PRESENT, folio.pfn + k, folio.id, True, False, w,
                                 False, 0)
        folio.maps[mm.id] += 1 << order

    def _resolve(self, mm: SimMM, addr: int, write: bool) -> int:
        """Handle any fault at addr; returns the pfn that now backs it."""
        vma = self.find_vma(mm, addr)
        if vma is None:
            raise EmuError(f"segfault at {addr:#x}")
        pmd = addr & HPAGE_PMD_MASK
        e = mm.pmds.get(pmd)
        if e is None or (e.kind == "table" and
                         int(e.ptes["kind"][(addr - pmd) >> PAGE_SHIFT]) == PTE_NONE):
            if write or not self.use_zero_page:
                self._anon_fault(mm, vma, addr)
            else:
                e, i = self._pte(mm, addr)
                e.ptes[i] = (PTE_ZERO, ZERO_PFN, -1, True, False, False, False, 0)
            e = mm.pmds[pmd]
        if e.kind == "huge":
            folio = self.folios[e.folio]
            if write and (not e.write or folio.maybe_mapped_shared()):
                if folio.maybe_mapped_shared():
                    self.split_pmd(mm, pmd)               # do_huge_pmd_wp_page splits
                    return self._resolve(mm, addr, write)
                e.write = True
            e.young = True
            return folio.pfn + ((addr - pmd) >> PAGE_SHIFT)
        i = (addr - pmd) >> PAGE_SHIFT
        p = e.ptes[i]
        kind = int(p["kind"])
        if kind == PTE_SWAP:
            self.swapin(mm, vma, addr)
            p = e.ptes[i]
            kind = PTE_PRESENT
        if write and (kind == PTE_ZERO or not p["write"]):
            if kind == PTE_PRESENT and not self.folios[int(p["folio"])].maybe_mapped_shared():
                e.ptes["write"][i] = True                 # reuse an exclusive folio
            else:                                         # wp_page_copy: one small page
                new = self.alloc_folio(0, False)
                if kind == PTE_PRESENT:
                    self.physmem.copy(new.pfn, int(p["pfn"]))
                    self._unmap_one(mm, int(p["folio"]))
                else:
                    self.physmem.zero(new.pfn)
                e.ptes[i] = (PTE_PRESENT, new.pfn, new.id, True, True, True, False, 0)
                new.maps[mm.id] += 1
        e.ptes["young"][i] = True
        if write:
            e.ptes["dirty"][i] = True
        return int(e.ptes["pfn"][i])

    def write(self, mm: SimMM, addr: int) -> None:
        """A guest store: fault as needed, then a new version lands in the frame."""
        pfn = self._resolve(mm, addr, True)
        self.next_version += 1
        self.physmem.version[pfn] = self.next_version
        mm.truth[addr >> PAGE_SHIFT] = self.next_version

    def read(self, mm: SimMM, addr: int) -> bool:
        """A guest load; False (and counted) if it sees an older version than the truth."""
        pfn = self._resolve(mm, addr, False)
        ok = int(self.physmem.version[pfn]) == mm.truth.get(addr >> PAGE_SHIFT, 0)
        self.lost_reads += not ok
        return ok

    def fault_range(self, mm: SimMM, start: int, nr_pages: int) -> None:
        """The selftest's fault loop: write every 4K page of the range."""
        for k in range(nr_pages):
            self.write(mm, start + k * PAGE_SIZE)

    def fork(self, parent: SimMM, now_ns: int = 0) -> SimMM:
        """dup_mmap(): share anonymous folios write-protected; child PTEs start old."""
        child = self.new_mm()
        child.vmas = [VmaInfo(v.start, v.end, v.flags, v.anon, v.uffd_armed, v.anon_vma)
                      for v in parent.vmas]
        child.truth = dict(parent.truth)
        for addr, e in parent.pmds.items():
            if e.kind == "huge":
                e.write = False
                child.pmds[addr] = PmdEntry("huge", folio=e.folio, write=False, young=False)
                self.folios[e.folio].maps[child.id] += 1
                continue
            e.ptes["write"][e.ptes["kind"] == PTE_PRESENT] = False
            ptes = e.ptes.copy()
            ptes["young"] = False
            child.pmds[addr] = PmdEntry("table", ptes=ptes)
            for i in np.flatnonzero(ptes["kind"] == PTE_PRESENT):
                self.folios[int(ptes["folio"][i])].maps[child.id] += 1
            for i in np.flatnonzero(ptes["kind"] == PTE_SWAP):
                self.swap.duplicate(int(ptes["swap"][i]))
        self.khugepaged.khugepaged_fork(child, parent, now_ns)
        return child

    def exit_mm(self, mm: SimMM) -> None:
        for v in list(mm.vmas):
            self.zap(mm, v.start, v.end)
        mm.vmas.clear()
        mm.exiting = True
        self.khugepaged.khugepaged_exit(mm)

    # ================================================================ inspection
    def validate(self, mm: SimMM) -> list[int]:
        """Virtual pages whose backing frame does not hold the last write (lost writes)."""
        bad = []
        for vpage, version in mm.truth.items():
            addr = vpage << PAGE_SHIFT
            pmd = addr & HPAGE_PMD_MASK
            e = mm.pmds.get(pmd)
            if e is None:
                bad.append(vpage)
                continue
            if e.kind == "huge":
                pfn = self.folios[e.folio].pfn + ((addr - pmd) >> PAGE_SHIFT)
            else:
                i = (addr - pmd) >> PAGE_SHIFT
                kind = int(e.ptes["kind"][i])
                if kind == PTE_SWAP:
                    if self.swap.version[int(e.ptes["swap"][i])] != version:
                        bad.append(vpage)
                    continue
                if kind != PTE_PRESENT:
                    bad.append(vpage)
                    continue
                pfn = int(e.ptes["pfn"][i])
            if int(self.physmem.version[pfn]) != version:
                bad.append(vpage)
        return bad

    def nr_pmd_mapped(self, mm: SimMM, start: int, end: int) -> int:
        """check_huge(): PMD-mapped THPs in [start, end) (AnonHugePages / 2 MiB)."""
        return sum(1 for a, e in mm.pmds.items() if e.kind == "huge" and start <= a < end)

    def mapping_sizes(self, mm: SimMM, start: int, end: int) -> Counter:
        """Folios mapped in [start, end) by order: PMD maps count at order 9; a PTE-mapped
        folio counts once at its order (only where all its pages map here, in order)."""
        sizes: Counter = Counter()
        for a, e in mm.pmds.items():
            if not start <= a < end:
                continue
            if e.kind == "huge":
                sizes[HPAGE_PMD_ORDER] += 1
                continue
            present = e.ptes["kind"] == PTE_PRESENT
            for fid in np.unique(e.ptes["folio"][present]):
                folio = self.folios[int(fid)]
                sel = present & (e.ptes["folio"] == fid)
                if int(sel.sum()) == 1 << folio.order:
                    sizes[folio.order] += 1
                else:
                    sizes[-1] += int(sel.sum())       # pages of partially mapped folios
        return sizes
