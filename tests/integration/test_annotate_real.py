"""`run --annotate` on real guests: every data walk and page fault is attributed to
exactly one instruction, the hot loop's instruction is named by symbol and
disassembled, the counters do not change, and text, JSON and HTML agree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from bundled import EMU, REPO, guest, run_emu

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_annotate_accounts_for_every_walk(arch: str, tmp_path: Path) -> None:
    binary = guest(arch, "sparse")
    plain, ann, rep, js2 = (tmp_path / "a.json", tmp_path / "b.json", tmp_path / "rep",
                            tmp_path / "c.json")
    run_emu("run", "-q", "--json", str(plain), "--", binary, "-i", "2000")
    p = run_emu("run", "--annotate", "--json", str(ann), "--report", str(rep),
             "--record", str(tmp_path / "r.emu"), "--", binary, "-i", "2000")
    a, b = json.loads(plain.read_text()), json.loads(ann.read_text())
    assert a["tlb"]["total"] == b["tlb"]["total"] and a["instructions"] == b["instructions"]
    sec = b["annotate"]
    count = {k: sum(r["count"] for r in rows) for k, rows in sec["events"].items()}
    assert count["walk"] + count["fault"] + count["collapse_stall"] == \
        b["tlb"]["neutral"]["data_walks"]
    assert count["fault"] > 0 and count["walk"] > 0
    top = sec["events"]["fault"][0]               # sparse touches its region in main()
    assert top["symbol"] == "main" and top["object"] == binary and top["insn"]
    assert all(r["pc"] for rows in sec["events"].values() for r in rows)
    for kind, rows in sec["functions"].items():
        assert sum(f["count"] for f in rows) == count[kind]
    title = sec["kinds"]["fault"]
    head = f" {title[0].upper() + title[1:]} by instruction ({count['fault']:,};"
    assert head in p.stderr
    assert f"{top['count']:>10,}" in p.stderr.split(head)[1].splitlines()[1]
    page = (rep / "report.html").read_text()
    assert page.count("<tr><td>") >= sum(len(r) for r in sec["events"].values())
    assert f"{top['pc']:#x}" in page and "main+" in page
    run_emu("replay", "-q", "--json", str(js2), str(tmp_path / "r.emu"))
    assert json.loads(js2.read_text())["annotate"] == sec      # PCs are in the recording


def test_annotate_with_utlb_is_one_line() -> None:
    p = subprocess.run([*EMU, "run", "--annotate", "--utlb", "64", "--",
                        guest("x86_64", "sparse")], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("emu: --annotate and --utlb")
