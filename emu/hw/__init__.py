"""The hardware model: TLBs, paging-structure caches, the walker with A/D updates, flushes.

Hot paths are numba kernels (emu.hw.kernels) over per-vCPU numpy arrays; the
:class:`Hardware` object owns them and exposes replay, flush primitives and
counters.  emu.hw never imports emu.kernel.
"""

from emu.hw.hardware import FLUSH_KINDS, Fault, Hardware, tlbi_range_pages

__all__ = ["FLUSH_KINDS", "Fault", "Hardware", "tlbi_range_pages"]
