"""Read the ground truth a guest workload prints about itself (guest/truth.h).

Each workload in guest/ prints one line ``EMU-TRUTH {json}`` on stdout:
the addresses of its region, the pages it touched and the exact reads and
writes it made there (schema: docs/guests.md).  Tests compare emu's counts
for that region against it.  ``page_checksum`` is the same digest the guests
compute, so per-page counts can be compared without printing them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

PREFIX = "EMU-TRUTH "
_MASK64 = (1 << 64) - 1


def parse_truth(output: str) -> dict:
    """The one truth record in a guest's stdout; ValueError if there is none or several."""
    lines = [line[len(PREFIX):] for line in output.splitlines() if line.startswith(PREFIX)]
    if len(lines) != 1:
        raise ValueError(f"expected one {PREFIX.strip()} line, found {len(lines)}")
    try:
        return json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise ValueError(f"bad {PREFIX.strip()} line: {e}") from None


def range_pages(ranges: Iterable[Iterable[int]]) -> list[int]:
    """Page indices of [[first, end), ...] ranges, in order."""
    out: list[int] = []
    for first, end in ranges:
        out.extend(range(first, end))
    return out


def pages_to_ranges(pages: Iterable[int]) -> list[list[int]]:
    """The inverse of range_pages: sorted distinct pages as [[first, end), ...]."""
    out: list[list[int]] = []
    for p in sorted(set(pages)):
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return out


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def page_checksum(counts: Mapping[int, tuple[int, int]]) -> int:
    """Sum over pages of splitmix64(splitmix64(splitmix64(page) + reads) + writes), mod 2**64.

    ``counts`` maps a page index (relative to the region start) to its
    (reads, writes); pages with neither are ignored, as the guests do.
    """
    total = 0
    for page, (reads, writes) in counts.items():
        if reads or writes:
            term = splitmix64((splitmix64((splitmix64(page) + reads) & _MASK64) + writes)
                              & _MASK64)
            total = (total + term) & _MASK64
    return total
