"""emu.guest.elf: the facts emu reads from a guest ELF, and the one-line refusals."""

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emu.errors import EmuError
from emu.guest.elf import PAGE_SIZE, ElfInfo, Segment, inspect_elf

ROOT = Path(__file__).resolve().parents[3]


def _static_guest(arch: str, tmp_factory) -> Path:
    """A static program for `arch`: the built guest, else one compiled here."""
    built = ROOT / "build" / "guest" / arch / "touch"
    if built.exists():
        return built
    cc = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}[arch]
    if shutil.which(cc) is None:
        pytest.skip(f"no {cc} and no build/guest/{arch}/touch (run `make guests`)")
    d = tmp_factory.mktemp(f"elf-{arch}")
    src = d / "t.c"
    src.write_text("int data = 1; char bss[100000];\nint main(void) { return data + bss[5]; }\n")
    out = d / "t"
    subprocess.run([cc, "-O2", "-static", "-o", str(out), str(src)], check=True)
    return out


@pytest.fixture(scope="module")
def x86_static(tmp_path_factory) -> Path:
    return _static_guest("x86_64", tmp_path_factory)


@pytest.fixture(scope="module")
def arm_static(tmp_path_factory) -> Path:
    return _static_guest("arm64", tmp_path_factory)


def _check_layout(info: ElfInfo) -> None:
    """Invariants every loadable program's description must satisfy."""
    vmas = info.initial_vmas()
    assert vmas, "a program has at least one mapping"
    for start, end, kind, flags in vmas:
        assert start % PAGE_SIZE == 0 and end % PAGE_SIZE == 0 and start < end
        assert kind in ("file", "anon") and len(flags) == 3
    for (_, e1, _, _), (s2, _, _, _) in zip(vmas, vmas[1:], strict=False):
        assert e1 <= s2, "segments' mappings do not overlap"
    assert info.brk % PAGE_SIZE == 0
    assert info.brk == max(end for _, end, _, _ in vmas)
    exec_segs = [s for s in info.segments if s.executable]
    assert any(s.vaddr <= info.entry < s.end for s in exec_segs), "entry is in code"


def test_static_x86_64(x86_static):
    info = inspect_elf(x86_static)
    assert (info.arch, info.elfclass, info.machine) == ("x86_64", 64, 62)
    assert info.is_static and info.interp is None and not info.is_pie
    _check_layout(info)
    # the writable segment carries .bss: its tail is anonymous
    rw = [s for s in info.segments if s.writable]
    assert rw and rw[-1].memsz > rw[-1].filesz
    assert any(kind == "anon" for _, _, kind, _ in info.initial_vmas())
    assert "main" in info.symbols and "_start" in info.symbols
    start, _ = info.symbols["_start"]
    assert start == info.entry
    assert info.symbol_at(info.entry) == ("_start", 0)
    main, size = info.symbols["main"]
    assert info.symbol_at(main + 1) == ("main", 1)
    assert size > 1


def test_static_arm64(arm_static):
    info = inspect_elf(arm_static)
    assert (info.arch, info.machine) == ("arm64", 183)
    assert info.is_static and not info.is_pie
    _check_layout(info)
    assert "main" in info.symbols


def test_dynamic_pie():
    path = shutil.which("true") or "/bin/true"
    if not Path(path).exists():
        pytest.skip("no /bin/true")
    info = inspect_elf(path)
    assert info.arch == "x86_64"
    assert not info.is_static and info.interp and "ld-linux" in info.interp
    assert info.is_pie
    _check_layout(info)
    # a PIE's VMAs move with the load bias
    bias = 0x5555_5555_4000
    assert [(a + bias, b + bias) for a, b, _, _ in info.initial_vmas()] == \
        [(a, b) for a, b, _, _ in info.initial_vmas(bias)]


def test_dynamic_arm64_sysroot():
    lib = Path("/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1")
    if not lib.exists():
        pytest.skip("no arm64 sysroot")
    info = inspect_elf(lib)
    assert info.arch == "arm64" and info.is_pie


@pytest.mark.parametrize("filesz,memsz,vaddr", [
    (0x5bb8, 0xb448, 0x4c26d8),  # data + bss crossing pages
    (0x100, 0x100, 0x400000),    # no bss
    (0, 0x3000, 0x600000),       # bss only
    (0x1000, 0x1800, 0x401000),  # file part ends exactly on a page
])
def test_segment_vmas(filesz, memsz, vaddr):
    seg = Segment(vaddr, memsz, filesz, 0, "rw-", 0x1000)
    vmas = seg.vmas()
    # contiguous, page-aligned, covering the whole segment
    assert vmas[0][0] == vaddr & ~0xFFF
    assert vmas[-1][1] == (vaddr + memsz + 0xFFF) & ~0xFFF
    for (_, e, _), (s, _, _) in zip(vmas, vmas[1:], strict=False):
        assert e == s
    file_part = [v for v in vmas if v[2] == "file"]
    if filesz:
        assert file_part[0][1] == (vaddr + filesz + 0xFFF) & ~0xFFF
    else:
        assert not file_part and vmas == [(vaddr & ~0xFFF, vmas[-1][1], "anon")]


@given(vaddr=st.integers(0, 1 << 40), filesz=st.integers(0, 1 << 24),
       extra=st.integers(0, 1 << 24))
def test_segment_vmas_cover(vaddr, filesz, extra):
    memsz = filesz + extra
    if memsz == 0:
        memsz = 1
    vmas = Segment(vaddr, memsz, filesz, 0, "rw-", 0x1000).vmas()
    covered = sum(e - s for s, e, _ in vmas)
    lo, hi = vaddr & ~0xFFF, (vaddr + memsz + 0xFFF) & ~0xFFF
    assert covered == hi - lo
    assert [k for _, _, k in vmas] in (["file"], ["anon"], ["file", "anon"])


# --- refusals: one line, an EmuError (exit status 2 in the CLI) ---------------

def _patched(src: Path, tmp_path: Path, offset: int, data: bytes, name="bad") -> Path:
    out = tmp_path / name
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    out.write_bytes(bytes(raw))
    return out


def _refused(path, *words):
    with pytest.raises(EmuError) as err:
        inspect_elf(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, msg
    assert err.value.exit_status == 2
    return msg


def test_missing(tmp_path):
    _refused(tmp_path / "nope", "no such file")


def test_directory(tmp_path):
    _refused(tmp_path, "directory")


def test_not_regular():
    _refused("/dev/null", "not a regular file")


def test_not_elf(tmp_path):
    p = tmp_path / "script.sh"
    p.write_text("#!/bin/sh\necho hi\n")
    _refused(p, "not an ELF")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    _refused(empty, "not an ELF")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_unreadable(tmp_path, x86_static):
    p = tmp_path / "locked"
    shutil.copy(x86_static, p)
    p.chmod(0)
    _refused(p, "cannot read")


def test_elf32(tmp_path, x86_static):
    _refused(_patched(x86_static, tmp_path, 4, b"\x01"), "unsupported ELF class ELF32")


def test_big_endian(tmp_path, x86_static):
    _refused(_patched(x86_static, tmp_path, 5, b"\x02"), "big-endian")


def test_riscv64(tmp_path, x86_static):
    _refused(_patched(x86_static, tmp_path, 18, struct.pack("<H", 243)),
             "unsupported machine riscv64")


def test_unknown_machine(tmp_path, x86_static):
    _refused(_patched(x86_static, tmp_path, 18, struct.pack("<H", 9999)),
             "unsupported machine e_machine 9999")


def test_relocatable(tmp_path, x86_static):
    _refused(_patched(x86_static, tmp_path, 16, struct.pack("<H", 1)), "not an executable",
             "ET_REL")


@pytest.mark.parametrize("keep", [20, 63, 100, 4096])
def test_truncated(tmp_path, x86_static, keep):
    p = tmp_path / f"trunc{keep}"
    p.write_bytes(x86_static.read_bytes()[:keep])
    _refused(p, "truncated ELF")


def test_corrupt_phdrs(tmp_path, x86_static):
    # e_phoff far beyond the file
    _refused(_patched(x86_static, tmp_path, 32, struct.pack("<Q", 1 << 40)), "truncated ELF")
