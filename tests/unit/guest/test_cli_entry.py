"""The `emu` command's exit path: main(), flush, os._exit (no interpreter teardown)."""

import os
import subprocess
import sys

import pytest

EMU = [sys.executable, "-m", "emu.cli"]


@pytest.fixture
def buffered_env():
    """Block-buffered stdout, as for a user who has not set PYTHONUNBUFFERED."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_everything_written_reaches_a_pipe(buffered_env):
    p = subprocess.run([*EMU, "profiles"], capture_output=True, text=True, env=buffered_env)
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    # One line per bundled profile (emu/arch/data), the last one whole.
    from emu.arch.profile import list_profiles
    bundled = sum(len(list_profiles(arch)) for arch in ("x86_64", "arm64"))
    assert len(lines) == bundled == 7 and lines[-1].strip()
    assert {ln.split()[0] for ln in lines} == {"x86_64", "arm64"}


def test_errors_keep_their_status_and_one_line(buffered_env, tmp_path):
    p = subprocess.run([*EMU, "run", "--", str(tmp_path / "missing")], capture_output=True,
                       text=True, env=buffered_env)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"emu: {tmp_path / 'missing'}: no such file"]


def test_a_closed_pipe_is_a_quiet_failure(buffered_env):
    p = subprocess.Popen([*EMU, "profiles"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=buffered_env)
    p.stdout.close()                                  # the reader went away (`| head -0`)
    err = p.stderr.read()
    assert p.wait() == 1
    assert b"Traceback" not in err and b"Exception ignored" not in err
