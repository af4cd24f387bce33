"""What QEMU changes about the address space, on real QEMU: its mmap placement is
page-aligned, so a 2 MiB-multiple anonymous mapping loses one PMD range (the bundled
guests align their regions themselves and lose only the slack); and settings given
from the start (--sysfs) reach the kernel model before the guest runs."""

from __future__ import annotations

import json
import subprocess

import pytest
from bundled import EMU, REPO, guest

pytestmark = pytest.mark.integration
PMD = 2 << 20


def _run(*args: str) -> tuple[dict, dict, str]:
    p = subprocess.run([*EMU, "run", "--json", "-", *args], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    truth, _, doc = p.stdout.partition("\n{")
    return json.loads(truth.split(" ", 1)[1]), json.loads("{" + doc), p.stderr


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_qemu_places_the_region_mapping_off_a_pmd_boundary(arch):
    truth, res, err = _run("--", guest(arch, "touch"), "-m", "8", "-p", "full")
    region = truth["region"]
    assert region["map_start"] % PMD != 0              # QEMU's page-aligned choice
    assert region["start"] % PMD == 0                  # the guest aligned its region itself
    (vma,) = [v for v in res["vmas"] if v["start"] == region["map_start"]]
    assert vma["mapped"] == {"2M-pmd": 8 * 256}        # so the region is all PMD-mapped
    assert res["placement"] == {"unaligned_pmd_multiple_mappings": 1, "pmd_ranges_lost": 1,
                                "pmd_ranges_present": 4}
    assert "so 4 whole PMD ranges instead of 5 as Linux 6.8+ would align them" in err


def test_sysfs_settings_apply_from_the_start():
    _, res, err = _run("--sysfs", "enabled=never", "--sysfs", "hugepages-64kB/enabled=always",
                       "--sysfs", "khugepaged/max_ptes_none=0", "--khugepaged", "fast", "--",
                       guest("arm64", "touch"), "-m", "2", "-p", "full")
    cfg = res["kernel"]["config"]
    assert (cfg["enabled"], cfg["hugepages-64kB/enabled"]) == ("never", "always")
    assert res["khugepaged"]["khugepaged"]["knobs"]["max_ptes_none"] == 0
    assert res["kernel"]["mthp_stats"]["64"]["anon_fault_alloc"] >= 32
    assert "simulated time" in err
