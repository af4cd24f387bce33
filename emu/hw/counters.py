"""Counter names: perf's generic events plus the x86 / Arm PMU event names users know.

x86 follows Intel's event names (dtlb_load_misses.walk_completed_4k, ...);
perf's dTLB-load-misses there means "missed every TLB level, walked", as on
Intel.  arm64 follows the Arm PMU common events (L1D_TLB_REFILL, DTLB_WALK, ...);
perf's dTLB-load-misses there means an L1 dTLB refill, as on Arm.  Names that
are emu's own (no PMU has them) are under ``emu.``.
"""

from __future__ import annotations

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
    out: dict[str, int] = {}
    arch = hw.arch.name
    level_names = hw.arch.level_names
    if arch == "x86_64":
        out["dTLB-loads"] = c[K.C_LOADS]
        out["dTLB-load-misses"] = sum(wl)
        out["dTLB-stores"] = c[K.C_STORES]
        out["dTLB-store-misses"] = sum(ws)
        out["iTLB-loads"] = c[K.C_FETCHES]
        out["iTLB-load-misses"] = sum(wf)
        for pfx, w, stlb in (("dtlb_load_misses", wl, c[K.C_L2_LOAD_HIT]),
                             ("dtlb_store_misses", ws, c[K.C_L2_STORE_HIT]),
                             ("itlb_misses", wf, c[K.C_L2_FETCH_HIT])):
            out[f"{pfx}.walk_completed"] = sum(w)
            out[f"{pfx}.walk_completed_4k"] = w[0] + w[1]
            out[f"{pfx}.walk_completed_2m_4m"] = w[3]
            out[f"{pfx}.walk_completed_1g"] = w[5]
            out[f"{pfx}.stlb_hit"] = stlb
        out["emu.l1_dtlb_load_misses"] = c[K.C_L1D_LOAD_MISS]
        out["emu.l1_dtlb_store_misses"] = c[K.C_L1D_STORE_MISS]
        out["emu.l1_itlb_misses"] = c[K.C_L1I_MISS]
        out["emu.coalesced_16k_fills"] = c[K.C_COAL_FILLS]
        for lvl in range(3):
            out[f"emu.psc_hits.{level_names[lvl]}"] = c[K.C_PSC_HIT + lvl]
        out["emu.ad_updates.accessed"] = c[K.C_A_SET]
        out["emu.ad_updates.dirty"] = c[K.C_D_SET]
    else:
        l1d_refill = c[K.C_L1D_LOAD_MISS] + c[K.C_L1D_STORE_MISS]
        out["dTLB-loads"] = c[K.C_LOADS]
        out["dTLB-load-misses"] = c[K.C_L1D_LOAD_MISS]
        out["dTLB-stores"] = c[K.C_STORES]
        out["dTLB-store-misses"] = c[K.C_L1D_STORE_MISS]
        out["iTLB-loads"] = c[K.C_FETCHES]
        out["iTLB-load-misses"] = c[K.C_L1I_MISS]
        out["L1D_TLB"] = c[K.C_LOADS] + c[K.C_STORES]
        out["L1D_TLB_REFILL"] = l1d_refill
        out["L1I_TLB"] = c[K.C_FETCHES]
        out["L1I_TLB_REFILL"] = c[K.C_L1I_MISS]
        l2_hits = c[K.C_L2_LOAD_HIT] + c[K.C_L2_STORE_HIT] + c[K.C_L2_FETCH_HIT]
        out["L2D_TLB"] = l1d_refill + c[K.C_L1I_MISS]
        out["L2D_TLB_REFILL"] = out["L2D_TLB"] - l2_hits
        out["DTLB_WALK"] = sum(wl) + sum(ws)
        out["ITLB_WALK"] = sum(wf)
        out["emu.contpte_64k_fills"] = c[K.C_COAL_FILLS]
        for lvl in range(3):
            out[f"emu.walk_cache_hits.{level_names[lvl]}"] = c[K.C_PSC_HIT + lvl]
        out["emu.hw_af_updates"] = c[K.C_A_SET]
        out["emu.hw_dbm_updates"] = c[K.C_D_SET]
    out["emu.walk_cache_misses"] = c[K.C_PSC_MISS]
    for z, name in enumerate(SIZE_NAMES):
        n = wl[z] + ws[z] + wf[z]
        if n:
            out[f"emu.walks.{name}"] = n
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
