"""The invariant checker (``--check``): the model's state is consistent at every step.

The oracle (emu/oracle.py) asks whether the guest's data survived; this asks
whether the model's own books balance, so that a collapse bug shows where it
happens rather than as a wrong count much later.  After each collapse step it
checks the step's PMD range and every TLB; after each collapse attempt and at
each process exit, everything:

* page tables and rmap agree: every present entry maps a live folio (or a zero
  page), each page's ``page_mapcount`` and each folio's ``entire_mapcount`` equal
  the entries that map them, counting the entries a collapse has cleared and
  still owns (the detached table, the PTE values kept for a rollback);
* references: a folio's refcount is at least its mappings (equal when no GUP pin
  is held);
* frames have one owner: folios do not overlap, no folio frame is a page table or
  free in the buddy allocator;
* TLBs: no valid TLB entry maps a frame no folio owns, and no paging-structure
  cache entry a freed table, unless that CPU's flush is still pending (x86 lazy
  TLB: its generation is behind the mm's);
* counters: each mm's MM_ANONPAGES/MM_FILEPAGES/MM_SHMEMPAGES equal the pages its
  tables map, ``nr_anon`` per size the anonymous folios of that size.

A violation raises InvariantViolation (one line: what, where, which step), which
stops the run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from emu.arch import PAGE_SHIFT, PAGE_SIZE, PMD_NR, PMD_SIZE
from emu.errors import EmuError
from emu.hw import kernels as K
from emu.kernel.config import order_to_kb
from emu.kernel.thpmaps import mapped_entries

PMD_MASK = ~(PMD_SIZE - 1)


class InvariantViolation(EmuError):
    """The model broke one of its invariants (a bug in emu, or an unsafe strategy)."""


class Checker:
    """Subscribes to the collapse's events; counts checks; raises on a violation."""

    def __init__(self, kernel: Any, hw: Any) -> None:
        self.k = kernel
        self.hw = hw
        self.local_checks = 0
        self.full_checks = 0
        self.where = ""
        kernel.bus.subscribe("emu_collapse_step", self._after_step)
        kernel.bus.subscribe("mm_collapse_huge_page", self._after_attempt)

    # ------------------------------------------------------------------ hooks

    def _after_step(self, e: Any) -> None:
        a = e.args
        self.where = (f"after collapse step {a['step']} ({a['strategy']}) at"
                      f" {a['address']:#x}, order {a['order']}")
        self.check_range(a["mm"], a["address"], a["address"] + (PAGE_SIZE << a["order"]))

    def _after_attempt(self, e: Any) -> None:
        """Everything after a collapse that changed the mappings; a failed one rolled
        back, and its steps' checks cover its range."""
        a = e.args
        self.where = (f"after the collapse attempt at {a['address']:#x}, order {a['order']}:"
                      f" {a['attempt'].result.name}")
        if a["isolated"]:
            self.check_all()

    def _fail(self, what: str) -> None:
        raise InvariantViolation(f"--check: {what} ({self.where})")

    # ------------------------------------------------------------------ walking

    def _mappings(self, mm: Any, start: int, end: int) -> list[tuple[str, int, int]]:
        """(kind, va, descriptor) of every entry of [start, end) that maps a page,
        the live tables' and those a collapse in progress has cleared and keeps."""
        out = [(kind, va, d) for kind, va, _n, d in mapped_entries(self.k, mm, start, end)]
        saved = mm.collapse_saved
        if saved is None:
            return out
        lo, hi = saved["cleared"]
        pmd_addr = lo & PMD_MASK
        if not (start < pmd_addr + PMD_SIZE and pmd_addr < end):
            return out
        arch = self.k.arch
        tab = saved["entries"]
        if saved["kind"] == "pmd":
            store = self.k.physmem.pgtables
            if store.read(*saved["slot"]) != 0:
                return out                        # the table is attached again
            idx = range(PMD_NR)
        else:
            first = saved["first"]
            idx = range(first, first + len(saved["old"]))
        for i in idx:
            d = int(tab[i])
            va = pmd_addr + (i << PAGE_SHIFT)
            if d and arch.is_present(d) and start <= va < end:
                live = self.k.pt.get_pte(mm, va) if saved["kind"] == "pte" else 0
                if not live:                      # (a restored entry is counted once)
                    out.append(("pte", va, d))
        return out

    def _count(self, mms: list[tuple[Any, int, int]]) -> tuple[Counter, Counter, dict]:
        """Per (folio, page) PTE mappings, per folio PMD mappings, per mm rss."""
        k, arch = self.k, self.k.arch
        ptes: Counter = Counter()
        pmds: Counter = Counter()
        rss: dict[int, Counter] = {}
        for mm, start, end in mms:
            r = rss.setdefault(mm.asid, Counter())
            for kind, va, d in self._mappings(mm, start, end):
                pfn = arch.pfn(d)
                if pfn == k.zero_pfn or (k.huge_zero_pfn is not None and kind == "pmd"
                                         and pfn == k.huge_zero_pfn):
                    continue
                f = k.folio_of_pfn(pfn)
                if f is None:
                    self._fail(f"pid {mm.pid}: {kind} at {va:#x} maps frame {pfn:#x},"
                               " which no folio owns")
                counter = k._rss_counter(f)
                if kind == "pmd":
                    pmds[f.pfn] += 1
                    r[counter] += f.nr_pages
                else:
                    ptes[(f.pfn, pfn - f.pfn)] += 1
                    r[counter] += 1
        return ptes, pmds, rss

    # ------------------------------------------------------------------ checks

    def check_range(self, mm: Any, start: int, end: int) -> None:
        """The step's target range: its mappings' folios are alive and counted at least
        as often as the range maps them; and every TLB."""
        self.local_checks += 1
        ptes, pmds, _ = self._count([(mm, start, end)])
        folios = self.k.folios
        for (head, page), n in ptes.items():
            f = folios.get(head)
            if f is None or f.page_mapcount[page] < n:
                self._fail(f"frame {head + page:#x} is mapped {n} times in"
                           f" {start:#x}-{end:#x}, its page_mapcount says"
                           f" {None if f is None else int(f.page_mapcount[page])}")
        for head, n in pmds.items():
            if folios[head].entire_mapcount < n:
                self._fail(f"folio {head:#x} is PMD-mapped {n} times, entire_mapcount"
                           f" {folios[head].entire_mapcount}")
        self.check_tlbs()

    def check_all(self) -> None:
        """Everything, over every live mm."""
        self.full_checks += 1
        k = self.k
        mms = [(mm, v.start, v.end) for mm in k.mms.values() if not mm.exited
               for v in mm.vmas]
        ptes, pmds, rss = self._count(mms)
        self._check_folios(ptes, pmds)
        for mm in k.mms.values():
            if mm.exited:
                continue
            got = rss.get(mm.asid, Counter())
            for name in ("MM_ANONPAGES", "MM_FILEPAGES", "MM_SHMEMPAGES"):
                if mm.counters.get(name, 0) != got.get(name, 0):
                    self._fail(f"pid {mm.pid}: {name} is {mm.counters.get(name, 0)}, its"
                               f" tables map {got.get(name, 0)} such pages")
        self._check_owners()
        self.check_tlbs()

    def _check_folios(self, ptes: Counter, pmds: Counter) -> None:
        k = self.k
        pinned = bool(k.gup.pins_held())
        per_page: dict[int, np.ndarray] = {}
        for (head, page), n in ptes.items():
            f = k.folios[head]
            arr = per_page.setdefault(head, np.zeros(f.nr_pages, dtype=np.int64))
            arr[page] = n
        by_order: Counter = Counter()
        for head, f in k.folios.items():
            want = per_page.get(head)
            have = f.page_mapcount
            if want is None:
                if have.any():
                    self._fail(f"folio {head:#x}: page_mapcount says mapped, no entry maps it")
            elif not np.array_equal(want, have):
                i = int(np.flatnonzero(want != have)[0])
                self._fail(f"frame {head + i:#x}: page_mapcount {int(have[i])}, mapped by"
                           f" {int(want[i])} entries")
            if f.entire_mapcount != pmds.get(head, 0):
                self._fail(f"folio {head:#x}: entire_mapcount {f.entire_mapcount}, mapped by"
                           f" {pmds.get(head, 0)} PMDs")
            expected = int(have.sum()) + f.entire_mapcount + (0 if f.anon else 1)
            if f.refcount < expected or (not pinned and f.refcount != expected):
                self._fail(f"folio {head:#x}: refcount {f.refcount}, its mappings and"
                           f" cache account for {expected}")
            if f.anon:
                by_order[f.order] += 1
        for kb, d in k.stats.mthp.items():
            order = next((o for o in range(1, 10) if order_to_kb(o) == kb), None)
            if order is not None and d.get("nr_anon", 0) != by_order.get(order, 0):
                self._fail(f"hugepages-{kb}kB nr_anon is {d.get('nr_anon', 0)}, there are"
                           f" {by_order.get(order, 0)} anonymous folios of that size")

    def _check_owners(self) -> None:
        """Folios do not overlap each other, page tables or free memory."""
        k = self.k
        owned = np.zeros(len(k._head), dtype=np.int32)
        for head, f in k.folios.items():
            owned[head:head + f.nr_pages] += 1
        if (owned > 1).any():
            self._fail(f"frame {int(np.flatnonzero(owned > 1)[0]):#x} belongs to two folios")
        tables = k.physmem.pgtables.slot_of_pfn >= 0
        both = owned.astype(bool) & tables[:len(owned)]
        if both.any():
            self._fail(f"frame {int(np.flatnonzero(both)[0]):#x} is a folio's and a page table")
        fo = k.buddy._free_order
        heads = np.flatnonzero(fo >= 0)
        if len(heads):
            sizes = (1 << fo[heads].astype(np.int64))
            free = np.zeros(len(fo) + 1, dtype=np.int64)
            np.add.at(free, heads, 1)
            np.add.at(free, heads + sizes, -1)
            free_mask = np.cumsum(free[:-1]) > 0
            bad = free_mask[:len(owned)] & owned.astype(bool)
            if bad.any():
                self._fail(f"frame {int(np.flatnonzero(bad)[0]):#x} is a folio's and free")

    def check_tlbs(self) -> None:
        """No valid TLB or paging-structure-cache entry reaches a frame that lost its
        owner, unless the CPU's flush of that mm is pending (x86 lazy TLB)."""
        hw, k = self.hw, self.k
        if hw is None:
            return
        live = {mm.asid: mm for mm in k.mms.values() if not mm.exited}
        head = k._head
        zero = {k.zero_pfn}
        if k.huge_zero_pfn is not None:
            zero.update(range(k.huge_zero_pfn, k.huge_zero_pfn + PMD_NR))
        tables = k.physmem.pgtables.slot_of_pfn
        for tag, data, is_table in ((hw.tag, hw.data, False), (hw.ptag, hw.pdata, True)):
            cpus, idx = np.nonzero(tag & K.VALID_TAG)         # every CPU's row at once
            if not len(idx):
                continue
            pfns = np.minimum((data[cpus, idx] >> np.uint64(12)).astype(np.int64),
                              len(head) - 1)
            bad = (tables[pfns] < 0) if is_table else (head[pfns] < 0)
            for j in np.flatnonzero(bad).tolist():
                cpu = int(cpus[j])
                asid = int(tag[cpu, idx[j]]) & K.ASID_MASK
                pfn = int(pfns[j])
                if asid not in live or pfn in zero or self._flush_pending(cpu, asid):
                    continue
                what = "paging-structure cache entry" if is_table else "TLB entry"
                self._fail(f"CPU {cpu}: a {what} of pid {live[asid].pid} reaches frame"
                           f" {pfn:#x}, which is freed, and no flush is pending")

    def _flush_pending(self, cpu: int, asid: int) -> bool:
        st = self.k.tlbstate
        if self.k.arch.name != "x86_64":
            return False
        return st.seen.get((cpu, asid), 0) < st.gen.get(asid, 0)
