"""`emu replay` through emu.cli.main on the committed recordings (no QEMU needed).

The interface is the CLI and its JSON.  Counts are checked against the guest's
truth and the raw events (tests/unit/recordings.py); model numbers are checked
only where they follow from first principles, or, where noted, against a value
reasoned out for that recording.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from recordings import ALL, ARCHES, raw, region_vma, replay, trace, truth

from emu.cli import main

NEVER = ("--thp", "never")


@pytest.mark.parametrize("name", ALL)
def test_counts_equal_raw_events_and_truth(tmp_path: Path, name: str) -> None:
    """Default options: every stream count and the TLB's access counters equal the raw events."""
    res, r = replay(tmp_path, name), raw(name)
    assert res["accesses"] == {"read": r.reads, "write": r.writes}
    assert res["fetch_page_changes"] == r.fetches
    assert res["events"] == r.events
    assert res["pages_touched"] == sum(r.pages.values())
    assert res["instructions"] == sum(r.instructions.values())
    assert sorted((v["pid"], v["vcpu"]) for v in res["vcpus"]) == sorted(r.vcpu_starts)
    assert [(p["pid"], p["parent"], p["exit_status"]) for p in res["processes"]] == [
        (p, r.parent[p], r.exit_status[p]) for p in sorted(r.pids)]
    assert res["exit_status"] == 0
    assert res["arch"] == name.split("-")[1]
    # Every access and every fetch page change is one TLB lookup.
    total = res["tlb"]["total"]
    assert (total["dTLB-loads"], total["dTLB-stores"], total["iTLB-loads"]) == (
        r.reads, r.writes, r.fetches)
    assert res["tlb"]["unresolved_faults"] == 0
    assert [(m["pid"], m["id"]) for m in res["markers"]] == r.marks
    assert sum(res["syscall_counts"].values()) == len(res["syscalls"]) == len(r.syscalls)
    if "region" in truth(name):
        t = truth(name)
        pid = t["pid"]
        vma = region_vma(res, name, pid)
        assert vma["accesses"] == r.region[pid]
        assert vma["pages_touched"] == r.region_pages[pid]
        if not name.startswith("forker"):   # forker's truth adds the child's accesses
            assert vma["accesses"] == {"read": t["reads"], "write": t["writes"]}
            assert vma["pages_touched"] == t["pages_touched"]


@pytest.mark.parametrize("arch", ARCHES)
def test_thp_never_every_first_touch_walks(tmp_path: Path, arch: str) -> None:
    """touch -m 2 -p full writes each page of one 2 MiB-aligned PMD once.

    With THP (default always) the first write faults in one 2 MiB page: one 2M
    walk, one fault.  With --thp never each of the 512 pages is new to the TLB:
    one 4K walk and one fault apiece.  Nothing else in the process can use a
    THP (no other VMA spans an aligned 2 MiB), so the rest is identical.
    """
    name = f"touch-{arch}"
    pages = truth(name)["pages_touched"]
    assert pages == 512
    thp, never = replay(tmp_path, name), replay(tmp_path, name, *NEVER)
    assert never["kernel"]["config"]["enabled"] == "never"
    assert region_vma(thp, name)["mapped"] == {"2M-pmd": pages}
    assert region_vma(never, name)["mapped"] == {"4K": pages}
    t, n = thp["tlb"]["total"], never["tlb"]["total"]
    assert t["emu.walks.2m"] == 1
    assert n.get("emu.walks.2m", 0) == 0
    assert n["emu.walks.4k"] - t["emu.walks.4k"] == pages
    assert n["emu.faults"] - t["emu.faults"] == pages - 1
    vt, vn = thp["kernel"]["vmstat"], never["kernel"]["vmstat"]
    assert vn["pgfault"] - vt["pgfault"] == pages - 1
    assert (vt["thp_fault_alloc"], vn["thp_fault_alloc"]) == (1, 0)
    if arch == "x86_64":   # Intel's names: the PMD walk is a store (the guest only writes)
        assert t["dtlb_store_misses.walk_completed_2m_4m"] == 1
        # Intel counts the walk that ends in the fault too ("can end with or without
        # a fault"): each first touch walks twice, the faulting walk and the retry.
        assert (n["dtlb_store_misses.walk_completed"] - t["dtlb_store_misses.walk_completed"]
                == 2 * (pages - 1))
    else:   # Arm: DTLB_WALK counts both walks, the L1/L2 refills only the one that filled
        assert n["DTLB_WALK"] - t["DTLB_WALK"] == 2 * (pages - 1)
        assert n["L2D_TLB_REFILL"] - t["L2D_TLB_REFILL"] == pages - 1
        # (L1 refills also come from the L2 when 512 pages crowd the L1: not fewer.)
        assert n["L1D_TLB_REFILL"] - t["L1D_TLB_REFILL"] >= pages - 1
    assert n["emu.faulted_walks"] - t["emu.faulted_walks"] == pages - 1


def test_thp_never_walks_compare_across_architectures(tmp_path: Path) -> None:
    """The same program, --thp never: x86's walk_completed and Arm's DTLB_WALK count the
    same walks, and the neutral block reads the same on both (touch -m 2 -p full)."""
    x86, arm = (replay(tmp_path, f"touch-{a}", *NEVER)["tlb"] for a in ARCHES)
    xt, at = x86["total"], arm["total"]
    x_walks = xt["dtlb_load_misses.walk_completed"] + xt["dtlb_store_misses.walk_completed"]
    assert x_walks == x86["neutral"]["data_walks"]
    assert at["DTLB_WALK"] == arm["neutral"]["data_walks"]
    # The region's 512 pages each walk twice on both; the rest (libc start-up, stack)
    # differs by code, not by counter definitions.
    assert abs(x_walks - at["DTLB_WALK"]) <= 0.1 * x_walks
    for nt in (x86["neutral"], arm["neutral"]):
        assert nt["walks_by_size"]["faulted"] >= 512 and nt["walks_by_size"]["4k"] >= 512
        assert nt["walk_refs_per_walk"] >= 1.0


@pytest.mark.parametrize("arch", ARCHES)
def test_mthp_64k(tmp_path: Path, arch: str) -> None:
    """--thp never --mthp 64K=always: the region's 512 pages are 32 aligned 64 KiB folios."""
    name = f"touch-{arch}"
    res = replay(tmp_path, name, *NEVER, "--mthp", "64K=always")
    never = replay(tmp_path, name, *NEVER)
    assert res["kernel"]["config"]["hugepages-64kB/enabled"] == "always"
    mapped = region_vma(res, name)["mapped"]
    m, n = res["tlb"]["total"], never["tlb"]["total"]
    if arch == "arm64":
        # Each folio is mapped with the contiguous bit: one 64K TLB entry, one walk each.
        assert mapped == {"64K": 512, "cont": 512}
        assert m["emu.walks.64k"] == 512 // 16
        assert n["emu.walks.4k"] - m["emu.walks.4k"] == 512
        assert res["kernel"]["mthp_stats"]["64"]["anon_fault_alloc"] == 32
    else:
        # x86 has no contiguous TLB entries (generic profile): walks as with 4K pages.
        assert mapped == {"64K": 512}
        assert m["emu.walks.4k"] == n["emu.walks.4k"]
        # 32 in the region, and (model, checked by hand) one in the heap.
        assert res["kernel"]["mthp_stats"]["64"]["anon_fault_alloc"] == 33
    # 32 faults in the region instead of 512; the rest as before.
    assert n["emu.faults"] - m["emu.faults"] == 512 - 32 + (arch == "x86_64")


@pytest.mark.parametrize("arch", ARCHES)
def test_no_hw_has_counts_only(tmp_path: Path, arch: str) -> None:
    """--no-hw: the same counts as with the model, and no tlb/kernel/khugepaged sections."""
    name = f"forker-{arch}"
    res, r = replay(tmp_path, name, "--no-hw"), raw(name)
    assert not {"tlb", "kernel", "khugepaged"} & set(res)
    assert res["accesses"] == {"read": r.reads, "write": r.writes}
    assert res["pages_touched"] == sum(r.pages.values())
    assert [p["pid"] for p in res["processes"]] == sorted(r.pids)
    assert all(v.get("mapped", {}) == {} for v in res["vmas"])


@pytest.mark.parametrize(("arch", "profile"), [("x86_64", "zen4"), ("arm64", "neoverse_n1")])
def test_profile(tmp_path: Path, arch: str, profile: str) -> None:
    """--profile picks the TLB; lookups still equal the accesses, and the region walks don't."""
    name = f"touch-{arch}"
    res, r = replay(tmp_path, name, "--profile", profile, *NEVER), raw(name)
    assert res["tlb"]["profile"] == profile
    t = res["tlb"]["total"]
    assert (t["dTLB-loads"], t["dTLB-stores"]) == (r.reads, r.writes)
    assert region_vma(res, name)["mapped"] == {"4K": 512}
    # Same recording, same kernel model: the faults don't depend on the TLB profile.
    assert t["emu.faults"] == replay(tmp_path, name, *NEVER)["tlb"]["total"]["emu.faults"]


def test_profile_of_other_arch_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = main(["replay", "-q", "--json", str(out), trace("touch-arm64"), "--profile", "zen4"])
    assert rc == 2
    assert capsys.readouterr().err == "emu: profile zen4 is for x86_64, the guest is arm64\n"
    assert not out.exists()


@pytest.mark.parametrize("arch", ARCHES)
def test_khugepaged_fast_collapses_sparse(tmp_path: Path, arch: str) -> None:
    """sparse -r 2 -n 16: faulted in with THP off, then THP on at mark 2 (after populating).

    khugepaged (fast: 1 ms scan sleep; 1 us per instruction so the ~20 rounds
    last tens of ms) finds two PMDs of 16 present and 496 none PTEs each,
    under max_ptes_none 511: both collapse, 32 small pages become 1024.
    """
    name = f"sparse-{arch}"
    assert truth(name)["touched"] == [[0, 16], [512, 528]]
    res = replay(tmp_path, name, "--khugepaged", "fast", *NEVER, "--at-mark", "2:thp=always",
                 "--ns-per-insn", "1000")
    k = res["khugepaged"]
    assert k["khugepaged"]["pages_collapsed"] == 2
    assert k["khugepaged"]["results"]["SCAN_SUCCEED"] == 2
    assert k["collapses_by_size_kb"] == {"2048": 2}
    assert k["pages_by_mapping_size"] == {"before": {"4kB": 32}, "after": {"2048kB": 1024}}
    assert res["kernel"]["vmstat"]["thp_collapse_alloc"] == 2
    assert res["kernel"]["config"]["enabled"] == "always"
    assert region_vma(res, name)["mapped"] == {"2M-pmd": 1024}
    # Without the thread nothing collapses.
    off = replay(tmp_path, name, *NEVER, "--at-mark", "2:thp=always", "--ns-per-insn", "1000")
    assert off["khugepaged"]["khugepaged"]["pages_collapsed"] == 0
    assert region_vma(off, name)["mapped"] == {"4K": 32}


@pytest.mark.parametrize("arch", ARCHES)
def test_madvise_collapse(tmp_path: Path, arch: str) -> None:
    """collapse -n 64: MADV_COLLAPSE over one PMD with 64 pages present.

    With --thp never the PMD holds 4K pages and the call collapses it (the guest
    saw ret 0); with THP always the fault already mapped 2 MiB: SCAN_PMD_MAPPED.
    """
    name = f"collapse-{arch}"
    t = truth(name)
    assert (t["ret"], t["pages_touched"]) == (0, 64)
    never = replay(tmp_path, name, *NEVER)
    (call,) = never["khugepaged"]["madvise_collapse"]
    assert (call["start"], call["length"], call["ret"]) == (t["region"]["start"], 2 << 20, 0)
    assert [p["result"] for p in call["pmds"]] == ["SCAN_SUCCEED"]
    assert never["kernel"]["vmstat"]["thp_collapse_alloc"] == 1
    assert region_vma(never, name)["mapped"] == {"2M-pmd": 512}
    thp = replay(tmp_path, name)
    (call,) = thp["khugepaged"]["madvise_collapse"]
    assert [p["result"] for p in call["pmds"]] == ["SCAN_PMD_MAPPED"]
    assert thp["kernel"]["vmstat"]["thp_collapse_alloc"] == 0


# -- error paths ---------------------------------------------------------------------------


def run_err(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    return rc, err


def assert_one_line(err: str, *parts: str) -> None:
    assert err.startswith("emu: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for p in parts:
        assert p in err, err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run_err(capsys, "replay", "-q", str(tmp_path / "nope.emu"))
    assert rc == 2
    assert err == f"emu: {tmp_path / 'nope.emu'}: no such file\n"


@pytest.mark.parametrize(("cut", "expect"), [
    (100, "truncated"),              # inside the metadata
    (-1, "truncated"),               # last byte of the end record gone
    (-40, "truncated"),              # end record gone
])
def test_truncated_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: int,
                             expect: str) -> None:
    data = Path(trace("touch-x86_64")).read_bytes()
    bad = tmp_path / "cut.emu"
    bad.write_bytes(data[:cut])
    rc, err = run_err(capsys, "replay", "-q", "--json", str(tmp_path / "o.json"), str(bad))
    assert rc == 2
    assert_one_line(err, str(bad), expect)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(("where", "expect"), [
    (0, "not an emu recording"),
    (30, "corrupt metadata"),
    (-2000, "corrupt compressed data"),
])
def test_corrupt_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: int,
                           expect: str) -> None:
    data = bytearray(Path(trace("forker-arm64")).read_bytes())
    data[where] ^= 0x5A
    bad = tmp_path / "bad.emu"
    bad.write_bytes(bytes(data))
    rc, err = run_err(capsys, "replay", "-q", str(bad))
    assert rc == 2
    assert_one_line(err, str(bad), expect)


def test_existing_json_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing --json output is left alone unless --force."""
    out = tmp_path / "r.json"
    out.write_text("keep me\n")
    rc, err = run_err(capsys, "replay", "-q", "--json", str(out), trace("touch-arm64"))
    assert rc == 2
    assert err == f"emu: {out}: already exists (use --force to overwrite)\n"
    assert out.read_text() == "keep me\n"
    rc, err = run_err(capsys, "replay", "-q", "--force", "--no-hw", "--json", str(out),
                      trace("touch-arm64"))
    assert (rc, err) == (0, "")
    assert json.loads(out.read_text())["accesses"]["write"] == raw("touch-arm64").writes


def test_copy_replays_the_same(tmp_path: Path) -> None:
    """A recording moved elsewhere replays alike: nothing depends on its path."""
    copy = tmp_path / "moved.emu"
    shutil.copy(trace("threads-x86_64"), copy)
    out = tmp_path / "m.json"
    assert main(["replay", "-q", "--no-hw", "--json", str(out), str(copy)]) == 0
    assert json.loads(out.read_text())["accesses"] == replay(
        tmp_path, "threads-x86_64", "--no-hw")["accesses"]
