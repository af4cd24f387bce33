"""THP configuration as the kernel's sysfs exposes it, from TOML or CLI strings.

The names are the sysfs file names under /sys/kernel/mm/transparent_hugepage/
so that a kernel developer can set emu up exactly like a machine:

    enabled                      always | madvise | never
    hugepages-<size>kB/enabled   always | inherit | madvise | never
    defrag                       always | defer | defer+madvise | madvise | never
    use_zero_page                0 | 1

``ThpConfig.kernel_defaults()`` reads the preset from data/thp_defaults.toml.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from emu.arch import PAGE_SHIFT, PMD_ORDER
from emu.errors import EmuError

# THP_ORDERS_ALL_ANON: orders 2..PMD_ORDER (order 1 is excluded by the kernel).
ANON_MIN_ORDER = 2

ENABLED_VALUES = ("always", "madvise", "never")
PER_SIZE_VALUES = ("always", "inherit", "madvise", "never")
DEFRAG_VALUES = ("always", "defer", "defer+madvise", "madvise", "never")


def anon_orders(page_shift: int = PAGE_SHIFT, pmd_order: int = PMD_ORDER) -> list[int]:
    """The anonymous THP orders of a granule (THP_ORDERS_ALL_ANON), lowest first."""
    return list(range(ANON_MIN_ORDER, pmd_order + 1))


def order_to_kb(order: int, page_shift: int = PAGE_SHIFT) -> int:
    return (1 << (order + page_shift)) >> 10


def kb_to_order(size_kb: int, page_shift: int = PAGE_SHIFT) -> int | None:
    nr = (size_kb << 10) >> page_shift
    if nr <= 0 or nr & (nr - 1) or (nr << page_shift) >> 10 != size_kb:
        return None
    return nr.bit_length() - 1


def parse_size_kb(text: str) -> int:
    """'64K', '64kB', '2M', '2048' (kB) -> size in kB; EmuError when unreadable."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", text)
    if not m:
        raise EmuError(f"bad THP size '{text}' (use e.g. 16K, 64K, 2M)")
    n = int(m.group(1))
    unit = m.group(2).lower()
    return n * {"": 1, "k": 1, "m": 1024, "g": 1024 * 1024}[unit]


@dataclass
class ThpConfig:
    """Global and per-size THP controls (sysfs names), plus machine-side choices."""

    enabled: str = "always"
    defrag: str = "madvise"
    use_zero_page: bool = True
    # hugepages-<size>kB/enabled by size in kB; sizes not listed take the kernel
    # default (inherit for the PMD size, never for the others).
    hugepages: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._orders_cache: dict[tuple, int] = {}
        self.validate()

    # --- construction -----------------------------------------------------

    @classmethod
    def kernel_defaults(cls) -> ThpConfig:
        """The preset equal to a kernel built with default THP Kconfig choices."""
        text = resources.files("emu.kernel").joinpath("data/thp_defaults.toml").read_text()
        return cls.from_toml_dict(tomllib.loads(text))

    @classmethod
    def from_toml_dict(cls, data: dict) -> ThpConfig:
        """Build from a dict shaped like data/thp_defaults.toml (see docs/kernel.md)."""
        base = cls()
        tp = data.get("transparent_hugepage", data)
        unknown = sorted(set(tp) - {"enabled", "defrag", "use_zero_page", "hugepages"})
        if unknown:
            # Nothing is silently ignored (emu.kernel.sysfs reads --config files).
            raise EmuError(f"unknown THP setting {unknown[0]!r}")
        try:
            cfg = cls(
                enabled=str(tp.get("enabled", base.enabled)),
                defrag=str(tp.get("defrag", base.defrag)),
                use_zero_page=bool(int(tp.get("use_zero_page", base.use_zero_page))),
            )
        except (TypeError, ValueError) as e:
            raise EmuError(f"bad THP configuration: {e}") from None
        hp = dict(tp.get("hugepages", {}))
        pmd_kb = order_to_kb(PMD_ORDER)
        other = hp.pop("other", None)
        if other is not None:
            for o in anon_orders():
                if o != PMD_ORDER:
                    cfg.hugepages[order_to_kb(o)] = str(other)
        pmd = hp.pop("pmd", None)
        if pmd is not None:
            cfg.hugepages[pmd_kb] = str(pmd)
        for k, v in hp.items():
            key = k.removeprefix("hugepages-").removesuffix("/enabled")
            cfg.hugepages[parse_size_kb(key)] = str(v)
        cfg.validate()
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> ThpConfig:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise EmuError(f"THP config file not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise EmuError(f"cannot read THP config {path}: {e}") from None
        return cls.from_toml_dict(data)

    def validate(self) -> None:
        if self.enabled not in ENABLED_VALUES:
            raise EmuError(f"bad THP enabled '{self.enabled}' (one of {', '.join(ENABLED_VALUES)})")
        if self.defrag not in DEFRAG_VALUES:
            raise EmuError(f"bad THP defrag '{self.defrag}' (one of {', '.join(DEFRAG_VALUES)})")
        valid_kb = {order_to_kb(o) for o in anon_orders()}
        for kb, v in self.hugepages.items():
            if kb not in valid_kb:
                sizes = ", ".join(f"{k}K" for k in sorted(valid_kb))
                raise EmuError(f"no anonymous THP size {kb}kB (sizes: {sizes})")
            if v not in PER_SIZE_VALUES:
                raise EmuError(
                    f"bad hugepages-{kb}kB/enabled '{v}' (one of {', '.join(PER_SIZE_VALUES)})")

    # --- queries ------------------------------------------------------------

    def per_size(self, order: int) -> str:
        """hugepages-<size>kB/enabled for this order (kernel default if unset)."""
        kb = order_to_kb(order)
        default = "inherit" if order == PMD_ORDER else "never"
        return self.hugepages.get(kb, default)

    def set_order(self, order: int, mode: str) -> None:
        """Write hugepages-<size>kB/enabled for one order."""
        self.hugepages[order_to_kb(order)] = mode
        self.validate()

    def orders_with(self, mode: str) -> int:
        """The mask of anonymous orders whose per-size control reads ``mode``."""
        return sum(1 << o for o in anon_orders() if self.per_size(o) == mode)

    def anon_orders(self, vm_hugepage: bool) -> int:
        """The sysfs part of thp_vma_allowable_orders() (a mask of orders):

        huge_anon_orders_always | (VM_HUGEPAGE ? madvise : 0) |
        (global always, or VM_HUGEPAGE and global != never ? inherit : 0)
        """
        key = (self.enabled, tuple(self.hugepages.items()), vm_hugepage)
        mask = self._orders_cache.get(key)
        if mask is None:
            mask = self.orders_with("always")
            if vm_hugepage:
                mask |= self.orders_with("madvise")
            if self.enabled == "always" or (vm_hugepage and self.enabled != "never"):
                mask |= self.orders_with("inherit")
            self._orders_cache[key] = mask
        return mask

    def as_sysfs(self) -> dict[str, str]:
        """The settings as sysfs path -> value (for reports)."""
        out = {"enabled": self.enabled, "defrag": self.defrag,
               "use_zero_page": str(int(self.use_zero_page))}
        for o in anon_orders():
            out[f"hugepages-{order_to_kb(o)}kB/enabled"] = self.per_size(o)
        return out


def parse_thp(text: str) -> str:
    """CLI --thp value -> global enabled value; EmuError on anything else."""
    v = text.strip()
    if v not in ENABLED_VALUES:
        raise EmuError(f"bad --thp '{text}' (one of {', '.join(ENABLED_VALUES)})")
    return v


def parse_mthp(text: str) -> dict[int, str]:
    """CLI --mthp '64K=always,2M=inherit' -> {size_kb: value}; EmuError when malformed."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise EmuError(f"bad --mthp item '{part}' (use SIZE=VALUE, e.g. 64K=always)")
        size, value = (s.strip() for s in part.split("=", 1))
        kb = parse_size_kb(size)
        if value not in PER_SIZE_VALUES:
            raise EmuError(f"bad --mthp value '{value}' for {size} "
                           f"(one of {', '.join(PER_SIZE_VALUES)})")
        out[kb] = value
    ThpConfig(hugepages=out)   # validates the sizes
    return out


def config_from_cli(thp: str | None = None, mthp: str | None = None,
                    toml: str | None = None, base: ThpConfig | None = None) -> ThpConfig:
    """``base`` (or a TOML file, or the kernel defaults), then --thp and --mthp on top."""
    if base is not None:
        cfg = ThpConfig(base.enabled, base.defrag, base.use_zero_page, dict(base.hugepages))
    else:
        cfg = ThpConfig.from_toml(toml) if toml else ThpConfig.kernel_defaults()
    if thp is not None:
        cfg.enabled = parse_thp(thp)
    if mthp is not None:
        cfg.hugepages.update(parse_mthp(mthp))
    cfg.validate()
    return cfg
