"""Shared helpers for the tests that replay the committed recordings in tests/data/.

Expected numbers come from two sources that do not go through the model: the
guest's own truth line (NAME-ARCH.stdout) and the raw events of the recording,
counted here with numpy straight from emu.trace.reader.read_all.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from emu.guest.truth import parse_truth
from emu.trace import events as ev
from emu.trace.reader import read_all

DATA = Path(__file__).resolve().parents[1] / "data"
ARCHES = ("x86_64", "arm64")
WORKLOADS = ("touch", "forker", "threads", "collapse", "sparse", "churn")
ALL = tuple(f"{w}-{a}" for w in WORKLOADS for a in ARCHES)


def trace(name: str) -> str:
    """Path of the recording NAME-ARCH.emu."""
    return str(DATA / f"{name}.emu")


@cache
def truth(name: str) -> dict[str, Any]:
    """The guest's own ground truth, as it printed it when recorded."""
    return parse_truth((DATA / f"{name}.stdout").read_text())


@dataclass
class Raw:
    """What the recording holds, counted from its events without the model."""

    events: int
    reads: int
    writes: int
    fetches: int
    pids: list[int]                          # in PROC_START order
    parent: dict[int, int]
    exit_status: dict[int, int]
    vcpu_starts: Counter[tuple[int, int]]    # (pid, vCPU) -> VCPU_START records
    instructions: dict[tuple[int, int], int]  # (pid, vCPU) -> last icount - first icount
    pages: dict[int, int]                    # pid -> distinct 4 KiB pages read or written
    marks: list[tuple[int, int]]             # (pid, id) in stream order
    syscalls: list[tuple[int, int, tuple[int, ...], int]]  # (pid, nr, args, ret), no marks
    region: dict[int, dict[str, int]] = field(default_factory=dict)  # pid -> region R/W
    region_pages: dict[int, int] = field(default_factory=dict)
    per_vcpu_region: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)


@cache
def raw(name: str) -> Raw:
    """Count the recording's events (the truth's region, when it has one)."""
    b = read_all(trace(name))
    e, sc = b.events, b.syscalls
    kind, pid, vcpu = e["kind"], e["pid"].astype(np.int64), e["vcpu"].astype(np.int64)
    acc = (kind == ev.READ) | (kind == ev.WRITE)
    cnt = e["count"].astype(np.int64)
    starts = e[kind == ev.PROC_START]
    exits = e[kind == ev.PROC_EXIT]
    key = pid << 16 | vcpu
    instructions = {}
    for k in np.unique(key).tolist():
        ic = e["icount"][key == k].astype(np.int64)
        instructions[(k >> 16, k & 0xFFFF)] = int(ic.max() - ic.min())
    pages = {}
    for p in np.unique(pid).tolist():
        sel = acc & (pid == p)
        pages[p] = len(np.unique(e["addr"][sel] >> np.uint64(ev.PAGE_SHIFT)))
    marks = [(int(r["pid"]), int(r["addr"])) for r in e[kind == ev.MARK]]
    calls = []
    for r in e[kind == ev.SYSCALL]:
        s = sc[int(r["count"])]
        if int(s["nr"]) == ev.EMU_MARK_NR:
            marks.append((int(r["pid"]), int(s["args"][0])))
            continue
        calls.append((int(r["pid"]), int(s["nr"]), tuple(int(a) for a in s["args"]),
                      int(s["ret"])))
    out = Raw(
        events=len(e),
        reads=int(cnt[kind == ev.READ].sum()),
        writes=int(cnt[kind == ev.WRITE].sum()),
        fetches=int((kind == ev.FETCH).sum()),
        pids=[int(p) for p in starts["pid"]],
        parent={int(r["pid"]): int(r["addr"]) for r in starts},
        exit_status={int(r["pid"]): int(r["addr"]) for r in exits},
        vcpu_starts=Counter((int(r["pid"]), int(r["vcpu"])) for r in e[kind == ev.VCPU_START]),
        instructions=instructions,
        pages=pages,
        marks=marks,
        syscalls=calls,
    )
    region = truth(name).get("region")
    if region:
        inside = acc & (e["addr"] >= np.uint64(region["start"])) & (
            e["addr"] < np.uint64(region["end"]))
        for p in out.pids:
            sel = inside & (pid == p)
            out.region[p] = {"read": int(cnt[sel & (kind == ev.READ)].sum()),
                             "write": int(cnt[sel & (kind == ev.WRITE)].sum())}
            out.region_pages[p] = len(np.unique(e["addr"][sel]))
        for k in instructions:
            sel = inside & (pid == k[0]) & (vcpu == k[1])
            out.per_vcpu_region[k] = (int(cnt[sel & (kind == ev.READ)].sum()),
                                      int(cnt[sel & (kind == ev.WRITE)].sum()))
    return out


_RESULTS: dict[tuple[str, ...], dict[str, Any]] = {}


def replay(tmp_path: Path, name: str, *opts: str) -> dict[str, Any]:
    """`emu replay -q --json OUT NAME.emu OPTS` through emu.cli.main, as parsed JSON.

    Results are cached per (name, options): the model is deterministic, and
    replaying each recording once keeps the tests fast.  Treat them as read-only.
    """
    from emu.cli import main

    key = (name, *opts)
    if key not in _RESULTS:
        out = tmp_path / f"{name}-{len(_RESULTS)}.json"
        assert main(["replay", "-q", "--json", str(out), trace(name), *opts]) == 0
        _RESULTS[key] = json.loads(out.read_text())
    return _RESULTS[key]


def region_vma(result: dict[str, Any], name: str, pid: int | None = None) -> dict[str, Any]:
    """The one VMA (of pid, default the first process) holding the truth's region."""
    region = truth(name)["region"]
    pid = pid if pid is not None else result["processes"][0]["pid"]
    hits = [v for v in result["vmas"] if v["pid"] == pid and v["start"] is not None
            and v["start"] <= region["start"] and region["end"] <= v["end"]]
    assert len(hits) == 1, hits
    return hits[0]
