"""Read out what a vCPU's TLBs hold, for `--inspect-at` and the exit report.

The hot path never calls this: it decodes the ``tag``/``data`` arrays that the
numba kernels keep (layout in emu.hw.kernels) with a few numpy operations, at
a marker or at exit only.  An entry is reported as the hardware holds it: its
page size, the VA range it translates, its ASID (x86: PCID), the first 4 KiB
frame and whether several descriptors formed it (arm64 contpte, AMD
coalescing: ``F_COAL``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emu.arch import SIZE_NAMES
from emu.hw import kernels as K

_VPN_MASK = (1 << 43) - 1


def _flags(data: int) -> str:
    """perm letters of an entry: w(ritable) x(ecutable) d(irty) c(oalesced/contiguous)."""
    return "".join(ch if data & bit else "-" for ch, bit in
                   (("w", K.F_W), ("x", K.F_X), ("d", K.F_DIRTY), ("c", K.F_COAL)))


def structure_entries(hw: Any, cpu: int, s: int) -> list[tuple[int, str, int, int, str]]:
    """Valid entries of TLB array ``s`` on ``cpu``: (va, size, asid, pfn, flags), by va."""
    n = int(hw.st_sets[s] * hw.st_ways[s])
    b = int(hw.st_base[s])
    tag = hw.tag[cpu, b:b + n]
    data = hw.data[cpu, b:b + n]
    live = np.nonzero(tag & K.VALID_TAG)[0]
    out = []
    for e in live:
        t, d = int(tag[e]), int(data[e])
        size = (t >> K.TAG_SIZE_SHIFT) & 7
        va = ((t >> K.TAG_VPN_SHIFT) & _VPN_MASK) << int(K.SIZE_SHIFTS[size])
        out.append((va, SIZE_NAMES[size], t & K.ASID_MASK, d >> 12, _flags(d)))
    out.sort(key=lambda x: (x[2], x[0]))
    return out


def _size_bytes(name: str) -> int:
    return 1 << int(K.SIZE_SHIFTS[SIZE_NAMES.index(name)])


def reach(entries: list[tuple[int, str, int, int, str]]) -> dict[str, dict[str, int]]:
    """Per page size: entries, of them coalesced/contiguous, and the bytes they map."""
    out: dict[str, dict[str, int]] = {}
    for _, size, _, _, flags in entries:
        r = out.setdefault(size, {"entries": 0, "coalesced": 0, "bytes": 0})
        r["entries"] += 1
        r["coalesced"] += flags.endswith("c")
        r["bytes"] += _size_bytes(size)
    return {k: out[k] for k in SIZE_NAMES if k in out}


def cpu_tlbs(hw: Any, cpu: int) -> list[dict[str, Any]]:
    """Every TLB array of one CPU: its shape, reach and entries (docs/usage.md, JSON)."""
    out = []
    for s, spec in enumerate(hw.profile.tlbs):
        entries = structure_entries(hw, cpu, s)
        r = reach(entries)
        out.append({"name": spec.name, "level": spec.level, "side": spec.side,
                    "capacity": int(hw.st_sets[s] * hw.st_ways[s]), "ways": spec.ways,
                    "valid": len(entries), "reach_bytes": sum(v["bytes"] for v in r.values()),
                    "reach": r, "entries": [list(e) for e in entries]})
    return out

