"""`emu sweep GRID.toml`: replays of recordings × configurations on Dask, as one table.

The steps, each in its own module: grid.py reads and checks the grid,
record.py records the grid's binaries once, plan.py makes the cells and their
keys, driver.py runs the cells not yet done on Dask, table.py keeps each
cell's result and writes the table.  docs/sweeps.md has the format.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from emu.errors import EmuError

# Shown in the summary on stderr when present (x86 and arm64 perf names differ).
SUMMARY_METRICS = ["instructions", "dTLB-load-misses", "L2D_TLB_REFILL", "emu.walk_refs",
                   "kernel.vmstat.thp_fault_alloc", "khugepaged.khugepaged.pages_collapsed"]
SUMMARY_ROWS = 24


def main(args: argparse.Namespace) -> int:
    """Run the sweep; 0 if every cell is done, 1 if any failed."""
    from emu.sweep import driver, plan, record, table
    from emu.sweep.grid import load_grid

    grid = load_grid(args.grid)
    if args.output:
        out = Path(args.output)
        if grid.record_dir == grid.output / "recordings":
            grid.record_dir = out / "recordings"
        grid.table = out / grid.table.relative_to(grid.output)
        grid.output = out
    if args.table:
        grid.table = Path(args.table)
        if grid.table.suffix not in (".parquet", ".csv"):
            raise EmuError(f"--table {args.table}: give a .parquet or .csv name")
    if args.retries is not None:
        grid.retries = args.retries
    if args.workers is not None and args.workers < 1:
        raise EmuError(f"--workers {args.workers}: give at least 1")

    arches = {w: plan.workload_arch(w) for w in grid.workloads}
    plan.check_configs(grid, set(arches.values()))
    recordings = record.ensure_recordings(grid.workloads, grid.record_dir)
    cells = plan.make_cells(grid, recordings, arches)
    store = table.CellStore(grid.output)
    todo = [c for c in cells if not store.done(c)]
    skipped = len(cells) - len(todo)

    outcome = driver.Outcome()
    interrupted = False
    if todo:
        bar = None if args.quiet else driver.progress_bar()
        try:
            with driver.dask_client(args.scheduler, args.workers) as client:
                if bar is None:
                    outcome = driver.run_cells(client, todo, store, retries=grid.retries,
                                               send=args.send)
                else:
                    with bar:
                        task = bar.add_task("sweep", total=len(todo))
                        outcome = driver.run_cells(
                            client, todo, store, retries=grid.retries, send=args.send,
                            on_done=lambda _c, _s: bar.advance(task))
        except KeyboardInterrupt:
            interrupted = True
        except OSError as e:
            raise EmuError(f"scheduler {args.scheduler or 'local'}: {e}") from None

    table_rows, columns = table.rows(cells, store, grid.metrics,
                                     plan.config_column_names(grid.configs))
    table.write_table(grid.table, table_rows, columns)
    failed = [r for r in table_rows if r["status"] != "ok"]
    missing = len(cells) - len(table_rows)
    if not args.quiet:
        _summary(table_rows, columns)
    done = len(table_rows) - len(failed)
    print(f"emu sweep: {len(cells)} cells: {len(outcome.ran)} run, {skipped} skipped "
          f"(done before), {len(failed)} failed, {missing} not run; {done} done; "
          f"table: {grid.table}", file=sys.stderr)
    for r in failed[:10]:
        print(f"emu sweep: failed: {r['workload']}/{r['arch']} [{r['config']}]: {r['error']}",
              file=sys.stderr)
    if interrupted:
        print("emu sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if failed or missing else 0


def _summary(table_rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A short table on stderr: each cell's status and a few headline numbers."""
    from rich.console import Console
    from rich.table import Table

    shown = [m for m in columns if any(m == s or m.endswith("." + s) for s in SUMMARY_METRICS)]
    t = Table(box=None, pad_edge=False)
    for c in ["workload", "arch", "config", "status", *shown]:
        t.add_column(c.removeprefix("tlb.total."), justify="right" if c in shown else "left",
                     no_wrap=True)
    for r in table_rows[:SUMMARY_ROWS]:
        t.add_row(*[str(r.get(c)) if r.get(c) is not None else "" for c in
                    ["workload", "arch", "config", "status", *shown]])
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 250)
    console.print(t)
    if len(table_rows) > SUMMARY_ROWS:
        console.print(f"... {len(table_rows) - SUMMARY_ROWS} more rows in the table")
