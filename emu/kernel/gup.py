"""GUP-fast: the lockless walker that pins user pages (mm/gup.c ``gup_fast()``).

GUP-fast is the other walker of the khugepaged review thread (kernel-mthp.md §2.1):
with interrupts off and no lock, it reads the PMD and the PTEs, takes a reference
on each folio (``try_grab_folio_fast``), then reads the PMD and the PTE again and
gives the reference back if either changed.  A collapse stops it by clearing the
entry it would read (the whole PMD upstream, the target PTEs with the ``pte``
strategy); it then falls back to the slow path (``__gup_longterm_locked``), which
takes the mmap lock, so it waits for the collapse to finish.  A pin also makes a
later collapse of that folio fail its refcount check (SCAN_PAGE_COUNT).

The walk spans ``gup_fast_ns`` of simulated time between its first reads and its
recheck; khugepaged runs its steps due in that span, so a collapse that clears the
entry in between is caught by the recheck, as in the kernel.  The IPI of
``tlb_remove_table_sync_one`` would wait for the interrupts-off walk; emu does not
delay the collapse by it (at most ``gup_fast_ns``).

Which syscalls pin with GUP-fast, and where emu can see the range, is data
(data/gup_fast.toml).
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from emu.arch import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE
from emu.arch.syscalls import uapi
from emu.kernel.khugepaged.knobs import CollapseCosts

PMD_MASK = ~(PMD_SIZE - 1)


@dataclass
class GupStats:
    """What the lockless walker did, and what the collapses cost it."""

    gup_fast_attempts: int = 0          # gup_fast_fallback() calls
    gup_fast_pages: int = 0             # pages pinned without a lock
    gup_fast_fallbacks: int = 0         # calls that left pages to the slow path
    gup_fast_fallbacks_collapse: int = 0  # ... because a collapse had cleared or changed an entry
    gup_fast_recheck_failed: int = 0    # pinned, then the PMD or PTE had changed: unpinned
    gup_slow_pages: int = 0             # pages pinned by the slow path (under mmap_lock)
    gup_slow_faults: int = 0            # slow-path pages that had to be faulted in
    gup_slow_wait_ns: float = 0.0       # time the slow path waited for a collapse's lock
    gup_unpinned: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Pin:
    """One folio reference taken by GUP, to give back with unpin_user_pages()."""

    folio_pfn: int


def _load_syscalls() -> dict[str, dict[str, Any]]:
    text = resources.files("emu.kernel").joinpath("data/gup_fast.toml").read_text()
    return tomllib.loads(text)


class Gup:
    """The kernel's GUP: gup_fast() with its slow-path fallback, and the syscalls that
    use it (futex on a shared futex word)."""

    def __init__(self, k: Any) -> None:
        self.k = k
        self.stats = GupStats()
        self._pins: Counter[int] = Counter()   # folio head -> references held
        self.syscalls = _load_syscalls()
        self._u = uapi()
        kh = k.khugepaged
        self.gup_fast_ns = (kh.costs if kh is not None else CollapseCosts.load()).gup_fast_ns
        # What runs the other actors (khugepaged) up to a time: set by the machine, so
        # that steps due inside the walk's window happen before its recheck.
        self.run_until: Callable[[float], None] | None = None

    # ------------------------------------------------------------------ walker

    def read_entries(self, mm: Any, addr: int) -> tuple[int, int]:
        """(pmd, pte) as a lockless walker reads them; pte is 0 under a leaf or no table."""
        pt = self.k.pt
        pmd = pt.get_pmd(mm, addr)
        if not pmd or pt.pmd_is_leaf(pmd):
            return pmd, 0
        return pmd, pt.get_pte(mm, addr)

    def _page(self, mm: Any, pmd: int, pte: int, addr: int, write: bool) -> int | None:
        """The pfn gup_fast may pin at addr from these entries; None: leave it to the
        slow path (not present, special, or a write to a read-only entry)."""
        k, arch = self.k, self.k.arch
        if not pmd:
            return None
        if k.pt.pmd_is_leaf(pmd):
            if write and not arch.writable(pmd):
                return None
            return arch.pfn(pmd) + ((addr & ~PMD_MASK) >> PAGE_SHIFT)
        if not pte or not arch.is_present(pte):
            return None
        pfn = arch.pfn(pte)
        if pfn == k.zero_pfn or (write and not arch.writable(pte)):
            return None
        return pfn

    def pinnable(self, mm: Any, addr: int, write: bool) -> int | None:
        """The pfn GUP-fast would pin at addr now, without a fault (None: it falls back)."""
        pmd, pte = self.read_entries(mm, addr)
        return self._page(mm, pmd, pte, addr, write)

    def collapse_cleared_at(self, mm: Any, addr: int) -> bool:
        r = mm.collapse_cleared
        return mm.mmap_lock == "write" and r is not None and r[0] <= addr < r[1]

    def pin_user_pages_fast(self, mm: Any, start: int, nr_pages: int, write: bool,
                            now_ns: float) -> tuple[list[Pin], float]:
        """gup_fast_fallback(): pin [start, start + nr_pages) of mm.

        Returns the pins and the simulated time the caller waited (the slow path
        behind a collapse's mmap lock)."""
        k, st = self.k, self.stats
        st.gup_fast_attempts += 1
        start &= ~(PAGE_SIZE - 1)
        addrs = [start + (i << PAGE_SHIFT) for i in range(nr_pages)]
        # Interrupts off: read the entries, then (gup_fast_ns later) pin and recheck.
        seen = [self.read_entries(mm, a) for a in addrs]
        if self.run_until is not None:
            self.run_until(now_ns + self.gup_fast_ns)
        pins: list[Pin] = []
        fell_back_at = None
        collapse = False
        for i, a in enumerate(addrs):
            pmd, pte = seen[i]
            pfn = self._page(mm, pmd, pte, a, write)
            if pfn is None:
                collapse = self.collapse_cleared_at(mm, a)
                fell_back_at = i
                break
            f = k.folio_of_pfn(pfn)
            if f is None:
                fell_back_at = i
                break
            f.refcount += 1                               # try_grab_folio_fast()
            if self.read_entries(mm, a) != (pmd, pte):        # the recheck
                f.refcount -= 1
                st.gup_fast_recheck_failed += 1
                collapse = self.collapse_cleared_at(mm, a) or mm.mmap_lock == "write"
                fell_back_at = i
                break
            pins.append(Pin(f.pfn))
            self._pins[f.pfn] += 1
        st.gup_fast_pages += len(pins)
        waited = 0.0
        if fell_back_at is not None:
            st.gup_fast_fallbacks += 1
            if collapse:
                st.gup_fast_fallbacks_collapse += 1
            k.bus.publish("emu_gup_fast_fallback", int(now_ns), pid=mm.pid,
                          address=addrs[fell_back_at], collapse=collapse)
            more, waited = self._slow(mm, addrs[fell_back_at:], write, now_ns)
            pins += more
        return pins, waited

    def _slow(self, mm: Any, addrs: list[int], write: bool,
              now_ns: float) -> tuple[list[Pin], float]:
        """__get_user_pages_locked(): under the mmap read lock (waiting for a
        collapse that holds it), fault each page in if needed and pin it."""
        k, st = self.k, self.stats
        waited = 0.0
        kh = k.khugepaged
        if mm.mmap_lock is not None and kh is not None:
            release = kh.run_until_unlocked(mm)
            waited = max(0.0, release - now_ns)
            st.gup_slow_wait_ns += waited
        pins: list[Pin] = []
        access = 1 if write else 0
        for a in addrs:
            pfn = None
            for _ in range(3):
                pmd, pte = self.read_entries(mm, a)
                pfn = self._page(mm, pmd, pte, a, write)
                if pfn is not None:
                    break
                st.gup_slow_faults += 1
                if not k.handle_mm_fault(mm.pid, k.current_cpu, a, access, "gup"):
                    break
            f = k.folio_of_pfn(pfn) if pfn is not None else None
            if f is None:
                break                                     # -EFAULT for the rest
            f.refcount += 1
            pins.append(Pin(f.pfn))
            self._pins[f.pfn] += 1
            st.gup_slow_pages += 1
        return pins, waited

    def unpin_user_pages(self, pins: list[Pin]) -> None:
        """Give the references back (a folio freed meanwhile is not tracked: emu frees
        anonymous folios at their last unmap, not at their last reference)."""
        for p in pins:
            self._pins[p.folio_pfn] -= 1
            if not self._pins[p.folio_pfn]:
                del self._pins[p.folio_pfn]
            f = self.k.folios.get(p.folio_pfn)
            if f is not None and f.refcount > 0:
                f.refcount -= 1
            self.stats.gup_unpinned += 1

    def pins_held(self) -> int:
        """References GUP holds now (the invariant checker's refcount allowance)."""
        return sum(self._pins.values())

    # ------------------------------------------------------------------ syscalls

    def syscall(self, pid: int, name: str, args: tuple[int, ...], ret: int,
                now_ns: float) -> float:
        """Pin and release what a completed syscall pinned with GUP-fast; the time the
        caller waited on a collapse."""
        rule = self.syscalls.get(name)
        if rule is None or ret < 0:
            return 0.0
        mm = self.k.mms.get(pid)
        if mm is None:
            return 0.0
        waited = 0.0
        for addr in self._addresses(rule, args):
            pins, w = self.pin_user_pages_fast(mm, addr, 1, bool(rule["write"]), now_ns)
            waited += w
            self.unpin_user_pages(pins)            # get_futex_key() drops it at once
        return waited

    def _addresses(self, rule: dict[str, Any], args: tuple[int, ...]) -> list[int]:
        if rule.get("unless_flag"):
            if args[1] & self._u[rule["unless_flag"]]:
                return []
        out = [args[rule["address_arg"]]]
        second = rule.get("second_address_arg")
        if second is not None:
            flags = 0
            for name in rule.get("op_flags", []):
                flags |= self._u[name]
            cmd = args[1] & ~flags
            if cmd in {self._u[c] for c in rule.get("second_address_cmds", [])}:
                out.append(args[second])
        return [a for a in out if a]
