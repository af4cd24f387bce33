"""The progress line: on a terminal stderr it is drawn (and ended with a newline);
piped, stderr carries no trace of it."""

from __future__ import annotations

import os
import pty
import subprocess

import pytest
from bundled import EMU, REPO, guest

pytestmark = pytest.mark.integration


def _run(stderr: int) -> subprocess.CompletedProcess:
    return subprocess.run([*EMU, "run", "--", guest("x86_64", "sparse"), "-i", "2000"],
                          stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, timeout=300)


def test_progress_line_on_a_terminal_only() -> None:
    main, sub = pty.openpty()
    try:
        p = _run(sub)
        os.close(sub)
        sub = -1
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if sub >= 0:
            os.close(sub)
        os.close(main)
    assert p.returncode == 0
    tty = b"".join(chunks).decode(errors="replace")
    assert "\x1b[2K" in tty and "guest instructions" in tty and "events" in tty
    assert "page faults" in tty and "simulated" in tty
    assert " Performance counter stats for" in tty
    piped = subprocess.run([*EMU, "run", "--", guest("x86_64", "sparse"), "-i", "2000"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    assert piped.returncode == 0 and "\x1b" not in piped.stderr
    assert "guest instructions (" not in piped.stderr
