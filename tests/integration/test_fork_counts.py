"""forker under the whole pipeline: shared, copied and reused pages as the program made them.

The stream is fed up to the child's exit record, so the child's page table can
be read as it was when the child ended: the pages it wrote are its own copies,
every other page of the region is still the parent's folio, mapped by both.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from emu.trace import events as ev
from emu.trace.events import Batch

REPO = Path(__file__).resolve().parents[2]
PAGE = 4096
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
@pytest.mark.parametrize("mthp", [None, "64K=always"])
def test_forker_shared_copied_reused(tmp_path, arch, mthp):
    from emu.guest.elf import inspect_elf
    from emu.guest.qemu import GuestRun
    from emu.guest.truth import parse_truth, range_pages
    from emu.options import model_args
    from emu.session import build_machine
    from emu.trace.reader import iter_batches

    binary = REPO / "build" / "guest" / arch / "forker"
    if not binary.exists() or not (REPO / "build" / "libemu.so").exists():
        pytest.skip("guests or plugin not built (bash setup.sh)")
    elf = inspect_elf(binary)
    machine = build_machine(arch, elf, model_args(thp="never", mthp=mthp))
    k = machine.kernel
    k.cow_log = []
    out = tmp_path / "stdout"
    with open(out, "w") as f, GuestRun(str(binary), ["-m", "64", "-c", "16", "-s", "3"],
                                       arch=arch, stdout=f) as guest:
        batches = iter_batches(guest.stream)
        child = None
        for b in batches:
            e = b.events
            if child is None:
                # The child is known from the stream: its PROC_START names a parent.
                starts = np.flatnonzero((e["kind"] == ev.PROC_START) & (e["addr"] != 0))
                if starts.size:
                    child = int(e["pid"][starts[0]])
            if child is not None:
                end_rec = np.flatnonzero((e["kind"] == ev.PROC_EXIT) & (e["pid"] == child))
                if end_rec.size:
                    machine.feed(Batch(e[: end_rec[0]], b.syscalls))
                    break
            machine.feed(b)
        else:
            pytest.fail("the child's exit never came")
        mm = k.mm(child)
        for _ in batches:          # drain the rest without modelling it
            pass
        assert guest.wait() == 0
    truth = parse_truth(out.read_text())
    start, end = truth["region"]["start"], truth["region"]["end"]
    written = set(range_pages(truth["child"]["written"]))
    shared = copied = 0
    for va in range(start, end, PAGE):
        pte = k.pt.get_pte(mm, va)
        assert k.arch.is_present(pte), f"page {(va - start) // PAGE} not mapped in the child"
        pfn = k.arch.pfn(pte)
        folio = k.folio_of_pfn(pfn)
        mapped = int(folio.page_mapcount[pfn - folio.pfn])
        if mapped >= 2:
            shared += 1
            assert (va - start) // PAGE not in written
        else:
            copied += 1
            assert (va - start) // PAGE in written
    log = [(pid, (va - start) // PAGE, what) for pid, va, what in k.cow_log
           if start <= va < end]
    assert copied == len(written) == truth["child"]["writes"]
    assert shared == truth["pages"] - len(written)
    assert sorted(p for pid, p, w in log if pid == child and w == "copy") == sorted(written)
    assert not [e for e in log if e[2] == "reuse"]      # every written page was shared
    assert machine.unresolved_faults == 0


def test_forker_runs_natively():
    """The workload itself behaves: its own checks pass on the host."""
    binary = REPO / "build" / "guest" / "x86_64" / "forker"
    if not binary.exists():
        pytest.skip("guests not built")
    p = subprocess.run([str(binary), "-m", "64", "-c", "16", "-s", "3"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and '"ok":1' in p.stdout
