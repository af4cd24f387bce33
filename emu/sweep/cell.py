"""One cell on a worker: `emu replay` of a recording with the cell's flags, as data.

The replay goes through emu's own parser and session (emu.options, then
emu.session.dispatch with --json), so a cell equals a serial `emu replay` by
construction; running it inside the worker
process rather than as a subprocess keeps numba's compiled code warm from one
cell to the next (a fresh process spends about a second loading it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Scalars under these paths are per-CPU or per-call detail, not a cell's numbers.
SKIP_PREFIXES = ("tlb.per_cpu.",)

# A replay reports on the process's sys.stderr: one replay at a time per process
# (the model holds the GIL, so more threads would not run faster anyway).
_LOCK = threading.Lock()


class CellError(Exception):
    """A cell's replay failed; the message is emu's one-line error."""


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """The scalars of a JSON document under dotted paths (lists are left out)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif not isinstance(d, list):
        key = prefix[:-1]
        if not key.startswith(SKIP_PREFIXES):
            out[key] = d
    return out


def _local_copy(data: bytes, sha: str) -> str:
    """A sent recording as a file on this worker's machine, written once per machine."""
    folder = Path(tempfile.gettempdir()) / f"emu-sweep-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{sha}.trace"
    if not path.exists() or path.stat().st_size != len(data):
        if hashlib.sha256(data).hexdigest() != sha:
            raise CellError(f"recording {sha[:12]}: bytes arrived damaged")
        tmp = folder / f".{sha}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def run_cell(flags: list[str], recording: str | bytes, sha: str,
             config_toml: str | None = None) -> dict[str, Any]:
    """Replay one cell; its flattened JSON result, or CellError with emu's message.

    `recording` is a path the worker can read (shared filesystem) or the
    recording's bytes (sent to the worker once, see driver.py).
    """
    from emu import session
    from emu.errors import EmuError
    from emu.options import build_parser, check_at_marks

    path = recording if isinstance(recording, str) else _local_copy(recording, sha)
    with _LOCK, tempfile.TemporaryDirectory(prefix="emu-cell-") as tmp:
        flags = list(flags)
        if config_toml is not None:
            i = flags.index("--config")
            toml = Path(tmp) / "config.toml"
            toml.write_text(config_toml)
            flags[i + 1] = str(toml)
        out = Path(tmp) / "result.json"
        err = io.StringIO()
        t0 = time.perf_counter()
        args = build_parser().parse_args(["replay", "-q", "--force", "--json", str(out),
                                          *flags, path])
        status = None
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:                  # what `emu replay` does, in this worker process
                check_at_marks(args.at_mark)
                status = session.dispatch(args)
            except EmuError as e:
                raise CellError(str(e)) from None
        seconds = time.perf_counter() - t0
        if not out.exists():
            lines = err.getvalue().strip().splitlines()
            msg = lines[-1] if lines else f"emu replay exited with status {status}"
            raise CellError(msg.removeprefix("emu: "))
        result = json.loads(out.read_text())
    return {"metrics": flatten(result), "seconds": round(seconds, 3),
            "worker": f"{socket.gethostname()}:{os.getpid()}"}
