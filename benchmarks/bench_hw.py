"""Replay throughput and memory of the hardware model alone (a script, not a test).

    .venv/bin/python benchmarks/bench_hw.py [--events N] [--span-mib M] [--profile NAME ...]

A `random`-like stream: uniformly random pages over the span (mostly distinct
pages, so nearly every event misses every TLB and walks), 30 % writes, merged
counts 1..3, one vCPU.  Tables are built directly (all 4 KiB pages mapped)
with the arch API; the first pass warms the TLBs and compiles the kernels,
the second is timed.  Throughput is given per CPU second (process time), the
honest figure on a shared machine, and per wall-clock second; then the cost of
one ``Hardware.run`` call (a one-event slice: Python, dispatch and setup).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from emu.arch import PROT_READ, PROT_WRITE, get_arch
from emu.arch.profile import list_profiles, load_profile
from emu.hw import Hardware
from emu.hw.builder import PageTableBuilder
from emu.mem import BumpAllocator, PhysMem

BASE = 0x4000_0000


def build(arch_name: str, span: int):
    """Map [BASE, BASE+span) with 4 KiB pages, one numpy write per page table."""
    a = get_arch(arch_name)
    npages = span >> 12
    frames = 2 * max(npages, 512) + (1 << 12)
    pm = PhysMem(frames)
    al = BumpAllocator(frames)
    b = PageTableBuilder(a, pm, al)
    data = al.alloc(max(9, (npages - 1).bit_length()))
    proto = a.mk_pte(0, PROT_READ | PROT_WRITE)
    idx = np.arange(512, dtype=np.uint64)
    for off in range(0, max(span, 1 << 21), 1 << 21):
        t = b.table_for(BASE + off, 3)
        first = data + (off >> 12)
        pm.pgtables.table(t)[:] = np.uint64(proto) | ((np.uint64(first) + idx) << np.uint64(12))
    return a, pm, b


def stream(n: int, span: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    addrs = (BASE + (rng.integers(0, span >> 12, n) << 12)).astype(np.uint64)
    kinds = (rng.random(n) < 0.3).astype(np.uint8)
    counts = rng.integers(1, 4, n).astype(np.uint64)
    return kinds, addrs, counts


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--span-mib", type=float, default=1024,
                    help="working set; 0.125 (32 pages) measures the all-hit path")
    ap.add_argument("--profile", nargs="*", default=None)
    args = ap.parse_args()
    span = max(1 << 12, int(args.span_mib * (1 << 20)) & ~0xFFF)
    profiles = args.profile or list_profiles()
    k, a, n = stream(args.events, span)
    print(f"stream: {args.events:,} events, random pages over {args.span_mib} MiB")
    for name in profiles:
        prof = load_profile(name)
        arch, pm, b = build(prof.arch, span)
        rss0 = rss_mib()
        hw = Hardware(arch, prof, pm, 1)
        assert hw.run(0, 1, b.root, k, a, n) == len(k)        # warm-up + compile
        t0, c0 = time.perf_counter(), time.process_time()
        assert hw.run(0, 1, b.root, k, a, n) == len(k)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        calls = 2000                    # per-call overhead: one-event slices
        c1 = time.perf_counter()
        for _ in range(calls):
            hw.run(0, 1, b.root, k, a, n, 0, 1)
        per_call = (time.perf_counter() - c1) / calls * 1e6
        c = hw.counters(0)
        walks = sum(v for key, v in c.items() if key.startswith("emu.walks."))
        pt_mib = pm.pgtables.tables.nbytes / 2**20
        print(f"{name:16s} {len(k) / cpu / 1e6:5.1f} M events/s (CPU time; wall "
              f"{len(k) / dt / 1e6:5.1f})   walks/event "
              f"{walks / (2 * len(k)):.2f}   hw arrays {hw.memory_bytes() / 2**10:.0f} KiB   "
              f"page tables {pt_mib:.1f} MiB   max RSS {rss_mib():.0f} MiB "
              f"(+{rss_mib() - rss0:.0f} MiB for the model)   run() call {per_call:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
