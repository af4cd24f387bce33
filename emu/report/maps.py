"""thpmaps-style text of the result's "thpmaps" section (emu.report.result).

The lines read like tools/mm/thpmaps's: a VMA header (PID START END PROT
OBJECT), then one `counter: N kB (P%)` line per non-zero counter, the percent
of the VMA's anonymous or file memory as thpmaps prints it.  emu's own keys
(anon-small, file-small: pages outside large folios; zero; cont-bit) follow
so that every line of a side adds up to its total.
"""

from __future__ import annotations

import re
from typing import Any

_SIZE = re.compile(r"-(\d+)kB$")


def order(key: str) -> tuple[int, int, int, str]:
    """thpmaps's order: anon then file; pmd, pte aligned, unaligned, partial, cont."""
    side = 0 if key.startswith("anon-") else 1 if key.startswith("file-") else 2
    kind = next((i for i, k in enumerate(("-thp-pmd-", "-thp-pte-aligned-",
                                          "-thp-pte-unaligned-", "-thp-pte-partial",
                                          "-small", "-cont-")) if k in key), 6)
    m = _SIZE.search(key)
    return side, kind, -int(m.group(1)) if m else 0, key


def totals(counters: dict[str, int]) -> tuple[int, int]:
    """(anon kB, file kB): the denominators, the cont lines not counted twice."""
    anon = sum(v for k, v in counters.items() if k.startswith("anon-") and "-cont-" not in k)
    file = sum(v for k, v in counters.items() if k.startswith("file-") and "-cont-" not in k)
    return anon, file


def rows(counters: dict[str, int]) -> list[tuple[str, int, float | None]]:
    """(counter, kB, percent of the anon or file total, or None) in thpmaps's order,
    zero counters left out: what the text and HTML tables both show."""
    anon, file = totals(counters)
    out = []
    for key in sorted(counters, key=order):
        kb = counters[key]
        if not kb:
            continue
        base = anon if key.startswith("anon-") or key == "cont-bit" else \
            file if key.startswith("file-") else 0
        out.append((key, kb, 100 * kb / base if base else None))
    return out


def counter_lines(counters: dict[str, int], indent: str = "   ") -> list[str]:
    width = max((len(k) for k in counters), default=0) + 1
    return [f"{indent}{key + ':':<{width}} {kb:>10} kB"
            + (f" ({pct:3.0f}%)" if pct is not None else "")
            for key, kb, pct in rows(counters)]


def when(snap: dict[str, Any]) -> str:
    at = snap["at"]
    if at == "exit":
        return "at exit"
    return f"at emu_mark({at['mark']}), {at['instructions']:,} instructions"


def render(snaps: list[dict[str, Any]], verbose: bool = False) -> str:
    """Per process (and per VMA with verbose) at exit and at each inspected marker."""
    lines: list[str] = []
    for snap in snaps:
        anon, file = totals(snap["rollup"])
        lines.append(f" Mappings of pid {snap['pid']} {when(snap)} (thpmaps; kB, % of anon"
                     " or file):")
        if verbose:
            lines.append(f"   {'PID':>8} {'START':>16} {'END':>16} PROT OBJECT")
            for v in snap["vmas"]:
                if not any(v["counters"].values()):
                    continue
                name = v["name"] or f"[{v['kind']}]"
                lines.append(f"   {snap['pid']:>8} {v['start']:016x} {v['end']:016x}"
                             f" {v['prot']} {name}")
                lines += counter_lines(v["counters"], "     ")
            lines.append("   rollup:")
        lines += counter_lines(snap["rollup"], "     " if verbose else "   ")
        same = "=" if anon + file == snap["rss_kB"] else "!="
        lines.append(f"   Rss {anon + file:,} kB (anon {anon:,} + file {file:,}) {same} the"
                     f" model's RSS counter {snap['rss_kB']:,} kB")
    return "\n".join(lines)
