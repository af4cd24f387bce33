"""What a new user runs into in the first hour, on real QEMU: --json -, --at-mark
outcomes, PATH lookup, QEMU refusing to start, Ctrl-C, cut recordings, khugepaged off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from bundled import EMU, REPO, guest

pytestmark = pytest.mark.integration


def emu(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EMU, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=env)


def test_json_dash_is_stdout_after_the_guest_output():
    p = emu("run", "--json", "-", "--", guest("x86_64", "touch"), "-m", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    truth, _, doc = p.stdout.partition("\n{")
    assert truth.startswith("EMU-TRUTH")
    assert json.loads("{" + doc)["partial"] is False
    assert "instructions" in p.stderr and "EMU-TRUTH" not in p.stderr


def test_at_mark_applied_and_unreached_in_summary_and_json():
    p = emu("run", "--json", "-", "--at-mark", "2:thp=always", "--at-mark", "7:max_ptes_none=0",
            "--", guest("arm64", "sparse"), "-i", "5")
    assert p.returncode == 0, p.stderr[-2000:]
    assert " Settings applied at markers (--at-mark):" in p.stderr
    assert "   emu_mark(2): thp=always (first [" in p.stderr
    assert (" warning: --at-mark 7:max_ptes_none=0 was not applied: the guest never called"
            " emu_mark(7)") in p.stderr
    result = json.loads("{" + p.stdout.partition("\n{")[2])
    assert [a["applied"] for a in result["at_mark"]] == [1, 0]


def test_bare_name_is_found_on_path():
    guest("x86_64", "touch")       # skip without the plugin
    p = emu("run", "-q", "--", "true")
    assert p.returncode == 0 and p.stderr == ""


def test_qemu_refusing_to_start_is_one_emu_line_and_no_summary(tmp_path):
    bad = tmp_path / "libemu.so"
    bad.write_text("not a plugin\n")
    env = {**os.environ, "EMU_PLUGIN": str(bad)}
    p = emu("run", "--", guest("x86_64", "touch"), "-m", "1", env=env)
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("emu: ") and "could not run" in last
    assert "instructions" not in p.stderr


def test_ctrl_c_prints_a_partial_summary(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.Popen([*EMU, "run", "--json", str(out), "--",
                             guest("x86_64", "random"), "-m", "8", "-i", "400000000"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(4)
    assert proc.poll() is None, "the guest finished before the interrupt"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - sent < 15
    assert " PARTIAL: interrupted (Ctrl-C); what was modelled up to then" in err
    assert "Traceback" not in err
    result = json.loads(out.read_text())
    assert result["partial"] is True and result["instructions"] > 0


def test_cut_recording_refused_then_replayed_with_partial(tmp_path):
    rec = tmp_path / "r.emutrace"
    p = emu("run", "-q", "--record", str(rec), "--", guest("arm64", "random"), "-m", "4",
            "-i", "100000")
    assert p.returncode == 0, p.stderr[-2000:]
    cut = tmp_path / "cut.emutrace"
    cut.write_bytes(rec.read_bytes()[:rec.stat().st_size // 2])
    p = emu("replay", str(cut))
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "emu replay --partial" in p.stderr
    p = emu("replay", "--partial", "--json", "-", str(cut))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.startswith(f"emu: warning: {cut}: truncated at file byte")
    assert " PARTIAL: the recording was cut short" in p.stderr
    result = json.loads(p.stdout)
    assert result["partial"] is True and result["instructions"] > 0


def test_khugepaged_off_shows_madvise_collapse_only():
    p = emu("run", "--", guest("x86_64", "churn"), "-i", "7")
    assert p.returncode == 0, p.stderr[-2000:]
    assert " MADV_COLLAPSE (the khugepaged thread is off; --khugepaged runs it):" in p.stderr
    assert "   MADV_COLLAPSE 0x" in p.stderr
    assert "passes, full_scans" not in p.stderr
