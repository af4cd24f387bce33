"""Virtual memory areas: one per mapping, split and merged as the kernel does.

A VMA covers [start, end) (page aligned) with ``vm_flags`` under the kernel's
VM_* names.  ``kind`` says what backs it ('anon', 'file', 'heap', 'stack', 'shmem',
'implicit') and ``name`` which part it is ('text', 'rodata', 'data', 'bss',
'[heap]', '[stack]', ...) so reports can group accesses; two VMAs
merge only when flags, kind, backing file and file offset all continue.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from emu.arch import PAGE_SHIFT, PAGE_SIZE

# include/linux/mm.h
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_GROWSDOWN = 0x00000100
VM_DONTCOPY = 0x00020000
VM_WIPEONFORK = 0x02000000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_DROPPABLE = 1 << 40      # VM_DROPPABLE_BIT 40 on 64-bit (mmap MAP_DROPPABLE, 6.11+)

VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC

FLAG_NAMES = {VM_READ: "rd", VM_WRITE: "wr", VM_EXEC: "ex", VM_SHARED: "sh",
              VM_GROWSDOWN: "gd", VM_DONTCOPY: "dc", VM_WIPEONFORK: "wf",
              VM_HUGEPAGE: "hg", VM_NOHUGEPAGE: "nh",
              VM_DROPPABLE: "dp"}


def vm_prot(flags: int) -> int:
    """vm_flags -> mmap PROT_* bits, which emu.arch's descriptor constructors take
    (vm_get_page_prot in spirit)."""
    return flags & (VM_READ | VM_WRITE | VM_EXEC)    # VM_READ/WRITE/EXEC == PROT_* values


def page_align_up(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass(eq=False)
class VMA:
    """One mapping; ``file``/``pgoff`` name the backing file and page offset."""

    start: int
    end: int
    flags: int
    kind: str = "anon"
    name: str = ""
    file: str | None = None   # page-cache key of the backing file, None if anonymous
    pgoff: int = 0            # file page index of ``start``
    anon_vma: bool = False    # has (had) anonymous pages: fork must copy its PTEs
    # userfaultfd_armed(): userfaultfd is not modelled, so nothing sets it; collapse
    # honours it where the kernel does (collapse_max_ptes_none).
    uffd_armed: bool = False

    @property
    def is_anon(self) -> bool:
        """vma_is_anonymous() in spirit: private memory with no file behind it."""
        return self.file is None

    @property
    def nr_pages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def file_index(self, addr: int) -> int:
        return self.pgoff + ((addr - self.start) >> PAGE_SHIFT)

    def flag_str(self) -> str:
        return " ".join(n for f, n in FLAG_NAMES.items() if self.flags & f)

    def can_merge_after(self, prev: VMA) -> bool:
        """True when ``self`` starts where ``prev`` ends and continues it exactly."""
        if prev.end != self.start or prev.flags != self.flags or prev.kind != self.kind:
            return False
        if prev.name != self.name or prev.file != self.file:
            return False
        return self.file is None or prev.pgoff + prev.nr_pages == self.pgoff

    def __repr__(self) -> str:
        return f"VMA({self.start:#x}-{self.end:#x} {self.kind} [{self.flag_str()}])"


class VmaTree:
    """The mm's VMAs sorted by start (a list with bisect: mms have few VMAs)."""

    def __init__(self) -> None:
        self._vmas: list[VMA] = []
        self._starts: list[int] = []

    def __iter__(self) -> Iterator[VMA]:
        return iter(list(self._vmas))

    def __len__(self) -> int:
        return len(self._vmas)

    def find(self, addr: int) -> VMA | None:
        """The VMA containing addr, or None."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self._vmas[i].end > addr:
            return self._vmas[i]
        return None

    def prev_next(self, addr: int) -> tuple[VMA | None, VMA | None]:
        """The last VMA starting at or below addr and the first starting above it."""
        i = bisect.bisect_right(self._starts, addr)
        prev = self._vmas[i - 1] if i > 0 else None
        nxt = self._vmas[i] if i < len(self._vmas) else None
        return prev, nxt

    def overlapping(self, start: int, end: int) -> list[VMA]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self._vmas) and self._vmas[i].start < end:
            if self._vmas[i].end > start:
                out.append(self._vmas[i])
            i += 1
        return out

    def insert(self, vma: VMA) -> VMA:
        if vma.start >= vma.end:
            raise ValueError(f"empty VMA {vma}")
        if self.overlapping(vma.start, vma.end):
            raise ValueError(f"{vma} overlaps an existing VMA")
        i = bisect.bisect_left(self._starts, vma.start)
        self._vmas.insert(i, vma)
        self._starts.insert(i, vma.start)
        return vma

    def remove(self, vma: VMA) -> None:
        i = bisect.bisect_left(self._starts, vma.start)
        if i >= len(self._vmas) or self._vmas[i] is not vma:
            raise ValueError(f"{vma} is not in the tree")
        del self._vmas[i]
        del self._starts[i]

    def split(self, vma: VMA, addr: int) -> tuple[VMA, VMA]:
        """Split at addr (inside the VMA): ``vma`` keeps the low part; returns (low, high)."""
        if not vma.start < addr < vma.end:
            raise ValueError(f"split of {vma} at {addr:#x}")
        high = VMA(addr, vma.end, vma.flags, vma.kind, vma.name, vma.file,
                   vma.file_index(addr) if vma.file is not None else 0, vma.anon_vma)
        vma.end = addr
        i = bisect.bisect_left(self._starts, vma.start) + 1
        self._vmas.insert(i, high)
        self._starts.insert(i, addr)
        return vma, high

    def carve(self, start: int, end: int) -> list[VMA]:
        """Split VMAs at start and end; returns the VMAs now lying inside [start, end)."""
        for vma in self.overlapping(start, end):
            if vma.start < start < vma.end:
                self.split(vma, start)
        for vma in self.overlapping(start, end):
            if vma.start < end < vma.end:
                self.split(vma, end)
        return self.overlapping(start, end)

    def set_start(self, vma: VMA, start: int) -> None:
        """Move a VMA's start (stack growth); keeps the tree sorted."""
        i = bisect.bisect_left(self._starts, vma.start)
        assert self._vmas[i] is vma
        if vma.file is not None:
            vma.pgoff -= (vma.start - start) >> PAGE_SHIFT
        vma.start = start
        self._starts[i] = start

    def merge_around(self, start: int, end: int) -> list[VMA]:
        """Merge VMAs that touch [start, end] with their neighbours where they can.

        Returns the VMAs that grew by a merge (the kernel calls khugepaged_enter_vma()
        on each: vma_merge_new_range(), vma_merge_existing_range())."""
        merged: list[VMA] = []
        i = max(bisect.bisect_right(self._starts, start) - 2, 0)
        while i + 1 < len(self._vmas) and self._vmas[i].start <= end:
            a, b = self._vmas[i], self._vmas[i + 1]
            if b.can_merge_after(a):
                a.end = b.end
                a.anon_vma = a.anon_vma or b.anon_vma
                del self._vmas[i + 1]
                del self._starts[i + 1]
                if a not in merged:
                    merged.append(a)
            else:
                i += 1
        return merged

    def clone(self) -> VmaTree:
        t = VmaTree()
        for v in self._vmas:
            t._vmas.append(VMA(v.start, v.end, v.flags, v.kind, v.name, v.file, v.pgoff,
                               v.anon_vma))
            t._starts.append(v.start)
        return t
