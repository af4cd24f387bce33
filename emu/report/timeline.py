"""A Perfetto / chrome://tracing timeline of one run (`--timeline FILE`).

Built from the kernel's event bus while the run goes, not from lists kept
afterwards: faults, stalls and flushes on each guest vCPU's track;
khugepaged's scans and collapse attempts (each attempt a slice with its steps
as child slices) on a track of its own; MADV_COLLAPSE's collapses on the
calling vCPU; markers as global instants.  Trace-event JSON ("traceEvents",
times in microseconds of simulated time), which ui.perfetto.dev opens.

Times are the model's simulated clock: a thread's instructions times
--ns-per-insn plus its stalls.  Faults carry the time of the batch of events
they were found in (the plugin sends accesses in batches), so they are exact
in order, approximate in time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KERNEL_PID = 0          # the model's kernel threads, shown as one process
KHUGEPAGED_TID = 1
FLUSH_TID = 2           # flushes with no calling vCPU (khugepaged's, exit's)
GUP_TID = 3             # GUP-fast walks that fell back to the slow path


def _us(t_ns: float) -> float:
    return round(t_ns / 1000.0, 3)


class Timeline:
    """Subscribes to a machine's kernel bus and collects trace events."""

    def __init__(self, machine: Any, max_events: int = 1_000_000) -> None:
        self.machine = machine
        self.max_events = max_events
        self.events: list[dict[str, Any]] = []
        self.dropped = 0
        self.tracks: set[tuple[int, int]] = set()
        # khugepaged-clock events not placed yet: (attempt or None, mm, t_ns, event)
        self._pending: list[tuple[Any, Any, float, dict[str, Any]]] = []
        self._madvise_items: tuple[float, list[Any]] | None = None
        self._done = False
        bus = machine.kernel.bus
        for name, fn in (("emu_page_fault", self._on_fault), ("emu_guest_stall", self._stall),
                         ("tlb_flush", self._flush),
                         ("mm_khugepaged_scan_pmd", self._scan),
                         ("mm_collapse_huge_page", self._collapse),
                         ("emu_madvise_collapse", self._madvise),
                         ("pr_warn_once", self._warn),
                         ("emu_gup_fast_fallback", self._gup_fallback)):
            bus.subscribe(name, fn)

    # -- collecting -------------------------------------------------------------------

    def _add(self, ev: dict[str, Any]) -> None:
        if len(self.events) >= self.max_events:
            self.dropped += 1
            return
        self.tracks.add((ev["pid"], ev["tid"]))
        self.events.append(ev)

    def _on_fault(self, e: Any) -> None:
        a = e.args
        self._add({"name": f"fault {a['kind']}", "cat": "fault", "ph": "i", "s": "t",
                   "ts": _us(e.t_ns), "pid": a["pid"], "tid": a["vcpu"],
                   "args": {"va": hex(a["va"]), "reason": a["reason"]}})

    def _stall(self, e: Any) -> None:
        a = e.args
        self._add({"name": f"stall ({a['cause']})", "cat": "stall", "ph": "X",
                   "ts": _us(e.t_ns), "dur": _us(a["dur_ns"]), "pid": a["pid"],
                   "tid": a["vcpu"], "args": {"ns": int(a["dur_ns"])}})
        if a["cause"] == "madvise" and self._madvise_items is not None:
            t0, items = self._madvise_items
            for item in items:
                self._place(item, e.t_ns - t0)
            self._madvise_items = None

    def _flush(self, e: Any) -> None:
        a = e.args
        cpu = a.get("cpu")
        # The kernel's flush carries no time: it happens now, at the machine's clock.
        t = e.t_ns or self.machine.now_ns
        pid, tid = (a["pid"], cpu) if cpu is not None else (KERNEL_PID, FLUSH_TID)
        end = a.get("end")
        what = "mm" if end is None else f"{a['start']:#x}-{end:#x}"
        self._add({"name": "tlb flush", "cat": "flush", "ph": "i", "s": "t", "ts": _us(t),
                   "pid": pid, "tid": tid,
                   "args": {"pid": a["pid"], "range": what, "last_level": a["last_level"]}})

    def _gup_fallback(self, e: Any) -> None:
        a = e.args
        why = "collapse" if a["collapse"] else "not pinnable"
        self._add({"name": f"gup-fast fallback ({why})", "cat": "gup", "ph": "i", "s": "t",
                   "ts": _us(e.t_ns), "pid": KERNEL_PID, "tid": GUP_TID,
                   "args": {"pid": a["pid"], "address": hex(a["address"])}})

    def _scan(self, e: Any) -> None:
        a = e.args
        ev = {"name": f"scan {a['status']}", "cat": "khugepaged", "ph": "i", "s": "t",
              "ts": _us(e.t_ns), "pid": KERNEL_PID, "tid": KHUGEPAGED_TID,
              "args": {"pid": a["mm"].pid, "address": hex(a["address"]),
                       "referenced": a["referenced"], "none_or_zero": a["none_or_zero"],
                       "unmapped": a["unmapped"]}}
        self._pending.append((None, a["mm"], e.t_ns, ev))

    def _collapse(self, e: Any) -> None:
        att = e.args.get("attempt")
        if att is None:
            return
        kb = 4 << att.order
        ev = {"name": f"collapse {kb}kB: {e.args['status']}", "cat": "collapse", "ph": "X",
              "ts": _us(att.t_start_ns), "dur": _us(att.t_end_ns - att.t_start_ns),
              "pid": KERNEL_PID, "tid": KHUGEPAGED_TID,
              "args": {"pid": att.mm.pid, "address": hex(att.address), "order": att.order,
                       "status": e.args["status"], "flush_ns": att.flush_ns,
                       "steps": {name: ns for name, ns in att.steps}}}
        self._pending.append((att, att.mm, att.t_start_ns, ev))

    def _madvise(self, e: Any) -> None:
        """Scans and collapses made inside this MADV_COLLAPSE go on the caller's track.

        They ran on khugepaged's clock; the caller's stall, published next, says
        where on the caller's clock the call began, and they are moved there.
        """
        rec = e.args["record"]
        vcpu = self.machine.kernel.current_cpu or 0
        keep, mine = [], []
        for item in self._pending:
            att, mm, t, ev = item
            if mm is rec.mm and rec.t_start_ns <= t <= rec.t_end_ns:
                ev["pid"], ev["tid"] = rec.mm.pid, vcpu
                ev["name"] = "MADV_COLLAPSE " + ev["name"]
                mine.append(item)
            else:
                keep.append(item)
        self._pending = keep
        self._madvise_items = (rec.t_start_ns, mine)

    def _place(self, item: tuple[Any, Any, float, dict[str, Any]], shift: float) -> None:
        att, _, t, ev = item
        ev["ts"] = _us(t + shift)
        self._add(ev)
        if att is not None:
            self._steps(ev, att, shift)

    def _warn(self, e: Any) -> None:
        self._add({"name": "pr_warn_once", "cat": "warning", "ph": "i", "s": "g",
                   "ts": _us(e.t_ns), "pid": KERNEL_PID, "tid": KHUGEPAGED_TID,
                   "args": {"msg": e.args["msg"]}})

    # -- writing ------------------------------------------------------------------------

    def _steps(self, ev: dict[str, Any], att: Any, shift: float = 0.0) -> None:
        """Each step of a collapse as a child slice, laid end to end from its start."""
        t = att.t_start_ns + shift
        for name, ns in att.steps:
            self._add({"name": name, "cat": "collapse_step", "ph": "X", "ts": _us(t),
                       "dur": _us(ns), "pid": ev["pid"], "tid": ev["tid"]})
            t += ns

    def trace(self) -> dict[str, Any]:
        """The whole trace-event document (call once the run has ended)."""
        if not self._done:
            self._close()
        return self._document()

    def _close(self) -> None:
        self._done = True
        for item in self._pending:
            self._place(item, 0.0)
        self._pending = []
        ns = self.machine.options.ns_per_insn
        for m in self.machine.markers:
            self._add({"name": f"emu_mark({m['id']})", "cat": "marker", "ph": "i", "s": "g",
                       "ts": _us(m["instructions"] * ns), "pid": m["pid"], "tid": m["vcpu"]})

    def _document(self) -> dict[str, Any]:
        ns = self.machine.options.ns_per_insn
        meta: list[dict[str, Any]] = []
        for pid in sorted({p for p, _ in self.tracks}):
            name = "kernel (emu model)" if pid == KERNEL_PID else f"pid {pid}"
            meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                         "args": {"name": name}})
        for pid, tid in sorted(self.tracks):
            if pid == KERNEL_PID:
                name = {KHUGEPAGED_TID: "khugepaged", FLUSH_TID: "flushes",
                        GUP_TID: "GUP-fast"}.get(tid, str(tid))
            else:
                name = f"vCPU {tid}"
            meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                         "args": {"name": name}})
        events = sorted(self.events, key=lambda e: e["ts"])
        return {"traceEvents": meta + events, "displayTimeUnit": "ns",
                "otherData": {"clock": f"simulated (ns_per_insn {ns:g})",
                              "dropped_events": self.dropped}}

    def write(self, path: str) -> None:
        Path(path).write_text(json.dumps(self.trace()) + "\n")
