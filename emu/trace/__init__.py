"""The event stream: the plugin's chunk format, the reader, recordings.

    iter_batches(source, record=None, force=False, meta=None) -> Iterator[Batch]
    read_all(source) -> Batch            (small streams, tests)
    read_meta(recording) -> dict
    Recorder(path, meta=None, force=False), encode_events(events, syscalls) -> bytes
    TraceError (an EmuError): damaged input, message names the byte offset.
"""

from emu.trace.reader import BATCH_CHUNKS, TraceError, iter_batches, read_all, read_meta
from emu.trace.writer import Recorder, encode_events, write_recording

__all__ = ["BATCH_CHUNKS", "Recorder", "TraceError", "encode_events", "iter_batches",
           "read_all", "read_meta", "write_recording"]
