"""Pictures of a result (matplotlib, PNG): what a table says less well.

- the address space, coloured by what maps each page (2M PMD, 64K, 4K, file);
- TLB misses per kilo-instruction and the share of mapped memory by mapping
  size over the run, with successful collapses marked;
- comparison bars (emu compare).

Each function takes plain result data and returns a Figure, so tests can read
the drawn data back; save() writes the PNG.
"""

from __future__ import annotations

import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from emu.report.samples import l1d_misses, l2_misses  # noqa: E402

_FIXED = {"2M-pmd": "#08306b", "file": "#a1d99b", "zero": "#f0f0f0", "4K": "#bdbdbd"}
_MTHP = ["#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#6a51a3",
         "#54278f"]


def _kb(label: str) -> int:
    m = re.match(r"(\d+)([KM])", label)
    if not m:
        return 0
    return int(m.group(1)) * (1024 if m.group(2) == "M" else 1)


def colour(label: str) -> str:
    """A fixed colour per mapping size: darker is larger, PMD darkest."""
    if label in _FIXED:
        return _FIXED[label]
    kb = _kb(label)
    return _MTHP[min(max(kb.bit_length() - 5, 0), len(_MTHP) - 1)]   # 16K -> first


def _label_order(labels: set[str]) -> list[str]:
    return sorted(labels, key=lambda s: (s in ("file", "zero"), -_kb(s), s))


def address_space(snap: dict[str, Any], max_vmas: int = 12) -> Figure:
    """One row per VMA that has memory (the largest first, up to max_vmas), each page
    range coloured by what mapped it; x is the offset in the VMA."""
    runs = snap.get("runs") or []
    vmas = [v for v in snap["vmas"] if any(v["counters"].values())]
    vmas = sorted(vmas, key=lambda v: -sum(v["counters"].values()))[:max_vmas]
    vmas.sort(key=lambda v: v["start"])
    fig, axes = plt.subplots(len(vmas) or 1, 1, figsize=(9, 0.55 * max(len(vmas), 1) + 1.4),
                             squeeze=False)
    seen: set[str] = set()
    for ax, v in zip(axes[:, 0], vmas, strict=False):
        # Each row in the unit that suits its size: KiB below 1 MiB.
        unit, uname = (2**20, "MiB") if v["end"] - v["start"] >= 2**20 else (2**10, "KiB")
        segs: dict[str, list[tuple[float, float]]] = {}
        for lo, hi, label in runs:
            lo, hi = max(lo, v["start"]), min(hi, v["end"])
            if lo < hi:
                segs.setdefault(label, []).append(((lo - v["start"]) / unit, (hi - lo) / unit))
        for label, xs in segs.items():
            ax.broken_barh(xs, (0, 1), facecolors=colour(label), label=label)
            seen.add(label)
        ax.set_xlim(0, (v["end"] - v["start"]) / unit)
        ax.set_xlabel(uname, fontsize=7, labelpad=0, loc="right")
        ax.set_yticks([])
        name = v["name"].rsplit("/", 1)[-1] or f"[{v['kind']}]"
        ax.set_ylabel(f"{name}\n{v['start']:#x}", rotation=0, ha="right", va="center",
                      fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Address space of pid {snap['pid']} {_when(snap)}: what maps each page",
                 fontsize=10)
    fig.legend(handles=[Patch(color=colour(s), label=s) for s in _label_order(seen)],
               loc="upper right", fontsize=7, ncol=min(len(seen), 6) or 1)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def _when(snap: dict[str, Any]) -> str:
    at = snap["at"]
    return "at exit" if at == "exit" else f"at emu_mark({at['mark']})"


def over_time(arch: str, samples: dict[str, Any]) -> Figure:
    """TLB misses per kilo-instruction (top) and the share of mapped memory by mapping
    size (bottom) against instructions; dashed lines where a collapse succeeded."""
    ss = samples["samples"]
    x = [s["instructions"] / 1e6 for s in ss]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    l2, l1, xm = [], [], []
    for a, b in zip(ss, ss[1:], strict=False):
        di = b["instructions"] - a["instructions"]
        if di < 1000:       # e.g. the sample at exit right after the last one: no rate
            continue
        xm.append(b["instructions"] / 1e6)
        l2.append(1000 * (l2_misses(arch, b["tlb"]) - l2_misses(arch, a["tlb"])) / di)
        l1.append(1000 * (l1d_misses(arch, b["tlb"]) - l1d_misses(arch, a["tlb"])) / di)
    top.plot(xm, l1, label="L1 dTLB misses", color="#6baed6", marker=".")
    top.plot(xm, l2, label="L2 TLB misses (" + ", ".join(samples["l2_tlb_misses"]) + ")",
             color="#08306b", marker=".")
    top.set_ylabel("misses per 1000 instructions")
    top.legend(fontsize=7)
    labels = _label_order({k for s in ss for k in s["pages"] if k != "cont"})
    total = [sum(v for k, v in s["pages"].items() if k != "cont") or 1 for s in ss]
    shares = [[100 * s["pages"].get(lab, 0) / t for s, t in zip(ss, total, strict=True)]
              for lab in labels]
    if labels:
        bottom.stackplot(x, shares, labels=labels, colors=[colour(lab) for lab in labels])
    bottom.set_ylabel("% of mapped pages")
    bottom.set_ylim(0, 100)
    bottom.set_xlabel("guest instructions (millions)")
    bottom.legend(fontsize=7, loc="lower right")
    for i, c in enumerate(samples["collapses"]):
        for ax in (top, bottom):
            ax.axvline(c["instructions"] / 1e6, color="#e6550d", linestyle="--", linewidth=0.8,
                       label="collapse" if i == 0 and ax is top else None)
    if samples["collapses"]:
        top.legend(fontsize=7)
    fig.suptitle(f"TLB misses and mapping sizes over the run ({arch})", fontsize=10)
    fig.tight_layout()
    return fig


def compare_bars(rows: list[dict[str, Any]], metrics: list[str]) -> Figure:
    """One panel per metric, a bar per (arch, policy) run, ratios to each arch's first
    policy written above the bars."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4), squeeze=False)
    names = [f"{r['arch']}\n{r['policy']}" for r in rows]
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = [r["metrics"][metric] for r in rows]
        bars = ax.bar(range(len(rows)), vals,
                      color=["#08519c" if r["arch"] == "arm64" else "#a63603" for r in rows])
        for b, r in zip(bars, rows, strict=True):
            ratio = r["ratios"].get(metric)
            if ratio is not None:
                ax.annotate(f"x{ratio:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), names, fontsize=7)
        ax.set_title(metric, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
