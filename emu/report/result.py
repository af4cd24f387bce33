"""Gather what the machine and models counted into one JSON-ready dict.

The schema is documented in docs/usage.md; keys only ever get added.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from emu import __version__

SCHEMA_VERSION = 1


def _sum_counters(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def build_result(machine: Any, binary: str, argv: list[str],
                 exit_status: int | None) -> dict[str, Any]:
    """The whole run as plain data: counts first, model details after."""
    procs = sorted(machine.processes.values(), key=lambda p: p.pid)
    vmas: list[dict[str, Any]] = []
    processes = []
    reads = writes = touched = 0
    for proc in procs:
        pv = machine.vma_stats(proc)
        vmas.extend(pv)
        _, r, w = proc.pages.arrays()
        reads += int(r.sum())
        writes += int(w.sum())
        touched += proc.pages.nr_pages
        threads = [t for t in machine.all_threads if t.pid == proc.pid]
        processes.append({
            "pid": proc.pid, "parent": proc.parent, "exit_status": proc.exit_status,
            "instructions": sum(t.instructions for t in threads),
            "accesses": {"read": int(r.sum()), "write": int(w.sum())},
            "pages_touched": proc.pages.nr_pages,
        })
    vcpus = [{"pid": t.pid, "vcpu": t.vcpu, "thread": t.index, "instructions": t.instructions,
              "stall_ns": int(t.stall_ns)}
             for t in machine.all_threads]
    names = Counter(s["name"] for s in machine.syscall_log)
    result: dict[str, Any] = {
        "emu_version": __version__,
        "schema": SCHEMA_VERSION,
        "arch": machine.arch,
        "binary": binary,
        "argv": argv,
        "exit_status": exit_status,
        "instructions": sum(v["instructions"] for v in vcpus),
        "accesses": {"read": reads, "write": writes},
        "fetch_page_changes": machine.nr_fetch,
        "pages_touched": touched,
        "events": machine.nr_events,
        "processes": processes,
        "vcpus": vcpus,
        "vmas": vmas,
        "syscall_counts": dict(sorted(names.items())),
        "syscalls": machine.syscall_log,
        "markers": machine.markers,
    }
    if machine.hw is not None:
        cpus = sorted({t.vcpu for t in machine.all_threads})
        per_cpu = {str(c): machine.hw.counters(c) for c in cpus}
        # flushes issued where no vCPU runs (khugepaged's CPU): counted as issued there,
        # and in the total, so every received IPI or TLBI has its issuer
        no_vcpu = machine.hw.issued_without_vcpu()
        result["tlb"] = {"profile": machine.hw.profile.name,
                         "total": _sum_counters(list(per_cpu.values()) + [no_vcpu]),
                         "per_cpu": per_cpu,
                         "no_vcpu": no_vcpu,
                         "unresolved_faults": machine.unresolved_faults,
                         "unresolved_first": machine.unresolved,
                         "utlb": {"entries": machine.options.utlb,
                                  "hits": machine.utlb_hits}}
    if machine.kernel is not None and machine.hw is not None:
        k = machine.kernel
        result["kernel"] = {
            "config": k.config.as_sysfs(),
            "vmstat": k.vmstat,
            "mthp_stats": {str(kb): d for kb, d in sorted(k.mthp_stats.items())},
            # per cause (the syscall, fault, fork, exit, khugepaged, madvise_collapse,
            # switch_mm): flush calls and the hardware operations they issued
            "flushes_by_cause": {c: dict(v) for c, v in sorted(k.flushes_by_cause.items())},
            "nr_free_frames": k.nr_free_frames,
        }
    if machine.collapse_log is not None:
        result["khugepaged"] = machine.collapse_log.section(machine.khugepaged)
        # Whether the thread ran (--khugepaged); MADV_COLLAPSE works either way.
        result["khugepaged"]["thread"] = bool(machine.options.khugepaged)
        result["khugepaged"]["guest_stalls"] = {"count": machine.collapse_stalls,
                                                "total_ns": int(machine.collapse_stall_ns)}
    return result


def at_mark_report(specs: list[str], markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each --at-mark ID:SETTING with the emu_mark(ID) calls that applied it.

    A mark the guest never reached applied nothing; the summary warns, since
    the run then modelled other settings than the user asked for.
    """
    out = []
    for spec in specs:
        mark, _, setting = spec.partition(":")
        mark_id = int(mark, 0)
        seen = [m for m in markers if m["id"] == mark_id]
        out.append({"id": mark_id, "setting": setting, "applied": len(seen),
                    "first": ({"pid": seen[0]["pid"], "vcpu": seen[0]["vcpu"],
                               "instructions": seen[0]["instructions"]} if seen else None)})
    return out
