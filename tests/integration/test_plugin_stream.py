"""The plugin under real QEMU, both architectures: exact counts, syscalls,
threads, fork, record/replay, damage.  Guests are small C programs in
plugin_guests/, built here so the tests do not depend on guest/."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from emu.errors import EmuError
from emu.guest import qemu
from emu.guest.qemu import GuestRun, find_plugin, find_qemu
from emu.trace import TraceError, iter_batches, read_all, read_meta
from emu.trace.events import (
    MARK,
    PROC_EXIT,
    PROC_START,
    READ,
    SYSCALL,
    VCPU_EXIT,
    VCPU_START,
    WRITE,
)
from emu.trace.format import F_ABSORBED

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent / "plugin_guests"
CC = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
ARCHES = ["x86_64", "arm64"]
# Syscall numbers the tests look for (x86-64, arm64).
NR = {"mmap": (9, 222), "munmap": (11, 215), "madvise": (28, 233)}


def nr(name: str, arch: str) -> int:
    return NR[name][ARCHES.index(arch)]


@pytest.fixture(scope="session")
def plugin() -> str:
    try:
        return find_plugin()
    except EmuError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def guests(tmp_path_factory, plugin):
    """{(name, arch): path} for every plugin_guests/*.c, static, built once."""
    out = tmp_path_factory.mktemp("plugin_guests")
    built = {}
    for arch in ARCHES:
        if shutil.which(CC[arch]) is None or shutil.which(qemu.QEMU_BINARIES[arch]) is None:
            continue
        for src in HERE.glob("*.c"):
            exe = out / f"{src.stem}.{arch}"
            subprocess.run([CC[arch], "-O1", "-static", "-pthread", "-o", str(exe), str(src)],
                           check=True)
            built[(src.stem, arch)] = str(exe)
    return built


# Transports (GuestRun's ring=): the default shared-memory ring, a one-page
# ring (writers wait for room and wrap on nearly every chunk), the FIFO alone.
TRANSPORTS = {"ring": None, "ring4k": 4096, "fifo": 0}


def run(guests, name, arch, tmp_path, plugin_args=(), record=None, binary=None,
        transport="ring"):
    """Run a guest; return (Batch of all events, exit status, stdout text)."""
    exe = binary or guests.get((name, arch))
    if exe is None:
        pytest.skip(f"no compiler or QEMU for {arch}")
    out = tmp_path / f"{name}.{arch}.stdout"
    with open(out, "w") as so, GuestRun(exe, arch=arch, plugin_args=plugin_args,
                                        stdout=so, ring=TRANSPORTS[transport]) as g:
        batch = read_all(g.stream, record=record, meta={"arch": arch})
        status = g.wait()
    return batch, status, out.read_text()


def syscalls(batch, number=None):
    e = batch.events
    rows = batch.syscalls[e["count"][e["kind"] == SYSCALL]]
    return rows if number is None else rows[rows["nr"] == number]


def per_page(batch, kind, base, npages, pid=None):
    e = batch.events
    m = (e["kind"] == kind) & (e["addr"] >= base) & (e["addr"] < base + npages * 4096)
    if pid is not None:
        m &= e["pid"] == pid
    pages = ((e["addr"][m] - base) >> 12).astype(np.int64)
    return np.bincount(pages, weights=e["count"][m].astype(np.float64),
                       minlength=npages).astype(np.int64)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize(("mode", "transport"),
                         [((), "ring"), (("utlb=8",), "ring"), (("icount=inline",), "ring"),
                          ((), "ring4k"), ((), "fifo")],
                         ids=["tb", "utlb8", "inline", "tb-ring4k", "tb-fifo"])
def test_exact_counts_and_syscalls(guests, arch, mode, transport, tmp_path):
    b, status, out = run(guests, "pattern", arch, tmp_path, plugin_args=mode,
                         transport=transport)
    assert status == 5
    region = int(re.search(r"region=(\d+)", out).group(1))
    np.testing.assert_array_equal(per_page(b, WRITE, region, 16), np.arange(1, 17))
    np.testing.assert_array_equal(per_page(b, READ, region, 16), 2 * np.arange(16))
    mm = syscalls(b, nr("mmap", arch))
    mine = mm[mm["args"][:, 1] == 16 * 4096]
    assert len(mine) == 1 and mine["ret"][0] == region
    assert list(mine["args"][0, :4]) == [0, 16 * 4096, 3, 0x22]  # RW, PRIVATE|ANONYMOUS
    mad = syscalls(b, nr("madvise", arch))
    assert [(int(r["args"][0]), int(r["args"][1]), int(r["args"][2]), int(r["ret"]))
            for r in mad] == [(region, 8192, 4, 0)]
    mun = syscalls(b, nr("munmap", arch))
    assert (region, 16 * 4096, 0) in [(int(r["args"][0]), int(r["args"][1]), int(r["ret"]))
                                      for r in mun]
    e = b.events
    acc = (e["kind"] == READ) | (e["kind"] == WRITE)
    if mode == ("utlb=8",):  # the micro-TLB absorbed most of the repeats
        assert (e["pad"][acc] == F_ABSORBED).sum() > 0
    else:
        assert not e["pad"].any()
    assert list(e["addr"][e["kind"] == MARK]) == [7]
    assert list(e["addr"][e["kind"] == PROC_EXIT]) == [5]
    assert e["kind"][0] == PROC_START and e["kind"][-1] == PROC_EXIT
    assert np.all(np.diff(e["icount"].astype(np.int64)) >= 0)  # one thread: ordered


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_threads_one_vcpu_each(guests, arch, transport, tmp_path):
    b, status, out = run(guests, "threads", arch, tmp_path, transport=transport)
    assert status == 0
    e = b.events
    starts, exits = e[e["kind"] == VCPU_START], e[e["kind"] == VCPU_EXIT]
    assert len(starts) == 6 and len(exits) == 6   # main + 5 workers
    assert len(set(starts["vcpu"].tolist())) < 6  # indexes were reused
    # Split each vCPU's events into thread lives at VCPU_START.
    finals, worker_icounts = [], []
    for v in set(e["vcpu"].tolist()):
        ev = e[e["vcpu"] == v]
        life = np.cumsum(ev["kind"] == VCPU_START)
        for k in range(1, life.max() + 1):
            t = ev[life == k]
            assert t["kind"][0] == VCPU_START and t["kind"][-1] in (VCPU_EXIT, PROC_EXIT)
            assert np.all(np.diff(t["icount"].astype(np.int64)) >= 0)
            final = int(t["icount"][t["kind"] == VCPU_EXIT][0])
            assert final == int(t["icount"].max())
            finals.append(final)
            if v != 0:
                worker_icounts.append(final)
    assert len(finals) == 6 and sum(finals) > 0
    # The five workers run the same loop: their counts agree to 1%.
    assert max(worker_icounts) - min(worker_icounts) <= 0.01 * max(worker_icounts)
    shared = int(re.search(r"shared=(\d+)", out).group(1))
    workers = e[e["vcpu"] != 0]
    for kind in (READ, WRITE):
        m = ((workers["kind"] == kind) & (workers["addr"] >= shared)
             & (workers["addr"] < shared + 8 * 4096))
        assert int(workers["count"][m].sum()) == 5 * 20000


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize(("mode", "transport"),
                         [((), "ring"), (("utlb=16",), "ring"), ((), "ring4k"), ((), "fifo")],
                         ids=["tb", "utlb16", "tb-ring4k", "tb-fifo"])
def test_fork_parent_and_child_by_pid(guests, arch, mode, transport, tmp_path):
    b, status, out = run(guests, "forker", arch, tmp_path, plugin_args=mode,
                         transport=transport)
    assert status == 0
    region = int(re.search(r"region=(\d+)", out).group(1))
    parent = int(re.search(r"parent=(\d+)", out).group(1))
    child = int(re.search(r"child=(\d+)", out).group(1))
    e = b.events
    ps = e[e["kind"] == PROC_START]
    assert sorted(zip(ps["pid"].tolist(), ps["addr"].tolist(), strict=True)) == sorted(
        [(parent, 0), (child, parent)])
    pe = e[e["kind"] == PROC_EXIT]
    assert dict(zip(pe["pid"].tolist(), pe["addr"].tolist(), strict=True)) == {parent: 0, child: 3}
    # Pre-fork writes appear once (the child does not re-emit the parent's buffer).
    np.testing.assert_array_equal(per_page(b, WRITE, region, 8),
                                  [100, 10, 10, 10, 10, 0, 0, 0])
    np.testing.assert_array_equal(per_page(b, WRITE, region, 8, pid=child),
                                  [0, 10, 10, 10, 0, 0, 0, 0])
    np.testing.assert_array_equal(per_page(b, WRITE, region, 8, pid=parent),
                                  [100, 0, 0, 0, 10, 0, 0, 0])
    # The child's first event is its PROC_START; everything the parent did
    # before fork precedes it in the stream.
    first_child = int(np.flatnonzero(e["pid"] == child)[0])
    assert e["kind"][first_child] == PROC_START
    pre = e[:first_child]
    assert int(pre["count"][(pre["kind"] == WRITE) & (pre["addr"] == region)].sum()) == 100


@pytest.mark.parametrize("arch", ARCHES)
def test_record_replay_identical_and_damage(guests, arch, tmp_path):
    rec = tmp_path / "run.emutrace"
    live, _, _ = run(guests, "threads", arch, tmp_path, record=rec)
    assert read_meta(rec) == {"arch": arch}
    replay = read_all(rec)
    assert live.events.tobytes() == replay.events.tobytes()
    assert live.syscalls.tobytes() == replay.syscalls.tobytes()
    with pytest.raises(EmuError, match="exists"):
        run(guests, "threads", arch, tmp_path, record=rec)
    data = rec.read_bytes()
    for name, blob in (("cut", data[: len(data) * 2 // 3]),
                       ("flip", data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 4])
                        + data[len(data) // 2 + 1:])):
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(TraceError) as err:
            for _ in iter_batches(p):
                pass
        assert "\n" not in str(err.value) and re.search(r"byte \d+", str(err.value))


def test_dynamic_arm64_with_default_sysroot(tmp_path, plugin):
    if shutil.which("aarch64-linux-gnu-gcc") is None or not Path(
            qemu.DEFAULT_SYSROOTS["arm64"]).is_dir():
        pytest.skip("no arm64 cross toolchain / sysroot")
    exe = tmp_path / "pattern-dyn"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-o", str(exe),
                    str(HERE / "pattern.c")], check=True)
    b, status, out = run({}, "pattern", "arm64", tmp_path, binary=str(exe))
    assert status == 5
    region = int(re.search(r"region=(\d+)", out).group(1))
    np.testing.assert_array_equal(per_page(b, WRITE, region, 16), np.arange(1, 17))


def test_launcher_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmuError, match="qemu-aarch64 not found: install Debian's qemu-user"):
        find_qemu("arm64")
    monkeypatch.setenv("EMU_PLUGIN", str(tmp_path / "nope.so"))
    with pytest.raises(EmuError, match="plugin not built"):
        find_plugin()
    with pytest.raises(EmuError, match="unsupported architecture"):
        find_qemu("riscv64")


def test_qemu_failing_early_does_not_hang(guests, plugin, tmp_path):
    """QEMU rejects the plugin argument and never opens the FIFO: empty stream."""
    exe = guests.get(("pattern", "x86_64"))
    if exe is None:
        pytest.skip("no x86-64 toolchain")
    with GuestRun(exe, arch="x86_64", plugin_args=["bogus=1"],
                  stderr=subprocess.DEVNULL) as g:
        assert len(read_all(g.stream).events) == 0
        assert g.wait() != 0


def test_exit_status_of_killed_guest(plugin):
    """A guest killed by a signal: status 128+N, the stream still decodes."""
    if not Path("/bin/busybox").exists():
        pytest.skip("busybox-static not installed")
    with GuestRun("/bin/busybox", ["sh", "-c", "kill -9 $$"], arch="x86_64") as g:
        b = read_all(g.stream)
        assert g.wait() == 128 + 9
    assert (b.events["kind"] == PROC_START).sum() == 1


def test_a_reader_that_stops_does_not_hang_the_guest(guests, tmp_path):
    """emu stops reading a full ring: the plugin drops its output, the guest runs on."""
    exe = guests.get(("pattern", "x86_64"))
    if exe is None:
        pytest.skip("no x86-64 toolchain")
    with GuestRun(exe, arch="x86_64", ring=4096, stdout=subprocess.DEVNULL) as g:
        g.stream.read(64)          # the plugin has attached and filled the ring
        g.stream.close()           # emu is done with it: writers stop waiting
        assert g.proc.wait(timeout=60) == 5


def test_ring_argument_that_is_not_a_ring_is_refused(guests, plugin, tmp_path):
    exe = guests.get(("pattern", "x86_64"))
    if exe is None:
        pytest.skip("no x86-64 toolchain")
    with GuestRun(exe, arch="x86_64", ring=0, plugin_args=["ringfd=0"],
                  stderr=subprocess.PIPE) as g:
        assert len(read_all(g.stream).events) == 0
        assert g.wait() != 0
        assert b"not an emu ring" in g.proc.stderr.read()


@pytest.mark.parametrize("arch", ARCHES)
def test_guest_that_closes_the_stream_descriptor_still_finishes(guests, arch, tmp_path):
    """The FIFO's end is the stream's end; the plugin must not wait on the ring."""
    exe = guests.get(("closefds", arch))
    if exe is None:
        pytest.skip(f"no compiler or QEMU for {arch}")
    with GuestRun(exe, arch=arch, ring=4096) as g:
        read_all(g.stream)
        assert g.proc.wait(timeout=120) == 7
