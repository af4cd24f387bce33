"""A synthetic GUP-fast user (``--gup-fast-rate N``): pins the program's memory from
its own CPU, as a thread doing O_DIRECT or io_uring I/O on the program's buffers would.

Guests rarely pin memory where emu can see it (data/gup_fast.toml), so this agent
makes the lockless walker meet the collapses: N times per simulated second it picks
a populated page of an anonymous writable VMA of a live process (seeded, so replays
agree), pins ``pages`` pages from there with ``pin_user_pages_fast`` and holds them
``hold_ns`` (the I/O), then unpins.  It has no hardware CPU: GUP-fast walks the
tables in software and the agent's flushes and IPIs are not modelled.
"""

from __future__ import annotations

import heapq
import random
from typing import Any

from emu.arch import PAGE_SHIFT
from emu.kernel.vma import VM_WRITE


class GupFastAgent:
    """Attempts at a fixed rate on the simulated clock; pins released after hold_ns."""

    def __init__(self, kernel: Any, rate_per_s: float, pages: int = 16,
                 hold_ns: float = 10_000.0, seed: int = 0) -> None:
        if rate_per_s <= 0:
            raise ValueError("--gup-fast-rate must be positive")
        self.k = kernel
        self.period_ns = 1e9 / rate_per_s
        self.pages = pages
        self.hold_ns = hold_ns
        self.rng = random.Random(seed)
        self.next_ns = self.period_ns
        self._held: list[tuple[float, int, list[Any]]] = []   # (release time, seq, pins)
        self._seq = 0
        self.skipped = 0          # picks that found nothing populated to pin
        self.wait_ns = 0.0

    def next_event_ns(self) -> float:
        held = self._held[0][0] if self._held else float("inf")
        return min(self.next_ns, held)

    def step(self) -> None:
        """The earliest of: a release, an attempt."""
        if self._held and self._held[0][0] <= self.next_ns:
            _, _, pins = heapq.heappop(self._held)
            self.k.gup.unpin_user_pages(pins)
            return
        now = self.next_ns
        self.next_ns += self.period_ns
        target = self._pick()
        if target is None:
            self.skipped += 1
            return
        mm, addr = target
        pins, waited = self.k.gup.pin_user_pages_fast(mm, addr, self.pages, True, now)
        self.wait_ns += waited
        self._seq += 1
        heapq.heappush(self._held, (now + waited + self.hold_ns, self._seq, pins))

    def release_all(self) -> None:
        while self._held:
            self.k.gup.unpin_user_pages(heapq.heappop(self._held)[2])

    def _pick(self) -> tuple[Any, int] | None:
        """A populated start page (or one a collapse has cleared) in a writable
        anonymous VMA, with room for ``pages`` pages after it."""
        mms = [m for _, m in sorted(self.k.mms.items()) if not m.exited]
        if not mms:
            return None
        mm = self.rng.choice(mms)
        vmas = [v for v in mm.vmas if v.is_anon and v.flags & VM_WRITE
                and (v.end - v.start) >> PAGE_SHIFT >= self.pages]
        if not vmas:
            return None
        weights = [v.end - v.start for v in vmas]
        vma = self.rng.choices(vmas, weights)[0]
        span = ((vma.end - vma.start) >> PAGE_SHIFT) - self.pages
        for _ in range(8):
            addr = vma.start + (self.rng.randint(0, span) << PAGE_SHIFT)
            if all(self._populated(mm, addr + (i << PAGE_SHIFT)) for i in range(self.pages)):
                return mm, addr
        return None

    def _populated(self, mm: Any, addr: int) -> bool:
        """Mapped now, or cleared by a collapse in progress (the walker will meet it):
        the agent pins the program's memory, it never faults new memory in."""
        gup = self.k.gup
        return gup.pinnable(mm, addr, True) is not None or gup.collapse_cleared_at(mm, addr)
