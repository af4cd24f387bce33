"""Periodic samples of a run, for plots over time (`--report`); off unless asked.

The machine calls the sampler at batch boundaries, and with force=True when a
process exits (before its memory is torn down: the last picture of it).  A sample is taken once the
guest has run ``every`` more instructions: the hardware's counter totals and
the pages mapped by each mapping size in every live process (the census
emu.kernel.thpmaps takes at exit).  When more than ``max_samples`` pile up,
every other one is dropped and the interval doubles, so a long run costs no
more than a short one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from emu.kernel.thpmaps import vma_census

# The comparable "missed the last TLB level" and "missed L1" counters per arch
# (emu.hw.counters): Intel's walks for x86-64, Arm's common events for arm64.
L2_MISSES = {"x86_64": ("dTLB-load-misses", "dTLB-store-misses", "iTLB-load-misses"),
             "arm64": ("L2D_TLB_REFILL",)}
L1D_MISSES = {"x86_64": ("emu.l1_dtlb_load_misses", "emu.l1_dtlb_store_misses"),
              "arm64": ("L1D_TLB_REFILL",)}


def l2_misses(arch: str, counters: dict[str, int]) -> int:
    return sum(counters.get(k, 0) for k in L2_MISSES[arch])


def l1d_misses(arch: str, counters: dict[str, int]) -> int:
    return sum(counters.get(k, 0) for k in L1D_MISSES[arch])


class Sampler:
    """Samples a machine; also notes successful collapses (time, order, pid)."""

    def __init__(self, machine: Any, every: int = 20_000, max_samples: int = 400) -> None:
        self.every = every
        self.max_samples = max_samples
        self.samples: list[dict[str, Any]] = []
        self.collapses: list[dict[str, Any]] = []
        self._next = 0
        self.arch = machine.arch
        self.machine = machine
        machine.kernel.bus.subscribe("mm_collapse_huge_page", self._collapse)
        machine.sampler = self

    def _collapse(self, e: Any) -> None:
        if e.args.get("status") == "succeeded":
            # Instructions when it happened, as the plots' x axis: simulated time
            # also holds the threads' stalls, so it cannot be divided back.
            insns = sum(t.instructions for t in self.machine.all_threads)
            self.collapses.append({"t_ns": e.t_ns, "instructions": insns,
                                   "order": e.args.get("order"), "pid": e.args["mm"].pid})

    def __call__(self, machine: Any, force: bool = False) -> None:
        insns = sum(t.instructions for t in machine.all_threads)
        if insns < self._next and not force:
            return
        self._next = insns + self.every
        pages: Counter[str] = Counter()
        k = machine.kernel
        for mm in list(k.mms.values()):
            for v in mm.vmas:
                pages.update(vma_census(k, mm, v.start, v.end))
        self.samples.append({"instructions": insns, "t_ns": machine.now_ns,
                             "tlb": machine.hw.totals(), "pages": dict(pages)})
        if len(self.samples) > self.max_samples:
            self.samples = self.samples[::2]
            self.every *= 2

    def section(self, machine: Any) -> dict[str, Any]:
        """The samples as the result's "samples" key."""
        return {"every_instructions": self.every, "ns_per_insn": machine.options.ns_per_insn,
                "l2_tlb_misses": list(L2_MISSES[self.arch]),
                "l1_dtlb_misses": list(L1D_MISSES[self.arch]),
                "samples": self.samples, "collapses": self.collapses}
