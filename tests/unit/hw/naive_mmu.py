"""A naive, obviously-right MMU: the oracle the numba hardware model (emu.hw) is diffed against.

Written from docs/hardware.md, the profile files and the architecture manuals
(Intel SDM Vol. 3A ch. 4, Arm ARM VMSAv8-64), not from emu/hw/kernels.py: plain
dicts and lists, one access at a time, nothing precomputed for speed.  A TLB
set is a dict whose insertion order is the recency order (oldest first), so
true LRU is "pop and re-insert on use, evict the first key".

Where docs/hardware.md leaves a modelling choice open, the choice taken is
marked ``choice:`` so a disagreement can be traced to a decision, not a typo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from emu.arch import Arch
from emu.arch import arm64 as A64
from emu.arch import x86_64 as X86
from emu.arch.profile import Profile, TlbSpec

READ, WRITE, FETCH = 0, 1, 2
KIND_NAMES = ("read", "write", "fetch")
# Page-size codes, in emu.arch.SIZE_NAMES order, and the VA bits each one covers.
SIZE_NAMES = ("4k", "16k", "64k", "2m", "32m", "1g")
SIZE_SHIFT = (12, 14, 16, 21, 25, 30)
S4K, S16K, S64K, S2M, S1G = 0, 1, 2, 3, 5
# VA bits translated below each level: a level-L descriptor covers 1 << LEVEL_SHIFT[L] bytes.
LEVEL_SHIFT = (39, 30, 21, 12)
LEAF_SIZE_AT_LEVEL = {1: S1G, 2: S2M, 3: S4K}


class DictTables:
    """Page-table memory as {frame: {index: descriptor}}; PageTableBuilder can write it."""

    def __init__(self) -> None:
        self.frames: dict[int, dict[int, int]] = {}

    def add(self, pfn: int) -> None:
        assert pfn not in self.frames
        self.frames[pfn] = {}

    def remove(self, pfn: int) -> None:
        del self.frames[pfn]

    def is_table(self, pfn: int) -> bool:
        return pfn in self.frames

    def read(self, pfn: int, index: int) -> int:
        return self.frames[pfn].get(index, 0)

    def write(self, pfn: int, index: int, desc: int) -> None:
        self.frames[pfn][index] = desc


@dataclass(frozen=True)
class Entry:
    """What a TLB entry holds besides its tag (asid, size, vpn)."""

    pfn: int            # first 4 KiB frame of the entry's page
    writable: bool      # writes allowed, perhaps after a dirty-state update
    executable: bool
    dirty: bool         # writes need no descriptor update
    coalesced: bool     # built from a 16K (AMD) or 64K (arm64 contiguous) group


Key = tuple[int, int, int]       # (asid, size code, va >> size shift)


class Tlb:
    """One set-associative array: sets of {key: Entry}, oldest first (true LRU)."""

    def __init__(self, spec: TlbSpec) -> None:
        self.spec = spec
        self.sets: list[dict[Key, Entry]] = [{} for _ in range(spec.entries // spec.ways)]
        self.evictions = 0          # for judging how hard a trace pushes the array

    def set_for(self, key: Key) -> dict[Key, Entry]:
        # The set index is the low bits of the page number at the entry's own size.
        return self.sets[key[2] % len(self.sets)]

    def find(self, asid: int, va: int) -> Key | None:
        # choice: sizes are tried small first (only matters when stale entries overlap).
        for size in sorted(self.spec.sizes):
            key = (asid, size, va >> SIZE_SHIFT[size])
            if key in self.set_for(key):
                return key
        return None

    def get(self, key: Key) -> Entry:
        return self.set_for(key)[key]

    def touch(self, key: Key) -> None:
        s = self.set_for(key)
        s[key] = s.pop(key)

    def put(self, key: Key, entry: Entry) -> None:
        """Install (or refresh) an entry: an empty way if any, else evict the LRU one."""
        s = self.set_for(key)
        if key in s:
            del s[key]
        elif len(s) == self.spec.ways:
            del s[next(iter(s))]
            self.evictions += 1
        s[key] = entry

    def drop(self, doomed: Callable[[Key], bool]) -> int:
        n = 0
        for s in self.sets:
            for key in [k for k in s if doomed(k)]:
                del s[key]
                n += 1
        return n


PscValue = tuple[int, tuple[bool, bool, bool]]   # next table frame, (rw, user, nx) so far


class WalkCache:
    """Paging-structure cache of one upper level: (asid, va prefix) -> next table, LRU."""

    def __init__(self, level: int, entries: int, ways: int) -> None:
        self.level = level
        self.ways = ways
        self.sets: list[dict[tuple[int, int], PscValue]] = [{} for _ in range(entries // ways)]
        self.evictions = 0

    def _set(self, key: tuple[int, int]) -> dict[tuple[int, int], PscValue]:
        return self.sets[key[1] % len(self.sets)]

    def lookup(self, asid: int, va: int) -> PscValue | None:
        key = (asid, va >> LEVEL_SHIFT[self.level])
        s = self._set(key)
        if key not in s:
            return None
        s[key] = s.pop(key)
        return s[key]

    def fill(self, asid: int, va: int, value: PscValue) -> None:
        key = (asid, va >> LEVEL_SHIFT[self.level])
        s = self._set(key)
        if key in s:
            del s[key]
        elif len(s) == self.ways:
            del s[next(iter(s))]
            self.evictions += 1
        s[key] = value

    def drop(self, doomed: Callable[[tuple[int, int]], bool]) -> None:
        for s in self.sets:
            for key in [k for k in s if doomed(k)]:
                del s[key]


@dataclass
class Cpu:
    tlbs: list[Tlb]
    pscs: dict[int, WalkCache]
    n: Counter


class WalkFault(Exception):
    def __init__(self, level: int, reason: str) -> None:
        super().__init__(level, reason)
        self.level = level
        self.reason = reason


FLUSH_KINDS = ("invlpg", "invpcid_single", "invpcid_asid", "invpcid_all", "cr3_flush", "ipi",
               "tlbi_vae1is", "tlbi_vale1is", "tlbi_rvae1is", "tlbi_rvale1is",
               "tlbi_aside1is", "tlbi_vmalle1is", "flush_all")


class NaiveMachine:
    """Per-CPU TLB hierarchies, walk caches and a page walker over ``mem``."""

    def __init__(self, arch: Arch, profile: Profile, mem: DictTables, nr_cpus: int) -> None:
        self.arch = arch
        self.profile = profile
        self.mem = mem
        self.nr_cpus = nr_cpus
        self.x86 = arch.name == "x86_64"
        self.hafdbs = profile.hafdbs or self.x86
        self.coalesce = profile.coalesce if self.x86 else 0
        self.cpus = [Cpu([Tlb(t) for t in profile.tlbs],
                         {c.level: WalkCache(c.level, c.entries, c.ways) for c in profile.pscs},
                         Counter()) for _ in range(nr_cpus)]
        self.fault: tuple[int, str, int, str] | None = None
        # Flush operations by (issuer or None, kind) and by (target, kind).
        self.issued: Counter = Counter()
        self.received: Counter = Counter()
        self.flushed_entries: Counter = Counter()

    # ----------------------------------------------------------- lookups
    def _arrays(self, cpu: int, side: str, level: int) -> list[Tlb]:
        """Arrays a lookup of ``side`` probes at ``level``, in profile order."""
        return [t for t in self.cpus[cpu].tlbs
                if t.spec.level == level and t.spec.side in (side, "unified")]

    def _lookup(self, cpu: int, side: str, level: int, asid: int, va: int
                ) -> tuple[Tlb, Key] | None:
        for t in self._arrays(cpu, side, level):
            key = t.find(asid, va)
            if key is not None:
                return t, key
        return None

    def _fill(self, cpu: int, side: str, level: int, asid: int, va: int, size: int,
              e: Entry) -> None:
        """Install a ``size`` translation in the array holding the largest size <= ``size``.

        An array that cannot hold the size gets a splinter: the part around va.
        choice: among arrays holding the same best size, the first in profile order.
        """
        best: tuple[Tlb, int] | None = None
        for t in self._arrays(cpu, side, level):
            fits = [z for z in t.spec.sizes if z <= size]
            if fits and (best is None or max(fits) > best[1]):
                best = (t, max(fits))
        if best is None:
            return
        t, z = best
        if z != size:
            page = e.pfn + ((va >> 12) & ((1 << (SIZE_SHIFT[size] - 12)) - 1))
            e = Entry(page & ~((1 << (SIZE_SHIFT[z] - 12)) - 1), e.writable, e.executable,
                      e.dirty, e.coalesced)
        t.put((asid, z, va >> SIZE_SHIFT[z]), e)

    # ----------------------------------------------------------- accesses
    def run(self, cpu: int, asid: int, root: int,
            events: Iterable[tuple[int, int, int]]) -> int:
        """Translate (kind, va, count) events in order; index of the first fault, or len."""
        i = 0
        for i, (kind, va, count) in enumerate(events):
            if self.access(cpu, asid, root, va, kind, count) is None:
                return i
            i += 1
        return i

    def access(self, cpu: int, asid: int, root: int, va: int, kind: int = READ,
               count: int = 1) -> int | None:
        """One access of ``count`` merged references: the 4 KiB frame, or None on a fault."""
        self.fault = None
        n = self.cpus[cpu].n
        va &= ~0xFFF
        count = max(count, 1)
        n["acc", kind] += count
        side = "instr" if kind == FETCH else "data"

        def permits(e: Entry) -> bool:
            return not ((kind == WRITE and not e.dirty) or (kind == FETCH and not e.executable))

        def frame(size: int, e: Entry) -> int:
            return e.pfn + ((va >> 12) & ((1 << (SIZE_SHIFT[size] - 12)) - 1))

        assist = False
        hit2 = None
        hit = self._lookup(cpu, side, 1, asid, va)
        if hit is not None:
            t, key = hit
            e = t.get(key)
            if permits(e):
                t.touch(key)
                return frame(key[1], e)
            # choice: an L1 entry that does not permit the access is not an L1 miss;
            # the access re-walks without asking L2.
        else:
            n["l1_miss", kind] += 1
            hit2 = self._lookup(cpu, side, 2, asid, va)
            if hit2 is not None:
                t, key = hit2
                e = t.get(key)
                if permits(e):
                    n["l2_hit", kind] += 1
                    t.touch(key)
                    self._fill(cpu, side, 1, asid, va, key[1], e)
                    return frame(key[1], e)
        if hit is not None or hit2 is not None:
            # A write to a writable entry without the dirty state re-walks to set it
            # (a dirty assist, not a TLB miss); anything else is a permission re-walk.
            assist = kind == WRITE and e.writable
            n["assist" if assist else "rewalk"] += 1
        try:
            size, e = self._walk(cpu, asid, root, va, kind)
        except WalkFault as f:
            n["faults"] += 1
            # Intel: walk_completed "can end with or without a fault"; Arm: no refill
            # "if the translation table walk results in a fault" (docs/hardware.md).
            n["walk_fault", kind] += 1
            if hit is None:
                n["refill_lost", kind] += 1
            n["acc", kind] -= count        # retired later, when the machine replays it
            self.fault = (va, KIND_NAMES[kind], f.level, f.reason)
            return None
        if not assist:
            n["walk", kind, size] += 1
        self._fill(cpu, side, 2, asid, va, size, e)
        self._fill(cpu, side, 1, asid, va, size, e)
        return frame(size, e)

    # ----------------------------------------------------------- walker
    def _walk(self, cpu: int, asid: int, root: int, va: int, kind: int) -> tuple[int, Entry]:
        c = self.cpus[cpu]
        table, first, perms = root, 0, (True, True, False)
        for lvl in (2, 1, 0):                  # the deepest cached level wins
            got = c.pscs[lvl].lookup(asid, va) if lvl in c.pscs else None
            if got is not None:
                c.n["psc_hit", lvl] += 1
                table, perms = got
                first = lvl + 1
                break
        else:
            c.n["psc_miss"] += 1
        for lvl in range(first, 4):
            if not self.mem.is_table(table):
                raise WalkFault(lvl, "bad-table")
            idx = (va >> LEVEL_SHIFT[lvl]) & 511
            d = self.mem.read(table, idx)
            c.n["ref", lvl] += 1
            if self.x86:
                step = self._x86_step(c, table, idx, d, lvl, perms, kind)
            else:
                step = self._arm_step(c, table, idx, d, lvl, kind)
            if step[0] == "leaf":
                return step[1], step[2]
            _, table, perms = step
            if lvl in c.pscs:
                c.pscs[lvl].fill(asid, va, (table, perms))
        raise AssertionError("a level-3 descriptor is always a leaf or a fault")

    def _x86_step(self, c: Cpu, table: int, idx: int, d: int, lvl: int,
                  perms: tuple[bool, bool, bool], kind: int):
        """One x86 descriptor: the next (table, perms), or (size, Entry) at a leaf."""
        if not d & X86.P:
            raise WalkFault(lvl, "not-present")
        if lvl < 3 and not d & X86.PS:
            if not d & X86.A:              # the SDM: A is set on every entry used
                self.mem.write(table, idx, d | X86.A)
                c.n["a_set"] += 1
            rw, user, nx = perms           # rights are the AND (NX the OR) down the levels
            return ("table", (d & X86.PFN_MASK) >> 12,
                    (rw and bool(d & X86.RW), user and bool(d & X86.US),
                     nx or bool(d & X86.NX)))
        if lvl == 0:
            raise WalkFault(0, "reserved")     # PS must be 0 in a PML4E
        rw = perms[0] and bool(d & X86.RW)
        user = perms[1] and bool(d & X86.US)
        nx = perms[2] or bool(d & X86.NX)
        if not user:
            raise WalkFault(lvl, "user")
        if kind == WRITE and not rw:
            raise WalkFault(lvl, "write-protect")
        if kind == FETCH and nx:
            raise WalkFault(lvl, "exec")
        new = d | X86.A | (X86.D if kind == WRITE else 0)
        if new != d:
            c.n["a_set"] += not d & X86.A
            c.n["d_set"] += bool((new ^ d) & X86.D)
            self.mem.write(table, idx, new)
            d = new
        size = LEAF_SIZE_AT_LEVEL[lvl]
        pfn = (d & X86.PFN_MASK) >> 12
        e = Entry(pfn, rw, not nx, rw and bool(d & X86.D), False)
        if size == S4K and self.coalesce:
            group = self._group(table, idx, self.coalesce)
            if group is not None and all(g & X86.A for g in group):
                c.n["coal"] += 1
                # Writes skip the D update only if every member PTE is dirty already.
                dirty = e.dirty and all(g & X86.D for g in group)
                return "leaf", S16K, Entry(pfn - idx % self.coalesce, rw, not nx, dirty, True)
        return "leaf", size, e

    def _arm_step(self, c: Cpu, table: int, idx: int, d: int, lvl: int, kind: int):
        """One arm64 descriptor: the next (table, perms), or (size, Entry) at a leaf."""
        if not d & A64.VALID:
            raise WalkFault(lvl, "not-present")
        kind_bits = d & 3
        if lvl < 3 and kind_bits == 3:
            return "table", (d & A64.OA_MASK) >> 12, (True, True, False)  # no APTable/XNTable
        if kind_bits == 1 and lvl in (0, 3):
            # No level-0 block with a 4 KiB granule; 0b01 at level 3 is reserved: both
            # translate as invalid (a translation fault).
            raise WalkFault(lvl, "not-present")
        new = d
        if not d & A64.AP_USER:
            raise WalkFault(lvl, "user")
        if kind == FETCH and d & A64.UXN:
            raise WalkFault(lvl, "exec")
        if kind == WRITE and d & A64.RDONLY:
            if not (self.hafdbs and d & A64.DBM):
                raise WalkFault(lvl, "write-protect")
            new &= ~A64.RDONLY            # FEAT_HAFDBS dirty-state update
            c.n["d_set"] += 1
        if not d & A64.AF:
            if not self.hafdbs:
                raise WalkFault(lvl, "access-flag")
            new |= A64.AF
            c.n["a_set"] += 1
        if new != d:
            self.mem.write(table, idx, new)
            d = new
        writable = not d & A64.RDONLY or (self.hafdbs and bool(d & A64.DBM))
        e = Entry((d & A64.OA_MASK) >> 12, writable, not d & A64.UXN,
                  not d & A64.RDONLY, False)
        size = LEAF_SIZE_AT_LEVEL[lvl]
        if size == S4K and d & A64.CONT:
            group = self._group(table, idx, A64.CONT_PTES)
            if group is not None and all((g & 3) == 3 and g & A64.CONT for g in group):
                c.n["coal"] += 1
                return "leaf", S64K, Entry(e.pfn - idx % A64.CONT_PTES, e.writable,
                                           e.executable, e.dirty, True)
        return "leaf", size, e

    def _group(self, table: int, idx: int, n: int) -> list[int] | None:
        """The n aligned PTEs around idx if they are valid, map n consecutive frames from
        an n-aligned frame, and have equal attributes (AF and dirty state aside)."""
        first = idx - idx % n
        group = [self.mem.read(table, first + j) for j in range(n)]
        me = group[idx - first]
        base = self.arch.pfn(me) - (idx - first)
        if base % n:
            return None
        for j, g in enumerate(group):
            if not self.arch.is_valid(g) or self.arch.pfn(g) != base + j \
                    or not self.arch.attrs_equal(g, me):
                return None
        return group

    # ----------------------------------------------------------- flushes
    def _count(self, kind: str, src: int | None, targets: Iterable[int]) -> None:
        self.issued[src, kind] += 1
        for t in targets:
            self.received[t, kind] += 1

    def _drop(self, cpu: int, asid: int | None, lo: int | None = None, hi: int | None = None,
              walk_caches: bool = True, tlbs: bool = True) -> None:
        """Drop entries of ``asid`` (any if None) overlapping [lo, hi) (everything if None)."""
        def hit(a: int, first: int, shift: int) -> bool:
            if asid is not None and a != asid:
                return False
            return lo is None or (first << shift < hi and lo < (first + 1) << shift)

        c = self.cpus[cpu]
        if tlbs:
            for t in c.tlbs:
                self.flushed_entries[cpu] += t.drop(lambda k: hit(k[0], k[2], SIZE_SHIFT[k[1]]))
        if walk_caches:
            for w in c.pscs.values():
                w.drop(lambda k, w=w: hit(k[0], k[1], LEVEL_SHIFT[w.level]))

    def invlpg(self, cpu: int, va: int, asid: int | None = None) -> None:
        self._count("invlpg", cpu, (cpu,))
        self._drop(cpu, asid, va, va + 1, walk_caches=False)
        self._drop(cpu, asid, tlbs=False)       # the PCID's walk caches, whole (SDM allows)

    def invpcid_single(self, cpu: int, asid: int, va: int) -> None:
        self._count("invpcid_single", cpu, (cpu,))
        self._drop(cpu, asid, va, va + 1)

    def invpcid_asid(self, cpu: int, asid: int) -> None:
        self._count("invpcid_asid", cpu, (cpu,))
        self._drop(cpu, asid)

    def invpcid_all(self, cpu: int) -> None:
        self._count("invpcid_all", cpu, (cpu,))
        self._drop(cpu, None)

    def cr3_flush(self, cpu: int, asid: int) -> None:
        self._count("cr3_flush", cpu, (cpu,))
        self._drop(cpu, asid)

    def ipi(self, src: int | None, dst: int) -> None:
        self._count("ipi", src, (dst,))

    def tlbi_vae1is(self, cpu: int | None, asid: int, va: int) -> None:
        self._count("tlbi_vae1is", cpu, range(self.nr_cpus))
        for t in range(self.nr_cpus):
            self._drop(t, asid, va, va + 1)

    def tlbi_vale1is(self, cpu: int | None, asid: int, va: int) -> None:
        self._count("tlbi_vale1is", cpu, range(self.nr_cpus))
        for t in range(self.nr_cpus):
            self._drop(t, asid, va, va + 1, walk_caches=False)

    def tlbi_rvae1is(self, cpu: int | None, asid: int, va: int, scale: int, num: int,
                     last_level: bool = False) -> int:
        pages = (num + 1) * 2 ** (5 * scale + 1)
        self._count("tlbi_rvale1is" if last_level else "tlbi_rvae1is", cpu, range(self.nr_cpus))
        for t in range(self.nr_cpus):
            self._drop(t, asid, va, va + pages * 4096, walk_caches=not last_level)
        return pages

    def tlbi_aside1is(self, cpu: int | None, asid: int) -> None:
        self._count("tlbi_aside1is", cpu, range(self.nr_cpus))
        for t in range(self.nr_cpus):
            self._drop(t, asid)

    def tlbi_vmalle1is(self, cpu: int | None) -> None:
        self._count("tlbi_vmalle1is", cpu, range(self.nr_cpus))
        for t in range(self.nr_cpus):
            self._drop(t, None)

    def flush_all(self) -> None:
        self._count("flush_all", 0, range(self.nr_cpus))   # choice: booked to vCPU 0
        for t in range(self.nr_cpus):
            self._drop(t, None)

    # ----------------------------------------------------------- observation
    def contents(self, cpu: int) -> list[list[list[tuple]]]:
        """Per array, per set: (asid, size, vpn, pfn, W, X, dirty, coalesced), LRU first."""
        return [[[(*k, e.pfn, e.writable, e.executable, e.dirty, e.coalesced)
                  for k, e in s.items()] for s in t.sets] for t in self.cpus[cpu].tlbs]

    def psc_contents(self, cpu: int) -> dict[int, list[list[tuple]]]:
        """Per cached level, per set: (asid, prefix, table frame, rw, user, nx), LRU first."""
        return {lvl: [[(*k, v[0], *v[1]) for k, v in s.items()] for s in w.sets]
                for lvl, w in self.cpus[cpu].pscs.items()}

    def counters(self, cpu: int) -> dict[str, int]:
        return self._named(self.cpus[cpu].n, {k: v for (s, k), v in self.issued.items()
                                              if s == cpu},
                           {k: v for (t, k), v in self.received.items() if t == cpu},
                           self.flushed_entries[cpu])

    def totals(self) -> dict[str, int]:
        n: Counter = Counter()
        for c in self.cpus:
            n.update(c.n)
        issued: Counter = Counter()
        received: Counter = Counter()
        for (_, k), v in self.issued.items():
            issued[k] += v
        for (_, k), v in self.received.items():
            received[k] += v
        return self._named(n, issued, received, sum(self.flushed_entries.values()))

    def _named(self, n: Counter, issued: dict, received: dict, flushed: int) -> dict[str, int]:
        """Counter names from docs/hardware.md "Counters"; zero counts left out."""
        def walks(kind: int, sizes: Iterable[int] = range(6)) -> int:
            return sum(n["walk", kind, z] for z in sizes)

        def tried(kind: int) -> int:           # walks that found a page, and those that faulted
            return walks(kind) + n["walk_fault", kind]

        def refills(kind: int) -> int:         # L1 misses that brought a translation
            return n["l1_miss", kind] - n["refill_lost", kind]

        out: dict[str, int] = {}
        names = self.arch.level_names
        if self.x86:
            out["dTLB-loads"] = n["acc", READ]
            out["dTLB-load-misses"] = tried(READ)
            out["dTLB-stores"] = n["acc", WRITE]
            out["dTLB-store-misses"] = tried(WRITE)
            out["iTLB-loads"] = n["acc", FETCH]
            out["iTLB-load-misses"] = tried(FETCH)
            for pfx, k in (("dtlb_load_misses", READ), ("dtlb_store_misses", WRITE),
                           ("itlb_misses", FETCH)):
                out[f"{pfx}.walk_completed"] = tried(k)
                out[f"{pfx}.walk_completed_4k"] = walks(k, (S4K, S16K))
                out[f"{pfx}.walk_completed_2m_4m"] = walks(k, (S2M,))
                out[f"{pfx}.walk_completed_1g"] = walks(k, (S1G,))
                out[f"{pfx}.stlb_hit"] = n["l2_hit", k]
            out["emu.coalesced_16k_fills"] = n["coal"]
            for lvl in range(3):
                out[f"emu.psc_hits.{names[lvl]}"] = n["psc_hit", lvl]
            out["emu.ad_updates.accessed"] = n["a_set"]
            out["emu.ad_updates.dirty"] = n["d_set"]
        else:
            out["dTLB-loads"] = n["acc", READ]
            out["dTLB-load-misses"] = refills(READ)
            out["dTLB-stores"] = n["acc", WRITE]
            out["dTLB-store-misses"] = refills(WRITE)
            out["iTLB-loads"] = n["acc", FETCH]
            out["iTLB-load-misses"] = refills(FETCH)
            out["L1D_TLB"] = n["acc", READ] + n["acc", WRITE]
            out["L1D_TLB_REFILL"] = refills(READ) + refills(WRITE)
            out["L1I_TLB"] = n["acc", FETCH]
            out["L1I_TLB_REFILL"] = refills(FETCH)
            out["L2D_TLB"] = sum(n["l1_miss", k] for k in range(3))
            out["L2D_TLB_REFILL"] = sum(n["l1_miss", k] - n["l2_hit", k] - n["refill_lost", k]
                                        for k in range(3))
            out["DTLB_WALK"] = tried(READ) + tried(WRITE)
            out["ITLB_WALK"] = tried(FETCH)
            out["emu.contpte_64k_fills"] = n["coal"]
            for lvl in range(3):
                out[f"emu.walk_cache_hits.{names[lvl]}"] = n["psc_hit", lvl]
            out["emu.hw_af_updates"] = n["a_set"]
            out["emu.hw_dbm_updates"] = n["d_set"]
        out["emu.walk_cache_misses"] = n["psc_miss"]
        out["emu.l1_dtlb_load_misses"] = n["l1_miss", READ]
        out["emu.l1_dtlb_store_misses"] = n["l1_miss", WRITE]
        out["emu.l1_itlb_misses"] = n["l1_miss", FETCH]
        out["emu.faulted_walks"] = sum(n["walk_fault", k] for k in range(3))
        out["emu.data_walks"] = tried(READ) + tried(WRITE)
        out["emu.instr_walks"] = tried(FETCH)
        for z, name in enumerate(SIZE_NAMES):
            out[f"emu.walks.{name}"] = sum(n["walk", k, z] for k in range(3))
        for lvl in range(4):
            out[f"emu.walk_refs.{names[lvl]}"] = n["ref", lvl]
        out["emu.walk_refs"] = sum(n["ref", lvl] for lvl in range(4))
        out["emu.faults"] = n["faults"]
        out["emu.dirty_assists"] = n["assist"]
        out["emu.permission_rewalks"] = n["rewalk"]
        for k in FLUSH_KINDS:
            out[f"flush.{k}.issued"] = issued.get(k, 0)
            out[f"flush.{k}.received"] = received.get(k, 0)
        out["emu.tlb_entries_flushed"] = flushed
        return {k: v for k, v in out.items() if v}


# ------------------------------------------------------------------ Linux policy
# From docs/hardware.md "Linux policy" and arch/x86/mm/tlb.c, arch/arm64/include/asm/tlbflush.h.
CEILING = 33                 # x86 tlb_single_page_flush_ceiling
MAX_DVM_OPS = 512            # arm64, PTRS_PER_PTE
MAX_TLBI_RANGE_PAGES = 32 << 16   # arm64: the most one SCALE=3, NUM=31 operation covers


def _stats() -> Counter:
    return Counter(nr_tlb_remote_flush=0, nr_tlb_remote_flush_received=0,
                   nr_tlb_local_flush_all=0, nr_tlb_local_flush_one=0)


def policy_flush_range(m: NaiveMachine, asid: int, cpus: Iterable[int], start: int, end: int,
                       stride_shift: int = 12, last_level_only: bool = False,
                       this_cpu: int | None = None) -> dict[str, int]:
    """Linux's flush_tlb_range on the naive machine; returns the vmstat increments."""
    st = _stats()
    if end <= start:
        return dict(st)
    stride = 1 << stride_shift
    start -= start % stride
    if m.x86:
        whole = (end - start) >> stride_shift > CEILING
        vas = [] if whole else list(range(start, end, stride))

        # NR_TLB_LOCAL_FLUSH_* count only the initiating CPU's own flush (flush_tlb_func's
        # "local"); remote CPUs count NR_TLB_REMOTE_FLUSH_RECEIVED alone (changed with
        # issue 11: the old policy counted every CPU's flush as local).
        def local(cpu: int) -> None:
            if whole:
                m.cr3_flush(cpu, asid)
                if cpu == this_cpu:
                    st["nr_tlb_local_flush_all"] += 1
            else:
                for va in vas:
                    m.invlpg(cpu, va, asid)
                if cpu == this_cpu:
                    st["nr_tlb_local_flush_one"] += len(vas)

        mask = set(cpus)
        if this_cpu in mask:
            local(this_cpu)
        others = sorted(c for c in mask if c != this_cpu)
        if others:
            st["nr_tlb_remote_flush"] += 1
        for c in others:
            m.ipi(this_cpu, c)
            st["nr_tlb_remote_flush_received"] += 1
            local(c)
        return dict(st)
    # arm64 keeps no CONFIG_DEBUG_TLBFLUSH counts (only arch/x86 increments them): the
    # increments stay 0.  Since Linux 6.10 the range limit is "more than" MAX_TLBI_RANGE_PAGES
    # and the range loop runs SCALE from 3 down with NUM clamped to 31, whatever the stride.
    end += -end % stride
    pages = (end - start) // 4096
    if (m.profile.tlbi_range and pages > MAX_TLBI_RANGE_PAGES) \
            or (not m.profile.tlbi_range and pages >= MAX_DVM_OPS * stride // 4096):
        m.tlbi_aside1is(this_cpu, asid)
        return dict(st)
    va = start
    single = m.tlbi_vale1is if last_level_only else m.tlbi_vae1is
    if not m.profile.tlbi_range:
        while va < end:
            single(this_cpu, asid, va)
            va += stride
        return dict(st)
    scale = 3
    while pages > 0:
        if pages == 1:
            single(this_cpu, asid, va)
            va += stride
            pages -= stride // 4096
            continue
        unit = 1 << (5 * scale + 1)
        num = min(pages, 32 * unit) // unit - 1
        if num >= 0:
            m.tlbi_rvae1is(this_cpu, asid, va, scale, num, last_level_only)
            va += (num + 1) * unit * 4096
            pages -= (num + 1) * unit
        scale -= 1
    return dict(st)


def policy_flush_mm(m: NaiveMachine, asid: int, cpus: Iterable[int],
                    this_cpu: int | None = None) -> dict[str, int]:
    if m.x86:
        return policy_flush_range(m, asid, cpus, 0, 1 << 62, 12, False, this_cpu)
    m.tlbi_aside1is(this_cpu, asid)
    return dict(_stats())


def policy_flush_page(m: NaiveMachine, asid: int, cpus: Iterable[int], va: int,
                      this_cpu: int | None = None) -> dict[str, int]:
    return policy_flush_range(m, asid, cpus, va, va + 4096, 12, True, this_cpu)
