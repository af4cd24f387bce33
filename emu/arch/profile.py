"""TLB profiles: sourced per-core TLB geometry, loaded from TOML data files.

The files live in emu/arch/data/profiles/ and name their sources (IDs from
shared/reference/tlb-profiles.md); assumptions carry [U].  A profile is plain
data; emu.hw turns it into arrays.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from emu.arch.base import SIZE_NAMES
from emu.errors import EmuError

PROFILE_DIR = Path(__file__).parent / "data" / "profiles"
SIDES = ("instr", "data", "unified")
REPLACEMENTS = ("lru",)


class _SetAssociative:
    """entries split into ways: what a TLB array and a walk cache have in common."""

    entries: int
    ways: int

    @property
    def sets(self) -> int:
        return self.entries // self.ways


@dataclass(frozen=True)
class TlbSpec(_SetAssociative):
    """One set-associative TLB array."""

    name: str
    side: str            # instr | data | unified
    level: int           # 1 or 2
    sizes: tuple[int, ...]   # SIZE_* codes it holds
    entries: int
    ways: int
    source: str = ""


@dataclass(frozen=True)
class PscSpec(_SetAssociative):
    """A paging-structure (walk) cache for the descriptors of one upper level."""

    name: str
    level: int           # caches level-`level` table descriptors (0 = PML4E / L0)
    entries: int
    ways: int
    source: str = ""


@dataclass(frozen=True)
class Profile:
    name: str
    arch: str
    description: str
    tlbs: tuple[TlbSpec, ...]
    pscs: tuple[PscSpec, ...]
    replacement: str = "lru"
    coalesce: int = 0          # AMD-style: group of N 4K PTEs -> one entry (0 = off)
    tlbi_range: bool = False   # arm64 FEAT_TLBIRANGE
    hafdbs: bool = True        # arm64 FEAT_HAFDBS (hardware AF and dirty state)
    pcid: bool = True          # x86 PCID/INVPCID
    invlpgb: bool = False      # AMD broadcast invalidation present (not used yet)
    sources: tuple[str, ...] = field(default_factory=tuple)
    # L0: the per-vCPU micro-TLB the plugin runs in front of the L1 (data accesses,
    # direct-mapped by (4 KiB page, read/write)); 0 = none.  docs/trace-format.md.
    utlb: int = 0
    utlb_source: str = ""


def list_profiles(arch: str | None = None) -> list[str]:
    """Names of the bundled profiles, optionally for one architecture."""
    names = []
    for p in sorted(PROFILE_DIR.glob("*.toml")):
        if arch is None or _read(p).get("arch") == arch:
            names.append(p.stem)
    return names


def default_profile(arch: str) -> str:
    return f"generic-{arch}"


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EmuError(f"cannot read TLB profile {path}: {e}") from None


def _size_codes(names: list[str], where: str) -> tuple[int, ...]:
    out = []
    for n in names:
        if n not in SIZE_NAMES:
            raise EmuError(f"{where}: unknown page size {n!r} (known: {', '.join(SIZE_NAMES)})")
        out.append(SIZE_NAMES.index(n))
    return tuple(out)


def _check_geometry(where: str, entries: int, ways: int) -> None:
    if entries <= 0 or ways <= 0 or entries % ways:
        raise EmuError(f"{where}: entries ({entries}) must be a positive multiple of ways ({ways})")
    sets = entries // ways
    if sets & (sets - 1):
        raise EmuError(f"{where}: {sets} sets; the model needs a power of two")


def _bundled(name: str) -> Path | None:
    """The bundled profile file for name, with `-` and `_` taken as the same.

    Users write core names both ways (neoverse-n1, generic_x86_64) and the
    files use one spelling each.
    """
    key = name.replace("_", "-")
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        if path.stem.replace("_", "-") == key:
            return path
    return None


def load_profile(name_or_path: str) -> Profile:
    """A bundled profile by name, or a TOML file by path; bad input raises EmuError."""
    path = Path(name_or_path)
    if not path.suffix:
        path = _bundled(name_or_path)
        if path is None:
            raise EmuError(f"unknown TLB profile {name_or_path!r} "
                           f"(bundled: {', '.join(list_profiles())})")
    raw = _read(path)
    where = f"profile {path.name}"
    try:
        arch = raw["arch"]
        if arch not in ("x86_64", "arm64"):
            raise EmuError(f"{where}: arch must be x86_64 or arm64, not {arch!r}")
        tlbs = []
        for t in raw["tlb"]:
            w = f"{where} [{t['name']}]"
            _check_geometry(w, t["entries"], t["ways"])
            if t["side"] not in SIDES or t["level"] not in (1, 2):
                raise EmuError(f"{w}: side must be one of {SIDES} and level 1 or 2")
            tlbs.append(TlbSpec(t["name"], t["side"], t["level"], _size_codes(t["sizes"], w),
                                t["entries"], t["ways"], t.get("source", "")))
        pscs = []
        for c in raw.get("psc", []):
            w = f"{where} [{c['name']}]"
            _check_geometry(w, c["entries"], c["ways"])
            if c["level"] not in (0, 1, 2):
                raise EmuError(f"{w}: level must be 0, 1 or 2")
            pscs.append(PscSpec(c["name"], c["level"], c["entries"], c["ways"],
                                c.get("source", "")))
        utlb = raw.get("utlb", {})
        utlb_n = utlb.get("entries", 0)
        if not isinstance(utlb_n, int) or not 0 <= utlb_n <= 256 or utlb_n & (utlb_n - 1):
            raise EmuError(f"{where} [utlb]: entries must be 0 or a power of two up to 256")
        repl = raw.get("replacement", "lru")
        if repl not in REPLACEMENTS:
            raise EmuError(f"{where}: replacement {repl!r} not supported ({REPLACEMENTS})")
        prof = Profile(
            name=raw.get("name", path.stem), arch=arch, description=raw.get("description", ""),
            tlbs=tuple(tlbs), pscs=tuple(pscs), replacement=repl,
            coalesce=int(raw.get("coalesce", 0)), tlbi_range=bool(raw.get("tlbi_range", False)),
            hafdbs=bool(raw.get("hafdbs", True)), pcid=bool(raw.get("pcid", True)),
            invlpgb=bool(raw.get("invlpgb", False)), sources=tuple(raw.get("sources", ())),
            utlb=utlb_n, utlb_source=str(utlb.get("source", "")))
    except (KeyError, TypeError) as e:
        raise EmuError(f"{where}: missing or malformed field {e}") from None
    if prof.coalesce not in (0, 4):
        raise EmuError(f"{where}: coalesce must be 0 or 4")
    for side in ("instr", "data"):
        if not any(t.level == 1 and t.side in (side, "unified") for t in prof.tlbs):
            raise EmuError(f"{where}: no level-1 TLB for {side} accesses")
    return prof
