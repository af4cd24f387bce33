"""Kernel-differential with the `collapse` guest: MADV_COLLAPSE run natively on this host
and under emu (x86-64) for the same patterns must give the same return value and the
same number of PMD-mapped THPs.  The host kernel collapses to PMD only."""

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = os.path.join(ROOT, "build", "guest", "x86_64", "collapse")
THP = "/sys/kernel/mm/transparent_hugepage"

PATTERNS = {
    "full": ["-n", "512"],
    "one_page": ["-n", "1"],
    "nothing": ["-n", "0"],
    "zero_pages": ["-k", "r", "-n", "512"],
    "every_64k": ["-p", "0-511:16"],
    "two_pmds_partial": ["-r", "2", "-n", "100"],
    "madv_hugepage_first": ["-H", "-n", "3"],
}


def _sysfs(path: str) -> str:
    return open(path).read().split("[")[1].split("]")[0]


def _skip_reason() -> str | None:
    if platform.machine() != "x86_64":
        return "native runs need an x86-64 host"
    if not os.path.exists(GUEST):
        return f"{GUEST} not built (make build)"
    if not shutil.which("qemu-x86_64"):
        return "qemu-user not installed"
    if not os.path.exists(f"{THP}/enabled") or _sysfs(f"{THP}/enabled") == "never":
        return "host THP unavailable or disabled"
    return None


def _truth(out: str) -> dict:
    line = next(x for x in out.splitlines() if x.startswith("EMU-TRUTH "))
    return json.loads(line[len("EMU-TRUTH "):])


def _host_flags() -> list[str]:
    sizes = []
    for kb in (16, 32, 64, 128, 256, 512, 1024, 2048):
        p = f"{THP}/hugepages-{kb}kB/enabled"
        if os.path.exists(p):
            sizes.append(f"{kb}K={_sysfs(p)}")
    return ["--thp", _sysfs(f"{THP}/enabled"), "--mthp", ",".join(sizes)]


@pytest.mark.parametrize("name", list(PATTERNS))
def test_collapse_guest_matches_host(name, tmp_path):
    why = _skip_reason()
    if why:
        pytest.skip(why)
    args = PATTERNS[name]
    native = _truth(subprocess.run([GUEST, *args], capture_output=True, text=True,
                                   check=True).stdout)
    if native["ret"] and native["errno_name"] == "EINVAL" and name == "full":
        pytest.skip("host kernel has no MADV_COLLAPSE")
    out = tmp_path / "emu.json"
    # --khugepaged binds MADV_COLLAPSE in the session; with these patterns (no
    # MADV_HUGEPAGE under thp=madvise) khugepaged itself has nothing eligible.
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "emu"), "run", "-q",
                    "--json", str(out), "--khugepaged", "default", *_host_flags(), "--", GUEST,
                    *args],
                   capture_output=True, text=True, check=True)
    rec = json.loads(out.read_text())["khugepaged"]["madvise_collapse"]
    assert len(rec) == 1
    emu_ret = rec[0]["ret"]
    emu_thps = sum(p["result"] in ("SCAN_SUCCEED", "SCAN_PMD_MAPPED") for p in rec[0]["pmds"])
    native_ret = -native["errno"] if native["ret"] else 0
    assert emu_ret == native_ret, (name, rec[0], native)
    # A failed call may still have collapsed some PMDs; compare the THPs made.
    kernel_kb = native.get("kernel", {}).get("anon_huge_kb")
    if kernel_kb is not None:
        assert emu_thps * 2048 == kernel_kb, (name, rec[0], native)
