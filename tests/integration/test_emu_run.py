"""`emu run` end to end on real QEMU, both architectures: counts against the guests' truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundled import EMU, REPO, guest

from emu.guest.truth import page_checksum, parse_truth, range_pages

ARCHES = ["x86_64", "arm64"]

pytestmark = pytest.mark.integration


def emu(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*EMU, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"emu {' '.join(args)} -> {p.returncode}\n{p.stderr[-3000:]}")
    return p


def run_json(tmp_path: Path, binary: str, *gargs: str, opts: tuple[str, ...] = ()) -> tuple:
    out = tmp_path / "r.json"
    p = emu("run", "-q", "--json", str(out), *opts, "--", binary, *gargs)
    return json.loads(out.read_text()), parse_truth(p.stdout)


def region_vma(result: dict, truth: dict) -> dict:
    """The VMA holding the workload's region (the mmap the guest made)."""
    start, end = truth["region"]["start"], truth["region"]["end"]
    hits = [v for v in result["vmas"]
            if v["start"] is not None and v["start"] <= start and end <= v["end"]]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("pattern", ["full", "strided", "64k", "random"])
def test_touch_counts_equal_truth(tmp_path, arch, pattern):
    gargs = ["-m", "4", "-p", pattern]
    if pattern == "strided":
        gargs += ["-s", "3"]
    result, truth = run_json(tmp_path, guest(arch, "touch"), *gargs, opts=("--no-hw",))
    vma = region_vma(result, truth)
    assert vma["pages_touched"] == truth["pages_touched"] == len(range_pages(truth["touched"]))
    assert vma["accesses"] == {"read": truth["reads"], "write": truth["writes"]}


@pytest.mark.parametrize("arch", ARCHES)
def test_random_counts_equal_truth(tmp_path, arch):
    result, truth = run_json(tmp_path, guest(arch, "random"), "-m", "8", "-i", "200000")
    vma = region_vma(result, truth)
    assert vma["pages_touched"] == truth["pages_touched"]
    assert vma["accesses"] == {"read": truth["reads"], "write": truth["writes"]}


@pytest.mark.parametrize("arch", ARCHES)
def test_random_per_page_checksum(arch):
    """Per-page reads and writes, compared through the guests' own digest."""
    binary = guest(arch, "random")
    # The guest prints its truth on stdout, so run the machine in a child with stdout piped.
    code = (
        "import sys\n"
        "from emu.guest.qemu import GuestRun\n"
        "from emu.trace.reader import iter_batches\n"
        "from emu.guest.elf import inspect_elf\n"
        "from emu.machine import Machine\n"
        "import json\n"
        f"arch={arch!r}; binary={binary!r}\n"
        "m = Machine(arch, inspect_elf(binary))\n"
        "with GuestRun(binary, ['-m', '2', '-i', '50000'], arch=arch) as g:\n"
        "    for b in iter_batches(g.stream):\n"
        "        m.feed(b)\n"
        "    g.wait()\n"
        "m.finish()\n"
        "pages = {}\n"
        "for p in m.processes.values():\n"
        "    pg, r, w = p.pages.arrays()\n"
        "    pages = {int(a): (int(x), int(y)) for a, x, y in zip(pg, r, w)}\n"
        "print('PAGES ' + json.dumps(pages))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    truth = parse_truth(p.stdout)
    line = next(x for x in p.stdout.splitlines() if x.startswith("PAGES "))
    counts = {int(k): tuple(v) for k, v in json.loads(line[6:]).items()}
    base = truth["region"]["start"] >> 12
    npages = (truth["region"]["end"] - truth["region"]["start"]) >> 12
    region = {pg - base: c for pg, c in counts.items() if 0 <= pg - base < npages}
    assert page_checksum(region) == truth["checksum"]


@pytest.mark.parametrize("arch", ARCHES)
def test_mm_syscalls_appear_with_args_and_results(tmp_path, arch):
    """Every mmap, munmap, mremap, mprotect and madvise `churn` made, in order, with results."""
    from emu.arch.syscalls import SyscallTable, decode

    result, truth = run_json(tmp_path, guest(arch, "churn"))
    table = SyscallTable.for_arch(arch)
    want = [decode(arch, table.nr(name), [a & (1 << 64) - 1 for a in args], ret).text
            for name, args, ret in truth["calls"]]
    names = {name for name, _, _ in truth["calls"]}
    got = [s["text"] for s in result["syscalls"] if s["name"] in names]
    # The C library's own start-up calls come first; the workload's follow in order.
    assert got[-len(want):] == want
    assert {"mmap", "munmap", "madvise"} <= names
    assert any("MADV_COLLAPSE" in t for t in want) and any("-EINVAL" in t for t in want)


@pytest.mark.parametrize("arch", ARCHES)
def test_threads_one_vcpu_each_and_icounts_add_up(tmp_path, arch):
    result, truth = run_json(tmp_path, guest(arch, "threads"), opts=("--no-hw",))
    vcpus = result["vcpus"]
    assert len(vcpus) == truth["nthreads"] + 1          # the workers and main
    assert sum(v["instructions"] for v in vcpus) == result["instructions"]
    assert all(v["instructions"] > 0 for v in vcpus)
    vma = region_vma(result, truth)
    assert vma["accesses"] == {"read": truth["reads"], "write": truth["writes"]}


@pytest.mark.parametrize("arch", ARCHES)
def test_forker_parent_and_child_by_pid(tmp_path, arch):
    result, truth = run_json(tmp_path, guest(arch, "forker"), opts=("--no-hw",))
    procs = {p["pid"]: p for p in result["processes"]}
    assert len(procs) == 2
    child = [p for p in procs.values() if p["parent"] != 0]
    assert len(child) == 1 and child[0]["parent"] in procs
    by_pid = {v["pid"]: v for v in result["vmas"]
              if v["start"] is not None and v["start"] <= truth["region"]["start"] < v["end"]}
    assert len(by_pid) == 2
    parent_pid = child[0]["parent"]
    assert by_pid[parent_pid]["accesses"]["write"] == truth["parent"]["writes"]
    assert by_pid[child[0]["pid"]]["accesses"]["write"] == truth["child"]["writes"]


@pytest.mark.parametrize("arch", ARCHES)
def test_record_then_replay_identical(tmp_path, arch):
    rec = tmp_path / "t.emutrace"
    live = tmp_path / "live.json"
    emu("run", "-q", "--record", str(rec), "--json", str(live), "--",
        guest(arch, "random"), "-m", "4", "-i", "100000")
    again = tmp_path / "replay.json"
    emu("replay", "-q", "--json", str(again), str(rec))
    a, b = json.loads(live.read_text()), json.loads(again.read_text())
    for key in ("instructions", "accesses", "pages_touched", "vmas", "syscalls", "markers",
                "vcpus", "tlb", "kernel"):
        assert a.get(key) == b.get(key), key
    # A recording is never overwritten without --force.
    p = emu("run", "-q", "--record", str(rec), "--", guest(arch, "random"), check=False)
    assert p.returncode == 2 and "already exists" in p.stderr


def test_damaged_recording_names_offset(tmp_path):
    rec = tmp_path / "t.emutrace"
    emu("run", "-q", "--no-hw", "--record", str(rec), "--",
        guest("x86_64", "random"), "-m", "2", "-i", "20000")
    data = rec.read_bytes()
    cut = tmp_path / "cut.emutrace"
    cut.write_bytes(data[: len(data) * 2 // 3])
    flip = tmp_path / "flip.emutrace"
    b = bytearray(data)
    b[len(b) // 2] ^= 0x10
    flip.write_bytes(bytes(b))
    for bad in (cut, flip):
        p = emu("replay", "-q", str(bad), check=False)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert "byte" in lines[0] or "offset" in lines[0], lines[0]


def test_bad_inputs_one_line_exit_2(tmp_path):
    elf = Path(guest("x86_64", "random")).read_bytes()
    notelf = tmp_path / "notelf"
    notelf.write_text("#!/bin/sh\necho hi\n")
    elf32 = tmp_path / "elf32"
    elf32.write_bytes(elf[:4] + b"\x01" + elf[5:])
    riscv = tmp_path / "riscv"
    riscv.write_bytes(elf[:18] + (243).to_bytes(2, "little") + elf[20:])
    cases = {str(tmp_path / "missing"): "no such file", str(notelf): "not an ELF",
             str(elf32): "ELF32", str(riscv): "RISC"}
    for path, words in cases.items():
        p = emu("run", "--", path, check=False)
        assert p.returncode == 2, (path, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert words.lower() in p.stderr.lower(), (words, p.stderr)


def test_qemu_missing_one_line_exit_2(tmp_path):
    binary = guest("arm64", "random")
    env = dict(os.environ, PATH=str(tmp_path))
    p = subprocess.run([*EMU, "run", "--", binary], capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert "qemu-aarch64 not found" in p.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_micro_tlb_keeps_counts_exact_and_replays(tmp_path, arch):
    """The default micro-TLB (the profile's L0, 64 entries) against --utlb 0: fewer
    events, the same accesses, pages and dTLB loads/stores; replay equal."""
    binary = guest(arch, "touch")
    gargs = ["-m", "4", "-p", "strided", "-s", "3", "-k", "rw"]
    plain, truth = run_json(tmp_path, binary, *gargs, opts=("--utlb", "0"))
    assert plain["tlb"]["utlb"] == {"entries": 0, "hits": 0}
    rec = tmp_path / "u.emutrace"
    out = tmp_path / "u.json"
    emu("run", "-q", "--record", str(rec), "--json", str(out), "--", binary, *gargs)
    micro = json.loads(out.read_text())
    assert micro["tlb"]["utlb"]["entries"] == 64
    assert micro["events"] < plain["events"]
    # The hits are the accesses of the records the plugin flagged absorbed, counted
    # straight from the recording's events.
    from emu.trace import events as ev
    from emu.trace.format import F_ABSORBED
    from emu.trace.reader import read_all
    e = read_all(rec).events
    acc = ((e["kind"] == ev.READ) | (e["kind"] == ev.WRITE)) & (e["pad"] & F_ABSORBED != 0)
    absorbed = int(e["count"][acc].sum())
    assert micro["tlb"]["utlb"]["hits"] == absorbed and absorbed > 0
    for key in ("accesses", "pages_touched", "instructions"):
        assert micro[key] == plain[key], key
    for key in ("dTLB-loads", "dTLB-stores"):
        assert micro["tlb"]["total"][key] == plain["tlb"]["total"][key], key
    vma = region_vma(micro, truth)
    assert vma["accesses"] == {"read": truth["reads"], "write": truth["writes"]}
    again = tmp_path / "replayed.json"
    emu("replay", "-q", "--json", str(again), str(rec))
    replayed = json.loads(again.read_text())
    assert replayed["tlb"] == micro["tlb"] and replayed["vmas"] == micro["vmas"]
    p = emu("run", "-q", "--utlb", "48", "--", binary, check=False)
    assert p.returncode == 2 and "power of two" in p.stderr


@pytest.mark.parametrize("opts,words", [
    (["--thp", "bogus"], "--thp"),
    (["--mthp", "3K=always"], "3kB"),
    (["--profile", "nope"], "unknown TLB profile"),
    (["--profile", "neoverse_n1"], "is for arm64"),
    (["--config", "/nonexistent.toml"], "not found"),
    (["--ns-per-insn", "-1"], "positive"),
    (["--memory", "12"], "--memory"),
    (["--fragment", "2.0"], "--fragment"),
])
def test_impossible_configurations_one_line_exit_2(opts, words):
    p = emu("run", *opts, "--", guest("x86_64", "touch"), check=False)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, p.stderr


@pytest.mark.parametrize("arch", ARCHES)
def test_madv_collapse_result_reported_and_charged_to_caller(tmp_path, arch):
    """QEMU returns 0 to the guest without collapsing; emu reports the model's own
    result and charges the collapse's estimated duration to the calling thread."""
    result, truth = run_json(tmp_path, guest(arch, "collapse"), opts=("--thp", "madvise"))
    assert truth["ret"] == 0                       # what QEMU told the guest
    calls = result["khugepaged"]["madvise_collapse"]
    assert len(calls) == 1 and calls[0]["start"] == truth["region"]["start"]
    assert calls[0]["ret"] == 0 and calls[0]["pmds"][0]["result"] == "SCAN_SUCCEED"
    assert calls[0]["duration_ns"] > 0
    assert [v["stall_ns"] for v in result["vcpus"]] == [calls[0]["duration_ns"]]


@pytest.mark.parametrize("arch", ARCHES)
def test_at_mark_switches_thp_like_an_admin(tmp_path, arch):
    """sparse populates with THP off; --at-mark 2:thp=always turns it on after that,
    -L calls MADV_HUGEPAGE, which registers the mm, and khugepaged then collapses
    every populated PMD (without the switch: none)."""
    binary = guest(arch, "sparse")
    opts = ("--khugepaged", "fast", "--thp", "never", "--ns-per-insn", "20")
    base, _ = run_json(tmp_path, binary, "-r", "8", "-L", opts=opts)
    (tmp_path / "r.json").unlink()
    switched, truth = run_json(tmp_path, binary, "-r", "8", "-L",
                               opts=(*opts, "--at-mark", "2:thp=always"))
    assert truth["pmds"] == 8
    assert base["khugepaged"]["collapses_by_size_kb"] == {}
    assert switched["khugepaged"]["collapses_by_size_kb"] == {"2048": 8}
    assert [m["id"] for m in switched["markers"]][:2] == [1, 2]


DYNAMIC_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void)
{
    size_t n = 4 << 20;
    char *p = malloc(n);
    memset(p, 1, n);
    long s = 0;
    for (size_t i = 0; i < n; i += 4096)
        s += p[i];
    printf("sum %ld\n", s);
    free(p);
    return 3;
}
"""


@pytest.mark.parametrize("arch,cc", [("x86_64", "gcc"), ("arm64", "aarch64-linux-gnu-gcc")])
def test_dynamic_binary_under_the_whole_model(tmp_path, arch, cc):
    """ld.so and libc are mapped by QEMU unseen: the model must cope (implicit areas that
    become executable later), map every access, and pass the exit status through."""
    guest(arch, "touch")                     # skips when nothing is built
    src = tmp_path / "dyn.c"
    src.write_text(DYNAMIC_C)
    binary = tmp_path / f"dyn-{arch}"
    subprocess.run([cc, "-O2", "-o", str(binary), str(src)], check=True, timeout=120)
    out = tmp_path / "d.json"
    p = emu("run", "-q", "--json", str(out), "--", str(binary), check=False)
    assert p.returncode == 3, p.stderr
    assert p.stdout.strip() == f"sum {1024}"
    result = json.loads(out.read_text())
    assert result["tlb"]["unresolved_faults"] == 0, result["tlb"]["unresolved_first"]
    assert result["pages_touched"] >= 1024


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("opts,want", [
    (("--thp", "never"), {"4K": 512}),
    (("--thp", "never", "--mthp", "64K=always"), {"64K": 512}),
    (("--thp", "always"), {"2M-pmd": 512}),
])
def test_thpmaps_census_of_the_region(tmp_path, arch, opts, want):
    """The region's VMA reports, at exit, which folio sizes map its pages (thpmaps)."""
    result, truth = run_json(tmp_path, guest(arch, "touch"), "-m", "2", opts=opts)
    mapped = dict(region_vma(result, truth)["mapped"])
    cont = mapped.pop("cont", 0)
    # the VMA also holds the 2 MiB of alignment slack, never touched
    assert mapped == want
    assert cont == (512 if arch == "arm64" and "64K" in want else 0)
