"""GRID.toml: workloads × architectures × configurations, checked before anything runs.

A sweep is only worth starting if every cell can run, so every problem the
file can have (unknown key, bad value, missing recording or binary, a profile
for the wrong architecture) is one EmuError naming where it is.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emu.errors import EmuError

ARCHES = ("x86_64", "arm64")

# Grid key (the kernel's / emu replay's name, underscores) -> replay flag.
FLAGS: dict[str, str] = {
    "thp": "--thp",
    "mthp": "--mthp",
    "config": "--config",
    "profile": "--profile",
    "no_hw": "--no-hw",
    "memory": "--memory",
    "fragment": "--fragment",
    "at_mark": "--at-mark",
    "khugepaged": "--khugepaged",
    "collapse_algo": "--collapse-algo",
    "ns_per_insn": "--ns-per-insn",
}
CHOICES = {"khugepaged": ("off", "default", "fast"), "collapse_algo": ("v19", "v5"),
           "thp": ("always", "madvise", "never")}

# Scalar results (dotted paths into the replay JSON, fnmatch patterns) in the table.
DEFAULT_METRICS = [
    "exit_status", "instructions", "accesses.*", "pages_touched", "events",
    "tlb.profile", "tlb.total.*", "tlb.unresolved_faults",
    "kernel.vmstat.*",
    "khugepaged.khugepaged.pages_collapsed", "khugepaged.khugepaged.full_scans",
    "khugepaged.khugepaged.passes", "khugepaged.collapses_by_size_kb.*",
    "khugepaged.guest_stalls.*",
]

SWEEP_KEYS = {"output", "table", "metrics", "retries", "arch", "record_dir"}
WORKLOAD_KEYS = {"name", "recording", "binary", "args", "arch", "utlb", "sysroot"}
TOP_KEYS = {"sweep", "workload", "grid", "config"}


@dataclass(frozen=True)
class Workload:
    """One workload on one architecture: a recording, or a binary to record first."""

    name: str
    arch: str | None            # None: whatever the recording/ELF says (no {arch} in it)
    recording: Path | None = None
    binary: Path | None = None
    args: tuple[str, ...] = ()
    utlb: int = 0
    sysroot: str | None = None


@dataclass(frozen=True)
class Config:
    """One point of the configuration grid; values may differ per architecture."""

    label: str
    values: dict[str, Any]       # grid key -> value (or {arch: value})

    def resolved(self, arch: str) -> dict[str, Any]:
        """The values for a cell on this architecture (per-arch tables picked)."""
        out = {}
        for k, v in self.values.items():
            if isinstance(v, dict):
                if arch not in v:
                    raise EmuError(f"config {self.label}: {k} has no value for {arch}")
                v = v[arch]
            out[k] = v
        return out


@dataclass
class Grid:
    path: Path
    workloads: list[Workload]
    configs: list[Config]
    output: Path
    table: Path
    record_dir: Path
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    retries: int = 2


def flags_for(values: dict[str, Any]) -> list[str]:
    """The `emu replay` flags for one cell's resolved configuration."""
    flags: list[str] = []
    for key in sorted(values):
        v = values[key]
        flag = FLAGS[key]
        if key == "no_hw":
            if v:
                flags.append(flag)
        elif key == "at_mark":
            for spec in ([v] if isinstance(v, str) else v):
                flags += [flag, spec]
        else:
            flags += [flag, str(v)]
    return flags


def column_value(key: str, value: Any) -> Any:
    """A configuration value as it appears in its table column."""
    if key == "at_mark":
        return " ".join([value] if isinstance(value, str) else value)
    return value


def load_grid(path: str | Path) -> Grid:
    """Parse and check GRID.toml (paths relative to its folder)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EmuError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EmuError(f"{path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise EmuError(f"{path}: not TOML: {e}") from None
    return parse_grid(doc, path)


def parse_grid(doc: dict[str, Any], path: Path) -> Grid:
    """The Grid a parsed TOML document describes; `path` anchors relative paths."""
    base = path.parent
    _unknown(doc, TOP_KEYS, f"{path}")
    sweep = _table(doc.get("sweep", {}), "[sweep]")
    _unknown(sweep, SWEEP_KEYS, "[sweep]")
    arches = _arch_list(sweep.get("arch", list(ARCHES)), "[sweep] arch")
    output = base / str(sweep.get("output", f"{path.stem}-sweep"))
    table = output / str(sweep.get("table", "results.parquet"))
    if table.suffix not in (".parquet", ".csv"):
        raise EmuError(f"[sweep] table {table.name}: give a .parquet or .csv name")
    metrics = sweep.get("metrics", DEFAULT_METRICS)
    if not (isinstance(metrics, list) and metrics and all(isinstance(m, str) for m in metrics)):
        raise EmuError("[sweep] metrics: give a list of patterns, e.g. [\"tlb.total.*\"]")
    retries = sweep.get("retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise EmuError(f"[sweep] retries {retries!r}: give a number from 0 to 100")
    record_dir = output / "recordings"
    if "record_dir" in sweep:
        record_dir = base / str(sweep["record_dir"])
    workloads = _workloads(doc.get("workload"), base, arches)
    configs = _configs(doc.get("grid", {}), doc.get("config"), base)
    return Grid(path, workloads, configs, output, table, record_dir, list(metrics), retries)


def _unknown(d: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise EmuError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(sorted(known))})")


def _table(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise EmuError(f"{where}: must be a table")
    return v


def _arch_list(v: Any, where: str) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or any(a not in ARCHES for a in items):
        raise EmuError(f"{where} {v!r}: give x86_64, arm64 or a list of them")
    return list(dict.fromkeys(items))


def _workloads(raw: Any, base: Path, arches: list[str]) -> list[Workload]:
    if not isinstance(raw, list) or not raw:
        raise EmuError("no [[workload]]: give at least one recording or binary")
    out: list[Workload] = []
    names: set[tuple[str, str | None]] = set()
    for i, w in enumerate(raw):
        where = f"[[workload]] #{i + 1}"
        w = _table(w, where)
        _unknown(w, WORKLOAD_KEYS, where)
        if ("recording" in w) == ("binary" in w):
            raise EmuError(f"{where}: give either recording or binary")
        kind = "recording" if "recording" in w else "binary"
        template = w[kind]
        if not isinstance(template, str):
            raise EmuError(f"{where}: {kind} must be a path")
        name = w.get("name", Path(template).stem.replace("{arch}", "").strip("-_.") or template)
        where = f"workload {name}"
        args = w.get("args", [])
        if kind == "recording" and "args" in w:
            raise EmuError(f"{where}: args belong to a binary (a recording has its own)")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise EmuError(f"{where}: args must be a list of strings")
        utlb = w.get("utlb", 0)
        if not isinstance(utlb, int) or utlb < 0 or utlb > 256 or (utlb & (utlb - 1)):
            raise EmuError(f"{where}: utlb {utlb!r}: give 0 or a power of two up to 256")
        w_arches: list[str | None]
        if "{arch}" in template:
            w_arches = list(_arch_list(w.get("arch", arches), f"{where} arch"))
        else:
            if "arch" in w:
                raise EmuError(f"{where}: arch needs {{arch}} in the {kind} path")
            w_arches = [None]
        for arch in w_arches:
            p = base / (template.replace("{arch}", arch) if arch else template)
            if not p.is_file():
                raise EmuError(f"{where}: {p}: no such file")
            if (name, arch) in names:
                raise EmuError(f"{where}: two workloads named {name} on {arch or 'one arch'}")
            names.add((name, arch))
            if kind == "recording":
                out.append(Workload(name, arch, recording=p))
            else:
                out.append(Workload(name, arch, binary=p, args=tuple(args), utlb=utlb,
                                    sysroot=w.get("sysroot")))
    return out


def _check_value(key: str, v: Any, where: str, base: Path) -> Any:
    """One configuration value, type-checked (the model checks the rest per arch)."""
    if key not in FLAGS:
        raise EmuError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(FLAGS))})")
    if isinstance(v, dict):
        if key in ("at_mark", "config", "no_hw") or not v or set(v) - set(ARCHES):
            raise EmuError(f"{where}: {key} {v!r}: a per-architecture value is a table "
                           "with keys x86_64 and arm64")
        return {a: _check_value(key, x, where, base) for a, x in v.items()}
    if key == "no_hw":
        ok = isinstance(v, bool)
    elif key == "at_mark":
        ok = isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v))
    elif key == "ns_per_insn":
        ok = isinstance(v, int | float) and not isinstance(v, bool) and v > 0
    elif key == "fragment":
        ok = isinstance(v, str | float | int) and not isinstance(v, bool)
    else:
        ok = isinstance(v, str)
    if ok and key in CHOICES:
        ok = v in CHOICES[key]
    if not ok:
        hint = f" (one of {', '.join(CHOICES[key])})" if key in CHOICES else ""
        raise EmuError(f"{where}: {key} = {v!r} is not a valid value{hint}")
    if key == "config":
        p = base / v
        if not p.is_file():
            raise EmuError(f"{where}: config {p}: no such file")
        return str(p)
    return v


def _label(values: dict[str, Any]) -> str:
    parts = []
    for k in sorted(values):
        v = values[k]
        if isinstance(v, dict):
            v = "/".join(str(v[a]) for a in ARCHES if a in v)
        elif isinstance(v, list):
            v = "+".join(v)
        elif k == "config":
            v = Path(v).name
        parts.append(f"{k}={v}")
    return " ".join(parts) or "defaults"


def _configs(grid: Any, explicit: Any, base: Path) -> list[Config]:
    """[[config]] points (or one empty point) × the product of [grid] lists."""
    grid = _table(grid, "[grid]")
    axes: list[tuple[str, list[Any]]] = []
    for key, vals in grid.items():
        vals = vals if isinstance(vals, list) else [vals]   # a list is an axis
        if not vals:
            raise EmuError(f"[grid] {key}: empty list")
        axes.append((key, [_check_value(key, v, "[grid]", base) for v in vals]))
    points: list[tuple[str | None, dict[str, Any]]] = []
    if explicit is None:
        points.append((None, {}))
    elif not isinstance(explicit, list):
        raise EmuError("[[config]]: must be an array of tables")
    else:
        for i, c in enumerate(explicit):
            c = dict(_table(c, f"[[config]] #{i + 1}"))
            name = c.pop("name", None)
            where = f"config {name or '#' + str(i + 1)}"
            points.append((name, {k: _check_value(k, v, where, base) for k, v in c.items()}))
    configs: list[Config] = []
    labels: set[str] = set()
    for (name, fixed), combo in itertools.product(points, itertools.product(
            *[[(k, v) for v in vals] for k, vals in axes])):
        values = dict(fixed)
        for k, v in combo:
            if k in values:
                raise EmuError(f"config {name}: {k} is set both in [[config]] and [grid]")
            values[k] = v
        label = _label(values) if name is None else (
            name + (" " + _label(dict(combo)) if combo else ""))
        if label in labels:
            raise EmuError(f"two configurations are the same: {label}")
        labels.add(label)
        configs.append(Config(label, values))
    return configs
