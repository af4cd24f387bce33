"""Per-architecture facts: descriptor formats, paging geometry, TLB profiles (data files).

``get_arch('x86_64' | 'arm64', granule=4096)`` returns the descriptor API the
kernel model writes page tables with and the hardware model walks.
"""

from emu.arch.base import (
    NR_SIZES,
    PAGE_SHIFT,
    PAGE_SIZE,
    PMD_NR,
    PMD_ORDER,
    PMD_SIZE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    SIZE_1G,
    SIZE_2M,
    SIZE_4K,
    SIZE_16K,
    SIZE_32M,
    SIZE_64K,
    SIZE_NAMES,
    SIZE_SHIFT,
    Arch,
)

ARCH_NAMES = ("x86_64", "arm64")
_ALIASES = {"x86_64": "x86_64", "x86-64": "x86_64", "amd64": "x86_64",
            "arm64": "arm64", "aarch64": "arm64"}


def get_arch(name: str, granule: int = 4096) -> Arch:
    """The Arch for ``name`` (x86_64/amd64, arm64/aarch64)."""
    from emu.arch.arm64 import Arm64
    from emu.arch.x86_64 import X86_64

    canon = _ALIASES.get(name)
    if canon is None:
        from emu.errors import EmuError
        raise EmuError(f"unknown architecture {name!r} (choose x86_64 or arm64)")
    return X86_64(granule) if canon == "x86_64" else Arm64(granule)


__all__ = ["ARCH_NAMES", "Arch", "NR_SIZES", "PAGE_SHIFT", "PAGE_SIZE", "PMD_NR", "PMD_ORDER",
           "PMD_SIZE", "PROT_EXEC", "PROT_READ", "PROT_WRITE",
           "SIZE_16K", "SIZE_1G", "SIZE_2M", "SIZE_32M", "SIZE_4K", "SIZE_64K",
           "SIZE_NAMES", "SIZE_SHIFT", "get_arch"]
