"""The hardware model's Python face: per-vCPU TLBs and walk caches built from a profile.

The machine calls :meth:`Hardware.run` with slices of event batches; only a
fault (``hw.fault``) or the end of the slice returns.  The kernel model calls
the flush primitives, through emu.kernel.tlbflush, which applies Linux's policy.
Nothing here allocates frames or decides policy.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from emu.arch import SIZE_NAMES, Arch
from emu.arch.profile import Profile
from emu.hw import kernels as K
from emu.hw.counters import FLUSH_KINDS, name_counters, neutral
from emu.mem import PhysMem

FAULT_REASONS = {
    K.FAULT_NOT_PRESENT: "not-present",
    K.FAULT_WRITE_PROTECT: "write-protect",
    K.FAULT_EXEC: "exec",
    K.FAULT_USER: "user",
    K.FAULT_ACCESS_FLAG: "access-flag",
    K.FAULT_BAD_TABLE: "bad-table",
    K.FAULT_RESERVED: "reserved",
}
KIND_NAMES = ("read", "write", "fetch")

_FK = {k: i for i, k in enumerate(FLUSH_KINDS)}
MAX_ASID = 0xFFFF


@dataclass(frozen=True)
class Fault:
    """Why a translation stopped: the kernel model's fault handler gets this."""

    va: int
    kind: str          # read | write | fetch
    level: int         # 0 = top (PML4 / L0) .. 3 = PTE
    reason: str        # not-present | write-protect | exec | user | access-flag | ...

    @property
    def is_write(self) -> bool:
        return self.kind == "write"


def tlbi_range_pages(scale: int, num: int) -> int:
    """Pages one FEAT_TLBIRANGE operation covers: (NUM+1) * 2^(5*SCALE+1)."""
    return (num + 1) << (5 * scale + 1)


def _setmask(sets: int) -> int:
    return sets - 1 if sets & (sets - 1) == 0 else -1


class Hardware:
    """TLB hierarchies, walk caches and the walker for ``nr_cpus`` vCPUs."""

    def __init__(self, arch: Arch, profile: Profile, physmem: PhysMem, nr_cpus: int) -> None:
        if profile.arch != arch.name:
            raise ValueError(f"profile {profile.name} is for {profile.arch}, not {arch.name}")
        if nr_cpus < 1:
            raise ValueError("nr_cpus must be >= 1")
        self.arch = arch
        self.profile = profile
        self.physmem = physmem
        self.nr_cpus = nr_cpus
        tl = profile.tlbs
        self.st_sets = np.array([t.sets for t in tl], dtype=np.int64)
        self.st_ways = np.array([t.ways for t in tl], dtype=np.int64)
        self.st_setmask = np.array([_setmask(t.sets) for t in tl], dtype=np.int64)
        self.st_sizes = np.array([sum(1 << z for z in t.sizes) for t in tl], dtype=np.int64)
        self.st_base = np.zeros(len(tl), dtype=np.int64)
        self.st_base[1:] = np.cumsum(self.st_sets * self.st_ways)[:-1]
        n_entries = int((self.st_sets * self.st_ways).sum())
        self._build_fa(n_entries, nr_cpus)
        self._build_probes()
        self.tag = np.zeros((nr_cpus, n_entries), dtype=np.uint64)
        self.data = np.zeros((nr_cpus, n_entries), dtype=np.uint64)
        # Empty entries carry stamp e - KEY_EMPTY (kernels._lru), valid ones the clock.
        self._empty_stamp = np.arange(n_entries, dtype=np.int64) - K.KEY_EMPTY
        self.stamp = np.tile(self._empty_stamp, (nr_cpus, 1))
        self.occ = np.zeros((nr_cpus, 6 * len(tl)), dtype=np.int64)
        self.ent_struct = np.repeat(np.arange(len(tl), dtype=np.int64),
                                    self.st_sets * self.st_ways)
        self.clock = np.zeros((nr_cpus, 1), dtype=np.int64)
        # Walk caches: one array per cached level 0..2 (absent = 0 ways).
        self.p_sets = np.ones(3, dtype=np.int64)
        self.p_ways = np.zeros(3, dtype=np.int64)
        for c in profile.pscs:
            self.p_sets[c.level] = c.sets
            self.p_ways[c.level] = c.ways
        self.p_setmask = np.array([_setmask(int(s)) for s in self.p_sets], dtype=np.int64)
        self.p_base = np.zeros(3, dtype=np.int64)
        self.p_base[1:] = np.cumsum(self.p_sets * self.p_ways)[:-1]
        p_entries = max(1, int((self.p_sets * self.p_ways).sum()))
        self.ptag = np.zeros((nr_cpus, p_entries), dtype=np.uint64)
        self.pdata = np.zeros((nr_cpus, p_entries), dtype=np.uint64)
        self.pstamp = np.zeros((nr_cpus, p_entries), dtype=np.int64)
        self.cnt = np.zeros((nr_cpus, K.NR_COUNTERS), dtype=np.int64)
        # Row nr_cpus counts operations issued by a CPU that is no vCPU (khugepaged's).
        self.flush_issued = np.zeros((nr_cpus + 1, len(FLUSH_KINDS)), dtype=np.int64)
        self.flush_received = np.zeros((nr_cpus, len(FLUSH_KINDS)), dtype=np.int64)
        self.entries_flushed = np.zeros(nr_cpus, dtype=np.int64)
        self._fault = np.zeros(4, dtype=np.int64)
        self._no_pfn = np.zeros(0, dtype=np.int64)
        self._no_miss = np.zeros(0, dtype=np.int8)
        self.fault: Fault | None = None
        self._hafdbs = bool(profile.hafdbs) if arch.name == "arm64" else True
        self._coalesce = int(profile.coalesce) if arch.name == "x86_64" else 0
        self._arch_id = int(arch.arch_id)
        # Per-vCPU row views made once: slicing ten arrays cost ~3 us on every run() call.
        # The arrays are only ever modified in place, so the views stay valid.
        self._rows = [(self.tag[c], self.data[c], self.stamp[c], self.occ[c], self.clock[c],
                       self.ptag[c], self.pdata[c], self.pstamp[c], self.cnt[c], self.fa[c])
                      for c in range(nr_cpus)]
        # vCPUs that have translated anything: only run() fills TLBs and walk caches, so
        # the others are empty and a broadcast flush has nothing to drop there (a
        # machine has 64 vCPUs; a single-threaded guest uses one).
        self._ran_cpus: list[int] = []

    def _build_probes(self) -> None:
        """Flatten (side, level) -> [(array, size)] lookups and size -> fill target."""
        rows: list[list[int]] = []
        self.pr_off = np.zeros(5, dtype=np.int64)
        self.fill_sel = np.full((4, 6), -1, dtype=np.int64)
        for side, want in ((0, "instr"), (1, "data")):
            for lvl in (1, 2):
                q = side * 2 + lvl - 1
                first_row = len(rows)
                for s, t in enumerate(self.profile.tlbs):
                    if t.level != lvl or t.side not in (want, "unified"):
                        continue
                    for z in sorted(t.sizes):
                        rows.append([int(self.st_base[s]), t.ways, t.sets - 1,
                                     int(K.SIZE_SHIFTS[z]), z, s * 6 + z, s,
                                     int(self._hbase[s]), int(self._hmask[s])])
                for size in range(6):
                    best = -1
                    for j in range(first_row, len(rows)):
                        z = rows[j][K.P_SIZE]
                        if z <= size and (best < 0 or z > rows[best][K.P_SIZE]):
                            best = j
                    self.fill_sel[q, size] = best
                self.pr_off[q + 1] = len(rows)
        rows = rows or [[0, 0, 0, 12, 0, 0, 0, -1, 0]]
        self.probes = np.array(rows, dtype=np.int64).reshape(-1, K.P_FIELDS)
        self._probes_flat = self.probes.reshape(-1)     # a view: what the kernels index

    def _build_fa(self, n_entries: int, nr_cpus: int) -> None:
        """LRU lists and hash indexes of the fully associative arrays (see emu.hw.kernels).

        They only speed lookups and fills up; the entries chosen and every
        counter are those of the plain scan.
        """
        tl = self.profile.tlbs
        ne, na = n_entries, len(tl)
        self.ent_fa = np.full(n_entries, -1, dtype=np.int64)
        self._hbase = np.full(na, -1, dtype=np.int64)
        self._hmask = np.zeros(na, dtype=np.int64)
        row = np.full(2 * ne + 3 * na, -1, dtype=np.int64)
        off = row.shape[0]
        for s, t in enumerate(tl):
            if t.sets != 1 or t.ways < K.FA_MIN_WAYS:
                continue
            b, w = int(self.st_base[s]), t.ways
            self.ent_fa[b:b + w] = s
            ent = np.arange(b, b + w, dtype=np.int64)
            row[ent[1:]] = ent[:-1]                    # prev
            row[ne + ent[:-1]] = ent[1:]               # next
            row[2 * ne + 3 * s:2 * ne + 3 * s + 3] = (b, b + w - 1, 0)
            slots = 1 << max(6, (K.HASH_SLOTS_PER_WAY * w - 1).bit_length())
            self._hbase[s] = off
            self._hmask[s] = slots - 1
            off += slots
        row = np.concatenate([row, np.full(off - row.shape[0], -1, dtype=np.int64)])
        self.fa = np.tile(row, (nr_cpus, 1))
        self._any_fa = bool((self.ent_fa >= 0).any())

    # ------------------------------------------------------------------ replay
    def run(self, cpu: int, asid: int, root_pfn: int, kinds: np.ndarray, addrs: np.ndarray,
            counts: np.ndarray, start: int = 0, stop: int | None = None,
            out_pfn: np.ndarray | None = None, out_miss: np.ndarray | None = None) -> int:
        """Translate events [start, stop) on ``cpu``; index of the first fault, or ``stop``.

        ``out_pfn`` (int64, len >= stop), if given, receives the 4 KiB frame each
        translated event reached.  ``out_miss`` (int8, len >= stop, zeroed by the
        caller), if given, marks the events that missed the L1 TLB: 1 L2 hit, 2 walk,
        3 faulted walk.
        """
        if stop is None:
            stop = len(kinds)
        if not 0 <= asid <= MAX_ASID:
            raise ValueError(f"asid {asid} out of range")
        store = self.physmem.pgtables
        self.fault = None
        if cpu not in self._ran_cpus:
            bisect.insort(self._ran_cpus, cpu)
        tag, data, stamp, occ, clock, ptag, pdata, pstamp, cnt, fa = self._rows[cpu]
        i = K.run_kernel(kinds, addrs, counts, start, stop, root_pfn, asid,
                         self._arch_id, self._hafdbs, self._coalesce,
                         store.tables, store.slot_of_pfn, tag, data, stamp, occ, clock,
                         self._probes_flat, self.pr_off, self.fill_sel, ptag, pdata, pstamp,
                         self.p_base, self.p_sets, self.p_setmask, self.p_ways, cnt,
                         self._fault, self._no_pfn if out_pfn is None else out_pfn,
                         fa, self.ent_fa, self._any_fa,
                         self._no_miss if out_miss is None else out_miss)
        if i < stop:
            f = self._fault
            self.fault = Fault(int(f[0]), KIND_NAMES[int(f[1])], int(f[2]),
                               FAULT_REASONS.get(int(f[3]), str(int(f[3]))))
        return int(i)

    def access(self, cpu: int, asid: int, root_pfn: int, va: int, kind: int = 0,
               count: int = 1) -> int | None:
        """One access (tests, debugging): the 4 KiB frame reached, or None on a fault."""
        kinds = np.array([kind], dtype=np.uint8)
        addrs = np.array([va & ~0xFFF], dtype=np.uint64)
        counts = np.array([count], dtype=np.uint64)
        out = np.full(1, -1, dtype=np.int64)
        return None if self.run(cpu, asid, root_pfn, kinds, addrs, counts, 0, 1, out) == 0 \
            else int(out[0])

    def probe(self, cpu: int, asid: int, va: int) -> tuple[int, str] | None:
        """What the TLBs of ``cpu`` hold for ``va`` now (frame, size), without touching LRU."""
        tag = self.tag[cpu]
        for s in range(len(self.profile.tlbs)):
            e = K.lookup(tag, self.st_base, self.st_sets, self.st_setmask, self.st_ways,
                         self.st_sizes, s, va, asid)
            if e >= 0:
                size = int((int(tag[e]) >> K.TAG_SIZE_SHIFT) & 7)
                off = (va >> 12) & ((1 << (K.SIZE_SHIFTS[size] - 12)) - 1)
                return int(self.data[cpu, e] >> np.uint64(12)) + off, SIZE_NAMES[size]
        return None

    # ------------------------------------------------------------- flushes
    def _count(self, kind: str, src: int | None, targets) -> None:
        k = _FK[kind]
        self.flush_issued[self.nr_cpus if src is None else src, k] += 1
        if isinstance(targets, range) and len(targets) == self.nr_cpus:
            self.flush_received[:, k] += 1          # a broadcast reaches every vCPU
            return
        for t in targets:
            self.flush_received[t, k] += 1

    def _inval_va(self, cpu: int, va: int, asid: int, any_asid: bool, leaf_only: bool) -> None:
        n = K.inval_va(self.tag[cpu], self.stamp[cpu], self.occ[cpu], self.st_base,
                       self.st_sets, self.st_setmask, self.st_ways, self.st_sizes, va, asid,
                       any_asid)
        self.entries_flushed[cpu] += n
        if not leaf_only:
            K.psc_inval_range(self.ptag[cpu], self.p_base, self.p_sets, self.p_ways,
                              va, va + 1, asid, any_asid)

    def _inval_asid(self, cpu: int, asid: int) -> None:
        self.entries_flushed[cpu] += K.inval_asid(self.tag[cpu], self.stamp[cpu], asid)
        K.recount(self.tag[cpu], self.ent_struct, self.occ[cpu])
        K.inval_asid(self.ptag[cpu], self.pstamp[cpu], asid)

    def _inval_all(self, cpu: int) -> None:
        self.entries_flushed[cpu] += int(np.count_nonzero(self.tag[cpu]))
        self.tag[cpu] = 0
        self.stamp[cpu] = self._empty_stamp
        self.occ[cpu] = 0
        self.ptag[cpu] = 0

    def _all(self) -> range:
        return range(self.nr_cpus)

    def _filled(self) -> list[int]:
        """The vCPUs whose TLBs and walk caches may hold entries (see _ran_cpus)."""
        return self._ran_cpus

    # x86: local operations; remote CPUs are reached by IPIs (emu.kernel.tlbflush).
    def invlpg(self, cpu: int, va: int, asid: int | None = None) -> None:
        """INVLPG: the page's entries on ``cpu`` (for one PCID, or all PCIDs if None).

        Paging-structure caches of that PCID are dropped whole, as the SDM allows.
        """
        self._require("x86_64")
        self._count("invlpg", cpu, (cpu,))
        n = K.inval_va(self.tag[cpu], self.stamp[cpu], self.occ[cpu], self.st_base,
                       self.st_sets, self.st_setmask, self.st_ways, self.st_sizes, va,
                       asid or 0, asid is None)
        self.entries_flushed[cpu] += n
        if asid is None:
            self.ptag[cpu] = 0
        else:
            K.inval_asid(self.ptag[cpu], self.pstamp[cpu], asid)

    def invpcid_single(self, cpu: int, asid: int, va: int) -> None:
        """INVPCID type 0: one address in one PCID."""
        self._require("x86_64")
        self._count("invpcid_single", cpu, (cpu,))
        self._inval_va(cpu, va, asid, False, False)

    def invpcid_asid(self, cpu: int, asid: int) -> None:
        """INVPCID type 1: every entry of one PCID."""
        self._require("x86_64")
        self._count("invpcid_asid", cpu, (cpu,))
        self._inval_asid(cpu, asid)

    def invpcid_all(self, cpu: int) -> None:
        """INVPCID type 2/3: every PCID on ``cpu``."""
        self._require("x86_64")
        self._count("invpcid_all", cpu, (cpu,))
        self._inval_all(cpu)

    def cr3_flush(self, cpu: int, asid: int) -> None:
        """MOV CR3 without the no-flush bit: the PCID's non-global entries."""
        self._require("x86_64")
        self._count("cr3_flush", cpu, (cpu,))
        self._inval_asid(cpu, asid)

    def ipi(self, src: int | None, dst: int) -> None:
        """Count a TLB-shootdown IPI (the flush it carries is issued on ``dst``)."""
        self._count("ipi", src, (dst,))

    # arm64: Inner-Shareable TLBIs broadcast to every vCPU.
    def tlbi_vae1is(self, cpu: int | None, asid: int, va: int) -> None:
        """TLBI VAE1IS: all levels (walk caches too) for va/ASID, on every CPU."""
        self._require("arm64")
        self._count("tlbi_vae1is", cpu, self._all())
        for t in self._filled():
            self._inval_va(t, va, asid, False, False)

    def tlbi_vale1is(self, cpu: int | None, asid: int, va: int) -> None:
        """TLBI VALE1IS: last-level entries only; walk caches survive."""
        self._require("arm64")
        self._count("tlbi_vale1is", cpu, self._all())
        for t in self._filled():
            self._inval_va(t, va, asid, False, True)

    def tlbi_rvae1is(self, cpu: int | None, asid: int, va: int, scale: int, num: int,
                     last_level: bool = False) -> int:
        """TLBI RVAE1IS / RVALE1IS (FEAT_TLBIRANGE); returns the pages covered."""
        self._require("arm64")
        if not self.profile.tlbi_range:
            raise ValueError(f"profile {self.profile.name} has no FEAT_TLBIRANGE")
        if not (0 <= scale <= 3 and 0 <= num <= 31):
            raise ValueError("TLBI range: scale 0..3, num 0..31")
        pages = tlbi_range_pages(scale, num)
        end = va + (pages << 12)
        self._count("tlbi_rvale1is" if last_level else "tlbi_rvae1is", cpu, self._all())
        for t in self._filled():
            self.entries_flushed[t] += K.inval_range(self.tag[t], self.stamp[t], va, end, asid,
                                                     False)
            K.recount(self.tag[t], self.ent_struct, self.occ[t])
            if not last_level:
                K.psc_inval_range(self.ptag[t], self.p_base, self.p_sets, self.p_ways,
                                  va, end, asid, False)
        return pages

    def tlbi_aside1is(self, cpu: int | None, asid: int) -> None:
        """TLBI ASIDE1IS: every entry of the ASID, on every CPU."""
        self._require("arm64")
        self._count("tlbi_aside1is", cpu, self._all())
        for t in self._filled():
            self._inval_asid(t, asid)

    def tlbi_vmalle1is(self, cpu: int | None) -> None:
        """TLBI VMALLE1IS: everything, on every CPU."""
        self._require("arm64")
        self._count("tlbi_vmalle1is", cpu, self._all())
        for t in self._filled():
            self._inval_all(t)

    def flush_all(self) -> None:
        """Empty every TLB and walk cache of every vCPU (machine reset, tests)."""
        self._count("flush_all", 0, self._all())
        for t in self._filled():
            self._inval_all(t)

    def _require(self, arch: str) -> None:
        if self.arch.name != arch:
            raise ValueError(f"{arch} flush primitive on an {self.arch.name} machine")

    # ------------------------------------------------------------ counters
    def absorb(self, cpu: int, loads: int, stores: int) -> None:
        """Accesses a micro-TLB in front of the L1 served: counted, never looked up."""
        self.cnt[cpu, K.C_LOADS] += loads
        self.cnt[cpu, K.C_STORES] += stores

    def counters(self, cpu: int) -> dict[str, int]:
        """This vCPU's counters, under the names perf and the PMU manuals use."""
        return name_counters(self, self.cnt[cpu], self.flush_issued[cpu],
                             self.flush_received[cpu], int(self.entries_flushed[cpu]))

    @staticmethod
    def neutral(total: dict[str, int]) -> dict[str, Any]:
        """The architecture-neutral block of summed counters (emu.hw.counters.neutral)."""
        return neutral(total)

    def issued_without_vcpu(self) -> dict[str, int]:
        """Flush operations issued by a CPU that runs no vCPU (khugepaged's): their
        targets count them as received, so a report needs this row for the issuers."""
        row = self.flush_issued[self.nr_cpus]
        return {f"flush.{k}.issued": int(row[i]) for i, k in enumerate(FLUSH_KINDS) if row[i]}

    def totals(self) -> dict[str, int]:
        return name_counters(self, self.cnt.sum(axis=0), self.flush_issued.sum(axis=0),
                             self.flush_received.sum(axis=0), int(self.entries_flushed.sum()))

    def memory_bytes(self) -> int:
        """Bytes held by the model's own arrays (page tables excluded)."""
        arrs = (self.tag, self.data, self.stamp, self.ptag, self.pdata, self.pstamp, self.cnt,
                self.flush_issued, self.flush_received, self.fa, self.ent_fa)
        return int(sum(a.nbytes for a in arrs))
