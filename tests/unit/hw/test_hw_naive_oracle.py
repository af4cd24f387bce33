"""Diff the numba hardware model against a naive plain-Python MMU (naive_mmu) on random traces.

The stumpy habit: every fast kernel has a slow, obviously-right twin, and random
inputs must give both the same answer.  Each trace runs on two identical
machines (same page tables, frames allocated in lockstep): emu.hw.Hardware on
PhysMem, naive_mmu.NaiveMachine on dicts.  Accesses, batches, page-table edits
without flushes, THP collapse/split (freed PTE tables), Linux flush policy
(emu.kernel.tlbflush vs the naive policy) and raw flush primitives are
interleaved.  After every operation the translation, fault and every named
counter of both vCPUs must agree; at checkpoints also the TLB contents (entry
tags, frames and flags per set, in LRU order), the walk caches and the page
tables (A/D and AF/DBM updates written by the walkers).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from hw_test_helpers import BASE, make
from naive_mmu import (
    DictTables,
    NaiveMachine,
    policy_flush_mm,
    policy_flush_page,
    policy_flush_range,
)

from emu.arch import PROT_EXEC, PROT_READ, PROT_WRITE
from emu.arch import arm64 as A64
from emu.arch import x86_64 as X86
from emu.arch.profile import list_profiles, load_profile
from emu.hw.builder import PageTableBuilder
from emu.kernel import tlbflush
from emu.mem import BumpAllocator

R, RW, RX, RWX = PROT_READ, PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC, 7
KB, MB, GB = 1 << 10, 1 << 20, 1 << 30
FRAMES = 1 << 16
NR_CPUS = 2
ASIDS = (1, 2)
OPS = 600
CHECK_EVERY = 50
SEEDS = (1, 2, 3)

DENSE = BASE                      # 64 PTEs: 4 aligned groups of 16 (contpte / coalescing)
WIDE = BASE + 32 * MB             # 96 PTEs 20 KiB apart: many sets, no 16K/64K groups
STRIDE = BASE + 48 * MB           # 16 PTEs 64 KiB apart: one set of 16-set L1s, not of L2s
SPARSE = BASE + 64 * MB           # PTEs 1 MiB apart: all in one set of most arrays
HUGE = BASE + 256 * MB            # 2 MiB leaves 16 MiB apart: one set of the 8-set 2M arrays
THP = BASE + 512 * MB             # a PTE table that collapses to a 2 MiB leaf and splits back
GIGA = 2 * GB                     # a 1 GiB leaf
FAR = [(3 + i) * GB for i in range(6)] + [(k << 39) + BASE for k in range(1, 5)]


def _cases() -> list[tuple[str, str]]:
    out = [(a, p) for a in ("x86_64", "arm64") for p in list_profiles(a)]
    return out + [("arm64", "generic-arm64+no-hafdbs")]


def _profile(name: str):
    if name.endswith("+no-hafdbs"):
        return replace(load_profile(name.split("+")[0]), hafdbs=False)
    return load_profile(name)


class Twin:
    """The numba machine and the naive one, fed the same page-table edits."""

    def __init__(self, arch_name: str, profile) -> None:
        self.real = make(arch_name, profile, nr_cpus=NR_CPUS, frames=FRAMES)
        self.arch = self.real.arch
        self.mem = DictTables()
        fake = SimpleNamespace(pgtables=self.mem)
        alloc = BumpAllocator(FRAMES)
        self.hw = self.real.hw
        self.naive = NaiveMachine(self.arch, profile, self.mem, NR_CPUS)
        # Builders created in the same order on both sides get the same table frames.
        self.rb = {ASIDS[0]: self.real.b}
        self.nb = {ASIDS[0]: PageTableBuilder(self.arch, fake, alloc)}
        self.rb[ASIDS[1]] = PageTableBuilder(self.arch, self.real.pm, self.real.alloc)
        self.nb[ASIDS[1]] = PageTableBuilder(self.arch, fake, alloc)
        assert all(self.rb[a].root == self.nb[a].root for a in ASIDS)

    def root(self, asid: int) -> int:
        return self.rb[asid].root

    def set(self, asid: int, va: int, level: int, desc: int) -> None:
        self.rb[asid].set(va, level, desc)
        self.nb[asid].set(va, level, desc)

    def get(self, asid: int, va: int, level: int) -> int:
        return self.rb[asid].get(va, level)

    def free_table(self, pfn: int) -> None:
        self.real.pm.pgtables.remove(pfn)
        self.mem.remove(pfn)


# ---------------------------------------------------------------- numba state, decoded
def hw_tlb_contents(hw, cpu: int) -> list[list[list[tuple]]]:
    """The numba TLBs as naive_mmu.contents() shows them (layout: emu/hw/kernels.py)."""
    out, base = [], 0
    for t in hw.profile.tlbs:
        sets = [[] for _ in range(t.entries // t.ways)]
        tag = hw.tag[cpu, base:base + t.entries]
        for e in np.flatnonzero(tag):
            tg, d = int(tag[e]), int(hw.data[cpu, base + e])
            vpn, size, asid = (tg >> 20) & ((1 << 43) - 1), (tg >> 16) & 7, tg & 0xFFFF
            assert e // t.ways == vpn % len(sets), f"{t.name}: entry in the wrong set"
            sets[e // t.ways].append((int(hw.stamp[cpu, base + e]),
                                      (asid, size, vpn, d >> 12, bool(d & 1), bool(d & 2),
                                       bool(d & 4), bool(d & 8))))
        out.append([[x for _, x in sorted(s)] for s in sets])
        base += t.entries
    return out


def hw_psc_contents(hw, cpu: int) -> dict[int, list[list[tuple]]]:
    out = {}
    for c in sorted(hw.profile.pscs, key=lambda c: c.level):
        base = sum(o.entries for o in hw.profile.pscs if o.level < c.level)
        sets = [[] for _ in range(c.entries // c.ways)]
        tag = hw.ptag[cpu, base:base + c.entries]
        for e in np.flatnonzero(tag):
            tg, d = int(tag[e]), int(hw.pdata[cpu, base + e])
            prefix = (tg >> 20) & ((1 << 43) - 1)
            sets[e // c.ways].append((int(hw.pstamp[cpu, base + e]),
                                      (tg & 0xFFFF, prefix, d >> 12, bool(d & 1), bool(d & 2),
                                       bool(d & 4))))
        out[c.level] = [[x for _, x in sorted(s)] for s in sets]
    return out


def check_state(tw: Twin, where: str) -> None:
    for cpu in range(NR_CPUS):
        want, got = tw.naive.contents(cpu), hw_tlb_contents(tw.hw, cpu)
        for spec, w, g in zip(tw.hw.profile.tlbs, want, got, strict=True):
            assert g == w, f"{where}: cpu {cpu} {spec.name} differs"
        assert hw_psc_contents(tw.hw, cpu) == tw.naive.psc_contents(cpu), \
            f"{where}: cpu {cpu} walk caches differ"
    store = tw.real.pm.pgtables
    assert store.nr_tables == len(tw.mem.frames)
    for pfn, entries in tw.mem.frames.items():
        real = store.table(pfn)
        nz = {int(i): int(real[i]) for i in np.flatnonzero(real)}
        assert nz == {i: d for i, d in entries.items() if d}, f"{where}: table {pfn:#x}"


def check_counters(tw: Twin, where: str) -> None:
    for cpu in range(NR_CPUS):
        got = {k: v for k, v in tw.hw.counters(cpu).items() if v}
        want = tw.naive.counters(cpu)
        if got != want:
            diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
                    if got.get(k) != want.get(k)}
            raise AssertionError(f"{where}: cpu {cpu} counters (numba, naive): {diff}")
    got = {k: v for k, v in tw.hw.totals().items() if v}
    assert got == tw.naive.totals(), f"{where}: totals"


# ---------------------------------------------------------------- random traces
def leaf(tw: Twin, level: int, pfn: int, prot: int, young: bool, dirty: bool,
         cont: bool = False) -> int:
    a = tw.arch
    if level == 3:
        return a.mk_pte(pfn, prot, young=young, dirty=dirty, cont=cont)
    return a.mk_block(pfn, prot, level, young=young, dirty=dirty)


def spare_pfn(asid: int, level: int) -> int:
    """A frame, aligned for a level-``level`` leaf, to map an unmapped slot to."""
    return {3: 0x10000 * asid + 0x5000, 2: 0x10000 * asid + 0x6000, 1: (6 + asid) << 18}[level]


class Trace:
    """One random trace: layout, then operations, each applied to both machines."""

    def __init__(self, tw: Twin, rng: np.random.Generator) -> None:
        self.tw, self.rng = tw, rng
        self.arm = tw.arch.name == "arm64"
        # Leaves the edits may change, (va, level); the THP region's are not among them.
        self.slots: dict[int, list[tuple[int, int]]] = {a: [] for a in ASIDS}
        self.pool: list[int] = []
        self.thp_leaf = {a: False for a in ASIDS}
        self.reverts: list[tuple[int, int, int, int, int]] = []   # (due op, asid, va, lvl, xor)
        for asid in ASIDS:
            self._layout(asid)

    def _prot(self) -> int:
        return int(self.rng.choice([RW] * 6 + [RWX] * 2 + [R, RX]))

    def _bool(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)

    def _map(self, asid: int, va: int, level: int, pfn: int, prot: int,
             cont: bool = False) -> None:
        self.tw.set(asid, va, level, leaf(self.tw, level, pfn, prot, self._bool(),
                                          self._bool(0.3), cont))
        self.slots[asid].append((va, level))

    def _layout(self, asid: int) -> None:
        first = asid == ASIDS[0]
        frame = 0x10000 * asid
        for g in range(4):                        # dense groups: alike, or perturbed
            prot, cont = self._prot(), self.arm and self._bool(0.7)
            skew = 0 if self._bool(0.75) else 1 + 2 * int(self.rng.integers(2))  # unaligned
            for i in range(16):
                pfn = frame + 64 * g + i + skew
                if self._bool(0.05):
                    pfn += 1                      # breaks the group: 4 KiB entries only
                p = prot if not self._bool(0.05) else self._prot()
                self._map(asid, DENSE + (16 * g + i) * 4 * KB, 3, pfn, p, cont)
        for i in range(96):
            self._map(asid, WIDE + i * 20 * KB, 3, frame + 0x800 + 5 * i, self._prot())
        for i in range(16):
            self._map(asid, STRIDE + i * 64 * KB, 3, frame + 0x700 + 3 * i, self._prot())
        for i in range(64):
            self._map(asid, SPARSE + i * MB, 3, frame + 0x100 + 7 * i, self._prot())
        for k in range(12):
            self._map(asid, HUGE + k * 16 * MB, 2, frame + 0x1000 + 512 * k, self._prot())
        self._split(asid, record=True)
        self._map(asid, GIGA, 1, (4 + asid) << 18, self._prot())
        for i, va in enumerate(FAR):
            self._map(asid, va, 3, frame + 0x3000 + i, self._prot())
        if first:   # access pools with weights: mostly the dense and the set-conflicting pages
            self.pools = [
                (0.25, [DENSE + i * 4 * KB for i in range(64)]),
                (0.15, [WIDE + i * 20 * KB for i in range(96)]),
                (0.10, [STRIDE + i * 64 * KB for i in range(16)]),   # L1 sets thrash, L2 holds
                (0.10, [SPARSE + i * MB for i in range(64)]),
                (0.13, [HUGE + k * 16 * MB + j * 4 * KB for k in range(12) for j in (0, 1, 17)]),
                (0.10, [THP + j * 4 * KB for j in range(16)]),
                (0.06, [GIGA + k * 2 * MB + j * 4 * KB for k in (0, 1, 2, 511) for j in (0, 5)]),
                (0.06, FAR)]
            self.pool = [va for _, p in self.pools for va in p]

    def _split(self, asid: int, record: bool = False) -> None:
        """THP region as 16 mapped PTEs in a fresh PTE table (contiguous on arm64 maybe)."""
        cont = self.arm and self._bool()
        if not record:
            self.tw.set(asid, THP, 2, 0)
        for j in range(16):
            va = THP + j * 4 * KB
            self.tw.set(asid, va, 3, leaf(self.tw, 3, 0x10000 * asid + 0x2000 + j, RW,
                                          self._bool(0.3), self._bool(0.3), cont))
        self.thp_leaf[asid] = False

    def _collapse(self, asid: int) -> None:
        old = self.tw.arch.pfn(self.tw.get(asid, THP, 2))
        self.tw.set(asid, THP, 2, leaf(self.tw, 2, 0x10000 * asid + 0x2200, RW,
                                       self._bool(), self._bool()))
        self.tw.free_table(old)                   # stale walk-cache entries now point at it
        self.thp_leaf[asid] = True

    # -------------------------------------------------------------- operations
    def va(self) -> int:
        r = self.rng.random()
        for w, pool in self.pools:
            if r < w:
                return int(pool[self.rng.integers(len(pool))])
            r -= w
        return int(self.pool[self.rng.integers(len(self.pool))])

    def kind(self) -> int:
        return int(self.rng.choice([0] * 6 + [1] * 3 + [2]))

    def step(self, i: int) -> str:
        if self.reverts and self.reverts[0][0] <= i:
            _, asid, va, lvl, flip = self.reverts.pop(0)
            self.tw.set(asid, va, lvl, self.tw.get(asid, va, lvl) ^ flip)
            return f"table rights restored asid {asid} va {va:#x} level {lvl}"
        self.now = i
        r = self.rng.random()
        if r < 0.55:
            return self.op_access()
        if r < 0.75:
            return self.op_batch()
        if r < 0.87:
            return self.op_edit()
        if r < 0.885:
            return self.op_thp()
        if r < 0.945:
            return self.op_policy()
        return self.op_primitive()

    def _same_fault(self, where: str) -> None:
        f, g = self.tw.hw.fault, self.tw.naive.fault
        got = None if f is None else (f.va, f.kind, f.level, f.reason)
        assert got == g, f"{where}: fault numba {got} naive {g}"

    def op_access(self) -> str:
        cpu, asid = int(self.rng.integers(NR_CPUS)), int(self.rng.choice(ASIDS))
        va, kind = self.va(), self.kind()
        count = 1 if self._bool(0.8) else int(self.rng.integers(2, 9))
        tw = self.tw
        got = tw.hw.access(cpu, asid, tw.root(asid), va, kind, count)
        want = tw.naive.access(cpu, asid, tw.root(asid), va, kind, count)
        where = f"access cpu {cpu} asid {asid} va {va:#x} kind {kind}"
        assert got == want, f"{where}: frame numba {got} naive {want}"
        self._same_fault(where)
        if got is None and self._bool(0.6):
            self._fix(asid, va)
            where += " (faulted; fixed)"
        return where

    def _fix(self, asid: int, va: int) -> None:
        """What a fault handler might do: make the leaf present, young and RWX, no flush."""
        for slot_va, level in self.slots[asid]:
            if slot_va <= va < slot_va + (1 << (12 + 9 * (3 - level))):
                d = self.tw.get(asid, slot_va, level)
                a = self.tw.arch
                pfn = a.pfn(d) if a.is_present(d) else spare_pfn(asid, level)
                cont = self.arm and level == 3 and bool(d & A64.CONT)
                self.tw.set(asid, slot_va, level, leaf(self.tw, level, pfn, RWX, True,
                                                       self._bool(), cont))
                return

    def op_batch(self) -> str:
        cpu, asid = int(self.rng.integers(NR_CPUS)), int(self.rng.choice(ASIDS))
        n = int(self.rng.integers(2, 40))
        evs = [(self.kind(), self.va(), int(self.rng.integers(1, 4))) for _ in range(n)]
        if self._bool(0.2):
            evs[int(self.rng.integers(n))] = (3, self.va(), 1)      # a kind run() skips
        kinds = np.array([k for k, _, _ in evs], dtype=np.uint8)
        addrs = np.array([v for _, v, _ in evs], dtype=np.uint64)
        counts = np.array([c for _, _, c in evs], dtype=np.uint64)
        out = np.full(n, -1, dtype=np.int64)
        tw = self.tw
        got = tw.hw.run(cpu, asid, tw.root(asid), kinds, addrs, counts, 0, n, out)
        want, frames = n, []
        for j, (k, v, c) in enumerate(evs):
            if k > 2:
                frames.append(-1)
                continue
            p = tw.naive.access(cpu, asid, tw.root(asid), v, k, c)
            if p is None:
                want = j
                break
            frames.append(p)
        where = f"run cpu {cpu} asid {asid} {evs}"
        assert got == want, f"{where}: stopped at numba {got} naive {want}"
        assert list(out[:got]) == frames[:got], f"{where}: frames"
        if got < n:
            self._same_fault(where)
        return where

    def op_edit(self) -> str:
        """Change one leaf (or, on x86, one table entry's rights) without any flush."""
        tw, a = self.tw, self.tw.arch
        asid = int(self.rng.choice(ASIDS))
        va, level = self.slots[asid][int(self.rng.integers(len(self.slots[asid])))]
        if not self.arm and self._bool(0.1) and level > 1:
            lvl = level - 1                       # the parent table entry: 2 MiB or 1 GiB
            d = tw.get(asid, va, lvl)
            flip = int(self.rng.choice([X86.RW, X86.US, X86.NX]))
            tw.set(asid, va, lvl, d ^ flip)
            # Undone a few operations later (no flush), or the region would fault for good.
            self.reverts.append((self.now + int(self.rng.integers(3, 20)), asid, va, lvl, flip))
            self.reverts.sort()
            return f"table rights asid {asid} va {va:#x} level {lvl} ^ {flip:#x}"
        d = tw.get(asid, va, level)
        pfn = a.pfn(d) if a.is_present(d) else spare_pfn(asid, level)
        cont = self.arm and level == 3 and bool(d & A64.CONT)
        what = str(self.rng.choice(["remap", "prot", "old", "clean", "unmap", "super",
                                    "cont", "youngdirty"]))
        if what == "remap":
            step = {3: 1, 2: 512, 1: 1 << 18}[level]
            pfn = pfn + step * int(self.rng.integers(-2, 3))
            new = leaf(tw, level, max(pfn, step), self._prot(), self._bool(), self._bool(),
                       cont)
        elif what == "prot":
            prot = int(self.rng.choice([RW, R, RX, RWX, 0]))
            new = leaf(tw, level, pfn, prot, a.young(d), a.dirty(d), cont)
        elif what == "old":
            new = a.mkold(d)
        elif what == "clean":
            new = a.mkclean(d)
        elif what == "unmap":
            new = 0
        elif what == "super":                    # a supervisor-only leaf
            new = d & ~(A64.AP_USER if self.arm else X86.US)
        elif what == "cont":
            if not (self.arm and level == 3 and a.is_valid(d)):
                return "skip"
            new = a.mknoncont(d) if cont else a.mkcont(d)
        else:
            new = a.mkdirty(a.mkyoung(d)) if a.is_present(d) else d
        tw.set(asid, va, level, new)
        return f"edit {what} asid {asid} va {va:#x} level {level}"

    def op_thp(self) -> str:
        asid = int(self.rng.choice(ASIDS))
        if self.thp_leaf[asid]:
            self._split(asid)
            return f"split asid {asid}"
        self._collapse(asid)
        return f"collapse asid {asid}"

    def op_policy(self) -> str:
        tw = self.tw
        asid = int(self.rng.choice(ASIDS))
        cpus = {c for c in range(NR_CPUS) if self._bool(0.7)}
        this = self.rng.choice([0, 1, None])
        this = None if this is None else int(this)
        what = str(self.rng.choice(["page"] * 4 + ["range"] * 4 + ["mm"]))
        if what == "page":
            va = self.va()
            got = tlbflush.flush_tlb_page(tw.hw, asid, cpus, va, this_cpu=this)
            want = policy_flush_page(tw.naive, asid, cpus, va, this_cpu=this)
        elif what == "mm":
            got = tlbflush.flush_tlb_mm(tw.hw, asid, cpus, this_cpu=this)
            want = policy_flush_mm(tw.naive, asid, cpus, this_cpu=this)
        else:
            start = self.va() - int(self.rng.integers(0, 3)) * 4 * KB
            shift = 21 if self._bool(0.2) else 12
            pages = int(self.rng.choice([1, 2, 3, 7, 33, 34, 40, 65, 300, 511, 512, 700]))
            if shift == 21:
                pages = int(self.rng.integers(1, 4)) * 512
            end = start + pages * 4 * KB
            last = self._bool()
            got = tlbflush.flush_tlb_range(tw.hw, asid, cpus, start, end, shift, last, this)
            want = policy_flush_range(tw.naive, asid, cpus, start, end, shift, last, this)
        assert got == want, f"flush {what}: vmstat numba {got} naive {want}"
        return f"flush {what} asid {asid} cpus {cpus} this {this}"

    def op_primitive(self) -> str:
        tw = self.tw
        cpu, asid, va = int(self.rng.integers(NR_CPUS)), int(self.rng.choice(ASIDS)), self.va()
        if self.arm:
            # Whole-ASID and whole-TLB flushes are rare, or they would hide replacement.
            ops = ["tlbi_vae1is"] * 4 + ["tlbi_vale1is"] * 4 + ["tlbi_aside1is",
                                                                "tlbi_vmalle1is", "flush_all"]
            if tw.hw.profile.tlbi_range:
                ops += ["tlbi_rvae1is"] * 4
        else:
            ops = ["invlpg"] * 4 + ["invlpg_any"] * 2 + ["invpcid_single"] * 4 + [
                "invpcid_asid", "invpcid_all", "cr3_flush", "flush_all"]
        op = str(self.rng.choice(ops))
        for m in (tw.hw, tw.naive):
            if op in ("tlbi_vae1is", "tlbi_vale1is"):
                getattr(m, op)(cpu, asid, va)
            elif op == "tlbi_rvae1is":
                r = np.random.default_rng(va)     # same (scale, num) for both machines
                m.tlbi_rvae1is(cpu, asid, va, int(r.integers(0, 2)), int(r.integers(0, 32)),
                               bool(va & 0x1000))
            elif op == "tlbi_aside1is":
                m.tlbi_aside1is(None if va & 0x1000 else cpu, asid)
            elif op == "tlbi_vmalle1is":
                m.tlbi_vmalle1is(cpu)
            elif op == "flush_all":
                m.flush_all()
            elif op == "invlpg":
                m.invlpg(cpu, va, asid)
            elif op == "invlpg_any":
                m.invlpg(cpu, va)
            elif op == "invpcid_single":
                m.invpcid_single(cpu, asid, va)
            elif op in ("invpcid_asid", "cr3_flush"):
                getattr(m, op)(cpu, asid)
            else:
                m.invpcid_all(cpu)
        return f"{op} cpu {cpu} asid {asid} va {va:#x}"


def run_trace(arch_name: str, profile_name: str, seed: int, ops: int = OPS) -> Twin:
    tw = Twin(arch_name, _profile(profile_name))
    tr = Trace(tw, np.random.default_rng(seed))
    check_state(tw, "layout")
    history: list[str] = []
    for i in range(ops):
        history.append(tr.step(i))
        where = f"op {i} ({history[-1]}); last ops {history[-4:-1]}"
        check_counters(tw, where)
        if i % CHECK_EVERY == CHECK_EVERY - 1:
            check_state(tw, where)
    check_state(tw, "end")
    return tw


def assert_trace_was_hard(tw: Twin) -> None:
    """The trace reached the paths worth diffing (guards against a generator gone soft)."""
    n = sum((c.n for c in tw.naive.cpus), start=Counter())
    assert sum(n["l2_hit", k] for k in range(3)) > 0, "no L2 hits"
    assert all(n["psc_hit", lvl] > 0 for lvl in range(3)), "a walk cache never hit"
    assert len({z for (*_, z) in (k for k in n if k[0] == "walk")}) >= 3, "few page sizes"
    assert n["faults"] > 0 and n["assist"] + n["rewalk"] > 0
    tlbs = [t for c in tw.naive.cpus for t in c.tlbs]
    assert any(t.evictions for t in tlbs if t.spec.level == 1 and t.spec.side != "instr") \
        and any(t.evictions for t in tlbs if t.spec.level == 2), "no evictions"
    assert any(w.evictions for c in tw.naive.cpus for w in c.pscs.values()), \
        "no walk-cache evictions"
    if tw.arch.name == "arm64" or tw.hw.profile.coalesce:
        assert n["coal"] > 0, "no contiguous / coalesced fill"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("arch_name", "profile_name"), _cases())
def test_numba_matches_naive(arch_name: str, profile_name: str, seed: int) -> None:
    assert_trace_was_hard(run_trace(arch_name, profile_name, seed))


@pytest.mark.parametrize(("arch_name", "profile_name"),
                         [("x86_64", "generic-x86_64"), ("arm64", "generic-arm64")])
def test_idle_cpus_are_skipped_unseen(arch_name: str, profile_name: str, monkeypatch) -> None:
    """Broadcast flushes skip the vCPUs that never translated (their TLBs and walk
    caches are empty), which must not show: with four vCPUs of which the trace uses
    two, every vCPU's counters, flush counts and contents equal the naive machine's,
    which flushes all four."""
    import sys
    mod = sys.modules[__name__]
    monkeypatch.setattr(mod, "NR_CPUS", 4)
    tw = Twin(arch_name, _profile(profile_name))
    monkeypatch.setattr(mod, "NR_CPUS", 2)          # the trace runs and flushes on 0, 1
    tr = Trace(tw, np.random.default_rng(3))
    for i in range(OPS // 2):
        tr.step(i)
    monkeypatch.setattr(mod, "NR_CPUS", 4)
    check_counters(tw, "end")
    check_state(tw, "end")
    assert tw.hw._filled() == [0, 1]
    received = tw.hw.flush_received
    assert (received[2:] == received[2]).all() and received[2].sum() > 0
