"""emu.guest.annotate names instruction addresses as perf annotate does, and the text
shows the top rows of what the HTML lists in full."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from emu.guest.annotate import KINDS, annotate, locate
from emu.guest.elf import inspect_elf
from emu.report.annotate import html_section, render

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_locate_names_main_in_a_static_guest(arch: str) -> None:
    path = REPO / "build" / "guest" / arch / "sparse"
    if not path.exists():
        pytest.skip("guests not built (bash setup.sh)")
    elf = inspect_elf(path)
    addr, size = elf.symbols["main"]
    seg = next(s for s in elf.segments if s.vaddr <= addr < s.end)
    start = (seg.vaddr & ~0xFFF)
    vma = SimpleNamespace(start=start, end=(seg.end + 0xFFF) & ~0xFFF, file=str(path),
                          pgoff=(seg.offset - (seg.vaddr - start)) >> 12, kind="file")
    got = locate(addr + 4, [vma], arch, "/")
    assert (got["object"], got["symbol"], got["offset"]) == (str(path), "main", 4)
    assert got["insn"] and got["insn"] != "(bad)"
    anon = SimpleNamespace(start=0x1000, end=0x2000, file=None, pgoff=0, kind="anon")
    assert locate(0x1800, [anon], arch, "/")["object"] == "[anon]"
    assert locate(0x9000, [anon], arch, "/")["object"] is None


def test_section_order_text_and_html() -> None:
    counts = {"walk": Counter({(1, 0x10): 3, (1, 0x20): 3, (1, 0x30): 9}),
              "fault": Counter({(1, 0x10): 1})}
    sec = annotate(counts, {}, "x86_64", "/")
    assert [r["pc"] for r in sec["events"]["walk"]] == [0x30, 0x10, 0x20]
    assert sec["functions"]["walk"] == [{"object": None, "symbol": None, "count": 15}]
    assert set(sec["events"]) == set(KINDS)
    text = render(sec, top=2)
    assert "Page walks (L1 and L2 TLB missed) by instruction (15; top 2 of 3;" in text
    assert "0x000000000020" not in text and "0x000000000030" in text
    page = html_section(sec)
    assert "0x20" in page and page.count("<tr><td>") == 3 + 1 + 1 + 1
