"""What the integration tests share: the checkout, the `emu` command, the bundled guests."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EMU = [sys.executable, "-m", "emu.cli"]


def guest(arch: str, name: str) -> str:
    """The bundled guest's path, or a skip where setup.sh has not built it."""
    path = REPO / "build" / "guest" / arch / name
    if not path.exists() or not (REPO / "build" / "libemu.so").exists():
        pytest.skip(f"{path.relative_to(REPO)} or the plugin is not built (bash setup.sh)")
    return str(path)


def run_emu(*args: str) -> subprocess.CompletedProcess:
    """`emu ARGS` from the checkout; asserts it exits 0 (showing its stderr if not)."""
    p = subprocess.run([*EMU, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p
