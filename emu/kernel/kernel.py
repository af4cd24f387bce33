"""The kernel model: mms, physical memory, faults, fork/COW, zap and the mm syscalls.

One ``Kernel`` per simulated machine.  emu.machine drives it with
``exec_mm``/``fork``/``exit_mm``/``syscall``/``handle_mm_fault``; the hardware
walks the page tables it writes.  Every TLB flush goes through
emu.kernel.tlbflush (skipped when ``hw`` is None, as in unit tests).

The paths live in mixins, one file each, named for the kernel file they follow:
rmap.py (folios, rmap, counters), memory.py (faults, COW), unmap.py (zap, PMD
split, free_pgtables, MADV_FREE), fork.py, mprotect.py, mremap.py.
"""

from __future__ import annotations

import numpy as np

from emu.arch import get_arch
from emu.bus import EventBus
from emu.hw.counters import FLUSH_KINDS
from emu.kernel import syscalls as _syscalls
from emu.kernel import tlbflush
from emu.kernel.buddy import BuddyAllocator
from emu.kernel.config import ThpConfig
from emu.kernel.files import Files
from emu.kernel.folio import Folio
from emu.kernel.fork import ForkMixin
from emu.kernel.gup import Gup
from emu.kernel.khugepaged.daemon import Khugepaged
from emu.kernel.khugepaged.knobs import KhugepagedKnobs
from emu.kernel.khugepaged.madvise_collapse import MadviseCollapseRecord, madvise_collapse
from emu.kernel.memory import ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, FaultMixin
from emu.kernel.mm import MM
from emu.kernel.mprotect import MprotectMixin
from emu.kernel.mremap import MremapMixin
from emu.kernel.pgtable import PageTableOps
from emu.kernel.rmap import FolioMixin
from emu.kernel.stats import VmStat
from emu.kernel.swap import SwapMixin, SwapSpace
from emu.kernel.unmap import UnmapMixin
from emu.kernel.vma import VM_EXEC, VM_READ, VM_WRITE, VMA, vm_prot
from emu.mem.physmem import PhysMem

__all__ = ["ACCESS_EXEC", "ACCESS_READ", "ACCESS_WRITE", "Kernel", "vm_prot"]


class Kernel(FolioMixin, FaultMixin, UnmapMixin, ForkMixin, MprotectMixin, MremapMixin,
             SwapMixin):
    """Linux's memory manager for the anonymous-THP questions emu asks.

    Built with the hardware whose TLBs its flushes reach (None: no TLB model, as in
    unit tests) and, with ``khugepaged`` knobs, with the khugepaged thread and
    MADV_COLLAPSE; without them MADV_COLLAPSE is ignored, as QEMU ignores it.
    Everything that happens is published on ``bus``.
    """

    def __init__(self, arch_name: str, config: ThpConfig | None, hw, physmem: PhysMem,
                 fragment: float = 0.0, fragment_max_order: int = 0, seed: int = 0,
                 khugepaged: KhugepagedKnobs | None = None, algo: str = "v19",
                 strategy: str = "pmd") -> None:
        self.arch = get_arch(arch_name)
        self.bus = EventBus()
        self.config = config if config is not None else ThpConfig.kernel_defaults()
        self.hw = hw
        self.physmem = physmem
        self.page_shift = self.arch.page_shift
        self.page_size = 1 << self.page_shift
        self.pmd_order = self.arch.pmd_order
        self.buddy = BuddyAllocator(physmem.nr_frames, first_pfn=1)   # pfn 0 never handed out
        self.stats = VmStat(tlbflush_counters=self.arch.name == "x86_64")
        self.pt = PageTableOps(self.arch, physmem, self.buddy, self.stats, self._flush)
        self.pt.folio_of_pfn = self.folio_of_pfn
        self.folios: dict[int, Folio] = {}
        self._head = np.full(physmem.nr_frames, -1, dtype=np.int64)
        self.page_cache: dict[tuple[str, int], Folio] = {}
        self.file_pages: dict[str, int] = {}    # files cached whole: their size in pages
        self._pending_pie: dict[int, object] = {}   # pid -> static-PIE ELF awaiting its base
        # Dynamic programs: the interpreter waits for its first fetch (QEMU starts
        # there), a PIE main program for QEMU's load address (place_exec).
        self._pending_interp: dict[int, tuple[object, str]] = {}
        self._pending_main: dict[int, object] = {}
        self.files = Files()                          # fd -> path, per process
        # /sys/kernel/debug/fault_around_bytes (default 64 KiB); page size disables it
        self.fault_around_bytes = 65536
        # Fault injection (in the spirit of /sys/kernel/debug/fail_page_alloc): folio
        # allocations of these orders fail, so fallback and back-off paths can be driven.
        self.fail_page_alloc: set[int] = set()
        self.mms: dict[int, MM] = {}
        self._next_asid = 1
        self.current_cpu: int | None = None     # the vCPU whose fault/syscall runs now
        self.tlbstate = tlbflush.TlbState()     # x86 cpu_tlbstate, mm tlb_gen (tlbflush.py)
        self.flush_cause: str | None = None     # what the flushes issued now are for
        # per cause: flush calls and the hardware operations they issued (emu.hw kinds)
        self.flushes_by_cause: dict[str, dict[str, int]] = {}
        self.swap = SwapSpace()
        # set to a list to record every COW write fault as (pid, va, 'copy'|'reuse')
        self.cow_log: list[tuple[int, int, str]] | None = None
        zp = self.buddy.alloc(0)
        assert zp is not None
        physmem.zero(zp)
        self.zero_pfn = zp
        self.huge_zero_pfn: int | None = None
        if fragment:
            self.buddy.fragment(fragment, fragment_max_order, seed)
        self.khugepaged = (Khugepaged(self, khugepaged, algo, strategy)
                           if khugepaged is not None else None)
        self.gup = Gup(self)

    # ===== public views ===========================================================

    @property
    def vmstat(self) -> dict[str, int]:
        return dict(self.stats.vmstat)

    @property
    def mthp_stats(self) -> dict[int, dict[str, int]]:
        return {kb: dict(d) for kb, d in self.stats.mthp.items()}

    @property
    def nr_free_frames(self) -> int:
        return self.buddy.nr_free

    def cpu_of(self, vcpu: int) -> int:
        """The hardware CPU a vCPU runs on (vCPU n on CPU n mod nr_cpus, as emu.machine)."""
        n = getattr(self.hw, "nr_cpus", 0)
        return vcpu % n if n else vcpu

    def mm(self, pid: int) -> MM:
        return self.mms[pid]

    def enter(self, pid: int, vcpu: int) -> MM:
        """The mm a fault or syscall of (pid, vcpu) runs in, now current on its CPU.

        An mm QEMU set up unseen (no exec record) is created empty.
        """
        mm = self.mms.get(pid)
        if mm is None:
            mm = self._new_mm(pid)
        cpu = self.cpu_of(vcpu)
        self.switch_mm(cpu, mm)
        self.current_cpu = cpu
        return mm

    # ===== TLB ======================================================================

    def switch_mm(self, cpu: int, mm: MM) -> None:
        """The CPU runs a thread of mm now (switch_mm_irqs_off): it joins the mm's
        cpumask and, on x86, flushes a PCID that went stale while it ran another mm."""
        mm.cpumask.add(cpu)
        if self.tlbstate.loaded.get(cpu) == mm.asid and cpu not in self.tlbstate.lazy:
            return
        before = self._issued()
        tlbflush.switch_mm(self.hw, self.tlbstate, cpu, mm.asid)
        if before is not None:
            self._account("switch_mm", before)

    def enter_lazy_tlb(self, cpu: int) -> None:
        """The CPU's thread stopped (exit): it idles with the mm still loaded, lazily."""
        if self.tlbstate.loaded.get(cpu) is not None:
            self.tlbstate.lazy.add(cpu)

    def _cause(self) -> str:
        """What a flush issued now is for: the running syscall/fault, else khugepaged
        (the only work done on no vCPU)."""
        if self.flush_cause is not None:
            return self.flush_cause
        return "khugepaged" if self.current_cpu is None else "other"

    def _issued(self):
        return None if self.hw is None else self.hw.flush_issued.sum(axis=0)

    def _account(self, cause: str, before) -> dict[str, int]:
        """Add the hardware operations issued since ``before`` to the cause's tally;
        return them under the nr_tlb_* names the collapse cost model reads (the work
        done on every CPU, not the vmstat meaning)."""
        delta = self.hw.flush_issued.sum(axis=0) - before
        if cause == "switch_mm" and not delta.any():
            return {}
        tally = self.flushes_by_cause.setdefault(cause, {"flushes": 0})
        if cause != "switch_mm":
            tally["flushes"] += 1
        ops = {}
        for i, n in enumerate(delta):
            if n:
                ops[FLUSH_KINDS[i]] = int(n)
                tally[FLUSH_KINDS[i]] = tally.get(FLUSH_KINDS[i], 0) + int(n)
        full = ops.get("cr3_flush", 0) + ops.get("tlbi_aside1is", 0)
        return {"nr_tlb_local_flush_all": full,
                "nr_tlb_local_flush_one": sum(ops.values()) - full - ops.get("ipi", 0),
                "nr_tlb_remote_flush_received": ops.get("ipi", 0)}

    def _flush(self, mm: MM, start: int, end: int, stride_shift: int, last_level: bool,
               freed_tables: bool | None = None) -> dict[str, int]:
        """flush_tlb_mm_range()/__flush_tlb_range() of the mm through tlbflush (none
        without hw).  ``freed_tables`` (x86: IPIs to lazy CPUs too) defaults to
        ``not last_level``: x86 flush_tlb_range passes true since early 2025 (page-table
        detaching callers such as pmdp_collapse_flush), flush_tlb_page false.
        Returns the work done (see _account)."""
        if self.hw is None:
            return {}
        freed = (not last_level) if freed_tables is None else freed_tables
        before = self._issued()
        st = tlbflush.flush_tlb_range(self.hw, mm.asid, mm.cpumask, start, end,
                                      stride_shift, last_level, this_cpu=self.current_cpu,
                                      freed_tables=freed, state=self.tlbstate)
        self._count_flush(st)
        cause = self._cause()
        work = self._account(cause, before)
        self.bus.publish("tlb_flush", 0, pid=mm.pid, start=start, end=end,
                         stride_shift=stride_shift, last_level=last_level,
                         cpu=self.current_cpu, cause=cause, work=work)
        return work

    def flush_tlb_page(self, mm: MM, va: int) -> dict[str, int]:
        """flush_tlb_page(): one leaf entry (COW, ptep_clear_flush)."""
        return self._flush(mm, va, va + self.page_size, self.page_shift, True, False)

    def flush_pmd_tlb_range(self, mm: MM, start: int, end: int) -> dict[str, int]:
        """flush_pmd_tlb_range() after a PMD changed (pmdp_invalidate, pmdp_huge_clear_flush).

        arm64 overrides it with a PMD stride (one TLBI per 2 MiB, level hint 2); x86 has
        no override, so it is flush_tlb_range with PAGE_SIZE stride: 512 strides exceed
        tlb_single_page_flush_ceiling and the PCID is flushed whole."""
        if self.arch.name == "arm64":
            return self._flush(mm, start, end, self.pt.pmd_shift, False)
        return self._flush(mm, start, end, self.page_shift, False)

    def tlb_finish_mmu(self, mm: MM, tlb: tlbflush.MmuGather) -> dict[str, int]:
        """tlb_finish_mmu() -> tlb_flush(): flush the gathered span with the stride of the
        lowest level that changed (tlb_get_unmap_shift); nothing when nothing changed."""
        if not tlb.needs_flush:
            return {}
        return self._flush(mm, tlb.start, tlb.end, tlb.unmap_shift(), not tlb.freed_tables,
                           tlb.freed_tables)

    def tlb_remove_table_sync_one(self) -> int:
        """tlb_remove_table_sync_one() after pmdp_collapse_flush: an IPI to every other
        online CPU (MMU_GATHER_RCU_TABLE_FREE, x86 and arm64).  Returns the IPIs."""
        if self.hw is None:
            return 0
        before = self._issued()
        n = tlbflush.tlb_remove_table_sync_one(self.hw, self.current_cpu)
        cause = self._cause()
        self._account(cause, before)
        self.flushes_by_cause[cause]["flushes"] -= 1        # an IPI, not a flush
        self.flushes_by_cause[cause]["sync_ipis"] = \
            self.flushes_by_cause[cause].get("sync_ipis", 0) + n
        return n

    def _flush_mm(self, mm: MM) -> None:
        """flush_tlb_mm() (fork's parent, exit)."""
        if self.hw is None:
            return
        before = self._issued()
        self._count_flush(tlbflush.flush_tlb_mm(self.hw, mm.asid, mm.cpumask,
                                                this_cpu=self.current_cpu,
                                                state=self.tlbstate))
        cause = self._cause()
        work = self._account(cause, before)
        self.bus.publish("tlb_flush", 0, pid=mm.pid, start=0, end=None, stride_shift=0,
                         last_level=False, cpu=self.current_cpu, cause=cause, work=work)

    def _count_flush(self, st: dict[str, int]) -> None:
        if self.arch.name != "x86_64":
            return                        # count_vm_tlb_event(): arch/x86 only
        for name, n in st.items():
            if n:
                self.stats.count_vm_event(name, n)

    # ===== mm lifecycle ===========================================================

    def _new_mm(self, pid: int) -> MM:
        if pid in self.mms:
            self.exit_mm(pid)
        asid = self._next_asid
        self._next_asid += 1
        mm = MM(pid=pid, asid=asid, pgd_pfn=0)
        mm.pgd_pfn = self.pt.alloc_table(mm)
        self.mms[pid] = mm
        return mm

    def exec_mm(self, pid: int, elf_info, bias: int | None = None, interp=None) -> MM:
        """A fresh mm with the ELF's PT_LOAD mappings and an empty brk heap.

        A position-independent ELF is loaded by QEMU at a base chosen at run time:
        with ``bias`` None a static PIE's mappings are placed at the first
        instruction fetch outside any VMA, taken as the entry point's page.  A
        dynamic program's interpreter (``interp``, its ElfInfo; named by PT_INTERP)
        is placed the same way, since QEMU starts the guest at the interpreter's
        entry; a dynamic PIE waits for place_exec (QEMU's start_code, which the
        plugin sends at the first syscall, before the interpreter reads the
        program).  Without them their pages become implicit VMAs.
        """
        mm = self._new_mm(pid)
        dynamic = getattr(elf_info, "interp", None) is not None
        if dynamic and interp is not None:
            self._pending_interp[pid] = (interp, str(elf_info.interp))
        if bias is None:
            if getattr(elf_info, "is_pie", False):
                if not dynamic:
                    self._pending_pie[pid] = elf_info
                else:
                    self._pending_main[pid] = elf_info
                return mm
            bias = 0
        self._map_elf(mm, elf_info, bias)
        return mm

    def place_exec(self, pid: int, start_code: int, entry_code: int) -> None:
        """Where QEMU loaded the program: its lowest executable segment's address
        (qemu_plugin_start_code) and the entry it started (the interpreter's, for a
        dynamic program).  Places a waiting PIE main program; checks the others."""
        mm = self.mms.get(pid)
        elf = self._pending_main.pop(pid, None)
        if mm is None or elf is None:
            return
        low = min((s.vaddr for s in elf.segments if s.executable), default=None)
        if low is None:
            return
        bias = start_code - low
        for v in list(mm.vmas.overlapping(*self._elf_span(elf, bias))):
            if v.kind == "implicit":                  # touched before we knew: redo it
                self.zap_range(mm, v.start, v.end, flush=False)
                mm.vmas.remove(v)
        self._map_elf(mm, elf, bias)

    def _elf_span(self, elf, bias: int) -> tuple[int, int]:
        lo = min(s.vaddr for s in elf.segments) + bias
        hi = max(s.end for s in elf.segments) + bias
        return lo & ~(self.page_size - 1), (hi + self.page_size - 1) & ~(self.page_size - 1)

    def _map_interp(self, mm: MM, va: int) -> None:
        """The interpreter at its first fetch: that page holds its entry point."""
        interp, name = self._pending_interp.pop(mm.pid)
        bias = (va & ~(self.page_size - 1)) - (int(interp.entry) & ~(self.page_size - 1))
        self._map_elf(mm, interp, bias, name=name, set_brk=False)

    def _map_elf(self, mm: MM, elf_info, bias: int, name: str | None = None,
                 set_brk: bool = True) -> None:
        path = name or str(getattr(elf_info, "path", "elf"))
        size = max((s.offset + s.filesz for s in getattr(elf_info, "segments", ())), default=0)
        self.file_pages[path] = (size + self.page_size - 1) >> self.page_shift
        for seg in getattr(elf_info, "segments", ()):
            flags = (VM_READ if seg.readable else 0) | (VM_WRITE if seg.writable else 0) \
                | (VM_EXEC if seg.executable else 0)
            for start, end, kind in seg.vmas(bias):
                if kind == "file":
                    name = "text" if seg.executable else ("data" if seg.writable else "rodata")
                    vma = VMA(start, end, flags, "file", name, path,
                              (seg.offset - (seg.vaddr + bias - start)) >> self.page_shift)
                else:
                    vma = VMA(start, end, flags, "anon", "bss")
                for old in mm.vmas.carve(start, end):   # a later PT_LOAD maps over (MAP_FIXED)
                    mm.vmas.remove(old)
                mm.vmas.insert(vma)
        if set_brk:
            brk = int(getattr(elf_info, "brk", 0)) + bias
            mm.start_brk = mm.brk = brk

    def new_mm(self, pid: int) -> MM:
        """An empty mm (tests, or a process whose ELF is unknown)."""
        return self._new_mm(pid)

    def exit_mm(self, pid: int) -> None:
        """exit_mmap(): zap everything, free every page table, drop the mm."""
        mm = self.mms.pop(pid, None)
        self._pending_pie.pop(pid, None)
        self._pending_interp.pop(pid, None)
        self._pending_main.pop(pid, None)
        self.files.exit(pid)
        if mm is None:
            return
        mm.exited = True
        if self.khugepaged is not None:
            self.khugepaged.khugepaged_exit(mm)     # khugepaged_exit() in __mmput()
        for vma in list(mm.vmas):
            self.zap_range(mm, vma.start, vma.end, flush=False)
            mm.vmas.remove(vma)
        self._free_table_tree(mm, mm.pgd_pfn, 0)
        for pfn in list(mm.deposit.values()):
            self.pt.free_table(mm, pfn, pte_level=True)
        mm.deposit.clear()
        saved, self.flush_cause = self.flush_cause, "exit"
        self._flush_mm(mm)                          # tlb_finish_mmu of a fullmm gather
        self.flush_cause = saved


    def syscall(self, pid: int, cpu: int, name: str, args: tuple[int, ...], ret: int) -> int:
        """Apply a memory syscall as the guest saw it complete (ret from QEMU).

        Returns the simulated time the call spent in the model's synchronous work
        (MADV_COLLAPSE), which the calling thread waits for; 0 for the others.
        """
        return _syscalls.apply(self, pid, cpu, name, args, ret)

    def gup_syscall(self, pid: int, name: str, args: tuple[int, ...], ret: int,
                    now_ns: float) -> float:
        """Pin what the syscall pinned with GUP-fast (data/gup_fast.toml); the time the
        caller waited for a collapse's lock on the slow path."""
        return self.gup.syscall(pid, name, args, ret, now_ns)

    @staticmethod
    def handles_syscall(name: str) -> bool:
        """Whether the model applies this syscall (it then takes the mm's mmap_lock)."""
        return _syscalls.handles(name)

    # ===== khugepaged hooks (mm/khugepaged.c's entry points) ============================

    def khugepaged_enter_vma(self, mm: MM, vma: VMA | None) -> None:
        """khugepaged_enter_vma(): a PMD-order fault, a VMA merge or expansion."""
        if self.khugepaged is not None and vma is not None:
            self.khugepaged.khugepaged_enter_vma(mm, vma)

    def khugepaged_enter(self, mm: MM, start: int = 0, end: int = 1 << 64) -> None:
        """hugepage_madvise(MADV_HUGEPAGE): khugepaged_enter_vma() for each VMA of the
        range (the whole mm when no range is given)."""
        if self.khugepaged is None:
            return
        for vma in mm.vmas.overlapping(start, end):
            self.khugepaged.khugepaged_enter_vma(mm, vma)

    def thp_sysfs_store(self, enabled: str | None = None,
                        hugepages: dict[int, str] | None = None) -> None:
        """Write /sys/kernel/mm/transparent_hugepage/enabled and/or
        hugepages-<size>kB/enabled, as an admin would: the store
        (enabled_store()/thpsize_enabled_store()) then start_stop_khugepaged()."""
        if enabled is not None:
            self.config.enabled = enabled
        if hugepages:
            self.config.hugepages.update(hugepages)
        if self.khugepaged is not None:
            self.khugepaged.start_stop()

    def _swap_entry_gone(self, mm: MM, d: int) -> None:
        """A swap PTE was zapped: swap_free() its slot, MM_SWAPENTS - 1."""
        if self.arch.is_swap(d):
            mm.add_counter("MM_SWAPENTS", -1)
            self.swap.free(self.arch.swp_offset(d))

    def madvise_collapse(self, mm: MM, start: int, end: int) -> MadviseCollapseRecord | None:
        """MADV_COLLAPSE in the caller's context; None where it is not modelled."""
        if self.khugepaged is None:
            return None
        rec = madvise_collapse(self, mm, start, end - start, self.khugepaged.now_ns)
        self.bus.publish("emu_madvise_collapse", rec.t_end_ns, record=rec)
        return rec
