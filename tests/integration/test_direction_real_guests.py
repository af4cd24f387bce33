"""Direction checks on real guests: bigger mappings must cut walks and TLB refills."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

# 64 MiB, every page populated first, then random reads and writes.
RANDOM = ["-m", "64", "-i", "300000", "-P", "-q"]


def tlb(tmp_path: Path, arch: str, *opts: str) -> dict[str, int]:
    binary = REPO / "build" / "guest" / arch / "random"
    if not binary.exists() or not (REPO / "build" / "libemu.so").exists():
        pytest.skip("guests or plugin not built (bash setup.sh)")
    out = tmp_path / f"{arch}{'-'.join(opts)}.json".replace("=", "_").replace(",", "_")
    p = subprocess.run([sys.executable, "-m", "emu.cli", "run", "-q", "--json", str(out), *opts,
                        "--", str(binary), *RANDOM], capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(out.read_text())["tlb"]["total"]


def walks(t: dict[str, int]) -> int:
    return sum(v for k, v in t.items() if k.startswith("emu.walks."))


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_2m_mappings_cut_walks_tenfold(tmp_path, arch):
    small = tlb(tmp_path, arch, "--thp", "never")
    huge = tlb(tmp_path, arch, "--thp", "always", "--mthp", "2M=always")
    print(arch, "walks 4K:", walks(small), "2M:", walks(huge))
    assert walks(small) >= 10 * max(walks(huge), 1)
    assert walks(small) > 100_000


def test_arm64_contiguous_64k_cuts_l2_refills_fourfold(tmp_path):
    small = tlb(tmp_path, "arm64", "--thp", "never")
    cont = tlb(tmp_path, "arm64", "--thp", "never", "--mthp", "64K=always,2M=never")
    print("L2D_TLB_REFILL 4K:", small["L2D_TLB_REFILL"], "64K:", cont["L2D_TLB_REFILL"])
    assert small["L2D_TLB_REFILL"] >= 4 * max(cont["L2D_TLB_REFILL"], 1)
    assert small["L2D_TLB_REFILL"] > 100_000
