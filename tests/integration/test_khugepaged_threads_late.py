"""khugepaged on a multi-threaded guest that turns THP on late (issue 11 item 2), on
real QEMU, both architectures: `latethp` has four threads populate 8 MiB at 4 KiB with
THP off; the main thread then reaches emu_mark(2) (where --at-mark writes the THP
sysfs settings: enabled_store()/thpsize_enabled_store() -> start_stop_khugepaged())
and calls MADV_HUGEPAGE on the region (hugepage_madvise() -> khugepaged_enter_vma(),
which registers the mm: the VMA has an anon_vma since the threads wrote it); the
threads keep writing.  Under --khugepaged fast every PMD range collapses.

Before: no khugepaged pass ran (the main thread's chunk with the marker and the
madvise reached emu after the workers' later accesses, and registration was a sweep
stand-in)."""

import json
import subprocess
from pathlib import Path

import pytest
from bundled import EMU, REPO, guest

from emu.guest.truth import parse_truth

pytestmark = pytest.mark.integration

NR_PMDS = 4                     # 8 MiB, 2 MiB aligned


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("setting,sizes_kb", [
    ("2:thp=always", {"2048": NR_PMDS}),                 # PMD order only
    ("2:mthp=64K=always", {"64": NR_PMDS * 32}),          # 64K only: 32 per PMD range
])
def test_late_thp_in_a_threaded_guest_collapses(tmp_path: Path, arch, setting, sizes_kb):
    out = tmp_path / "r.json"
    p = subprocess.run([*EMU, "run", "-q", "--thp", "never", "--khugepaged", "fast",
                        "--at-mark", setting, "--json", str(out), "--",
                        guest(arch, "latethp"), "-r", "2000"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr
    truth = parse_truth(p.stdout)
    assert truth["madvise_ret"] == 0 and truth["pages_touched"] == NR_PMDS * 512
    r = json.loads(out.read_text())
    kh = r["khugepaged"]
    assert kh["khugepaged"]["passes"] >= 1
    # mm/khugepaged.c collapse_scan_mm_slot(): one SCAN_SUCCEED per PMD range (later
    # passes, while the threads go on, find them done: PMD_MAPPED, or for 64K the
    # v19 re-attempts' results)
    assert kh["khugepaged"]["results"]["SCAN_SUCCEED"] == NR_PMDS
    assert kh["khugepaged"]["pages_collapsed"] == NR_PMDS
    assert {str(k): v for k, v in kh["collapses_by_size_kb"].items()} == sizes_kb
