"""Run cells on Dask distributed: a LocalCluster here, or an existing scheduler.

Each cell is one task with Dask's own retries; the client writes a cell's
result the moment its future finishes, so a worker that dies only costs the
cells it was running (Dask reruns them elsewhere) and a client that dies only
costs the cells in flight (a re-run skips what was written).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from emu.sweep.cell import run_cell
from emu.sweep.plan import Cell
from emu.sweep.table import CellStore


@dataclass
class Outcome:
    ran: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A client on the given scheduler, or on a LocalCluster of one process per core.

    One thread per worker: a replay holds the GIL, so parallelism comes from processes.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def _error_text(exc: BaseException | None) -> str:
    if exc is None:
        return "cancelled"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


def run_cells(client: Any, cells: list[Cell], store: CellStore, *, retries: int, send: bool,
              on_done: Callable[[Cell, str], None] | None = None) -> Outcome:
    """Submit every cell, record each as it finishes; never raises for a failed cell."""
    from distributed import as_completed

    outcome = Outcome()
    if not cells:
        return outcome
    sources: dict[str, Any] = {}
    for cell in cells:
        if cell.recording_sha256 in sources:
            continue
        if send:
            # Once per worker: scattered to every worker, then a task argument by reference.
            data = cell.recording.read_bytes()
            [sources[cell.recording_sha256]] = client.scatter([data], broadcast=True, hash=True)
        else:
            sources[cell.recording_sha256] = str(cell.recording)
    by_key: dict[str, Cell] = {}
    futures = []
    for cell in cells:
        fut = client.submit(run_cell, list(cell.flags), sources[cell.recording_sha256],
                            cell.recording_sha256, cell.config_toml, key=f"emu-cell-{cell.key}",
                            retries=retries, pure=False)
        by_key[fut.key] = cell
        futures.append(fut)
    for fut in as_completed(futures):
        cell = by_key[fut.key]
        if fut.status == "finished":
            res = fut.result()
            store.write(cell, "ok", metrics=res["metrics"], seconds=res["seconds"],
                        worker=res["worker"])
            outcome.ran.append(cell)
            status = "ok"
        else:
            try:
                exc = fut.exception()
            except Exception as e:          # cancelled futures raise here
                exc = e
            error = _error_text(exc)
            store.write(cell, "failed", error=error)
            outcome.failed.append((cell, error))
            status = "failed"
        fut.release()
        if on_done:
            on_done(cell, status)
    return outcome


def progress_bar() -> Any:
    """A rich progress bar on a terminal; None (silent) otherwise."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)
