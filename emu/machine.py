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
from emu.checker import Checker
from emu.counting import PageCounts
from emu.gup_agent import GupFastAgent
from emu.kernel.files import decode_path
from emu.kernel.thpmaps import mm_thpmaps, vma_census
from emu.oracle import Oracle
from emu.pcs import PcCounts, record_pcs
from emu.report.khugepaged import CollapseLog
from emu.trace import events as ev
from emu.trace.columns import Columns, absorbed_counts

# A fault the kernel says it fixed may fault again (COW after a read fault, a
# split): this many tries on one access, then it counts as unresolved.
MAX_FAULT_RETRIES = 4

# With a sampler (--report), batches are fed in slices of this many events, so that
# samples come often enough for a picture over time.
SAMPLE_SLICE = 4096

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
    stall_ns: float = 0.0  # simulated time spent waiting: MADV_COLLAPSE, collapses' locks
    # What collapses cost this thread: faults that met a collapse holding the mmap/VMA
    # lock (and waited for it), the time waited (faults and syscalls), and accesses
    # that proceeded on a TLB entry into a range a collapse had cleared.
    collapse_faults: int = 0
    collapse_wait_ns: float = 0.0
    collapse_tlb_hits: int = 0

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
    thpmaps: dict[str, Any] | None = None   # kernel.thpmaps.mm_thpmaps at exit
    exited: bool = False


@dataclass
class RunOptions:
    """What the machine models; the CLI fills it from flags."""

    ns_per_insn: float = 0.5
    khugepaged: bool = False   # run the khugepaged thread (MADV_COLLAPSE works regardless)
    utlb: int = 0              # entries of the plugin's micro-TLB (0: none)
    oracle: bool = False       # check every read against the guest's last write
    # the synthetic GUP-fast user (emu.gup_agent): attempts per simulated second (0: none),
    # pages per attempt, how long each pin is held
    gup_fast_rate: float = 0.0
    gup_fast_pages: int = 16
    gup_fast_hold_ns: float = 10_000.0
    check: bool = False        # the invariant checker (emu.checker) after every collapse step
    annotate: bool = False     # the stream has PC records: count misses etc. per instruction


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
        self.columns = Columns()      # per-batch access columns, reused
        # emu_mark(id) -> settings to apply (--at-mark), as an admin writing sysfs.
        self.mark_actions: dict[int, list[Callable[[], None]]] = {}
        self.collapse_stalls = 0
        self.collapse_stall_ns = 0.0
        self.collapse_log: CollapseLog | None = None
        # emu_mark ids at which to take thpmaps of every live process (--inspect-at),
        # and what was taken: {"mark", "instructions", **mm_thpmaps}.
        self.inspect_marks: set[int] = set()
        self.inspections: list[dict[str, Any]] = []
        # What each CPU's TLBs held at those markers and when the last process exited
        # (emu.hw.inspect): {"at", "cpus": [{"cpu", "tlbs"}]}.
        self.tlb_inspections: list[dict[str, Any]] = []
        # Called at batch boundaries when set (emu.report's samplers); off by default.
        # (with force=True before a process's memory is torn down at exit)
        self.sampler: Callable[..., None] | None = None
        if self.khugepaged is not None:
            self.collapse_log = CollapseLog(kernel.bus)
        self.oracle: Oracle | None = None
        if self.options.oracle and kernel is not None and hw is not None:
            self.oracle = Oracle(kernel.physmem.version)
            self._last_collapse: dict[tuple[int, int], dict[str, Any]] = {}
            bus = kernel.bus
            bus.subscribe("emu_zap", lambda e: self.oracle.drop(e.args["asid"], e.args["start"],
                                                                 e.args["end"]))
            bus.subscribe("emu_move", lambda e: self.oracle.move(
                e.args["asid"], e.args["old"], e.args["new"], e.args["length"]))
            bus.subscribe("emu_dup_mmap", lambda e: self.oracle.fork(e.args["parent_asid"],
                                                                     e.args["child_asid"]))
            bus.subscribe("emu_lazyfree", lambda e: self.oracle.lazyfree(
                e.args["asid"], e.args["start"], e.args["end"]))
            bus.subscribe("emu_lazyfree_discard", lambda e: self.oracle.discard(
                e.args["asid"], e.args["va"]))
            bus.subscribe("mm_collapse_huge_page", self._note_collapse)
        self.checker: Checker | None = None
        if self.options.check and kernel is not None and hw is not None:
            self.checker = Checker(kernel, hw)
        self.gup_agent: GupFastAgent | None = None
        if kernel is not None:
            # steps due inside a GUP-fast walk's window run before its recheck
            kernel.gup.run_until = self._run_khugepaged
            if self.options.gup_fast_rate > 0:
                self.gup_agent = GupFastAgent(kernel, self.options.gup_fast_rate,
                                              self.options.gup_fast_pages,
                                              self.options.gup_fast_hold_ns)
        self.now_ns = 0.0
        # A dynamic program's interpreter (ElfInfo), placed at its first fetch.
        self.interp: Any = None
        # --annotate: per kind (emu.guest.annotate.KINDS), events per (pid, instruction).
        self.annotations = PcCounts()
        # Path records (EMU_PATH_NR) waiting for their open's SYSCALL, per (pid, vCPU).
        self._paths: dict[tuple[int, int], list[bytes]] = {}

    # -- processes and threads -------------------------------------------------

    def _process(self, pid: int, parent: int = 0) -> Process:
        proc = self.processes.get(pid)
        if proc is None:
            proc = Process(pid, parent)
            self.processes[pid] = proc
            if self.kernel is not None:
                if parent and parent in self.processes and not self.processes[parent].exited:
                    self._unlock(parent)          # dup_mmap takes the parent's mmap_lock
                    self.kernel.fork(parent, pid)
                else:
                    self.kernel.exec_mm(pid, self.elf, interp=self.interp)
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
        if self.sampler is not None and n > SAMPLE_SLICE:
            # Samples are taken between slices: a batch holds millions of instructions.
            for lo in range(0, n, SAMPLE_SLICE):
                self.feed(ev.Batch(events[lo:lo + SAMPLE_SLICE], batch.syscalls))
            return
        self.nr_events += n
        lo = 0
        while lo < n:
            lo = self._accesses(events, lo, n)
            if lo < n:
                self._special(events[lo], batch.syscalls)
                lo += 1
        if self.sampler is not None:
            self.sampler(self)

    def _accesses(self, events: np.ndarray, lo: int, n: int) -> int:
        """The READ/WRITE/FETCH records from lo, one (pid, vCPU) run at a time.

        Returns the index of the record that ended them (or n)."""
        # Chunks never mix threads, so runs are long: split where (pid, vCPU) changes.
        col = self.columns
        hi, bounds, n_fetch = col.gather(events, lo, n)
        self.nr_fetch += n_fetch
        # Page counts depend on nothing but the records: one call for the whole slice
        # when its runs are all one process's (threads interleave chunk by chunk, so
        # a multi-threaded guest's runs are a few hundred records each).
        pids = events["pid"][lo + np.asarray(bounds[:-1], dtype=np.int64)]
        one_pid = len(pids) > 0 and bool((pids == pids[0]).all())
        if one_pid:
            self._process(int(pids[0])).pages.add(col.kinds[:bounds[-1]],
                                                  col.addrs[:bounds[-1]],
                                                  col.counts[:bounds[-1]])
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            first, last = events[lo + a], events[lo + b - 1]
            pid = int(first["pid"])
            vcpu = int(first["vcpu"])
            proc = self._process(pid)
            th = self._thread(pid, vcpu, int(first["icount"]))
            th.last_icount = max(th.last_icount, int(last["icount"]))
            kinds, addrs, counts = col.kinds[a:b], col.addrs[a:b], col.counts[a:b]
            if not one_pid:
                proc.pages.add(kinds, addrs, counts)
            if self.hw is not None and self.kernel is not None:
                if self.options.utlb:
                    self._absorbed(vcpu, kinds, counts)
                icounts = events["icount"][lo + a:lo + b]
                pcs = record_pcs(kinds, addrs) if self.options.annotate else None
                start = 0
                while start < b - a:
                    # Up to khugepaged's next step: the guest meets each state it leaves.
                    end = self._until_next_step(th, icounts, start)
                    k_, a_, c_ = kinds[start:end], addrs[start:end], counts[start:end]
                    i_ = icounts[start:end]
                    self._translate(th, k_, a_, c_, i_,
                                    None if pcs is None else pcs[start:end])
                    if end < b - a:
                        self._run_actors(int(icounts[end]) * self.options.ns_per_insn
                                         + th.stall_ns)
                    start = end
            self._tick(th)
        return hi

    def _until_next_step(self, th: Thread, icounts: np.ndarray, start: int) -> int:
        """End of the records of this run that come before khugepaged's next step."""
        kh = self.khugepaged
        n = len(icounts)
        if kh is None or not self.options.khugepaged:
            return n
        nxt = kh.next_step_ns
        ns = self.options.ns_per_insn
        if nxt is None or int(icounts[-1]) * ns + th.stall_ns < nxt:
            return n
        # icounts never decrease within one thread's run
        cut = int(np.searchsorted(icounts[start:], (nxt - th.stall_ns) / ns, side="left"))
        return start + max(cut, 1)

    def _run_khugepaged(self, now: float) -> None:
        if self.khugepaged is not None and self.options.khugepaged:
            self.khugepaged.run(now)

    def _advance_agent(self, now: float) -> None:
        """The GUP-fast user's events up to now (khugepaged is stepped by the caller)."""
        agent = self.gup_agent
        if agent is not None:
            while agent.next_event_ns() <= now:
                agent.step()

    def _run_actors(self, now: float) -> None:
        """The machine's own actors up to now, in time order: the synthetic GUP-fast
        user's attempts and releases, khugepaged's steps."""
        agent = self.gup_agent
        if agent is not None:
            while (t := agent.next_event_ns()) <= now:
                self._run_khugepaged(t)
                agent.step()
        self._run_khugepaged(now)

    def _absorbed(self, cpu: int, kinds: np.ndarray, counts: np.ndarray) -> None:
        """Count the micro-TLB's hits as loads and stores; the TLB model skips them."""
        loads, stores = absorbed_counts(kinds, counts)
        if loads or stores:
            self.hw.absorb(cpu % self.hw.nr_cpus, int(loads), int(stores))
            self.utlb_hits += int(loads) + int(stores)

    def _translate(self, th: Thread, kinds: np.ndarray, addrs: np.ndarray,
                   counts: np.ndarray, icounts: np.ndarray,
                   pcs: np.ndarray | None = None) -> None:
        pid = th.pid
        mm = self.kernel.mm(pid)
        cpu = th.vcpu % self.hw.nr_cpus
        self.kernel.switch_mm(cpu, mm)          # the CPU runs this mm now (x86 lazy TLB)
        # Accesses into a range a collapse has cleared proceed only on a TLB entry: count
        # them up to the first wait (after it, the collapse is done).
        cleared = mm.collapse_cleared
        i, n = 0, len(kinds)
        oracle = self.oracle
        pfns = np.empty(n, dtype=np.int64) if oracle is not None else None
        miss = np.zeros(n, dtype=np.int8) if pcs is not None else None
        retries = 0
        while i < n:
            at = i
            if miss is not None:
                miss[i] = 0           # a retried event: its faulted walk was counted apart
            i = self.hw.run(cpu, mm.asid, mm.pgd_pfn, kinds, addrs, counts, i, n, pfns, miss)
            if miss is not None and i > at:
                self.annotations.add_misses(pid, miss[at:i], pcs[at:i], kinds[at:i])
            if oracle is not None and i > at:
                for j in oracle.check(mm.asid, kinds, addrs, pfns, at, i):
                    self._report_lost(th, mm, int(addrs[j]), int(icounts[j]), int(pfns[j]))
            if i >= n:
                break
            retries = retries + 1 if i == at else 0
            f = self.hw.fault
            access = _ACCESS[f.kind]
            if self.kernel.bus.wants("emu_page_fault"):
                self.kernel.bus.publish("emu_page_fault", self._thread_ns(th), pid=pid,
                                        vcpu=th.vcpu, va=f.va, kind=f.kind, reason=f.reason)
            if mm.mmap_lock == "write" and mm.locked_vma is not None \
                    and mm.locked_vma.start <= f.va < mm.locked_vma.end:
                # The collapse holds the VMA's lock: the fault (counted, as the kernel
                # counts it on entry) waits until it is done; the access is tried again.
                self.kernel.stats.count_vm_event("pgfault")
                th.collapse_faults += 1
                if pcs is not None:
                    self.annotations.add("collapse_stall", pid, pcs[i:i + 1])
                if cleared is not None:
                    th.collapse_tlb_hits += self._in_range(kinds[:i], addrs[:i], cleared)
                    cleared = None
                t = int(icounts[i]) * self.options.ns_per_insn
                self._wait_for_collapse(th, mm, t + th.stall_ns)
                retries = 0
                continue
            if pcs is not None and access != _ACCESS["fetch"]:
                self.annotations.add("fault", pid, pcs[i:i + 1])
            if (retries >= MAX_FAULT_RETRIES
                    or not self.kernel.handle_mm_fault(pid, th.vcpu, f.va, access, f.reason)):
                # QEMU performed this access, so the guest was allowed it: the model
                # lacks a mapping it should have (or keeps faulting on it).  Count it,
                # remember the first few, and go on.
                self.unresolved_faults += 1
                if len(self.unresolved) < 16:
                    self.unresolved.append({"pid": pid, "va": f.va, "kind": f.kind,
                                            "level": f.level, "reason": f.reason})
                i += 1
                retries = 0
        if cleared is not None:
            th.collapse_tlb_hits += self._in_range(kinds, addrs, cleared)

    @staticmethod
    def _in_range(kinds: np.ndarray, addrs: np.ndarray, r: tuple[int, int]) -> int:
        """Records into r that the TLBs looked up (micro-TLB hits never reach them)."""
        return int(np.count_nonzero((kinds <= ev.FETCH) & (addrs >= r[0]) & (addrs < r[1])))

    def _note_collapse(self, e: Any) -> None:
        att = e.args["attempt"]
        self._last_collapse[(att.mm.asid, att.address & ~(PMD_SIZE - 1))] = {
            "address": att.address, "order": att.order, "strategy": att.strategy,
            "result": att.result.name, "steps": [n for n, _ in att.steps],
            "t_start_ns": att.t_start_ns, "t_end_ns": att.t_end_ns}

    def _report_lost(self, th: Thread, mm: Any, va: int, icount: int, pfn: int) -> None:
        """The first few lost writes, with the collapse last seen in their PMD."""
        if len(self.oracle.reports) >= 16:
            return
        self.oracle.reports.append({
            "pid": th.pid, "vcpu": th.vcpu, "va": va, "instructions": icount, "frame": pfn,
            "collapse": self._last_collapse.get((mm.asid, va & ~(PMD_SIZE - 1)))})

    def _unlock(self, pid: int, th: Thread | None = None) -> None:
        """Before something that takes pid's mmap_lock: wait for khugepaged to drop it
        (charged to the thread, if one waits)."""
        mm = self.kernel.mms.get(pid)
        if mm is None or mm.mmap_lock is None or self.khugepaged is None:
            return
        if th is None:
            self.khugepaged.run_until_unlocked(mm, self._advance_agent)
            return
        self._wait_for_collapse(th, mm, th.last_icount * self.options.ns_per_insn
                                + th.stall_ns)

    def _wait_for_collapse(self, th: Thread, mm: Any, now: float) -> None:
        """Wait for the collapse that holds mm's lock to release it: khugepaged runs its
        steps to the unlock, and the thread's clock moves to that moment."""
        release = self.khugepaged.run_until_unlocked(mm, self._advance_agent)
        wait = max(0.0, release - now)
        th.stall_ns += wait
        th.collapse_wait_ns += wait
        self._stalled(th, now, wait, "collapse")
        self.collapse_stalls += 1
        self.collapse_stall_ns += wait

    def _tick(self, th: Thread) -> None:
        now = th.last_icount * self.options.ns_per_insn + th.stall_ns
        if now > self.now_ns:
            self.now_ns = now
            if self.kernel is not None:
                self.kernel.tlbstate.now_ns = int(now)   # should_trim_cpumask's clock
            self._run_actors(now)

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
        if mark_id in self.inspect_marks and self.kernel is not None and self.hw is not None:
            for p in sorted(self.kernel.mms):
                snap = mm_thpmaps(self.kernel, self.kernel.mm(p), with_runs=True)
                self.inspections.append({"mark": mark_id, "instructions": icount, **snap})
            self._inspect_tlbs({"mark": mark_id, "instructions": icount, "pid": pid,
                                "vcpu": vcpu})
        for action in self.mark_actions.get(mark_id, ()):
            action()

    def _syscall(self, pid: int, vcpu: int, sc: np.void) -> None:
        nr = int(sc["nr"])
        args = tuple(int(a) for a in sc["args"])
        ret = int(sc["ret"])
        if nr == ev.EMU_MARK_NR:
            self._marker(pid, vcpu, args[0], self.threads[(pid, vcpu)].last_icount)
            return
        if nr == ev.EMU_PATH_NR:
            self._paths.setdefault((pid, vcpu), []).append(sc.tobytes()[8:])
            return
        if nr == ev.EMU_EXEC_NR:
            if self.kernel is not None:
                self.kernel.place_exec(pid, args[0], args[2])
            return
        name = self.systab.name(nr)
        path = decode_path(self._paths.pop((pid, vcpu), []))
        entry = {"pid": pid, "vcpu": vcpu, "nr": nr, "name": name, "args": list(args),
                 "ret": ret, "text": syscalls.decode(self.arch, nr, args, ret).text}
        if path is not None:
            entry["path"] = path
            entry["text"] += f'  "{path}"'
        self.syscall_log.append(entry)
        if self.kernel is not None:
            self.kernel.files.syscall(pid, name, args, ret, path)
            th = self.threads[(pid, vcpu)]
            if self.kernel.handles_syscall(name):      # it takes mmap_lock: a collapse
                self._unlock(pid, th)                  # holding it makes it wait
            # MADV_COLLAPSE runs in the calling thread: its estimated duration is
            # that thread's time, as the guest would have waited for it.
            t0 = self._thread_ns(th)
            wait = self.kernel.syscall(pid, vcpu, name, args, ret)
            wait += self.kernel.gup_syscall(pid, name, args, ret, t0 + wait)
            th.stall_ns += wait
            if wait:
                self._stalled(th, t0, wait, name)

    def _thread_ns(self, th: Thread) -> float:
        """The thread's simulated time now (its instructions plus its stalls)."""
        return th.last_icount * self.options.ns_per_insn + th.stall_ns

    def _stalled(self, th: Thread, t0: float, wait: float, cause: str) -> None:
        """Tell subscribers (the timeline) that th stood still over [t0, t0 + wait)."""
        if self.kernel is not None and self.kernel.bus.wants("emu_guest_stall"):
            self.kernel.bus.publish("emu_guest_stall", t0, pid=th.pid, vcpu=th.vcpu,
                                    dur_ns=wait, cause=cause)

    def _exit_process(self, proc: Process) -> None:
        if proc.exited:
            return
        proc.exited = True
        for th in self.all_threads:
            if th.pid == proc.pid:
                th.exited = True
        if self.sampler is not None:
            self.sampler(self, force=True)
        if self.kernel is not None:
            self._unlock(proc.pid)                # exit_mmap waits for the mmap_lock too
            if self.checker is not None:
                self.checker.where = f"at the exit of pid {proc.pid}"
                self.checker.check_all()
            mm = self.kernel.mm(proc.pid)
            proc.vmas = list(mm.vmas)
            if self.hw is not None:
                # What mapped each VMA at the end, before exit tears it down.
                proc.mapped = [vma_census(self.kernel, mm, v.start, v.end) for v in proc.vmas]
                proc.thpmaps = mm_thpmaps(self.kernel, mm, with_runs=True)
                if all(p.exited for p in self.processes.values()):
                    self._inspect_tlbs("exit")        # before exit_mm empties the tables
            self.kernel.exit_mm(proc.pid)

    def _inspect_tlbs(self, at: Any) -> None:
        """Every CPU that ran a guest thread: what its TLBs hold now."""
        from emu.hw.inspect import cpu_tlbs
        cpus = sorted({t.vcpu % self.hw.nr_cpus for t in self.all_threads})
        self.tlb_inspections.append({"at": at, "cpus": [{"cpu": c, "tlbs": cpu_tlbs(self.hw, c)}
                                                        for c in cpus]})

    def finish(self) -> None:
        """End of stream: processes that sent no exit record exit now."""
        for proc in list(self.processes.values()):
            if not proc.exited:
                self._exit_process(proc)
        if self.gup_agent is not None:
            self.gup_agent.release_all()

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
