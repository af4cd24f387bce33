"""Simulated time in the summary and JSON, and why an asked-for khugepaged never ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from recordings import replay

from emu.report.text import render


def test_time_per_vcpu_and_process_add_up(tmp_path: Path) -> None:
    """A vCPU's time is its instructions at ns_per_insn plus its stalls; a process spans
    its threads (they run at once), and the run's clock reaches the latest of them."""
    res = replay(tmp_path, "threads-arm64", "--ns-per-insn", "2")
    assert res["time"]["ns_per_insn"] == 2
    for v in res["vcpus"]:
        assert v["sim_ns"] == v["instructions"] * 2 + v["stall_ns"]
    (proc,) = res["processes"]
    assert proc["sim_ns"] >= max(v["sim_ns"] for v in res["vcpus"])
    assert res["time"]["elapsed_ns"] >= proc["sim_ns"] > 0
    text = render(res)
    assert "simulated time (2 ns per instruction)" in text
    assert "   per vCPU [pid:vcpu]: [" in text and "   per process: pid " in text


def test_khugepaged_passes_and_next_wake_are_shown(tmp_path: Path) -> None:
    # THP on from the start: the first PMD-order fault registers the mm
    res = replay(tmp_path, "sparse-x86_64", "--khugepaged", "fast", "--ns-per-insn", "1000")
    kh = res["khugepaged"]
    assert kh["khugepaged"]["passes"] > 0 and kh["idle_reason"] is None
    assert kh["khugepaged"]["next_wake_ns"] is None or kh["khugepaged"]["next_wake_ns"] > 0
    line = next(ln for ln in render(res).splitlines() if ln.startswith(" khugepaged (v19)"))
    assert f"{kh['khugepaged']['passes']} passes" in line
    assert "next wake at" in line or line.endswith("; asleep")


@pytest.mark.parametrize(("opts", "reason"), [
    (("--thp", "never"), "THP disabled: enabled=never"),
    (("--thp", "never", "--at-mark", "2:thp=always"),     # the sysfs write registers nothing
     "nothing registered: khugepaged_enter_vma() never added an mm"),
])
def test_khugepaged_that_never_ran_says_why(tmp_path: Path, opts, reason) -> None:
    # touch makes no MADV_HUGEPAGE: with THP off while it faults, nothing registers it
    res = replay(tmp_path, "touch-x86_64", "--khugepaged", "fast", *opts)
    assert res["khugepaged"]["khugepaged"]["passes"] == 0
    assert res["khugepaged"]["idle_reason"].startswith(reason)
    assert f"   khugepaged never ran: {reason}" in render(res)


def test_off_gives_no_reason(tmp_path: Path) -> None:
    res = replay(tmp_path, "sparse-x86_64")
    assert "idle_reason" not in res["khugepaged"]
    assert "never ran" not in render(res)

