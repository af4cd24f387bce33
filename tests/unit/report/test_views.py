"""The views of a replayed run: thpmaps text and JSON, the HTML report, the plots, the
timeline and `emu compare`, all checked number for number against the result.

Expected values come from the recordings' truth (tests/data/*.stdout: the touch
region is one 2 MiB PMD written page by page) and from the result's own
counters; the few only the model gives are commented.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from recordings import region_vma, replay, trace

from emu import machine as machine_mod
from emu.cli import main
from emu.options import model_args
from emu.report import html, maps, plots, text
from emu.report.result import build_result
from emu.report.samples import Sampler
from emu.session import _elf_from_meta, build_machine
from emu.trace.reader import iter_batches, read_meta

MTHP64 = ("--thp", "never", "--mthp", "64K=always")


def _region(res: dict[str, Any], name: str) -> dict[str, Any]:
    """The thpmaps VMA (at exit, first process) that holds the truth's region."""
    v = region_vma(res, name)
    snap = next(s for s in res["thpmaps"] if s["at"] == "exit"
                and s["pid"] == res["processes"][0]["pid"])
    return next(t for t in snap["vmas"] if t["start"] == v["start"])


def _check_adds_up(res: dict[str, Any]) -> None:
    """Per-size kB add up to each VMA's total, VMAs to the rollup, the rollup to RSS."""
    page_kb = 4
    for snap in res["thpmaps"]:
        total: dict[str, int] = {}
        for v in snap["vmas"]:
            for k, kb in v["counters"].items():
                total[k] = total.get(k, 0) + kb
        assert total == snap["rollup"]
        anon, file = maps.totals(snap["rollup"])
        assert anon + file == snap["rss_kB"]
        assert snap["rss_kB"] % page_kb == 0
    # At exit the thpmaps counts cover what the older census ("mapped") counted.
    for snap in (s for s in res["thpmaps"] if s["at"] == "exit"):
        for t, v in zip(snap["vmas"], (v for v in res["vmas"] if v["pid"] == snap["pid"]
                                       and v["start"] is not None), strict=False):
            assert (t["start"], t["end"]) == (v["start"], v["end"])
            pages = sum(n for k, n in v["mapped"].items() if k not in ("cont", "zero"))
            anon, file = maps.totals(t["counters"])
            assert anon + file == pages * 4


@pytest.mark.parametrize("name", ["touch-x86_64", "touch-arm64", "forker-arm64",
                                  "churn-x86_64", "collapse-arm64"])
@pytest.mark.parametrize("opts", [(), MTHP64])
def test_thpmaps_adds_up_to_rss(tmp_path: Path, name: str, opts: tuple[str, ...]) -> None:
    _check_adds_up(replay(tmp_path, name, *opts))


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_thpmaps_of_the_touch_region(tmp_path: Path, arch: str) -> None:
    """touch writes every page of one 2 MiB PMD: one PMD THP by default, 32 aligned
    64K folios with 64K=always, and on arm64 those are contpte blocks."""
    name = f"touch-{arch}"
    pmd = _region(replay(tmp_path, name), name)["counters"]
    assert pmd == {"anon-thp-pmd-aligned-2048kB": 2048}
    m64 = _region(replay(tmp_path, name, *MTHP64), name)["counters"]
    expect = {"anon-thp-pte-aligned-64kB": 2048}
    if arch == "arm64":
        expect |= {"anon-cont-pte-aligned-64kB": 2048, "cont-bit": 2048}
    assert m64 == expect
    small = _region(replay(tmp_path, name, "--thp", "never"), name)["counters"]
    assert small == {"anon-small": 2048}


def _text_counters(block: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"^ +([a-zA-Z0-9-]+): +(\d+) kB", block, re.M)}


def test_text_json_and_html_agree(tmp_path: Path) -> None:
    """The summary's mapping lines and the HTML's tables carry the JSON's numbers."""
    res = replay(tmp_path, "forker-arm64", *MTHP64)
    summary = text.render(res)
    blocks = summary.split(" Mappings of pid ")[1:]
    exits = [s for s in res["thpmaps"] if s["at"] == "exit"]
    assert len(blocks) == len(exits) == 2
    for block, snap in zip(blocks, exits, strict=True):
        assert block.startswith(f"{snap['pid']} at exit")
        assert _text_counters(block) == {k: v for k, v in snap["rollup"].items() if v}
        anon, file = maps.totals(snap["rollup"])
        assert f"Rss {anon + file:,} kB (anon {anon:,} + file {file:,}) = the model's RSS" \
            f" counter {snap['rss_kB']:,} kB" in block
    verbose = text.render(res, verbose=True)
    per_vma = [v for v in exits[0]["vmas"] if any(v["counters"].values())]
    for v in per_vma:
        assert f" {v['start']:016x} {v['end']:016x} {v['prot']} " in verbose
    page = Path(html.write_report(str(tmp_path / "rep"), res)).read_text()
    for snap in exits:
        section = page.split(f"<h3>pid {snap['pid']} at exit</h3>")[1]
        rollup = section.split("<details>")[0]
        cells = dict(re.findall(r'<td class="k">([a-zA-Z0-9-]+)</td><td>([\d,]+) kB', rollup))
        assert {k: int(v.replace(",", "")) for k, v in cells.items()} == {
            k: v for k, v in snap["rollup"].items() if v}
    assert html.html.escape(summary) in page      # the summary, as printed
    assert 'src="http' not in page and "<link" not in page   # nothing outside the file
    for png in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_at_a_marker(tmp_path: Path) -> None:
    """--inspect-at 2 takes thpmaps when the guest calls emu_mark(2); text says so too."""
    out = tmp_path / "r.json"
    assert main(["replay", "-q", "--json", str(out), "--inspect-at", "2",
                 trace("sparse-arm64")]) == 0
    res = json.loads(out.read_text())
    (mark,) = [m for m in res["markers"] if m["id"] == 2]
    at = [s for s in res["thpmaps"] if s["at"] != "exit"]
    assert [s["at"] for s in at] == [{"mark": 2, "instructions": mark["instructions"]}]
    assert at[0]["pid"] == mark["pid"]
    _check_adds_up(res)
    assert (f" Mappings of pid {mark['pid']} at emu_mark(2), {mark['instructions']:,}"
            " instructions") in text.render(res)


def test_address_space_plot_has_the_mappings(tmp_path: Path) -> None:
    """The region's row shows 2 MiB of 64K folios, as thpmaps counts them."""
    name = "touch-arm64"
    res = replay(tmp_path, name, *MTHP64)
    snap = next(s for s in res["thpmaps"] if s["at"] == "exit")
    fig = plots.address_space(snap)
    region = _region(res, name)
    ax = next(a for a in fig.axes if f"{region['start']:#x}" in a.get_ylabel())
    widths: dict[str, float] = {}
    for coll in ax.collections:
        for path in coll.get_paths():
            xs = path.vertices[:, 0]
            widths[coll.get_label()] = widths.get(coll.get_label(), 0) + xs.max() - xs.min()
    assert widths == {"64K": pytest.approx(2.0)}       # MiB
    out = tmp_path / "a.png"
    plots.save(fig, str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_over_time_plot_and_collapses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """khugepaged collapses sparse's two PMDs: the share of 2M-pmd pages rises to what
    thpmaps counts at exit, and both collapses are marked."""
    monkeypatch.setattr(machine_mod, "SAMPLE_SLICE", 64)
    name = "sparse-x86_64"
    meta = read_meta(trace(name))
    # 200 ns per instruction: the short recording spans khugepaged's 1 ms wake-ups.
    m = build_machine(meta["arch"], _elf_from_meta(meta["elf"]), model_args(
        khugepaged="fast", ns_per_insn=200.0, thp="never", at_mark=["2:thp=always"]))
    sampler = Sampler(m, every=1000)
    for b in iter_batches(trace(name), background=False):
        m.feed(b)
    m.finish()
    res = build_result(m, name, [name], 0)
    samples = sampler.section(m)
    assert len(samples["samples"]) > 10
    assert [c["order"] for c in samples["collapses"]] == [9, 9]
    fig = plots.over_time(meta["arch"], samples)
    top, bottom = fig.axes[:2]
    lines = [ln for ln in top.get_lines() if ln.get_label().startswith("L2 TLB")]
    assert len(lines[0].get_xdata()) > 5
    assert sum(lines[0].get_ydata()) > 0
    labels = [c.get_label() for c in bottom.collections]
    assert "2M-pmd" in labels
    pmd_kb = next(s for s in res["thpmaps"] if s["at"] == "exit")["rollup"][
        "anon-thp-pmd-aligned-2048kB"]
    assert pmd_kb == 2 * 2048
    assert samples["samples"][-1]["pages"]["2M-pmd"] * 4 == pmd_kb
    dashed = [ln for ln in bottom.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 2


def _timeline(tmp_path: Path, name: str, *opts: str) -> tuple[dict[str, Any], dict[str, Any]]:
    tl, js = tmp_path / f"{name}.trace.json", tmp_path / f"{name}.json"
    assert main(["replay", "-q", "--json", str(js), "--timeline", str(tl), *opts,
                 trace(name)]) == 0
    return json.loads(tl.read_text()), json.loads(js.read_text())


def _tracks(doc: dict[str, Any]) -> dict[tuple[int, int], str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
            if e["ph"] == "M" and e["name"] == "thread_name"}


def test_timeline_khugepaged_track(tmp_path: Path) -> None:
    """khugepaged's scans and collapses (with their steps) on its track; faults on the
    vCPU's, as many as the kernel counted; markers."""
    doc, res = _timeline(tmp_path, "sparse-x86_64", "--khugepaged", "fast", "--ns-per-insn",
                         "200", "--thp", "never", "--at-mark", "2:thp=always")
    assert doc["displayTimeUnit"] == "ns"
    pid = res["processes"][0]["pid"]
    assert _tracks(doc) == {(0, 1): "khugepaged", (0, 2): "flushes", (pid, 0): "vCPU 0"}
    evs = doc["traceEvents"]
    for e in evs:
        assert {"name", "ph", "pid", "tid"} <= e.keys()
        assert e["ph"] == "M" or e["ts"] >= 0
    collapses = [e for e in evs if e.get("cat") == "collapse"]
    assert [(e["name"], e["tid"]) for e in collapses] == [
        ("collapse 2048kB: succeeded", 1)] * 2
    assert len(collapses) == sum(res["khugepaged"]["collapses_by_size_kb"].values())
    for c in collapses:
        steps = [e for e in evs if e.get("cat") == "collapse_step" and e["tid"] == 1
                 and c["ts"] <= e["ts"] < c["ts"] + c["dur"]]
        assert [s["name"] for s in steps] == list(c["args"]["steps"])
    faults = [e for e in evs if e.get("cat") == "fault"]
    assert len(faults) == res["kernel"]["vmstat"]["pgfault"] == res["tlb"]["total"]["emu.faults"]
    assert {(e["pid"], e["tid"]) for e in faults} == {(pid, 0)}
    scans = [e for e in evs if e.get("cat") == "khugepaged"]
    assert len(scans) == sum(res["khugepaged"]["khugepaged"]["results"].values())
    assert [e["name"] for e in evs if e.get("cat") == "marker"] == [
        f"emu_mark({m['id']})" for m in res["markers"]]


def test_timeline_madvise_collapse_on_the_caller(tmp_path: Path) -> None:
    """MADV_COLLAPSE's collapse is drawn inside the caller's stall, on its vCPU."""
    doc, res = _timeline(tmp_path, "collapse-arm64", "--thp", "never")
    evs = doc["traceEvents"]
    pid = res["processes"][0]["pid"]
    (stall,) = [e for e in evs if e.get("cat") == "stall"]
    (col,) = [e for e in evs if e.get("cat") == "collapse"]
    assert (stall["pid"], stall["tid"]) == (col["pid"], col["tid"]) == (pid, 0)
    assert col["name"] == "MADV_COLLAPSE collapse 2048kB: succeeded"
    assert stall["ts"] <= col["ts"] and col["ts"] + col["dur"] <= stall["ts"] + stall["dur"]
    (call,) = res["khugepaged"]["madvise_collapse"]
    assert stall["args"]["ns"] == call["duration_ns"]


def test_compare_recordings(tmp_path: Path) -> None:
    """touch at 4K and 64K mTHP: contpte cuts arm64's L2 TLB misses, x86-64's stay."""
    out = tmp_path / "cmp.json"
    assert main(["compare", "-q", "--json", str(out), "--report", str(tmp_path / "rep"),
                 "--recording", trace("touch-x86_64"), "--recording", trace("touch-arm64")]) == 0
    cmp = json.loads(out.read_text())
    rows = {(r["arch"], r["policy"]): r for r in cmp["rows"]}
    assert list(rows) == [("x86_64", "4K"), ("x86_64", "64K mTHP"), ("arm64", "4K"),
                          ("arm64", "64K mTHP")]
    # Each row is the replay's own result under that policy.
    alone = replay(tmp_path, "touch-arm64", *MTHP64)
    assert rows[("arm64", "64K mTHP")]["metrics"]["L2 TLB misses"] == \
        alone["tlb"]["total"]["L2D_TLB_REFILL"]
    assert rows[("arm64", "64K mTHP")]["metrics"]["page faults"] == \
        alone["kernel"]["vmstat"]["pgfault"]
    arm = rows[("arm64", "64K mTHP")]["ratios"]["L2 TLB misses"]
    assert arm < 0.2           # model: 1,116 -> 156, one contpte entry per 64K
    # x86-64: 64K folios are still 4K TLB entries, so the walks that found a page are
    # as many; Intel's walk_completed also counts walks that ended in a fault, and
    # 64K folios take fewer faults (docs/hardware.md), hence the lower ratio.
    x86 = {p: rows[("x86_64", p)] for p in ("4K", "64K mTHP")}
    faulted = {p: replay(tmp_path, "touch-x86_64", *opts)["tlb"]["total"]["emu.faulted_walks"]
               for p, opts in (("4K", ("--thp", "never")), ("64K mTHP", MTHP64))}
    assert (x86["64K mTHP"]["metrics"]["L2 TLB misses"] - faulted["64K mTHP"]
            == x86["4K"]["metrics"]["L2 TLB misses"] - faulted["4K"])
    fig = plots.compare_bars(cmp["rows"], cmp["metrics"])
    heights = [round(p.get_height()) for p in fig.axes[0].patches]
    assert heights == [r["metrics"]["L2 TLB misses"] for r in cmp["rows"]]
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<h2>Comparison</h2>" in page and "data:image/png;base64," in page
