"""One `emu run` or `emu replay`: inspect, launch, stream, model, report.

Everything a run needs is chosen before the guest starts, so bad input fails
fast (one line, exit 2) and nothing the user recorded is overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emu.errors import EmuError
from emu.guest.elf import ElfInfo, Segment, inspect_elf
from emu.interrupt import Interrupt

if TYPE_CHECKING:
    from emu.machine import Machine
    from emu.trace.events import Batch

# TLB state is kept for this many CPUs; vCPU n runs on CPU n mod NR_CPUS.
NR_CPUS = 64


def dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "profiles":
        return _profiles()
    if args.cmd == "run":
        return run(args)
    return replay(args)


def _profiles() -> int:
    from emu.arch.profile import default_profile, list_profiles, load_profile
    for arch in ("x86_64", "arm64"):
        default = default_profile(arch)
        for name in list_profiles(arch):
            p = load_profile(name)
            mark = " (default)" if name == default else ""
            print(f"{arch:<7} {name:<22}{mark} {p.description}")
    return 0


# -- building the model ---------------------------------------------------------------


def _elf_meta(elf: ElfInfo) -> dict[str, Any]:
    d = {f.name: getattr(elf, f.name) for f in dataclasses.fields(elf)}
    d["segments"] = [dataclasses.asdict(s) for s in elf.segments]
    return d


def interp_elf(elf: ElfInfo, sysroot: str) -> ElfInfo | None:
    """A dynamic program's interpreter, from the sysroot QEMU uses (check_program
    has checked it is there and loadable)."""
    if elf.interp is None:
        return None
    return inspect_elf(os.path.join(sysroot, elf.interp.lstrip("/")))


def _elf_from_meta(d: dict[str, Any]) -> ElfInfo:
    fields = {f.name for f in dataclasses.fields(ElfInfo)}
    kw = {k: v for k, v in d.items() if k in fields}
    kw["segments"] = tuple(Segment(**s) for s in d["segments"])
    if kw.get("relro") is not None:
        kw["relro"] = tuple(kw["relro"])
    return ElfInfo(**kw)


@dataclasses.dataclass
class ModelPlan:
    """Every model option, parsed and checked, before anything heavy is built.

    `emu run` makes the plan, starts the guest, then builds the model while
    QEMU already runs: bad input still fails before the guest starts.
    """

    args: argparse.Namespace
    config: Any            # ThpConfig
    profile: Any | None    # TlbProfile, None with --no-hw
    frames: int
    fragment: tuple[float, int]
    marks: list[tuple[int, list[Any]]]   # (emu_mark id, [sysfs.Setting])
    knobs: list[Any] = dataclasses.field(default_factory=list)  # khugepaged sysfs.Settings


def plan_model(arch: str, args: argparse.Namespace) -> ModelPlan:
    """Parse and check the model options (raises EmuError on bad input).

    THP settings stack as an admin's writes would: the kernel's defaults, the
    --config file, --thp and --mthp, then each --sysfs in order.  khugepaged's
    knobs: the --khugepaged preset, then the file's and --sysfs's.
    """
    from emu.kernel.config import ThpConfig, config_from_cli

    if not args.ns_per_insn > 0:
        raise EmuError(f"--ns-per-insn {args.ns_per_insn}: must be a positive time")
    rate = getattr(args, "gup_fast_rate", 0.0)
    if not 0 <= rate <= 1e9:
        raise EmuError(f"--gup-fast-rate {rate}: give pins per simulated second, 0 to 1e9")
    if rate and args.no_hw:
        raise EmuError("--gup-fast-rate: the GUP-fast user needs the model (not --no-hw)")
    if not 1 <= getattr(args, "gup_fast_pages", 16) <= 512:
        raise EmuError(f"--gup-fast-pages {args.gup_fast_pages}: give 1 to 512")
    if not getattr(args, "gup_fast_hold_us", 10.0) >= 0:
        raise EmuError(f"--gup-fast-hold-us {args.gup_fast_hold_us}: must be 0 or more")
    from_file: list[Any] = []       # sysfs.Setting
    from_cli: list[Any] = []
    if args.config or getattr(args, "sysfs", None):
        from emu.kernel import sysfs
        from_file = sysfs.load_toml(args.config) if args.config else []
        from_cli = [sysfs.parse_assignment(text) for text in args.sysfs or ()]
    profile = None
    config = ThpConfig.kernel_defaults()
    if not args.no_hw:
        from emu.arch.profile import default_profile, load_profile

        profile = load_profile(args.profile or default_profile(arch))
        if profile.arch != arch:
            raise EmuError(f"profile {profile.name} is for {profile.arch}, the guest is {arch}")
        for s in from_file:
            s.apply(config)
        config = config_from_cli(args.thp, args.mthp, base=config)
        for s in from_cli:
            s.apply(config)
    return ModelPlan(args, config, profile, _memory_frames(args.memory),
                     _fragment(args.fragment), _parse_marks(args.at_mark, args.no_hw),
                     [s for s in from_file + from_cli if s.target == "khugepaged"])


def build_machine(arch: str, elf: ElfInfo, args: argparse.Namespace | ModelPlan,
                  interp: ElfInfo | None = None) -> Machine:
    """The Machine for these options (or for a plan made by plan_model); ``interp`` is
    a dynamic program's interpreter, placed and named where QEMU loaded it."""
    from emu.kernel.kernel import Kernel
    from emu.machine import Machine, RunOptions
    from emu.mem import PhysMem

    plan = args if isinstance(args, ModelPlan) else plan_model(arch, args)
    args = plan.args
    options = RunOptions(ns_per_insn=args.ns_per_insn, utlb=getattr(args, "utlb", 0),
                         oracle=getattr(args, "oracle", False),
                         check=getattr(args, "check", False),
                         gup_fast_rate=getattr(args, "gup_fast_rate", 0.0),
                         gup_fast_pages=getattr(args, "gup_fast_pages", 16),
                         gup_fast_hold_ns=getattr(args, "gup_fast_hold_us", 10.0) * 1e3,
                         annotate=getattr(args, "annotate", False),
                         khugepaged=args.khugepaged != "off" and not args.no_hw)
    frac, order = plan.fragment
    physmem = PhysMem(plan.frames)
    hw = knobs = None
    if plan.profile is not None:
        from emu.arch import get_arch
        from emu.hw.hardware import Hardware
        from emu.kernel.khugepaged.knobs import KhugepagedKnobs

        hw = Hardware(get_arch(arch), plan.profile, physmem, NR_CPUS)
        # MADV_COLLAPSE works whether or not the khugepaged thread runs.
        knobs = KhugepagedKnobs.preset("default" if args.khugepaged == "off"
                                       else args.khugepaged)
        for s in plan.knobs:          # written after the preset: they override it
            s.apply(knobs=knobs)
    kernel = Kernel(arch, plan.config, hw, physmem, fragment=frac, fragment_max_order=order,
                    khugepaged=knobs, algo=args.collapse_algo,
                    strategy=getattr(args, "collapse_strategy", "pmd"))
    machine = Machine(arch, elf, kernel=kernel, hw=hw, options=options)
    machine.interp = interp
    machine.mark_actions = _mark_actions(plan.marks, machine)
    machine.inspect_marks = set(getattr(args, "inspect_at", None) or ())
    return machine


@dataclasses.dataclass
class Views:
    """What --timeline and --report watch while the model runs (None: not asked)."""

    timeline: Any = None
    sampler: Any = None


def watch(machine: Machine, args: argparse.Namespace) -> Views:
    """Subscribe the timeline and the sampler a run's options ask for, before it starts."""
    views = Views()
    if machine.hw is None:
        return views
    if getattr(args, "timeline", None):
        from emu.report.timeline import Timeline
        views.timeline = Timeline(machine)
    if getattr(args, "report", None):
        from emu.report.samples import Sampler
        views.sampler = Sampler(machine)
    return views


def _write_views(args: argparse.Namespace, result: dict[str, Any], views: Views,
                 machine: Machine) -> None:
    """--timeline FILE and --report DIR, once the result is complete."""
    if views.sampler is not None:
        result["samples"] = views.sampler.section(machine)
    if views.timeline is not None:
        try:
            views.timeline.write(args.timeline)
        except OSError as e:
            raise EmuError(f"{args.timeline}: cannot write: {e.strerror}") from None
    if getattr(args, "report", None):
        from emu.report.html import write_report
        try:
            path = write_report(args.report, result)
        except OSError as e:
            raise EmuError(f"{args.report}: cannot write: {e.strerror}") from None
        if not args.quiet:
            print(f"emu: report in {path}", file=sys.stderr)


def _parse_marks(specs: list[str], no_hw: bool) -> list[tuple[int, list[Any]]]:
    """--at-mark ID:SETTING as (id, [sysfs.Setting]), checked before the guest runs."""
    if not specs:
        return []   # and no numpy import before QEMU starts
    from emu.kernel.sysfs import parse_mark_setting

    marks: list[tuple[int, list[Any]]] = []
    for spec in specs:
        mark, _, setting = spec.partition(":")
        name, _, value = setting.partition("=")
        try:
            mark_id = int(mark, 0)
        except ValueError:
            raise EmuError(f"--at-mark {spec}: give ID:SETTING, e.g. 2:thp=always") from None
        parsed = parse_mark_setting(name.strip(), value, f"--at-mark {mark}:")
        if no_hw and any(s.target == "khugepaged" for s in parsed):
            raise EmuError(f"--at-mark {spec}: khugepaged knobs need the model (not --no-hw)")
        marks.append((mark_id, parsed))
    return marks


def _mark_actions(marks: list[tuple[int, list[Any]]],
                  machine: Machine) -> dict[int, list[Any]]:
    """The parsed --at-mark settings as calls on this machine's kernel and khugepaged."""
    actions: dict[int, list[Any]] = {}
    for mark_id, settings in marks:
        for setting in settings:
            actions.setdefault(mark_id, []).append(partial(_write_sysfs, machine, setting))
    return actions


def _write_sysfs(machine: Machine, setting: Any) -> None:
    """One sysfs write while the guest runs, with the kernel's side effects."""
    now = int(machine.now_ns)
    kh = machine.khugepaged
    if setting.target == "khugepaged":
        kh.set_knob(setting.name, setting.value, now)    # sleep times wake the thread
        return
    setting.apply(config=machine.kernel.config)
    if kh is not None:
        kh.start_stop(now)        # start_stop_khugepaged() after an enabled write


def _memory_frames(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        n = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        n = -1
    if n < 64 << 20 or n > 1 << 40:
        raise EmuError(f"--memory {text}: give a size from 64M to 1T, e.g. 4G")
    return n >> 12


def _fragment(text: str | None) -> tuple[float, int]:
    if not text:
        return 0.0, 0
    frac, _, order = text.partition(":")
    try:
        f, o = float(frac), int(order or 0)
    except ValueError:
        f, o = -1.0, -1
    if not 0.0 <= f <= 1.0 or not 0 <= o < 10:
        raise EmuError(f"--fragment {text}: FRACTION in [0, 1], ORDER in 0..9")
    return f, o


# -- consuming the stream ---------------------------------------------------------------


class _Progress:
    """A one-line live counter on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0
        self.start = time.monotonic()

    def update(self, machine: Machine, done: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not done and now - self.last < 0.25:
            return
        self.last = now
        insns = sum(t.instructions for t in machine.all_threads)
        secs = max(now - self.start, 1e-9)
        line = (f"emu: {insns:,} guest instructions ({insns / secs / 1e6:,.1f} M/s),"
                f" {machine.nr_events:,} events ({machine.nr_events / secs / 1e3:,.0f} k/s),"
                f" {secs:.1f} s{_model_progress(machine)}")
        sys.stderr.write("\r\x1b[2K" + line + ("\n" if done else ""))
        sys.stderr.flush()


def _model_progress(machine: Machine) -> str:
    """What the model has seen so far: simulated time, page faults, PMD collapses."""
    if machine.kernel is None:
        return ""
    vm = machine.kernel.stats.vmstat
    text = f"; simulated {machine.now_ns / 1e6:,.3f} ms, {vm.get('pgfault', 0):,} page faults"
    collapsed = vm.get("thp_collapse_alloc", 0)
    return text + (f", thp_collapse_alloc {collapsed:,}" if collapsed else "")


def consume(machine: Machine, batches: Iterable[Batch], progress: _Progress,
            stop: Interrupt | None = None) -> None:
    """Feed every batch to the machine, or those before a requested stop."""
    try:
        for batch in batches:
            machine.feed(batch)
            progress.update(machine)
            if stop is not None and stop.requested:
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()      # the reader thread, the recording: ended now, not at GC
    machine.finish()
    progress.update(machine, done=True)


def _check_outputs(args: argparse.Namespace) -> None:
    if getattr(args, "record", None) == "-":
        raise EmuError("--record -: give a file name (a recording is binary)")
    for path in (getattr(args, "json", None), getattr(args, "record", None),
                 getattr(args, "timeline", None),
                 getattr(args, "report", None) and os.path.join(args.report, "report.html")):
        if path and path != "-" and os.path.exists(path) and not args.force:
            raise EmuError(f"{path}: already exists (use --force to overwrite)")


def _write_outputs(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json == "-":
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
    elif args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        except OSError as e:
            raise EmuError(f"{args.json}: cannot write: {e.strerror}") from None
    if not args.quiet:
        from emu.report.text import render
        print(render(result, verbose=args.verbose), file=sys.stderr)


# -- the commands ----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from emu.guest.qemu import GuestRun, check_program, resolve_binary

    if args.args[:1] == ["--"]:      # `emu run BINARY -- ARGS` on older argparse
        args.args = args.args[1:]
    _check_outputs(args)
    if args.utlb is not None and (args.utlb & (args.utlb - 1) or args.utlb > 256
                                  or args.utlb < 0):
        raise EmuError(f"--utlb {args.utlb}: give 0 or a power of two up to 256")
    if args.annotate and args.utlb:
        raise EmuError("--annotate and --utlb: give one (a micro-TLB hit has no instruction"
                       " address in the stream; --annotate runs without the L0 level)")
    args.binary = resolve_binary(args.binary)
    elf = inspect_elf(args.binary)
    sysroot = check_program(args.binary, elf.arch, elf.interp, args.sysroot)
    plan = plan_model(elf.arch, args)
    interp = interp_elf(elf, sysroot)
    if args.utlb is None:
        # The micro-TLB is the profile's L0 level; with --no-hw, nothing looks the
        # misses up, and the default profile's size only shortens the stream.
        from emu.arch.profile import default_profile, load_profile
        # --oracle checks every access, and --annotate needs each access run's
        # instruction address, so both get the whole stream; so does a run with
        # khugepaged, whose flushes between syscalls would not reach the plugin's
        # micro-TLB (docs/collapse.md).
        whole = getattr(args, "oracle", False) or args.annotate or \
            (args.khugepaged != "off" and not args.no_hw)
        args.utlb = 0 if whole else \
            (plan.profile or load_profile(default_profile(elf.arch))).utlb
    argv = [args.binary, *args.args]
    meta = {"arch": elf.arch, "binary": os.path.abspath(args.binary), "argv": argv,
            "elf": _elf_meta(elf), "utlb": args.utlb,
            "interp_elf": _elf_meta(interp) if interp else None,
            "pc": args.annotate, "sysroot": sysroot}
    plugin_args = ([f"utlb={args.utlb}"] if args.utlb else []) + \
        (["pc=1"] if args.annotate else [])
    progress = _Progress(sys.stderr.isatty() and not args.quiet)
    with Interrupt() as stop, GuestRun(args.binary, args.args, arch=elf.arch,
                                        sysroot=sysroot, plugin_args=plugin_args) as guest:
        stop.on_interrupt = guest.kill_nowait
        try:
            # The guest runs while the model loads (numba, page tables, TLB
            # arrays): the stream's first events wait in memory meanwhile.
            guest.stream.prefetch()
            from emu.trace.reader import iter_batches
            machine = build_machine(elf.arch, elf, plan, interp)
            views = watch(machine, args)
            batches = iter_batches(guest.stream, record=args.record, force=args.force,
                                   meta=meta)
            consume(machine, batches, progress, stop)
        except BaseException:
            guest.kill()
            raise
        status = guest.wait()
        if not machine.nr_events and status and not stop.requested:
            # QEMU refused the program before running any of it, and said why above.
            raise EmuError(f"{guest.qemu} could not run {args.binary} (exit {status})")
        lost = getattr(guest.stream, "unfinished", 0)
        if lost:
            print(f"emu: warning: the stream ends in {lost} bytes that guest processes "
                  "reserved but never published (killed while writing, or they closed "
                  "the stream's descriptor); the events in them are missing",
                  file=sys.stderr)
    from emu.report.result import build_result
    result = build_result(machine, args.binary, argv, status)
    _annotate(result, machine, sysroot)
    _finish_result(result, args, stop)
    _write_views(args, result, views, machine)
    _write_outputs(args, result)
    return 130 if stop.requested else status


def replay(args: argparse.Namespace) -> int:
    from emu.trace.reader import iter_batches, read_meta

    if not os.path.isfile(args.trace):
        raise EmuError(f"{args.trace}: no such file")
    _check_outputs(args)
    meta = read_meta(args.trace)
    try:
        elf = _elf_from_meta(meta["elf"])
        interp = _elf_from_meta(meta["interp_elf"]) if meta.get("interp_elf") else None
        arch, argv = meta["arch"], meta["argv"]
    except (KeyError, TypeError, ValueError):
        raise EmuError(f"{args.trace}: recording has no usable guest description") from None
    # The micro-TLB is part of what was recorded: replay models it as recorded.
    args.utlb = int(meta.get("utlb", 0))
    args.annotate = bool(meta.get("pc", False))      # PC records are in the recording
    machine = build_machine(arch, elf, args, interp)
    views = watch(machine, args)
    progress = _Progress(sys.stderr.isatty() and not args.quiet)
    cut: list[str] = []
    with Interrupt() as stop:
        consume(machine, iter_batches(args.trace, partial=args.partial, warn=cut.append),
                progress, stop)
    for warning in cut:
        print(f"emu: warning: {warning}", file=sys.stderr)
    statuses = [p.exit_status for p in sorted(machine.processes.values(), key=lambda p: p.pid)]
    from emu.report.result import build_result
    result = build_result(machine, argv[0], argv, statuses[0] if statuses else None)
    _annotate(result, machine, meta.get("sysroot") or "/")
    _finish_result(result, args, stop, cut=bool(cut))
    _write_views(args, result, views, machine)
    _write_outputs(args, result)
    return 130 if stop.requested else 0


def _annotate(result: dict[str, Any], machine: Machine, sysroot: str) -> None:
    """--annotate: the instructions behind misses, walks, faults and stalls, named."""
    if not machine.options.annotate or machine.hw is None:
        return
    from emu.guest.annotate import annotate
    vmas = {p.pid: p.vmas for p in machine.processes.values()}
    result["annotate"] = annotate(machine.annotations.counts, vmas, machine.arch, sysroot)


def _finish_result(result: dict[str, Any], args: argparse.Namespace, stop: Interrupt,
                   cut: bool = False) -> None:
    """What the run's options add to the result: partial runs, --at-mark outcomes."""
    from emu.report.result import at_mark_report

    result["partial"] = stop.requested or cut
    if result["partial"]:
        result["partial_reason"] = "interrupted" if stop.requested else "truncated recording"
    if args.at_mark:
        result["at_mark"] = at_mark_report(args.at_mark, result["markers"])
