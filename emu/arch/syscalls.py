"""System call numbers and readable decoding, per architecture.

The numbers come from data/syscalls-<arch>.tsv (generated from the UAPI
headers by scripts/gen_syscalls.py); the names of flag and advice constants
and each call's argument layout from data/mm-names.toml.  Nothing here holds
state: tables are loaded once and shared.

Errno names use Python's errno module: x86-64 and arm64 both use the
asm-generic errno numbering, as does the x86-64 host Python runs on.
"""

from __future__ import annotations

import errno
import signal
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from emu.errors import EmuError
from emu.trace.events import EMU_MARK_NR

ARCHES = ("x86_64", "arm64")

# The kernel returns -errno in [-MAX_ERRNO, -1]; anything else is a value.
MAX_ERRNO = 4095

_MASK64 = (1 << 64) - 1


def _check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise EmuError(f"unsupported architecture '{arch}' (expected one of: {', '.join(ARCHES)})")
    return arch


def _data(name: str) -> str:
    return resources.files("emu.arch").joinpath("data", name).read_text()


@dataclass(frozen=True)
class SyscallTable:
    """Number <-> name for one architecture's Linux system calls."""

    arch: str
    names: dict[int, str] = field(repr=False)
    numbers: dict[str, int] = field(repr=False)

    @classmethod
    def for_arch(cls, arch: str) -> SyscallTable:
        return _load_table(_check_arch(arch))

    def name(self, nr: int) -> str:
        """The call's name; emu's marker is 'emu_mark', unknown numbers 'syscall_<nr>'."""
        nr = int(nr)
        if nr == EMU_MARK_NR:
            return "emu_mark"
        return self.names.get(nr, f"syscall_{nr}")

    def nr(self, name: str) -> int:
        if name == "emu_mark":
            return EMU_MARK_NR
        try:
            return self.numbers[name]
        except KeyError:
            raise EmuError(f"unknown system call '{name}' for {self.arch}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.numbers

    def __len__(self) -> int:
        return len(self.names)


@cache
def _load_table(arch: str) -> SyscallTable:
    names: dict[int, str] = {}
    for line in _data(f"syscalls-{arch}.tsv").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        nr, name = line.split("\t")
        names[int(nr)] = name
    return SyscallTable(arch, names, {v: k for k, v in names.items()})


# --- constant names --------------------------------------------------------


@cache
def _names() -> dict[str, Any]:
    return tomllib.loads(_data("mm-names.toml"))


@cache
def uapi() -> dict[str, int]:
    """Every constant of the generic ABI by name (its values and flags tables), for the
    kernel model to read syscall arguments with the same numbers the decoder uses."""
    doc = _names()
    out: dict[str, int] = {}
    for section in ("values", "flags"):
        for table in doc[section].values():
            for name, value in table.items():
                if out.setdefault(name, value) != value:
                    raise ValueError(f"mm-names.toml: {name} has two values")
    return out


@cache
def _flag_table(kind: str, arch: str) -> tuple[tuple[str, int], ...]:
    """Bit flags of `kind` for `arch`, widest first so multi-bit names win."""
    doc = _names()
    table = dict(doc["flags"].get(kind, {}))
    table.update(doc.get("arch", {}).get(arch, {}).get("flags", {}).get(kind, {}))
    return tuple(sorted(table.items(), key=lambda kv: (-kv[1].bit_count(), kv[1])))


@cache
def _value_table(kind: str) -> dict[int, str]:
    return {v: k for k, v in _names()["values"][kind].items()}


def _const(name: str) -> int:
    return _names()["constants"][name]


def flag_names(kind: str, value: int, arch: str = "x86_64", zero: str = "0") -> str:
    """`value` as NAME|NAME|0xrest using the bit flags of table `kind`."""
    value = int(value) & _MASK64
    if value == 0:
        return zero
    parts = []
    for name, bits in _flag_table(kind, arch):
        if bits and value & bits == bits:
            parts.append(name)
            value &= ~bits
    if value:
        parts.append(hex(value))
    return "|".join(parts)


def value_name(kind: str, value: int) -> str:
    """The name of an enumerated value (madvise advice, prctl option, ...), else the number."""
    value = int(value)
    return _value_table(kind).get(value, str(value))


def prot_names(prot: int, arch: str = "x86_64") -> str:
    return flag_names("prot", prot, arch, zero="PROT_NONE")


def madvise_name(advice: int) -> str:
    return value_name("madvise", _i32(advice))


def prctl_name(option: int) -> str:
    return value_name("prctl", _i32(option))


def map_flags_names(flags: int, arch: str = "x86_64") -> str:
    """mmap flags: the MAP_TYPE field, the flag bits, and MAP_HUGE_<size> with MAP_HUGETLB."""
    flags = int(flags) & _MASK64
    parts = []
    mtype = flags & _const("MAP_TYPE")
    if mtype:
        parts.append(value_name("map_type", mtype) if mtype in _value_table("map_type")
                     else hex(mtype))
    rest = flags & ~_const("MAP_TYPE")
    hugetlb = bool(rest & dict(_flag_table("map", arch))["MAP_HUGETLB"])
    log2 = 0
    if hugetlb:
        shift = _const("MAP_HUGE_SHIFT")
        log2 = (rest >> shift) & _const("MAP_HUGE_MASK")
        rest &= ~(_const("MAP_HUGE_MASK") << shift)
    if rest:
        parts.append(flag_names("map", rest, arch))
    if log2:
        parts.append(f"MAP_HUGE_{_size_name(1 << log2)}")
    return "|".join(parts) if parts else "0"


def clone_flags_names(flags: int) -> str:
    """clone flags with the exit signal (the CSIGNAL byte) named, as strace shows them."""
    flags = int(flags) & _MASK64
    sig = flags & _const("CSIGNAL")
    parts = []
    rest = flags & ~_const("CSIGNAL")
    if rest:
        parts.append(flag_names("clone", rest))
    if sig:
        parts.append(signal_name(sig))
    return "|".join(parts) if parts else "0"


def futex_op_name(op: int) -> str:
    op = _i32(op)
    modifiers = dict(_flag_table("futex", "x86_64"))
    cmd = op & ~sum(modifiers.values())
    mods = op & sum(modifiers.values())
    name = value_name("futex_cmd", cmd)
    return name if not mods else f"{name}|{flag_names('futex', mods)}"


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(int(sig)).name
    except ValueError:
        return str(int(sig))


def errno_name(ret: int | None) -> str | None:
    """'ENOMEM' for a return value of -12; None for a value that is not an error."""
    if ret is None:
        return None
    ret = _i64(ret)
    if -MAX_ERRNO <= ret < 0:
        return errno.errorcode.get(-ret, f"E{-ret}")
    return None


def _size_name(size: int) -> str:
    for unit, shift in (("GB", 30), ("MB", 20), ("KB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size}B"


def _i64(v: int) -> int:
    v = int(v) & _MASK64
    return v - (1 << 64) if v >> 63 else v


def _i32(v: int) -> int:
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def _show(kind: str, value: int, arch: str) -> str:
    """One argument, shown by its type from the signature table."""
    value = int(value) & _MASK64
    match kind:
        case "ptr":
            return "NULL" if value == 0 else hex(value)
        case "size" | "hex":
            return hex(value)
        case "oct":
            return f"0{value:o}" if value else "0"
        case "u":
            return str(value)
        case "int":
            return str(_i64(value))
        case "i32":
            return str(_i32(value))
        case "fd":
            fd = _i32(value)
            return "AT_FDCWD" if fd == _const("AT_FDCWD") else str(fd)
        case "sig":
            return signal_name(_i32(value))
        case "prot":
            return prot_names(value, arch)
        case "map":
            return map_flags_names(value, arch)
        case "madvise":
            return madvise_name(value)
        case "prctl":
            return prctl_name(value)
        case "arch_prctl":
            return value_name("arch_prctl", _i32(value))
        case "clone":
            return clone_flags_names(value)
        case "futex":
            return futex_op_name(value)
        case "mremap" | "mlock" | "mlockall":
            return flag_names(kind, value, arch)
    raise ValueError(f"unknown argument type {kind!r} in mm-names.toml")


@cache
def _signature(arch: str, name: str) -> tuple[tuple[str, str], ...] | None:
    doc = _names()
    sig = doc.get("arch", {}).get(arch, {}).get("signatures", {}).get(name)
    if sig is None:
        sig = doc["signatures"].get(name)
    if sig is None:
        return None
    return tuple(tuple(item.split(":", 1)) for item in sig)  # type: ignore[misc]


# --- decoding ----------------------------------------------------------------


@dataclass(frozen=True)
class DecodedSyscall:
    """One system call, readable: `str()` gives 'mmap(NULL, 0x200000, ...) = 0x7f...'."""

    arch: str
    nr: int
    name: str
    args: dict[str, int]       # argument name -> raw value (only the call's own arguments)
    shown: dict[str, str]      # argument name -> readable value
    ret: int | None            # None: not known, or the call does not return
    errno: str | None          # 'ENOMEM' when ret is -ENOMEM
    text: str

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return {"nr": self.nr, "name": self.name, "args": dict(self.args),
                "shown": dict(self.shown), "ret": self.ret, "errno": self.errno,
                "text": self.text}


def decode(arch: str, nr: int, args, ret: int | None = None) -> DecodedSyscall:
    """Decode one call: `args` the six raw argument registers, `ret` the raw return value.

    Calls without a signature in mm-names.toml show their six arguments in hex.
    """
    _check_arch(arch)
    nr = int(nr)
    raw = [int(a) & _MASK64 for a in list(args)[:6]]
    raw += [0] * (6 - len(raw))
    if nr == EMU_MARK_NR:
        name = "emu_mark"
        sig: tuple[tuple[str, str], ...] | None = (("id", "int"),)
    else:
        name = SyscallTable.for_arch(arch).name(nr)
        sig = _signature(arch, name)
    if sig is None:
        sig = tuple((f"arg{i}", "hex") for i in range(6))
    named = {an: raw[i] for i, (an, _) in enumerate(sig)}
    shown = {an: _show(kind, raw[i], arch) for i, (an, kind) in enumerate(sig)}

    returns = _names()["returns"]
    if name in returns["noreturn"]:
        ret = None
    ret = None if ret is None else _i64(ret)
    err = errno_name(ret)
    text = f"{name}({', '.join(shown.values())})"
    if ret is not None:
        if err:
            text += f" = -{err}"
        elif name in returns["address"]:
            text += f" = {hex(ret & _MASK64)}"
        else:
            text += f" = {ret}"
    return DecodedSyscall(arch, nr, name, named, shown, ret, err, text)
