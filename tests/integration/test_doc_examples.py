"""Every `emu` command in the Markdown code blocks of README.md and docs/ runs as written.

The commands run in order, through bash, in a scratch directory where
`.venv` and `build` link to this checkout, so relative paths work and the
files they write land in the scratch directory.  A command runs exactly as
written unless EXAMPLES below says otherwise, in a substitution the table
spells out (smaller arguments for long runs, a bundled guest or a generated
file for what the user would supply).  Each example must exit with status 0
and show what its sentence claims (CHECKS); an `emu` line in the docs that
the table does not know still has to run and print a summary, and a table
entry the docs no longer contain fails, so the two stay in step.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emu.trace.reader import read_meta

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_EMU_LINE = re.compile(r"(^|\s|/)emu (run|replay|profiles|compare)\b")

pytestmark = pytest.mark.integration


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for each `emu` line in a fenced code block, comments removed."""
    out = []
    for path in DOCS:
        for block in re.findall(r"```[^\n]*\n(.*?)```", path.read_text(), re.S):
            for line in block.splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if _EMU_LINE.search(command):
                    out.append((str(path.relative_to(REPO)), command))
    return out


@dataclass
class Run:
    """What a finished example left behind."""

    cwd: Path
    stdout: str
    stderr: str

    def json(self, name: str) -> dict:
        return json.loads((self.cwd / name).read_text())


@dataclass
class Example:
    """How one documented command is run and what it has to show."""

    check: Callable[[Run], None]
    # (written, run instead) pairs applied to the command; each must occur in it.
    subs: list[tuple[str, str]] = field(default_factory=list)
    why: str = ""
    synopsis: bool = False     # a usage line with placeholders: not a command


def _summary(r: Run) -> None:
    assert re.search(r"^\s+[\d,]+\s+instructions$", r.stderr, re.M), r.stderr[-2000:]


def _tlb(profile: str) -> Callable[[Run], None]:
    def check(r: Run) -> None:
        _summary(r)
        assert f"TLB model, profile {profile}" in r.stderr
    return check


def _no_thp(r: Run) -> None:
    _summary(r)
    assert "thp_fault_alloc" not in r.stderr and "2M-pmd" not in r.stderr


def _check_random(r: Run) -> None:
    _tlb("generic-x86_64")(r)
    assert "dTLB-load-misses" in r.stderr


def _check_neoverse(r: Run) -> None:
    _tlb("neoverse_n1")(r)
    _no_thp(r)


def _check_mthp(r: Run) -> None:
    result = r.json("out.json")
    assert result["kernel"]["config"]["hugepages-64kB/enabled"] == "always"
    assert result["pages_touched"] > 0 and "64" in result["kernel"]["mthp_stats"]


def _recording(name: str) -> Callable[[Run], None]:
    def check(r: Run) -> None:
        assert read_meta(r.cwd / name)["arch"] in ("x86_64", "arm64")
    return check


def _check_record(r: Run) -> None:
    _summary(r)
    _recording("run.emutrace")(r)


def _check_khugepaged(r: Run) -> None:
    kh = r.json("khugepaged.json")["khugepaged"]
    assert kh["thread"] and kh["khugepaged"]["passes"] > 0
    assert sum(kh["collapses_by_size_kb"].values()) >= 1, kh
    assert "emu_mark(2): thp=always" in r.stderr


def _check_max_ptes_none(r: Run) -> None:
    _summary(r)
    assert "thp_scan_exceed_none_pte" in r.stderr
    assert re.search(r"khugepaged \(v19\): [1-9]\d* passes", r.stderr), r.stderr[-2000:]
    assert "pages_collapsed 0" in r.stderr and "emu_mark(2): enabled=always" in r.stderr


def _check_gzip(r: Run) -> None:
    _summary(r)
    assert "L0 micro-TLB hits (64 entries" in r.stderr
    done = subprocess.run(["gzip", "-dc", str(r.cwd / "big.gz")], capture_output=True,
                          check=True)
    assert done.stdout == (r.cwd / "big.txt").read_bytes()


def _check_profiles(r: Run) -> None:
    names = {tuple(line.split()[:2]) for line in r.stdout.splitlines()}
    assert ("arm64", "neoverse_n1") in names and ("x86_64", "generic-x86_64") in names


def _check_tutorial_random(r: Run) -> None:
    _tlb("generic-arm64")(r)
    assert re.search(r"^   anon-thp-pmd-aligned-2048kB: +32768 kB \(100%\)$", r.stderr, re.M)
    rss = re.search(r"Rss ([\d,]+) kB .* = the model's RSS counter ([\d,]+) kB", r.stderr)
    assert rss and rss.group(1) == rss.group(2), r.stderr[-2000:]


def _check_tutorial_compare(r: Run) -> None:
    assert "x86_64: 64K mTHP leaves L2 TLB misses" in r.stderr, r.stderr[-2000:]
    assert "arm64: 64K mTHP cuts L2 TLB misses" in r.stderr
    assert "data:image/png;base64," in (r.cwd / "cmp" / "report.html").read_text()


def _check_tutorial_collapse(r: Run) -> None:
    assert "collapses by size: 2048kB x4" in r.stderr, r.stderr[-3000:]
    at_mark = r.stderr.split("at emu_mark(2)")[1].split(" Mappings of pid")[0]
    assert "anon-thp-pmd-aligned" not in at_mark
    assert re.search(r"anon-thp-pmd-aligned-2048kB: +8192 kB", r.stderr)
    trace = json.loads((r.cwd / "sparse-timeline.json").read_text())
    tracks = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert {"khugepaged", "vCPU 0"} <= tracks
    page = (r.cwd / "sparse-report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3


def _check_tutorial_tlbs(r: Run) -> None:
    assert re.search(r"^   cpu +0 L2 TLB +\d+/1024 +reach +[\d,]+ kB: .*64k 16 c16 \(1,024 kB\)",
                     r.stderr, re.M), r.stderr[-3000:]


def _check_tutorial_ls(r: Run) -> None:
    assert "[implicit]" not in r.stderr, r.stderr[-3000:]
    assert re.search(r" r-xp /lib64/ld-linux-x86-64.so.2$", r.stderr, re.M)
    assert re.search(r" r-xp /bin/ls$", r.stderr, re.M)
    assert '"/lib/x86_64-linux-gnu/libc.so.6"' in r.stderr


def _check_tutorial_annotate(r: Run) -> None:
    faults = r.stderr.split(" Page faults by instruction (")[1].splitlines()
    assert re.search(r"^ +256 +[\d.]+%  0x[0-9a-f]+  sparse:main\+0x[0-9a-f]+ +\S", faults[1])
    assert " Waits for a collapse's lock by instruction (" in r.stderr


# The documented command (as in the Markdown, comment removed) -> how it is run.
EXAMPLES: dict[str, Example] = {
    "emu run [options] -- BINARY [ARGS...]": Example(_summary, synopsis=True),
    "emu replay [options] TRACE": Example(_summary, synopsis=True),
    "emu profiles": Example(_summary, synopsis=True),
    "emu compare [--arch A,B] [--policy NAME:OPTIONS]... [--recording FILE]... [--json FILE]"
    " [--report DIR] [PROGRAM [ARGS...]]": Example(_summary, synopsis=True),
    ".venv/bin/emu run -- build/guest/arm64/random -m 32 -i 2000000 -P -q":
        Example(_check_tutorial_random),
    ".venv/bin/emu compare --report cmp": Example(_check_tutorial_compare),
    ".venv/bin/emu run --khugepaged fast --thp never --at-mark 2:thp=always --inspect-at 2"
    " --timeline sparse-timeline.json --report sparse-report --"
    " build/guest/arm64/sparse -L -i 5000":
        Example(_check_tutorial_collapse),
    ".venv/bin/emu run -- build/guest/x86_64/random -m 64 -i 1000000": Example(_check_random),
    ".venv/bin/emu run --thp never --mthp 64K=always --inspect-at 2 --"
    " build/guest/arm64/sparse -i 2000": Example(_check_tutorial_tlbs),
    ".venv/bin/emu run -v -- /bin/ls /": Example(_check_tutorial_ls),
    ".venv/bin/emu run --annotate --khugepaged fast --thp never --at-mark 2:thp=always --"
    " build/guest/arm64/sparse -L -i 3000": Example(_check_tutorial_annotate),
    ".venv/bin/emu run --thp never --profile neoverse-n1 -- build/guest/arm64/touch -m 16":
        Example(_check_neoverse),
    ".venv/bin/emu run --mthp 64K=always --json out.json -- ./my-static-arm64-binary args":
        Example(_check_mthp, [("./my-static-arm64-binary args", "build/guest/arm64/touch -m 4")],
                why="the user's own binary: a bundled static arm64 guest"),
    ".venv/bin/emu run --record run.emutrace -- build/guest/x86_64/random":
        Example(_check_record),
    ".venv/bin/emu run --khugepaged fast --thp never --at-mark 2:thp=always -- "
    "build/guest/arm64/sparse -L -i 5000":
        Example(_check_khugepaged, [("emu run ", "emu run --json khugepaged.json ")],
                why="the collapse is checked in the JSON"),
    ".venv/bin/emu run --khugepaged fast --sysfs enabled=never --sysfs khugepaged/max_ptes_none=0"
    " --at-mark 2:enabled=always -- build/guest/arm64/sparse -L -i 5000":
        Example(_check_max_ptes_none),
    ".venv/bin/emu run --utlb 64 -- /bin/busybox gzip -c big.txt > big.gz":
        Example(_check_gzip, why="big.txt: a generated 256 KiB text file"),
    ".venv/bin/emu replay --thp never run.emutrace": Example(_no_thp),
    ".venv/bin/emu profiles": Example(_check_profiles),
    ".venv/bin/emu run -q --no-hw --record /tmp/hw_r10.rec --force -- build/guest/x86_64/random "
    "-m 64 -i 10000000 -q":
        Example(_recording("hw_r10.rec"), [("/tmp/hw_r10.rec", "hw_r10.rec"),
                                          ("-i 10000000", "-i 200000")],
                why="10 M iterations take minutes in the suite; the scratch dir, not /tmp"),
    ".venv/bin/emu run -q --no-hw --record /tmp/hw_r10a.rec --force -- build/guest/arm64/random "
    "-m 64 -i 10000000 -q":
        Example(_recording("hw_r10a.rec"), [("/tmp/hw_r10a.rec", "hw_r10a.rec"),
                                           ("-i 10000000", "-i 200000")],
                why="as above"),
}

# Files the user would supply, made in the scratch directory first.
NEEDS = {"big.txt": lambda: "".join(f"line {i}: the quick brown fox {i * i}\n"
                                    for i in range(8000))}
# Examples that read what an earlier one wrote.
AFTER = {".venv/bin/emu replay --thp never run.emutrace":
         ".venv/bin/emu run --record run.emutrace -- build/guest/x86_64/random"}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    if not (REPO / "build" / "libemu.so").exists() or not (REPO / ".venv").exists():
        pytest.skip("plugin or .venv missing (bash setup.sh)")
    d = tmp_path_factory.mktemp("docs")
    for name in (".venv", "build"):
        (d / name).symlink_to(REPO / name)
    for name, make in NEEDS.items():
        (d / name).write_text(make())
    return d


def _as_run(command: str) -> str:
    ex = EXAMPLES.get(command)
    for written, instead in ex.subs if ex else ():
        assert written in command, f"substitution {written!r} no longer applies"
        command = command.replace(written, instead)
    return command


def _run(scratch: Path, command: str) -> Run:
    p = subprocess.run(["bash", "-c", _as_run(command)], cwd=scratch, capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, f"{command}\n-> exit {p.returncode}\n{p.stderr[-3000:]}"
    return Run(scratch, p.stdout, p.stderr)


COMMANDS = doc_commands()


def test_every_table_entry_is_still_documented():
    assert set(EXAMPLES) - {c for _, c in COMMANDS} == set()


@pytest.mark.parametrize(("doc", "command"), COMMANDS,
                         ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command(scratch, doc, command):
    ex = EXAMPLES.get(command)
    if ex is not None and ex.synopsis:
        pytest.skip("usage synopsis with placeholders")
    before = AFTER.get(command)
    if before is not None:
        produced = re.search(r"--record (\S+)", before).group(1)
        if not (scratch / produced).exists():
            _run(scratch, before)
    for out in re.findall(r"--(?:json|record) (\S+)", _as_run(command)):
        (scratch / out).unlink(missing_ok=True)    # each example writes its own
    r = _run(scratch, command)
    (ex.check if ex is not None else _summary)(r)
