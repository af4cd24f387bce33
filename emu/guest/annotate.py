"""perf-annotate-like attribution: instruction addresses to objects, symbols and text.

With `emu run --annotate` the plugin sends, before each access record, the
address of the instruction whose access started that same-page run (the
access that looks the page up in the TLB; later accesses of the run hit the
entry it made).  The machine counts, per (pid, address), the L1 TLB misses,
walks, page faults and collapse stalls those accesses caused; this module
names each address as perf does: the object (the file the final VMA maps),
the symbol and offset (pyelftools, .symtab else .dynsym) and the instruction
(capstone).  Addresses in memory without a file, or in files that cannot be
read here, keep their address only.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from typing import Any

from emu.errors import EmuError
from emu.guest.elf import ElfInfo, inspect_elf

# What the machine counts, and how the reports name it.
KINDS = {"l2_hit": "L1 TLB misses that hit the L2 TLB",
         "walk": "page walks (L1 and L2 TLB missed)",
         "fault": "page faults",
         "collapse_stall": "waits for a collapse's lock"}


@lru_cache(maxsize=64)
def _elf(path: str) -> ElfInfo | None:
    try:
        return inspect_elf(path)
    except EmuError:
        return None


def _host_path(guest_path: str, sysroot: str) -> str:
    """Where a guest's path is on this machine: under the sysroot, as QEMU's -L looks."""
    under = os.path.join(sysroot, guest_path.lstrip("/"))
    return under if os.path.exists(under) else guest_path


def _disasm(arch: str, code: bytes, addr: int) -> str:
    import capstone
    md = capstone.Cs(*((capstone.CS_ARCH_X86, capstone.CS_MODE_64) if arch == "x86_64"
                       else (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)))
    for insn in md.disasm(code, addr):
        return f"{insn.mnemonic} {insn.op_str}".strip()
    return "(bad)"


def _read(path: str, offset: int, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)
    except OSError:
        return b""


def locate(pc: int, vmas: list[Any], arch: str, sysroot: str) -> dict[str, Any]:
    """The object, symbol+offset and instruction at ``pc`` in a process's final VMAs."""
    out: dict[str, Any] = {"object": None, "symbol": None, "offset": None, "insn": None}
    vma = next((v for v in vmas if v.start <= pc < v.end), None)
    if vma is None or vma.file is None or vma.file.startswith(("fd:", "shmem:")):
        out["object"] = f"[{vma.kind}]" if vma is not None else None
        return out
    out["object"] = vma.file
    host = _host_path(vma.file, sysroot)
    file_off = pc - vma.start + (vma.pgoff << 12)
    elf = _elf(host)
    if elf is None:
        return out
    seg = next((s for s in elf.segments if s.offset <= file_off < s.offset + s.filesz), None)
    if seg is None:
        return out
    link = file_off - seg.offset + seg.vaddr
    sym = elf.symbol_at(link)
    if sym is not None:
        out["symbol"], out["offset"] = sym
    code = _read(host, file_off)
    if code:
        out["insn"] = _disasm(arch, code, pc)
    return out


def annotate(counts: dict[str, Counter], vmas_of: dict[int, list[Any]], arch: str,
             sysroot: str) -> dict[str, Any]:
    """The JSON `annotate` section: per kind, every (pid, pc) by count, named; and the
    same summed per function (object and symbol)."""
    events: dict[str, list[dict[str, Any]]] = {}
    functions: dict[str, list[dict[str, Any]]] = {}
    for kind in KINDS:
        rows = []
        per_fn: Counter[tuple[str | None, str | None]] = Counter()
        # by count, ties by address: the same on every replay, however it was sliced
        for (pid, pc), n in sorted(counts.get(kind, Counter()).items(),
                                   key=lambda x: (-x[1], x[0])):
            where = locate(pc, vmas_of.get(pid, []), arch, sysroot) if pc else \
                {"object": None, "symbol": None, "offset": None, "insn": None}
            rows.append({"pid": pid, "pc": pc, "count": n, **where})
            per_fn[(where["object"], where["symbol"])] += n
        events[kind] = rows
        functions[kind] = [{"object": o, "symbol": s, "count": n} for (o, s), n in
                           sorted(per_fn.items(), key=lambda x: (-x[1], str(x[0])))]
    return {"granularity": "instruction: the access that started each same-page run",
            "kinds": KINDS, "events": events, "functions": functions}
