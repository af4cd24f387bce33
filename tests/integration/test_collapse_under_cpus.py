"""The collapse as running CPUs see it, on real guests under real QEMU.

Each guest is recorded once per architecture and replayed under khugepaged with
the integrity oracle, so every strategy meets the same stream: `rwthreads` with
four threads reading and writing one region, and with one.  THP is off while the
region is populated; a size is switched on at mark 1, and the guest's
MADV_HUGEPAGE right after registers it, so khugepaged collapses under the running
threads.
"""

import json
import subprocess

import pytest
from bundled import EMU, REPO, guest

pytestmark = pytest.mark.integration
ARCHES = ["x86_64", "arm64"]
GUESTS = {"threads": ["-t", "4", "-m", "8", "-i", "300000"],
          "single": ["-t", "1", "-m", "8", "-i", "600000"]}
SIZES = {"64K": "1:mthp=64K=always", "PMD": "1:thp=always"}


def emu(*args: str) -> None:
    p = subprocess.run([*EMU, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    out = tmp_path_factory.mktemp("collapse_under_cpus")
    made = {}
    for arch in ARCHES:
        for name, args in GUESTS.items():
            path = out / f"{name}-{arch}.emutrace"
            # --utlb 0: a micro-TLB in the plugin would not see the collapses' flushes
            emu("run", "-q", "--no-hw", "--utlb", "0", "--record", str(path), "--",
                guest(arch, "rwthreads"),
                *args)
            made[name, arch] = path
    return made


def replay(recordings, tmp_path, name, arch, strategy, size):
    """One replay with the oracle, and the invariant checker where the strategy is safe
    (it stops unsafe-noflush at its first stale TLB entry)."""
    out = tmp_path / f"{name}-{arch}-{strategy}-{size}.json"
    check = [] if strategy == "unsafe-noflush" else ["--check"]
    emu("replay", "-q", "--oracle", *check, "--json", str(out), "--khugepaged", "fast",
        "--collapse-strategy", strategy, "--thp", "never", "--at-mark", SIZES[size],
        str(recordings[name, arch]))
    r = json.loads(out.read_text())
    if check:
        assert r["check"]["step_checks"] > 0 and r["check"]["full_checks"] > 0, r["check"]
    return r


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("size", ["64K", "PMD"])
@pytest.mark.parametrize("name", ["threads", "single"])
def test_only_the_unsafe_strategy_loses_writes(recordings, tmp_path, name, arch, size):
    """Without the flush, stale TLB entries lose writes (and read freed frames); the
    oracle finds them, naming the collapse.  With pmd or pte nothing is lost."""
    found = {}
    for strategy in ("pmd", "pte", "unsafe-noflush"):
        r = replay(recordings, tmp_path, name, arch, strategy, size)
        kb = "64" if size == "64K" else "2048"
        assert r["khugepaged"]["collapses_by_size_kb"].get(kb), (strategy, r["khugepaged"])
        if strategy != "unsafe-noflush":   # (stale walk caches there reach zeroed tables)
            assert r["tlb"]["unresolved_faults"] == 0
        found[strategy] = dict(r["integrity"], unresolved=r["tlb"]["unresolved_faults"])
    assert found["pmd"]["lost_writes"] == 0 and found["pte"]["lost_writes"] == 0
    unsafe = found["unsafe-noflush"]
    # How much breaks depends on the timing.  Stale 4K entries lose writes and read
    # freed frames (the oracle names the collapse); after a PMD collapse, stale
    # paging-structure entries also lead walks into the deposited table, whose
    # entries the copy zeroed, so those accesses never translate again.
    assert unsafe["lost_writes"] + unsafe["unresolved"] > 0, unsafe
    if unsafe["first"]:
        assert unsafe["first"][0]["collapse"]["strategy"] == "unsafe-noflush"
    if size == "64K":
        assert unsafe["lost_writes"] > 0, unsafe
    # every read of a written page was checked, the same ones under each strategy
    assert found["pmd"]["checked_reads"] == found["pte"]["checked_reads"]


@pytest.mark.parametrize("arch", ARCHES)
def test_pte_flushes_and_stalls_less_than_pmd_for_64k(recordings, tmp_path, arch):
    """The thread's question: for 64K collapses the PTE-range clear+flush removes fewer
    TLB entries and stops fewer accesses than the PMD clear+flush; both end mapped
    alike (the same number of 64K folios)."""
    pmd = replay(recordings, tmp_path, "threads", arch, "pmd", "64K")
    pte = replay(recordings, tmp_path, "threads", arch, "pte", "64K")
    assert pte["tlb"]["total"]["emu.tlb_entries_flushed"] < \
        pmd["tlb"]["total"]["emu.tlb_entries_flushed"]
    assert pte["khugepaged"]["guest_stalls"]["faults"] < \
        pmd["khugepaged"]["guest_stalls"]["faults"]
    assert pte["khugepaged"]["collapses_by_size_kb"] == pmd["khugepaged"]["collapses_by_size_kb"]


@pytest.mark.parametrize("arch", ARCHES)
def test_gup_fast_falls_back_on_the_cleared_pmd_more_than_on_cleared_ptes(recordings,
                                                                          tmp_path, arch):
    """The other walker of the thread: a synthetic GUP-fast user pins the program's
    memory during the collapses.  Under ``pmd`` it meets the cleared PMD and falls back
    to the slow path more often than under ``pte``; no pin is left behind, no write lost,
    and no page the program never touched is faulted in."""
    got = {}
    for strategy in ("pmd", "pte"):
        out = tmp_path / f"gup-{arch}-{strategy}.json"
        emu("replay", "-q", "--oracle", "--json", str(out), "--khugepaged", "fast",
            "--collapse-strategy", strategy, "--thp", "never", "--at-mark", SIZES["64K"],
            "--gup-fast-rate", "1000000", str(recordings["threads", arch]))
        r = json.loads(out.read_text())
        g = r["gup"]
        assert g["gup_fast_attempts"] > 100, g
        assert g["gup_unpinned"] == g["gup_fast_pages"] + g["gup_slow_pages"], g
        assert g["gup_slow_faults"] == 0, g
        assert r["integrity"]["lost_writes"] == 0
        got[strategy] = g
    assert got["pmd"]["gup_fast_fallbacks_collapse"] > got["pte"]["gup_fast_fallbacks_collapse"]


@pytest.mark.parametrize("arch", ARCHES)
def test_checker_stops_the_unsafe_strategy_with_one_line(recordings, tmp_path, arch):
    """--check with unsafe-noflush: the first stale TLB entry to a freed frame stops the
    run with one line naming the CPU, the frame and the collapse step, exit 2."""
    p = subprocess.run([*EMU, "replay", "-q", "--check", "--khugepaged", "fast",
                        "--collapse-strategy", "unsafe-noflush", "--thp", "never",
                        "--at-mark", SIZES["64K"], str(recordings["threads", arch])],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert lines[0].startswith("emu: --check: CPU ") and "unsafe-noflush" in lines[0]
