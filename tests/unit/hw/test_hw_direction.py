"""Direction checks on a synthetic `random`-like stream over 64 MiB (tables built directly).

Bigger mappings must cut page walks (4 KiB vs 2 MiB, >= 10x on both architectures)
and, on arm64, contiguous 64 KiB mappings must cut L2 TLB misses (>= 4x vs 4 KiB).
The lead repeats these on real guest traces once the machine is wired.
"""

import numpy as np
import pytest
from hw_test_helpers import BASE, make

from emu.arch import PROT_READ, PROT_WRITE
from emu.arch.profile import list_profiles

RW = PROT_READ | PROT_WRITE
SPAN = 64 << 20
N = 120_000
WARM = 40_000


def stream(seed=7):
    rng = np.random.default_rng(seed)
    pages = rng.integers(0, SPAN >> 12, N)
    addrs = (BASE + (pages << 12)).astype(np.uint64)
    kinds = (rng.random(N) < 0.3).astype(np.uint8)        # 30 % writes
    counts = rng.integers(1, 4, N).astype(np.uint64)
    return kinds, addrs, counts


def measure(arch_name, profile, size):
    m = make(arch_name, profile, frames=1 << 16)
    data = m.alloc.alloc(14)                              # a 64 MiB-aligned run of frames
    m.b.map_range(BASE, data, SPAN, RW, size)
    k, a, n = stream()
    assert m.hw.run(0, 1, m.root, k, a, n, 0, WARM) == WARM
    before = m.hw.counters(0)
    assert m.hw.run(0, 1, m.root, k, a, n, WARM, N) == N
    after = m.hw.counters(0)
    return {key: after[key] - before.get(key, 0) for key in after}


def walks(c, arch_name):
    if arch_name == "x86_64":
        return c["dtlb_load_misses.walk_completed"] + c["dtlb_store_misses.walk_completed"]
    return c["DTLB_WALK"]


@pytest.mark.parametrize("arch_name,profile",
                         [(a, p) for a in ("x86_64", "arm64") for p in list_profiles(a)])
def test_2m_cuts_walks_10x(arch_name, profile):
    w4 = walks(measure(arch_name, profile, "4k"), arch_name)
    w2 = walks(measure(arch_name, profile, "2m"), arch_name)
    print(f"{profile}: walks 4k={w4} 2m={w2}")
    assert w4 > 0.2 * (N - WARM)      # 4 KiB: mostly misses (Zen 4 coalesces 4 pages)
    assert w4 >= 10 * max(w2, 1)


@pytest.mark.parametrize("profile", list_profiles("arm64"))
def test_contpte_cuts_l2_misses_4x(profile):
    m4 = measure("arm64", profile, "4k")["L2D_TLB_REFILL"]
    m64 = measure("arm64", profile, "64k")["L2D_TLB_REFILL"]
    print(f"{profile}: L2D_TLB_REFILL 4k={m4} 64k={m64}")
    assert m4 >= 4 * max(m64, 1)
