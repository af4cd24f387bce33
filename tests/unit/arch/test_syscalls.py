"""emu.arch.syscalls: number tables, constant names, readable decoding."""

import errno
import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.arch.syscalls import (
    ARCHES,
    SyscallTable,
    clone_flags_names,
    decode,
    errno_name,
    flag_names,
    madvise_name,
    map_flags_names,
    prot_names,
)
from emu.errors import EmuError
from emu.trace.events import EMU_MARK_NR

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "emu" / "arch" / "data"

# The calls emu's models decode, with their numbers (syscall_64.tbl and
# asm-generic/unistd.h).  arm64 has no fork or vfork: glibc uses clone.
REQUIRED = {
    "x86_64": {
        "read": 0, "write": 1, "close": 3, "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12,
        "mremap": 25, "mincore": 27, "madvise": 28, "getpid": 39, "clone": 56, "fork": 57,
        "vfork": 58, "execve": 59, "exit": 60, "wait4": 61, "mlock": 149, "munlock": 150,
        "prctl": 157, "gettid": 186, "futex": 202, "set_tid_address": 218, "exit_group": 231,
        "openat": 257, "clone3": 435, "process_madvise": 440,
    },
    "arm64": {
        "read": 63, "write": 64, "close": 57, "openat": 56, "exit": 93, "exit_group": 94,
        "set_tid_address": 96, "futex": 98, "prctl": 167, "getpid": 172, "gettid": 178,
        "brk": 214, "munmap": 215, "mremap": 216, "clone": 220, "execve": 221, "mmap": 222,
        "mprotect": 226, "mlock": 228, "munlock": 229, "mincore": 232, "madvise": 233,
        "wait4": 260, "clone3": 435, "process_madvise": 440,
    },
}


@pytest.mark.parametrize("arch", ARCHES)
def test_required_numbers(arch):
    t = SyscallTable.for_arch(arch)
    for name, nr in REQUIRED[arch].items():
        assert t.nr(name) == nr, name
        assert t.name(nr) == name


def test_arm64_has_no_fork():
    t = SyscallTable.for_arch("arm64")
    assert "fork" not in t and "vfork" not in t
    with pytest.raises(EmuError, match="unknown system call 'fork' for arm64"):
        t.nr("fork")


@pytest.mark.parametrize("arch", ARCHES)
def test_tables_are_bijective_and_full(arch):
    t = SyscallTable.for_arch(arch)
    assert len(t) > 300
    assert len(set(t.names.values())) == len(t.names)
    for nr, name in t.names.items():
        assert t.nr(name) == nr


def test_unknown_and_marker():
    t = SyscallTable.for_arch("x86_64")
    assert t.name(100000) == "syscall_100000"
    assert t.name(EMU_MARK_NR) == "emu_mark" and t.nr("emu_mark") == EMU_MARK_NR
    with pytest.raises(EmuError):
        SyscallTable.for_arch("riscv64")


@pytest.mark.parametrize("arch", ARCHES)
def test_data_files_name_their_source(arch):
    head = (DATA / f"syscalls-{arch}.tsv").read_text().splitlines()[:3]
    assert any("Source:" in line for line in head)


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_syscalls", ROOT / "scripts" /
                                                  "gen_syscalls.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("arch", ARCHES)
def test_tables_match_installed_headers(arch):
    """The committed table equals what the headers on this machine say."""
    gen = _gen_module()
    cc = gen.ARCHES[arch][0]
    if shutil.which(cc) is None:
        pytest.skip(f"no {cc} to read the {arch} headers")
    try:
        rows = gen.table(arch)
    except subprocess.CalledProcessError:
        pytest.skip(f"{arch} UAPI headers not installed")
    assert dict(rows) == SyscallTable.for_arch(arch).names


# --- constant names ---------------------------------------------------------

def _header_macros(cc: str, headers: list[str]) -> dict[str, int]:
    src = "".join(f"#include <{h}>\n" for h in headers)
    out = subprocess.run([cc, "-E", "-dM", "-"], input=src, capture_output=True, text=True)
    if out.returncode:
        return {}
    vals = {}
    for m in re.finditer(r"^#define (\w+) \(?(0x[0-9a-fA-F]+|\d+)[UL]*\)?$", out.stdout, re.M):
        vals[m.group(1)] = int(m.group(2), 0)
    return vals


def test_names_match_installed_headers():
    """Every constant in mm-names.toml equals the header value where the header has it."""
    doc = tomllib.loads((DATA / "mm-names.toml").read_text())
    checked = 0
    sets = [("gcc", ["sys/mman.h", "linux/mman.h", "linux/prctl.h", "linux/sched.h",
                     "linux/futex.h", "asm/prctl.h"],
             [doc["values"], doc["flags"], doc["arch"]["x86_64"]["flags"]]),
            ("aarch64-linux-gnu-gcc", ["sys/mman.h", "linux/mman.h"],
             [doc["arch"]["arm64"]["flags"], {"m": doc["flags"]["map"]},
              {"p": doc["flags"]["prot"]}])]
    for cc, headers, groups in sets:
        if shutil.which(cc) is None:
            continue
        macros = _header_macros(cc, headers)
        for group in groups:
            for table in group.values():
                for name, value in table.items():
                    if name in macros:
                        assert macros[name] == value, f"{name} ({cc})"
                        checked += 1
    if checked == 0:
        pytest.skip("no UAPI headers to check against")
    assert checked > 150


def test_prot_names():
    assert prot_names(0) == "PROT_NONE"
    assert prot_names(3) == "PROT_READ|PROT_WRITE"
    assert prot_names(7) == "PROT_READ|PROT_WRITE|PROT_EXEC"
    assert prot_names(0x10, "arm64") == "PROT_BTI"
    assert prot_names(0x10, "x86_64") == "0x10"


def test_map_flags():
    assert map_flags_names(0x22) == "MAP_PRIVATE|MAP_ANONYMOUS"
    assert map_flags_names(0x01 | 0x10) == "MAP_SHARED|MAP_FIXED"
    assert map_flags_names(0x100022) == "MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE"
    huge = 0x22 | 0x40000 | (21 << 26)
    assert map_flags_names(huge) == "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_2MB"
    assert map_flags_names(0x22 | 0x40000 | (30 << 26)).endswith("MAP_HUGE_1GB")
    # without MAP_HUGETLB the same bit is MAP_UNINITIALIZED
    assert map_flags_names(0x22 | (1 << 26)) == "MAP_PRIVATE|MAP_ANONYMOUS|MAP_UNINITIALIZED"
    assert map_flags_names(0x62, "x86_64") == "MAP_PRIVATE|MAP_ANONYMOUS|MAP_32BIT"
    assert map_flags_names(0x62, "arm64") == "MAP_PRIVATE|MAP_ANONYMOUS|0x40"


@pytest.mark.parametrize("advice,name", [
    (4, "MADV_DONTNEED"), (8, "MADV_FREE"), (14, "MADV_HUGEPAGE"), (15, "MADV_NOHUGEPAGE"),
    (20, "MADV_COLD"), (21, "MADV_PAGEOUT"), (25, "MADV_COLLAPSE"), (12345, "12345"),
])
def test_madvise_names(advice, name):
    assert madvise_name(advice) == name


def test_clone_flags():
    thread = 0x3D0F00
    assert clone_flags_names(thread) == (
        "CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|"
        "CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID")
    fork_like = 0x01200000 | 17
    assert clone_flags_names(fork_like) == "CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD"


@given(st.integers(0, (1 << 64) - 1), st.sampled_from(["prot", "map", "clone", "mremap"]),
       st.sampled_from(ARCHES))
def test_flag_names_round_trip(value, kind, arch):
    """The names (and the hex rest) or-ed back together give the value."""
    doc = tomllib.loads((DATA / "mm-names.toml").read_text())
    table = dict(doc["flags"][kind])
    table.update(doc["arch"].get(arch, {}).get("flags", {}).get(kind, {}))
    shown = flag_names(kind, value, arch)
    back = 0
    for part in shown.split("|"):
        back |= int(part, 16) if part.startswith("0x") else table[part] if part != "0" else 0
    assert back == value


def test_errno_names():
    assert errno_name(-errno.ENOMEM) == "ENOMEM"
    assert errno_name(-errno.EAGAIN) == "EAGAIN"
    assert errno_name(0) is None and errno_name(5) is None and errno_name(None) is None
    # a high address is not an error
    assert errno_name((1 << 64) - 4096) is None
    assert errno_name((1 << 64) - errno.EINVAL) == "EINVAL"


# --- decode -------------------------------------------------------------------

def test_decode_mmap():
    d = decode("x86_64", 9, [0, 0x200000, 3, 0x22, (1 << 64) - 1, 0], 0x7F12_3456_7000)
    assert d.name == "mmap"
    assert d.text == ("mmap(NULL, 0x200000, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, "
                      "-1, 0x0) = 0x7f1234567000")
    assert d.args["length"] == 0x200000 and d.args["fd"] == (1 << 64) - 1
    assert d.shown["prot"] == "PROT_READ|PROT_WRITE"
    assert d.ret == 0x7F12_3456_7000 and d.errno is None


def test_decode_error_return():
    d = decode("arm64", 222, [0, 1 << 40, 3, 0x22, -1, 0], -errno.ENOMEM)
    assert d.errno == "ENOMEM" and d.ret == -errno.ENOMEM
    assert d.text.endswith(" = -ENOMEM")
    assert d.to_dict()["errno"] == "ENOMEM"


def test_decode_madvise_both_arches():
    for arch, nr in (("x86_64", 28), ("arm64", 233)):
        d = decode(arch, nr, [0x7F0000000000, 0x200000, 25, 0, 0, 0], 0)
        assert d.text == "madvise(0x7f0000000000, 0x200000, MADV_COLLAPSE) = 0"


def test_decode_clone_argument_order():
    args = [0x3D0F00, 0x7000, 0x1000, 0x2000, 0x3000, 0]
    x86 = decode("x86_64", 56, args, 42)
    arm = decode("arm64", 220, args, 42)
    assert x86.args["child_tid"] == 0x2000 and x86.args["tls"] == 0x3000
    assert arm.args["tls"] == 0x2000 and arm.args["child_tid"] == 0x3000
    assert "CLONE_THREAD" in x86.shown["flags"] and x86.ret == 42


def test_decode_misc():
    mprotect = decode("x86_64", 10, [0x1000, 0x1000, 0], 0)
    assert mprotect.text == "mprotect(0x1000, 0x1000, PROT_NONE) = 0"
    assert decode("x86_64", 231, [1], 0).text == "exit_group(1)"
    assert decode("arm64", 167, [41, 1, 0, 0, 0, 0], 0).shown["option"] == "PR_SET_THP_DISABLE"
    assert decode("x86_64", 257, [(1 << 64) - 100, 0x1000, 0, 0], 3).shown["dirfd"] == "AT_FDCWD"
    assert decode("x86_64", 12, [0], 0x4CE000).text == "brk(NULL) = 0x4ce000"
    assert decode("x86_64", 100216, [1, 2], None).text.startswith("syscall_100216(0x1, 0x2,")
    m = decode("arm64", EMU_MARK_NR, [7, 0, 0, 0, 0, 0], -errno.ENOSYS)
    assert m.name == "emu_mark" and m.args == {"id": 7} and m.errno == "ENOSYS"


def test_decode_accepts_numpy_record():
    from emu.trace.events import SYSCALL_REC
    rec = np.zeros(1, SYSCALL_REC)[0]
    rec["nr"] = 11
    rec["args"][:2] = [0x7F0000000000, 0x400000]
    rec["ret"] = 0
    d = decode("x86_64", rec["nr"], rec["args"], rec["ret"])
    assert d.text == "munmap(0x7f0000000000, 0x400000) = 0"
    assert isinstance(d.ret, int) and isinstance(d.args["addr"], int)


def test_decode_bad_arch():
    with pytest.raises(EmuError):
        decode("sparc", 1, [], 0)
