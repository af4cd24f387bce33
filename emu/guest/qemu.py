"""Launch a guest under Debian's qemu-user with the emu plugin streaming to emu.

    with GuestRun(binary, args, arch="x86_64") as run:
        for batch in iter_batches(run.stream): ...
        status = run.wait()

The guest's stdin, stdout and stderr are inherited; wait() returns its exit
status the way a shell reports it (128 + signal if it was killed).
"""

import os
import select
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from emu.errors import EmuError
from emu.guest.backlog import Backlogged

QEMU_BINARIES = {"x86_64": "qemu-x86_64", "arm64": "qemu-aarch64"}
DEFAULT_SYSROOTS = {"x86_64": "/", "arm64": "/usr/aarch64-linux-gnu"}
_ARCH_ALIASES = {"x86_64": "x86_64", "x86-64": "x86_64", "amd64": "x86_64",
                 "arm64": "arm64", "aarch64": "arm64"}
REPO = Path(__file__).resolve().parents[2]


def normalize_arch(arch: str) -> str:
    """'x86_64' or 'arm64' for any common spelling; EmuError otherwise."""
    try:
        return _ARCH_ALIASES[arch.lower()]
    except KeyError:
        raise EmuError(f"unsupported architecture '{arch}': emu runs x86_64 and arm64") from None


def find_qemu(arch: str) -> str:
    """Path of the qemu-user binary for arch, or EmuError naming the package."""
    name = QEMU_BINARIES[normalize_arch(arch)]
    path = shutil.which(name)
    if path is None:
        raise EmuError(f"{name} not found: install Debian's qemu-user")
    return path


def resolve_binary(name: str) -> str:
    """The program a shell would run for `name`: a bare name is looked up on PATH.

    `./x` and other paths (anything with a slash) are taken as given, so a
    file in the current directory is run only when the user says so.
    """
    if "/" in name:
        return name
    found = shutil.which(name)
    if found is None:
        hint = f" (give ./{name} for the file here)" if os.path.exists(name) else ""
        raise EmuError(f"{name}: command not found on PATH{hint}")
    return found


def check_program(binary: str, arch: str, interp: str | None,
                  sysroot: str | None) -> str:
    """The sysroot QEMU will use, after checking what QEMU would refuse.

    QEMU reports these cases late and obscurely (or silently, with exit 1 or
    255 and a summary of nothing), so emu checks them before starting it:
    the binary must be executable, the sysroot must exist, and a dynamic
    program's interpreter (PT_INTERP, looked up under the sysroot as QEMU's
    -L does) must be an ELF for the same architecture.
    """
    from emu.guest.elf import inspect_elf

    arch = normalize_arch(arch)
    if not os.access(binary, os.X_OK):
        raise EmuError(f"{binary}: not executable (chmod +x {binary})")
    root = sysroot or DEFAULT_SYSROOTS[arch]
    if not os.path.isdir(root):
        what = "--sysroot" if sysroot else f"the default {arch} sysroot"
        raise EmuError(f"{what} {root}: no such directory")
    if interp is None:
        return root
    path = os.path.join(root, interp.lstrip("/"))
    if not os.path.exists(path):
        hint = ("give --sysroot DIR" if sysroot is None else "is it the right sysroot?")
        raise EmuError(f"{binary}: its interpreter {interp} is not in sysroot {root} "
                       f"(no {path}; {hint})")
    try:
        info = inspect_elf(path)
    except EmuError as e:
        raise EmuError(f"{binary}: interpreter {path} cannot be loaded: "
                       f"{str(e).removeprefix(path + ': ')}") from None
    if info.arch != arch:
        raise EmuError(f"{binary}: interpreter {path} is for {info.arch}, the program "
                       f"for {arch} (wrong --sysroot?)")
    return root


def find_plugin() -> str:
    """build/libemu.so of this checkout, or $EMU_PLUGIN; EmuError if missing."""
    path = Path(os.environ.get("EMU_PLUGIN") or REPO / "build" / "libemu.so")
    if not path.is_file():
        raise EmuError(f"plugin not built ({path} missing): run `bash setup.sh`")
    return str(path)


def default_ring_bytes() -> int:
    """The ring's size for a run, 0 for the FIFO transport.

    Published chunks are read after their magic without a fence, which
    x86-64's load ordering makes safe; elsewhere the FIFO carries the data.
    """
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return 0
    from emu.guest.ring import RING_BYTES
    return RING_BYTES


class _FifoStream(Backlogged):
    """Read end of the plugin's FIFO that cannot hang if QEMU never opens it.

    Opened non-blocking before QEMU starts (so the plugin's open never
    blocks); the first read polls until data or hang-up arrives or QEMU has
    exited, then the descriptor turns blocking and EOF means every guest
    process (forks included) has closed the stream.
    """

    def __init__(self, path: str, proc: subprocess.Popen | None = None):
        super().__init__()
        self.name = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            import fcntl
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (OSError, AttributeError):
            pass  # a smaller pipe only costs more wake-ups
        self.proc = proc
        self._connected = False
        self._poll: select.poll | None = None

    def _next_block(self) -> bytes | bytearray | None:
        if not self._connected:
            if not self._wait_connected():
                return None
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN | select.POLLHUP)
        if not self._poll.poll(20):
            return b""
        return os.read(self._fd, 1 << 20) or None

    def _wait_connected(self) -> bool:
        p = select.poll()
        p.register(self._fd, select.POLLIN | select.POLLHUP)
        while True:
            if p.poll(100):
                break
            if self.proc is not None and self.proc.poll() is not None:
                if not p.poll(0):
                    return False  # QEMU exited without ever writing
                break
        os.set_blocking(self._fd, True)
        self._connected = True
        return True

    def _read_direct(self, mv) -> int:
        if not self._connected and not self._wait_connected():
            return 0
        return os.readv(self._fd, [mv])

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self._stop_drainer()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0


class GuestRun:
    """One guest under QEMU with the plugin; a context manager.

    stream: the stream's read end (pass to emu.trace.iter_batches): the
    shared-memory ring (emu.guest.ring) by default, the FIFO with ring=0;
    wait() -> exit status; argv: the QEMU command line used.
    """

    def __init__(self, binary: str | os.PathLike, args: Sequence[str] = (), *,
                 arch: str, sysroot: str | None = None, plugin: str | None = None,
                 plugin_args: Sequence[str] = (), out: str | None = None,
                 qemu_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 stdin=None, stdout=None, stderr=None, ring: int | None = None):
        self.arch = normalize_arch(arch)
        self.binary = str(binary)
        self.args = list(args)
        self.sysroot = sysroot or DEFAULT_SYSROOTS[self.arch]
        self.qemu = find_qemu(self.arch)
        self.plugin = plugin or find_plugin()
        self.plugin_args = list(plugin_args)
        self.qemu_args = list(qemu_args)
        self._out = out   # a file or /dev/null instead of a FIFO (benchmarks)
        # Bytes of shared-memory ring (emu.guest.ring), 0 for the FIFO alone.
        self._ring_bytes = default_ring_bytes() if ring is None else ring
        self.env = env
        self._stdio = {"stdin": stdin, "stdout": stdout, "stderr": stderr}  # None: inherit
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.proc: subprocess.Popen | None = None
        self.stream: _FifoStream | None = None
        self.argv: list[str] = []

    def start(self) -> "GuestRun":
        if not os.path.isfile(self.binary):
            raise EmuError(f"{self.binary}: no such file")
        ring = None
        extra = []
        if self._out is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="emu-")
            fifo = os.path.join(self._tmp.name, "stream")
            os.mkfifo(fifo, 0o600)
            if self._ring_bytes:
                from emu.guest.ring import Ring, RingStream
                ring = Ring(self._ring_bytes)
                self.stream = RingStream(fifo, ring)
                extra = [f"ringfd={ring.fd}"]
            else:
                self.stream = _FifoStream(fifo)
            out = fifo
        else:
            out = self._out
        opts = ",".join([self.plugin, f"out={out}", *extra, *self.plugin_args])
        self.argv = [self.qemu, "-L", self.sysroot, *self.qemu_args, "-plugin", opts,
                     self.binary, *self.args]
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, **self._stdio,
                                         pass_fds=(ring.fd,) if ring else ())
        except OSError as e:
            self.close()
            raise EmuError(f"cannot start {self.qemu}: {e.strerror}") from None
        if self.stream is not None:
            self.stream.proc = self.proc
        return self

    def wait(self) -> int:
        """The guest's exit status; 128 + N if a signal N ended it."""
        assert self.proc is not None, "start() first"
        rc = self.proc.wait()
        return 128 - rc if rc < 0 else rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def kill_nowait(self) -> None:
        """SIGKILL QEMU without reaping it: safe in a signal handler (wait() takes a lock)."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.kill()
        if self.stream is not None:
            self.stream.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "GuestRun":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
