"""What emu needs to know about a guest program before it runs: its ELF headers.

`inspect_elf` checks that the file is something emu can run (a 64-bit
little-endian x86-64 or arm64 executable) and gives the architecture, the
PT_LOAD segments (the program's first VMAs), the initial brk, and the symbol
table for attribution.  Every problem with the file is an EmuError with a
one-line message, raised before QEMU is started, because QEMU's own messages
for the same mistakes are cryptic.
"""

from __future__ import annotations

import bisect
import os
import stat
import struct
from dataclasses import dataclass
from functools import cached_property

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from emu.errors import EmuError

PAGE_SIZE = 4096

EM_X86_64 = 62
EM_AARCH64 = 183

ARCH_OF_MACHINE = {EM_X86_64: "x86_64", EM_AARCH64: "arm64"}

# Machines people are likely to hand us by mistake, named as they know them
# (e_machine values from the System V gABI / elf.h).  Others print as numbers.
OTHER_MACHINES = {
    2: "sparc", 3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm",
    43: "sparc64", 50: "ia64", 243: "riscv", 258: "loongarch",
}

_ELF_MAGIC = b"\x7fELF"
_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, little-endian
_ET_NAMES = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}


def _page_down(x: int) -> int:
    return x & ~(PAGE_SIZE - 1)


def _page_up(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment, at its link-time address (add the load bias for PIE)."""

    vaddr: int
    memsz: int
    filesz: int
    offset: int
    flags: str   # "r-x" style
    align: int

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz

    @property
    def readable(self) -> bool:
        return self.flags[0] == "r"

    @property
    def writable(self) -> bool:
        return self.flags[1] == "w"

    @property
    def executable(self) -> bool:
        return self.flags[2] == "x"

    def vmas(self, bias: int = 0) -> list[tuple[int, int, str]]:
        """(start, end, kind) page ranges as the kernel's ELF loader maps them.

        The file's bytes [offset, offset+filesz) are mapped from the file
        ('file'); the rest of memsz (.bss) beyond the last file page is
        anonymous memory ('anon').  The tail of the last file page is zeroed in
        place and stays part of the file mapping.
        """
        start = _page_down(self.vaddr + bias)
        file_end = _page_up(self.vaddr + bias + self.filesz)
        mem_end = _page_up(self.vaddr + bias + self.memsz)
        out = []
        if self.filesz and file_end > start:
            out.append((start, file_end, "file"))
        else:
            file_end = start
        if mem_end > file_end:
            out.append((file_end, mem_end, "anon"))
        return out


@dataclass(frozen=True)
class ElfInfo:
    """The facts about a guest executable that emu uses; symbols load on first use."""

    path: str
    arch: str              # 'x86_64' | 'arm64'
    elfclass: int          # 64 (32-bit files are refused)
    machine: int           # e_machine
    entry: int
    is_pie: bool           # ET_DYN: loaded at a bias chosen at run time
    interp: str | None     # PT_INTERP path; None for a static program
    segments: tuple[Segment, ...]
    relro: tuple[int, int] | None  # PT_GNU_RELRO (vaddr, memsz): made read-only at start
    exec_stack: bool       # PT_GNU_STACK has PF_X (or is missing)

    @property
    def is_static(self) -> bool:
        return self.interp is None

    @property
    def brk(self) -> int:
        """Initial program break: end of the highest PT_LOAD, page-aligned (no bias)."""
        return _page_up(max((s.end for s in self.segments), default=0))

    def initial_vmas(self, bias: int = 0) -> list[tuple[int, int, str, str]]:
        """(start, end, kind, 'rwx') for every PT_LOAD, in address order."""
        out = []
        for seg in self.segments:
            out += [(a, b, kind, seg.flags) for a, b, kind in seg.vmas(bias)]
        return sorted(out)

    @cached_property
    def symbols(self) -> dict[str, tuple[int, int]]:
        """name -> (address, size) from .symtab, else .dynsym; empty if stripped."""
        out: dict[str, tuple[int, int]] = {}
        try:
            with open(self.path, "rb") as f:
                elf = ELFFile(f)
                for secname in (".symtab", ".dynsym"):
                    sec = elf.get_section_by_name(secname)
                    if sec is None:
                        continue
                    for sym in sec.iter_symbols():
                        if (sym.name and sym["st_shndx"] != "SHN_UNDEF"
                                and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT",
                                                               "STT_GNU_IFUNC", "STT_NOTYPE")):
                            out.setdefault(sym.name, (sym["st_value"], sym["st_size"]))
                    if out:
                        break
        except (OSError, ELFError, struct.error, ValueError) as e:
            raise EmuError(f"{self.path}: cannot read symbols: {e}") from None
        return out

    @cached_property
    def _functions(self) -> tuple[list[int], list[tuple[int, int, str]]]:
        funcs = sorted((addr, size, name) for name, (addr, size) in self.symbols.items()
                       if addr)
        return [a for a, _, _ in funcs], funcs

    def symbol_at(self, addr: int) -> tuple[str, int] | None:
        """(symbol, offset) containing link-time address `addr`, or None."""
        starts, funcs = self._functions
        i = bisect.bisect_right(starts, addr) - 1
        while i >= 0:
            start, size, name = funcs[i]
            if addr < start + max(size, 1):
                return name, addr - start
            if size:  # a sized symbol that ends before addr: nothing covers it
                return None
            i -= 1
        return None


def _flags(p_flags: int) -> str:
    return ("r" if p_flags & P_FLAGS.PF_R else "-") + \
           ("w" if p_flags & P_FLAGS.PF_W else "-") + \
           ("x" if p_flags & P_FLAGS.PF_X else "-")


def _open_checked(path: str | os.PathLike) -> tuple[str, bytes, int]:
    """The path, its first 64 bytes and its size; EmuError for anything unopenable."""
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise EmuError(f"{p}: no such file") from None
    except OSError as e:
        raise EmuError(f"{p}: cannot access: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise EmuError(f"{p}: is a directory, not a program")
    if not stat.S_ISREG(st.st_mode):
        raise EmuError(f"{p}: not a regular file")
    try:
        with open(p, "rb") as f:
            head = f.read(_EHDR64.size)
    except OSError as e:
        raise EmuError(f"{p}: cannot read: {e.strerror}") from None
    return p, head, st.st_size


def inspect_elf(path: str | os.PathLike) -> ElfInfo:
    """Check that `path` is a program emu can run and describe it (see module doc)."""
    p, head, size = _open_checked(path)
    if head[:4] != _ELF_MAGIC:
        raise EmuError(f"{p}: not an ELF file")
    if len(head) < 6:
        raise EmuError(f"{p}: truncated ELF ({size} bytes)")
    ei_class, ei_data = head[4], head[5]
    if ei_class == 1:
        raise EmuError(f"{p}: unsupported ELF class ELF32 (emu runs 64-bit x86-64 and arm64 "
                       "programs)")
    if ei_class != 2:
        raise EmuError(f"{p}: invalid ELF class {ei_class}")
    if ei_data == 2:
        raise EmuError(f"{p}: unsupported big-endian ELF (emu runs little-endian x86-64 and "
                       "arm64 programs)")
    if ei_data != 1:
        raise EmuError(f"{p}: invalid ELF data encoding {ei_data}")
    if len(head) < _EHDR64.size:
        raise EmuError(f"{p}: truncated ELF ({size} bytes, the ELF header alone needs "
                       f"{_EHDR64.size})")
    (_, e_type, e_machine, _, _, e_phoff, _, _, _, e_phentsize, e_phnum, _, _, _) = \
        _EHDR64.unpack(head)
    arch = ARCH_OF_MACHINE.get(e_machine)
    if arch is None:
        known = OTHER_MACHINES.get(e_machine)
        what = (f"{known}64" if known in ("riscv", "loongarch") else known) if known \
            else f"e_machine {e_machine}"
        raise EmuError(f"{p}: unsupported machine {what} (emu runs x86-64 and arm64 programs)")
    if e_type not in (2, 3):
        raise EmuError(f"{p}: not an executable ({_ET_NAMES.get(e_type, f'e_type {e_type}')})")
    ph_end = e_phoff + e_phnum * e_phentsize
    if e_phnum == 0:
        raise EmuError(f"{p}: no program headers: not a loadable program")
    if ph_end > size:
        raise EmuError(f"{p}: truncated ELF ({size} bytes, program headers end at {ph_end})")

    try:
        with open(p, "rb") as f:
            elf = ELFFile(f)
            segments, interp, relro, exec_stack = [], None, None, True
            for seg in elf.iter_segments():
                h = seg.header
                if h.p_type == "PT_LOAD":
                    if h.p_offset + h.p_filesz > size:
                        raise EmuError(f"{p}: truncated ELF ({size} bytes, a PT_LOAD segment "
                                       f"ends at {h.p_offset + h.p_filesz})")
                    segments.append(Segment(h.p_vaddr, h.p_memsz, h.p_filesz, h.p_offset,
                                            _flags(h.p_flags), h.p_align))
                elif h.p_type == "PT_INTERP":
                    if h.p_offset + h.p_filesz > size:
                        raise EmuError(f"{p}: truncated ELF ({size} bytes, PT_INTERP ends at "
                                       f"{h.p_offset + h.p_filesz})")
                    interp = seg.get_interp_name()
                elif h.p_type == "PT_GNU_RELRO":
                    relro = (h.p_vaddr, h.p_memsz)
                elif h.p_type == "PT_GNU_STACK":
                    exec_stack = bool(h.p_flags & P_FLAGS.PF_X)
            entry = elf.header.e_entry
    except (ELFError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise EmuError(f"{p}: corrupt ELF: {e}") from None
    except OSError as e:
        raise EmuError(f"{p}: cannot read: {e.strerror}") from None
    if not segments:
        raise EmuError(f"{p}: no PT_LOAD segments: not a loadable program")
    return ElfInfo(p, arch, 64, e_machine, entry, e_type == 3, interp,
                   tuple(sorted(segments, key=lambda s: s.vaddr)), relro, exec_stack)
