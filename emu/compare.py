"""`emu compare`: record a workload once per architecture, replay each recording
under every policy, and show the runs side by side (emu.report.compare).

One recording per architecture means every policy sees exactly the same program
behaviour; the recording is made with --no-hw (the stream does not depend on
the model), so only the replays pay for the model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from emu.errors import EmuError
from emu.options import build_parser

DEFAULT_PROGRAM = "build/guest/{arch}/random"
DEFAULT_ARGS = ["-m", "32", "-i", "2000000", "-P", "-q"]
DEFAULT_POLICIES = ["4K:--thp never", "64K mTHP:--thp never --mthp 64K=always"]


def _policies(specs: list[str]) -> list[tuple[str, list[str]]]:
    out = []
    for spec in specs or DEFAULT_POLICIES:
        name, colon, opts = spec.partition(":")
        if not colon or not name.strip():
            raise EmuError(f"--policy {spec}: give NAME:OPTIONS, e.g. '64K:--mthp 64K=always'")
        words = shlex.split(opts)
        try:
            build_parser().parse_args(["replay", *words, "-"])
        except SystemExit:
            raise EmuError(f"--policy {spec}: not model options of emu replay") from None
        out.append((name.strip(), words))
    return out


def _quiet_stdout() -> int:
    """Send the guest's stdout to /dev/null while recording; returns the saved fd."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    return saved


def _record(program: str, argv: list[str], path: str) -> None:
    from emu import session
    args = build_parser().parse_args(["run", "-q", "--no-hw", "--record", path, "--",
                                      program, *argv])
    saved = _quiet_stdout()
    try:
        status = session.run(args)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    if status:
        raise EmuError(f"{program} exited {status} while recording; nothing compared")


def _replay(path: str, words: list[str], out: str) -> dict[str, Any]:
    from emu import session
    args = build_parser().parse_args(["replay", "-q", "--json", out, *words, path])
    session.replay(args)
    return json.loads(Path(out).read_text())


def main(args: argparse.Namespace) -> int:
    from emu.report import compare as table
    from emu.trace.reader import read_meta

    policies = _policies(args.policy)
    for path in (args.json, args.report and os.path.join(args.report, "report.html")):
        if path and os.path.exists(path) and not args.force:
            raise EmuError(f"{path}: already exists (use --force to overwrite)")
    with tempfile.TemporaryDirectory(prefix="emu-compare-") as tmp:
        recordings = list(args.recording)
        argv: list[str] = []
        if not recordings:
            program = args.program or DEFAULT_PROGRAM
            rest = [a for a in args.args if a != "--"] if args.program else DEFAULT_ARGS
            argv = [program, *rest]
            for arch in args.arch.split(","):
                exe = program.replace("{arch}", arch)
                if not os.path.exists(exe):
                    raise EmuError(f"{exe}: no such file (PROGRAM's {{arch}} is replaced by"
                                   " x86_64 and arm64)")
                if not args.quiet:
                    print(f"emu compare: recording {exe} {' '.join(rest)}", file=sys.stderr)
                rec = os.path.join(tmp, f"{arch}.emu")
                _record(exe, rest, rec)
                recordings.append(rec)
        rows = []
        for n, rec in enumerate(recordings):
            meta = read_meta(rec)
            argv = argv or list(meta.get("argv", [rec]))
            for name, words in policies:
                if not args.quiet:
                    print(f"emu compare: {meta['arch']}, {name} ({' '.join(words)})",
                          file=sys.stderr)
                res = _replay(rec, words, os.path.join(tmp, f"{n}-{len(rows)}.json"))
                rows.append(table.row(meta["arch"], name, " ".join(words), res))
    cmp = {"argv": argv, "metrics": table.METRICS, "rows": table.with_ratios(rows)}
    if not args.quiet:
        print(table.render(cmp), file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(cmp, indent=1) + "\n")
    if args.report:
        from emu.report.html import write_report
        path = write_report(args.report, compare=cmp)
        if not args.quiet:
            print(f"emu: report in {path}", file=sys.stderr)
    return 0
