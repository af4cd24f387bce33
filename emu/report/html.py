"""`--report DIR`: one self-contained HTML file (images inlined) and its PNGs.

The page holds what the text summary says, the thpmaps tables, the TLB contents,
the attribution (with --annotate), the plots and,
from `emu compare`, the comparison; every number is taken from the same
result dict the JSON is, so the two agree.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from emu.report import maps, tlbs

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: right; }
th { background: #eee; } td.k { text-align: left; font-family: monospace; }
img { max-width: 100%; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>'


def _counters_table(counters: dict[str, int]) -> str:
    rows = [f'<tr><td class="k">{html.escape(key)}</td><td>{kb:,} kB</td>'
            f"<td>{'' if pct is None else f'{pct:.0f}%'}</td></tr>"
            for key, kb, pct in maps.rows(counters)]
    return "<table><tr><th>counter</th><th>kB</th><th>%</th></tr>" + "".join(rows) + "</table>"


def _mappings(snaps: list[dict[str, Any]]) -> str:
    out = ["<h2>Mappings (thpmaps grammar)</h2>",
           "<p>kB and percent of each VMA's anonymous or file memory, as "
           "<code>tools/mm/thpmaps</code> prints them; <code>anon-small</code>, "
           "<code>file-small</code> (pages outside large folios), <code>zero</code> and "
           "<code>cont-bit</code> are emu's own.</p>"]
    for snap in snaps:
        anon, file = maps.totals(snap["rollup"])
        out.append(f"<h3>pid {snap['pid']} {html.escape(maps.when(snap))}</h3>")
        out.append(f"<p>Rss {anon + file:,} kB (anon {anon:,} + file {file:,}); the model's "
                   f"RSS counter: {snap['rss_kB']:,} kB</p>")
        out.append(_counters_table(snap["rollup"]))
        vmas = [v for v in snap["vmas"] if any(v["counters"].values())]
        out.append(f"<details><summary>{len(vmas)} VMAs with memory</summary>")
        for v in vmas:
            name = html.escape(v["name"] or f"[{v['kind']}]")
            out.append(f"<p><code>{v['start']:016x}-{v['end']:016x} {v['prot']} {name}"
                       "</code></p>")
            out.append(_counters_table(v["counters"]))
        out.append("</details>")
    return "\n".join(out)


def _tlb_contents(snaps: list[dict[str, Any]]) -> str:
    """Per inspection: reach per CPU and TLB array, then the entries as VA ranges."""
    out = ["<h2>TLB contents</h2>",
           "<p>What each CPU's TLB arrays held; reach is the bytes their valid entries map"
           " (c: entries formed from several descriptors, arm64 contpte or AMD"
           " coalescing).</p>"]
    for snap in snaps:
        out.append(f"<h3>{html.escape(tlbs.when(snap))}</h3>")
        out.append("<table><tr><th>cpu</th><th>TLB</th><th>valid</th><th>entries</th>"
                   "<th>reach</th><th>by page size</th></tr>")
        for cpu, name, valid, cap, nbytes, text in tlbs.summary_rows(snap):
            out.append(f'<tr><td>{cpu}</td><td class="k">{html.escape(name)}</td>'
                       f"<td>{valid:,}</td><td>{cap:,}</td><td>{tlbs.kib(nbytes)}</td>"
                       f'<td class="k">{html.escape(text)}</td></tr>')
        out.append("</table>")
        for c in snap["cpus"]:
            for t in c["tlbs"]:
                if not t["entries"]:
                    continue
                rows = "".join(
                    f'<tr><td class="k">{a:016x}-{b:016x}</td><td>{size}</td><td>{n}</td>'
                    f'<td>{asid}</td><td class="k">{flags}</td></tr>'
                    for a, b, size, asid, flags, n in tlbs.ranges(t["entries"]))
                out.append(f"<details><summary>cpu {c['cpu']} {html.escape(t['name'])}:"
                           f" {t['valid']} entries</summary><table><tr><th>VA range</th>"
                           "<th>size</th><th>entries</th><th>ASID</th><th>flags wxdc</th>"
                           f"</tr>{rows}</table></details>")
    return "\n".join(out)


def _compare(cmp: dict[str, Any]) -> str:
    metrics = cmp["metrics"]
    head = "".join(f"<th>{html.escape(m)}</th><th>ratio</th>" for m in metrics)
    rows = []
    for r in cmp["rows"]:
        cells = "".join(
            f"<td>{r['metrics'][m]:,}</td><td>{_ratio(r['ratios'].get(m))}</td>"
            for m in metrics)
        rows.append(f'<tr><td class="k">{r["arch"]}</td><td class="k">'
                    f'{html.escape(r["policy"])}</td>{cells}</tr>')
    return ("<h2>Comparison</h2><p>Ratios are to the first policy of the same "
            "architecture.</p><table><tr><th>arch</th><th>policy</th>" + head + "</tr>"
            + "".join(rows) + "</table>")


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def write_report(directory: str, result: dict[str, Any] | None = None,
                 compare: dict[str, Any] | None = None) -> str:
    """Write DIR/report.html and the PNGs it inlines; returns the HTML's path."""
    from emu.report import plots
    from emu.report.text import render

    out = Path(directory)
    os.makedirs(out, exist_ok=True)
    parts: list[str] = []
    title = "emu report"
    pngs: list[Path] = []
    if compare is not None:
        title = f"emu compare: {' '.join(compare['argv'])}"
        parts.append(_compare(compare))
        p = out / "compare.png"
        plots.save(plots.compare_bars(compare["rows"], compare["metrics"]), str(p))
        parts.append(_img(p))
        pngs.append(p)
    if result is not None:
        title = f"emu: {' '.join(result['argv'])} ({result['arch']})"
        parts.append("<h2>Summary</h2><pre>" + html.escape(render(result)) + "</pre>")
        snaps = result.get("thpmaps") or []
        if snaps:
            parts.append(_mappings(snaps))
        if result.get("tlb_contents"):
            parts.append(_tlb_contents(result["tlb_contents"]))
        if result.get("annotate"):
            from emu.report.annotate import html_section
            parts.append(html_section(result["annotate"]))
        if snaps:
            parts.append("<h2>Plots</h2>")
            for snap in snaps:
                if snap.get("runs"):
                    tag = "exit" if snap["at"] == "exit" else f"mark{snap['at']['mark']}"
                    p = out / f"address-space-{snap['pid']}-{tag}.png"
                    plots.save(plots.address_space(snap), str(p))
                    parts.append(_img(p))
                    pngs.append(p)
        samples = result.get("samples")
        if samples and len(samples["samples"]) > 1:
            p = out / "over-time.png"
            plots.save(plots.over_time(result["arch"], samples), str(p))
            parts.append(_img(p))
            pngs.append(p)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    path = out / "report.html"
    path.write_text(page)
    return str(path)
