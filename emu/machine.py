"""The machine: drives the event stream through the hardware and kernel models.

It owns the vCPUs, the processes and the clock, and holds no policy: every
access goes to the hardware (TLBs, walker); a translation fault goes to the
kernel's fault handler and the access is retried; syscalls go to the kernel
in stream order; khugepaged gets the simulated time between records.

Threads are identified by (pid, vCPU, n-th start) because QEMU reuses a
vCPU index after its thread exits.  The hardware CPU an event runs on is its
vCPU index: processes time-share CPUs, told apart by their ASID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emu.arch import PMD_SIZE, syscalls
from emu.counting import PageCounts
from emu.kernel.thpmaps import vma_census
from emu.report.khugepaged import CollapseLog
from emu.trace import events as ev
from emu.trace.columns import Columns
from emu.trace.format import F_ABSORBED

# A fault the kernel says it fixed may fault again (COW after a read fault, a
# split): this many tries on one access, then it counts as unresolved.
MAX_FAULT_RETRIES = 4

# Fault kinds as the hardware names them -> the kernel's access codes.
_ACCESS = {"read": 0, "write": 1, "fetch": 2}


@dataclass
class Thread:
    pid: int
    vcpu: int
    index: int             # n-th thread seen on this (pid, vCPU)
    first_icount: int = 0
    last_icount: int = 0
    exited: bool = False
    stall_ns: float = 0.0  # simulated time spent in the model's synchronous work (MADV_COLLAPSE)

    @property
    def instructions(self) -> int:
        return self.last_icount - self.first_icount


@dataclass
class Process:
    pid: int
    parent: int
    pages: PageCounts = field(default_factory=PageCounts)
    exit_status: int | None = None
    vmas: list[Any] = field(default_factory=list)   # snapshot taken at exit
    mapped: list[dict[str, int]] = field(default_factory=list)  # per VMA, at exit
    exited: bool = False


@dataclass
class CollapseWindow:
    """A PMD a collapse held cleared over [t0, t1) of simulated time.

    A thread whose access lands in the PMD inside the window finds the entry
    cleared, faults and waits on the collapse until t1 (once per window).
    """

    pid: int
    start: int
    end: int
    t0: float
    t1: float
    waited: set[int] = field(default_factory=set)   # id() of threads that stalled


@dataclass
class RunOptions:
    """What the machine models; the CLI fills it from flags."""

    ns_per_insn: float = 0.5
    khugepaged: bool = False   # run the khugepaged thread (MADV_COLLAPSE works regardless)
    utlb: int = 0              # entries of the plugin's micro-TLB (0: none)


class Machine:
    """Consumes Batches (emu.trace.events) and accumulates every result."""

    def __init__(self, arch: str, elf_info: Any, kernel: Any = None,
                 hw: Any = None, options: RunOptions | None = None) -> None:
        self.arch = arch
        self.elf = elf_info
        self.systab = syscalls.SyscallTable.for_arch(arch)
        self.kernel = kernel
        self.hw = hw
        # khugepaged and MADV_COLLAPSE, when the kernel models them
        self.khugepaged = getattr(kernel, "khugepaged", None)
        self.options = options or RunOptions()
        self.processes: dict[int, Process] = {}
        self.threads: dict[tuple[int, int], Thread] = {}
        self.all_threads: list[Thread] = []
        self.syscall_log: list[dict[str, Any]] = []
        self.markers: list[dict[str, Any]] = []
        self.nr_events = 0
        self.nr_fetch = 0
        self.unresolved_faults = 0
        self.unresolved: list[dict[str, Any]] = []
        self.utlb_hits = 0
        self.windows: list[CollapseWindow] = []
        self.columns = Columns()      # per-batch access columns, reused
        # emu_mark(id) -> settings to apply (--at-mark), as an admin writing sysfs.
        self.mark_actions: dict[int, list[Callable[[], None]]] = {}
        self.collapse_stalls = 0
        self.collapse_stall_ns = 0.0
        self.collapse_log: CollapseLog | None = None
        if self.khugepaged is not None:
            # A collapse clears the whole PMD it works in (mTHP collapse too, in v19).
            kernel.bus.subscribe("mm_collapse_huge_page", self._on_collapse)
            self.collapse_log = CollapseLog(kernel.bus)
        self.now_ns = 0.0

    # -- processes and threads -------------------------------------------------

    def _process(self, pid: int, parent: int = 0) -> Process:
        proc = self.processes.get(pid)
        if proc is None:
            proc = Process(pid, parent)
            self.processes[pid] = proc
            if self.kernel is not None:
                if parent and parent in self.processes and not self.processes[parent].exited:
                    self.kernel.fork(parent, pid)
                else:
                    self.kernel.exec_mm(pid, self.elf)
        return proc

    def _thread(self, pid: int, vcpu: int, icount: int) -> Thread:
        th = self.threads.get((pid, vcpu))
        if th is None or th.exited:
            index = 0 if th is None else th.index + 1
            th = Thread(pid, vcpu, index, icount, icount)
            self.threads[(pid, vcpu)] = th
            self.all_threads.append(th)
        return th

    # -- the stream ----------------------------------------------------------------

    def feed(self, batch: ev.Batch) -> None:
        events = batch.events
        n = len(events)
        if n == 0:
            return
        self.nr_events += n
        lo = 0
        while lo < n:
            lo = self._accesses(events, lo, n)
            if lo < n:
                self._special(events[lo], batch.syscalls)
                lo += 1

    def _accesses(self, events: np.ndarray, lo: int, n: int) -> int:
        """The READ/WRITE/FETCH records from lo, one (pid, vCPU) run at a time.

        Returns the index of the record that ended them (or n)."""
        # Chunks never mix threads, so runs are long: split where (pid, vCPU) changes.
        col = self.columns
        hi, bounds, n_fetch = col.gather(events, lo, n)
        self.nr_fetch += n_fetch
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            first, last = events[lo + a], events[lo + b - 1]
            pid = int(first["pid"])
            vcpu = int(first["vcpu"])
            proc = self._process(pid)
            th = self._thread(pid, vcpu, int(first["icount"]))
            th.last_icount = max(th.last_icount, int(last["icount"]))
            kinds, addrs, counts = col.kinds[a:b], col.addrs[a:b], col.counts[a:b]
            proc.pages.add(kinds, addrs, counts)
            if self.windows:
                self._collapse_stall(th, events["icount"][lo + a:lo + b], addrs)
            if self.hw is not None and self.kernel is not None:
                if self.options.utlb:
                    kinds, addrs, counts = self._absorbed(vcpu, col.flags[a:b], kinds, addrs,
                                                          counts)
                self._translate(pid, vcpu, kinds, addrs, counts)
            self._tick(th)
        return hi

    def _absorbed(self, cpu: int, flags: np.ndarray, kinds: np.ndarray, addrs: np.ndarray,
                  counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count the micro-TLB's hits as TLB accesses; only its misses go to the TLBs."""
        hit = (flags & F_ABSORBED).astype(bool)
        if not hit.any():
            return kinds, addrs, counts
        loads = int(counts[hit & (kinds == ev.READ)].sum())
        stores = int(counts[hit & (kinds == ev.WRITE)].sum())
        self.hw.absorb(cpu % self.hw.nr_cpus, loads, stores)
        self.utlb_hits += loads + stores
        keep = ~hit
        return kinds[keep], addrs[keep], counts[keep]

    def _translate(self, pid: int, cpu: int, kinds: np.ndarray, addrs: np.ndarray,
                   counts: np.ndarray) -> None:
        mm = self.kernel.mm(pid)
        cpu %= self.hw.nr_cpus
        self.kernel.switch_mm(cpu, mm)          # the CPU runs this mm now (x86 lazy TLB)
        i, n = 0, len(kinds)
        retries = 0
        while i < n:
            at = i
            i = self.hw.run(cpu, mm.asid, mm.pgd_pfn, kinds, addrs, counts, i, n)
            if i >= n:
                break
            retries = retries + 1 if i == at else 0
            f = self.hw.fault
            access = _ACCESS[f.kind]
            if (retries >= MAX_FAULT_RETRIES
                    or not self.kernel.handle_mm_fault(pid, cpu, f.va, access, f.reason)):
                # QEMU performed this access, so the guest was allowed it: the model
                # lacks a mapping it should have (or keeps faulting on it).  Count it,
                # remember the first few, and go on.
                self.unresolved_faults += 1
                if len(self.unresolved) < 16:
                    self.unresolved.append({"pid": pid, "va": f.va, "kind": f.kind,
                                            "level": f.level, "reason": f.reason})
                i += 1
                retries = 0

    def _on_collapse(self, e: Any) -> None:
        """Open a window for every collapse that cleared a PMD."""
        att = e.args.get("attempt")
        if att is None or att.pmd_cleared_ns is None:
            return
        t0, t1 = att.pmd_cleared_ns
        start = att.address & ~(PMD_SIZE - 1)
        self.windows.append(CollapseWindow(att.mm.pid, start, start + PMD_SIZE, t0, t1))

    def _collapse_stall(self, th: Thread, icounts: np.ndarray, addrs: np.ndarray) -> None:
        """Charge the wait of a thread that touched a PMD while a collapse held it."""
        ns = self.options.ns_per_insn
        for w in self.windows:
            if w.pid != th.pid or id(th) in w.waited:
                continue
            t = icounts * ns + th.stall_ns
            hit = (addrs >= w.start) & (addrs < w.end) & (t >= w.t0) & (t < w.t1)
            if hit.any():
                wait = w.t1 - float(t[int(np.argmax(hit))])
                th.stall_ns += wait
                w.waited.add(id(th))
                self.collapse_stalls += 1
                self.collapse_stall_ns += wait
        # A window is over once every thread of its process has run past it.
        self.windows = [w for w in self.windows if any(
            not t.exited and t.pid == w.pid and t.last_icount * ns + t.stall_ns < w.t1
            for t in self.all_threads)]

    def _tick(self, th: Thread) -> None:
        now = th.last_icount * self.options.ns_per_insn + th.stall_ns
        if now > self.now_ns:
            self.now_ns = now
            if self.kernel is not None:
                self.kernel.tlbstate.now_ns = int(now)   # should_trim_cpumask's clock
            if self.khugepaged is not None and self.options.khugepaged:
                self.khugepaged.run(now)

    def _special(self, rec: np.void, syscalls: np.ndarray) -> None:
        kind = int(rec["kind"])
        pid = int(rec["pid"])
        vcpu = int(rec["vcpu"])
        icount = int(rec["icount"])
        if kind == ev.PROC_START:
            self._process(pid, int(rec["addr"]))
            return
        proc = self._process(pid)
        if kind == ev.PROC_EXIT:
            proc.exit_status = int(rec["addr"])
            self._exit_process(proc)
            return
        th = self._thread(pid, vcpu, icount)
        th.last_icount = max(th.last_icount, icount)
        if kind == ev.VCPU_EXIT:
            th.exited = True
            if self.kernel is not None and self.hw is not None:
                self.kernel.enter_lazy_tlb(vcpu % self.hw.nr_cpus)   # its CPU idles
        elif kind == ev.MARK:
            self._marker(pid, vcpu, int(rec["addr"]), icount)
        elif kind == ev.SYSCALL:
            self._syscall(pid, vcpu, syscalls[int(rec["count"])])

    def _marker(self, pid: int, vcpu: int, mark_id: int, icount: int) -> None:
        """emu_mark(id): record it, then run what the user asked for at this mark."""
        self.markers.append({"pid": pid, "vcpu": vcpu, "id": mark_id, "instructions": icount})
        for action in self.mark_actions.get(mark_id, ()):
            action()

    def _syscall(self, pid: int, vcpu: int, sc: np.void) -> None:
        nr = int(sc["nr"])
        args = tuple(int(a) for a in sc["args"])
        ret = int(sc["ret"])
        if nr == ev.EMU_MARK_NR:
            self._marker(pid, vcpu, args[0], self.threads[(pid, vcpu)].last_icount)
            return
        name = self.systab.name(nr)
        self.syscall_log.append({"pid": pid, "vcpu": vcpu, "nr": nr, "name": name,
                                 "args": list(args), "ret": ret,
                                 "text": syscalls.decode(self.arch, nr, args, ret).text})
        if self.kernel is not None:
            # MADV_COLLAPSE runs in the calling thread: its estimated duration is
            # that thread's time, as the guest would have waited for it.
            self.threads[(pid, vcpu)].stall_ns += self.kernel.syscall(pid, vcpu, name, args, ret)

    def _exit_process(self, proc: Process) -> None:
        if proc.exited:
            return
        proc.exited = True
        for th in self.all_threads:
            if th.pid == proc.pid:
                th.exited = True
        if self.kernel is not None:
            mm = self.kernel.mm(proc.pid)
            proc.vmas = list(mm.vmas)
            if self.hw is not None:
                # What mapped each VMA at the end, before exit tears it down.
                proc.mapped = [vma_census(self.kernel, mm, v.start, v.end) for v in proc.vmas]
            self.kernel.exit_mm(proc.pid)

    def finish(self) -> None:
        """End of stream: processes that sent no exit record exit now."""
        for proc in list(self.processes.values()):
            if not proc.exited:
                self._exit_process(proc)

    # -- results ---------------------------------------------------------------------

    def vma_stats(self, proc: Process) -> list[dict[str, Any]]:
        """Pages touched and accesses per VMA of the process's final layout."""
        out = []
        pages, reads, writes = proc.pages.arrays()
        seen = np.zeros(len(pages), dtype=bool)
        for n, vma in enumerate(proc.vmas):
            lo = int(np.searchsorted(pages, vma.start >> ev.PAGE_SHIFT))
            hi = int(np.searchsorted(pages, vma.end >> ev.PAGE_SHIFT))
            seen[lo:hi] = True
            out.append({"pid": proc.pid, "start": vma.start, "end": vma.end, "kind": vma.kind,
                        "name": vma.name, "flags": vma.flag_str(),
                        "pages_touched": hi - lo,
                        "accesses": {"read": int(reads[lo:hi].sum()),
                                     "write": int(writes[lo:hi].sum())},
                        "mapped": proc.mapped[n] if proc.mapped else {}})
        rest = ~seen
        if rest.any():
            # Touched, then unmapped before the process ended.
            out.append({"pid": proc.pid, "start": None, "end": None, "kind": "unmapped",
                        "name": "", "flags": "", "pages_touched": int(rest.sum()),
                        "accesses": {"read": int(reads[rest].sum()),
                                     "write": int(writes[rest].sum())}})
        return out
