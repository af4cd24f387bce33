"""Which file each open descriptor names, per process: the model's files_struct.

The plugin reads the path an open() names in guest memory and sends it just
before the open's SYSCALL record (docs/trace-format.md, "Names"); the
machine hands it here with the call's result.  mmap() of a descriptor then
names the VMA, and keys the page cache, by path, as the kernel's page cache
is keyed by inode: two opens of one file share its pages.  Descriptors whose
open was not seen (a recording made before paths were streamed, a path too
long to read) keep emu's old name, ``fdN``.
"""

from __future__ import annotations

_OPENS = ("open", "openat", "openat2", "creat")
_DUPS = ("dup", "dup2", "dup3")
F_DUPFD, F_DUPFD_CLOEXEC = 0, 1030


class Files:
    def __init__(self) -> None:
        self.fds: dict[int, dict[int, str]] = {}

    def path(self, pid: int, fd: int) -> str | None:
        return self.fds.get(pid, {}).get(fd)

    def syscall(self, pid: int, name: str, args: tuple[int, ...], ret: int,
                path: str | None) -> None:
        """Follow opens, closes and dups as the call completed (ret from QEMU)."""
        if ret < 0:
            return
        table = self.fds.setdefault(pid, {})
        if name in _OPENS:
            if path is not None:
                table[ret] = path
            else:
                table.pop(ret, None)
        elif name == "close":
            table.pop(args[0], None)
        elif name == "close_range":
            for fd in [fd for fd in table if args[0] <= fd <= args[1]]:
                del table[fd]
        elif name in _DUPS or (name == "fcntl" and args[1] in (F_DUPFD, F_DUPFD_CLOEXEC)):
            old = table.get(args[0])
            if old is not None:
                table[ret] = old
            else:
                table.pop(ret, None)

    def fork(self, parent: int, child: int) -> None:
        """fork() without CLONE_FILES: the child starts with a copy of the table."""
        self.fds[child] = dict(self.fds.get(parent, {}))

    def exit(self, pid: int) -> None:
        self.fds.pop(pid, None)


def decode_path(chunks: list[bytes]) -> str | None:
    """The path from its pseudo-syscall records: NUL-padded UTF-8 (bytes kept as escapes)."""
    raw = b"".join(chunks).split(b"\0", 1)[0]
    return raw.decode("utf-8", "backslashreplace") if raw else None
