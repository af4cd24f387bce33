"""Gather what the machine and models counted into one JSON-ready dict.

The schema is documented in docs/usage.md; keys only ever get added.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from emu import __version__
from emu.arch import PMD_SIZE

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
    ns = machine.options.ns_per_insn
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
            "sim_ns": _process_ns(threads, ns),
            "pid": proc.pid, "parent": proc.parent, "exit_status": proc.exit_status,
            "instructions": sum(t.instructions for t in threads),
            "accesses": {"read": int(r.sum()), "write": int(w.sum())},
            "pages_touched": proc.pages.nr_pages,
        })
    vcpus = [{"pid": t.pid, "vcpu": t.vcpu, "thread": t.index, "instructions": t.instructions,
              "stall_ns": int(t.stall_ns), "sim_ns": int(t.instructions * ns + t.stall_ns),
              "collapse_faults": t.collapse_faults,
              "collapse_wait_ns": int(t.collapse_wait_ns),
              "collapse_tlb_hits": t.collapse_tlb_hits}
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
        # The model's clock: instructions x ns_per_insn plus the stalls it charged.
        "time": {"ns_per_insn": ns, "elapsed_ns": int(machine.now_ns)},
        "processes": processes,
        "vcpus": vcpus,
        "vmas": vmas,
        "syscall_counts": dict(sorted(names.items())),
        "syscalls": machine.syscall_log,
        "markers": machine.markers,
        "placement": qemu_placement(vmas),
    }
    if machine.hw is not None:
        cpus = sorted({t.vcpu for t in machine.all_threads})
        per_cpu = {str(c): machine.hw.counters(c) for c in cpus}
        # flushes issued where no vCPU runs (khugepaged's CPU): counted as issued there,
        # and in the total, so every received IPI or TLBI has its issuer
        no_vcpu = machine.hw.issued_without_vcpu()
        total = _sum_counters(list(per_cpu.values()) + [no_vcpu])
        result["tlb"] = {"profile": machine.hw.profile.name,
                         "total": total,
                         "neutral": machine.hw.neutral(total),
                         "per_cpu": per_cpu,
                         "no_vcpu": no_vcpu,
                         "unresolved_faults": machine.unresolved_faults,
                         "unresolved_first": machine.unresolved,
                         "utlb": {"entries": machine.options.utlb,
                                  "hits": machine.utlb_hits}}
        result["tlb_contents"] = machine.tlb_inspections
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
    if machine.oracle is not None:
        o = machine.oracle
        result["integrity"] = {"checked_reads": o.checked_reads, "lost_writes": o.lost_writes,
                               "first": o.reports}
    if machine.checker is not None:
        result["check"] = {"step_checks": machine.checker.local_checks,
                           "full_checks": machine.checker.full_checks, "violations": 0}
    if machine.kernel is not None and machine.hw is not None:
        result["gup"] = gup_section(machine)
        result["thpmaps"] = thpmaps_section(machine)
    if machine.collapse_log is not None:
        result["khugepaged"] = machine.collapse_log.section(machine.khugepaged)
        # Whether the thread ran (--khugepaged); MADV_COLLAPSE works either way.
        result["khugepaged"]["thread"] = bool(machine.options.khugepaged)
        if machine.options.khugepaged:
            result["khugepaged"]["idle_reason"] = machine.khugepaged.why_idle(machine.now_ns)
        result["khugepaged"]["guest_stalls"] = {
            "count": machine.collapse_stalls, "total_ns": int(machine.collapse_stall_ns),
            "faults": sum(t.collapse_faults for t in machine.all_threads),
            "tlb_hits_in_cleared_ranges": sum(t.collapse_tlb_hits
                                              for t in machine.all_threads)}
        result["khugepaged"]["strategy"] = machine.khugepaged.cc.strategy
    return result


def gup_section(machine: Any) -> dict[str, Any]:
    """GUP-fast: what the lockless walker did (syscalls and the synthetic user)."""
    out: dict[str, Any] = machine.kernel.gup.stats.as_dict()
    out["gup_slow_wait_ns"] = int(out["gup_slow_wait_ns"])
    agent = machine.gup_agent
    out["agent"] = None if agent is None else {
        "rate_per_s": machine.options.gup_fast_rate, "pages": agent.pages,
        "hold_ns": agent.hold_ns, "skipped": agent.skipped}
    return out


def qemu_placement(vmas: list[dict[str, Any]]) -> dict[str, Any]:
    """What QEMU's own mmap placement cost in PMD-mappable ranges, from the final layout.

    QEMU user-mode picks mmap addresses itself, page-aligned; Linux (6.8+, and
    since 6.13 for lengths that are a multiple of the PMD size) aligns such
    anonymous mappings to the PMD size, so each of them holds one more whole
    aligned PMD range natively than under QEMU (docs/status.md).
    """
    hit = [v for v in vmas if v["kind"] == "anon" and v["start"] is not None
           and (v["end"] - v["start"]) % PMD_SIZE == 0 and v["start"] % PMD_SIZE]
    return {"unaligned_pmd_multiple_mappings": len(hit),
            "pmd_ranges_lost": len(hit),
            "pmd_ranges_present": sum((v["end"] & -PMD_SIZE) - ((v["start"] + PMD_SIZE - 1)
                                                               & -PMD_SIZE) for v in hit)
            // PMD_SIZE}


def _process_ns(threads: list[Any], ns: float) -> int:
    """A process's simulated span: its threads run at once, each on its own vCPU."""
    if not threads:
        return 0
    return int(max(t.last_icount * ns + t.stall_ns for t in threads)
               - min(t.first_icount for t in threads) * ns)

# An address-space picture needs no more ranges than this per process.
MAX_RUNS = 4096


def _thpmaps_kb(snap: dict[str, Any], page_kb: int, at: Any) -> dict[str, Any]:
    """One mm_thpmaps snapshot in kB, the unit thpmaps prints."""
    def kb(c: dict[str, int]) -> dict[str, int]:
        return {k: n * page_kb for k, n in c.items()}

    out: dict[str, Any] = {
        "pid": snap["pid"], "at": at,
        "rss_kB": snap["rss_pages"] * page_kb,
        "rollup": kb(snap["rollup"]),
        "vmas": [{**{k: v for k, v in vma.items() if k != "counters"},
                  "counters": kb(vma["counters"])} for vma in snap["vmas"]],
    }
    runs = snap.get("runs")
    if runs is not None:
        out["runs"] = [list(r) for r in runs[:MAX_RUNS]]
        out["runs_truncated"] = len(runs) > MAX_RUNS
    return out


def thpmaps_section(machine: Any) -> list[dict[str, Any]]:
    """thpmaps per process at exit and at each --inspect-at marker (docs/usage.md)."""
    page_kb = machine.kernel.page_size >> 10
    out = [_thpmaps_kb(s, page_kb, {"mark": s["mark"], "instructions": s["instructions"]})
           for s in machine.inspections]
    for proc in sorted(machine.processes.values(), key=lambda p: p.pid):
        if proc.thpmaps is not None:
            out.append(_thpmaps_kb(proc.thpmaps, page_kb, "exit"))
    return out


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
