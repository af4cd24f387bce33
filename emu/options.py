"""The `emu` command's options: the parser and the checks that need no model.

Kept apart from emu.cli so that commands running other commands in-process (the
sweep's cells) parse exactly as the `emu` command does, without importing it.
"""

from __future__ import annotations

import argparse
from typing import Any

from emu.errors import EmuError

DESCRIPTION = "What the MMU and Linux's mTHP policy do to a real program, under QEMU."


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--profile",
                   help="TLB profile (see `emu profiles`); default: generic for the arch")
    g.add_argument("--no-hw", action="store_true", help="raw counts only: no TLB or kernel model")
    g.add_argument("--thp", metavar="MODE",
                   help="transparent_hugepage/enabled: always, madvise or never")
    g.add_argument("--mthp", metavar="SIZES",
                   help="per-size enabled, e.g. 64K=always,2M=inherit")
    g.add_argument("--config", metavar="TOML",
                   help="settings file with the --sysfs paths as keys, e.g. enabled ="
                        ' "madvise" and a [khugepaged] table (docs/usage.md)')
    g.add_argument("--sysfs", action="append", metavar="PATH=VALUE", default=[],
                   help="write a file under /sys/kernel/mm/transparent_hugepage/ before the"
                        " program starts, e.g. khugepaged/max_ptes_none=0,"
                        " hugepages-64kB/enabled=always, defrag=never (repeatable; after"
                        " --config, --thp and --mthp)")
    g.add_argument("--memory", metavar="SIZE", default="4G",
                   help="simulated physical memory, e.g. 4G or 512M (default 4G)")
    g.add_argument("--fragment", metavar="FRACTION[:ORDER]",
                   help="pre-fragment memory: in FRACTION of the blocks of 2**(ORDER+1) frames"
                        " pin one frame, so higher-order allocations can fail (ORDER default 0)")
    g.add_argument("--at-mark", action="append", metavar="ID:SETTING", default=[],
                   help="when the guest calls emu_mark(ID), apply SETTING as an admin writing"
                        " sysfs would: thp=MODE, mthp=SIZES, a khugepaged knob or a --sysfs"
                        " path, e.g. 2:thp=always, 2:mthp=64K=always, 2:max_ptes_none=0,"
                        " 2:hugepages-64kB/enabled=always (repeatable)")
    g.add_argument("--khugepaged", choices=["off", "default", "fast"], default="off",
                   help="the khugepaged thread: off (the default; MADV_COLLAPSE still"
                        " works), default (the kernel's settings) or fast (a preset that"
                        " scans every 1 ms)")
    g.add_argument("--collapse-algo", choices=["v19", "v5"], default="v19",
                   help="the khugepaged mTHP series the collapse follows (default v19)")
    g.add_argument("--collapse-strategy",
                   choices=["pmd", "pte", "unsafe-noflush", "unsafe-nonatomic"],
                   default="pmd",
                   help="how a collapse stops other walkers: pmd clears and flushes the"
                        " whole PMD (upstream, the default); pte clears and flushes only"
                        " the target PTEs; unsafe-noflush never flushes (it loses writes:"
                        " for showing the integrity oracle); unsafe-nonatomic is pte with"
                        " a read, then a separate clear (it loses hardware dirty bits)")
    g.add_argument("--oracle", action="store_true",
                   help="check every read against the guest's last write to its page (the"
                        " integrity oracle: lost writes and stale reads are reported)")
    g.add_argument("--check", action="store_true",
                   help="the invariant checker: after every collapse step, page tables,"
                        " mapcounts, refcounts, frame owners, TLBs and counters agree; a"
                        " violation stops the run (docs/collapse.md)")
    g.add_argument("--gup-fast-rate", type=float, default=0.0, metavar="N",
                   help="a synthetic GUP-fast user on its own CPU: N pins per simulated"
                        " second of populated anonymous memory, as O_DIRECT or io_uring"
                        " I/O would (default 0: none; docs/collapse.md)")
    g.add_argument("--gup-fast-pages", type=int, default=16, metavar="N",
                   help="pages per synthetic GUP-fast pin (default 16)")
    g.add_argument("--gup-fast-hold-us", type=float, default=10.0, metavar="US",
                   help="how long each synthetic pin is held, simulated us (default 10)")
    g.add_argument("--ns-per-insn", type=float, default=0.5,
                   help="simulated time per retired instruction")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE",
                   help="write the results as JSON to FILE, or to standard output with -")
    o.add_argument("--inspect-at", action="append", type=lambda x: int(x, 0), default=[],
                   metavar="MARK", help="also take thpmaps of every process and read out every"
                   " CPU's TLBs when the guest calls emu_mark(MARK) (repeatable)")
    o.add_argument("--timeline", metavar="FILE",
                   help="write a Perfetto/chrome://tracing timeline (trace-event JSON)")
    o.add_argument("--report", metavar="DIR",
                   help="write DIR/report.html (one self-contained file) and its PNG plots")
    o.add_argument("--force", action="store_true", help="overwrite existing output files")
    o.add_argument("-v", "--verbose", action="store_true", help="list every syscall and VMA")
    o.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")


def check_at_marks(specs: list[str]) -> None:
    """The shape of each --at-mark ID:SETTING=VALUE, so a slip names what is missing.

    The settings and values themselves are checked with the model's parsers.
    """
    for spec in specs:
        mark, colon, setting = spec.partition(":")
        name, eq, value = setting.partition("=")
        if not colon or not mark.strip():
            raise EmuError(f"--at-mark {spec}: give ID:SETTING=VALUE, e.g. 2:thp=always")
        if not name:
            raise EmuError(f"--at-mark {spec}: no setting after {mark}:"
                           f" (e.g. {mark}:thp=always)")
        if not eq or not value:
            example = {"thp": "always", "mthp": "64K=always"}.get(name, "N")
            raise EmuError(f"--at-mark {spec}: no value for {name}"
                           f" (e.g. {mark}:{name}={example})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emu", description=DESCRIPTION)
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run a guest binary under QEMU with the model",
                         usage="emu run [options] -- BINARY [ARGS...]")
    run.add_argument("--record", metavar="FILE", help="also record the event stream to FILE")
    run.add_argument("--utlb", type=int, default=None, metavar="N",
                     help="entries of the per-vCPU micro-TLB (L0, in the plugin, in front of"
                          " the L1 dTLB; power of two up to 256, 0 for none); default: the"
                          " profile's [utlb] level (64); access counts stay exact"
                          " (docs/trace-format.md)")
    run.add_argument("--annotate", action="store_true",
                     help="record each access run's instruction address (the plugin's pc=1;"
                          " slower) and attribute TLB misses, walks, page faults and collapse"
                          " stalls to instructions and functions, like perf annotate")
    run.add_argument("--sysroot", help="guest sysroot for dynamic binaries"
                     " (default: /usr/aarch64-linux-gnu for arm64, / for x86-64)")
    _model_args(run)
    run.add_argument("binary")
    run.add_argument("args", nargs=argparse.REMAINDER)

    rep = sub.add_parser("replay", help="feed a recorded trace through the model")
    rep.add_argument("trace")
    rep.add_argument("--partial", action="store_true",
                     help="replay a recording that was cut short up to its last intact"
                          " chunk (refused otherwise)")
    _model_args(rep)

    sub.add_parser("profiles", help="list the TLB profiles")

    cmp = sub.add_parser(
        "compare", help="one workload across architectures and policies: a table and a plot",
        usage="emu compare [options] [PROGRAM [ARGS...]]  (PROGRAM may hold {arch})")
    cmp.add_argument("--arch", default="x86_64,arm64",
                     help="architectures to build {arch} in PROGRAM for (default x86_64,arm64)")
    cmp.add_argument("--policy", action="append", default=[], metavar="NAME:OPTIONS",
                     help="a configuration: a name and model options, e.g. '64K:--thp never"
                          " --mthp 64K=always' (repeatable; the first is the baseline;"
                          " default: 4K and 64K mTHP)")
    cmp.add_argument("--recording", action="append", default=[], metavar="FILE",
                     help="compare these recordings instead of running PROGRAM")
    cmp.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    cmp.add_argument("--report", metavar="DIR", help="write DIR/report.html and compare.png")
    cmp.add_argument("--force", action="store_true", help="overwrite existing output files")
    cmp.add_argument("-q", "--quiet", action="store_true", help="no table on stderr")
    cmp.add_argument("program", nargs="?", default=None)
    cmp.add_argument("args", nargs=argparse.REMAINDER)

    sw = sub.add_parser("sweep", help="replay recordings × configurations on Dask (docs/sweeps.md)")
    sw.add_argument("grid", metavar="GRID.toml")
    sw.add_argument("--scheduler", metavar="tcp://HOST:8786",
                    help="an existing Dask scheduler (default: a LocalCluster on this machine)")
    sw.add_argument("--workers", type=int, metavar="N",
                    help="LocalCluster worker processes (default: one per core)")
    sw.add_argument("--send", action="store_true",
                    help="send each recording to every worker once (no shared filesystem)")
    sw.add_argument("--output", metavar="DIR", help="results folder (default: the grid's)")
    sw.add_argument("--table", metavar="FILE", help="the table, .parquet or .csv")
    sw.add_argument("--retries", type=int, metavar="N", help="retries of a failing cell")
    sw.add_argument("-q", "--quiet", action="store_true", help="no progress bar or table")
    return p


def model_args(**overrides: Any) -> argparse.Namespace:
    """The model options with the CLI's defaults, for use from Python and tests."""
    args = build_parser().parse_args(["replay", "-"])
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise TypeError(f"unknown model option {key!r}")
        setattr(args, key, value)
    return args
