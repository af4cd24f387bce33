"""Seeded random mm workloads against the kernel model's invariants: folio mapcounts
equal the page-table entries that map them, rss counters equal the mapped pages,
table counts equal the tables reachable, no writable entry maps a folio another mm
also maps (COW is never bypassed), every arm64 contiguous block is a valid fold,
and when every process has exited only the page cache and the zero pages hold
frames."""

import random
from collections import Counter

import numpy as np
import pytest
from kernel_model_helpers import PAGE, MiB, make_kernel

BASE = 0x40000000
WINDOW = 16 * MiB


def scan(k):
    """Walk every mm's tables: (per-folio-page PTE maps, per-folio PMD maps, per-mm rss,
    per-mm table count)."""
    arch, store = k.arch, k.physmem.pgtables
    pte_maps, pmd_maps, rss, tables = Counter(), Counter(), {}, {}
    for pid, mm in k.mms.items():
        anon = file = swapents = 0
        ntab = 0

        def walk(t, level, asid=mm.asid):
            nonlocal anon, file, ntab, swapents
            ntab += 1
            tab = store.table(t)
            for i in np.flatnonzero(tab).tolist():
                d = int(tab[i])
                if level < k.pt.pte_level and arch.is_valid(d) and not arch.is_leaf(d, level):
                    walk(arch.pfn(d), level + 1, asid)
                    continue
                if not arch.is_present(d):
                    swapents += arch.is_swap(d)
                    continue
                pfn = arch.pfn(d)
                if pfn in (k.zero_pfn, k.huge_zero_pfn):
                    continue
                f = k.folio_of_pfn(pfn)
                assert f is not None, f"entry maps pfn {pfn:#x} outside any folio"
                if arch.writable(d) and f.anon:
                    assert f.only_mm(asid), f"writable entry to a shared folio {f}"
                if level == k.pt.pte_level and arch.cont(d):
                    assert arch.cont(int(tab[i - i % 16])), "PTE_CONT outside a folded block"
                if level == k.pt.pte_level and arch.cont(d) and i % 16 == 0:
                    blk = [int(x) for x in tab[i:i + 16]]
                    assert pfn % 16 == 0 and f.nr_pages >= 16
                    assert all(arch.cont(x) and arch.pfn(x) == pfn + j
                               and arch.attrs_equal(x, d) for j, x in enumerate(blk))
                if level == k.pt.pte_level:
                    pte_maps[(f.pfn, pfn - f.pfn)] += 1
                    n = 1
                else:
                    pmd_maps[f.pfn] += 1
                    n = f.nr_pages
                if f.anon:
                    anon += n
                else:
                    file += n

        walk(mm.pgd_pfn, 0)
        rss[pid] = (anon, file, swapents)
        tables[pid] = ntab + len(mm.deposit)
    return pte_maps, pmd_maps, rss, tables


def check(k):
    pte_maps, pmd_maps, rss, tables = scan(k)
    for head, f in k.folios.items():
        assert f.pfn == head
        for i in range(f.nr_pages):
            assert f.page_mapcount[i] == pte_maps.get((head, i), 0), (f, i)
        assert f.entire_mapcount == pmd_maps.get(head, 0), f
        if f.anon:
            assert f.mapped(), f"unmapped anon folio kept: {f}"
    for pid, mm in k.mms.items():
        c = mm.counters
        assert (c["MM_ANONPAGES"], c["MM_FILEPAGES"], c["MM_SWAPENTS"]) == rss[pid]
        assert mm.nr_pgtables == tables[pid]
    orders = Counter(f.order for f in k.folios.values() if f.anon)
    for kb, st_ in k.mthp_stats.items():
        order = (kb * 1024 // PAGE).bit_length() - 1
        assert st_["nr_anon"] == orders.get(order, 0), kb
        partial = sum(1 for f in k.folios.values() if f.anon and f.order == order
                      and f.partially_mapped)
        assert st_["nr_anon_partially_mapped"] == partial


def gen_ops(seed: int, n: int = 80) -> list[tuple]:
    """A seeded random workload: mostly mmaps and touches, with the other calls mixed in."""
    r = random.Random(seed)

    def rng():
        length = r.choice([1, 3, 16, 100, 512, r.randrange(1, 1100)])
        return (r.randrange(8), r.randrange(2000), length)

    ops = []
    for _ in range(n):
        x = r.random()
        if x < 0.15:
            p = r.choice([r.randrange(8) * 512, r.randrange(128) * 16, r.randrange(WINDOW // PAGE)])
            ln = r.choice([16, 64, 512, 520, 1024, r.randrange(1, 1200)])
            ops.append(("mmap", p, ln, r.choice([3, 3, 3, 1, 0])))
        elif x < 0.55:
            ops.append(("touch", rng(), r.randrange(1, 40), r.random() < 0.8))
        elif x < 0.62:
            ops.append(("munmap", rng()))
        elif x < 0.69:
            ops.append(("mprotect", rng(), r.choice([0, 1, 3, 3])))
        elif x < 0.79:
            ops.append(("madvise", rng(), r.choice([4, 8, 14, 15, 21])))
        elif x < 0.84:
            ops.append(("mremap", rng(), r.randrange(1, 600), r.randrange(WINDOW // PAGE)))
        elif x < 0.91:
            ops.append(("fork",))
        elif x < 0.94:
            ops.append(("exit",))
        else:
            ops.append(("switch", r.randrange(4)))
    return ops


def place(mm, r):
    """(start, npages) inside an existing VMA (clipped), or None."""
    vmas = list(mm.vmas)
    if not vmas:
        return None
    v = vmas[r[0] % len(vmas)]
    off = r[1] % v.nr_pages
    return v.start + off * PAGE, max(1, min(r[2], v.nr_pages - off + r[2] // 3))


CONFIGS = [dict(enabled="never"), dict(enabled="always"),
           dict(enabled="never", mthp={16: "always", 64: "always"}),
           dict(enabled="madvise", mthp={64: "madvise", 2048: "inherit", 32: "always"})]


@pytest.mark.parametrize("seed", range(32))
def test_random_workloads_keep_the_books_straight(seed):
    arch = ("x86_64", "arm64")[seed % 2]
    cfg = CONFIGS[(seed // 2) % len(CONFIGS)]
    ops = gen_ops(seed)
    k = make_kernel(arch, mib=96, khugepaged=seed % 3 == 0, **cfg)   # MADV_COLLAPSE too
    free0 = k.nr_free_frames
    k.new_mm(1)
    pids, cur, next_pid = [1], 1, 2
    for o in ops:
        name = o[0]
        if name == "switch":
            cur = pids[o[1] % len(pids)] if pids else cur
            continue
        if cur not in k.mms:
            continue
        mm = k.mm(cur)
        if name == "mmap":
            _, p, n, prot = o
            k.syscall(cur, 0, "mmap", (0, n * PAGE, prot, 0x22, (1 << 64) - 1, 0),
                      BASE + p * PAGE)
        elif name == "fork":
            if len(pids) < 4:
                k.fork(cur, next_pid)
                pids.append(next_pid)
                next_pid += 1
        elif name == "exit":
            if len(pids) > 1:
                k.exit_mm(cur)
                pids.remove(cur)
                cur = pids[0]
        elif (where := place(mm, o[1])) is not None:
            start, n = where
            if name == "munmap":
                k.syscall(cur, 0, "munmap", (start, n * PAGE), 0)
            elif name == "mprotect":
                k.syscall(cur, 0, "mprotect", (start, n * PAGE, o[2]), 0)
            elif name == "madvise":
                k.syscall(cur, 0, "madvise", (start, n * PAGE, o[2]), 0)
            elif name == "touch":
                for i in range(o[2]):
                    va = start + ((i * 5) % n) * PAGE
                    vma = mm.vmas.find(va)
                    if vma is not None:
                        k.handle_mm_fault(cur, 0, va, 1 if o[3] else 0, None)
            elif name == "mremap":
                vma = mm.vmas.find(start)
                old_n = min(n, (vma.end - start) // PAGE)
                dst = BASE + WINDOW + o[3] * PAGE          # outside the window: no overlap
                if not mm.vmas.overlapping(dst, dst + o[2] * PAGE):
                    k.syscall(cur, 0, "mremap", (start, old_n * PAGE, o[2] * PAGE, 1, 0), dst)
        check(k)
    for pid in list(pids):
        k.exit_mm(pid)
    check(k)
    held = sum(f.nr_pages for f in k.folios.values())
    held += 512 if k.huge_zero_pfn is not None else 0
    assert all(not f.anon for f in k.folios.values())
    assert k.nr_free_frames + held == free0
    assert k.physmem.pgtables.nr_tables == 0
    if k.swap is not None:
        assert k.swap.nr_used == 0
