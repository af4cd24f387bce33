"""Names: fds opened by path name file VMAs; a dynamic program's interpreter and PIE
main program are placed where QEMU loaded them and named, not implicit."""

from kernel_model_helpers import PAGE, make_kernel

from emu.guest.elf import Segment
from emu.kernel.files import Files, decode_path

MAP_PRIVATE = 0x02


def test_files_follow_open_dup_close_fork() -> None:
    f = Files()
    f.syscall(1, "openat", (0, 0, 0, 0), 3, "/etc/passwd")
    f.syscall(1, "dup", (3,), 5, None)
    f.syscall(1, "fcntl", (5, 1030, 10), 10, None)     # F_DUPFD_CLOEXEC
    f.syscall(1, "openat", (0, 0, 0, 0), -2, "/nope")  # failed: changes nothing
    assert f.path(1, 3) == f.path(1, 5) == f.path(1, 10) == "/etc/passwd"
    f.fork(1, 2)
    f.syscall(1, "close", (3,), 0, None)
    f.syscall(1, "openat", (0, 0, 0, 0), 3, None)      # reused fd, path not seen: unknown
    assert f.path(1, 3) is None and f.path(2, 3) == "/etc/passwd"
    f.syscall(2, "close_range", (0, 2**32 - 1, 0), 0, None)
    assert f.fds[2] == {}


def test_decode_path_from_records() -> None:
    name = b"/usr/lib/locale/C.utf8/LC_CTYPE"
    recs = [(name + b"\0" * 112)[i:i + 56] for i in (0, 56)]
    assert decode_path(recs) == name.decode()
    assert decode_path([]) is None and decode_path([b"\0" * 56]) is None


def test_mmap_of_a_named_fd_is_named_and_keyed_by_path() -> None:
    k = make_kernel()
    mm = k.new_mm(1)
    k.files.syscall(1, "openat", (0, 0, 0, 0), 3, "/lib/libc.so.6")
    k.syscall(1, 0, "mmap", (0, 2 * PAGE, 1, MAP_PRIVATE, 3, 0), 0x10000000)
    k.syscall(1, 0, "mmap", (0, PAGE, 1, MAP_PRIVATE, 4, 0), 0x20000000)
    named, unknown = mm.vmas.find(0x10000000), mm.vmas.find(0x20000000)
    assert (named.name, named.file) == ("/lib/libc.so.6", "/lib/libc.so.6")
    assert (unknown.name, unknown.file) == ("fd4", "fd:1:4")


class _Interp:
    path = "/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1"
    is_pie = True
    interp = None
    entry = 0x1c40
    segments = (Segment(0x0, 0x26000, 0x26000, 0, "r-x", 0x10000),
                Segment(0x3dc00, 0x2000, 0x1800, 0x2dc00, "rw-", 0x10000))
    brk = 0x40000


class _DynPie:
    path = "/bin/prog"
    is_pie = True
    interp = "/lib/ld-linux-aarch64.so.1"
    entry = 0x700
    segments = (Segment(0x0, 0x900, 0x900, 0, "r-x", 0x10000),
                Segment(0x1fdc8, 0x300, 0x280, 0xfdc8, "rw-", 0x10000))
    brk = 0x21000


def test_interpreter_at_first_fetch_and_pie_main_at_place_exec() -> None:
    k = make_kernel()
    mm = k.exec_mm(9, _DynPie(), interp=_Interp())
    assert len(mm.vmas) == 0
    ld = 0x55_0282_2000
    assert k.handle_mm_fault(9, 0, ld + 0x1000, 2, None)      # QEMU starts at ld.so's entry
    assert {v.file for v in mm.vmas} == {"/lib/ld-linux-aarch64.so.1"}
    assert mm.vmas.find(ld).name == "text" and mm.brk == 0       # ld.so sets no brk
    main = 0x55_0000_0000
    k.place_exec(9, main + 0x0, ld + 0x1c40)                     # start_code, entry_code
    assert mm.vmas.find(main).file == "/bin/prog"
    assert mm.vmas.find(main + 0x1f000).name == "data"
    assert mm.start_brk == main + 0x21000
    assert all(v.kind != "implicit" for v in mm.vmas)
