"""Launch a guest under Debian's qemu-user with the emu plugin streaming to a FIFO.

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
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from emu.errors import EmuError

QEMU_BINARIES = {"x86_64": "qemu-x86_64", "arm64": "qemu-aarch64"}
DEFAULT_SYSROOTS = {"x86_64": "/", "arm64": "/usr/aarch64-linux-gnu"}
_ARCH_ALIASES = {"x86_64": "x86_64", "x86-64": "x86_64", "amd64": "x86_64",
                 "arm64": "arm64", "aarch64": "arm64"}
REPO = Path(__file__).resolve().parents[2]
# While the model loads, the stream is drained into memory up to this much;
# past it QEMU waits on the pipe as it would without a prefetch.
PREFETCH_MAX = 1 << 30


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


def find_plugin() -> str:
    """build/libemu.so of this checkout, or $EMU_PLUGIN; EmuError if missing."""
    path = Path(os.environ.get("EMU_PLUGIN") or REPO / "build" / "libemu.so")
    if not path.is_file():
        raise EmuError(f"plugin not built ({path} missing): run `bash setup.sh`")
    return str(path)


class _FifoStream:
    """Read end of the plugin's FIFO that cannot hang if QEMU never opens it.

    Opened non-blocking before QEMU starts (so the plugin's open never
    blocks); the first read polls until data or hang-up arrives or QEMU has
    exited, then the descriptor turns blocking and EOF means every guest
    process (forks included) has closed the stream.
    """

    def __init__(self, path: str, proc: subprocess.Popen | None = None):
        self.name = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            import fcntl
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (OSError, AttributeError):
            pass  # a smaller pipe only costs more wake-ups
        self.proc = proc
        self._connected = False
        self._pending: deque[bytes] = deque()
        self._pending_off = 0
        self._eof = False
        self._error: OSError | None = None
        self._drainer: threading.Thread | None = None
        self._stop = threading.Event()

    def prefetch(self, limit: int = PREFETCH_MAX) -> None:
        """Drain the FIFO into memory in a thread until readinto() has caught up.

        QEMU starts as soon as the options are checked, while emu imports and
        builds the model (about a second); without a reader the pipe would
        fill within milliseconds and stall the guest for all that time.
        """
        self._drainer = threading.Thread(target=self._drain, args=(limit,),
                                         name="emu-fifo-prefetch", daemon=True)
        self._drainer.start()

    def _drain(self, limit: int) -> None:
        try:
            if not self._wait_connected():
                self._eof = True
                return
            p = select.poll()
            p.register(self._fd, select.POLLIN | select.POLLHUP)
            total = 0
            while total < limit and not self._stop.is_set():
                if not p.poll(20):
                    continue
                data = os.read(self._fd, 1 << 20)
                if not data:
                    self._eof = True
                    return
                self._pending.append(data)
                total += len(data)
        except OSError as e:
            self._error = e

    def _stop_drainer(self) -> None:
        if self._drainer is not None:
            self._stop.set()
            self._drainer.join()
            self._drainer = None

    def _from_pending(self, mv) -> int:
        """Copy as much of the backlog as fits into mv."""
        got = 0
        while self._pending and got < len(mv):
            data = self._pending[0]
            n = min(len(mv) - got, len(data) - self._pending_off)
            mv[got:got + n] = data[self._pending_off:self._pending_off + n]
            got += n
            self._pending_off += n
            if self._pending_off == len(data):
                self._pending.popleft()
                self._pending_off = 0
        return got

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

    def readinto(self, mv) -> int:
        # While a backlog is served the drainer keeps emptying the pipe, so
        # QEMU does not stall while the model catches up; then reads go direct.
        if self._drainer is not None and not self._pending:
            self._stop_drainer()
            if self._error is not None:
                raise self._error
        if self._pending:
            return self._from_pending(mv)
        if self._eof:
            return 0
        if not self._connected and not self._wait_connected():
            return 0
        return os.readv(self._fd, [mv])

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(1 << 20 if n < 0 else n)
        k = self.readinto(memoryview(buf))
        return bytes(buf[:k])

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

    stream: the FIFO's read end (pass to emu.trace.iter_batches);
    wait() -> exit status; argv: the QEMU command line used.
    """

    def __init__(self, binary: str | os.PathLike, args: Sequence[str] = (), *,
                 arch: str, sysroot: str | None = None, plugin: str | None = None,
                 plugin_args: Sequence[str] = (), out: str | None = None,
                 qemu_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 stdin=None, stdout=None, stderr=None):
        self.arch = normalize_arch(arch)
        self.binary = str(binary)
        self.args = list(args)
        self.sysroot = sysroot or DEFAULT_SYSROOTS[self.arch]
        self.qemu = find_qemu(self.arch)
        self.plugin = plugin or find_plugin()
        self.plugin_args = list(plugin_args)
        self.qemu_args = list(qemu_args)
        self._out = out   # a file or /dev/null instead of a FIFO (benchmarks)
        self.env = env
        self._stdio = {"stdin": stdin, "stdout": stdout, "stderr": stderr}  # None: inherit
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.proc: subprocess.Popen | None = None
        self.stream: _FifoStream | None = None
        self.argv: list[str] = []

    def start(self) -> "GuestRun":
        if not os.path.isfile(self.binary):
            raise EmuError(f"{self.binary}: no such file")
        if self._out is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="emu-")
            fifo = os.path.join(self._tmp.name, "stream")
            os.mkfifo(fifo, 0o600)
            self.stream = _FifoStream(fifo)
            out = fifo
        else:
            out = self._out
        opts = ",".join([self.plugin, f"out={out}", *self.plugin_args])
        self.argv = [self.qemu, "-L", self.sysroot, *self.qemu_args, "-plugin", opts,
                     self.binary, *self.args]
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, **self._stdio)
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
