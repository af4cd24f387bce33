"""The sysfs files of /sys/kernel/mm/transparent_hugepage/ as emu's one settings grammar.

An admin sets THP up by writing these files before starting a program, and
while it runs; emu takes the same paths and values from ``--sysfs PATH=VALUE``,
``--config`` TOML files and ``--at-mark ID:PATH=VALUE``, parsed here and only
here.  Which files exist and what each sets is data (data/sysfs.toml); the
values are checked as the kernel's store functions check them (an error names
the path, as the write would fail with -EINVAL).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from emu.arch import PMD_ORDER
from emu.errors import EmuError
from emu.kernel.config import (
    DEFRAG_VALUES,
    ENABLED_VALUES,
    PER_SIZE_VALUES,
    ThpConfig,
    anon_orders,
    order_to_kb,
    parse_size_kb,
)
from emu.kernel.khugepaged.knobs import KhugepagedKnobs

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage/"
_PER_SIZE = re.compile(r"hugepages-([^/]+)/(enabled|shmem_enabled)")


def _table() -> dict[str, dict[str, str]]:
    text = resources.files("emu.kernel").joinpath("data", "sysfs.toml").read_text()
    return tomllib.loads(text)


@dataclass(frozen=True)
class Setting:
    """One sysfs write: the file (relative to THP_SYSFS) and its parsed value.

    ``target`` is "thp" (a ThpConfig field), "per_size" (``name`` is the size in
    kB) or "khugepaged" (a KhugepagedKnobs knob).
    """

    path: str
    target: str
    name: Any
    value: Any

    def apply(self, config: ThpConfig | None = None,
              knobs: KhugepagedKnobs | None = None) -> None:
        """Write the value where it belongs (the caller passes what it has)."""
        if self.target == "khugepaged":
            if knobs is not None:
                knobs.set(self.name, self.value)
        elif config is not None:
            if self.target == "per_size":
                config.hugepages[self.name] = self.value
            else:
                setattr(config, self.name, self.value)
            config.validate()


def relative(path: str) -> str:
    """The path under THP_SYSFS, whether given in full or relative."""
    p = path.strip()
    if p.startswith(THP_SYSFS):
        p = p[len(THP_SYSFS):]
    return p.strip("/")


def _generic(path: str) -> str:
    """hugepages-64kB/enabled -> hugepages-<size>kB/enabled (the table's key)."""
    m = _PER_SIZE.fullmatch(path)
    return f"hugepages-<size>kB/{m.group(2)}" if m else path


def known_paths() -> list[str]:
    """Every writable file, for error messages and docs."""
    return list(_table()["files"])


def parse(path: str, value: Any, where: str = "--sysfs") -> Setting:
    """Check one PATH=VALUE as the kernel's store function would; EmuError names both."""
    rel = relative(path)
    where = where if where.endswith(":") else where + " "     # "--at-mark 2:" + path
    text = str(int(value)) if isinstance(value, bool) else str(value).strip()
    table = _table()
    key = _generic(rel)
    what = table["files"].get(key)
    if what is None:
        why = table["read_only"].get(key) or table["not_modelled"].get(key)
        if why:
            raise EmuError(f"{where}{rel}: {why}")
        raise EmuError(f"{where}{rel}: no such file under {THP_SYSFS} (writable: "
                       + ", ".join(known_paths()) + ")")
    kind, _, name = what.partition(".")
    bad = f"{where}{rel}={text}"
    if kind == "per_size":
        m = _PER_SIZE.fullmatch(rel)
        assert m is not None
        try:
            kb = parse_size_kb(m.group(1))
        except EmuError:
            kb = -1
        sizes = [order_to_kb(o) for o in anon_orders()]
        if kb not in sizes:
            raise EmuError(f"{where}{rel}: no anonymous THP size {m.group(1)} (sizes: "
                           + ", ".join(f"hugepages-{s}kB" for s in sizes) + ")")
        if text not in PER_SIZE_VALUES:
            raise EmuError(f"{bad}: one of {', '.join(PER_SIZE_VALUES)}")
        return Setting(f"hugepages-{kb}kB/enabled", "per_size", kb, text)
    if kind == "thp":
        choices = {"enabled": ENABLED_VALUES, "defrag": DEFRAG_VALUES,
                   "use_zero_page": ("0", "1")}[name]
        if text not in choices:
            raise EmuError(f"{bad}: one of {', '.join(choices)}")
        parsed: Any = text == "1" if name == "use_zero_page" else text
        return Setting(rel, "thp", name, parsed)
    try:
        number = int(text, 0)
    except ValueError:
        raise EmuError(f"{bad}: takes a number") from None
    try:
        KhugepagedKnobs.preset().set(name, number)      # the store's range check, now
    except EmuError as e:
        raise EmuError(f"{bad}: {e}") from None
    return Setting(rel, "khugepaged", name, number)


def parse_assignment(text: str, where: str = "--sysfs") -> Setting:
    """'PATH=VALUE' (the --sysfs form)."""
    path, eq, value = text.partition("=")
    if not eq or not path.strip() or not value.strip():
        raise EmuError(f"{where} {text}: give PATH=VALUE, e.g. khugepaged/max_ptes_none=0"
                       " or hugepages-64kB/enabled=always")
    return parse(path, value, where)


def parse_mark_setting(name: str, value: str, where: str) -> list[Setting]:
    """An --at-mark SETTING: thp=, mthp=, a bare khugepaged knob, or a sysfs path.

    ``defrag`` is both a THP file and a khugepaged knob; as before sysfs paths
    were accepted, a number means khugepaged/defrag.
    """
    if name == "thp":
        return [parse("enabled", value, where)]
    if name == "mthp":
        from emu.kernel.config import parse_mthp
        return [parse(f"hugepages-{kb}kB/enabled", v, where)
                for kb, v in parse_mthp(value).items()]
    if name in KhugepagedKnobs.names() and (name != "defrag" or value.strip().isdigit()):
        return [parse(f"khugepaged/{name}", value, where)]
    return [parse(name, value, where)]


# -- TOML files ---------------------------------------------------------------------


def _flatten(data: dict[str, Any], prefix: str, out: list[tuple[str, Any]],
             where: str) -> None:
    """Nested tables -> sysfs paths: [khugepaged] max_ptes_none -> khugepaged/max_ptes_none.

    [hugepages] keeps the shape of data/thp_defaults.toml: "pmd", "other" or a size.
    """
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path == "transparent_hugepage" and isinstance(value, dict):
            _flatten(value, "", out, where)
        elif path == "hugepages" and isinstance(value, dict):
            for size, v in value.items():
                if size == "pmd":
                    out.append((f"hugepages-{order_to_kb(PMD_ORDER)}kB/enabled", v))
                elif size == "other":
                    out += [(f"hugepages-{order_to_kb(o)}kB/enabled", v)
                            for o in anon_orders() if o != PMD_ORDER]
                else:
                    out.append((_size_path(size), v))
        elif isinstance(value, dict):
            _flatten(value, path + "/", out, where)
        else:
            out.append((path, value))


def _size_path(size: str) -> str:
    """A [hugepages] key ("64K", "64kB", "hugepages-64kB") as its sysfs file."""
    bare = size.removeprefix("hugepages-").removesuffix("/enabled")
    try:
        return f"hugepages-{parse_size_kb(bare)}kB/enabled"
    except EmuError:
        return f"hugepages/{size}"      # parse() names it as no such file


def settings_from_toml(data: dict[str, Any], where: str) -> list[Setting]:
    """Every key of a settings file as a Setting; an unknown key or section is an error."""
    pairs: list[tuple[str, Any]] = []
    _flatten(data, "", pairs, where)
    out = []
    for path, value in pairs:
        if isinstance(value, (list, dict)):
            raise EmuError(f"{where}: {path}: give one value")
        out.append(parse(path, value, f"{where}: key"))
    return out


def load_toml(path: str | Path) -> list[Setting]:
    """A --config file as Settings, in file order."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EmuError(f"--config {path}: file not found") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EmuError(f"--config {path}: cannot read: {e}") from None
    return settings_from_toml(data, f"--config {path}")
