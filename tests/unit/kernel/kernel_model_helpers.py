"""Helpers for the kernel-model unit tests: a small machine and syscall shortcuts."""

from emu.kernel.config import ThpConfig
from emu.kernel.kernel import Kernel
from emu.kernel.khugepaged.knobs import KhugepagedKnobs
from emu.mem.physmem import PhysMem

MiB = 1 << 20
PAGE = 4096
PROT_RW = 3
MAP_PRIVATE_ANON = 0x22


def make_kernel(arch: str = "x86_64", enabled: str = "never", mthp: dict | None = None,
                mib: int = 64, khugepaged: bool = False, **kw) -> Kernel:
    """A kernel without TLBs; with ``khugepaged``, also khugepaged and MADV_COLLAPSE."""
    cfg = ThpConfig(enabled=enabled, hugepages=dict(mthp or {}))
    knobs = KhugepagedKnobs.preset("default") if khugepaged else None
    return Kernel(arch, cfg, None, PhysMem(mib * MiB // PAGE), khugepaged=knobs, **kw)


def mmap(k: Kernel, pid: int, addr: int, length: int, prot: int = PROT_RW,
         flags: int = MAP_PRIVATE_ANON) -> int:
    k.syscall(pid, 0, "mmap", (0, length, prot, flags, (1 << 64) - 1, 0), addr)
    return addr


def touch(k: Kernel, pid: int, addr: int, write: bool = True) -> bool:
    return k.handle_mm_fault(pid, 0, addr, 1 if write else 0, None)


def order_at(k: Kernel, pid: int, va: int) -> int | None:
    """Folio order backing va (None if not mapped / zero page)."""
    mm = k.mm(pid)
    pmd = k.pt.get_pmd(mm, va)
    if k.pt.pmd_is_leaf(pmd):
        d = pmd
    else:
        d = k.pt.get_pte(mm, va)
    if not d or not k.arch.is_present(d):
        return None
    f = k.folio_of_pfn(k.arch.pfn(d))
    return None if f is None else f.order
