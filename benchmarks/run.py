#!/usr/bin/env python3
"""Time emu's pipeline against plain QEMU (a script, not a test).

    .venv/bin/python benchmarks/run.py [--arch x86_64,arm64]
                                       [--workload random,gzip,sort,threads]
                                       [--repeat N] [--quick] [--rows GROUPS]
                                       [--plugin-modes M1,M2] [--json FILE]
                                       [--scaling] [--plot FILE]

Workloads: `random` (build/guest/<arch>/random -m 64 -i 100M -q), busybox gzip
of a generated 20 MB file and busybox sort of a generated 8 MB file of lines
(x86-64: /bin/busybox; arm64: Debian's busybox-static arm64 .deb, fetched once
into build/bench/), and `threads`, the multi-threaded guest
build/guest/<arch>/rwthreads (4 threads over 64 MiB, 40 M accesses in all).
Rows: native (x86-64 only), plain QEMU, the peer anchor QEMU + its contrib
`cache` plugin (libcache.so, built here from Debian's source package of the
installed QEMU into build/bench/, never committed), the floor (benchmarks/floor/floor.c,
built here: emu's plugin's callbacks with nothing in them: the per-block one, the
per-access one, both), QEMU + plugin writing to /dev/null (both icount
modes), QEMU + plugin streaming to emu's reader (decode only, no model) through
the shared-memory ring and, for comparison, through the FIFO alone, and the
full `emu run` (default, and `--utlb 0`, the default before 2026-12-02) with the
peak PSS of its process tree, and `emu replay` of a recording made in the same
run.  Every ratio is to plain QEMU measured in the same run.  docs/performance.md
has the method and the latest table.
Times are wall-clock seconds, the best of --repeat rounds; each round runs
every row once, in turn, so that the machine's drift hits all rows alike.
The run ends with one summary table (ratios to plain QEMU, every workload).
Every row also gets the guest's MIPS (the guest's retired instructions, counted
once per workload and architecture by emu itself, `emu run --json`'s
`instructions`, over the row's wall seconds; native, x86-64 only, uses the count
under QEMU) and, where the row has an event stream of its own (`emu run`,
the reader rows, replay), events/s (its stream's events over its wall seconds).

--scaling adds the scaling tables: `random -m N` for N = 16 MiB .. 1 GiB and
`rwthreads -t T` for T = 1 .. 8 (the same total accesses), `emu run` default
against plain QEMU, interleaved, with a matplotlib plot (--plot FILE, PNG).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emu.errors import EmuError  # noqa: E402
from emu.guest.qemu import GuestRun, find_plugin, find_qemu  # noqa: E402
from emu.trace import iter_batches  # noqa: E402

BENCH = REPO / "build" / "bench"
GZIP_MB = 20
SORT_MB = 8
# Plugin options timed: exact per-vCPU icount (default), the inline counter,
# and each with a 64-entry micro-TLB (docs/trace-format.md).
PLUGIN_MODES = ["icount=tb", "icount=inline", "icount=tb,utlb=64", "icount=inline,utlb=64"]
STREAM_MODES = ["icount=tb", "icount=tb,utlb=64"]
DEBIAN_POOL = "http://deb.debian.org/debian/pool/main/b/busybox"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_gzip_input(mb: int) -> Path:
    """A deterministic, moderately compressible file (text-like words)."""
    path = BENCH / f"gzip-input-{mb}MB.txt"
    if path.exists() and path.stat().st_size == mb << 20:
        return path
    BENCH.mkdir(parents=True, exist_ok=True)
    words = [f"w{i:x}" for i in range(4096)]
    out, state, size = [], 12345, 0
    while size < mb << 20:
        state = (state * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        w = words[(state >> 33) % (64 if state & 0x300 else 4096)]
        out.append(w)
        size += len(w) + 1
    data = (" ".join(out).encode() + b"\n")[: mb << 20]
    path.write_bytes(data)
    return path


def make_sort_input(mb: int) -> Path:
    """A deterministic text of short lines (1-6 words each) for busybox sort."""
    path = BENCH / f"sort-input-{mb}MB.txt"
    if path.exists() and path.stat().st_size == mb << 20:
        return path
    BENCH.mkdir(parents=True, exist_ok=True)
    out, state, size = [], 54321, 0
    while size < mb << 20:
        state = (state * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        n = 1 + (state >> 60) % 6
        line = " ".join(f"w{(state >> (8 * k + 3)) & 0xfffff:x}" for k in range(n))
        out.append(line)
        size += len(line) + 1
    data = "\n".join(out).encode()[: (mb << 20) - 1] + b"\n"
    path.write_bytes(data)
    return path


# The peer anchor: QEMU's contrib cache plugin, built once per run (None: why not).
_CACHE_PLUGIN: dict[str, object] = {}


def build_plugin(src: Path, out: Path, flags: list[str]) -> str:
    """gcc a TCG plugin against build/include/qemu-plugin.h: "" or one line saying why not."""
    header = REPO / "build" / "include" / "qemu-plugin.h"
    if not header.exists():
        return f"{header.relative_to(REPO)} missing (run setup.sh)"
    r = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{header.parent}", *flags,
                        "-o", str(out), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        out.unlink(missing_ok=True)
        err = [ln for ln in r.stderr.splitlines() if "error" in ln] or ["gcc failed"]
        return f"gcc: {err[0].strip()}"
    return ""


def floor_plugin() -> tuple[Path | None, str]:
    """benchmarks/floor/floor.c built into build/bench/ (or None and why not)."""
    src = REPO / "benchmarks" / "floor" / "floor.c"
    out = BENCH / "libfloor.so"
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out, ""
    BENCH.mkdir(parents=True, exist_ok=True)
    why = build_plugin(src, out, ["-Wall"])
    return (None, why) if why else (out, "")


def contrib_cache_plugin() -> tuple[Path | None, str]:
    """Build contrib/plugins/cache.c of Debian's source package of the installed
    qemu-user (the same way setup.sh fetches qemu-plugin.h) into build/bench/.

    Returns (path, "") or (None, a one-line reason)."""
    if "result" in _CACHE_PLUGIN:
        return _CACHE_PLUGIN["result"]  # type: ignore[return-value]
    out = BENCH / "libcache.so"

    def done(path, why=""):
        _CACHE_PLUGIN["result"] = (path, why)
        if why:
            log(f"contrib cache plugin: {why}")
        return path, why

    if out.exists():
        return done(out)
    header = REPO / "build" / "include" / "qemu-plugin.h"
    if not header.exists():
        return done(None, f"{header.relative_to(REPO)} missing (run setup.sh)")
    for tool in ("gcc", "pkg-config", "apt-get", "tar"):
        if not shutil.which(tool):
            return done(None, f"no {tool} on PATH")
    ver = subprocess.run(["dpkg-query", "-W", "-f=${source:Version}", "qemu-user"],
                         capture_output=True, text=True).stdout.strip()
    if not ver:
        return done(None, "qemu-user is not installed (dpkg-query)")
    glib = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0"],
                          capture_output=True, text=True)
    if glib.returncode != 0:
        return done(None, "no glib-2.0 development files (apt-get install libglib2.0-dev)")
    src = BENCH / "qemu-src"
    src.mkdir(parents=True, exist_ok=True)
    orig = sorted(src.glob("qemu_*.orig.tar.xz"))
    if not orig:
        # setup.sh's deb-src entries (emu-deb-src.sources) make this work.
        r = subprocess.run(["apt-get", "source", "--download-only", "-q", f"qemu={ver}"],
                           cwd=src, capture_output=True, text=True)
        orig = sorted(src.glob("qemu_*.orig.tar.xz"))
        if not orig:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            return done(None, f"apt-get source qemu={ver} failed: {last}")
    with tempfile.TemporaryDirectory(prefix="emu-cache-plugin-") as tmp:
        r = subprocess.run(["tar", "-xJf", str(orig[0]), "-C", tmp, "--wildcards",
                            "*/contrib/plugins/cache.c"], capture_output=True, text=True)
        cfile = next(Path(tmp).glob("*/contrib/plugins/cache.c"), None)
        if cfile is None:
            last = (r.stderr.strip().splitlines() or ["not in the tarball"])[-1]
            return done(None, f"contrib/plugins/cache.c: {last}")
        why = build_plugin(cfile, out, glib.stdout.split())
        if why:
            return done(None, why)
    log(f"contrib cache plugin: built {out} from Debian's qemu {ver}")
    return done(out)


def arm64_busybox() -> Path | None:
    """Debian's busybox-static for arm64, the same version as the installed one."""
    dest = BENCH / "busybox-arm64"
    exe = dest / "bin" / "busybox"
    if exe.exists():
        return exe
    BENCH.mkdir(parents=True, exist_ok=True)
    debs = list(BENCH.glob("busybox-static_*_arm64.deb"))
    if not debs:
        r = subprocess.run(["apt-get", "download", "busybox-static:arm64"], cwd=BENCH,
                           capture_output=True, text=True)
        debs = list(BENCH.glob("busybox-static_*_arm64.deb"))
    if not debs:
        # No arm64 in dpkg's architectures: fetch the same version from the pool.
        ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "busybox-static"],
                             capture_output=True, text=True).stdout.strip()
        ver = ver.split(":", 1)[-1]
        url = f"{DEBIAN_POOL}/busybox-static_{ver}_arm64.deb"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                (BENCH / f"busybox-static_{ver}_arm64.deb").write_bytes(r.read())
        except OSError as e:
            log(f"arm64 busybox: cannot fetch {url}: {e}")
            return None
        debs = list(BENCH.glob("busybox-static_*_arm64.deb"))
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], check=True)
    return exe if exe.exists() else None


def _tree_pss(pid: int) -> int:
    """Proportional set size (bytes) of pid and its descendants: shared pages (the
    ring's memfd, which QEMU and emu both map) are split, not counted twice."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return total


# Peak PSS of the last timed() run's process tree (sampled every 50 ms), bytes.
last_peak = {"pss": 0}


def timed(argv: list[str], stdin: Path | None = None, sample: bool = False) -> float:
    with open(stdin or os.devnull, "rb") as i:
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdin=i, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = 0
        if sample:
            while p.poll() is None:
                peak = max(peak, _tree_pss(p.pid))
                time.sleep(0.05)
        err = p.communicate()[1]
        dt = time.perf_counter() - t
    last_peak["pss"] = peak
    if p.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"{Path(argv[0]).name} exited {p.returncode}: {tail[0]}")
    return dt


def timed_stream(binary: str, args: list[str], arch: str, plugin_args: list[str],
                 stdin: Path | None, ring: int | None = None) -> tuple[float, int]:
    """QEMU + plugin streaming to emu's reader, which decodes every batch (no model).

    ring: the shared-memory ring's size (None: emu's default), 0 for the FIFO.
    """
    with open(stdin or os.devnull, "rb") as i:
        t = time.perf_counter()
        with GuestRun(binary, args, arch=arch, plugin_args=plugin_args, stdin=i,
                      stdout=subprocess.DEVNULL, ring=ring) as g:
            n = sum(len(b.events) for b in iter_batches(g.stream))
            rc = g.wait()
        dt = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"guest exited {rc}")
    return dt, n


def emu_cli() -> str | None:
    exe = REPO / ".venv" / "bin" / "emu"
    if not exe.exists():
        return None
    p = subprocess.run([str(exe), "run", "--help"], capture_output=True)
    return str(exe) if p.returncode == 0 else None


def busybox(arch: str) -> Path | None:
    bb = Path("/bin/busybox") if arch == "x86_64" else arm64_busybox()
    return bb if bb is not None and bb.exists() else None


def workloads(arch: str, names: list[str], quick: bool):
    iters = 10_000_000 if quick else 100_000_000
    mb = 4 if quick else GZIP_MB
    sort_mb = 4 if quick else SORT_MB
    # rwthreads: 4 threads, each 1/4 of the accesses.
    thr_iters = 2_000_000 if quick else 10_000_000
    if "random" in names:
        exe = REPO / "build" / "guest" / arch / "random"
        if exe.exists():
            yield (f"random 64MiB {iters // 1_000_000}M", str(exe),
                   ["-m", "64", "-i", str(iters), "-q"], None)
        else:
            log(f"skip random/{arch}: {exe} not built (make guests)")
    if "gzip" in names:
        bb = Path("/bin/busybox") if arch == "x86_64" else arm64_busybox()
        if bb is None or not bb.exists():
            log(f"skip gzip/{arch}: no busybox-static for {arch}")
        else:
            yield f"busybox gzip {mb}MB", str(bb), ["gzip", "-c"], make_gzip_input(mb)
    if "sort" in names:
        bb = busybox(arch)
        if bb is None:
            log(f"skip sort/{arch}: no busybox-static for {arch}")
        else:
            yield f"busybox sort {sort_mb}MB", str(bb), ["sort"], make_sort_input(sort_mb)
    if "threads" in names:
        exe = REPO / "build" / "guest" / arch / "rwthreads"
        if exe.exists():
            yield (f"rwthreads 4x{thr_iters // 1_000_000}M 64MiB", str(exe),
                   ["-t", "4", "-m", "64", "-i", str(thr_iters)], None)
        else:
            log(f"skip threads/{arch}: {exe} not built (make guests)")


CACHE_ROW = "qemu+contrib cache plugin (peer)"
# Row groups (--rows): every run has plain QEMU, the reference of every ratio.
ROW_GROUPS = ("native", "cache", "floor", "plugin", "reader", "emu", "prev", "replay")
# The floor plugin (benchmarks/floor/floor.c): empty callbacks, registered as emu's.
FLOOR_MODES = (("block callback", "mem=0"), ("access callback", "tb=0"),
               ("both", "tb=1,mem=1"))
RESULTS: list[dict] = []


def bench(arch: str, names: list[str], repeat: int, quick: bool, run_emu: bool,
          rows: set[str]) -> None:
    ctx = {"run_emu": run_emu, "qemu": find_qemu(arch), "plugin": find_plugin(), "emu": emu_cli(),
           "sysroot": "/" if arch == "x86_64" else "/usr/aarch64-linux-gnu", "rows": rows}
    for title, exe, args, stdin in workloads(arch, names, quick):
        bench_one(arch, title, exe, args, stdin, repeat, **ctx)


def bench_one(arch, title, exe, args, stdin, repeat, qemu, plugin, emu, sysroot,
              run_emu, rows) -> None:
    events: dict[str, int] = {}
    peaks: dict[str, int] = {}
    # Events in each row's own stream (emu run: its --json `events`; reader rows:
    # the batches decoded) and the guest's retired instructions, taken from the
    # first `emu run --json` of this workload (emu's own count, all threads).
    row_events: dict[str, int] = {}
    guest = {"instructions": None, "from": None}
    tmp = tempfile.TemporaryDirectory(prefix="emu-bench-")
    jfile = Path(tmp.name) / "emu.json"

    def emu_json(source, row=None):
        try:
            d = json.loads(jfile.read_text())
        except (OSError, ValueError):
            return
        if row is not None and isinstance(d.get("events"), int):
            row_events[row] = d["events"]
        if guest["instructions"] is None and isinstance(d.get("instructions"), int):
            guest["instructions"], guest["from"] = d["instructions"], source

    def emu_timed(name, argv):
        dt = timed(argv, stdin, sample=True)
        peaks[name] = max(peaks.get(name, 0), last_peak["pss"])
        return dt

    def emu_run_timed(name, opts):
        # --json costs a json.dumps of a summary emu builds anyway (also with -q).
        jfile.unlink(missing_ok=True)
        dt = emu_timed(name, [emu, "run", "-q", *opts, "--json", str(jfile), "--", exe, *args])
        emu_json(f"`emu run {' '.join(opts)}`".replace(" `", "`"), name)
        return dt

    def stream(name, m, ring=None):
        dt, n = timed_stream(exe, args, arch, m.split(","), stdin, ring)
        events[m] = n
        row_events[name] = n
        return dt

    base = [qemu, "-L", sysroot]
    plan: list[tuple[str, object]] = []
    if arch == "x86_64" and "native" in rows:
        plan.append(("native", lambda: timed([exe, *args], stdin)))
    plan.append(("qemu", lambda: timed([*base, exe, *args], stdin)))
    if "cache" in rows:
        def cache_row():
            lib, why = contrib_cache_plugin()
            if lib is None:
                raise RuntimeError(why)
            return timed([*base, "-plugin", str(lib), exe, *args], stdin)
        plan.append((CACHE_ROW, cache_row))
    if "floor" in rows:
        for what, opts in FLOOR_MODES:
            def floor_row(o=opts):
                lib, why = floor_plugin()
                if lib is None:
                    raise RuntimeError(why)
                return timed([*base, "-plugin", f"{lib},{o}", exe, *args], stdin)
            plan.append((f"qemu+floor plugin: {what}", floor_row))
    for mode in PLUGIN_MODES if "plugin" in rows else ():
        opts = f"{plugin},out=/dev/null,{mode}"
        plan.append((f"qemu+plugin >/dev/null {mode}",
                     lambda o=opts: timed([*base, "-plugin", o, exe, *args], stdin)))
    if "reader" in rows:
        for mode in STREAM_MODES:
            name = f"qemu+plugin -> emu reader {mode}"
            plan.append((name, lambda n=name, m=mode: stream(n, m)))
        name = f"  the same through the FIFO {STREAM_MODES[0]}"
        plan.append((name, lambda n=name: stream(n, STREAM_MODES[0], ring=0)))
    skipped = None
    rec = BENCH / f"bench-{arch}-{'-'.join(title.split()[:2])}.emutrace"
    want_replay = "replay" in rows
    if want_replay:
        BENCH.mkdir(parents=True, exist_ok=True)
        rec.unlink(missing_ok=True)   # recorded afresh by this run's plugin
    if emu and run_emu:
        if "emu" in rows:
            plan.append(("emu run", lambda: emu_run_timed("emu run", ())))
        if "prev" in rows:
            # The default before the micro-TLB became the profiles' L0 level.
            plan.append(("emu run --utlb 0 (previous default)", lambda: emu_run_timed(
                "emu run --utlb 0 (previous default)", ("--utlb", "0"))))
        if "replay" in rows:
            def replay(opts=()):
                if not rec.exists():
                    jfile.unlink(missing_ok=True)
                    timed([emu, "run", "-q", "--no-hw", "--record", str(rec), "--json",
                           str(jfile), "--", exe, *args], stdin)
                    emu_json("the recording's `emu run --no-hw`")
                return emu_timed(f"emu replay {' '.join(opts)}".strip(),
                                 [emu, "replay", "-q", *opts, str(rec)])
            plan.append(("emu replay", replay))
            plan.append(("emu replay --thp never", lambda: replay(("--thp", "never"))))
    else:
        skipped = "skipped: --no-emu-run" if emu else "skipped: `emu run` not available yet"
    times: dict[str, list[float]] = {name: [] for name, _ in plan}
    notes: dict[str, str] = {}
    for rnd in range(repeat):
        for name, f in plan:
            if name in notes:
                continue
            log(f"  {arch} {title}: {name} (round {rnd + 1}/{repeat}) ...")
            try:
                times[name].append(f())
            except (RuntimeError, EmuError, OSError) as e:
                notes[name] = str(e) if name == CACHE_ROW else f"failed: {e}"
    rows = [(name, min(times[name]) if times[name] else None, notes.get(name, ""))
            for name, _ in plan]
    if skipped:
        rows.append(("emu run", None, skipped))
    if guest["instructions"] is None and emu:
        # No emu row gave the count (none asked for, or they failed): one
        # untimed `emu run --no-hw --json` for it.
        log(f"  {arch} {title}: counting the guest's instructions (emu run --no-hw) ...")
        jfile.unlink(missing_ok=True)
        try:
            timed([emu, "run", "-q", "--no-hw", "--json", str(jfile), "--", exe, *args], stdin)
            emu_json("`emu run --no-hw`")
        except (RuntimeError, OSError) as e:
            log(f"  {arch} {title}: no instruction count: {e}")
    tmp.cleanup()
    insns = guest["instructions"]
    plain = next((t for n, t, _ in rows if n == "qemu"), None)
    nrec = None
    if want_replay and rec.exists():   # this run's recording, never a stale one
        from emu.trace.reader import iter_batches as _ib
        nrec = sum(len(b.events) for b in _ib(str(rec)))
        for name, _ in plan:
            if name.startswith("emu replay"):
                row_events[name] = nrec
    print(f"\n{arch}  {title}  (best of {repeat} interleaved rounds)")
    if insns:
        print(f"  guest instructions: {insns:,} (from {guest['from']}, the guest under QEMU; "
              f"MIPS = these / the row's wall s"
              f"{'; native uses this count' if 'native' in times else ''})")
    else:
        print("  guest instructions: unknown (no `emu run --json`), no MIPS")
    for name, t, note in rows:
        if t is None:
            print(f"  {name:44s} {'-':>8s}          {note}")
            continue
        ratio = f"{t / plain:6.2f}x" if plain else ""
        extra = f"  {insns / t / 1e6:7.0f} MIPS" if insns else ""
        if row_events.get(name):
            extra += f"  {row_events[name] / t / 1e6:6.2f} M events/s"
        if peaks.get(name):
            extra += f"  peak PSS {peaks[name] / 2**20:6.0f} MiB"
        print(f"  {name:44s} {t:8.2f}s {ratio}{extra}  {note}")
    for m, n in events.items():
        print(f"  events decoded ({m}): {n:,}")
    for name in ("emu run", "emu run --utlb 0 (previous default)"):
        if name in row_events:
            print(f"  events in the stream ({name}, its --json): {row_events[name]:,}")
    if nrec:
        print(f"  events in the recording (default micro-TLB): {nrec:,}")
    sys.stdout.flush()
    RESULTS.append({
        "arch": arch, "workload": title, "repeat": repeat,
        "guest_instructions": insns, "guest_instructions_from": guest["from"],
        "rows": [{"row": n, "seconds": t, "ratio": t / plain if t and plain else None,
                  "peak_pss_bytes": peaks.get(n), "all": times[n], "note": note,
                  "mips": insns / t / 1e6 if insns and t else None,
                  "events": row_events.get(n),
                  "events_per_s": row_events[n] / t if t and row_events.get(n) else None}
                 for n, t, note in rows],
        "events_decoded": events, "recording_events": nrec})


def summary() -> None:
    """The run's one table: a row per measured row, a column per (arch, workload),
    cells `ratio (seconds, peak PSS, MIPS, events/s)`, plain QEMU in seconds;
    markdown, for docs."""
    if not RESULTS:
        return
    cols = [f"{r['arch']} {r['workload']}" for r in RESULTS]
    names: list[str] = []
    for r in RESULTS:
        names += [x["row"] for x in r["rows"] if x["row"] not in names]
    print("\nSummary: wall time / plain QEMU of the same run (best wall seconds; peak PSS of"
          " emu's rows; MIPS = the guest's retired instructions as emu counts them under"
          " QEMU / wall seconds, native uses the same count; ev/s = events in the row's own"
          " stream / wall seconds)\n")
    print("| | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for n in names:
        cells = []
        for r in RESULTS:
            x = next((x for x in r["rows"] if x["row"] == n), None)
            if x is None:
                cells.append("")
            elif x["seconds"] is None:
                cells.append(x["note"] or "-")
            else:
                parts = [f"{x['seconds']:.2f} s" if n == "qemu" else f"{x['seconds']:.1f} s"]
                if x["peak_pss_bytes"]:
                    parts.append(f"{x['peak_pss_bytes'] / 2**20:.0f} MiB")
                if x.get("mips"):
                    parts.append(f"{x['mips']:.0f} MIPS")
                if x.get("events_per_s"):
                    parts.append(f"{x['events_per_s'] / 1e6:.1f} M ev/s")
                if n == "qemu":
                    cells.append(", ".join(parts))
                else:
                    cells.append(f"{x['ratio']:.2f}x ({', '.join(parts)})")
        print(f"| {n} | " + " | ".join(cells) + " |")
    sys.stdout.flush()


SCALING: list[dict] = []
SIZES_MIB = [16, 64, 256, 1024]
THREADS = [1, 2, 4, 8]


def scaling(arch: str, repeat: int, quick: bool) -> None:
    """`emu run` default against plain QEMU over the working set and the threads."""
    emu = emu_cli()
    qemu = find_qemu(arch)
    base = [qemu, "-L", "/" if arch == "x86_64" else "/usr/aarch64-linux-gnu"]
    rnd = REPO / "build" / "guest" / arch / "random"
    thr = REPO / "build" / "guest" / arch / "rwthreads"
    iters = 10_000_000 if quick else 30_000_000
    thr_total = 4_000_000 if quick else 16_000_000
    points: list[tuple[str, int, str, list[str]]] = []
    if rnd.exists():
        points += [("working set (MiB)", m, str(rnd), ["-m", str(m), "-i", str(iters), "-q"])
                   for m in SIZES_MIB]
    if thr.exists():
        points += [("threads", t, str(thr), ["-t", str(t), "-m", "64", "-i",
                                             str(thr_total // t)]) for t in THREADS]
    for axis, x, exe, args in points:
        best: dict[str, float] = {}
        peak, note = 0, ""
        for r in range(repeat):
            log(f"  scaling {arch} {axis}={x} (round {r + 1}/{repeat}) ...")
            try:
                t = timed([*base, exe, *args])
                best["qemu"] = min(best.get("qemu", t), t)
                if emu:
                    t = timed([emu, "run", "-q", "--", exe, *args], sample=True)
                    best["emu"] = min(best.get("emu", t), t)
                    peak = max(peak, last_peak["pss"])
            except (RuntimeError, OSError) as e:
                note = f"failed: {e}"
                break
        SCALING.append({"arch": arch, "axis": axis, "x": x, "argv": [Path(exe).name, *args],
                        "qemu_s": best.get("qemu"), "emu_s": best.get("emu"),
                        "ratio": best["emu"] / best["qemu"] if "emu" in best and "qemu" in best
                        else None, "peak_pss_bytes": peak or None, "repeat": repeat,
                        "note": note})
    print(f"\nScaling, {arch}: `emu run` (default) against plain QEMU, best of {repeat}\n")
    print("| axis | value | guest | plain QEMU | `emu run` | ratio | peak PSS |")
    print("|---|---|---|---|---|---|---|")
    for p in (p for p in SCALING if p["arch"] == arch):
        q = f"{p['qemu_s']:.2f} s" if p["qemu_s"] else "-"
        e = f"{p['emu_s']:.2f} s" if p["emu_s"] else p["note"] or "-"
        ratio = f"{p['ratio']:.2f}x" if p["ratio"] else "-"
        pss = f"{p['peak_pss_bytes'] / 2**20:.0f} MiB" if p["peak_pss_bytes"] else "-"
        print(f"| {p['axis']} | {p['x']} | `{' '.join(p['argv'])}` | {q} | {e} | {ratio} "
              f"| {pss} |")
    sys.stdout.flush()


def plot_scaling(path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("scaling plot skipped: no matplotlib (.venv/bin/pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, axis, xlabel in ((axes[0], "working set (MiB)", "random -m N: working set (MiB)"),
                             (axes[1], "threads", "rwthreads -t T: threads (same total)")):
        for arch in sorted({p["arch"] for p in SCALING}):
            pts = [p for p in SCALING if p["arch"] == arch and p["axis"] == axis and p["ratio"]]
            if pts:
                ax.plot([p["x"] for p in pts], [p["ratio"] for p in pts], "o-", label=arch)
        ax.set_xscale("log", base=2)
        xs = sorted({p["x"] for p in SCALING if p["axis"] == axis})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("emu run / plain QEMU (wall time)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax = axes[2]
    for arch in sorted({p["arch"] for p in SCALING}):
        pts = [p for p in SCALING if p["arch"] == arch and p["axis"] == "working set (MiB)"
               and p["peak_pss_bytes"]]
        if pts:
            ax.plot([p["x"] for p in pts], [p["peak_pss_bytes"] / 2**20 for p in pts], "o-",
                    label=f"{arch} peak PSS")
    xs = SIZES_MIB
    ax.plot(xs, [2 * x + 200 for x in xs], "k--", label="bound 2 x set + 200 MiB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("random -m N: working set (MiB)")
    ax.set_ylabel("emu run peak PSS (MiB)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.suptitle("emu run (default) against plain QEMU, " + time.strftime("%Y-%m-%d"))
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    log(f"scaling plot: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="x86_64,arm64")
    ap.add_argument("--workload", default="random,gzip,sort,threads",
                    help="of random,gzip,sort,threads; none: only --scaling")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="10M iterations, 4 MB gzip and sort inputs, 4x2M rwthreads")
    ap.add_argument("--no-emu-run", action="store_true", help="skip the full `emu run` row")
    ap.add_argument("--rows", default=",".join(ROW_GROUPS),
                    help=f"row groups besides plain QEMU (of {','.join(ROW_GROUPS)})")
    ap.add_argument("--json", metavar="FILE", help="also write the raw numbers as JSON")
    ap.add_argument("--plugin-modes", default=",".join(m.replace(",", "+") for m in PLUGIN_MODES),
                    help="plugin options of the `plugin` rows, `+` between options")
    ap.add_argument("--scaling", action="store_true",
                    help="also the working-set (16 MiB..1 GiB) and threads (1..8) scaling")
    ap.add_argument("--plot", metavar="FILE",
                    default=str(REPO / "benchmarks" / "results"
                                / f"{time.strftime('%Y-%m-%d')}-scaling.png"),
                    help="the scaling plot (PNG; default benchmarks/results/DATE-scaling.png)")
    ap.add_argument("--replot", metavar="JSON",
                    help="only redraw the scaling plot (--plot) from a --json file of a run")
    a = ap.parse_args()
    if a.replot:
        SCALING[:] = json.loads(Path(a.replot).read_text()).get("scaling", [])
        plot_scaling(a.plot)
        return 0
    rows = set(a.rows.split(",")) - {""}
    PLUGIN_MODES[:] = [m.replace("+", ",") for m in a.plugin_modes.split(",") if m]
    if rows - set(ROW_GROUPS):
        print(f"benchmarks: unknown row group(s) {sorted(rows - set(ROW_GROUPS))}",
              file=sys.stderr)
        return 2
    try:
        names = [w for w in a.workload.split(",") if w and w != "none"]
        for arch in a.arch.split(",") if names else ():
            bench(arch, names, a.repeat, a.quick, not a.no_emu_run, rows)
        summary()
        if a.scaling:
            for arch in a.arch.split(","):
                scaling(arch, a.repeat, a.quick)
            plot_scaling(a.plot)
    except EmuError as e:
        print(f"benchmarks: {e}", file=sys.stderr)
        return 2
    if a.json:
        import platform
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:],
            "host": platform.node(), "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(), "results": RESULTS, "scaling": SCALING},
            indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
