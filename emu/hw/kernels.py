"""numba kernels of the hardware model: TLB lookup/fill, paging-structure caches, the walker.

Layout (struct of arrays, one row per vCPU):

* TLB entries of every array of a profile live side by side in ``tag``/``data``/
  ``stamp`` rows; array ``s`` owns entries ``base[s] .. base[s] + sets[s]*ways[s]``,
  entry ``base + set*ways + way``.
* ``tag`` = VALID | vpn << 20 | size << 16 | asid, where vpn is the VA shifted by
  the entry's page size; 0 is an empty entry.
* ``data`` = frame of the entry's first 4 KiB page << 12 | F_* flags.
* ``stamp`` = the vCPU's access clock at the last use: replacement is true LRU
  (an empty way first, else the smallest stamp).  An empty entry e holds
  ``e - KEY_EMPTY`` so that rule is a plain smallest-stamp search.
* Paging-structure caches use the same layout in ``psc_*`` arrays, one array
  per cached level; the tag's vpn is the VA prefix down to that level and
  ``data`` holds the frame of the next-level table plus the x86 permissions
  accumulated so far.

* ``occ[array * 6 + size]`` counts valid entries per (array, size) so lookups
  skip sizes an array holds none of.

Kernels are compiled with ``_nrt=False``: they never allocate, and without
NRT numba passes arrays to helpers with no reference counting (which made the
hit path 5x slower).  Everything here assumes validated input; emu.hw.hardware
checks it.
"""

import numpy as np
from numba import njit

from emu.arch import SIZE_1G, SIZE_2M, SIZE_4K
from emu.arch import arm64 as A64
from emu.arch import x86_64 as X86

VALID_TAG = np.uint64(1 << 63)
TAG_VPN_SHIFT = 20
TAG_SIZE_SHIFT = 16
ASID_MASK = 0xFFFF

# Entry flags (low 12 bits of data).
F_W = 1          # writes permitted (possibly after a dirty update)
F_X = 2          # instruction fetch permitted
F_DIRTY = 4      # writes need no descriptor update (x86 D=1, arm64 AP[2]=0)
F_COAL = 8       # formed from several descriptors (contpte / coalesced)

# Access kinds (emu.trace.events).
K_READ = 0
K_WRITE = 1
K_FETCH = 2

# Fault reasons (kernel names where the kernel has them).
FAULT_NONE = 0
FAULT_NOT_PRESENT = 1      # translation fault: descriptor invalid at `level`
FAULT_WRITE_PROTECT = 2    # permission fault on a write
FAULT_EXEC = 3             # instruction fetch from NX/UXN memory
FAULT_USER = 4             # user access to a supervisor-only mapping
FAULT_ACCESS_FLAG = 5      # arm64 AF=0 without FEAT_HAFDBS
FAULT_BAD_TABLE = 6        # a table descriptor points at a frame that is not a page table
FAULT_RESERVED = 7         # a descriptor encoding the architecture reserves

SIZE_SHIFTS = np.array([12, 14, 16, 21, 25, 30], dtype=np.int64)
LEVEL_SHIFTS = np.array([39, 30, 21, 12], dtype=np.int64)

# Per-vCPU counters (index constants; emu.hw.counters names them).
C_LOADS = 0
C_STORES = 1
C_FETCHES = 2
C_L1D_LOAD_MISS = 3
C_L1D_STORE_MISS = 4
C_L1I_MISS = 5
C_L2_LOAD_HIT = 6
C_L2_STORE_HIT = 7
C_L2_FETCH_HIT = 8
C_WALK_LOAD = 9        # + size code (6)
C_WALK_STORE = 15      # + size code
C_WALK_FETCH = 21      # + size code
C_WALK_REFS = 27       # + level (4)
C_PSC_HIT = 31         # + cached level (3)
C_PSC_MISS = 34
C_FAULTS = 35
C_A_SET = 36
C_D_SET = 37
C_DIRTY_ASSIST = 38
C_PERM_REWALK = 39
C_COAL_FILLS = 40
C_WALKS_FAULTED = 41   # all kinds; per kind below
C_L1D_LOADS = 42       # lookups (records), not accesses
C_L1D_STORES = 43
C_L1I_LOOKUPS = 44
C_WALK_FAULT_LOAD = 45     # + kind: walks that ended in a fault (no translation)
C_MISS_FAULT_LOAD = 48     # + kind: of those, accesses that had missed the L1 TLB
NR_COUNTERS = 51
# run_kernel indexes per-kind counters as base + kind (and walks as base + 6*kind + size).
assert (C_STORES, C_FETCHES) == (C_LOADS + K_WRITE, C_LOADS + K_FETCH)
assert (C_L1D_STORES, C_L1I_LOOKUPS) == (C_L1D_LOADS + 1, C_L1D_LOADS + 2)
assert (C_L1D_STORE_MISS, C_L1I_MISS) == (C_L1D_LOAD_MISS + 1, C_L1D_LOAD_MISS + 2)
assert (C_L2_STORE_HIT, C_L2_FETCH_HIT) == (C_L2_LOAD_HIT + 1, C_L2_LOAD_HIT + 2)
assert (C_WALK_STORE, C_WALK_FETCH) == (C_WALK_LOAD + 6, C_WALK_LOAD + 12)
assert C_MISS_FAULT_LOAD == C_WALK_FAULT_LOAD + 3

# Flags a hit needs, per kind (4 bits each): a write a dirty entry, a fetch an executable one.
NEED_BY_KIND = (F_DIRTY << 4 * K_WRITE) | (F_X << 4 * K_FETCH)

# Array indices are cast to U: numba then drops its negative-index wraparound
# (a sign test and the shape load per access; ~15 % of the hit path).  Every
# index here is non-negative by construction.
U = np.uint64

X86_ATTR_MASK = np.uint64(X86.ATTR_COMPARE_MASK)
A64_ATTR_MASK = np.uint64(A64.ATTR_COMPARE_MASK)


@njit(cache=True, inline="always", _nrt=False)
def _set_of(vpn, sets, setmask):
    # Set counts are powers of two (emu.arch.profile checks): no division on the hot path.
    return vpn & setmask


@njit(cache=True, inline="always", _nrt=False)
def lookup(tag, st_base, st_sets, st_setmask, st_ways, st_sizes, s, va, asid):
    """Entry index in array ``s`` translating ``va`` for ``asid``, or -1."""
    base = st_base[U(s)]
    ways = st_ways[U(s)]
    sizes = st_sizes[U(s)]
    for size in range(6):
        if not (sizes >> size) & 1:
            continue
        vpn = va >> SIZE_SHIFTS[U(size)]
        t = VALID_TAG | np.uint64((vpn << TAG_VPN_SHIFT) | (size << TAG_SIZE_SHIFT) | asid)
        e0 = base + _set_of(vpn, st_sets[U(s)], st_setmask[U(s)]) * ways
        for e in range(e0, e0 + ways):
            if tag[U(e)] == t:
                return e
    return -1


@njit(cache=True, inline="always", _nrt=False)
def psc_lookup(ptag, pdata, pstamp, clock, p_base, p_sets, p_setmask, p_ways, level, va, asid):
    """Entry caching the level-``level`` table descriptor for ``va``, or -1."""
    if p_ways[U(level)] == 0:
        return -1
    vpn = va >> LEVEL_SHIFTS[U(level)]
    t = VALID_TAG | np.uint64((vpn << TAG_VPN_SHIFT) | asid)
    ways = p_ways[U(level)]
    e0 = p_base[U(level)] + _set_of(vpn, p_sets[U(level)], p_setmask[U(level)]) * ways
    e = _find(ptag, e0, ways, t)
    if e >= 0:
        pstamp[U(e)] = clock
    return e


@njit(cache=True, inline="always", _nrt=False)
def psc_fill(ptag, pdata, pstamp, clock, p_base, p_sets, p_setmask, p_ways, level, va, asid,
             value):
    if p_ways[U(level)] == 0:
        return
    vpn = va >> LEVEL_SHIFTS[U(level)]
    t = VALID_TAG | np.uint64((vpn << TAG_VPN_SHIFT) | asid)
    ways = p_ways[U(level)]
    e0 = p_base[U(level)] + _set_of(vpn, p_sets[U(level)], p_setmask[U(level)]) * ways
    victim = e0
    oldest = np.int64(0x7FFFFFFFFFFFFFFF)
    for e in range(e0, e0 + ways):
        if ptag[U(e)] == t or ptag[U(e)] == 0:
            victim = e
            break
        if pstamp[U(e)] < oldest:
            oldest = pstamp[U(e)]
            victim = e
    ptag[U(victim)] = t
    pdata[U(victim)] = value
    pstamp[U(victim)] = clock


@njit(cache=True, inline="always", _nrt=False)
def _group_ok(tables, slot, idx, d, n, arch_id):
    """The n aligned descriptors around ``idx`` map n contiguous, aligned frames alike."""
    b = idx & ~(n - 1)
    if arch_id == 0:
        pfn = (d & np.uint64(X86.PFN_MASK)) >> 12
        mask = X86_ATTR_MASK
    else:
        pfn = (d & np.uint64(A64.OA_MASK)) >> 12
        mask = A64_ATTR_MASK
    first = pfn - np.uint64(idx - b)
    if first & np.uint64(n - 1):
        return False
    for j in range(n):
        e = tables[U(slot), U(b + j)]
        if arch_id == 0:
            if not e & np.uint64(X86.P):
                return False
            epfn = (e & np.uint64(X86.PFN_MASK)) >> 12
        else:
            if (e & np.uint64(3)) != np.uint64(3) or not e & np.uint64(A64.CONT):
                return False
            epfn = (e & np.uint64(A64.OA_MASK)) >> 12
        if epfn != first + np.uint64(j) or (e & mask) != (d & mask):
            return False
        if arch_id == 0 and not e & np.uint64(X86.A):
            return False     # [U] only accessed PTEs coalesce: keeps per-PTE A exact
    return True


@njit(cache=True, inline="always", _nrt=False)
def _leaf_size(lvl):
    """SIZE_* code of a leaf descriptor at this level (PTE 4K, PMD 2M, PUD 1G)."""
    if lvl == 3:
        return SIZE_4K
    if lvl == 2:
        return SIZE_2M
    return SIZE_1G


@njit(cache=True, inline="always", _nrt=False)
def walk(tables, slot_of_pfn, root_pfn, va, asid, kind, arch_id, hafdbs, coalesce,
         ptag, pdata, pstamp, clock, p_base, p_sets, p_setmask, p_ways, cnt, fault):
    """Translate ``va`` through the page tables, updating A/D (x86) or AF/DBM (arm64).

    Returns (size, first pfn of the mapping at that size, F_* flags) or size -1
    after filling ``fault`` = [va, kind, level, reason].
    """
    table_pfn = root_pfn
    start = 0
    # x86 permissions accumulated over the upper levels: bit0 RW, bit1 US, bit2 NX.
    acc = 3
    for lvl in range(2, -1, -1):
        e = psc_lookup(ptag, pdata, pstamp, clock, p_base, p_sets, p_setmask, p_ways,
                       lvl, va, asid)
        if e >= 0:
            cnt[U(C_PSC_HIT + lvl)] += 1
            table_pfn = np.int64(pdata[U(e)] >> np.uint64(12))
            acc = np.int64(pdata[U(e)] & np.uint64(7))
            start = lvl + 1
            break
    if start == 0:
        cnt[U(C_PSC_MISS)] += 1
    for lvl in range(start, 4):
        slot = slot_of_pfn[U(table_pfn)] if table_pfn < slot_of_pfn.shape[0] else -1
        if slot < 0:
            fault[U(0)] = va
            fault[U(1)] = kind
            fault[U(2)] = lvl
            fault[U(3)] = FAULT_BAD_TABLE
            return -1, 0, 0
        idx = (va >> LEVEL_SHIFTS[U(lvl)]) & 511
        d = tables[U(slot), U(idx)]
        cnt[U(C_WALK_REFS + lvl)] += 1
        reason = FAULT_NONE
        if arch_id == 0:
            if not d & np.uint64(X86.P):
                reason = FAULT_NOT_PRESENT
            elif lvl < 3 and not d & np.uint64(X86.PS):
                if not d & np.uint64(X86.A):
                    tables[U(slot), U(idx)] = d | np.uint64(X86.A)
                    cnt[U(C_A_SET)] += 1
                if not d & np.uint64(X86.RW):
                    acc &= ~1
                if not d & np.uint64(X86.US):
                    acc &= ~2
                if d & np.uint64(X86.NX):
                    acc |= 4
                table_pfn = np.int64((d & np.uint64(X86.PFN_MASK)) >> np.uint64(12))
                if lvl < 3:
                    psc_fill(ptag, pdata, pstamp, clock, p_base, p_sets, p_setmask, p_ways,
                             lvl, va, asid, np.uint64((table_pfn << 12) | acc))
                continue
            elif lvl == 0:
                reason = FAULT_RESERVED      # PS is reserved in a PML4E
            else:
                rw = (acc & 1) and (d & np.uint64(X86.RW))
                us = (acc & 2) and (d & np.uint64(X86.US))
                nx = (acc & 4) or (d & np.uint64(X86.NX))
                if not us:
                    reason = FAULT_USER
                elif kind == K_WRITE and not rw:
                    reason = FAULT_WRITE_PROTECT
                elif kind == K_FETCH and nx:
                    reason = FAULT_EXEC
                else:
                    nd = d | np.uint64(X86.A)
                    if kind == K_WRITE:
                        nd |= np.uint64(X86.D)
                    if nd != d:
                        if not d & np.uint64(X86.A):
                            cnt[U(C_A_SET)] += 1
                        if (nd ^ d) & np.uint64(X86.D):
                            cnt[U(C_D_SET)] += 1
                        tables[U(slot), U(idx)] = nd
                        d = nd
                    size = _leaf_size(lvl)
                    flags = 0
                    if rw:
                        flags |= F_W
                    if not nx:
                        flags |= F_X
                    # A read-only PTE may be dirty (a write-protected COW page keeps D):
                    # the entry lets writes through only if it is writable too.
                    if rw and d & np.uint64(X86.D):
                        flags |= F_DIRTY
                    pfn = np.int64((d & np.uint64(X86.PFN_MASK)) >> np.uint64(12))
                    if size == 0 and coalesce > 1 and _group_ok(tables, slot, idx, d, coalesce, 0):
                        size = 1
                        pfn -= idx & (coalesce - 1)
                        flags |= F_COAL
                        cnt[U(C_COAL_FILLS)] += 1
                        # x86 dirtiness is per PTE: the entry lets writes through
                        # without a D update only if every member is dirty already.
                        b = idx & ~(coalesce - 1)
                        for m in range(coalesce):
                            if not tables[U(slot), U(b + m)] & np.uint64(X86.D):
                                flags &= ~F_DIRTY
                    return size, pfn, flags
        else:
            typ = d & np.uint64(3)
            if not d & np.uint64(A64.VALID):
                reason = FAULT_NOT_PRESENT
            elif lvl < 3 and typ == np.uint64(3):
                table_pfn = np.int64((d & np.uint64(A64.OA_MASK)) >> np.uint64(12))
                psc_fill(ptag, pdata, pstamp, clock, p_base, p_sets, p_setmask, p_ways,
                         lvl, va, asid, np.uint64((table_pfn << 12) | 3))
                continue
            elif (lvl == 0 and typ == np.uint64(1)) or (lvl == 3 and typ == np.uint64(1)):
                reason = FAULT_NOT_PRESENT   # reserved encodings translate as invalid
            else:
                nd = d
                if not d & np.uint64(A64.AP_USER):
                    reason = FAULT_USER
                elif kind == K_FETCH and d & np.uint64(A64.UXN):
                    reason = FAULT_EXEC
                elif kind == K_WRITE and d & np.uint64(A64.RDONLY):
                    if hafdbs and d & np.uint64(A64.DBM):
                        nd = nd & ~np.uint64(A64.RDONLY)
                        cnt[U(C_D_SET)] += 1
                    else:
                        reason = FAULT_WRITE_PROTECT
                if reason == FAULT_NONE and not d & np.uint64(A64.AF):
                    if hafdbs:
                        nd |= np.uint64(A64.AF)
                        cnt[U(C_A_SET)] += 1
                    else:
                        reason = FAULT_ACCESS_FLAG
                if reason == FAULT_NONE:
                    if nd != d:
                        tables[U(slot), U(idx)] = nd
                        d = nd
                    size = _leaf_size(lvl)
                    flags = 0
                    if not d & np.uint64(A64.RDONLY):
                        flags |= F_W | F_DIRTY
                    elif hafdbs and d & np.uint64(A64.DBM):
                        flags |= F_W
                    if not d & np.uint64(A64.UXN):
                        flags |= F_X
                    pfn = np.int64((d & np.uint64(A64.OA_MASK)) >> np.uint64(12))
                    if (size == 0 and d & np.uint64(A64.CONT)
                            and _group_ok(tables, slot, idx, d, 16, 1)):
                        size = 2
                        pfn -= idx & 15
                        flags |= F_COAL
                        cnt[U(C_COAL_FILLS)] += 1
                    return size, pfn, flags
        fault[U(0)] = va
        fault[U(1)] = kind
        fault[U(2)] = lvl
        fault[U(3)] = reason
        return -1, 0, 0
    return -1, 0, 0


@njit(cache=True, inline="always", _nrt=False)
def _page_pfn(t, d, va):
    size = np.int64((t >> np.uint64(TAG_SIZE_SHIFT)) & np.uint64(7))
    return np.int64(d >> np.uint64(12)) + ((va >> 12) & ((1 << (SIZE_SHIFTS[U(size)] - 12)) - 1))


# Probe lists: row j of ``probes`` is one (TLB array, page size) pair to look in;
# rows pr_off[side*2 + level] .. pr_off[side*2 + level + 1] serve one lookup.
# The kernels get the table flattened: field F of row j is probes[j * P_FIELDS + F]
# (a constant stride; a 2-D index multiplies by a stride reloaded from memory).
P_BASE = 0
P_WAYS = 1
P_MASK = 2
P_SHIFT = 3
P_SIZE = 4
P_OCC = 5        # index into occ[]: array * 6 + size
P_ARR = 6        # the row's TLB array
P_HBASE = 7      # fully associative arrays: offset of their hash index in fa[], else -1
P_HMASK = 8      # hash index slots - 1
P_FIELDS = 9

KEY_EMPTY = np.int64(1 << 61)    # stamp of empty entry e: e - KEY_EMPTY (see _lru)

# Fully associative arrays (one set, more than FA_MIN_WAYS ways) get two side
# structures in the per-vCPU ``fa`` row, so neither a lookup nor a fill scans
# all ways.  With ne = entries of the vCPU and na = arrays of the profile:
#   fa[e], fa[ne + e]            LRU list prev / next of entry e (-1 = none)
#   fa[2*ne + 3*s + 0, 1, 2]     head (MRU), tail (LRU), used hash slots of array s
#   fa[P_HBASE ...]              open-addressing hash index: tag -> entry, -1 free,
#                                -2 deleted.
# The list orders an array's entries by their last stamp, so when the array is
# full its tail is exactly the smallest stamp the scan would pick.  The hash
# index may keep stale slots (flushes zero tags without telling it): a lookup
# checks tag[entry] == t, and tags are unique within an array, so a stale slot
# never gives a wrong entry, and every live tag stays reachable from its hash.
FA_MIN_WAYS = 17
# Hash index size and fill: at least this many slots per way, rebuilt once a quarter of
# them are used (live tags plus tombstones), so most lookups read one or two slots:
# every extra slot read is a branch the predictor cannot know.
HASH_SLOTS_PER_WAY = 16
HASH_REBUILD_SHIFT = 2
HASH_MUL = np.uint64(0x9E3779B97F4A7C15)



@njit(cache=True, inline="always", _nrt=False)
def _hash(t, hmask):
    return np.int64((t * HASH_MUL) >> np.uint64(40)) & hmask


@njit(cache=True, inline="always", _nrt=False)
def _hfind(tag, fa, hb, hmask, t):
    """Entry holding tag ``t`` in a fully associative array, via its hash index; -1 if none."""
    h = _hash(t, hmask)
    while True:
        v = fa[U(hb + h)]
        if v == -1:
            return -1
        if v >= 0 and tag[U(v)] == t:
            return v
        h = (h + 1) & hmask


@njit(cache=True, inline="always", _nrt=False)
def _hput(fa, hb, hmask, hu, t, v):
    h = _hash(t, hmask)
    while True:
        x = fa[U(hb + h)]
        if x < 0:
            fa[U(hb + h)] = v
            if x == -1:
                fa[U(hu)] += 1
            return
        h = (h + 1) & hmask


@njit(cache=True, inline="always", _nrt=False)
def _hdel(fa, hb, hmask, t, v):
    h = _hash(t, hmask)
    while True:
        x = fa[U(hb + h)]
        if x == -1:
            return
        if x == v:
            fa[U(hb + h)] = -2
            return
        h = (h + 1) & hmask


@njit(cache=True, inline="always", _nrt=False)
def _hinsert(tag, fa, hb, hmask, hu, e0, ways, t, v):
    """Index ``tag[v] == t``; rebuild it from the tags once a quarter of its slots are used."""
    if fa[U(hu)] << HASH_REBUILD_SHIFT >= hmask + 1:
        for h in range(hmask + 1):
            fa[U(hb + h)] = -1
        fa[U(hu)] = 0
        for e in range(e0, e0 + ways):
            if tag[U(e)] != 0:
                _hput(fa, hb, hmask, hu, tag[U(e)], e)
        return
    _hput(fa, hb, hmask, hu, t, v)


@njit(cache=True, inline="always", _nrt=False)
def _touch(fa, ne, s, e):
    """Entry ``e`` of fully associative array ``s`` becomes the most recently used."""
    hd = 2 * ne + 3 * s
    if fa[U(hd)] == e:
        return
    p = fa[U(e)]
    n = fa[U(ne + e)]
    fa[U(ne + p)] = n
    if n >= 0:
        fa[U(n)] = p
    else:
        fa[U(hd + 1)] = p
    h = fa[U(hd)]
    fa[U(e)] = -1
    fa[U(ne + e)] = h
    fa[U(h)] = e
    fa[U(hd)] = e


@njit(cache=True, inline="always", _nrt=False)
def _find(tag, e0, ways, t):
    """Entry of ``tag[e0:e0+ways]`` equal to ``t``, or -1.

    Up to 16 ways the loop has no early exit: a fixed trip count and a
    conditional move, so a hit in a random way costs no branch misprediction
    (tags are unique within an array: a fill reuses the entry holding its tag).
    4 and 8 ways (most L1s, L2s and walk caches) get a constant trip count, which
    the compiler unrolls.  Wider (fully associative) arrays stop at the match.
    """
    found = -1
    if ways == 4:
        for w in range(3, -1, -1):
            if tag[U(e0 + w)] == t:
                found = e0 + w
        return found
    if ways == 8:
        for w in range(7, -1, -1):
            if tag[U(e0 + w)] == t:
                found = e0 + w
        return found
    if ways <= 16:
        for e in range(e0 + ways - 1, e0 - 1, -1):
            if tag[U(e)] == t:
                found = e
    else:
        for e in range(e0, e0 + ways):
            if tag[U(e)] == t:
                return e
    return found


@njit(cache=True, inline="always", _nrt=False)
def _probe(tag, fa, probes, occ, lo, hi, va, asid):
    """Entry translating ``va`` among probe rows [lo, hi), or -1.

    ``occ`` counts the valid entries of each (array, size); rows with none are
    skipped, so a stream of 4 KiB pages does not pay for 2M/1G probes.
    """
    for j in range(lo, hi):
        r = j * P_FIELDS
        if occ[U(probes[U(r + P_OCC)])] == 0:
            continue
        vpn = va >> probes[U(r + P_SHIFT)]
        t = VALID_TAG | np.uint64((vpn << TAG_VPN_SHIFT)
                                  | (probes[U(r + P_SIZE)] << TAG_SIZE_SHIFT) | asid)
        hb = probes[U(r + P_HBASE)]
        if hb >= 0:
            e = _hfind(tag, fa, hb, probes[U(r + P_HMASK)], t)
        else:
            ways = probes[U(r + P_WAYS)]
            e = _find(tag, probes[U(r + P_BASE)] + (vpn & probes[U(r + P_MASK)]) * ways, ways, t)
        if e >= 0:
            return e
    return -1


@njit(cache=True, inline="always", _nrt=False)
def _lru(stamp, e0, ways):
    """The way with the smallest stamp: the first empty way, else the least recently used.

    An empty entry's stamp is ``entry - KEY_EMPTY`` (set at start and by every
    invalidation), below every clock value and rising with the index; stamps of
    valid entries in one array are distinct (each event stamps at most one entry
    per array).  So the smallest stamp is exactly the way the rule picks, found by
    one pass over the stamps alone, with no branch on the data (unrolled for 4 and
    8 ways, as in ``_find``: the literal way count reaches the inlined loop).
    """
    if ways == 4:
        return _oldest(stamp, e0, 4)
    if ways == 8:
        return _oldest(stamp, e0, 8)
    return _oldest(stamp, e0, ways)


@njit(cache=True, inline="always", _nrt=False)
def _oldest(stamp, e0, n):
    """Index of the smallest of ``stamp[e0:e0+n]`` (the first, on a tie)."""
    best = stamp[U(e0)]
    v = e0
    for w in range(1, n):
        x = stamp[U(e0 + w)]
        if x < best:
            best = x
            v = e0 + w
    return v


@njit(cache=True, inline="always", _nrt=False)
def _fill(tag, data, stamp, occ, fa, clock, probes, j, va, asid, size, pfn, flags, absent):
    """Install a ``size`` translation through probe row ``j`` (chosen by fill_sel).

    The row's size may be smaller than ``size``: the array cannot hold that
    size, so it gets a splinter (the part of the mapping around ``va``).
    ``absent``: the lookup just probed this array and found no entry for ``va``,
    so the tag need not be searched (it is, after a hit that could not be used).
    """
    if j < 0:
        return
    r = j * P_FIELDS
    z = probes[U(r + P_SIZE)]
    if z != size:
        page = pfn + ((va >> 12) & ((1 << (SIZE_SHIFTS[U(size)] - 12)) - 1))
        pfn = page & ~((1 << (SIZE_SHIFTS[U(z)] - 12)) - 1)
    vpn = va >> probes[U(r + P_SHIFT)]
    t = VALID_TAG | np.uint64((vpn << TAG_VPN_SHIFT) | (z << TAG_SIZE_SHIFT) | asid)
    ways = probes[U(r + P_WAYS)]
    e0 = probes[U(r + P_BASE)] + (vpn & probes[U(r + P_MASK)]) * ways
    hb = probes[U(r + P_HBASE)]
    o = probes[U(r + P_OCC)]
    if hb < 0:
        victim = -1 if absent else _find(tag, e0, ways, t)
        if victim < 0:
            victim = _lru(stamp, e0, ways)
        old = tag[U(victim)]
        if old != t:
            if old != 0:
                occ[U(o - z + np.int64((old >> np.uint64(TAG_SIZE_SHIFT)) & np.uint64(7)))] -= 1
            occ[U(o)] += 1
        tag[U(victim)] = t
        data[U(victim)] = np.uint64((pfn << 12) | flags)
        stamp[U(victim)] = clock
        return
    # Fully associative: the same choice as _lru without scanning the ways.
    hmask = probes[U(r + P_HMASK)]
    s = probes[U(r + P_ARR)]
    ne = tag.shape[0]
    victim = _hfind(tag, fa, hb, hmask, t)
    if victim < 0:
        valid = 0
        for k in range(6):
            valid += occ[U(s * 6 + k)]
        if valid < ways:
            for e in range(e0, e0 + ways):
                if tag[U(e)] == 0:
                    victim = e
                    break
        else:
            victim = fa[U(2 * ne + 3 * s + 1)]
    old = tag[U(victim)]
    if old != t:
        if old != 0:
            occ[U(o - z + np.int64((old >> np.uint64(TAG_SIZE_SHIFT)) & np.uint64(7)))] -= 1
            _hdel(fa, hb, hmask, old, victim)
        occ[U(o)] += 1
        tag[U(victim)] = t
        _hinsert(tag, fa, hb, hmask, 2 * ne + 3 * s + 2, e0, ways, t, victim)
    data[U(victim)] = np.uint64((pfn << 12) | flags)
    stamp[U(victim)] = clock
    _touch(fa, ne, s, victim)


@njit(cache=True, _nrt=False)
def recount(tag, ent_struct, occ):
    """Rebuild occ[] from the tags (after a flush that dropped many entries)."""
    occ[:] = 0
    for e in range(tag.shape[0]):
        if tag[U(e)] != 0:
            occ[U(ent_struct[U(e)] * 6 + np.int64((tag[U(e)] >> np.uint64(TAG_SIZE_SHIFT))
                                                & np.uint64(7)))] += 1


@njit(cache=True, nogil=True, _nrt=False)
def run_kernel(kinds, addrs, counts, start, stop, root_pfn, asid, arch_id, hafdbs, coalesce,
               tables, slot_of_pfn, tag, data, stamp, occ, clk, probes, pr_off, fill_sel,
               ptag, pdata, pstamp, p_base, p_sets, p_setmask, p_ways, cnt, fault, out_pfn,
               fa, ent_fa, any_fa, out_miss):
    """Translate events [start, stop); return the index of the first faulting event or stop.

    If ``out_pfn`` is at least ``stop`` long, the 4 KiB frame each translated
    event reached is written to it (the machine's integrity oracle reads it).
    If ``out_miss`` is, each event that missed the L1 TLB gets 1 (an L2 hit), 2 (a
    completed walk) or 3 (a walk that faulted); written on the miss paths only, so
    hits cost nothing more (the machine's --annotate attribution reads it).

    Lookups of side 0 (instructions) or 1 (data) at L1 (0) or L2 (1) probe rows
    ``pr_off[side*2+level] .. pr_off[side*2+level+1]``; a fill of page size z
    there goes through row ``fill_sel[side*2+level, z]`` (-1: no array holds it).
    ``any_fa``: some array is fully associative (``ent_fa`` has an entry >= 0).
    """
    clock = clk[U(0)]
    want_pfn = out_pfn.shape[0] >= stop
    want_miss = out_miss.shape[0] >= stop
    for i in range(start, stop):
        kind = np.int64(kinds[U(i)])
        if kind > K_FETCH:
            continue
        va = np.int64(addrs[U(i)])
        n = np.int64(counts[U(i)])
        if n < 1:
            n = 1
        side = 0 if kind == K_FETCH else 1
        clock += 1
        # Per-kind counters sit at base + kind (READ, WRITE, FETCH): no branch on the kind.
        # One test of the entry's flags instead of branches on a random kind.
        need = (NEED_BY_KIND >> (4 * kind)) & 15
        cnt[U(C_LOADS + kind)] += n
        cnt[U(C_L1D_LOADS + kind)] += 1
        q = side * 2
        e = _probe(tag, fa, probes, occ, pr_off[U(q)], pr_off[U(q + 1)], va, asid)
        need_walk = False
        assist = False
        l1_absent = e < 0
        l2_absent = False
        if e >= 0:
            fl = np.int64(data[U(e)] & np.uint64(0xFFF))
            if fl & need != need:
                if kind == K_FETCH:
                    cnt[U(C_PERM_REWALK)] += 1
                elif fl & F_W:
                    cnt[U(C_DIRTY_ASSIST)] += 1
                    assist = True
                else:
                    cnt[U(C_PERM_REWALK)] += 1
                need_walk = True        # the refill overwrites this entry
            else:
                stamp[U(e)] = clock
                if any_fa and ent_fa[U(e)] >= 0:
                    _touch(fa, tag.shape[0], ent_fa[U(e)], e)
                if want_pfn:
                    out_pfn[U(i)] = _page_pfn(tag[U(e)], data[U(e)], va)
                continue
        else:
            cnt[U(C_L1D_LOAD_MISS + kind)] += 1
            if want_miss:
                out_miss[U(i)] = 1
            e2 = _probe(tag, fa, probes, occ, pr_off[U(q + 1)], pr_off[U(q + 2)], va, asid)
            l2_absent = e2 < 0
            if e2 >= 0:
                fl = np.int64(data[U(e2)] & np.uint64(0xFFF))
                if fl & need == need:
                    cnt[U(C_L2_LOAD_HIT + kind)] += 1
                    stamp[U(e2)] = clock
                    if any_fa and ent_fa[U(e2)] >= 0:
                        _touch(fa, tag.shape[0], ent_fa[U(e2)], e2)
                    t = tag[U(e2)]
                    size = np.int64((t >> np.uint64(TAG_SIZE_SHIFT)) & np.uint64(7))
                    _fill(tag, data, stamp, occ, fa, clock, probes, fill_sel[U(q), U(size)], va,
                          asid, size, np.int64(data[U(e2)] >> np.uint64(12)), fl, True)
                    if want_pfn:
                        out_pfn[U(i)] = _page_pfn(tag[U(e2)], data[U(e2)], va)
                    continue
                if kind == K_WRITE and fl & F_W:
                    cnt[U(C_DIRTY_ASSIST)] += 1
                    assist = True
                else:
                    cnt[U(C_PERM_REWALK)] += 1
            need_walk = True
        if need_walk:
            size, pfn, flags = walk(tables, slot_of_pfn, root_pfn, va, asid, kind, arch_id,
                                    hafdbs, coalesce, ptag, pdata, pstamp, clock, p_base,
                                    p_sets, p_setmask, p_ways, cnt, fault)
            if size < 0:
                cnt[U(C_FAULTS)] += 1
                cnt[U(C_WALKS_FAULTED)] += 1
                cnt[U(C_WALK_FAULT_LOAD + kind)] += 1
                if l1_absent:            # an L1 (and L2) lookup that refilled nothing
                    cnt[U(C_MISS_FAULT_LOAD + kind)] += 1
                if want_miss:
                    out_miss[U(i)] = 3
                # The access retires once, after the kernel handled the fault and
                # the machine replays the event; the misses and the walk did happen.
                cnt[U(C_LOADS + kind)] -= n
                clk[U(0)] = clock
                return i
            if not assist:               # a dirty-bit update is not a TLB miss
                cnt[U(C_WALK_LOAD + 6 * kind + size)] += 1
                if want_miss:
                    out_miss[U(i)] = 2
            _fill(tag, data, stamp, occ, fa, clock, probes, fill_sel[U(q + 1), U(size)], va, asid,
                  size, pfn, flags, l2_absent)
            _fill(tag, data, stamp, occ, fa, clock, probes, fill_sel[U(q), U(size)], va, asid,
                  size, pfn, flags, l1_absent)
            if want_pfn:
                out_pfn[U(i)] = pfn + ((va >> 12) & ((1 << (SIZE_SHIFTS[U(size)] - 12)) - 1))
    clk[U(0)] = clock
    return stop


# ---------------------------------------------------------------- flushes
TAG_VPN_MASK = np.uint64((1 << 43) - 1)


@njit(cache=True, _nrt=False)
def inval_va(tag, stamp, occ, st_base, st_sets, st_setmask, st_ways, st_sizes, va, asid,
             any_asid):
    """Drop every TLB entry of one vCPU that translates ``va`` (for ``asid``, or any)."""
    n = 0
    for s in range(st_base.shape[0]):
        ways = st_ways[U(s)]
        for size in range(6):
            if not (st_sizes[U(s)] >> size) & 1:
                continue
            vpn = va >> SIZE_SHIFTS[U(size)]
            e0 = st_base[U(s)] + _set_of(vpn, st_sets[U(s)], st_setmask[U(s)]) * ways
            for e in range(e0, e0 + ways):
                t = tag[U(e)]
                if t == 0:
                    continue
                if np.int64((t >> np.uint64(TAG_VPN_SHIFT)) & TAG_VPN_MASK) != vpn:
                    continue
                if np.int64((t >> np.uint64(TAG_SIZE_SHIFT)) & np.uint64(7)) != size:
                    continue
                if any_asid or np.int64(t & np.uint64(ASID_MASK)) == asid:
                    tag[U(e)] = 0
                    stamp[U(e)] = e - KEY_EMPTY
                    occ[U(s * 6 + size)] -= 1
                    n += 1
    return n


@njit(cache=True, _nrt=False)
def inval_range(tag, stamp, start, end, asid, any_asid):
    """Drop every entry overlapping [start, end) (for ``asid``, or any); returns how many."""
    n = 0
    for e in range(tag.shape[0]):
        t = tag[U(e)]
        if t == 0:
            continue
        if not any_asid and np.int64(t & np.uint64(ASID_MASK)) != asid:
            continue
        size = np.int64((t >> np.uint64(TAG_SIZE_SHIFT)) & np.uint64(7))
        lo = np.int64((t >> np.uint64(TAG_VPN_SHIFT)) & TAG_VPN_MASK) << SIZE_SHIFTS[U(size)]
        hi = lo + (np.int64(1) << SIZE_SHIFTS[U(size)])
        if lo < end and start < hi:
            tag[U(e)] = 0
            stamp[U(e)] = e - KEY_EMPTY
            n += 1
    return n


@njit(cache=True, _nrt=False)
def inval_asid(tag, stamp, asid):
    n = 0
    for e in range(tag.shape[0]):
        if tag[U(e)] != 0 and np.int64(tag[U(e)] & np.uint64(ASID_MASK)) == asid:
            tag[U(e)] = 0
            stamp[U(e)] = e - KEY_EMPTY
            n += 1
    return n


@njit(cache=True, _nrt=False)
def psc_inval_range(ptag, p_base, p_sets, p_ways, start, end, asid, any_asid):
    """Drop walk-cache entries whose VA prefix overlaps [start, end)."""
    n = 0
    for lvl in range(3):
        cnt_e = p_sets[U(lvl)] * p_ways[U(lvl)]
        for e in range(p_base[U(lvl)], p_base[U(lvl)] + cnt_e):
            t = ptag[U(e)]
            if t == 0:
                continue
            if not any_asid and np.int64(t & np.uint64(ASID_MASK)) != asid:
                continue
            lo = np.int64((t >> np.uint64(TAG_VPN_SHIFT)) & TAG_VPN_MASK) << LEVEL_SHIFTS[U(lvl)]
            hi = lo + (np.int64(1) << LEVEL_SHIFTS[U(lvl)])
            if lo < end and start < hi:
                ptag[U(e)] = 0
                n += 1
    return n

FLAT = True
