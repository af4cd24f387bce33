"""Counter names: perf's generic events plus the x86 / Arm PMU event names users know.

x86 follows Intel's event names (dtlb_load_misses.walk_completed_4k, ...);
perf's dTLB-load-misses there means "missed every TLB level, walked", as on
Intel.  arm64 follows the Arm PMU common events (L1D_TLB_REFILL, DTLB_WALK, ...);
perf's dTLB-load-misses there means an L1 dTLB refill, as on Arm.  Names that
are emu's own (no PMU has them) are under ``emu.``.

A walk that ends in a fault (the first touch of a page: the kernel maps it and
the access walks again) counts as the vendors describe it (the sources are
quoted in docs/hardware.md, "Counters"): in Intel's
``*.walk_completed`` ("the page walk can end with or without a fault") and in
Arm's ``DTLB_WALK``/``ITLB_WALK`` (every walk caused by an L2 TLB miss), but
not in Arm's ``L1D_TLB_REFILL``/``L1I_TLB_REFILL`` ("will not count if the
translation table walk results in a fault ... since there is no new
translation created for the TLB") nor, by the same reasoning, in
``L2D_TLB_REFILL``.  Per-size walk events count only walks that found a page;
``emu.faulted_walks`` counts the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emu.arch import SIZE_NAMES
from emu.hw import kernels as K

# Flush primitives, counted by kind for the issuing vCPU and for every target.
FLUSH_KINDS = (
    "invlpg", "invpcid_single", "invpcid_asid", "invpcid_all", "cr3_flush", "ipi",
    "tlbi_vae1is", "tlbi_vale1is", "tlbi_rvae1is", "tlbi_rvale1is", "tlbi_aside1is",
    "tlbi_vmalle1is", "flush_all",
)


def name_counters(hw, c: np.ndarray, issued: np.ndarray, received: np.ndarray,
                  entries_flushed: int) -> dict[str, int]:
    c = [int(x) for x in c]
    wl = c[K.C_WALK_LOAD:K.C_WALK_LOAD + 6]
    ws = c[K.C_WALK_STORE:K.C_WALK_STORE + 6]
    wf = c[K.C_WALK_FETCH:K.C_WALK_FETCH + 6]
    fl, fs, ff = c[K.C_WALK_FAULT_LOAD:K.C_WALK_FAULT_LOAD + 3]     # walks that faulted
    ml, ms, mf = c[K.C_MISS_FAULT_LOAD:K.C_MISS_FAULT_LOAD + 3]     # L1 misses among them
    out: dict[str, int] = {}
    arch = hw.arch.name
    level_names = hw.arch.level_names
    if arch == "x86_64":
        out["dTLB-loads"] = c[K.C_LOADS]
        out["dTLB-load-misses"] = sum(wl) + fl
        out["dTLB-stores"] = c[K.C_STORES]
        out["dTLB-store-misses"] = sum(ws) + fs
        out["iTLB-loads"] = c[K.C_FETCHES]
        out["iTLB-load-misses"] = sum(wf) + ff
        for pfx, w, f, stlb in (("dtlb_load_misses", wl, fl, c[K.C_L2_LOAD_HIT]),
                                ("dtlb_store_misses", ws, fs, c[K.C_L2_STORE_HIT]),
                                ("itlb_misses", wf, ff, c[K.C_L2_FETCH_HIT])):
            out[f"{pfx}.walk_completed"] = sum(w) + f
            out[f"{pfx}.walk_completed_4k"] = w[0] + w[1]
            out[f"{pfx}.walk_completed_2m_4m"] = w[3]
            out[f"{pfx}.walk_completed_1g"] = w[5]
            out[f"{pfx}.stlb_hit"] = stlb
        out["emu.coalesced_16k_fills"] = c[K.C_COAL_FILLS]
        for lvl in range(3):
            out[f"emu.psc_hits.{level_names[lvl]}"] = c[K.C_PSC_HIT + lvl]
        out["emu.ad_updates.accessed"] = c[K.C_A_SET]
        out["emu.ad_updates.dirty"] = c[K.C_D_SET]
    else:
        out["dTLB-loads"] = c[K.C_LOADS]
        out["dTLB-load-misses"] = c[K.C_L1D_LOAD_MISS] - ml
        out["dTLB-stores"] = c[K.C_STORES]
        out["dTLB-store-misses"] = c[K.C_L1D_STORE_MISS] - ms
        out["iTLB-loads"] = c[K.C_FETCHES]
        out["iTLB-load-misses"] = c[K.C_L1I_MISS] - mf
        out["L1D_TLB"] = c[K.C_LOADS] + c[K.C_STORES]
        out["L1D_TLB_REFILL"] = out["dTLB-load-misses"] + out["dTLB-store-misses"]
        out["L1I_TLB"] = c[K.C_FETCHES]
        out["L1I_TLB_REFILL"] = out["iTLB-load-misses"]
        l2_hits = c[K.C_L2_LOAD_HIT] + c[K.C_L2_STORE_HIT] + c[K.C_L2_FETCH_HIT]
        # Every L1 miss looks the L2 up; a lookup refills it unless it hit or faulted.
        out["L2D_TLB"] = c[K.C_L1D_LOAD_MISS] + c[K.C_L1D_STORE_MISS] + c[K.C_L1I_MISS]
        out["L2D_TLB_REFILL"] = out["L2D_TLB"] - l2_hits - ml - ms - mf
        out["DTLB_WALK"] = sum(wl) + sum(ws) + fl + fs
        out["ITLB_WALK"] = sum(wf) + ff
        out["emu.contpte_64k_fills"] = c[K.C_COAL_FILLS]
        for lvl in range(3):
            out[f"emu.walk_cache_hits.{level_names[lvl]}"] = c[K.C_PSC_HIT + lvl]
        out["emu.hw_af_updates"] = c[K.C_A_SET]
        out["emu.hw_dbm_updates"] = c[K.C_D_SET]
    out["emu.walk_cache_misses"] = c[K.C_PSC_MISS]
    # The same on both architectures: L1 lookups that missed (faulting ones too).
    out["emu.l1_dtlb_load_misses"] = c[K.C_L1D_LOAD_MISS]
    out["emu.l1_dtlb_store_misses"] = c[K.C_L1D_STORE_MISS]
    out["emu.l1_itlb_misses"] = c[K.C_L1I_MISS]
    for z, name in enumerate(SIZE_NAMES):
        n = wl[z] + ws[z] + wf[z]
        if n:
            out[f"emu.walks.{name}"] = n
    out["emu.faulted_walks"] = fl + fs + ff
    out["emu.data_walks"] = sum(wl) + sum(ws) + fl + fs
    out["emu.instr_walks"] = sum(wf) + ff
    for lvl in range(4):
        out[f"emu.walk_refs.{level_names[lvl]}"] = c[K.C_WALK_REFS + lvl]
    out["emu.walk_refs"] = sum(c[K.C_WALK_REFS:K.C_WALK_REFS + 4])
    out["emu.faults"] = c[K.C_FAULTS]
    out["emu.dirty_assists"] = c[K.C_DIRTY_ASSIST]
    out["emu.permission_rewalks"] = c[K.C_PERM_REWALK]
    for i, k in enumerate(FLUSH_KINDS):
        if issued[i]:
            out[f"flush.{k}.issued"] = int(issued[i])
        if received[i]:
            out[f"flush.{k}.received"] = int(received[i])
    out["emu.tlb_entries_flushed"] = entries_flushed
    return out


# The architecture-neutral block: what reads the same on x86-64 and arm64.
def neutral(total: dict[str, int]) -> dict[str, Any]:
    """Misses per 1k accesses, walks per page size, walk memory references.

    From emu's own counters, which mean the same on both architectures, so
    that runs on the two can be read side by side (the vendor events do not:
    Intel's dTLB-load-misses are walks, Arm's are L1 refills).
    """
    data = total.get("dTLB-loads", 0) + total.get("dTLB-stores", 0)
    l1 = total.get("emu.l1_dtlb_load_misses", 0) + total.get("emu.l1_dtlb_store_misses", 0)
    walks = total.get("emu.data_walks", 0) + total.get("emu.instr_walks", 0)
    refs = total.get("emu.walk_refs", 0)
    by_size = {k.removeprefix("emu.walks."): v for k, v in total.items()
               if k.startswith("emu.walks.")}
    by_size["faulted"] = total.get("emu.faulted_walks", 0)

    def per_1k(n: int) -> float:
        return round(1000 * n / data, 3) if data else 0.0

    return {"data_accesses": data, "fetch_lookups": total.get("iTLB-loads", 0),
            "l1_dtlb_misses": l1, "l1_dtlb_misses_per_1k": per_1k(l1),
            "l1_itlb_misses": total.get("emu.l1_itlb_misses", 0),
            "data_walks": total.get("emu.data_walks", 0),
            "data_walks_per_1k": per_1k(total.get("emu.data_walks", 0)),
            "instr_walks": total.get("emu.instr_walks", 0),
            "walks_by_size": by_size,
            "walk_refs": refs, "walk_refs_per_walk": round(refs / walks, 3) if walks else 0.0}
