"""The numba kernel that turns raw chunk bytes into EVENT and SYSCALL_REC rows.

One call walks many chunks: checks magic, version, length and CRC, expands
icount deltas to absolute counts, and splits the record word into kind and
address.  It releases the GIL, so the reader thread decodes while the model runs.
"""

import platform

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from emu.trace.format import CHUNK_MAGIC, CHUNK_MAX, FORMAT_VERSION, HDR_SIZE, REC_SIZE, SYS_SIZE

# Status codes returned by decode_chunks; the reader turns them into messages.
OK = 0
BAD_MAGIC = 1
BAD_VERSION = 2
BAD_LENGTH = 3
BAD_CRC = 4
BAD_KIND = 5
BAD_SYSCALL_INDEX = 6

MAX_KIND = 9  # PC (with --annotate)
SYSCALL_KIND = 3
ACCESS_KINDS_END = 3  # READ, WRITE, FETCH carry a page address


CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected: what SSE4.2's crc32 computes


def _crc_tables() -> np.ndarray:
    """Slicing-by-8 tables for the reflected CRC-32C the plugin computes."""
    t = np.zeros((8, 256), dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (CRC32C_POLY if c & 1 else 0)
        t[0, i] = c
    for i in range(256):
        for k in range(1, 8):
            prev = int(t[k - 1, i])
            t[k, i] = (prev >> 8) ^ int(t[0, prev & 0xFF])
    return t


CRC_TABLES = _crc_tables()


@njit(cache=True, nogil=True)
def crc32c(buf, start, end, crc, tab):
    """CRC-32C of the bytes buf[start:end] continuing from `crc` (0 to start)."""
    c = np.uint32(crc) ^ np.uint32(0xFFFFFFFF)
    for i in range(start, end):
        c = (c >> np.uint32(8)) ^ tab[0, (c ^ np.uint32(buf[i])) & np.uint32(0xFF)]
    return c ^ np.uint32(0xFFFFFFFF)


@njit(inline="always")
def _crc_word(c, w, tab):
    """Advance the (inverted) CRC state by one little-endian u64."""
    lo = np.uint32(w & np.uint64(0xFFFFFFFF)) ^ c
    hi = np.uint32(w >> np.uint64(32))
    return (tab[7, lo & np.uint32(0xFF)] ^ tab[6, (lo >> np.uint32(8)) & np.uint32(0xFF)]
            ^ tab[5, (lo >> np.uint32(16)) & np.uint32(0xFF)] ^ tab[4, lo >> np.uint32(24)]
            ^ tab[3, hi & np.uint32(0xFF)] ^ tab[2, (hi >> np.uint32(8)) & np.uint32(0xFF)]
            ^ tab[1, (hi >> np.uint32(16)) & np.uint32(0xFF)] ^ tab[0, hi >> np.uint32(24)])


@njit(inline="always")
def _crc_u32(c, x, tab):
    for k in range(4):
        c = (c >> np.uint32(8)) ^ tab[0, (c ^ (x >> np.uint32(8 * k))) & np.uint32(0xFF)]
    return c


def crc32c_bytes(data: bytes) -> int:
    """CRC-32C of a bytes object (for writers and tests)."""
    a = np.frombuffer(data, dtype=np.uint8)
    return int(crc32c(a, 0, len(a), np.uint32(0), CRC_TABLES))


def _host_has_crc32c() -> bool:
    """SSE4.2's crc32 computes CRC-32C in one instruction per word (8x the tables)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " sse4_2" in line for line in f)
    except OSError:
        return False


HW_CRC = _host_has_crc32c()


def _sse42_crc(bits: int):
    """A numba intrinsic for llvm.x86.sse42.crc32.<bits>.<bits> (state, data)."""
    nbty = types.uint64 if bits == 64 else types.uint32

    @intrinsic
    def crc(typingctx, state, data):
        def codegen(context, builder, signature, args):
            from llvmlite import ir
            ity = ir.IntType(bits)
            fn = builder.module.declare_intrinsic(
                f"llvm.x86.sse42.crc32.{bits}.{bits}", fnty=ir.FunctionType(ity, [ity, ity]))
            return builder.call(fn, args)
        return nbty(nbty, nbty), codegen
    return crc


if HW_CRC:
    # The 64-bit form keeps the (inverted) u32 state in a u64.
    _hw_crc_u64 = _sse42_crc(64)
    _hw_crc_u32 = _sse42_crc(32)

    @njit(inline="always")
    def _crc_word_any(c, w, tab):
        return np.uint32(_hw_crc_u64(np.uint64(c), w))

    @njit(inline="always")
    def _crc_u32_any(c, x, tab):
        return _hw_crc_u32(c, x)
else:
    @njit(inline="always")
    def _crc_word_any(c, w, tab):
        return _crc_word(c, w, tab)

    @njit(inline="always")
    def _crc_u32_any(c, x, tab):
        return _crc_u32(c, x, tab)


W_PER_REC = REC_SIZE // 8
W_PER_SYS = SYS_SIZE // 8
W_HDR = HDR_SIZE // 8


@njit(cache=True, nogil=True)
def decode_chunks(buf, pos, end, max_chunks, tab, ev, ev_n, sc, sc_n,
                  c_pid, c_vcpu, c_seq, c_off):
    """Decode whole chunks from the u64 words buf[pos:end], at most max_chunks.

    ev is an (n, 4) u64 view of EVENT rows, sc an (n, 8) u64 view of
    SYSCALL_REC rows (the wire layout of a syscall record).  Chunks start on
    16-byte boundaries, so every field is read as whole words.  Returns
    (status, pos, ev_n, sc_n, n_chunks, bad_word): pos is where the next
    undecoded chunk starts (a partial chunk stays for the next call).
    """
    n_chunks = 0
    mask_page = ~np.uint64(0xFFF)
    m32 = np.uint64(0xFFFFFFFF)
    m16 = np.uint64(0xFFFF)
    inv = np.uint32(0xFFFFFFFF)
    while n_chunks < max_chunks and pos + W_HDR <= end:
        w0 = buf[pos]
        w3 = buf[pos + 3]
        if (w0 & m32) != CHUNK_MAGIC:
            return BAD_MAGIC, pos, ev_n, sc_n, n_chunks, pos
        if ((w0 >> np.uint64(32)) & m16) != FORMAT_VERSION:
            return BAD_VERSION, pos, ev_n, sc_n, n_chunks, pos
        nrec = np.int64(w3 & m16)
        nsys = np.int64((w3 >> np.uint64(16)) & m16)
        size = W_HDR + nrec * W_PER_REC + nsys * W_PER_SYS
        if size * 8 > CHUNK_MAX or nrec == 0:
            return BAD_LENGTH, pos, ev_n, sc_n, n_chunks, pos
        if pos + size > end:
            break
        c = inv
        c = _crc_word_any(c, w0, tab)
        c = _crc_word_any(c, buf[pos + 1], tab)
        c = _crc_word_any(c, buf[pos + 2], tab)
        c = _crc_u32_any(c, np.uint32(w3 & m32), tab)
        for q in range(pos + W_HDR, pos + size):
            c = _crc_word_any(c, buf[q], tab)
        if np.uint64(c ^ inv) != (w3 >> np.uint64(32)):
            return BAD_CRC, pos, ev_n, sc_n, n_chunks, pos
        vcpu = (w0 >> np.uint64(48)) & m16
        w1 = buf[pos + 1]
        pid = w1 & m32
        ident = (vcpu << np.uint64(16)) | (pid << np.uint64(32))
        icount = buf[pos + 2]
        c_pid[n_chunks] = pid
        c_vcpu[n_chunks] = vcpu
        c_seq[n_chunks] = w1 >> np.uint64(32)
        c_off[n_chunks] = pos
        r = pos + W_HDR
        sbase = r + nrec * W_PER_REC
        for j in range(nsys):
            for k in range(W_PER_SYS):
                sc[sc_n + j, k] = buf[sbase + j * W_PER_SYS + k]
        for j in range(nrec):
            q = r + j * W_PER_REC
            word = buf[q]
            w2 = buf[q + 1]
            kind = word & np.uint64(0xF)
            if kind > MAX_KIND:
                return BAD_KIND, pos, ev_n, sc_n, n_chunks, q
            icount += w2 >> np.uint64(32)
            cnt = w2 & m32
            if kind < ACCESS_KINDS_END:
                addr = word & mask_page
            else:
                addr = word >> np.uint64(12)
                if kind == SYSCALL_KIND:
                    if addr >= np.uint64(nsys):
                        return BAD_SYSCALL_INDEX, pos, ev_n, sc_n, n_chunks, q
                    cnt = np.uint64(sc_n) + addr
                    addr = np.uint64(0)
            flags = (word >> np.uint64(4)) & np.uint64(0xFF)
            ev[ev_n, 0] = kind | (flags << np.uint64(8)) | ident
            ev[ev_n, 1] = addr
            ev[ev_n, 2] = cnt
            ev[ev_n, 3] = icount
            ev_n += 1
        sc_n += nsys
        pos += size
        n_chunks += 1
    return OK, pos, ev_n, sc_n, n_chunks, pos
