#!/usr/bin/env python3
"""Time emu's pipeline against plain QEMU (a script, not a test).

    .venv/bin/python benchmarks/run.py [--arch x86_64,arm64] [--workload random,gzip]
                                       [--repeat N] [--quick]

Workloads: `random` (build/guest/<arch>/random -m 64 -i 100M -q) and busybox
gzip of a generated 20 MB file (x86-64: /bin/busybox; arm64: Debian's
busybox-static arm64 .deb, fetched once into build/bench/).  Rows: native
(x86-64 only), plain QEMU, QEMU + plugin writing to /dev/null (both icount
modes), QEMU + plugin streaming to emu's reader (decode only, no model) through
the shared-memory ring and, for comparison, through the FIFO alone, and the
full `emu run`.  Every ratio is to plain QEMU measured in the same run.
Times are wall-clock seconds, the best of --repeat rounds; each round runs
every row once, in turn, so that the machine's drift hits all rows alike.
"""

import argparse
import os
import subprocess
import sys
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


def timed(argv: list[str], stdin: Path | None = None) -> float:
    with open(stdin or os.devnull, "rb") as i:
        t = time.perf_counter()
        p = subprocess.run(argv, stdin=i, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t
    if p.returncode != 0:
        tail = p.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
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


def workloads(arch: str, names: list[str], quick: bool):
    iters = 10_000_000 if quick else 100_000_000
    mb = 4 if quick else GZIP_MB
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


def bench(arch: str, names: list[str], repeat: int, quick: bool, run_emu: bool) -> None:
    ctx = {"run_emu": run_emu, "qemu": find_qemu(arch), "plugin": find_plugin(), "emu": emu_cli(),
           "sysroot": "/" if arch == "x86_64" else "/usr/aarch64-linux-gnu"}
    for title, exe, args, stdin in workloads(arch, names, quick):
        bench_one(arch, title, exe, args, stdin, repeat, **ctx)


def bench_one(arch, title, exe, args, stdin, repeat, qemu, plugin, emu, sysroot,
              run_emu) -> None:
    events: dict[str, int] = {}

    def stream(m, ring=None):
        dt, n = timed_stream(exe, args, arch, m.split(","), stdin, ring)
        events[m] = n
        return dt

    base = [qemu, "-L", sysroot]
    plan: list[tuple[str, object]] = []
    if arch == "x86_64":
        plan.append(("native", lambda: timed([exe, *args], stdin)))
    plan.append(("qemu", lambda: timed([*base, exe, *args], stdin)))
    for mode in PLUGIN_MODES:
        opts = f"{plugin},out=/dev/null,{mode}"
        plan.append((f"qemu+plugin >/dev/null {mode}",
                     lambda o=opts: timed([*base, "-plugin", o, exe, *args], stdin)))
    for mode in STREAM_MODES:
        plan.append((f"qemu+plugin -> emu reader {mode}", lambda m=mode: stream(m)))
    plan.append((f"  the same through the FIFO {STREAM_MODES[0]}",
                 lambda: stream(STREAM_MODES[0], ring=0)))
    skipped = None
    if emu and run_emu:
        plan.append(("emu run", lambda: timed([emu, "run", "--", exe, *args], stdin)))
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
                notes[name] = f"failed: {e}"
    rows = [(name, min(times[name]) if times[name] else None, notes.get(name, ""))
            for name, _ in plan]
    if skipped:
        rows.append(("emu run", None, skipped))
    plain = next((t for n, t, _ in rows if n == "qemu"), None)
    print(f"\n{arch}  {title}  (best of {repeat} interleaved rounds)")
    for name, t, note in rows:
        if t is None:
            print(f"  {name:42s} {'-':>8s}          {note}")
            continue
        ratio = f"{t / plain:6.2f}x" if plain else ""
        print(f"  {name:42s} {t:8.2f}s {ratio}  {note}")
    for m, n in events.items():
        print(f"  events decoded ({m}): {n:,}")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="x86_64,arm64")
    ap.add_argument("--workload", default="random,gzip")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10M iterations, 4 MB gzip input")
    ap.add_argument("--no-emu-run", action="store_true", help="skip the full `emu run` row")
    a = ap.parse_args()
    try:
        for arch in a.arch.split(","):
            bench(arch, a.workload.split(","), a.repeat, a.quick, not a.no_emu_run)
    except EmuError as e:
        print(f"benchmarks: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
