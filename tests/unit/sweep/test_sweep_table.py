"""Cell files and the table: flattening, metric choice, Parquet and CSV round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from emu.sweep.cell import flatten
from emu.sweep.plan import Cell
from emu.sweep.table import CellStore, read_table, rows, select_metrics, write_table


def cell(key: str, config: str, columns: tuple = ()) -> Cell:
    return Cell(key=key, workload="w", arch="x86_64", recording=Path("/r.trace"),
                recording_sha256="s" * 64, config=config, columns=columns, flags=(),
                config_toml=None)


def test_flatten_keeps_scalars_under_dotted_paths():
    doc = {"instructions": 5, "tlb": {"total": {"dTLB-loads": 3}, "per_cpu": {"0": {"a": 1}},
                                      "profile": "zen4"},
           "syscalls": [{"nr": 1}], "kernel": {"vmstat": {"pgfault": 2}}}
    assert flatten(doc) == {"instructions": 5, "tlb.total.dTLB-loads": 3,
                            "tlb.profile": "zen4", "kernel.vmstat.pgfault": 2}


def test_select_metrics_in_pattern_order():
    names = ["b", "a", "tlb.total.y", "tlb.total.x", "kernel.vmstat.pgfault"]
    assert select_metrics(names, ["tlb.total.*", "a", "tlb.*"]) == [
        "tlb.total.x", "tlb.total.y", "a"]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_rows_from_cell_files_round_trip(tmp_path, suffix):
    store = CellStore(tmp_path)
    c1 = cell("k1", "thp=never", (("thp", "never"),))
    c2 = cell("k2", "ns", (("ns_per_insn", 1),))
    c3 = cell("k3", "ns2", (("ns_per_insn", 0.5),))
    c4 = cell("k4", "not run")
    store.write(c1, "ok", metrics={"instructions": 10, "tlb.profile": "zen4"}, seconds=0.1,
                worker="h:1")
    store.write(c2, "failed", error="CellError: damaged")
    store.write(c3, "ok", metrics={"instructions": 12, "other": 1}, seconds=0.2, worker="h:2")
    assert store.done(c1) and not store.done(c2) and not store.done(c4)
    table_rows, columns = rows([c1, c2, c3, c4], store, ["instructions", "tlb.*"],
                               ["ns_per_insn", "thp"])
    assert columns[:5] == ["workload", "arch", "config", "ns_per_insn", "thp"]
    assert columns[-2:] == ["instructions", "tlb.profile"]
    path = tmp_path / f"t{suffix}"
    write_table(path, table_rows, columns)
    back = read_table(path)
    assert [r["key"] for r in back] == ["k1", "k2", "k3"]
    assert [r["status"] for r in back] == ["ok", "failed", "ok"]
    assert [r["instructions"] for r in back] == [10, None, 12]
    assert [r["ns_per_insn"] for r in back] == [None, 1.0, 0.5]
    assert back[1]["error"] == "CellError: damaged"
