"""The views on real runs: `emu run --report --timeline --inspect-at` and `emu compare`
on the bundled default workload, under real QEMU."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from bundled import EMU, REPO, guest

from emu.guest.truth import parse_truth

pytestmark = pytest.mark.integration


def emu(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([*EMU, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, f"emu {' '.join(args)} -> {p.returncode}\n{p.stderr[-3000:]}"
    return p


def test_run_text_json_html_timeline_agree(tmp_path: Path) -> None:
    """sparse on arm64 with khugepaged: the summary, JSON, HTML and timeline agree."""
    binary = guest("arm64", "sparse")
    js, tl, rep = tmp_path / "r.json", tmp_path / "t.json", tmp_path / "rep"
    p = emu("run", "--json", str(js), "--timeline", str(tl), "--report", str(rep),
            "--inspect-at", "2", "--khugepaged", "fast", "--thp", "never",
            "--at-mark", "2:thp=always", "--", binary, "-L", "-i", "3000")
    res = json.loads(js.read_text())
    truth = parse_truth(p.stdout)
    pid = truth["pid"]
    snaps = {("exit" if s["at"] == "exit" else s["at"]["mark"]): s for s in res["thpmaps"]
             if s["pid"] == pid}
    assert set(snaps) == {2, "exit"}
    for snap in snaps.values():
        anon = sum(v for k, v in snap["rollup"].items()
                   if k.startswith("anon-") and "-cont-" not in k)
        file = sum(v for k, v in snap["rollup"].items()
                   if k.startswith("file-") and "-cont-" not in k)
        assert anon + file == snap["rss_kB"]
    # At the mark THP was still off; by exit khugepaged has collapsed the region's PMDs.
    assert "anon-thp-pmd-aligned-2048kB" not in snaps[2]["rollup"]
    collapsed = res["khugepaged"]["collapses_by_size_kb"].get("2048", 0)
    assert collapsed >= 1
    assert snaps["exit"]["rollup"]["anon-thp-pmd-aligned-2048kB"] == 2048 * collapsed
    rollup_text = p.stderr.split(f" Mappings of pid {pid} at exit")[1].split(" Rss ")[0]
    assert {m[0]: int(m[1]) for m in re.findall(r"^ +([a-zA-Z0-9-]+): +(\d+) kB",
                                                rollup_text, re.M)} == snaps["exit"]["rollup"]
    page = (rep / "report.html").read_text()
    assert f"<h3>pid {pid} at exit</h3>" in page
    assert page.count("data:image/png;base64,") == 3    # address space at mark and exit, time
    doc = json.loads(tl.read_text())
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {"khugepaged", "vCPU 0"} <= names
    cols = [e for e in doc["traceEvents"] if e.get("cat") == "collapse"
            and e["args"]["status"] == "succeeded"]
    assert len(cols) == collapsed
    samples = res["samples"]
    assert len(samples["samples"]) > 5 and len(samples["collapses"]) == collapsed


def test_compare_default_workload(tmp_path: Path) -> None:
    """The acceptance: x86-64 against arm64 with 64K mTHP on `random -m 32 -i 2000000 -P`.

    contpte lets arm64 hold each 64K folio in one L2 TLB entry, so its L2 misses
    collapse; x86-64 maps the same folios with 4K entries, so its do not move."""
    guest("x86_64", "random")
    guest("arm64", "random")
    out = tmp_path / "cmp.json"
    p = emu("compare", "--json", str(out))
    cmp = json.loads(out.read_text())
    ratio = {r["arch"]: r["ratios"]["L2 TLB misses"] for r in cmp["rows"]
             if r["policy"] == "64K mTHP"}
    assert ratio["arm64"] < 0.01
    assert 0.95 < ratio["x86_64"] < 1.05
    assert "arm64: 64K mTHP cuts L2 TLB misses" in p.stderr
    assert "x86_64: 64K mTHP leaves L2 TLB misses" in p.stderr
