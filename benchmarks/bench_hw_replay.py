"""Time the hardware model alone while replaying a real recording (issue 3's figure).

    .venv/bin/emu run -q --no-hw --record /tmp/hw_r10.rec --force -- \\
        build/guest/x86_64/random -m 64 -i 10000000 -q
    .venv/bin/python benchmarks/bench_hw_replay.py /tmp/hw_r10.rec [--thp never] \\
        [--profile NAME ...] [--repeat N]

The recording is decoded into memory first, so decoding is not timed (with
``--stream`` it is decoded during the replay, in emu replay's background
thread).  The whole machine replays it (kernel model, faults, syscalls) exactly
as `emu replay` does; only the time spent inside ``Hardware.run`` is measured,
and the events are the records it translated (its return value minus ``start``
per call, so a fault's retry does not count the rest of the slice twice); the
kernels are compiled before any timed call.  A digest of the
hardware counters is printed so two versions of the model can be compared;
``--baseline DIR`` (a directory holding another version's ``kernels.py`` and
``hardware.py``, e.g. from ``git show REV:emu/hw/kernels.py``) times that
version too, interleaved with this one, and checks the counters are equal.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import time

import numpy as np

from emu.arch.profile import list_profiles, load_profile
from emu.options import model_args
from emu.session import _elf_from_meta, build_machine
from emu.trace.reader import iter_batches, read_meta


def load(path: str) -> tuple[dict, list]:
    return read_meta(path), list(iter_batches(path, background=False))


def load_baseline(path: str) -> type:
    """The Hardware class of another version of emu/hw (its kernels.py + hardware.py)."""
    def load(name: str, file: str, text: str | None = None):
        spec = importlib.util.spec_from_file_location(name, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        if text is None:
            spec.loader.exec_module(mod)
        else:
            exec(compile(text, file, "exec"), mod.__dict__)
        return mod

    load("emu_hw_baseline_kernels", os.path.join(path, "kernels.py"))
    hw_file = os.path.join(path, "hardware.py")
    with open(hw_file) as f:
        text = f.read().replace("from emu.hw import kernels as K",
                                "import emu_hw_baseline_kernels as K")
    return load("emu_hw_baseline_hardware", hw_file, text).Hardware


@contextlib.contextmanager
def hardware_class(cls: type | None):
    """Make build_machine instantiate ``cls`` (None: this tree's Hardware)."""
    import emu.hw.hardware as hwmod
    saved = hwmod.Hardware
    if cls is not None:
        hwmod.Hardware = cls
    try:
        yield
    finally:
        hwmod.Hardware = saved


def warm_up(hw_class: type | None, arch: str, profile: str) -> None:
    """Compile (or load from numba's cache) the kernels outside the timed calls."""
    from emu.arch import get_arch
    from emu.mem import PhysMem

    cls = hw_class
    if cls is None:
        from emu.hw.hardware import Hardware as cls
    hw = cls(get_arch(arch), load_profile(profile), PhysMem(1024), 1)
    one = np.ones(1, dtype=np.uint64)
    hw.run(0, 1, 0, np.full(1, 3, dtype=np.uint8), one, one)     # kind 3: skipped


def replay_once(meta: dict, batches, profile: str, thp: str | None,
                hw_class: type | None = None) -> dict:
    """Replay every batch; time and count the Hardware.run calls."""
    over = {"profile": profile, "quiet": True}
    if thp is not None:
        over["thp"] = thp
    args = model_args(**over)
    args.utlb = int(meta.get("utlb", 0))
    with hardware_class(hw_class):
        machine = build_machine(meta["arch"], _elf_from_meta(meta["elf"]), args)
    hw = machine.hw
    inner = hw.run
    acc = {"t": 0.0, "events": 0, "calls": 0, "sizes": []}

    def timed(cpu, asid, root_pfn, kinds, addrs, counts, start=0, stop=None, out_pfn=None,
              out_miss=None):
        t0 = time.perf_counter()
        r = inner(cpu, asid, root_pfn, kinds, addrs, counts, start, stop, out_pfn, out_miss)
        acc["t"] += time.perf_counter() - t0
        n = r - start     # events translated (a faulting one is counted when it retires)
        acc["events"] += n
        acc["calls"] += 1
        acc["sizes"].append(n)
        return r

    hw.run = timed
    t0 = time.perf_counter()
    for b in batches:
        machine.feed(b)
    machine.finish()
    acc["total"] = time.perf_counter() - t0
    tot = hw.totals()
    acc["digest"] = hashlib.sha1(json.dumps(tot, sort_keys=True).encode()).hexdigest()[:12]
    acc["walks"] = sum(v for k, v in tot.items() if k.startswith("emu.walks."))
    acc["counters"] = tot
    return acc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--thp", default=None, help="THP mode as `emu --thp` (default: kernel's)")
    ap.add_argument("--profile", nargs="*", default=None,
                    help="profiles to time (default: every profile of the trace's arch)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N replays per profile")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--stream", action="store_true",
                    help="decode while replaying, in emu replay's background thread, instead "
                         "of loading the recording first (the model then shares the CPU)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also time the emu/hw version in DIR (kernels.py, hardware.py)")
    args = ap.parse_args()
    if not os.path.isfile(args.trace):
        print(f"{args.trace}: no such file", file=sys.stderr)
        return 2
    versions: list[tuple[str, type | None]] = [("", None)]
    if args.baseline:
        try:
            versions.insert(0, ("baseline ", load_baseline(args.baseline)))
        except OSError as e:
            print(f"--baseline {args.baseline}: {e.strerror}", file=sys.stderr)
            return 2
    if args.stream:
        meta = read_meta(args.trace)

        def batches_of():
            return iter_batches(args.trace)
    else:
        meta, loaded = load(args.trace)

        def batches_of():
            return loaded
    arch = meta["arch"]
    names = args.profile or [p for p in list_profiles() if load_profile(p).arch == arch]
    records = "streamed" if args.stream else f"{sum(len(b.events) for b in loaded):,} records"
    print(f"{args.trace}: {arch}, {records}, thp {args.thp or 'default'}")
    out = {}
    for name in names:
        for _, cls in versions:
            warm_up(cls, arch, name)
        best: dict[str, dict] = {}
        for _ in range(max(1, args.repeat)):
            for label, cls in versions:       # interleaved: both see the same machine load
                r = replay_once(meta, batches_of(), name, args.thp, cls)
                b = best.get(label)
                if b is not None and r["digest"] != b["digest"]:
                    raise SystemExit(f"{name}: counters differ between replays")
                if b is None or r["t"] < b["t"]:
                    best[label] = r
        if len({r["digest"] for r in best.values()}) > 1:
            raise SystemExit(f"{name}: counters differ from the baseline's")
        for label, _ in versions:
            b = best[label]
            sizes = np.array(b["sizes"])
            print(f"{label}{name:16s} {b['events'] / b['t'] / 1e6:6.1f} M events/s in "
                  f"Hardware.run ({b['events']:,} events, {b['calls']:,} calls, median "
                  f"{int(np.median(sizes)) if len(sizes) else 0} per call, "
                  f"{b['t']:.2f} s of {b['total']:.2f} s replay)  walks {b['walks']:,}  "
                  f"counters {b['digest']}")
            key = label.strip() + ":" + name if label else name
            out[key] = {k: b[k] for k in ("t", "events", "calls", "total", "digest", "walks")}
            out[key]["counters"] = b["counters"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
