"""Text of the result's "tlb_contents" section: what each vCPU's TLBs held.

One line per TLB array with its reach (bytes mapped) by page size, as a
reader compares it with the working set; with -v the entries too, merged
into VA ranges (emu.hw.inspect.ranges).  The HTML report uses the same rows.
"""

from __future__ import annotations

from typing import Any

_BYTES = {"4k": 1 << 12, "16k": 1 << 14, "64k": 1 << 16, "2m": 1 << 21, "32m": 1 << 25,
          "1g": 1 << 30}


def when(snap: dict[str, Any]) -> str:
    at = snap["at"]
    if at == "exit":
        return "when the last process exited"
    return (f"at emu_mark({at['mark']}) [{at['pid']}:{at['vcpu']}],"
            f" {at['instructions']:,} instructions")


def kib(n: int) -> str:
    return f"{n >> 10:,} kB"


def reach_text(tlb: dict[str, Any]) -> str:
    """'4k 30 (120 kB), 64k 4 c4 (256 kB)': per size, entries, coalesced ones, bytes."""
    return ", ".join(f"{size} {r['entries']}" + (f" c{r['coalesced']}" if r["coalesced"] else "")
                     + f" ({kib(r['bytes'])})" for size, r in tlb["reach"].items()) or "empty"


def summary_rows(snap: dict[str, Any]) -> list[tuple[int, str, int, int, int, str]]:
    """(cpu, array, valid, capacity, reach bytes, reach text) per CPU and TLB array."""
    return [(c["cpu"], t["name"], t["valid"], t["capacity"], t["reach_bytes"], reach_text(t))
            for c in snap["cpus"] for t in c["tlbs"]]


def render(snaps: list[dict[str, Any]], verbose: bool = False) -> str:
    lines: list[str] = []
    for snap in snaps:
        lines.append(f" TLB contents {when(snap)} (valid/entries, reach; c: coalesced or"
                     " contiguous entries):")
        for cpu, name, valid, cap, nbytes, text in summary_rows(snap):
            lines.append(f"   cpu {cpu:>3} {name:<12} {valid:>5}/{cap:<5} reach"
                         f" {kib(nbytes):>12}: {text}")
        if verbose:
            for c in snap["cpus"]:
                for t in c["tlbs"]:
                    if not t["entries"]:
                        continue
                    lines.append(f"   cpu {c['cpu']} {t['name']} entries (VA range, size x n,"
                                 " ASID, flags wxdc):")
                    for start, end, size, asid, flags, n in ranges(t["entries"]):
                        lines.append(f"     {start:016x}-{end:016x} {size:>4} x{n:<4}"
                                     f" asid {asid:<4} {flags}")
    return "\n".join(lines)


def ranges(entries: list[list[Any]]) -> list[tuple[int, int, str, int, str, int]]:
    """Entries merged where they map adjacent VAs with one size, ASID and flags:
    (start, end, size, asid, flags, entries) — what a reader scans for."""
    out: list[list[Any]] = []
    for va, size, asid, _, flags in sorted(entries, key=lambda e: (e[2], e[0])):
        end = va + _BYTES[size]
        last = out[-1] if out else None
        if last and last[1] == va and last[2] == size and last[3] == asid and last[4] == flags:
            last[1] = end
            last[5] += 1
        else:
            out.append([va, end, size, asid, flags, 1])
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in out]
