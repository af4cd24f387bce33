"""khugepaged sysfs knobs and the estimated step costs of a collapse, from data files."""

import tomllib
from dataclasses import dataclass, fields
from importlib import resources

from emu.errors import EmuError
from emu.kernel.collapse_ops import HPAGE_PMD_NR, KHUGEPAGED_MAX_PTES_LIMIT


def _load(name: str) -> dict:
    return tomllib.loads(resources.files("emu.kernel").joinpath(name).read_text())


@dataclass
class KhugepagedKnobs:
    """/sys/kernel/mm/transparent_hugepage/khugepaged/*, defaults as the kernel's."""

    pages_to_scan: int = 4096
    scan_sleep_millisecs: int = 10000
    alloc_sleep_millisecs: int = 60000
    max_ptes_none: int = 511
    max_ptes_swap: int = 64
    max_ptes_shared: int = 256
    defrag: int = 1

    @classmethod
    def preset(cls, name: str = "default") -> "KhugepagedKnobs":
        """'default' (kernel), 'selftest' (what the mm selftest sets) or 'fast' (emu's)."""
        presets = _load("khugepaged.toml")
        if name not in presets:
            raise EmuError(f"unknown khugepaged preset {name!r} "
                           f"(have: {', '.join(sorted(presets))})")
        return cls(**presets[name])

    def set(self, name: str, value: int) -> None:
        """Write one knob with the sysfs store's range checks (EmuError for -EINVAL)."""
        names = {f.name for f in fields(self)}
        if name not in names:
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

    scan_pte_ns: int = 5
    scan_pmd_ns: int = 100
    alloc_base_ns: int = 1000
    alloc_per_page_ns: int = 20
    compact_per_page_ns: int = 500
    mmap_lock_ns: int = 100
    revalidate_ns: int = 150
    anon_vma_lock_ns: int = 100
    pmd_lock_ns: int = 50
    mmu_notifier_ns: int = 50
    isolate_folio_ns: int = 200
    copy_page_ns: int = 400
    zero_page_ns: int = 250
    swapin_page_ns: int = 20000
    install_ns: int = 300
    rollback_ns: int = 100
    flush_fallback_ns: int = 2000
    flush_local_all_ns: int = 300
    flush_local_one_ns: int = 100
    flush_ipi_ns: int = 2000

    def flush_ns(self, st: dict[str, int]) -> int:
        """Estimated duration of a flush from its nr_tlb_* counts (0 if none counted)."""
        return (self.flush_local_all_ns * st.get("nr_tlb_local_flush_all", 0)
                + self.flush_local_one_ns * st.get("nr_tlb_local_flush_one", 0)
                + self.flush_ipi_ns * st.get("nr_tlb_remote_flush_received", 0))

    @classmethod
    def load(cls) -> "CollapseCosts":
        return cls(**_load("collapse_costs.toml"))


assert HPAGE_PMD_NR * 8 == KhugepagedKnobs().pages_to_scan
