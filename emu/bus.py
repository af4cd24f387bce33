"""One event bus per simulated machine: what happened, published once, named as the
kernel's tracepoints where one exists (``mm_collapse_huge_page``,
``mm_khugepaged_scan_pmd``, ...).

The kernel publishes; the machine, the reports and the tests subscribe.  The bus
keeps exact totals per (name, status, order) for every event ever published; with
``keep`` (tests, debugging) it also keeps the events themselves, up to
``max_events``.  Runs subscribe to what they need instead of keeping history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Subscriber = Callable[["Event"], None]


@dataclass
class Event:
    """One record: the tracepoint's name, the simulated time and its fields."""

    name: str
    t_ns: int
    args: dict[str, Any]


@dataclass
class EventBus:
    """Publish/subscribe by event name ('*' for every event)."""

    max_events: int = 200_000
    keep: bool = False
    events: list[Event] = field(default_factory=list)
    dropped: int = 0
    counts: Counter = field(default_factory=Counter)
    warned: set[str] = field(default_factory=set)
    _subs: dict[str, list[Subscriber]] = field(default_factory=dict)

    def subscribe(self, name: str, fn: Subscriber) -> None:
        self._subs.setdefault(name, []).append(fn)

    def wants(self, name: str) -> bool:
        """Whether anyone listens to name: lets hot paths skip building an event."""
        return name in self._subs or "*" in self._subs

    def publish(self, name: str, t_ns: int, **args: Any) -> None:
        self.counts[(name, args.get("status"), args.get("order"))] += 1
        ev = Event(name, int(t_ns), args)
        for fn in self._subs.get(name, ()):
            fn(ev)
        for fn in self._subs.get("*", ()):
            fn(ev)
        if not self.keep:
            return
        if len(self.events) >= self.max_events:
            self.dropped += 1
            return
        self.events.append(ev)

    def warn_once(self, msg: str, t_ns: int) -> None:
        """pr_warn_once(): published the first time only."""
        if msg not in self.warned:
            self.warned.add(msg)
            self.publish("pr_warn_once", t_ns, msg=msg)

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.name == name]

    def total(self, name: str, status: str | None = None) -> int:
        """How many events of this name (and status) were published, capped list or not."""
        return sum(n for (e, s, _), n in self.counts.items()
                   if e == name and (status is None or s == status))
