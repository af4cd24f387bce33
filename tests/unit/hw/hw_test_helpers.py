"""Small machines for hardware-room tests: tables built with the arch API + BumpAllocator.

A plain module (not conftest) so its name cannot collide with other rooms' conftest files.
"""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from emu.arch import get_arch
from emu.arch.profile import PscSpec, TlbSpec, load_profile
from emu.hw import Hardware
from emu.hw.builder import PageTableBuilder
from emu.mem import BumpAllocator, PhysMem

READ, WRITE, FETCH = 0, 1, 2
BASE = 0x4000_0000      # 1 GiB: aligned for every leaf size


def make(arch_name: str, profile=None, nr_cpus: int = 1, frames: int = 1 << 16):
    a = get_arch(arch_name)
    pm = PhysMem(frames)
    al = BumpAllocator(frames)
    b = PageTableBuilder(a, pm, al)
    if profile is None or isinstance(profile, str):
        profile = load_profile(profile or f"generic-{arch_name}")
    hw = Hardware(a, profile, pm, nr_cpus)
    return SimpleNamespace(arch=a, pm=pm, alloc=al, b=b, hw=hw, root=b.root)


def tiny_profile(arch_name: str, l1_ways: int = 4, l1_sets: int = 1, sizes=None, l2=None,
                 pscs=()):
    """A profile with one L1 (for data and instructions) and optionally one L2."""
    base = load_profile(f"generic-{arch_name}")
    sizes = sizes or ((0, 2, 3, 5) if arch_name == "arm64" else (0, 3, 5))
    tlbs = [TlbSpec("L1", "unified", 1, tuple(sizes), l1_ways * l1_sets, l1_ways)]
    if l2:
        tlbs.append(TlbSpec("L2", "unified", 2, tuple(sizes), l2[0] * l2[1], l2[1]))
    return replace(base, tlbs=tuple(tlbs), pscs=tuple(PscSpec(*p) for p in pscs))


def events(vas, kind=READ, count=1):
    vas = list(vas)
    kinds = np.full(len(vas), kind, dtype=np.uint8) if np.isscalar(kind) else \
        np.array(kind, dtype=np.uint8)
    return (kinds, np.array([v & ~0xFFF for v in vas], dtype=np.uint64),
            np.full(len(vas), count, dtype=np.uint64))
