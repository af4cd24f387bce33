"""Kernel-differential test: the folio order behind every page of guest/touch's
region, under the model and on the host kernel running the same program natively.

The native side really runs build/guest/x86_64/touch -R on this machine with the
THP sysfs set as each case asks (every value touched is saved and restored); the
program reads its own /proc/self/pagemap + /proc/kpageflags.  The model side
replays the same page-touch sequence (derived from the program's arguments and
checked against its ground-truth line) into emu.kernel.Kernel with the same
configuration, on the region addresses the native run reported.

Skipped, with the reason, when the machine does not allow it (not root, not
x86-64, no writable THP sysfs, no /proc/kpageflags, guest not built).  A case
where the host itself fell back (its anon_fault_fallback / thp_fault_fallback
moved during the run: host memory was fragmented) is skipped, not failed: the
model has plenty of memory and would rightly differ.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from emu.kernel.config import ThpConfig
from emu.kernel.kernel import Kernel
from emu.mem.physmem import PhysMem

ROOT = Path(__file__).resolve().parents[2]
TOUCH = ROOT / "build/guest/x86_64/touch"
THP = Path("/sys/kernel/mm/transparent_hugepage")
PAGE = 4096
SIZES_KB = (16, 32, 64, 128, 256, 512, 1024, 2048)
PM_NONE, PM_ZERO, PM_UNKNOWN = -1, -2, -3

pytestmark = pytest.mark.integration


def _why_not() -> str | None:
    if platform.machine() != "x86_64":
        return "host is not x86-64"
    if os.geteuid() != 0:
        return "needs root for /proc/kpageflags and THP sysfs"
    if not TOUCH.exists():
        return f"{TOUCH} not built (make build)"
    if not (THP / "enabled").exists():
        return "no /sys/kernel/mm/transparent_hugepage"
    if not all((THP / f"hugepages-{kb}kB/enabled").exists() for kb in (16, 64, 2048)):
        return "host kernel has no per-size mTHP controls"
    if not os.access(THP / "hugepages-64kB/enabled", os.W_OK):
        return "THP sysfs is not writable"
    try:
        with open("/proc/kpageflags", "rb") as f:
            f.read(8)
    except OSError as e:
        return f"/proc/kpageflags unreadable: {e}"
    return None


def _read_choice(path: Path) -> str:
    text = path.read_text().split()
    return next((w[1:-1] for w in text if w.startswith("[")), text[0])


@pytest.fixture(scope="module")
def thp_sysfs():
    """Set THP sysfs per case; restores every value touched at the end."""
    why = _why_not()
    if why:
        print(f"SKIP kernel-differential: {why}")
        pytest.skip(why)
    files = [THP / "enabled"] + [p for kb in SIZES_KB
                                 if (p := THP / f"hugepages-{kb}kB/enabled").exists()]
    saved = {p: _read_choice(p) for p in files}

    def apply(enabled: str, sizes: dict[int, str]) -> None:
        (THP / "enabled").write_text(enabled)
        for kb in SIZES_KB:
            p = THP / f"hugepages-{kb}kB/enabled"
            if p.exists():
                p.write_text(sizes.get(kb, "never"))

    try:
        yield apply
    finally:
        for p, v in saved.items():
            try:
                p.write_text(v)
            except OSError as e:            # report, keep restoring the others
                print(f"could not restore {p} to {v}: {e}")


def _host_fallbacks() -> int:
    n = 0
    for kb in SIZES_KB:
        p = THP / f"hugepages-{kb}kB/stats/anon_fault_fallback"
        if p.exists():
            n += int(p.read_text())
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("thp_fault_fallback "):
            n += int(line.split()[1])
    return n


def _run_native(args: list[str]) -> dict:
    out = subprocess.run([str(TOUCH), *args, "-R"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("EMU-TRUTH "))
    return json.loads(line[len("EMU-TRUTH "):])


def touch_sequence(pattern: str, npages: int, stride: int = 2, nrand: int = 0,
                   seed: int = 1) -> list[int]:
    """The page indices guest/touch.c touches, in its order."""
    if pattern in ("full", "strided", "64k"):
        step = {"full": 1, "64k": 16}.get(pattern, stride)
        return list(range(0, npages, step))
    mask = (1 << 64) - 1
    nrand = nrand or max(npages // 8, 1)
    x, seen, out = seed or 1, set(), []
    while len(out) < nrand:
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        i = ((x >> 32) * npages) >> 32
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def _model_orders(truth: dict, seq: list[int], kind: str, enabled: str,
                  sizes: dict[int, str], hugepage: bool) -> np.ndarray:
    cfg = ThpConfig(enabled=enabled, hugepages=dict(sizes))
    k = Kernel("x86_64", cfg, None, PhysMem((256 << 20) // PAGE))
    k.new_mm(1)
    r = truth["region"]
    length = r["map_end"] - r["map_start"]
    k.syscall(1, 0, "mmap", (0, length, 3, 0x22, (1 << 64) - 1, 0), r["map_start"])
    if hugepage:
        k.syscall(1, 0, "madvise", (r["map_start"], length, 14), 0)
    for i in seq:
        va = r["start"] + i * PAGE
        if kind in ("r", "rw"):
            assert k.handle_mm_fault(1, 0, va, 0, None)
        if kind in ("w", "rw"):
            assert k.handle_mm_fault(1, 0, va, 1, None)
    npages = (r["end"] - r["start"]) // PAGE
    mm, arch = k.mm(1), k.arch
    out = np.full(npages, PM_NONE, dtype=np.int64)
    for i in range(npages):
        va = r["start"] + i * PAGE
        pmd = k.pt.get_pmd(mm, va)
        d = pmd if k.pt.pmd_is_leaf(pmd) else k.pt.get_pte(mm, va)
        if not d or not arch.is_present(d):
            continue
        pfn = arch.pfn(d)
        if pfn in (k.zero_pfn, k.huge_zero_pfn):
            out[i] = PM_ZERO
            continue
        out[i] = k.folio_of_pfn(pfn).order
    return out


def _native_orders(truth: dict) -> np.ndarray:
    npages = (truth["region"]["end"] - truth["region"]["start"]) // PAGE
    out = np.full(npages, PM_UNKNOWN, dtype=np.int64)
    for first, end, order in truth["kernel"]["orders"]:
        out[first:end] = order
    return out


# (touch arguments, global enabled, per-size settings)
CASES = [
    (["-m", "8", "-p", "full"], "never", {16: "always"}),
    (["-m", "8", "-p", "full"], "never", {64: "always"}),
    (["-m", "8", "-p", "64k"], "never", {16: "always", 64: "always"}),
    (["-m", "8", "-p", "strided", "-s", "3"], "never", {16: "always", 64: "always"}),
    (["-m", "8", "-p", "random", "-n", "400", "-S", "7"], "never",
     {16: "always", 64: "always", 2048: "always"}),
    (["-m", "8", "-p", "full", "-o", "5"], "never", {64: "always", 2048: "always"}),
    (["-m", "8", "-p", "random", "-n", "900", "-o", "3"], "never", {16: "always", 64: "always"}),
    (["-m", "8", "-p", "64k"], "always", {64: "inherit", 2048: "inherit"}),
    (["-m", "8", "-p", "64k", "-H"], "madvise", {64: "madvise", 2048: "never"}),
    (["-m", "8", "-p", "64k"], "madvise", {64: "madvise", 16: "inherit"}),
    (["-m", "8", "-p", "full", "-k", "rw"], "never", {64: "always", 2048: "always"}),
    (["-m", "4", "-p", "strided", "-s", "5", "-k", "r"], "never", {2048: "always"}),
    (["-m", "4", "-p", "strided", "-s", "3", "-k", "rw"], "never", {16: "always", 64: "always"}),
    (["-m", "6", "-p", "random", "-n", "500", "-S", "3", "-o", "9"], "never",
     {16: "always", 32: "always", 128: "always", 512: "always"}),
    (["-m", "8", "-p", "random", "-n", "300", "-S", "11", "-H"], "madvise",
     {2048: "inherit", 16: "madvise"}),
    (["-m", "6", "-p", "full", "-o", "7"], "always", {16: "always", 2048: "inherit"}),
    (["-m", "4", "-p", "strided", "-s", "7", "-o", "1"], "never",
     {16: "always", 64: "always", 256: "always", 1024: "always"}),
]


def _case_id(case) -> str:
    args, enabled, sizes = case
    return " ".join(args) + f" thp={enabled} " + ",".join(f"{k}K={v}" for k, v in sizes.items())


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_folio_orders_match_host_kernel(thp_sysfs, case):
    args, enabled, sizes = case
    thp_sysfs(enabled, sizes)
    before = _host_fallbacks()
    truth = _run_native(args)
    if _host_fallbacks() != before:
        pytest.skip("the host kernel fell back to smaller folios (fragmented host memory)")
    opts = dict(zip(args[::2], args[1::2], strict=False))
    npages = (truth["region"]["end"] - truth["region"]["start"]) // PAGE
    seq = touch_sequence(opts.get("-p", "full"), npages, int(opts.get("-s", 2)),
                         int(opts.get("-n", 0)), int(opts.get("-S", 1)))
    touched = np.zeros(npages, dtype=bool)
    touched[seq] = True
    truth_touched = np.zeros(npages, dtype=bool)
    for a, b in truth["touched"]:
        truth_touched[a:b] = True
    assert (touched == truth_touched).all(), "touch sequence differs from the guest's truth"
    native = _native_orders(truth)
    model = _model_orders(truth, seq, truth["kind"], enabled, sizes, "-H" in args)
    known = native != PM_UNKNOWN
    bad = np.flatnonzero(known & (native != model))
    assert not bad.size, (
        f"{bad.size} pages differ; first at page {bad[0]}: host {native[bad[0]]}, "
        f"emu {model[bad[0]]}")


# --- forker under QEMU: copied / reused pages as the program did them -------------------

def _run_under_emu(binary: Path, argv: list[str], thp: str = "never", mthp: str | None = None):
    """A whole emu run (QEMU + plugin + machine + hw + kernel) with the COW log on."""

    from emu.cli import model_args
    from emu.guest.elf import inspect_elf
    from emu.guest.qemu import GuestRun
    from emu.session import _Progress, build_machine, consume
    from emu.trace.reader import iter_batches

    elf = inspect_elf(binary)
    args = model_args(thp=thp, mthp=mthp)
    machine = build_machine(elf.arch, elf, args)
    machine.kernel.cow_log = []
    with GuestRun(str(binary), argv, arch=elf.arch, sysroot=None) as guest:
        consume(machine, iter_batches(guest.stream), _Progress(False))
        guest.wait()
    return machine


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("mthp", [None, "64K=always"])
def test_forker_cow_counts(arch, mthp, capfd):
    binary = ROOT / f"build/guest/{arch}/forker"
    if not binary.exists() or not (ROOT / "build/libemu.so").exists():
        pytest.skip(f"{binary} or the plugin not built (make build)")
    m, c, s = 64, 16, 3
    machine = _run_under_emu(binary, ["-m", str(m), "-c", str(c), "-s", str(s)],
                                mthp=mthp)
    text = capfd.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("EMU-TRUTH "))
    truth = json.loads(line[len("EMU-TRUTH "):])
    start, end = truth["region"]["start"], truth["region"]["end"]
    child, parent = truth["child"]["pid"], truth["parent"]["pid"]
    log = [(pid, (va - start) // PAGE, what) for pid, va, what in machine.kernel.cow_log
           if start <= va < end]
    child_copies = sorted(p for pid, p, w in log if pid == child and w == "copy")
    written = sorted(i for a, b in truth["child"]["written"] for i in range(a, b))
    assert child_copies == written == list(range(0, c * s, s))
    # the parent only reads after the fork; the child never reuses a shared page
    assert not [e for e in log if e[0] == parent]
    assert not [e for e in log if e[2] == "reuse"]
    assert machine.unresolved_faults == 0


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_churn_leaves_no_frames_folios_or_tables(arch):
    """guest/churn maps, touches, madvises, mremaps and unmaps in a loop: afterwards
    only the page cache (file text/data) and the zero pages hold frames."""
    binary = ROOT / f"build/guest/{arch}/churn"
    if not binary.exists() or not (ROOT / "build/libemu.so").exists():
        pytest.skip(f"{binary} or the plugin not built (make build)")
    machine = _run_under_emu(binary, ["-i", "40", "-p", "700"], thp="always",
                             mthp="16K=always,64K=always")
    k = machine.kernel
    assert not k.mms
    assert all(not f.anon for f in k.folios.values())
    assert k.physmem.pgtables.nr_tables == 0
    held = sum(f.nr_pages for f in k.folios.values()) + 1      # + the small zero page
    held += 512 if k.huge_zero_pfn is not None else 0
    assert k.nr_free_frames + held == k.physmem.nr_frames - 1   # pfn 0 is never handed out
    assert k.vmstat["thp_fault_alloc"] + sum(
        v["anon_fault_alloc"] for v in k.mthp_stats.values()) > 0
