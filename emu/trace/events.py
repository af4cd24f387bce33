"""The decoded event stream: the contract between emu.trace and everything above it.

The reader turns the plugin's chunks into :class:`Batch` objects.  Events keep
stream order; events of one (pid, vCPU) are in program order, and events of
different threads or processes interleave only at chunk boundaries.

Event kinds, by the ``kind`` field:

READ, WRITE   ``addr`` is the page-aligned guest virtual address (4 KiB pages),
              ``count`` the number of consecutive accesses of that kind the
              plugin merged into this record (always >= 1).
FETCH         the vCPU started fetching instructions from page ``addr``.
SYSCALL       ``count`` indexes ``Batch.syscalls`` (number, six arguments,
              return value).  Emitted when the syscall returns, so the return
              value is known; exit and exit_group are emitted on entry.
VCPU_START    a guest thread started on vCPU ``vcpu``.
VCPU_EXIT     the thread on ``vcpu`` ended; ``icount`` is its final count.
MARK          the guest called emu_mark(``addr``).
PROC_START    the first event of process ``pid``; ``addr`` is the parent pid
              (0 for the first process).
PROC_EXIT     the last event of process ``pid``; ``addr`` is the exit status.
PC            (recorded with --annotate) ``addr`` is the address of the instruction
              whose access started the READ/WRITE record that follows it.

``icount`` is the number of instructions the vCPU had retired at the event
(exact at translation-block granularity).
"""

from dataclasses import dataclass

import numpy as np

READ = 0
WRITE = 1
FETCH = 2
SYSCALL = 3
VCPU_START = 4
VCPU_EXIT = 5
MARK = 6
PROC_START = 7
PROC_EXIT = 8
PC = 9          # only with `run --annotate`: the instruction address of the next access record

KIND_NAMES = ("read", "write", "fetch", "syscall", "vcpu_start", "vcpu_exit",
              "mark", "proc_start", "proc_exit", "pc")

PAGE_SHIFT = 12

EVENT = np.dtype([
    ("kind", np.uint8),
    ("pad", np.uint8),
    ("vcpu", np.uint16),
    ("pid", np.uint32),
    ("addr", np.uint64),
    ("count", np.uint64),
    ("icount", np.uint64),
])

SYSCALL_REC = np.dtype([
    ("nr", np.int64),
    ("args", np.uint64, (6,)),
    ("ret", np.int64),
])

# emu_mark(id) is this syscall number on every architecture; no kernel uses it,
# so a native run gets -ENOSYS and carries on (see guest/emu_mark.h).
EMU_MARK_NR = 0x656D75
# Pseudo-syscall records from the plugin (docs/trace-format.md, "Names"): 56 bytes
# of the path an open names (args and ret, NUL-padded; several records for a long
# path), just before that open's record; and QEMU's start_code, end_code and
# entry_code of the program, once, at the first syscall.
EMU_PATH_NR = 0x656D76
EMU_EXEC_NR = 0x656D77


@dataclass(frozen=True)
class Batch:
    events: np.ndarray    # dtype EVENT
    syscalls: np.ndarray  # dtype SYSCALL_REC
