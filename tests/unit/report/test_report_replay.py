"""The report of a replayed recording: emu.report.result.build_result and emu.report.text.render.

The JSON's counts are checked against the raw events; the text summary must
show every section the JSON has, with the JSON's own numbers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from recordings import raw, replay, trace, truth

from emu.machine import Machine
from emu.report.result import SCHEMA_VERSION, build_result
from emu.report.text import render
from emu.session import _elf_from_meta
from emu.trace.reader import iter_batches, read_meta


def counter_lines(text: str) -> dict[str, int]:
    """`            1,234      name` lines of the summary as {name: value}."""
    out: dict[str, int] = {}
    for m in re.finditer(r"^ {0,15}([\d,]+) {6}(\S.*)$", text, re.M):
        out.setdefault(m.group(2), int(m.group(1).replace(",", "")))
    return out


def test_build_result_of_bare_machine() -> None:
    """A model-less machine's result: counts from the raw events, no model sections."""
    name = "forker-x86_64"
    meta = read_meta(trace(name))
    m = Machine(meta["arch"], _elf_from_meta(meta["elf"]))
    for b in iter_batches(trace(name), background=False):
        m.feed(b)
    m.finish()
    res = build_result(m, "bin", ["bin", "-x"], 0)
    r = raw(name)
    assert res["schema"] == SCHEMA_VERSION
    assert (res["binary"], res["argv"], res["exit_status"]) == ("bin", ["bin", "-x"], 0)
    assert res["accesses"] == {"read": r.reads, "write": r.writes}
    assert res["events"] == r.events
    assert res["instructions"] == sum(r.instructions.values())
    assert [p["accesses"] for p in res["processes"]] == [
        {"read": sum(v["accesses"]["read"] for v in res["vmas"] if v["pid"] == p),
         "write": sum(v["accesses"]["write"] for v in res["vmas"] if v["pid"] == p)}
        for p in sorted(r.pids)]
    assert not {"tlb", "kernel", "khugepaged"} & set(res)
    # No kernel model: no VMAs either, so every touched page is "unmapped".
    assert [v["kind"] for v in res["vmas"]] == ["unmapped", "unmapped"]
    assert sum(v["pages_touched"] for v in res["vmas"]) == sum(r.pages.values())


def check_summary(res: dict[str, Any], text: str) -> dict[str, int]:
    """The counts block, the VMA lines (of a -v summary) and the syscall/marker sections
    equal the JSON."""
    c = counter_lines(text)
    assert c["instructions"] == res["instructions"]
    assert c["data reads"] == res["accesses"]["read"]
    assert c["data writes"] == res["accesses"]["write"]
    assert c["instruction-fetch page changes"] == res["fetch_page_changes"]
    assert c["pages touched (4 KiB)"] == res["pages_touched"]
    assert c["vCPUs (guest threads)"] == len(res["vcpus"])
    assert c["processes"] == len(res["processes"])
    assert " VMAs (final layout per process; pages touched, reads, writes):" in text
    vma_lines = [ln for ln in text.splitlines() if ln.startswith("   pid ")]
    touched = res["vmas"]   # -v lists every VMA
    assert len(vma_lines) == len(touched)
    for ln, v in zip(vma_lines, touched, strict=True):
        nums = re.search(r"([\d,]+) pages +([\d,]+) R +([\d,]+) W", ln)
        assert nums is not None, ln
        assert [int(x.replace(",", "")) for x in nums.groups()] == [
            v["pages_touched"], v["accesses"]["read"], v["accesses"]["write"]]
    syscalls = next(ln for ln in text.splitlines() if ln.startswith(" Syscalls: "))
    assert syscalls == " Syscalls: " + ", ".join(f"{k} {v}"
                                                 for k, v in res["syscall_counts"].items())
    marks = re.findall(r"emu_mark\((\d+)\) at ([\d,]+) instructions", text)
    assert [(int(i), int(n.replace(",", ""))) for i, n in marks] == [
        (m["id"], m["instructions"]) for m in res["markers"]]
    return c


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_summary_with_model(tmp_path: Path, arch: str) -> None:
    """touch with the full model: TLB and kernel sections carry the JSON's counters."""
    name = f"touch-{arch}"
    res = replay(tmp_path, name, "--thp", "never")
    text = render(res, verbose=True)
    c = check_summary(res, text)
    assert f" TLB model, profile generic-{arch} (all CPUs):" in text
    for key, value in res["tlb"]["total"].items():
        assert c[key] == value
    assert " Kernel model:" in text
    vmstat = {k: v for k, v in res["kernel"]["vmstat"].items() if v}
    assert vmstat["pgfault"] == c["pgfault"]
    assert "accesses the model could not map" not in text
    # The region's line says what mapped it at exit: 512 small pages (--thp never).
    assert "        mapped at exit (pages): 4K 512" in text.splitlines()
    assert " per CPU:" not in text   # one vCPU
    assert text.splitlines()[0] == (
        f" Performance counter stats for '{' '.join(res['argv'])}' ({arch}, emu):")
    assert res["argv"] == [f"build/guest/{arch}/touch", "-m", "2", "-p", "full"]


def test_summary_threads_per_cpu(tmp_path: Path) -> None:
    """threads: four vCPUs, so a per-CPU table with one row per CPU, summing to the totals."""
    res = replay(tmp_path, "threads-arm64")
    text = render(res, verbose=True)
    check_summary(res, text)
    header = next(ln for ln in text.splitlines() if ln.startswith("   per CPU: "))
    keys = header.removeprefix("   per CPU: ").split(", ")
    rows = [ln for ln in text.splitlines() if re.match(r"   cpu +\d+:", ln)]
    assert len(rows) == len(res["tlb"]["per_cpu"]) == 4
    for j, key in enumerate(keys):
        col = [int(ln.split(":")[1].split()[j].replace(",", "")) for ln in rows]
        assert sum(col) == res["tlb"]["total"][key]


def test_summary_forker_processes(tmp_path: Path) -> None:
    """forker: one exit line per process, with parent and instructions from the JSON."""
    name = "forker-x86_64"
    res = replay(tmp_path, name, "--no-hw")
    text = render(res, verbose=True)
    check_summary(res, text)
    assert " TLB model" not in text and " Kernel model:" not in text
    t = truth(name)
    lines = [ln for ln in text.splitlines() if ln.startswith(" pid ")]
    assert lines == [f" pid {p['pid']} (parent {p['parent']}) exited 0,"
                     f" {p['instructions']:,} instructions" for p in res["processes"]]
    assert [p["pid"] for p in res["processes"]] == [t["pid"], t["child"]["pid"]]


def test_summary_verbose_lists_every_syscall(tmp_path: Path) -> None:
    """-v lists every syscall; without it only the memory-management ones."""
    res = replay(tmp_path, "churn-x86_64", "--no-hw")
    listed = [ln for ln in render(res, verbose=True).splitlines() if ln.startswith("   [")]
    calls = [ln for ln in listed if "emu_mark" not in ln]
    assert len(calls) == len(res["syscalls"]) == len(raw("churn-x86_64").syscalls)
    # Without -v the summary stays short: a count of VMAs and calls, no list.
    short = render(res)
    assert [ln for ln in short.splitlines() if ln.startswith("   [")
            and "emu_mark" not in ln] == []
    assert f" Syscalls: {len(res['syscalls'])} calls; -v lists them" in short.splitlines()
    assert f" VMAs: {len(res['vmas'])} at exit," in short


@pytest.mark.parametrize("name", ["churn-x86_64", "churn-arm64", "threads-x86_64"])
def test_flushes_by_cause_account_for_every_flush_operation(tmp_path: Path, name: str) -> None:
    """Issue 16: every flush operation the hardware counted as issued (the vCPUs' and
    the no-vCPU row's) is in exactly one cause of kernel.flushes_by_cause, and the text
    summary prints each cause with the JSON's numbers."""
    res = replay(tmp_path, name)
    causes = res["kernel"]["flushes_by_cause"]
    total = res["tlb"]["total"]
    kinds = {k.removeprefix("flush.").removesuffix(".issued") for k in total
             if k.startswith("flush.") and k.endswith(".issued")}
    assert kinds
    for kind in kinds:
        assert sum(t.get(kind, 0) for t in causes.values()) == total[f"flush.{kind}.issued"]
        assert total[f"flush.{kind}.issued"] <= total.get(f"flush.{kind}.received", 0) or \
            kind == "ipi"
    assert {"munmap", "madvise", "mprotect", "exit"} <= set(causes) or name.startswith("threads")
    if name.startswith("threads"):                   # IPIs: each issued one was received
        assert total["flush.ipi.issued"] == total["flush.ipi.received"] > 0
    text = render(res)
    assert "   TLB flushes by cause (calls; operations issued):" in text
    for cause, tally in causes.items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{cause}:"))
        assert f"{tally['flushes']:,}" in line
        for kind, n in tally.items():
            if kind != "flushes" and n:
                assert f"{kind} {n:,}" in line


def test_tlb_section_short_without_v(tmp_path: Path) -> None:
    """Without -v the TLB block shows the vendor's events and one line of flushes;
    emu's own counters and zero breakdowns only with -v (every one of them there)."""
    res = replay(tmp_path, "churn-x86_64")
    total = res["tlb"]["total"]
    short, full = render(res).splitlines(), render(res, verbose=True).splitlines()
    for name, value in total.items():
        line = f"{value:>16,}      {name}"
        assert line in full
        shown = not name.startswith(("emu.", "flush.")) and bool(value or "." not in name)
        assert (line in short) == shown
    hidden = sum(1 for k, v in total.items()
                 if k.startswith(("emu.", "flush.")) or (not v and "." in k))
    assert f"   ({hidden} more counters, emu's own and zero breakdowns: -v or the JSON)" \
        in short
    assert any(ln.startswith("   flush operations issued: ") for ln in short)
