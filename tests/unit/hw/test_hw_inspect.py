"""emu.hw.inspect reads back exactly what was filled: size, VA, ASID, frame, contpte."""

from hw_test_helpers import BASE, events, make

from emu.arch import PROT_READ, PROT_WRITE
from emu.hw.inspect import cpu_tlbs, reach
from emu.report.tlbs import ranges, render, summary_rows

RW = PROT_READ | PROT_WRITE


def test_filled_entries_read_back(arch_name: str) -> None:
    m = make(arch_name)
    m.b.map_range(BASE, 0x1000, 8 << 12, RW)
    m.b.map_range(BASE + (1 << 21), 0x2000, 1 << 21, RW, size="2m")
    m.hw.run(0, 7, m.root, *events([BASE + (i << 12) for i in range(8)] + [BASE + (1 << 21)]))
    l1d = [t for t in cpu_tlbs(m.hw, 0) if t["level"] == 1 and t["side"] != "instr"]
    entries = [e for t in l1d for e in t["entries"]]
    got = {(va, size, asid, pfn) for va, size, asid, pfn, _ in entries}
    assert got == {(BASE + (i << 12), "4k", 7, 0x1000 + i) for i in range(8)} | {
        (BASE + (1 << 21), "2m", 7, 0x2000)}
    assert sum(t["valid"] for t in l1d) == 9
    four_k = next(t for t in l1d if "4k" in t["reach"])
    assert four_k["reach"]["4k"] == {"entries": 8, "coalesced": 0, "bytes": 8 << 12}
    assert sum(t["reach_bytes"] for t in l1d) == (8 << 12) + (1 << 21)


def test_contpte_entry_is_one_64k_coalesced_entry() -> None:
    m = make("arm64")
    m.b.map_range(BASE, 0x3000, 1 << 16, RW, size="64k")
    m.hw.run(0, 1, m.root, *events([BASE + (i << 12) for i in range(16)]))
    l1d = next(t for t in cpu_tlbs(m.hw, 0) if t["name"] == "L1 dTLB")
    assert [(e[0], e[1], e[3], e[4][-1]) for e in l1d["entries"]] == [(BASE, "64k", 0x3000, "c")]
    assert l1d["reach"] == {"64k": {"entries": 1, "coalesced": 1, "bytes": 1 << 16}}


def test_reach_and_ranges_pure() -> None:
    entries = [[0x1000, "4k", 1, 5, "wxd-"], [0x2000, "4k", 1, 6, "wxd-"],
               [0x4000, "4k", 1, 8, "wxd-"], [0x10000, "64k", 2, 16, "w-dc"]]
    assert ranges(entries) == [(0x1000, 0x3000, "4k", 1, "wxd-", 2),
                               (0x4000, 0x5000, "4k", 1, "wxd-", 1),
                               (0x10000, 0x20000, "64k", 2, "w-dc", 1)]
    assert reach([tuple(e) for e in entries]) == {
        "4k": {"entries": 3, "coalesced": 0, "bytes": 3 << 12},
        "64k": {"entries": 1, "coalesced": 1, "bytes": 1 << 16}}
    snap = {"at": {"mark": 2, "instructions": 10, "pid": 1, "vcpu": 0},
            "cpus": [{"cpu": 0, "tlbs": [{"name": "L1", "valid": 4, "capacity": 8,
                                           "reach_bytes": (3 << 12) + (1 << 16),
                                           "reach": reach([tuple(e) for e in entries]),
                                           "entries": entries}]}]}
    assert summary_rows(snap)[0][5] == "4k 3 (12 kB), 64k 1 c1 (64 kB)"
    text = render([snap], verbose=True)
    assert "at emu_mark(2) [1:0]" in text and "0000000000010000-0000000000020000" in text


def test_amd_coalesced_entry_is_one_16k_entry() -> None:
    """zen4 coalesces 4 accessed adjacent PTEs into one 16K entry: read out as such."""
    m = make("x86_64", "zen4")
    m.b.map_range(BASE, 0x1000, 4 << 12, RW)
    pages = events([BASE + (i << 12) for i in range(4)])
    m.hw.run(0, 1, m.root, *pages)       # sets the accessed bits; the group forms on refill
    m.hw.flush_all()
    m.hw.run(0, 1, m.root, *pages)
    held = [e for t in cpu_tlbs(m.hw, 0) for e in t["entries"]]
    assert held and all(e[:4] == [BASE, "16k", 1, 0x1000] and e[4][-1] == "c" for e in held)
