"""The plugin's counts are exact, record by record, through its per-vCPU log.

The guest plugin_guests/icount.c runs a loop whose instructions and accesses
are known from its assembly: N iterations of {read page 0, write page 1,
decrement, branch} between two markers.  The stream must give exactly N reads
and N writes, exactly the loop's instruction count between the markers, and
(without the micro-TLB) each iteration's records at the icount of its block.
N is large enough that the log is drained and chunks are sealed hundreds of
times inside the loop, so a word lost or reordered at a boundary shows."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from emu.errors import EmuError
from emu.guest import qemu
from emu.guest.qemu import GuestRun, find_plugin
from emu.trace import read_all
from emu.trace.events import MARK, READ, WRITE

pytestmark = pytest.mark.integration

SRC = Path(__file__).parent / "plugin_guests" / "icount.c"
CC = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
N = 200_000
# Instructions from after emu_mark(1)'s syscall to emu_mark(2)'s, inclusive
# (see icount.c), and the length of the loop's first block (the setup move
# and the first iteration: QEMU ends blocks at the branch).
BETWEEN = {"x86_64": 4 * N + 4, "arm64": 4 * N + 5}
FIRST_BLOCK = 5


@pytest.fixture(scope="module")
def icount_guest(tmp_path_factory):
    try:
        find_plugin()
    except EmuError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("icount")
    built = {}
    for arch, cc in CC.items():
        if shutil.which(cc) and shutil.which(qemu.QEMU_BINARIES[arch]):
            exe = out / f"icount.{arch}"
            subprocess.run([cc, "-O1", "-static", "-o", str(exe), str(SRC)], check=True)
            built[arch] = str(exe)
    return built


def run(icount_guest, arch, tmp_path, plugin_args):
    exe = icount_guest.get(arch)
    if exe is None:
        pytest.skip(f"no compiler or QEMU for {arch}")
    so = tmp_path / "stdout"
    with open(so, "w") as f, GuestRun(exe, [str(N)], arch=arch, plugin_args=plugin_args,
                                      stdout=f) as g:
        batch = read_all(g.stream)
        assert g.wait() == 0
    buf = int(re.search(r"buf=(\d+)", so.read_text()).group(1))
    return batch.events, buf


@pytest.mark.parametrize("arch", list(CC))
@pytest.mark.parametrize("mode", [(), ("utlb=8",), ("icount=inline",),
                                  ("icount=inline", "utlb=4")],
                         ids=["tb", "utlb8", "inline", "inline-utlb4"])
def test_loop_counts_are_exact(icount_guest, arch, mode, tmp_path):
    e, buf = run(icount_guest, arch, tmp_path, mode)
    marks = e[e["kind"] == MARK]
    assert list(marks["addr"]) == [1, 2]
    # Instructions between the markers: exact, in every mode (one thread).
    assert int(marks["icount"][1]) - int(marks["icount"][0]) == BETWEEN[arch]
    reads = e[(e["kind"] == READ) & (e["addr"] == buf)]
    writes = e[(e["kind"] == WRITE) & (e["addr"] == buf + 4096)]
    assert int(reads["count"].sum()) == N
    assert int(writes["count"].sum()) == N
    # Nothing else touched the two pages.
    other = e[((e["kind"] == READ) | (e["kind"] == WRITE))
              & (e["addr"] >= buf) & (e["addr"] < buf + 8192)]
    assert len(other) == len(reads) + len(writes)
    if "utlb" in " ".join(mode):
        return
    # Without the micro-TLB, pages alternate, so every access is a record of
    # count 1 at the icount of its block: iteration k's block ends at
    # mark1 + FIRST_BLOCK + 4k.
    assert len(reads) == N and len(writes) == N
    assert np.all(reads["count"] == 1) and np.all(writes["count"] == 1)
    want = int(marks["icount"][0]) + FIRST_BLOCK + 4 * np.arange(N, dtype=np.int64)
    np.testing.assert_array_equal(reads["icount"].astype(np.int64), want)
    np.testing.assert_array_equal(writes["icount"].astype(np.int64), want)
    # And in program order: read k, write k, read k+1, ...
    acc = e[((e["kind"] == READ) | (e["kind"] == WRITE)) & (e["addr"] >= buf)
            & (e["addr"] < buf + 8192)]
    np.testing.assert_array_equal(acc["kind"], np.tile([READ, WRITE], N))
