"""khugepaged on real guests (QEMU, both architectures): the `sparse` workload populates
2 MiB regions sparsely with THP off, then THP sizes are switched on (as an admin
writing sysfs at run time) and the guest calls MADV_HUGEPAGE (-L), which registers it
with khugepaged, while it keeps reading them; khugepaged collapses them and the TLB
counters of the reading phase drop."""

import os
import shutil

import pytest

pytestmark = pytest.mark.integration

# 64 PMDs x 64 pages = 4096 pages: more than the generic profiles' TLB reach at 4 KiB.
NR_PMDS = 64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _guest(arch: str) -> str:
    path = os.path.join(ROOT, "build", "guest", arch, "sparse")
    if not os.path.exists(path):
        pytest.skip(f"{path} not built (make build)")
    if not shutil.which(f"qemu-{'aarch64' if arch == 'arm64' else 'x86_64'}"):
        pytest.skip("qemu-user not installed")
    if not os.path.exists(os.path.join(ROOT, "build", "libemu.so")):
        pytest.skip("plugin build/libemu.so not built")
    return path


class _Marks(list):
    """machine.markers that calls on_mark(id) as each marker arrives."""

    def __init__(self, on_mark):
        super().__init__()
        self.on_mark = on_mark

    def append(self, m):
        super().append(m)
        self.on_mark(m["id"])


def _run(arch: str, switch: dict | None, algo: str = "v19"):
    from emu.cli import model_args
    from emu.guest.elf import inspect_elf
    from emu.guest.qemu import GuestRun
    from emu.session import build_machine
    from emu.trace.reader import iter_batches

    binary = _guest(arch)
    args = model_args(ns_per_insn=20.0, thp="never", khugepaged="fast", collapse_algo=algo)
    elf = inspect_elf(binary)
    machine = build_machine(elf.arch, elf, args)
    k, hw = machine.kernel, machine.hw
    snaps = {}

    def on_mark(i):
        snaps[i] = dict(hw.totals())
        if i == 2 and switch is not None:        # an admin writes sysfs
            k.thp_sysfs_store(enabled=switch.get("enabled"), hugepages=switch.get("hugepages"))

    machine.markers = _Marks(on_mark)
    kh = machine.khugepaged

    made = []

    def collapsed(e):
        made.append(e.args["status"] == "succeeded")
        if "done" not in snaps and sum(made) >= NR_PMDS:
            snaps["done"] = dict(hw.totals())

    k.bus.subscribe("mm_collapse_huge_page", collapsed)
    # -L: MADV_HUGEPAGE right after mark 2, which registers the mm with khugepaged
    # (khugepaged_enter_vma()); the sysfs store alone registers nothing.
    with GuestRun(binary, ["-r", str(NR_PMDS), "-i", "60", "-L"], arch=elf.arch) as guest:
        for batch in iter_batches(guest.stream):
            machine.feed(batch)
        machine.finish()
        assert guest.wait() == 0
    # Miss rate of the reading phase: from mark 2 (base run) or from the moment
    # khugepaged had collapsed every region (THP run) to mark 3.
    start = snaps.get("done", snaps[2])
    loads = snaps[3]["dTLB-loads"] - start["dTLB-loads"]
    misses = snaps[3]["dTLB-load-misses"] - start["dTLB-load-misses"]
    assert loads > 0
    return machine.collapse_log.section(kh), misses / loads


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_sparse_regions_collapse_to_pmd(arch):
    base_report, base_rate = _run(arch, None)
    report, rate = _run(arch, {"enabled": "always"})
    assert base_report["collapses_by_size_kb"] == {}
    assert report["collapses_by_size_kb"] == {2048: NR_PMDS}
    assert report["khugepaged"]["pages_collapsed"] == NR_PMDS
    # Fewer TLB misses per load once the regions are PMD-mapped.
    assert rate < base_rate / 10, (rate, base_rate)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_sparse_regions_collapse_to_64k_when_only_64k_is_enabled(arch):
    report, _ = _run(arch, {"hugepages": {64: "always"}})
    # 64 populated pages per PMD: four 64 KiB blocks each, max_ptes_none 511.
    assert report["collapses_by_size_kb"] == {64: 4 * NR_PMDS}
    assert 2048 not in report["collapses_by_size_kb"]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_guest_stalls_on_pmds_a_collapse_holds(arch):
    """A thread reading a PMD while khugepaged has it cleared waits until the collapse
    installs the new mapping: the stall is counted and charged to its clock."""
    from emu.cli import model_args
    from emu.guest.elf import inspect_elf
    from emu.guest.qemu import GuestRun
    from emu.report.result import build_result
    from emu.session import build_machine
    from emu.trace.reader import iter_batches

    binary = _guest(arch)
    elf = inspect_elf(binary)
    machine = build_machine(elf.arch, elf, model_args(ns_per_insn=20.0, thp="never",
                                                       khugepaged="fast"))
    k = machine.kernel
    windows = []
    k.bus.subscribe("mm_collapse_huge_page",
                    lambda e: windows.append(e.args["attempt"].pmd_cleared_ns)
                    if e.args["attempt"].pmd_cleared_ns else None)

    def on_mark(i):
        if i == 2:
            k.thp_sysfs_store(enabled="always")

    machine.markers = _Marks(on_mark)
    with GuestRun(binary, ["-r", str(NR_PMDS), "-i", "60", "-L"], arch=elf.arch) as guest:
        for batch in iter_batches(guest.stream):
            machine.feed(batch)
        machine.finish()
        assert guest.wait() == 0
    result = build_result(machine, binary, [binary], 0)
    stalls = result["khugepaged"]["guest_stalls"]
    assert len(windows) == NR_PMDS
    # One thread, at most one wait per window, never longer than the window.
    assert 0 < stalls["count"] <= len(windows)
    assert 0 < stalls["total_ns"] <= sum(t1 - t0 for t0, t1 in windows)
    print(arch, stalls, "windows", len(windows))
    assert result["vcpus"][0]["stall_ns"] == stalls["total_ns"]
