"""The plugin's binary chunk format and the recording file header (docs/trace-format.md).

The C plugin (plugin/emu.c) writes this layout; these dtypes let numpy and
numba read it without a per-event Python step.  Change both together and bump
FORMAT_VERSION.
"""

import numpy as np

FORMAT_VERSION = 1
CHUNK_MAGIC = 0x43554D45          # b"EMUC" as a little-endian u32
CHUNK_MAX = 4096                  # PIPE_BUF on Linux: one atomic write() on a FIFO
HDR_SIZE = 32
REC_SIZE = 16
SYS_SIZE = 64
MAX_REC = (CHUNK_MAX - HDR_SIZE) // REC_SIZE              # 254 records per chunk
MAX_SYS = (CHUNK_MAX - HDR_SIZE) // (REC_SIZE + SYS_SIZE)  # 50 syscalls per chunk

CHUNK_HDR = np.dtype([
    ("magic", "<u4"),
    ("version", "<u2"),
    ("vcpu", "<u2"),
    ("pid", "<u4"),
    ("seq", "<u4"),
    ("icount0", "<u8"),   # icount of the chunk's first record
    ("nrec", "<u2"),
    ("nsys", "<u2"),
    ("crc", "<u4"),       # CRC-32C of header bytes 0..27, then the payload
])

# word: READ/WRITE/FETCH: page-aligned VA | flags << 4 | kind; others:
# value << 12 | kind.  For SYSCALL the value is the index of its SYS record
# within the chunk.  The flags land in EVENT.pad.
F_ABSORBED = 0x01  # READ/WRITE: accesses the plugin's micro-TLB absorbed (no lookup)
REC = np.dtype([("word", "<u8"), ("count", "<u4"), ("dicount", "<u4")])

SYS = np.dtype([("nr", "<i8"), ("args", "<u8", (6,)), ("ret", "<i8")])

KIND_BITS = 4
VALUE_SHIFT = 12

# Recording files: FILE_MAGIC, u32 version, u32 meta length, u32 CRC-32 of the
# meta, u32 zero, meta (UTF-8 JSON), then one zstd frame holding the raw chunk
# stream exactly as it was read, then an end record with the frame's length and
# CRC-32, so that every byte of a recording is checked, not only what changes
# the decompressed stream.
FILE_MAGIC = b"EMUTRACE"
FILE_HDR = np.dtype([("magic", "S8"), ("version", "<u4"), ("meta_len", "<u4"),
                     ("meta_crc", "<u4"), ("zero", "<u4")])
END_MAGIC = b"EMUTREND"
FILE_END = np.dtype([("magic", "S8"), ("frame_len", "<u8"), ("frame_crc", "<u4"),
                     ("zero", "<u4")])

assert CHUNK_HDR.itemsize == HDR_SIZE
assert REC.itemsize == REC_SIZE
assert SYS.itemsize == SYS_SIZE
