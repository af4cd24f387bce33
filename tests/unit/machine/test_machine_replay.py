"""emu.machine.Machine fed the committed recordings batch by batch (no QEMU).

The machine runs without the hardware and kernel models here: what it must
get right (processes, threads, fork, exit, syscalls, markers, page counts)
is compared with the guest's truth and with the raw events counted in
`recordings.raw`, never with another run of the machine.
"""

from __future__ import annotations

import pytest
from recordings import ALL, raw, trace, truth

from emu.arch import syscalls
from emu.machine import Machine
from emu.session import _elf_from_meta
from emu.trace.reader import iter_batches, read_meta


def fed(name: str) -> Machine:
    """A model-less machine that has consumed the whole recording."""
    meta = read_meta(trace(name))
    m = Machine(meta["arch"], _elf_from_meta(meta["elf"]))
    for batch in iter_batches(trace(name), background=False):
        m.feed(batch)
    m.finish()
    return m


@pytest.mark.parametrize("name", ALL)
def test_processes_threads_and_exit(name: str) -> None:
    """One Process per PROC_START, with its parent and exit status; one Thread per VCPU_START."""
    m, r = fed(name), raw(name)
    assert sorted(m.processes) == sorted(r.pids)
    for pid, proc in m.processes.items():
        assert proc.parent == r.parent[pid]
        assert proc.exit_status == r.exit_status[pid] == 0
        assert proc.exited
    # No vCPU was reused in these recordings, so threads map 1:1 to VCPU_START records.
    assert set(r.vcpu_starts.values()) == {1}
    assert sorted((t.pid, t.vcpu) for t in m.all_threads) == sorted(r.vcpu_starts)
    assert all(t.exited and t.index == 0 for t in m.all_threads)
    assert {(t.pid, t.vcpu): t.instructions for t in m.all_threads} == r.instructions


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_fork_parent_and_child(arch: str) -> None:
    """forker: the child is a second process whose parent is the guest's pid (truth)."""
    name = f"forker-{arch}"
    m, t = fed(name), truth(name)
    parent, child = t["parent"]["pid"], t["child"]["pid"]
    assert sorted(m.processes) == [parent, child]
    assert m.processes[parent].parent == 0
    assert m.processes[child].parent == parent
    assert m.processes[child].exit_status == t["child"]["status"] == 0
    # One clone (glibc's fork), logged in both processes: the parent's returned the
    # child's pid, the child's 0.  Stream order between the two processes is not fixed.
    clones = [s for s in m.syscall_log if s["name"] in ("clone", "fork")]
    assert sorted((s["pid"], s["ret"]) for s in clones) == sorted([(parent, child), (child, 0)])


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_threads_one_vcpu_each(arch: str) -> None:
    """threads -t 3: the main thread plus three workers, each on its own vCPU, one process."""
    name = f"threads-{arch}"
    m, t = fed(name), truth(name)
    assert t["nthreads"] == 3
    assert len(m.processes) == 1
    assert sorted(th.vcpu for th in m.all_threads) == [0, 1, 2, 3]
    # Each worker's region accesses (raw, per vCPU) match one truth thread's; main has none.
    r = raw(name)
    per_vcpu = sorted(r.per_vcpu_region.values())
    assert per_vcpu == sorted([(0, 0)] + [(w["reads"], w["writes"]) for w in t["threads"]])
    assert sum(w for _, w in per_vcpu) == t["writes"] == 48


@pytest.mark.parametrize("name", ALL)
def test_syscall_log_is_the_stream(name: str) -> None:
    """Every SYSCALL record but emu_mark is logged in order, with name, args and return."""
    m, r = fed(name), raw(name)
    systab = syscalls.SyscallTable.for_arch(m.arch)
    assert [(s["pid"], s["nr"], tuple(s["args"]), s["ret"]) for s in m.syscall_log] == r.syscalls
    assert all(s["name"] == systab.name(s["nr"]) for s in m.syscall_log)
    assert not any(s["nr"] == 0x656D75 for s in m.syscall_log)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_churn_calls_equal_truth(arch: str) -> None:
    """churn lists every mm call it made and what it returned: they appear in the log, in order."""
    name = f"churn-{arch}"
    m, t = fed(name), truth(name)
    systab = syscalls.SyscallTable.for_arch(arch)
    want = [syscalls.decode(arch, systab.nr(c[0]), tuple(a & (2**64 - 1) for a in c[1]),
                            c[2]).text for c in t["calls"]]
    names = {c[0] for c in t["calls"]}
    got = [s["text"] for s in m.syscall_log if s["name"] in names]
    # The guest's own start-up (libc) makes mmap/mprotect/munmap calls too: truth is a
    # contiguous run at the end of those calls, which ends with the bad munmap.
    assert got[-len(want):] == want
    # -i 2: mmap, madvise, mprotect x2, mremap, munmap per iteration, then the bad munmap.
    assert len(want) == 2 * 6 + 1
    assert t["calls"][-1][2] == -22  # -EINVAL


@pytest.mark.parametrize("name", ALL)
def test_markers(name: str) -> None:
    """emu_mark ids per docs/guests.md: 1 and 2, plus 3 for forker, collapse and sparse."""
    m = fed(name)
    pid = truth(name)["pid"]
    ids = [1, 2, 3] if name.split("-")[0] in ("forker", "collapse", "sparse") else [1, 2]
    assert [(x["pid"], x["id"]) for x in m.markers] == [(pid, i) for i in ids] == raw(name).marks


@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith("churn")])
def test_page_counts_equal_truth(name: str) -> None:
    """Per-process page counts, and inside the region exactly the truth's accesses."""
    m, t, r = fed(name), truth(name), raw(name)
    start, end = t["region"]["start"] >> 12, t["region"]["end"] >> 12
    total_r = total_w = 0
    for pid, proc in m.processes.items():
        pages, reads, writes = proc.pages.arrays()
        assert proc.pages.nr_pages == len(pages) == r.pages[pid]
        inside = (pages >= start) & (pages < end)
        total_r += int(reads[inside].sum())
        total_w += int(writes[inside].sum())
        assert int(reads.sum()) + int(writes.sum()) == sum(r.region[pid].values()) + int(
            reads[~inside].sum() + writes[~inside].sum())
    assert (total_r, total_w) == (t["reads"], t["writes"])
    if name.startswith("forker"):
        # The child wrote its C pages of the inherited region and read none.
        cpid = t["child"]["pid"]
        pages, reads, writes = m.processes[cpid].pages.arrays()
        inside = (pages >= start) & (pages < end)
        assert (int(reads[inside].sum()), int(writes[inside].sum())) == (0, t["child"]["writes"])
        assert int(inside.sum()) == 8
    else:
        pages, _, _ = m.processes[t["pid"]].pages.arrays()
        assert int(((pages >= start) & (pages < end)).sum()) == t["pages_touched"]
