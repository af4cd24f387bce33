"""The sweep's cells: each workload's recording × each configuration, with a stable key.

A cell's key hashes what determines its numbers (the recording's bytes and the
replay flags, a --config file by its content), so a re-run recognises the cells
it has already done even after files move, and a changed recording runs anew.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emu.errors import EmuError
from emu.sweep.grid import Config, Grid, Workload, column_value, flags_for
from emu.sweep.record import file_sha256


@dataclass(frozen=True)
class Cell:
    key: str
    workload: str
    arch: str
    recording: Path
    recording_sha256: str
    config: str                          # the configuration's label
    columns: tuple[tuple[str, Any], ...]  # grid key -> value, as table columns
    flags: tuple[str, ...]                # emu replay flags
    config_toml: str | None               # --config file's text, shipped with the cell

    def describe(self) -> str:
        return f"{self.workload}/{self.arch} [{self.config}]"


def workload_arch(w: Workload) -> str:
    """The architecture a workload runs on, from its recording or ELF; checked against {arch}."""
    if w.recording is not None:
        from emu.trace.reader import read_meta
        arch = read_meta(w.recording).get("arch")
        where = str(w.recording)
    else:
        from emu.guest.elf import inspect_elf
        assert w.binary is not None
        arch = inspect_elf(str(w.binary)).arch
        where = str(w.binary)
    if w.arch is not None and arch != w.arch:
        raise EmuError(f"workload {w.name}: {where} is {arch}, not {w.arch}")
    return str(arch)


def check_configs(grid: Grid, arches: set[str]) -> None:
    """Every configuration through the model's own option checks, on every arch it meets."""
    from emu.options import build_parser
    from emu.session import plan_model

    parser = build_parser()
    for arch in sorted(arches):
        for c in grid.configs:
            flags = flags_for(c.resolved(arch))
            args = parser.parse_args(["replay", *flags, "-"])
            try:
                plan_model(arch, args)
            except EmuError as e:
                raise EmuError(f"config {c.label} on {arch}: {e}") from None


def cell_key(recording_sha: str, flags: list[str], config_toml: str | None) -> str:
    ident = [recording_sha, flags]
    if config_toml is not None:
        i = flags.index("--config")
        ident = [recording_sha, flags[:i + 1] + ["sha256:" + hashlib.sha256(
            config_toml.encode()).hexdigest()] + flags[i + 2:]]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]


def make_cells(grid: Grid, recordings: dict[Workload, Path],
               arches: dict[Workload, str]) -> list[Cell]:
    """All cells, workload-major, in grid order."""
    cells: list[Cell] = []
    shas: dict[Path, str] = {}
    for w in grid.workloads:
        rec = recordings[w].resolve()
        sha = shas.setdefault(rec, file_sha256(rec))
        arch = arches[w]
        for c in grid.configs:
            values = c.resolved(arch)
            flags = flags_for(values)
            toml = Path(values["config"]).read_text() if "config" in values else None
            cells.append(Cell(
                key=cell_key(sha, flags, toml), workload=w.name, arch=arch, recording=rec,
                recording_sha256=sha, config=c.label,
                columns=tuple((k, column_value(k, v)) for k, v in sorted(values.items())),
                flags=tuple(flags), config_toml=toml))
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.key in seen:
            raise EmuError(f"{cell.describe()} and {seen[cell.key].describe()} are the same "
                           "replay (same recording and flags)")
        seen[cell.key] = cell
    return cells


def config_column_names(configs: list[Config]) -> list[str]:
    return sorted({k for c in configs for k in c.values})
