"""emu: the MMU and Linux's mTHP policy, driven by a real program under QEMU user-mode."""

__version__ = "0.1.0"
