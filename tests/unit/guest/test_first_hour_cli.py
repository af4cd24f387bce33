"""The first hour's rough edges, without a guest: profile names, --at-mark slips,
--json -, finding programs, sysroot checks, Ctrl-C, and what the summary says."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from emu.arch.profile import load_profile
from emu.cli import build_parser, main
from emu.errors import EmuError
from emu.guest.qemu import check_program, resolve_binary
from emu.interrupt import Interrupt
from emu.report.result import at_mark_report
from emu.report.text import render
from emu.session import _Progress, _write_outputs, consume

REPO = Path(__file__).resolve().parents[3]
X86_GUEST = REPO / "build" / "guest" / "x86_64" / "touch"


@pytest.mark.parametrize("name", ["neoverse-n1", "neoverse_n1", "generic_x86_64",
                                  "generic-x86-64", "golden-cove"])
def test_profile_names_take_dash_or_underscore(name):
    assert load_profile(name).name.replace("_", "-") == name.replace("_", "-")


def test_unknown_profile_is_one_line():
    with pytest.raises(EmuError, match="unknown TLB profile 'nope' .*neoverse_n1"):
        load_profile("nope")


@pytest.mark.parametrize(("spec", "message"), [
    ("2:thp", "--at-mark 2:thp: no value for thp (e.g. 2:thp=always)"),
    ("2:mthp=", "--at-mark 2:mthp=: no value for mthp (e.g. 2:mthp=64K=always)"),
    ("2:max_ptes_none", "--at-mark 2:max_ptes_none: no value for max_ptes_none"),
    ("2:", "--at-mark 2:: no setting after 2:"),
    ("thp=always", "--at-mark thp=always: give ID:SETTING=VALUE"),
])
def test_at_mark_slips_name_what_is_missing(capsys, spec, message):
    assert main(["run", "--at-mark", spec, "--", "/bin/true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"emu: {message}") and err.count("\n") == 1


def test_khugepaged_help_states_the_default():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"]
                    .format_help().split())
    assert "off (the default" in text


def test_json_dash_goes_to_stdout_and_summary_to_stderr(capsys):
    args = argparse.Namespace(json="-", quiet=False, verbose=False)
    _write_outputs(args, _result())
    out, err = capsys.readouterr()
    assert json.loads(out)["instructions"] == 1234
    assert "instructions" in err and "{" not in err


def test_bare_names_are_found_on_path_and_paths_taken_as_given(tmp_path, monkeypatch):
    assert resolve_binary("ls") == shutil.which("ls")
    assert resolve_binary("./ls") == "./ls"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_text("")
    with pytest.raises(EmuError, match=r"^mine: command not found on PATH \(give ./mine"):
        resolve_binary("mine")


def _run_error(capsys, *argv: str) -> str:
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("emu: ")
    return err


def test_missing_sysroot(capsys, tmp_path):
    err = _run_error(capsys, "--sysroot", str(tmp_path / "no"), "--", "/bin/ls")
    assert "--sysroot" in err and "no such directory" in err


def test_sysroot_without_the_interpreter(capsys, tmp_path):
    err = _run_error(capsys, "--sysroot", str(tmp_path), "--", "/bin/ls")
    assert "interpreter /lib64/ld-linux-x86-64.so.2 is not in sysroot" in err


def test_interpreter_that_cannot_be_loaded(capsys, tmp_path):
    ld = tmp_path / "lib64" / "ld-linux-x86-64.so.2"
    ld.parent.mkdir()
    ld.write_text("not a loader\n")
    err = _run_error(capsys, "--sysroot", str(tmp_path), "--", "/bin/ls")
    assert "cannot be loaded: not an ELF file" in err


def test_interpreter_of_another_architecture(tmp_path):
    if not X86_GUEST.exists():
        pytest.skip("guests not built (bash setup.sh)")
    ld = tmp_path / "lib" / "ld-linux-aarch64.so.1"
    ld.parent.mkdir()
    shutil.copy(X86_GUEST, ld)
    with pytest.raises(EmuError, match="is for x86_64, the program for arm64"):
        check_program("/bin/ls", "arm64", "/lib/ld-linux-aarch64.so.1", str(tmp_path))


def test_binary_without_execute_permission(tmp_path):
    prog = tmp_path / "prog"
    shutil.copy("/bin/ls", prog)
    os.chmod(prog, 0o644)
    with pytest.raises(EmuError, match=r"not executable \(chmod \+x"):
        check_program(str(prog), "x86_64", None, None)


def test_interrupt_kills_once_then_aborts():
    killed = []
    with Interrupt() as stop:
        stop.on_interrupt = lambda: killed.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and killed == [1]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Machine:
    def __init__(self) -> None:
        self.fed: list[int] = []
        self.finished = False

    def feed(self, batch: int) -> None:
        self.fed.append(batch)

    def finish(self) -> None:
        self.finished = True


def test_consume_stops_after_the_batch_it_is_in():
    stop = Interrupt()
    closed = []

    def batches():
        try:
            for i in range(10):
                if i == 3:
                    stop.requested = True      # as the SIGINT handler would
                yield i
        finally:
            closed.append(True)

    m = _Machine()
    consume(m, batches(), _Progress(False), stop)   # type: ignore[arg-type]
    assert m.fed == [0, 1, 2, 3] and m.finished and closed == [True]


def _result(**extra) -> dict:
    vma = {"pid": 1, "start": 0x1000, "end": 0x2000, "kind": "anon", "name": "",
           "pages_touched": 1, "accesses": {"read": 1, "write": 0}}
    r = {"argv": ["prog"], "arch": "x86_64", "instructions": 1234,
         "accesses": {"read": 1, "write": 0}, "fetch_page_changes": 0, "pages_touched": 1,
         "vcpus": [{}], "processes": [{"exit_status": 0}], "syscall_counts": {},
         "syscalls": [], "markers": [{"pid": 1, "vcpu": 0, "id": 2, "instructions": 500}],
         "vmas": [vma, {**vma, "pages_touched": 0, "name": "idle"},
                  {**vma, "pages_touched": 0, "name": "idle2"}]}
    r.update(extra)
    return r


def test_summary_says_how_many_vmas_it_hides():
    text = render(_result())
    assert " VMAs: 3 at exit, 1 with data accesses; -v lists them" in text
    assert "idle" not in text
    verbose = render(_result(), verbose=True)
    assert "idle2" in verbose and "not shown" not in verbose


def test_partial_runs_are_marked():
    text = render(_result(partial=True, partial_reason="interrupted"))
    assert text.splitlines()[1] == " PARTIAL: interrupted (Ctrl-C); what was modelled up to then"


def test_at_mark_settings_applied_and_missed():
    at = at_mark_report(["2:thp=always", "0x9:max_ptes_none=0"], _result()["markers"])
    assert at[0]["applied"] == 1 and at[0]["first"]["instructions"] == 500
    assert at[1] == {"id": 9, "setting": "max_ptes_none=0", "applied": 0, "first": None}
    text = render(_result(at_mark=at))
    assert "   emu_mark(2): thp=always (first [1:0] at 500 instructions)" in text
    assert (" warning: --at-mark 9:max_ptes_none=0 was not applied: the guest never called"
            " emu_mark(9)") in text


def _khugepaged(thread: bool, calls: list) -> dict:
    return {"thread": thread, "collapses_by_size_kb": {"2048": 1} if calls else {},
            "pages_by_mapping_size": {}, "madvise_collapse": calls, "guest_stalls": {},
            "khugepaged": {"algo": "v19", "passes": 0, "full_scans": 0,
                           "pages_collapsed": 0, "busy_ns": 0, "results": {}}}


def test_khugepaged_off_omits_the_thread_but_keeps_madvise_collapse():
    call = {"start": 0x200000, "length": 0x200000, "ret": 0, "errno": "",
            "pmds": [{"result": "SCAN_SUCCEED"}]}
    assert "khugepaged" not in render(_result(khugepaged=_khugepaged(False, [])))
    off = render(_result(khugepaged=_khugepaged(False, [call])))
    assert "passes" not in off
    assert "   MADV_COLLAPSE 0x200000+0x200000 = 0 [SCAN_SUCCEED]" in off
    assert "0 passes" in render(_result(khugepaged=_khugepaged(True, [])))

