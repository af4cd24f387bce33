"""Ctrl-C during `emu run` / `emu replay`: keep the work done so far."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class Interrupt:
    """Ctrl-C during a run: stop at the next batch and report what was modelled.

    The first SIGINT kills the guest (`on_interrupt`) and sets `requested`;
    the model finishes the batch it is in, so its state stays whole. A
    second SIGINT aborts at once (KeyboardInterrupt, no summary).  Only the main
    thread can take signals: elsewhere (a sweep's worker thread) it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self.on_interrupt: Callable[[], None] | None = None
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.on_interrupt is not None:
            self.on_interrupt()

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
