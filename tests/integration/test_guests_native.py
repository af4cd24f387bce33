"""The guest workloads, run natively (x86-64) and under plain qemu-aarch64 (no plugin):
each prints one EMU-TRUTH line, and the line is consistent with what the
workload was asked to do (recomputed here independently where possible).
"""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from emu.arch.syscalls import SyscallTable, decode
from emu.guest.truth import page_checksum, pages_to_ranges, parse_truth, range_pages

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "guest"
GUESTS = ("touch", "random", "threads", "forker", "collapse", "sparse", "churn")
PAGE = 4096
PMD = 2 << 20
MASK64 = (1 << 64) - 1


def _runners():
    out = []
    if os.uname().machine == "x86_64":
        out.append(pytest.param(("x86_64", []), id="x86_64-native"))
    out.append(pytest.param(("arm64", ["qemu-aarch64"]), id="arm64-qemu"))
    return out


@pytest.fixture(params=_runners())
def run(request):
    arch, prefix = request.param
    if prefix and shutil.which(prefix[0]) is None:
        pytest.skip(f"{prefix[0]} not installed")
    missing = [g for g in GUESTS if not (BUILD / arch / g).exists()]
    if missing:
        pytest.skip(f"build/guest/{arch}/{missing[0]} missing (run `make guests`)")

    def go(name, *args, status=0):
        cmd = prefix + [str(BUILD / arch / name), *map(str, args)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == status, f"{cmd}: status {p.returncode}: {p.stderr}"
        if status:
            return p
        t = parse_truth(p.stdout)
        assert t["v"] == 1 and t["arch"] == arch and t["workload"] == name
        return t

    go.arch = arch
    go.native = not prefix
    return go


def _check_region(t, size, offset=0):
    r = t["region"]
    assert r["end"] - r["start"] == size
    assert (r["start"] - offset) % PMD == 0
    assert r["map_start"] <= r["start"] and r["end"] <= r["map_end"]
    assert r["map_start"] % PAGE == 0 and r["map_end"] % PAGE == 0


def _check_touched(t):
    pages = range_pages(t["touched"])
    assert len(pages) == len(set(pages)) == t["pages_touched"]
    assert pages == sorted(pages)
    assert all(0 <= p < (t["region"]["end"] - t["region"]["start"]) // PAGE for p in pages)
    return pages


# --- touch ----------------------------------------------------------------------

@pytest.mark.parametrize("args,expect", [
    ((), lambda n: range(n)),
    (("-p", "strided", "-s", "3"), lambda n: range(0, n, 3)),
    (("-p", "64k"), lambda n: range(0, n, 16)),
])
def test_touch_patterns(run, args, expect):
    t = run("touch", "-m", 4, *args)
    _check_region(t, 4 << 20)
    pages = _check_touched(t)
    assert pages == list(expect(1024))
    assert (t["reads"], t["writes"]) == (0, len(pages))
    assert t["mark_ret"] == -errno.ENOSYS


def test_touch_random_kinds_offset(run):
    t = run("touch", "-m", 2, "-p", "random", "-n", 77, "-k", "rw", "-o", 5, "-S", 9)
    _check_region(t, 2 << 20, offset=5 * PAGE)
    assert len(_check_touched(t)) == 77
    assert t["reads"] == t["writes"] == 77
    r = run("touch", "-m", 2, "-p", "random", "-n", 77, "-k", "r", "-S", 9)
    assert r["touched"] == t["touched"], "same seed, same pages"
    assert (r["reads"], r["writes"]) == (77, 0)


def test_touch_native_kernel_report(run):
    if not run.native:
        pytest.skip("the kernel report describes the host process only natively")
    t = run("touch", "-m", 2, "-p", "64k", "-R")
    orders = t["kernel"]["orders"]
    assert orders[0][0] == 0 and orders[-1][1] == 512
    for (_, e), (s, _) in zip([o[:2] for o in orders], [o[:2] for o in orders[1:]], strict=False):
        assert e == s
    present = {p for a, b, o in orders if o != -1 for p in range(a, b)}
    assert set(range_pages(t["touched"])) <= present


def _thp_mode():
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text.split("[")[1].split("]")[0]


def test_touch_native_thp_report_agrees_with_smaps(run):
    """pagemap.h's folio orders and smaps' AnonHugePages tell the same story."""
    if not run.native or os.geteuid() != 0:
        pytest.skip("needs a native run as root (PFNs in pagemap)")
    if _thp_mode() not in ("always", "madvise"):
        pytest.skip(f"THP is '{_thp_mode()}' on this machine")
    t = run("touch", "-m", 4, "-H", "-R")
    orders = t["kernel"]["orders"]
    pmd_pages = sum(b - a for a, b, o in orders if o == 9)
    assert {o for _, _, o in orders} <= {0, 9}
    assert t["kernel"]["anon_huge_kb"] * 1024 == pmd_pages * PAGE
    assert pmd_pages % 512 == 0


# --- random ---------------------------------------------------------------------

def _replay_random(size_mib, iters, seed, wthresh=128):
    """The guest's generator, independently: per-page (reads, writes)."""
    nwords = (size_mib << 20) // 8
    x, counts = seed, {}
    for _ in range(iters):
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        page = ((x >> 32) * nwords >> 32) // 512
        r, w = counts.get(page, (0, 0))
        counts[page] = (r, w + 1) if (x & 255) < wthresh else (r + 1, w)
    return counts


@pytest.mark.parametrize("seed,wthresh", [(1, 128), (12345, 40)])
def test_random_matches_replay(run, seed, wthresh):
    iters = 20000
    t = run("random", "-m", 2, "-i", iters, "-S", seed, "-W", wthresh)
    _check_region(t, 2 << 20)
    counts = _replay_random(2, iters, seed, wthresh)
    assert t["reads"] == sum(r for r, _ in counts.values())
    assert t["writes"] == sum(w for _, w in counts.values())
    assert t["reads"] + t["writes"] == iters
    assert t["pages_touched"] == len(counts)
    assert t["touched"] == pages_to_ranges(counts)
    assert t["checksum"] == page_checksum(counts)
    assert t["mark_ret"] == -errno.ENOSYS


def test_random_populate_and_quick(run):
    t = run("random", "-m", 1, "-i", 1000, "-P")
    counts = _replay_random(1, 1000, 1)
    for p in range(256):
        r, w = counts.get(p, (0, 0))
        counts[p] = (r, w + 1)
    assert t["checksum"] == page_checksum(counts) and t["pages_touched"] == 256
    q = run("random", "-m", 1, "-i", 1000, "-q")
    assert "checksum" not in q and q["reads"] + q["writes"] == 1000


# --- threads, forker --------------------------------------------------------------

def test_threads(run):
    n, slice_, rounds = 3, 5, 2
    t = run("threads", "-t", n, "-p", slice_, "-r", rounds)
    _check_region(t, n * slice_ * PAGE)
    threads = t["threads"]
    assert [w["index"] for w in threads] == list(range(n))
    assert len({w["tid"] for w in threads}) == n and t["pid"] not in {w["tid"] for w in threads}
    for w in threads:
        assert w["writes"] == rounds * slice_
        assert w["reads"] == (n - 1) * slice_
        assert len(range_pages(w["written"])) == slice_
        assert not set(range_pages(w["written"])) & set(range_pages(w["read"]))
    assert t["reads"] == sum(w["reads"] for w in threads)
    assert t["writes"] == sum(w["writes"] for w in threads)
    assert t["pages_touched"] == n * slice_


def test_forker(run):
    t = run("forker", "-m", 40, "-c", 7, "-s", 5)
    _check_region(t, 40 * PAGE)
    assert t["ok"] == 1, "the parent still sees its own values after the child's writes"
    parent, child = t["parent"], t["child"]
    assert parent["pid"] == t["pid"] != child["pid"] > 0
    assert child["status"] == 0
    assert range_pages(child["written"]) == list(range(0, 35, 5))
    assert child["writes"] == 7 and parent["writes"] == parent["reads"] == 40
    assert t["writes"] == parent["writes"] + child["writes"]


# --- collapse, sparse -----------------------------------------------------------

def test_collapse(run):
    t = run("collapse", "-p", "0-9,100-199:10", "-a", *(["-R"] if run.native else []))
    _check_region(t, PMD)
    pages = _check_touched(t)
    assert pages == list(range(10)) + list(range(100, 200, 10))
    assert t["writes"] == 20 and t["reads"] == 20 and t["ok"] == 1
    if not run.native:
        assert t["ret"] == 0, "QEMU 7.2 answers MADV_COLLAPSE with 0 and does nothing"
        return
    # the host kernel: success collapses the PMD; failure is one of the documented errnos
    if t["ret"] == 0:
        assert t["errno"] == 0
        assert t["kernel"]["anon_huge_kb"] == 2048
        assert t["kernel_before"]["anon_huge_kb"] == 0
        if os.geteuid() == 0:
            assert t["kernel"]["orders"] == [[0, 512, 9]]
    else:
        assert t["ret"] == -1 and t["errno_name"] in ("EAGAIN", "ENOMEM", "EINVAL", "EPERM")


def test_collapse_multi_pmd_read_kind(run):
    t = run("collapse", "-r", 2, "-n", 3, "-k", "r")
    _check_region(t, 2 * PMD)
    assert range_pages(t["touched"]) == [0, 1, 2, 512, 513, 514]
    assert (t["reads"], t["writes"]) == (6, 0)


def test_sparse(run):
    t = run("sparse", "-r", 2, "-p", "0-511:64", "-i", 50)
    _check_region(t, 2 * PMD)
    pages = _check_touched(t)
    assert pages == [p for base in (0, 512) for p in range(base, base + 512, 64)]
    assert t["rounds"] == 50 and t["ok"] == 1
    assert (t["reads"], t["writes"]) == (16 * 50, 16)


# --- churn: the mm system calls, each with its arguments and result -----------------

def test_churn_calls(run):
    iters, pages = 7, 8
    t = run("churn", "-i", iters, "-p", pages)
    calls = t["calls"]
    assert len(calls) == 6 * iters + 1
    assert t["writes"] == 2 * pages * iters
    length = pages * PAGE
    table = SyscallTable.for_arch(run.arch)
    advice = []
    for k in range(iters):
        mmap, madv, prot_ro, prot_rw, mremap, munmap = calls[6 * k: 6 * k + 6]
        assert [c[0] for c in (mmap, madv, prot_ro, prot_rw, mremap, munmap)] == \
            ["mmap", "madvise", "mprotect", "mprotect", "mremap", "munmap"]
        addr = mmap[2]
        assert addr > 0 and addr % PAGE == 0 and mmap[1] == [0, length, 3, 0x22, -1, 0]
        assert madv[1][:2] == [addr, length] and madv[2] <= 0
        assert prot_ro[1] == [addr, PAGE, 1] and prot_ro[2] == prot_rw[2] == 0
        assert mremap[1] == [addr, length, 2 * length, 1] and mremap[2] % PAGE == 0
        assert munmap[1] == [mremap[2], 2 * length] and munmap[2] == 0
        d = decode(run.arch, table.nr("madvise"), madv[1], madv[2])
        advice.append(d.shown["advice"])
    assert advice == ["MADV_DONTNEED", "MADV_FREE", "MADV_HUGEPAGE", "MADV_NOHUGEPAGE",
                      "MADV_COLD", "MADV_PAGEOUT", "MADV_COLLAPSE"]
    last = decode(run.arch, table.nr("munmap"), calls[-1][1], calls[-1][2])
    assert last.text == "munmap(0x1, 0x1000) = -EINVAL"


# --- bad arguments: one line, status 2 ---------------------------------------------

@pytest.mark.parametrize("name,args", [
    ("touch", ["-p", "zigzag"]), ("touch", ["-m", "lots"]), ("random", ["-Z"]),
    ("threads", ["-t", "0"]), ("forker", ["-m", "4", "-c", "9"]), ("collapse", ["-p", "600"]),
    ("sparse", ["extra"]), ("churn", ["-p", "1"]),
])
def test_bad_arguments(run, name, args):
    p = run(name, *args, status=2)
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith(name + ":")
