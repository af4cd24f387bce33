"""perf-stat-like text summary of a result dict (emu.report.result)."""

from __future__ import annotations

from typing import Any

_SHOW_SYSCALLS = ("mmap", "munmap", "mremap", "mprotect", "brk", "madvise", "clone",
                  "clone3", "fork", "vfork", "exit", "exit_group", "prctl")


# Counters shown per CPU when a run has several: misses of each kind and walks.
_PER_CPU = ("dTLB-loads", "dTLB-load-misses", "dTLB-store-misses", "iTLB-load-misses",
            "L2D_TLB_REFILL", "DTLB_WALK", "ITLB_WALK")


def _n(x: int) -> str:
    return f"{x:>16,}"


def _hex(x: int | None) -> str:
    return "-" if x is None else f"{x:#014x}"


def render(result: dict[str, Any], verbose: bool = False) -> str:
    lines: list[str] = []
    add = lines.append
    argv = " ".join(result["argv"])
    add(f" Performance counter stats for '{argv}' ({result['arch']}, emu):")
    if result.get("partial"):
        why = {"interrupted": "interrupted (Ctrl-C)",
               "truncated recording": "the recording was cut short"}.get(
                   result.get("partial_reason", ""), "incomplete")
        add(f" PARTIAL: {why}; what was modelled up to then")
    add("")
    add(f"{_n(result['instructions'])}      instructions")
    add(f"{_n(result['accesses']['read'])}      data reads")
    add(f"{_n(result['accesses']['write'])}      data writes")
    add(f"{_n(result['fetch_page_changes'])}      instruction-fetch page changes")
    add(f"{_n(result['pages_touched'])}      pages touched (4 KiB)")
    add(f"{_n(len(result['vcpus']))}      vCPUs (guest threads)")
    add(f"{_n(len(result['processes']))}      processes")
    tlb = result.get("tlb")
    if tlb:
        add("")
        add(f" TLB model, profile {tlb['profile']} (all CPUs):")
        for name, value in tlb["total"].items():
            add(f"{_n(value)}      {name}")
        if len(tlb["per_cpu"]) > 1:
            keys = [k for k in _PER_CPU if k in tlb["total"]]
            add("   per CPU: " + ", ".join(keys))
            for cpu, c in tlb["per_cpu"].items():
                add(f"   cpu {cpu:>3}: " + "  ".join(f"{c.get(k, 0):>12,}" for k in keys))
        utlb = tlb.get("utlb") or {}
        if utlb.get("entries"):
            add(f"{_n(utlb['hits'])}      micro-TLB hits (--utlb {utlb['entries']}: counted as"
                " TLB accesses without a lookup)")
        if tlb.get("no_vcpu"):
            add("   issued by khugepaged's CPU (no vCPU): " + ", ".join(
                f"{k.removeprefix('flush.').removesuffix('.issued')} {v:,}"
                for k, v in tlb["no_vcpu"].items()))
        if tlb["unresolved_faults"]:
            add(f"{_n(tlb['unresolved_faults'])}      accesses the model could not map")
    kern = result.get("kernel")
    if kern:
        add("")
        add(" Kernel model:")
        for name, value in kern.get("vmstat", {}).items():
            if value:
                add(f"{_n(value)}      {name}")
        for size, stats in kern.get("mthp_stats", {}).items():
            nz = {k: v for k, v in stats.items() if v}
            if nz:
                add(f"   hugepages-{size}kB: " + ", ".join(f"{k}={v}" for k, v in nz.items()))
        causes = kern.get("flushes_by_cause", {})
        if causes:
            add("   TLB flushes by cause (calls; operations issued):")
            for cause, tally in causes.items():
                parts = ", ".join(f"{k} {v:,}" for k, v in tally.items() if k != "flushes" and v)
                add(f"   {cause:>17}: {tally.get('flushes', 0):>9,}   {parts}")
    kh = result.get("khugepaged")
    if kh and kh.get("thread", True):
        from emu.report.khugepaged import render as render_report
        add("")
        add(render_report(kh))
        stalls = result["khugepaged"].get("guest_stalls", {})
        if stalls.get("count"):
            add(f"   guest threads stalled on a PMD being collapsed: {stalls['count']:,} times,"
                f" {stalls['total_ns'] / 1e3:,.1f} us in all (estimated)")
    elif kh and kh.get("madvise_collapse"):
        add("")
        add(" MADV_COLLAPSE (the khugepaged thread is off; --khugepaged runs it):")
        add(_madvise_collapse_lines(kh))
    add("")
    add(" VMAs (final layout per process; pages touched, reads, writes):")
    hidden = 0
    for v in result["vmas"]:
        if not v["pages_touched"] and not verbose:
            hidden += 1
            continue
        add(f"   pid {v['pid']:<7} {_hex(v['start'])}-{_hex(v['end'])} {v['kind']:<9}"
            f" {v['pages_touched']:>9,} pages {v['accesses']['read']:>14,} R"
            f" {v['accesses']['write']:>14,} W  {v['name']}")
        if v.get("mapped"):
            add("        mapped at exit (pages): "
                + ", ".join(f"{k} {n:,}" for k, n in v["mapped"].items()))
    if hidden:
        add(f"   {hidden} VMA{'s' if hidden > 1 else ''} without data accesses not shown;"
            " -v lists them")
    counts = result["syscall_counts"]
    if counts:
        add("")
        add(" Syscalls: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for s in result["syscalls"]:
            if verbose or s["name"] in _SHOW_SYSCALLS:
                add(f"   [{s['pid']}:{s['vcpu']}] {s['text']}")
    if result["markers"]:
        add("")
        add(" Markers:")
        for m in result["markers"]:
            add(f"   [{m['pid']}:{m['vcpu']}] emu_mark({m['id']}) at {m['instructions']:,}"
                " instructions")
    at_mark = result.get("at_mark", [])
    if at_mark:
        add("")
        add(" Settings applied at markers (--at-mark):")
        for a in at_mark:
            if a["applied"]:
                f = a["first"]
                times = f", {a['applied']} times" if a["applied"] > 1 else ""
                add(f"   emu_mark({a['id']}): {a['setting']} (first [{f['pid']}:{f['vcpu']}] at"
                    f" {f['instructions']:,} instructions{times})")
        for a in at_mark:
            if not a["applied"]:
                add(f" warning: --at-mark {a['id']}:{a['setting']} was not applied: the guest"
                    f" never called emu_mark({a['id']})")
    for p in result["processes"]:
        if p["exit_status"] is not None and len(result["processes"]) > 1:
            add(f" pid {p['pid']} (parent {p['parent']}) exited {p['exit_status']},"
                f" {p['instructions']:,} instructions")
    return "\n".join(lines)


def _madvise_collapse_lines(kh: dict[str, Any]) -> str:
    """MADV_COLLAPSE calls and their per-PMD results, without the thread's knobs."""
    lines = []
    if kh.get("collapses_by_size_kb"):
        lines.append("   collapses by size: " + ", ".join(
            f"{kb}kB x{n}" for kb, n in kh["collapses_by_size_kb"].items()))
    for m in kh["madvise_collapse"]:
        res = ", ".join(p["result"] for p in m["pmds"]) or "no whole PMD"
        lines.append(f"   MADV_COLLAPSE {m['start']:#x}+{m['length']:#x} = {m['ret']}"
                     f"{' ' + m['errno'] if m['errno'] else ''} [{res}]")
    return "\n".join(lines)
