"""Scenarios on the kernel emu runs: guest-like operations driving Kernel + Hardware.

A :class:`Scenario` is one simulated machine — emu.kernel.Kernel with a real
emu.hw.Hardware, khugepaged and MADV_COLLAPSE attached as `emu run` attaches
them.  Processes write and read through the hardware (TLBs, walker, A/D bits);
a translation fault goes to the kernel's fault handler and the access is
retried, as emu.machine does.  Every write leaves a new version in the frame it
landed in and in the process's ground truth, so :meth:`Scenario.validate` is the
integrity oracle of design.md.  Syscalls go through ``Kernel.syscall`` with the
guest ABI's arguments.
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from emu.arch import get_arch
from emu.arch.profile import default_profile, load_profile
from emu.arch.syscalls import uapi
from emu.checker import Checker
from emu.hw.hardware import Hardware
from emu.kernel.config import ThpConfig, order_to_kb
from emu.kernel.kernel import Kernel
from emu.kernel.khugepaged.knobs import KhugepagedKnobs
from emu.mem.physmem import PhysMem

UAPI = uapi()

PAGE_SIZE = 4096
PAGE_SHIFT = 12
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER
HPAGE_PMD_SIZE = PAGE_SIZE << HPAGE_PMD_ORDER
PROT_RW = UAPI["PROT_READ"] | UAPI["PROT_WRITE"]
MAP_FIXED_ANON = UAPI["MAP_PRIVATE"] | UAPI["MAP_ANONYMOUS"] | UAPI["MAP_FIXED"]
ACCESS_READ, ACCESS_WRITE = 0, 1
ARCHS = ("x86_64", "arm64")
ALGOS = ("v19", "v5")
NR_CPUS = 4


@dataclass
class Proc:
    """One process: its pid, the CPU it runs on and what it last wrote where."""

    pid: int
    cpu: int
    truth: dict[int, int] = field(default_factory=dict)   # vpage -> version written

    def __hash__(self) -> int:
        return self.pid


class Scenario:
    """One machine: Kernel + Hardware + khugepaged, driven like a guest would."""

    def __init__(self, arch: str = "x86_64", algo: str = "v19", thp: ThpConfig | None = None,
                 preset: str = "selftest", mib: int = 256, check: bool = True) -> None:
        physmem = PhysMem(mib << 20 >> PAGE_SHIFT)
        self.hw = Hardware(get_arch(arch), load_profile(default_profile(arch)), physmem,
                           NR_CPUS)
        self.kernel = Kernel(arch, thp or ThpConfig(enabled="madvise"), self.hw, physmem,
                             khugepaged=KhugepagedKnobs.preset(preset), algo=algo)
        self.khugepaged = self.kernel.khugepaged
        self.knobs = self.khugepaged.knobs
        self.bus = self.kernel.bus
        self.bus.keep = True                      # tests read the history
        # --check is on in tests: after every collapse step the books must balance
        self.checker = Checker(self.kernel, self.hw) if check else None
        self.madvise_records: list = []
        self.bus.subscribe("emu_madvise_collapse",
                           lambda e: self.madvise_records.append(e.args["record"]))
        self.arch = self.kernel.arch
        self.thp = self.kernel.config
        self.procs: dict[int, Proc] = {}
        # called as a selftest case enters its khugepaged context (mTHP variants)
        self.before_khugepaged: list = []
        self.next_version = 0
        self.lost_reads = 0
        self._next_pid = 100

    # ------------------------------------------------------------ settings
    def set_size(self, order: int, mode: str) -> None:
        """hugepages-<size>kB/enabled for one order."""
        self.thp.hugepages[order_to_kb(order)] = mode

    @property
    def vmstat(self) -> Counter:
        return Counter(self.kernel.stats.vmstat)

    def mthp(self, order: int, name: str) -> int:
        return self.kernel.stats.mthp.get(order_to_kb(order), {}).get(name, 0)

    # ------------------------------------------------------------ processes
    def new_proc(self) -> Proc:
        pid = self._next_pid
        self._next_pid += 1
        self.kernel.new_mm(pid)
        p = self.procs[pid] = Proc(pid, pid % NR_CPUS)
        return p

    def mm(self, p: Proc):
        return self.kernel.mm(p.pid)

    def fork(self, parent: Proc) -> Proc:
        pid = self._next_pid
        self._next_pid += 1
        self.kernel.fork(parent.pid, pid)
        child = self.procs[pid] = Proc(pid, pid % NR_CPUS, dict(parent.truth))
        return child

    def exit(self, p: Proc) -> None:
        self.kernel.exit_mm(p.pid)
        self.procs.pop(p.pid, None)

    # ------------------------------------------------------------ syscalls
    def mmap(self, p: Proc, start: int, length: int, now_ns: int = 0) -> int:
        """An anonymous private MAP_FIXED mapping.  The kernel's khugepaged_enter_vma()
        at mmap registers nothing for a new VMA (it has no anon_vma yet); only a merge
        into a written neighbour can."""
        self.khugepaged.now_ns = now_ns
        self.kernel.syscall(p.pid, p.cpu, "mmap",
                            (start, length, PROT_RW, MAP_FIXED_ANON, (1 << 64) - 1, 0), start)
        return start

    def madvise(self, p: Proc, start: int, length: int, advice: str, now_ns: int = 0) -> int:
        """madvise(); MADV_COLLAPSE returns the model's answer (QEMU answers 0)."""
        self.khugepaged.now_ns = now_ns
        before = len(self.madvise_records)
        self.kernel.syscall(p.pid, p.cpu, "madvise", (start, length, UAPI[advice]), 0)
        if advice == "MADV_DONTNEED":               # the range reads as zeroes again
            for off in range(0, length, PAGE_SIZE):
                p.truth.pop((start + off) >> PAGE_SHIFT, None)
        if advice == "MADV_COLLAPSE":
            recs = self.madvise_records
            return recs[-1].ret if len(recs) > before else -errno.EINVAL
        return 0

    def mremap(self, p: Proc, old: int, old_len: int, new: int, new_len: int) -> None:
        flags = UAPI["MREMAP_MAYMOVE"] | UAPI["MREMAP_FIXED"]
        self.kernel.syscall(p.pid, p.cpu, "mremap", (old, old_len, new_len, flags, new), new)
        for off in range(0, old_len, PAGE_SIZE):
            v = p.truth.pop((old + off) >> PAGE_SHIFT, None)
            if v is not None:
                p.truth[(new + off) >> PAGE_SHIFT] = v

    def munmap(self, p: Proc, start: int, length: int) -> None:
        self.kernel.syscall(p.pid, p.cpu, "munmap", (start, length), 0)
        for off in range(0, length, PAGE_SIZE):
            p.truth.pop((start + off) >> PAGE_SHIFT, None)

    # ------------------------------------------------------------ accesses
    def _translate(self, p: Proc, addr: int, access: int) -> int:
        """The frame the hardware reaches for this access, faulting as needed."""
        mm = self.mm(p)
        for _ in range(4):
            pfn = self.hw.access(p.cpu, mm.asid, mm.pgd_pfn, addr, access)
            if pfn is not None:
                return pfn
            if not self.kernel.handle_mm_fault(p.pid, p.cpu, addr, access,
                                               self.hw.fault.reason):
                break
        raise AssertionError(f"pid {p.pid}: unresolved fault at {addr:#x}")

    def write(self, p: Proc, addr: int) -> None:
        """A guest store: a new version lands in the frame the hardware reaches."""
        pfn = self._translate(p, addr, ACCESS_WRITE)
        self.next_version += 1
        self.kernel.physmem.version[pfn] = self.next_version
        p.truth[addr >> PAGE_SHIFT] = self.next_version

    def read(self, p: Proc, addr: int) -> bool:
        """A guest load; False (and counted) where it sees an older version than written."""
        pfn = self._translate(p, addr, ACCESS_READ)
        ok = int(self.kernel.physmem.version[pfn]) == p.truth.get(addr >> PAGE_SHIFT, 0)
        self.lost_reads += not ok
        return ok

    def fault_range(self, p: Proc, start: int, nr_pages: int) -> None:
        """The selftest's fault loop: write every 4K page of the range."""
        for k in range(nr_pages):
            self.write(p, start + k * PAGE_SIZE)

    # ------------------------------------------------------------ khugepaged
    def tick(self, now_ns: int) -> int:
        """Let khugepaged run up to now_ns on its own CPU (no vCPU is current); a pass
        that started by then runs to its end (nothing else runs in between here)."""
        self.kernel.current_cpu = None
        return self.khugepaged.tick(now_ns) + self.khugepaged.finish_pass()

    def register(self, p: Proc, now_ns: int = 0) -> None:
        """khugepaged_enter_vma() for the process's VMAs."""
        self.khugepaged.enter(self.mm(p), now_ns)

    # ------------------------------------------------------------ page tables
    def _pmd(self, p: Proc, addr: int) -> int:
        return self.kernel.pt.get_pmd(self.mm(p), addr)

    def ptes(self, p: Proc, pmd_addr: int) -> np.ndarray | None:
        """The raw descriptors of the PTE table under pmd_addr (a view), or None."""
        t = self.kernel.pt.pte_table(self.mm(p), pmd_addr)
        return None if t is None else self.kernel.physmem.pgtables.table(t)

    def mkold(self, p: Proc, start: int, end: int) -> None:
        """Clear the accessed bit of every present PTE in [start, end)."""
        for pmd_addr in range(start, end, HPAGE_PMD_SIZE):
            tab = self.ptes(p, pmd_addr)
            if tab is None:
                continue
            for i in np.flatnonzero(tab).tolist():
                d = int(tab[i])
                if self.arch.is_present(d):
                    tab[i] = self.arch.mkold(d)

    def folio_at(self, p: Proc, addr: int):
        d = self._pmd(p, addr)
        if not (d and self.kernel.pt.pmd_is_leaf(d)):
            d = self.kernel.pt.get_pte(self.mm(p), addr)
        if not d or not self.arch.is_present(d):
            return None
        return self.kernel.folio_of_pfn(self.arch.pfn(d))

    def nr_pmd_mapped(self, p: Proc, start: int, end: int) -> int:
        """check_huge(): PMD-mapped THPs in [start, end)."""
        return sum(1 for a in range(start, end, HPAGE_PMD_SIZE)
                   if (d := self._pmd(p, a)) and self.kernel.pt.pmd_is_leaf(d))

    def mapping_sizes(self, p: Proc, start: int, end: int) -> Counter:
        """Folios mapped in [start, end) by order: a PMD map counts at order 9; a
        PTE-mapped folio counts once at its order where all its pages map here;
        pages of partly mapped folios count under -1."""
        sizes: Counter = Counter()
        arch, k = self.arch, self.kernel
        for a in range(start, end, HPAGE_PMD_SIZE):
            d = self._pmd(p, a)
            if d and k.pt.pmd_is_leaf(d):
                sizes[HPAGE_PMD_ORDER] += 1
                continue
            tab = self.ptes(p, a)
            if tab is None:
                continue
            per_folio: Counter = Counter()
            for i in np.flatnonzero(tab).tolist():
                e = int(tab[i])
                if arch.is_present(e) and arch.pfn(e) != k.zero_pfn:
                    f = k.folio_of_pfn(arch.pfn(e))
                    if f is not None:
                        per_folio[f.pfn] += 1
            for head, n in per_folio.items():
                order = k.folios[head].order
                if n == 1 << order:
                    sizes[order] += 1
                else:
                    sizes[-1] += n
        return sizes

    def validate(self, p: Proc) -> list[int]:
        """Virtual pages whose backing frame (or swap slot) lacks the last write."""
        bad = []
        arch, k = self.arch, self.kernel
        for vpage, version in sorted(p.truth.items()):
            addr = vpage << PAGE_SHIFT
            d = self._pmd(p, addr)
            if d and k.pt.pmd_is_leaf(d):
                pfn = arch.pfn(d) + ((addr & (HPAGE_PMD_SIZE - 1)) >> PAGE_SHIFT)
            else:
                d = k.pt.get_pte(self.mm(p), addr)
                if d and arch.is_swap(d):
                    if k.swap.version.get(arch.swp_offset(d)) != version:
                        bad.append(vpage)
                    continue
                if not d or not arch.is_present(d):
                    bad.append(vpage)
                    continue
                pfn = arch.pfn(d)
            if int(k.physmem.version[pfn]) != version:
                bad.append(vpage)
        return bad
