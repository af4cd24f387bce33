"""Read the plugin's chunk stream (live FIFO, raw file or recording) as Batches.

Batch boundaries depend only on the bytes (every ``batch_chunks`` chunks, and
the rest at the end), never on how reads happened to arrive, so a replay
yields exactly the batches the live run yielded.
"""

import json
import os
import queue
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
import zstandard

from emu.errors import EmuError
from emu.trace import _decode as dk
from emu.trace.events import EVENT, SYSCALL_REC, Batch
from emu.trace.format import (
    CHUNK_MAX,
    END_MAGIC,
    FILE_END,
    FILE_HDR,
    FILE_MAGIC,
    FORMAT_VERSION,
    MAX_REC,
    MAX_SYS,
)

BATCH_CHUNKS = 512           # up to 130 048 events per batch
READ_SIZE = 1 << 20
FEED_MIN = 256 << 10         # bytes gathered before a decode call
PIPE_WAIT = 0.001            # seconds; a 1 MiB pipe takes ~10 ms to fill at full rate
QUEUE_DEPTH = 4
FEED_BLOCK = 1 << 14         # compressed bytes per zstd feed: damage is reported close by


class TraceError(EmuError):
    """The stream or recording is damaged: truncated, bit-flipped, or out of order."""


_MESSAGES = {
    dk.BAD_MAGIC: "bad chunk magic",
    dk.BAD_VERSION: f"unsupported chunk version (this emu reads version {FORMAT_VERSION})",
    dk.BAD_LENGTH: "impossible chunk length",
    dk.BAD_CRC: "chunk CRC mismatch",
    dk.BAD_KIND: "unknown record kind",
    dk.BAD_SYSCALL_INDEX: "syscall record index out of range",
}


def read_meta(path: str | os.PathLike) -> dict:
    """The metadata a recording was written with (arch, binary, args, ...)."""
    with open(path, "rb") as f:
        return _read_file_header(f, str(path))


def _read_file_header(f: BinaryIO, name: str) -> dict:
    raw = f.read(FILE_HDR.itemsize)
    if len(raw) < FILE_HDR.itemsize or not raw.startswith(FILE_MAGIC):
        raise TraceError(f"{name}: not an emu recording (bad header at byte 0)")
    hdr = np.frombuffer(raw, dtype=FILE_HDR)[0]
    if int(hdr["version"]) != FORMAT_VERSION:
        raise TraceError(f"{name}: recording version {int(hdr['version'])} at byte 8, "
                         f"this emu reads version {FORMAT_VERSION}")
    if int(hdr["zero"]):
        raise TraceError(f"{name}: corrupt header at byte 20 (reserved field not zero)")
    meta_len = int(hdr["meta_len"])
    meta = f.read(meta_len)
    if len(meta) != meta_len:
        raise TraceError(f"{name}: truncated at byte {FILE_HDR.itemsize + len(meta)} "
                         "(inside the metadata)")
    if zlib.crc32(meta) != int(hdr["meta_crc"]):
        raise TraceError(f"{name}: corrupt metadata at byte {FILE_HDR.itemsize} "
                         f"(CRC mismatch over its {meta_len} bytes)")
    try:
        return json.loads(meta.decode()) if meta_len else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TraceError(f"{name}: corrupt metadata at byte {FILE_HDR.itemsize}: {e}") from None


class _ZstdSource:
    """File-like readinto() over the zstd frame of a recording, naming file offsets.

    The end record gives the frame's length and CRC-32: a recording cut short
    lacks it, and damage zstd would decode without complaint fails the CRC.
    """

    def __init__(self, f: BinaryIO, name: str, base: int, partial: bool = False):
        self._f, self._name, self._fpos, self._base = f, name, base, base
        self._d = zstandard.ZstdDecompressor().decompressobj()
        # Decompressed bytes not yet handed out, as a view: slicing a view copies
        # nothing (slicing the bytes copied the rest of each output on every read).
        self._pending = memoryview(b"")
        self._crc = 0
        # Set when a recording without its end record is read anyway (partial):
        # a message saying where it was cut.
        self.cut: str | None = None
        size = f.seek(0, os.SEEK_END)
        end_at = size - FILE_END.itemsize
        raw = b""
        if end_at >= base:
            f.seek(end_at)
            raw = f.read(FILE_END.itemsize)
        if len(raw) != FILE_END.itemsize or not raw.startswith(END_MAGIC):
            if partial:
                self.cut = f"{name}: truncated at file byte {size} (no end record)"
                self._frame_crc = None
                self._left = size - base
                f.seek(base)
                return
            raise TraceError(f"{name}: truncated at file byte {size} (no end record; "
                             "the recording was cut short: `emu replay --partial` replays "
                             "what it holds)")
        end = np.frombuffer(raw, dtype=FILE_END)[0]
        if int(end["frame_len"]) != end_at - base or int(end["zero"]):
            raise TraceError(f"{name}: corrupt end record at file byte {end_at} "
                             f"(frame of {int(end['frame_len'])} bytes, file holds "
                             f"{end_at - base})")
        self._frame_crc = int(end["frame_crc"])
        self._left = end_at - base
        f.seek(base)

    def readinto(self, mv: memoryview) -> int:
        """Fill mv with as much of the decompressed stream as is at hand (0: its end)."""
        got = 0
        while got < len(mv):
            if got and not self._pending and not self._left:
                break                    # the end check runs on the next call, once
            n = self._readinto_some(mv[got:])
            if not n:
                break
            got += n
        return got

    def _readinto_some(self, mv: memoryview) -> int:
        while not self._pending:
            if not self._left:
                self._check_end()
                return 0
            # Small feeds keep the reported offset of zstd damage close.
            block = self._f.read(min(FEED_BLOCK, self._left))
            if not block:
                raise TraceError(f"{self._name}: truncated at file byte {self._fpos} "
                                 "(compressed stream ends early)")
            self._left -= len(block)
            self._crc = zlib.crc32(block, self._crc)
            if self.cut is not None and self._d.eof:
                return 0      # a partial end record after a whole frame
            if self._d.eof:
                # Bytes after the frame's end (recordings written before 2026-12-02 end
                # with an empty second frame): the CRC covers them, there is nothing
                # to decode, and the decompressor takes no input after its frame.
                self._fpos += len(block)
                continue
            try:
                self._pending = memoryview(self._d.decompress(block))
            except zstandard.ZstdError as e:
                if self.cut is not None:
                    return 0  # the cut tail: what came before it stands
                raise TraceError(f"{self._name}: corrupt compressed data detected at file byte "
                                 f"{self._fpos + len(block)} ({e})") from None
            self._fpos += len(block)
        n = min(len(mv), len(self._pending))
        mv[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _check_end(self) -> None:
        if self.cut is not None:
            return
        if self._crc != self._frame_crc:
            raise TraceError(f"{self._name}: corrupt compressed data from file byte "
                             f"{self._base} to {self._fpos} (CRC mismatch)")
        if not self._d.eof:
            raise TraceError(f"{self._name}: truncated at file byte {self._fpos} "
                             "(compressed stream ends early)")


def _open_source(source) -> tuple[object, str, bool]:
    """(readable, name, is_recording) for a path, FIFO or binary file object."""
    if isinstance(source, str | os.PathLike):
        name = str(source)
        try:
            st = os.stat(name)
        except OSError as e:
            raise EmuError(f"{name}: {e.strerror}") from None
        f = open(name, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        if not stat.S_ISFIFO(st.st_mode):
            head = f.read(len(FILE_MAGIC))
            f.seek(0)
            if head == FILE_MAGIC:
                return f, name, True
        return f, name, False
    return source, getattr(source, "name", "<stream>"), False


class _Decoder:
    """Incremental decoder state: buffer, partial batch, sequence numbers.

    Chunk sizes are multiples of 16 bytes, so chunks start on word
    boundaries of the buffer and the kernel reads whole u64 words.
    """

    def __init__(self, name: str, batch_chunks: int):
        self.name = name
        self.batch_chunks = batch_chunks
        self.buf = np.empty(READ_SIZE + CHUNK_MAX, dtype=np.uint8)
        self.words = self.buf.view(np.uint64)
        self.start = self.end = 0  # bytes; start is always a chunk boundary
        self.base = 0              # stream offset of buf[0]
        self.last_seq: dict[int, int] = {}
        self.cut_chunk: int | None = None   # stream offset of a dropped partial chunk
        self._new_batch()

    def _new_batch(self) -> None:
        n = self.batch_chunks
        self.ev = np.empty(n * MAX_REC, dtype=EVENT)
        self.sc = np.empty(n * MAX_SYS, dtype=SYSCALL_REC)
        self.ev_words = self.ev.view(np.uint64).reshape(-1, EVENT.itemsize // 8)
        self.sc_words = self.sc.view(np.uint64).reshape(-1, SYSCALL_REC.itemsize // 8)
        self.ev_n = self.sc_n = self.chunks = 0
        self.c_pid = np.empty(n, np.uint64)
        self.c_vcpu = np.empty(n, np.uint64)
        self.c_seq = np.empty(n, np.uint64)
        self.c_off = np.empty(n, np.int64)

    def space(self) -> memoryview:
        """Where the next read should land (compacting first if needed)."""
        if self.end + CHUNK_MAX > len(self.buf) or self.start == self.end:
            n = self.end - self.start
            self.buf[:n] = self.buf[self.start:self.end]
            self.base += self.start
            self.start, self.end = 0, n
        return memoryview(self.buf)[self.end:]

    def feed(self, n: int) -> Iterator[Batch]:
        """Account n freshly read bytes; yield every batch they complete."""
        self.end += n
        while True:
            want = self.batch_chunks - self.chunks
            lo = self.chunks
            status, pos, self.ev_n, self.sc_n, got, bad = dk.decode_chunks(
                self.words, self.start // 8, self.end // 8, want, dk.CRC_TABLES,
                self.ev_words, self.ev_n, self.sc_words, self.sc_n,
                self.c_pid[lo:], self.c_vcpu[lo:], self.c_seq[lo:], self.c_off[lo:])
            if status != dk.OK:
                raise TraceError(f"{self.name}: {_MESSAGES[status]} at stream byte "
                                 f"{self.base + 8 * bad}")
            self._check_seq(lo, lo + got)
            self.chunks += got
            self.start = 8 * pos
            if self.chunks < self.batch_chunks:
                return
            yield self._take()

    def finish(self, partial: bool = False) -> Iterator[Batch]:
        """The last batch; a partial chunk at the end is an error unless partial."""
        if self.end != self.start and partial:
            self.cut_chunk = self.base + self.start
        elif self.end != self.start:
            raise TraceError(f"{self.name}: truncated chunk at stream byte "
                             f"{self.base + self.start} ({self.end - self.start} bytes left)")
        if self.chunks:
            yield self._take()

    def _take(self) -> Batch:
        b = Batch(self.ev[:self.ev_n], self.sc[:self.sc_n])
        self._new_batch()
        return b

    def _check_seq(self, lo: int, hi: int) -> None:
        """Every (pid, vCPU) numbers its chunks 0, 1, 2...: a gap is a lost chunk."""
        if hi == lo:
            return
        keys = (self.c_pid[lo:hi] << np.uint64(16)) | self.c_vcpu[lo:hi]
        seqs = self.c_seq[lo:hi].astype(np.int64)
        for key in np.unique(keys).tolist():
            idx = np.flatnonzero(keys == key)
            expect = np.arange(len(idx)) + self.last_seq.get(key, -1) + 1
            bad = np.flatnonzero(seqs[idx] != expect)
            if len(bad):
                i = int(idx[bad[0]])
                raise TraceError(
                    f"{self.name}: chunk out of sequence at stream byte "
                    f"{self.base + 8 * int(self.c_off[lo + i])} (pid {key >> 16} vcpu "
                    f"{key & 0xFFFF}: expected {int(expect[bad[0]])}, got {int(seqs[i])})")
            self.last_seq[key] = int(seqs[idx[-1]])


def _produce(src, name: str, is_rec: bool, recorder, batch_chunks: int,
             put, partial: bool = False, warn=None) -> None:
    """Read, record and decode the whole stream, handing batches to `put`."""
    for b in _sync_batches(src, name, is_rec, recorder, batch_chunks, partial, warn):
        put(b)


def iter_batches(source, *, record: str | os.PathLike | None = None, force: bool = False,
                 meta: dict | None = None, background: bool = True,
                 batch_chunks: int = BATCH_CHUNKS, partial: bool = False,
                 warn: Callable[[str], None] | None = None) -> Iterator[Batch]:
    """Yield Batches from a live FIFO, a raw chunk file, a recording, or a file object.

    record: also write the raw bytes, zstd-compressed, to this recording
    (refused if it exists unless force).  background: read and decode in a
    thread with a bounded queue so the caller's model runs in parallel.
    Damage raises TraceError naming the byte offset.  partial: a recording
    cut short (no end record) yields its whole chunks and calls warn with
    one line saying where it ends, instead of raising.
    """
    from emu.trace.writer import Recorder  # local: writer imports reader's names

    recorder = Recorder(record, meta=meta, force=force) if record is not None else None
    try:
        src, name, is_rec = _open_source(source)
    except BaseException:
        if recorder is not None:
            recorder.close()
        raise
    owns = src is not source
    try:
        if not background:
            yield from _sync_batches(src, name, is_rec, recorder, batch_chunks, partial, warn)
        else:
            yield from _threaded_batches(src, name, is_rec, recorder, batch_chunks, partial,
                                         warn)
    finally:
        if recorder is not None:
            recorder.close()
        if owns:
            src.close()


def _sync_batches(src, name, is_rec, recorder, batch_chunks, partial=False,
                  warn=None) -> Iterator[Batch]:
    reader = src
    zsrc = None
    if is_rec:
        _read_file_header(src, name)
        reader = zsrc = _ZstdSource(src, name, src.tell(), partial=partial)
    dec = _Decoder(name, batch_chunks)
    eof = False
    while not eof:
        # A live FIFO hands over each 4 KiB chunk as QEMU writes it; decoding per
        # read would cost more than the decoding itself, so gather FEED_MIN bytes
        # first, pausing briefly when the pipe runs dry so QEMU can fill it.
        mv = dec.space()
        want = min(FEED_MIN, len(mv))
        got = 0
        while got < want:
            n = reader.readinto(mv[got:])
            if not n:
                eof = True
                break
            got += n
            if n < FEED_MIN // 4 and not is_rec:
                time.sleep(PIPE_WAIT)      # a live stream ran dry (a recording never waits)
        if not got:
            break
        if recorder is not None:
            recorder.write(mv[:got])
        yield from dec.feed(got)
    cut = zsrc is not None and zsrc.cut is not None
    yield from dec.finish(partial=cut)
    if cut and warn is not None:
        dropped = (f", a partial chunk at stream byte {dec.cut_chunk} dropped"
                   if dec.cut_chunk is not None else "")
        warn(f"{zsrc.cut}; replayed the {dec.base + dec.start:,} stream bytes before the"
             f" cut{dropped}: the rest of the run is missing")


_END = object()


def _threaded_batches(src, name, is_rec, recorder, batch_chunks, partial=False,
                      warn=None) -> Iterator[Batch]:
    q: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stopped

    def run() -> None:
        try:
            _produce(src, name, is_rec, recorder, batch_chunks, put, partial, warn)
            put(_END)
        except _Stopped:
            pass
        except BaseException as e:  # handed to the consumer, re-raised there
            try:
                put(e)
            except _Stopped:
                pass

    t = threading.Thread(target=run, name="emu-trace-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


class _Stopped(Exception):
    pass


def read_all(source, **kw) -> Batch:
    """Every event of a (small) stream in one Batch, syscall indexes rebased."""
    evs, scs, n_sc = [], [], 0
    for b in iter_batches(source, **kw):
        e = b.events.copy()
        e["count"][e["kind"] == 3] += n_sc
        evs.append(e)
        scs.append(b.syscalls)
        n_sc += len(b.syscalls)
    if not evs:
        return Batch(np.empty(0, EVENT), np.empty(0, SYSCALL_REC))
    return Batch(np.concatenate(evs), np.concatenate(scs))


__all__ = ["BATCH_CHUNKS", "TraceError", "iter_batches", "read_all", "read_meta"]
