"""Text and HTML of the result's "annotate" section (`run --annotate`), as perf annotate
reads: per kind of event, the instructions behind it with their share, symbol and
disassembly; the text shows the top few, the HTML report every one."""

from __future__ import annotations

import html
import os
from typing import Any

TOP = 5


def where(row: dict[str, Any]) -> str:
    """object:symbol+0xoff, or what is known of it."""
    obj = os.path.basename(row["object"]) if row["object"] else "?"
    if row["symbol"]:
        return f"{obj}:{row['symbol']}+{row['offset']:#x}"
    return obj


def _pct(n: int, total: int) -> float:
    return 100.0 * n / total if total else 0.0


def render(section: dict[str, Any], top: int = TOP) -> str:
    lines = []
    for kind, title in section["kinds"].items():
        rows = section["events"].get(kind) or []
        if not rows:
            continue
        total = sum(r["count"] for r in rows)
        lines.append(f" {title[0].upper() + title[1:]} by instruction ({total:,}; top"
                     f" {min(top, len(rows))} of {len(rows)}; --report lists all):")
        for r in rows[:top]:
            lines.append(f"   {r['count']:>10,} {_pct(r['count'], total):5.1f}%  {r['pc']:#014x}"
                         f"  {where(r):<40} {r['insn'] or ''}")
        fns = section["functions"].get(kind) or []
        if fns:
            lines.append("   functions: " + ", ".join(
                f"{where({**f, 'offset': 0}).removesuffix('+0x0')} {_pct(f['count'], total):.0f}%"
                for f in fns[:3]))
    return "\n".join(lines)


def html_section(section: dict[str, Any]) -> str:
    out = ["<h2>Attribution (--annotate)</h2>",
           f"<p>Granularity: {html.escape(section['granularity'])}. Instruction fetches"
           " are not attributed.</p>"]
    for kind, title in section["kinds"].items():
        rows = section["events"].get(kind) or []
        if not rows:
            continue
        total = sum(r["count"] for r in rows)
        out.append(f"<h3>{html.escape(title)}: {total:,}</h3>")
        out.append("<table><tr><th>count</th><th>%</th><th>pid</th><th>address</th>"
                   "<th>object:symbol+offset</th><th>instruction</th></tr>")
        for r in rows:
            out.append(f"<tr><td>{r['count']:,}</td><td>{_pct(r['count'], total):.1f}</td>"
                       f"<td>{r['pid']}</td><td class=\"k\">{r['pc']:#x}</td>"
                       f"<td class=\"k\">{html.escape(where(r))}</td>"
                       f"<td class=\"k\">{html.escape(r['insn'] or '')}</td></tr>")
        out.append("</table>")
        fns = section["functions"].get(kind) or []
        out.append("<details><summary>by function</summary><table><tr><th>count</th>"
                   "<th>%</th><th>object</th><th>symbol</th></tr>" + "".join(
                       f"<tr><td>{f['count']:,}</td><td>{_pct(f['count'], total):.1f}</td>"
                       f"<td class=\"k\">{html.escape(f['object'] or '?')}</td>"
                       f"<td class=\"k\">{html.escape(f['symbol'] or '')}</td></tr>"
                       for f in fns) + "</table></details>")
    return "\n".join(out)
