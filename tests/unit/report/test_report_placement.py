"""QEMU's mmap placement, stated in the mapping section: what it costs in PMD ranges."""

from __future__ import annotations

from pathlib import Path

from recordings import replay, truth

from emu.report.result import qemu_placement
from emu.report.text import render

M = 1 << 20


def _vma(start: int, length: int, kind: str = "anon") -> dict:
    return {"kind": kind, "start": start, "end": start + length}


def test_only_unaligned_pmd_multiple_anonymous_mappings_count():
    vmas = [_vma(0x4000803000, 32 * M),           # QEMU's: 15 whole PMDs, natively 16
            _vma(0x4000000000, 32 * M),           # aligned: nothing lost
            _vma(0x4000803000, 32 * M + 4096),    # not a PMD multiple: Linux does not align
            _vma(0x4000803000, 2 * M, "heap"),     # not an anonymous mmap
            {"kind": "unmapped", "start": None, "end": None}]
    assert qemu_placement(vmas) == {"unaligned_pmd_multiple_mappings": 1,
                                    "pmd_ranges_lost": 1, "pmd_ranges_present": 15}


def test_summary_states_it_for_a_bundled_guest(tmp_path: Path) -> None:
    """touch maps its region 2 MiB larger and aligns it itself: QEMU's placement costs the
    slack's PMD, not the region's (the region stays PMD-mapped)."""
    res = replay(tmp_path, "touch-x86_64")
    region = truth("touch-x86_64")["region"]
    assert region["map_start"] % (2 * M) and region["start"] % (2 * M) == 0
    place = res["placement"]
    assert place["pmd_ranges_lost"] >= 1
    assert ("   note: QEMU places mmap itself, page-aligned: " in render(res)
            and "as Linux 6.8+ would align them (docs/status.md)" in render(res))
