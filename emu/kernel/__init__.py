"""The kernel model: VMAs, buddy, faults with mTHP order choice, fork/COW, zap,
khugepaged and collapse.  ``Kernel`` is the entry point emu.machine uses;
see docs/kernel.md."""


def __getattr__(name: str):
    # lazy, so that importing one submodule (e.g. the collapse core) stays cheap
    if name == "Kernel":
        from emu.kernel.kernel import Kernel
        return Kernel
    if name in ("ThpConfig", "parse_thp", "parse_mthp", "config_from_cli"):
        from emu.kernel import config
        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["Kernel", "ThpConfig", "config_from_cli", "parse_mthp", "parse_thp"]
