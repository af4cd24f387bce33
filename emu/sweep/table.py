"""Cell results on disk, one small JSON file per finished cell, and the tidy table.

A cell's file is written (atomically) the moment it finishes, so an
interrupted sweep keeps everything done so far and a re-run skips it; the
table (one row per cell, the configuration as columns) is rebuilt from the
files of the grid's cells at the end of every run.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

from emu.errors import EmuError
from emu.sweep.plan import Cell

ID_COLUMNS = ["workload", "arch", "config"]
TAIL_COLUMNS = ["status", "error", "seconds", "worker", "recording", "recording_sha256", "key"]


class CellStore:
    """<output>/cells/<key>.json: what each cell produced (or why it failed)."""

    def __init__(self, output: Path) -> None:
        self.dir = output / "cells"

    def path(self, cell: Cell) -> Path:
        return self.dir / f"{cell.key}.json"

    def load(self, cell: Cell) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(cell).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def done(self, cell: Cell) -> bool:
        rec = self.load(cell)
        return rec is not None and rec.get("status") == "ok"

    def write(self, cell: Cell, status: str, *, metrics: dict[str, Any] | None = None,
              error: str | None = None, seconds: float | None = None,
              worker: str | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        rec = {"key": cell.key, "workload": cell.workload, "arch": cell.arch,
               "config": cell.config, "columns": dict(cell.columns), "flags": list(cell.flags),
               "recording": str(cell.recording), "recording_sha256": cell.recording_sha256,
               "status": status, "error": error, "seconds": seconds, "worker": worker,
               "metrics": metrics or {}}
        path = self.path(cell)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rec, sort_keys=True))
        os.replace(tmp, path)


def select_metrics(names: list[str], patterns: list[str]) -> list[str]:
    """Metric names matching the patterns, in pattern order, then name order."""
    out: list[str] = []
    for pat in patterns:
        out += sorted(n for n in names if fnmatch.fnmatchcase(n, pat) and n not in out)
    return out


def rows(cells: list[Cell], store: CellStore, patterns: list[str],
         config_columns: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per cell (cells not run yet are left out) and the column order."""
    records = [(c, store.load(c)) for c in cells]
    names = {n for _, r in records if r for n in r["metrics"]}
    metrics = select_metrics(sorted(names), patterns)
    out = []
    for c, rec in records:
        if rec is None:
            continue
        row: dict[str, Any] = {"workload": c.workload, "arch": c.arch, "config": c.config}
        cols = dict(c.columns)
        row.update({k: cols.get(k) for k in config_columns})
        row.update({k: rec.get(k) for k in TAIL_COLUMNS})
        row.update({m: rec["metrics"].get(m) for m in metrics})
        out.append(row)
    return out, ID_COLUMNS + config_columns + TAIL_COLUMNS + metrics


def _uniform(values: list[Any]) -> list[Any]:
    """One type per column: numbers stay numbers, anything mixed becomes text."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    if kinds <= {int, float} and float in kinds:
        return [None if v is None else float(v) for v in values]
    if len(kinds) > 1:
        return [None if v is None else str(v) for v in values]
    return values


def write_table(path: Path, table_rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Parquet (by pyarrow) or CSV by the file's suffix, replaced atomically."""
    import pyarrow as pa

    data = {c: _uniform([r.get(c) for r in table_rows]) for c in columns}
    table = pa.table(data) if table_rows else pa.table({c: pa.array([], pa.null())
                                                         for c in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".csv":
        import pyarrow.csv as pcsv
        pcsv.write_csv(table, tmp)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq
        pq.write_table(table, tmp)
    else:
        raise EmuError(f"{path}: give a .parquet or .csv name for the table")
    os.replace(tmp, path)


def read_table(path: Path) -> list[dict[str, Any]]:
    """The table's rows as dicts (for tests and scripts)."""
    if path.suffix == ".csv":
        import pyarrow.csv as pcsv
        return pcsv.read_csv(path).to_pylist()
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()
