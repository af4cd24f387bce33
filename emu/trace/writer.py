"""Write the chunk stream: recordings (zstd) and synthetic streams for tests.

A recording is the raw bytes the plugin produced, unchanged, so replaying it
goes through the very decoder the live run used.
"""

import json
import os
import zlib
from pathlib import Path

import numpy as np
import zstandard

from emu.errors import EmuError
from emu.trace._decode import crc32c_bytes
from emu.trace.events import FETCH, READ, SYSCALL, WRITE
from emu.trace.format import (
    CHUNK_HDR,
    CHUNK_MAGIC,
    CHUNK_MAX,
    END_MAGIC,
    FILE_END,
    FILE_HDR,
    FILE_MAGIC,
    FORMAT_VERSION,
    HDR_SIZE,
    REC,
    REC_SIZE,
    SYS,
    SYS_SIZE,
)

ZSTD_LEVEL = 3  # ~10x smaller streams at several hundred MB/s on one core


class _Checked:
    """The compressed frame on its way to the file: length and CRC-32 as written."""

    def __init__(self, f) -> None:
        self._f = f
        self.length = 0
        self.crc = 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


class Recorder:
    """Write a recording: file header with `meta`, then the raw stream zstd-compressed.

    Refuses to overwrite an existing file unless force=True, so nothing the
    user recorded is lost without asking.
    """

    def __init__(self, path: str | os.PathLike, meta: dict | None = None, force: bool = False):
        self.path = Path(path)
        try:
            self._f = open(self.path, "wb" if force else "xb")  # noqa: SIM115
        except FileExistsError:
            raise EmuError(f"{self.path}: already exists (use --force to overwrite)") from None
        except OSError as e:
            raise EmuError(f"{self.path}: cannot write: {e.strerror}") from None
        meta_b = json.dumps(meta or {}, sort_keys=True).encode()
        hdr = np.zeros(1, FILE_HDR)
        hdr["magic"], hdr["version"], hdr["meta_len"] = FILE_MAGIC, FORMAT_VERSION, len(meta_b)
        hdr["meta_crc"] = zlib.crc32(meta_b)
        self._f.write(hdr.tobytes() + meta_b)
        self._frame = _Checked(self._f)
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        self._z = cctx.stream_writer(self._frame, closefd=False)
        self.raw_bytes = 0

    def write(self, data) -> None:
        self._z.write(data)
        self.raw_bytes += len(data)

    def close(self) -> None:
        if self._f.closed:
            return
        self._z.close()            # ends the frame (a flush first would add an empty one)
        end = np.zeros(1, FILE_END)
        end["magic"], end["frame_len"], end["frame_crc"] = (END_MAGIC, self._frame.length,
                                                            self._frame.crc)
        self._f.write(end.tobytes())
        self._f.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_recording(path: str | os.PathLike, raw: bytes, meta: dict | None = None,
                    force: bool = False) -> None:
    """Store an already captured raw stream as a recording."""
    with Recorder(path, meta=meta, force=force) as r:
        r.write(raw)


def encode_chunk(pid: int, vcpu: int, seq: int, icount0: int, recs: np.ndarray,
                 sys: np.ndarray) -> bytes:
    """One chunk exactly as the plugin writes it (recs: REC rows, sys: SYS rows)."""
    size = HDR_SIZE + len(recs) * REC_SIZE + len(sys) * SYS_SIZE
    if size > CHUNK_MAX or len(recs) == 0:
        raise ValueError(f"chunk of {len(recs)} records and {len(sys)} syscalls does not fit")
    h = np.zeros(1, CHUNK_HDR)
    h["magic"], h["version"], h["vcpu"], h["pid"], h["seq"] = (
        CHUNK_MAGIC, FORMAT_VERSION, vcpu, pid, seq)
    h["nrec"], h["nsys"] = len(recs), len(sys)
    h["icount0"] = icount0
    body = recs.tobytes() + sys.tobytes()
    head = h.tobytes()
    h["crc"] = crc32c_bytes(head[:HDR_SIZE - 4] + body)
    return h.tobytes() + body


def encode_events(events: np.ndarray, syscalls: np.ndarray) -> bytes:
    """Encode EVENT rows (with SYSCALL counts indexing `syscalls`) as a chunk stream.

    The inverse of the reader, for tests and synthetic workloads: consecutive
    events of one (pid, vCPU) share chunks, as the plugin's buffers do.
    """
    out = []
    seqs: dict[tuple[int, int], int] = {}
    n = len(events)
    i = 0
    while i < n:
        pid, vcpu = int(events["pid"][i]), int(events["vcpu"][i])
        recs, sys = [], []
        first_icount = last_icount = int(events["icount"][i])
        size = HDR_SIZE
        while i < n and int(events["pid"][i]) == pid and int(events["vcpu"][i]) == vcpu:
            e = events[i]
            kind, icount = int(e["kind"]), int(e["icount"])
            need = REC_SIZE + (SYS_SIZE if kind == SYSCALL else 0)
            if recs and (size + need > CHUNK_MAX or icount - last_icount > 0xFFFFFFFF):
                break
            if kind == SYSCALL:
                word = (len(sys) << 12) | kind
                sys.append(syscalls[int(e["count"])])
                count = 1
            elif kind in (READ, WRITE, FETCH):
                word = int(e["addr"]) | (int(e["pad"]) << 4) | kind
                count = int(e["count"])
            else:
                word = (int(e["addr"]) << 12) | kind
                count = int(e["count"])
            recs.append((word, count, icount - last_icount))
            last_icount = icount
            size += need
            i += 1
        seq = seqs.get((pid, vcpu), 0)
        seqs[(pid, vcpu)] = seq + 1
        r = np.array(recs, dtype=REC)
        s = np.array([(x["nr"], x["args"], x["ret"]) for x in sys], dtype=SYS)
        out.append(encode_chunk(pid, vcpu, seq, first_icount, r, s))
    return b"".join(out)
