"""khugepaged's sysfs knobs and the estimated step costs of a collapse.

The values live in data files only (emu/kernel/data/khugepaged.toml with the
kernel's defaults and emu's presets, data/collapse_costs.toml with the
reasoning behind each estimate); these classes name and check them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources

from emu.arch import PMD_NR
from emu.errors import EmuError

KHUGEPAGED_MAX_PTES_LIMIT = PMD_NR - 1


def _load(name: str) -> dict:
    return tomllib.loads(resources.files("emu.kernel").joinpath("data", name).read_text())


@dataclass
class KhugepagedKnobs:
    """/sys/kernel/mm/transparent_hugepage/khugepaged/*."""

    pages_to_scan: int
    scan_sleep_millisecs: int
    alloc_sleep_millisecs: int
    max_ptes_none: int
    max_ptes_swap: int
    max_ptes_shared: int
    defrag: int

    @classmethod
    def preset(cls, name: str = "default") -> KhugepagedKnobs:
        """'default' (the kernel's), 'selftest' (what the mm selftest sets) or 'fast'."""
        presets = _load("khugepaged.toml")
        if name not in presets:
            raise EmuError(f"unknown khugepaged preset {name!r} "
                           f"(have: {', '.join(sorted(presets))})")
        return cls(**presets[name])

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def set(self, name: str, value: int) -> None:
        """Write one knob with the sysfs store's range checks (EmuError for -EINVAL)."""
        if name not in self.names():
            raise EmuError(f"unknown khugepaged knob {name!r}")
        if name.startswith("max_ptes_") and not 0 <= value <= KHUGEPAGED_MAX_PTES_LIMIT:
            raise EmuError(f"{name} must be 0..{KHUGEPAGED_MAX_PTES_LIMIT}, got {value}")
        if name == "pages_to_scan" and value <= 0:
            raise EmuError("pages_to_scan must be > 0")
        if name == "defrag" and value not in (0, 1):
            raise EmuError("defrag must be 0 or 1")
        if value < 0:
            raise EmuError(f"{name} must be >= 0")
        setattr(self, name, int(value))


@dataclass
class CollapseCosts:
    """Estimated step durations (ns) of collapse_huge_page() and the scan."""

    scan_pte_ns: int
    scan_pmd_ns: int
    alloc_base_ns: int
    alloc_per_page_ns: int
    compact_per_page_ns: int
    mmap_lock_ns: int
    revalidate_ns: int
    anon_vma_lock_ns: int
    pmd_lock_ns: int
    mmu_notifier_ns: int
    isolate_folio_ns: int
    copy_page_ns: int
    zero_page_ns: int
    swapin_page_ns: int
    install_ns: int
    rollback_ns: int
    flush_fallback_ns: int
    flush_local_all_ns: int
    flush_local_one_ns: int
    flush_ipi_ns: int
    gup_fast_ns: int

    def flush_ns(self, st: dict[str, int]) -> int:
        """Estimated duration of a flush from its nr_tlb_* counts (0 if none counted)."""
        return (self.flush_local_all_ns * st.get("nr_tlb_local_flush_all", 0)
                + self.flush_local_one_ns * st.get("nr_tlb_local_flush_one", 0)
                + self.flush_ipi_ns * st.get("nr_tlb_remote_flush_received", 0))

    @classmethod
    def load(cls) -> CollapseCosts:
        return cls(**_load("collapse_costs.toml"))
