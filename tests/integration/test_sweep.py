"""`emu sweep` on real recordings and a real Dask cluster: equal to serial replays,
nothing lost to a killed worker or client, failures recorded and retried."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from emu.sweep.cell import flatten
from emu.sweep.table import read_table

REPO = Path(__file__).resolve().parents[2]
EMU = [sys.executable, "-m", "emu.cli"]
ARCHES = ["x86_64", "arm64"]
WORKLOADS = {"random": ["-m", "4", "-i", "20000"], "touch": ["-m", "4"]}

pytestmark = pytest.mark.integration

# Six configurations: three kinds of policy × thp always/never.
GRID = """
[sweep]
retries = 1

[[workload]]
name = "random"
recording = "random-{arch}.trace"

[[workload]]
name = "touch"
recording = "touch-{arch}.trace"

[[config]]
name = "base"

[[config]]
name = "mthp64"
mthp = "64K=always,2M=never"

[[config]]
name = "khugepaged"
khugepaged = "fast"
collapse_algo = "v5"
at_mark = "1:max_ptes_none=0"
profile = { x86_64 = "zen4", arm64 = "neoverse_v2" }

[grid]
thp = ["always", "never"]
"""


def emu(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([*EMU, *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                       **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"emu {' '.join(args)} -> {p.returncode}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    """random and touch recorded on both architectures (small arguments)."""
    d = tmp_path_factory.mktemp("traces")
    jobs = []
    for arch in ARCHES:
        for name, gargs in WORKLOADS.items():
            binary = REPO / "build" / "guest" / arch / name
            if not binary.exists() or not (REPO / "build" / "libemu.so").exists():
                pytest.skip(f"{binary} or the plugin is not built (bash setup.sh)")
            jobs.append(("run", "-q", "--no-hw", "--record", str(d / f"{name}-{arch}.trace"),
                         "--", str(binary), *gargs))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda a: emu(*a), jobs))
    return d


@pytest.fixture(scope="module")
def cluster():
    """A two-worker LocalCluster the sweeps reach with --scheduler (its workers can be killed)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as c, \
            Client(c) as client:
        yield c, client


def grid_in(folder: Path, traces: Path, text: str = GRID) -> Path:
    folder.mkdir(exist_ok=True)
    for t in traces.iterdir():
        target = folder / t.name
        if not target.exists():
            target.symlink_to(t)
    g = folder / "grid.toml"
    g.write_text(text)
    return g


def cell_files(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def test_sweep_equals_serial_replays_cell_by_cell(tmp_path, traces):
    g = grid_in(tmp_path / "g", traces)
    out = tmp_path / "out"
    p = emu("sweep", str(g), "--workers", "2", "--output", str(out))
    assert "24 cells: 24 run, 0 skipped" in p.stderr
    assert "table: " + str(out / "results.parquet") in p.stderr
    table = read_table(out / "results.parquet")
    assert len(table) == 24 == len({(r["workload"], r["arch"], r["config"]) for r in table})
    assert {r["status"] for r in table} == {"ok"}
    cells = cell_files(out)

    def serial(key: str) -> dict:
        rec = cells[key]
        j = tmp_path / f"serial-{key}.json"
        emu("replay", "-q", "--json", str(j), *rec["flags"], rec["recording"])
        return flatten(json.loads(j.read_text()))

    with ThreadPoolExecutor(2) as pool:     # independent serial replays, two at a time
        expected = dict(zip(cells, pool.map(serial, cells), strict=True))
    for key, rec in cells.items():
        assert rec["metrics"] == expected[key], rec["config"]
    for row in table:
        flat = expected[row["key"]]
        for name in ("instructions", "kernel.vmstat.pgfault", "kernel.vmstat.thp_fault_alloc",
                     "tlb.total.emu.walk_refs", "khugepaged.khugepaged.pages_collapsed"):
            assert row[name] == flat[name], (row["config"], name)
    # The configurations are columns, and they changed the numbers.
    by = {(r["workload"], r["arch"], r["config"]): r for r in table}
    assert by[("random", "arm64", "khugepaged thp=never")]["profile"] == "neoverse_v2"
    assert by[("random", "x86_64", "base thp=always")]["thp"] == "always"
    assert (by[("random", "x86_64", "base thp=always")]["tlb.total.dTLB-load-misses"]
            < by[("random", "x86_64", "base thp=never")]["tlb.total.dTLB-load-misses"])


def _wait_for_cells(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        have = len(list((out / "cells").glob("*.json"))) if (out / "cells").exists() else 0
        if have >= n or proc.poll() is not None:
            return have
        time.sleep(0.05)
    raise AssertionError("the sweep wrote no cells")


def test_killed_worker_loses_no_cell(tmp_path, traces, cluster):
    _, client = cluster
    g = grid_in(tmp_path / "g", traces)
    out = tmp_path / "out"
    proc = subprocess.Popen([*EMU, "sweep", str(g), "-q", "--scheduler",
                             client.scheduler.address, "--output", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    have = _wait_for_cells(out, 2, proc)
    assert have < 24, "the sweep ended before a worker could be killed"
    victim = max(client.run(os.getpid).values())
    os.kill(victim, signal.SIGKILL)                 # mid-cell: both workers are busy
    time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before the worker died"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "24 cells: 24 run, 0 skipped (done before), 0 failed" in err
    recs = cell_files(out)
    assert len(recs) == 24 and {r["status"] for r in recs.values()} == {"ok"}
    client.wait_for_workers(2, timeout=60)          # the nanny restarted it


def test_interrupted_sweep_resumes_with_only_missing_cells(tmp_path, traces, cluster):
    _, client = cluster
    g = grid_in(tmp_path / "g", traces)
    out = tmp_path / "out"
    cmd = [*EMU, "sweep", str(g), "-q", "--scheduler", client.scheduler.address,
           "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    have = _wait_for_cells(out, 3, proc)
    proc.kill()                                      # the client dies: no clean-up at all
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert 3 <= len(before) < 24 and have <= len(before)
    p = emu(*cmd[3:])
    assert f"24 cells: {24 - len(before)} run, {len(before)} skipped (done before)" in p.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(after) == 24 and all(after[n] == t for n, t in before.items())
    assert len(read_table(out / "results.parquet")) == 24
    p = emu(*cmd[3:])
    assert "24 cells: 0 run, 24 skipped" in p.stderr


def test_failed_cell_is_reported_not_fatal(tmp_path, traces, cluster):
    _, client = cluster
    folder = tmp_path / "g"
    folder.mkdir()
    data = (traces / "touch-x86_64.trace").read_bytes()
    (folder / "bad.trace").write_bytes(data[: len(data) // 2])   # a valid header, cut short
    (folder / "good.trace").symlink_to(traces / "touch-x86_64.trace")
    g = folder / "grid.toml"
    g.write_text('[sweep]\nretries = 1\ntable = "t.csv"\n'
                 '[[workload]]\nrecording = "bad.trace"\n[[workload]]\nrecording = "good.trace"\n'
                 '[grid]\nthp = ["always", "never"]\n')
    out = tmp_path / "out"
    args = ["sweep", str(g), "--scheduler", client.scheduler.address, "--output", str(out),
            "--send"]
    p = emu(*args, check=False)
    assert p.returncode == 1, p.stderr
    assert "4 cells: 2 run, 0 skipped (done before), 2 failed" in p.stderr
    assert "failed: bad/x86_64 [thp=always]: CellError: " in p.stderr
    assert "Traceback" not in p.stderr
    rows = {(r["workload"], r["config"]): r for r in read_table(out / "t.csv")}
    assert rows[("bad", "thp=never")]["status"] == "failed"
    assert "truncated" in rows[("bad", "thp=never")]["error"]
    assert rows[("good", "thp=never")]["status"] == "ok"
    assert rows[("good", "thp=never")]["instructions"] > 0
    p = emu(*args, check=False)                      # failed cells are tried again
    assert p.returncode == 1 and "4 cells: 0 run, 2 skipped (done before), 2 failed" in p.stderr
