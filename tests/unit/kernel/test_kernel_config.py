"""THP configuration: sysfs names, kernel-default preset, CLI strings, TOML."""

import pytest

from emu.errors import EmuError
from emu.kernel.config import ThpConfig, config_from_cli, parse_mthp, parse_thp
from emu.kernel.vma import VM_HUGEPAGE


def test_kernel_defaults_match_transhuge_rst():
    cfg = ThpConfig.kernel_defaults()
    s = cfg.as_sysfs()
    assert s["enabled"] == "always" and s["defrag"] == "madvise" and s["use_zero_page"] == "1"
    assert s["hugepages-2048kB/enabled"] == "inherit"
    for kb in (16, 32, 64, 128, 256, 512, 1024):
        assert s[f"hugepages-{kb}kB/enabled"] == "never"
    assert cfg.anon_orders(False) == 1 << 9


def test_parse_mthp_and_thp():
    assert parse_mthp("64K=always, 2M=inherit,16kB=madvise") == {64: "always", 2048: "inherit",
                                                                  16: "madvise"}
    assert parse_thp("madvise") == "madvise"
    for bad in ("64K", "64K=sometimes", "8K=always", "3K=always", "x=always"):
        with pytest.raises(EmuError):
            parse_mthp(bad)
    with pytest.raises(EmuError):
        parse_thp("yes")


def test_anon_orders_follow_thp_vma_allowable_orders():
    cfg = config_from_cli("madvise", "16K=always,64K=madvise,2M=inherit,128K=inherit")
    # without VM_HUGEPAGE: only 'always' sizes; inherit follows global madvise -> no
    assert cfg.anon_orders(False) == 1 << 2
    assert cfg.anon_orders(True) == 1 << 2 | 1 << 4 | 1 << 5 | 1 << 9
    cfg.enabled = "never"
    assert cfg.anon_orders(True) == 1 << 2 | 1 << 4
    cfg.enabled = "always"
    assert cfg.anon_orders(False) == 1 << 2 | 1 << 5 | 1 << 9
    assert VM_HUGEPAGE  # the flag the caller tests


def test_toml_file(tmp_path):
    p = tmp_path / "thp.toml"
    p.write_text('enabled = "madvise"\nuse_zero_page = 0\n[hugepages]\n"64K" = "always"\n'
                 'pmd = "never"\n')
    cfg = config_from_cli(toml=str(p), mthp="16K=always")
    assert cfg.enabled == "madvise" and not cfg.use_zero_page
    assert cfg.per_size(4) == "always" and cfg.per_size(2) == "always"
    assert cfg.per_size(9) == "never" and cfg.per_size(3) == "never"
    with pytest.raises(EmuError):
        ThpConfig.from_toml(tmp_path / "missing.toml")
    p.write_text("enabled = [")
    with pytest.raises(EmuError):
        ThpConfig.from_toml(p)


def test_cli_overrides_a_base_config_without_changing_it():
    base = ThpConfig(enabled="never", hugepages={64: "always"})
    cfg = config_from_cli("madvise", "16K=always", base=base)
    assert cfg.enabled == "madvise" and cfg.hugepages == {64: "always", 16: "always"}
    assert base.enabled == "never" and base.hugepages == {64: "always"}
