"""Build page tables directly with the arch API: for tests, benchmarks and direction checks.

The kernel model builds its own tables; this is the minimal mapper that lets
the hardware be exercised without it, and a reference software walk to check
the TLBs against.
"""

from __future__ import annotations

from emu.arch import Arch
from emu.mem import FrameAllocator, PhysMem


class PageTableBuilder:
    """One address space (root table) in ``physmem``, frames from ``alloc``."""

    def __init__(self, arch: Arch, physmem: PhysMem, alloc: FrameAllocator) -> None:
        self.arch = arch
        self.physmem = physmem
        self.alloc = alloc
        self.root = self._new_table()

    def _new_table(self) -> int:
        pfn = self.alloc.alloc(0)
        if pfn is None:
            raise MemoryError("out of frames for page tables")
        self.physmem.pgtables.add(pfn)
        return pfn

    def table_for(self, va: int, level: int) -> int:
        """Frame of the level-``level`` table covering ``va``, creating tables on the way."""
        a = self.arch
        t = self.root
        for lvl in range(level):
            idx = a.index(va, lvl)
            d = self.physmem.pgtables.read(t, idx)
            if not a.is_valid(d):
                nt = self._new_table()
                self.physmem.pgtables.write(t, idx, a.mk_table(nt))
                t = nt
            elif a.is_leaf(d, lvl):
                raise ValueError(f"va {va:#x} is inside a level-{lvl} leaf")
            else:
                t = a.pfn(d)
        return t

    def slot(self, va: int, level: int) -> tuple[int, int]:
        """(table frame, index) of the level-``level`` descriptor for ``va``."""
        return self.table_for(va, level), self.arch.index(va, level)

    def set(self, va: int, level: int, desc: int) -> None:
        t, i = self.slot(va, level)
        self.physmem.pgtables.write(t, i, desc)

    def get(self, va: int, level: int) -> int:
        t, i = self.slot(va, level)
        return self.physmem.pgtables.read(t, i)

    def map_4k(self, va: int, pfn: int, prot: int, cont: bool = False, **kw) -> None:
        self.set(va, self.arch.levels - 1, self.arch.mk_pte(pfn, prot, cont=cont, **kw))

    def map_2m(self, va: int, pfn: int, prot: int, **kw) -> None:
        self.set(va, self.arch.levels - 2, self.arch.mk_pmd_leaf(pfn, prot, **kw))

    def map_1g(self, va: int, pfn: int, prot: int, **kw) -> None:
        self.set(va, self.arch.levels - 3, self.arch.mk_pud_leaf(pfn, prot, **kw))

    def map_range(self, va: int, pfn: int, nbytes: int, prot: int, size: str = "4k") -> None:
        """Map [va, va+nbytes) to consecutive frames from ``pfn`` with one leaf size.

        ``size`` 64k sets the arm64 contiguous bit on 16-entry aligned runs.
        """
        step = {"4k": 1 << 12, "64k": 1 << 12, "2m": 1 << 21, "1g": 1 << 30}[size]
        for off in range(0, nbytes, step):
            p = pfn + (off >> 12)
            if size in ("4k", "64k"):
                self.map_4k(va + off, p, prot, cont=size == "64k")
            elif size == "2m":
                self.map_2m(va + off, p, prot)
            else:
                self.map_1g(va + off, p, prot)

    def soft_walk(self, va: int) -> tuple[int, int] | None:
        """Reference translation: (4 KiB frame, leaf level) or None if not mapped."""
        a = self.arch
        t = self.root
        for lvl in range(a.levels):
            d = self.physmem.pgtables.read(t, a.index(va, lvl))
            if not a.is_valid(d):
                return None
            if a.is_leaf(d, lvl):
                off = (va >> 12) & ((1 << (a.level_shifts[lvl] - 12)) - 1)
                return a.pfn(d) + off, lvl
            t = a.pfn(d)
        return None
