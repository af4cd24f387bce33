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


def _time(ns: float) -> str:
    """A simulated duration in the unit that reads best."""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:,.3f} {unit}"
    return f"{ns:,.0f} ns"


def _time_lines(result: dict[str, Any]) -> list[str]:
    """Simulated time: the clock, then per process and vCPU when there are several."""
    t = result.get("time")
    if not t:
        return []
    stalls = sum(v["stall_ns"] for v in result["vcpus"])
    lines = [f"{_time(t['elapsed_ns']):>16}      simulated time ({t['ns_per_insn']:g} ns per"
             f" instruction{f', {_time(stalls)} stalled' if stalls else ''})"]
    if len(result["vcpus"]) > 1:
        lines.append("   per process: " + ", ".join(
            f"pid {p['pid']} {_time(p['sim_ns'])}" for p in result["processes"]))
        lines.append("   per vCPU [pid:vcpu]: " + ", ".join(
            f"[{v['pid']}:{v['vcpu']}] {_time(v['sim_ns'])}"
            + (f" (stalled {_time(v['stall_ns'])})" if v["stall_ns"] else "")
            for v in result["vcpus"]))
    return lines


def _tlb_counter_lines(total: dict[str, int], verbose: bool) -> list[str]:
    """The vendor's perf events; emu's own and the flush tallies only with -v.

    Without -v a breakdown that is zero (walk_completed_1g, stlb_hit, ...) is
    left out and the flush operations go on one line: perf stat's events, as
    short as they can be while the neutral block below says the rest.
    """
    if verbose:
        return [f"{_n(v)}      {k}" for k, v in total.items()]
    out = []
    hidden = 0
    for k, v in total.items():
        if k.startswith(("emu.", "flush.")) or (not v and "." in k):
            hidden += 1
            continue
        out.append(f"{_n(v)}      {k}")
    issued = [f"{k.removeprefix('flush.').removesuffix('.issued')} {v:,}"
              for k, v in total.items() if k.startswith("flush.") and k.endswith(".issued") and v]
    if issued:
        out.append("   flush operations issued: " + ", ".join(issued))
    if hidden:
        out.append(f"   ({hidden} more counters, emu's own and zero breakdowns: -v or the JSON)")
    return out


def _neutral_lines(nt: dict[str, Any] | None) -> list[str]:
    """emu's own counts that mean the same on x86-64 and arm64, for side-by-side reading."""
    if not nt:
        return []
    sizes = ", ".join(f"{k} {v:,}" for k, v in nt["walks_by_size"].items())
    return ["", " TLB, architecture-neutral (same definitions on x86-64 and arm64; the vendor"
            " events above differ):",
            f"{nt['l1_dtlb_misses_per_1k']:>16,.3f}      L1 dTLB misses per 1k data accesses"
            f" ({nt['l1_dtlb_misses']:,} of {nt['data_accesses']:,})",
            f"{nt['data_walks_per_1k']:>16,.3f}      data page walks per 1k data accesses"
            f" ({nt['data_walks']:,}; instruction walks {nt['instr_walks']:,})",
            f"   walks by page size: {sizes} (faulted: ended in a page fault, then walked again)",
            f"{nt['walk_refs']:>16,}      walk memory references"
            f" ({nt['walk_refs_per_walk']:.2f} per walk)"]


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
    lines += _time_lines(result)
    tlb = result.get("tlb")
    if tlb:
        add("")
        add(f" TLB model, profile {tlb['profile']} (all CPUs):")
        lines += _tlb_counter_lines(tlb["total"], verbose)
        if len(tlb["per_cpu"]) > 1:
            keys = [k for k in _PER_CPU if k in tlb["total"]]
            add("   per CPU: " + ", ".join(keys))
            for cpu, c in tlb["per_cpu"].items():
                add(f"   cpu {cpu:>3}: " + "  ".join(f"{c.get(k, 0):>12,}" for k in keys))
        lines += _neutral_lines(tlb.get("neutral"))
        utlb = tlb.get("utlb") or {}
        if utlb.get("entries"):
            add(f"{_n(utlb['hits'])}      L0 micro-TLB hits ({utlb['entries']} entries: in"
                " the loads and stores, no L1 lookup)")
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
        if kh.get("idle_reason"):
            add(f"   khugepaged never ran: {kh['idle_reason']}")
        utlb = (result.get("tlb") or {}).get("utlb") or {}
        if utlb.get("entries"):
            add(f"   note: the recording's {utlb['entries']}-entry micro-TLB (L0) is not reached"
                " by the collapses' flushes; up to that many pages per vCPU kept hitting"
                " after one (record with --utlb 0 to study collapses)")
        stalls = result["khugepaged"].get("guest_stalls", {})
        if stalls.get("count"):
            add(f"   guest threads waited for a collapse's lock: {stalls['count']:,} times,"
                f" {stalls['total_ns'] / 1e3:,.1f} us in all (estimated)")
        if stalls.get("tlb_hits_in_cleared_ranges"):
            add(f"   accesses that went on through TLB entries into cleared ranges:"
                f" {stalls['tlb_hits_in_cleared_ranges']:,}")
        integrity = result.get("integrity")
        if integrity is not None:
            add(f"   integrity oracle: {integrity['checked_reads']:,} reads checked,"
                f" {integrity['lost_writes']:,} saw a lost write or stale data")
        check = result.get("check")
        if check is not None:
            add(f"   invariant checker: {check['step_checks']:,} step checks,"
                f" {check['full_checks']:,} full checks, no violation")
        gup = result.get("gup")
        if gup and gup.get("gup_fast_attempts"):
            add(f"   GUP-fast: {gup['gup_fast_attempts']:,} calls pinned"
                f" {gup['gup_fast_pages']:,} pages locklessly; {gup['gup_fast_fallbacks']:,}"
                f" fell back ({gup['gup_fast_fallbacks_collapse']:,} on a collapse's cleared"
                f" entry), waiting {gup['gup_slow_wait_ns'] / 1e3:,.1f} us")
    elif kh and kh.get("madvise_collapse"):
        add("")
        add(" MADV_COLLAPSE (the khugepaged thread is off; --khugepaged runs it):")
        add(_madvise_collapse_lines(kh))
    if result.get("thpmaps"):
        from emu.report.maps import render as render_maps
        add("")
        add(render_maps(result["thpmaps"], verbose))
    if result.get("annotate"):
        from emu.report.annotate import render as render_annotate
        add("")
        add(render_annotate(result["annotate"]))
    snaps = [t for t in result.get("tlb_contents") or () if verbose or t["at"] != "exit"]
    if snaps:
        from emu.report.tlbs import render as render_tlbs
        add("")
        add(render_tlbs(snaps, verbose))
    if not verbose:
        _short_tail(result, add)
    else:
        _vmas_and_syscalls(result, add, verbose)
    _markers_and_settings(result, add)
    return "\n".join(lines)


def _short_tail(result: dict[str, Any], add: Any) -> None:
    """Without -v: how many VMAs and syscalls there were, in two lines."""
    add("")
    touched = sum(1 for v in result["vmas"] if v["pages_touched"] and v["start"] is not None)
    add(f" VMAs: {len(result['vmas'])} at exit, {touched} with data accesses; -v lists them")
    _placement_note(result, add)
    counts = result["syscall_counts"]
    if counts:
        add(f" Syscalls: {sum(counts.values())} calls; -v lists them")


def _placement_note(result: dict[str, Any], add: Any) -> None:
    """What QEMU's own mmap placement cost in whole PMD ranges (docs/status.md)."""
    place = result.get("placement") or {}
    if place.get("pmd_ranges_lost"):
        n = place["unaligned_pmd_multiple_mappings"]
        add(f"   note: QEMU places mmap itself, page-aligned: {n} anonymous mapping"
            f"{'s' if n > 1 else ''} of a 2 MiB-multiple length start off a 2 MiB boundary,"
            f" so {place['pmd_ranges_present']} whole PMD ranges instead of"
            f" {place['pmd_ranges_present'] + place['pmd_ranges_lost']} as Linux 6.8+ would"
            " align them (docs/status.md)")


def _vmas_and_syscalls(result: dict[str, Any], add: Any, verbose: bool) -> None:
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
    _placement_note(result, add)
    counts = result["syscall_counts"]
    if counts:
        add("")
        add(" Syscalls: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for s in result["syscalls"]:
            if verbose or s["name"] in _SHOW_SYSCALLS:
                add(f"   [{s['pid']}:{s['vcpu']}] {s['text']}")


def _markers_and_settings(result: dict[str, Any], add: Any) -> None:
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
