"""A swap device, minimal but real: slots that hold a page's write version.

MADV_PAGEOUT writes an exclusive anonymous page to a slot and leaves a swap entry in
its PTE; a fault or a PMD collapse swaps it back in (do_swap_page).  The integrity
oracle survives the round trip because the slot keeps the page's version.  fork
duplicates entries (swap_duplicate), so slots are reference counted.
"""

from dataclasses import dataclass, field

from emu.errors import EmuError


@dataclass
class SwapSpace:
    """nr_slots swap slots; slot 0 is never handed out (a zero swp_entry is invalid)."""

    nr_slots: int = 1 << 20
    version: dict[int, int] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)
    _next: int = 1
    _free: list[int] = field(default_factory=list)
    pswpout: int = 0
    pswpin: int = 0

    def swap_out(self, version: int) -> int:
        """Store one page; returns its slot."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._next >= self.nr_slots:
                raise EmuError("swap space exhausted")
            slot = self._next
            self._next += 1
        self.version[slot] = version
        self.refs[slot] = 1
        self.pswpout += 1
        return slot

    def swap_in(self, slot: int) -> int:
        """Read one page back; returns its version (the slot keeps its other users)."""
        self.pswpin += 1
        return self.version[slot]

    def duplicate(self, slot: int) -> None:
        self.refs[slot] += 1

    def free(self, slot: int) -> None:
        """Drop one reference (swap_free); the slot is reusable at zero."""
        self.refs[slot] -= 1
        if self.refs[slot] == 0:
            del self.refs[slot]
            del self.version[slot]
            self._free.append(slot)

    @property
    def nr_used(self) -> int:
        return len(self.refs)
