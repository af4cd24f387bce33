"""Binaries in a grid are recorded once, into a cache, before the sweep starts.

A recording holds the program's behaviour, not the model's, so one `emu run
--record` per (binary, arguments, architecture) serves every configuration;
the cache name hashes the binary's bytes and the arguments, so an edited
binary or other arguments record anew and a re-run reuses what it has.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from emu.errors import EmuError
from emu.sweep.grid import Workload


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_path(w: Workload, record_dir: Path) -> Path:
    """Where this workload's recording is kept: named by what determines its content."""
    assert w.binary is not None
    ident = json.dumps([file_sha256(w.binary), list(w.args), w.utlb, w.sysroot])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return record_dir / f"{w.name}-{w.arch or 'native'}-{digest}.trace"


def record(w: Workload, dest: Path) -> None:
    """`emu run --no-hw --record` (the model is not needed to record), atomically."""
    assert w.binary is not None
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    cmd = [sys.executable, "-m", "emu.cli", "run", "-q", "--no-hw", "--force", "--record",
           str(tmp)]
    cmd += ["--utlb", str(w.utlb)]     # explicit: a grid's workload says its micro-TLB
    if w.sysroot:
        cmd += ["--sysroot", w.sysroot]
    cmd += ["--", str(w.binary), *w.args]
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = p.stderr.strip().splitlines()
    emu_errors = [ln for ln in lines if ln.startswith("emu: ")]
    if not tmp.exists() or (p.returncode != 0 and emu_errors):
        tmp.unlink(missing_ok=True)
        last = (emu_errors or lines or [f"exit status {p.returncode}"])[-1]
        raise EmuError(f"recording workload {w.name} ({w.arch or 'native'}) failed: {last}")
    os.replace(tmp, dest)


def ensure_recordings(workloads: list[Workload], record_dir: Path,
                      jobs: int | None = None) -> dict[Workload, Path]:
    """Every workload's recording: given ones as they are, binaries recorded if not cached."""
    paths: dict[Workload, Path] = {}
    todo: list[tuple[Workload, Path]] = []
    for w in workloads:
        if w.recording is not None:
            paths[w] = w.recording
        else:
            dest = cache_path(w, record_dir)
            paths[w] = dest
            if not dest.exists():
                todo.append((w, dest))
    if todo:
        record_dir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            for f in [pool.submit(record, w, dest) for w, dest in todo]:
                f.result()
    return paths
