"""TLB contents at a marker and at exit on real guests: text, JSON and HTML agree, and
arm64's 64K mTHP folios sit in the TLBs as contiguous (contpte) 64K entries."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from bundled import EMU, REPO, guest

pytestmark = pytest.mark.integration

_ROW = re.compile(r"^   cpu +(\d+) (.+?) +(\d+)/(\d+) +reach +([\d,]+) kB: (.*)$", re.M)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_tlb_contents_agree(arch: str, tmp_path: Path) -> None:
    js, rep = tmp_path / "r.json", tmp_path / "rep"
    p = subprocess.run([*EMU, "run", "-v", "--json", str(js), "--report", str(rep),
                        "--inspect-at", "2", "--thp", "never", "--mthp", "64K=always", "--",
                        guest(arch, "sparse"), "-i", "2000"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(js.read_text())
    snaps = res["tlb_contents"]
    assert [s["at"] if s["at"] == "exit" else s["at"]["mark"] for s in snaps] == [2, "exit"]
    text_rows = [(int(c), n.strip(), int(v), int(cap), int(kb.replace(",", "")), rest)
                 for c, n, v, cap, kb, rest in _ROW.findall(p.stderr)]
    json_rows = [(c["cpu"], t["name"], t["valid"], t["capacity"], t["reach_bytes"] >> 10)
                 for s in snaps for c in s["cpus"] for t in c["tlbs"]]
    assert [r[:5] for r in text_rows] == json_rows
    page = (rep / "report.html").read_text()
    for c, name, valid, cap, kb, _ in text_rows:
        assert (f'<tr><td>{c}</td><td class="k">{name}</td><td>{valid:,}</td><td>{cap:,}'
                f"</td><td>{kb:,} kB</td>") in page
    for s in snaps:
        for c in s["cpus"]:
            for t in c["tlbs"]:
                assert t["valid"] == len(t["entries"]) <= t["capacity"]
                assert t["reach_bytes"] == sum(r["bytes"] for r in t["reach"].values())
    mark = snaps[0]["cpus"][0]["tlbs"]
    coalesced_64k = sum(t["reach"].get("64k", {}).get("coalesced", 0) for t in mark)
    if arch == "arm64":      # sparse's region in 64K folios: contpte entries
        assert coalesced_64k > 0
    else:                    # x86-64 has no contiguous bit: 4K entries only
        assert coalesced_64k == 0 and all("64k" not in t["reach"] for t in mark)

