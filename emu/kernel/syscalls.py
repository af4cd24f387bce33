"""The mm syscalls, applied with the result QEMU gave the guest.

QEMU user-mode chose every address (mmap, mremap, brk) and already decided
success; the model follows: a failed call (ret < 0) changes nothing, and a
successful mmap first unmaps whatever the model had at the returned range
(QEMU's address is free from the guest's point of view, so anything the model
still has there is an implicit VMA or stale state).  madvise is applied with
Linux's semantics even though QEMU answers 0 without passing most advice on
(design.md).  ABI values come from emu.arch's data (mm-names.toml), the same
numbers the syscall decoder prints.  Each handler gets the Kernel as ``k``.
"""

from __future__ import annotations

from typing import Any

from emu.arch.syscalls import uapi
from emu.kernel.mm import MM
from emu.kernel.tlbflush import MmuGather
from emu.kernel.vma import (
    PAGE_SIZE,
    VM_DONTCOPY,
    VM_DROPPABLE,
    VM_EXEC,
    VM_GROWSDOWN,
    VM_HUGEPAGE,
    VM_NOHUGEPAGE,
    VM_READ,
    VM_SHARED,
    VM_WIPEONFORK,
    VM_WRITE,
    VMA,
    page_align_up,
)

UAPI = uapi()
U = UAPI.__getitem__
MAX_ERRNO = 4095


def failed(ret: int) -> bool:
    """A syscall return that is an error: negative, or -errno seen as unsigned."""
    return ret < 0 or ret >= (1 << 64) - MAX_ERRNO


def prot_to_vm(prot: int) -> int:
    return ((VM_READ if prot & U("PROT_READ") else 0) | (VM_WRITE if prot & U("PROT_WRITE") else 0)
            | (VM_EXEC if prot & U("PROT_EXEC") else 0))


def handles(name: str) -> bool:
    return name in _HANDLERS


def apply(k: Any, pid: int, cpu: int, name: str, args: tuple[int, ...], ret: int) -> int:
    """Run the handler; returns the simulated ns of synchronous model work (0 mostly)."""
    if failed(ret):
        return 0
    handler = _HANDLERS.get(name)
    if handler is None:
        return 0
    mm = k.enter(pid, cpu)
    a = tuple(int(x) for x in args) + (0,) * (6 - len(args))
    # flushes are counted by cause: the syscall's name, MADV_COLLAPSE on its own
    k.flush_cause = "madvise_collapse" if name == "madvise" and a[2] == U("MADV_COLLAPSE") \
        else name
    try:
        return handler(k, mm, a, ret) or 0
    except MemoryError:            # the simulated machine ran out of frames
        k.stats.count_vm_event("emu_syscall_oom")
        return 0
    finally:
        k.flush_cause = None


# --- mmap / munmap / mremap / mprotect / brk ------------------------------------------

def do_mmap(k: Any, mm: MM, a: tuple[int, ...], ret: int) -> None:
    _, length, prot, flags, fd, off = a[:6]
    start, end = ret, ret + page_align_up(length)
    if end <= start:
        return
    k.do_munmap(mm, start, end)
    vm = prot_to_vm(prot)
    if flags & U("MAP_GROWSDOWN"):
        vm |= VM_GROWSDOWN
    if flags & U("MAP_STACK"):
        vm |= VM_NOHUGEPAGE            # Linux 6.8+: MAP_STACK implies VM_NOHUGEPAGE
    if (flags & 0xf) == U("MAP_DROPPABLE"):   # 6.11+: private, dropped under pressure
        vm |= VM_DROPPABLE | VM_WIPEONFORK
    shared = (flags & 0x3) in (U("MAP_SHARED"), U("MAP_SHARED_VALIDATE"))
    if shared:
        vm |= VM_SHARED
    if flags & U("MAP_ANONYMOUS"):
        if shared:
            vma = VMA(start, end, vm, "shmem", "[shmem]", f"shmem:{mm.pid}:{start:#x}", 0)
        else:
            kind = "stack" if flags & (U("MAP_STACK") | U("MAP_GROWSDOWN")) else "anon"
            vma = VMA(start, end, vm, kind, "")
    else:
        # The path the fd was opened with names the VMA and keys the page cache
        # (emu.kernel.files); unknown, (pid, fd) keys it, right for the common
        # map-once-per-open pattern.
        path = k.files.path(mm.pid, fd)
        vma = VMA(start, end, vm, "file", path or f"fd{fd}", path or f"fd:{mm.pid}:{fd}",
                  off >> k.page_shift)
    mm.vmas.insert(vma)
    for v in mm.vmas.merge_around(start, end):
        k.khugepaged_enter_vma(mm, v)
    if flags & U("MAP_POPULATE"):
        populate(k, mm, start, end, write=bool(vm & VM_WRITE) and not shared)


def populate(k: Any, mm: MM, start: int, end: int, write: bool) -> None:
    """__mm_populate()/MADV_POPULATE_*: fault every page of the range."""
    addr = start
    cpu = min(mm.cpumask) if mm.cpumask else 0
    while addr < end:
        vma = mm.vmas.find(addr)
        if vma is None:
            addr += PAGE_SIZE
            continue
        k.handle_mm_fault(mm.pid, cpu, addr, 1 if write and vma.flags & VM_WRITE else 0)
        addr += PAGE_SIZE


def sys_munmap(k: Any, mm: MM, a: tuple[int, ...], ret: int) -> None:
    start = a[0] & ~(PAGE_SIZE - 1)
    k.do_munmap(mm, start, start + page_align_up(a[1]))


def sys_mprotect(k: Any, mm: MM, a: tuple[int, ...], ret: int) -> None:
    start = a[0] & ~(PAGE_SIZE - 1)
    end = start + page_align_up(a[1])
    vm = prot_to_vm(a[2])
    k.vma_adjust_trans_huge(mm, start, end)
    tlb = MmuGather()                  # do_mprotect_pkey: one gather for the whole call
    for vma in mm.vmas.carve(start, end):
        vma.flags = (vma.flags & ~(VM_READ | VM_WRITE | VM_EXEC)) | vm
        k.change_protection(mm, vma, vma.start, vma.end, tlb)
    for v in mm.vmas.merge_around(start, end):
        k.khugepaged_enter_vma(mm, v)
    k.tlb_finish_mmu(mm, tlb)


def sys_brk(k: Any, mm: MM, a: tuple[int, ...], ret: int) -> None:
    if mm.start_brk == 0:
        mm.start_brk = mm.brk = ret
    old_end, new_end = page_align_up(mm.brk), page_align_up(ret)
    base = page_align_up(mm.start_brk)
    if new_end > old_end:
        lo = max(old_end, base)
        k.do_munmap(mm, lo, new_end)
        mm.vmas.insert(VMA(lo, new_end, VM_READ | VM_WRITE, "heap", "[heap]"))
        for v in mm.vmas.merge_around(lo, new_end):
            k.khugepaged_enter_vma(mm, v)
    elif new_end < old_end:
        k.do_munmap(mm, max(new_end, base), old_end)
    mm.brk = ret


def sys_mremap(k: Any, mm: MM, a: tuple[int, ...], ret: int) -> None:
    old, old_len, new_len = a[0], page_align_up(a[1]), page_align_up(a[2])
    flags = a[3]
    vma = mm.vmas.find(old)
    if vma is None or old_len == 0:
        return
    if ret == old:
        if new_len < old_len:
            k.do_munmap(mm, old + new_len, old + old_len)
        elif new_len > old_len:
            k.do_munmap(mm, old + old_len, old + new_len)
            mm.vmas.carve(old, old + old_len)
            last = mm.vmas.find(old + old_len - PAGE_SIZE)
            assert last is not None
            last.end = old + new_len
            mm.vmas.merge_around(old, old + new_len)
        return
    k.move_range(mm, old, old_len, ret, new_len, keep_old=bool(flags & U("MREMAP_DONTUNMAP")))


def sys_madvise(k: Any, mm: MM, a: tuple[int, ...], ret: int) -> int:
    start = a[0] & ~(PAGE_SIZE - 1)
    end = start + page_align_up(a[1])
    advice = a[2]
    flag_changes = {
        U("MADV_HUGEPAGE"): (VM_HUGEPAGE, VM_NOHUGEPAGE),
        U("MADV_NOHUGEPAGE"): (VM_NOHUGEPAGE, VM_HUGEPAGE),
        U("MADV_DONTFORK"): (VM_DONTCOPY, 0),
        U("MADV_DOFORK"): (0, VM_DONTCOPY),
        U("MADV_WIPEONFORK"): (VM_WIPEONFORK, 0),
        U("MADV_KEEPONFORK"): (0, VM_WIPEONFORK),
    }
    if advice in flag_changes:
        set_bits, clear_bits = flag_changes[advice]
        if not mm.vmas.overlapping(start, end):
            return
        k.vma_adjust_trans_huge(mm, start, end)
        for vma in mm.vmas.carve(start, end):
            vma.flags = (vma.flags | set_bits) & ~clear_bits
        mm.vmas.merge_around(start, end)
        if advice == U("MADV_HUGEPAGE"):
            k.khugepaged_enter(mm, start, end)
    elif advice in (U("MADV_DONTNEED"), U("MADV_DONTNEED_LOCKED"), U("MADV_REMOVE")):
        # one gather for the call (Linux 6.16+ batches MADV_DONTNEED across VMAs)
        tlb = MmuGather()
        for vma in mm.vmas.overlapping(start, end):
            k.zap_range(mm, max(start, vma.start), min(end, vma.end), tlb=tlb)
        k.tlb_finish_mmu(mm, tlb)
    elif advice == U("MADV_FREE"):
        tlb = MmuGather()
        for vma in mm.vmas.overlapping(start, end):
            if vma.is_anon:
                k.madvise_free(mm, max(start, vma.start), min(end, vma.end), tlb)
        k.tlb_finish_mmu(mm, tlb)
    elif advice in (U("MADV_POPULATE_READ"), U("MADV_POPULATE_WRITE")):
        populate(k, mm, start, end, write=advice == U("MADV_POPULATE_WRITE"))
    elif advice == U("MADV_COLLAPSE"):
        rec = k.madvise_collapse(mm, start, end)
        if rec is not None:          # the caller waits for the collapse
            return rec.t_end_ns - rec.t_start_ns
    elif advice == U("MADV_PAGEOUT"):
        k.madvise_pageout(mm, start, end)
    return 0


def sys_prctl(k: Any, mm: MM, a: tuple[int, ...], ret: int) -> None:
    if a[0] == U("PR_SET_THP_DISABLE"):
        mm.thp_disabled = bool(a[1])


_HANDLERS = {
    "mmap": do_mmap,
    "munmap": sys_munmap,
    "mprotect": sys_mprotect,
    "pkey_mprotect": sys_mprotect,
    "brk": sys_brk,
    "mremap": sys_mremap,
    "madvise": sys_madvise,
    "prctl": sys_prctl,
}
