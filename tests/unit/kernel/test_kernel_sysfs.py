"""Settings as sysfs writes: one grammar for --sysfs, --config and --at-mark."""

from __future__ import annotations

import pytest

from emu.errors import EmuError
from emu.kernel import sysfs
from emu.kernel.config import ThpConfig
from emu.kernel.khugepaged.knobs import KhugepagedKnobs
from emu.options import model_args
from emu.session import _parse_marks, plan_model


@pytest.mark.parametrize(("text", "target", "name", "value"), [
    ("enabled=madvise", "thp", "enabled", "madvise"),
    ("/sys/kernel/mm/transparent_hugepage/defrag=never", "thp", "defrag", "never"),
    ("use_zero_page=0", "thp", "use_zero_page", False),
    ("hugepages-64kB/enabled=always", "per_size", 64, "always"),
    ("hugepages-2048kB/enabled=inherit", "per_size", 2048, "inherit"),
    ("khugepaged/max_ptes_none=0", "khugepaged", "max_ptes_none", 0),
    ("khugepaged/scan_sleep_millisecs=1", "khugepaged", "scan_sleep_millisecs", 1),
])
def test_sysfs_paths_parse_to_their_setting(text, target, name, value):
    s = sysfs.parse_assignment(text)
    assert (s.target, s.name, s.value) == (target, name, value)


@pytest.mark.parametrize(("text", "message"), [
    ("khugepaged/max_ptes_none=512",
     "--sysfs khugepaged/max_ptes_none=512: max_ptes_none must be 0..511, got 512"),
    ("khugepaged/pages_to_scan=lots", "--sysfs khugepaged/pages_to_scan=lots: takes a number"),
    ("enabled=yes", "--sysfs enabled=yes: one of always, madvise, never"),
    ("hugepages-8kB/enabled=always", "--sysfs hugepages-8kB/enabled: no anonymous THP size"),
    ("khugepaged/max_ptes_nonee=0", "--sysfs khugepaged/max_ptes_nonee: no such file under"),
    ("shmem_enabled=always", "--sysfs shmem_enabled: shmem THP is not modelled"),
    ("khugepaged/full_scans=0", "--sysfs khugepaged/full_scans: read-only"),
    ("enabled", "--sysfs enabled: give PATH=VALUE"),
])
def test_bad_sysfs_writes_name_the_path(text, message):
    with pytest.raises(EmuError) as e:
        sysfs.parse_assignment(text)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_every_knob_has_its_sysfs_file():
    """The data file and KhugepagedKnobs name the same knobs."""
    files = {p.removeprefix("khugepaged/") for p in sysfs.known_paths()
             if p.startswith("khugepaged/")}
    assert files == set(KhugepagedKnobs.names())


def test_config_file_takes_the_same_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('enabled = "madvise"\n"hugepages-16kB/enabled" = "always"\n'
                 '[hugepages-64kB]\nenabled = "always"\n'
                 '[hugepages]\npmd = "never"\n'
                 '[khugepaged]\nmax_ptes_none = 0\nscan_sleep_millisecs = 1\n')
    got = {s.path: s.value for s in sysfs.load_toml(p)}
    assert got == {"enabled": "madvise", "hugepages-16kB/enabled": "always",
                   "hugepages-64kB/enabled": "always", "hugepages-2048kB/enabled": "never",
                   "khugepaged/max_ptes_none": 0, "khugepaged/scan_sleep_millisecs": 1}


@pytest.mark.parametrize(("body", "key"), [
    ("[khugepaged]\nmax_ptes_nonee = 0\n", "key khugepaged/max_ptes_nonee: no such file"),
    ("[transparent_hugepages]\nenabled = 'never'\n", "key transparent_hugepages/enabled"),
    ("enable = 'never'\n", "key enable: no such file"),
    ("[hugepages]\n'8K' = 'always'\n", "key hugepages-8kB/enabled: no anonymous THP size"),
])
def test_unknown_config_keys_are_errors_naming_them(tmp_path, body, key):
    p = tmp_path / "c.toml"
    p.write_text(body)
    with pytest.raises(EmuError, match=f"^--config {p}: {key}"):
        sysfs.load_toml(p)
    with pytest.raises(EmuError):
        ThpConfig.from_toml_dict({"enable": "never"})


def test_plan_stacks_file_cli_and_sysfs_and_knobs_override_the_preset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('enabled = "never"\n[khugepaged]\nmax_ptes_none = 7\npages_to_scan = 64\n')
    args = model_args(config=str(p), thp="madvise", khugepaged="fast",
                      sysfs=["hugepages-64kB/enabled=always", "khugepaged/max_ptes_none=0"])
    plan = plan_model("x86_64", args)
    assert plan.config.enabled == "madvise"                    # --thp after the file
    assert plan.config.per_size(4) == "always"
    knobs = KhugepagedKnobs.preset("fast")
    for s in plan.knobs:
        s.apply(knobs=knobs)
    assert (knobs.max_ptes_none, knobs.pages_to_scan, knobs.scan_sleep_millisecs) == (0, 64, 1)


def test_at_mark_takes_old_forms_and_sysfs_paths():
    marks = _parse_marks(["2:thp=always", "2:mthp=64K=always", "3:max_ptes_none=0",
                          "3:defrag=1", "4:defrag=never", "4:khugepaged/pages_to_scan=8",
                          "4:hugepages-32kB/enabled=madvise"], no_hw=False)
    flat = [(m, s.path, s.value) for m, ss in marks for s in ss]
    assert flat == [(2, "enabled", "always"), (2, "hugepages-64kB/enabled", "always"),
                    (3, "khugepaged/max_ptes_none", 0), (3, "khugepaged/defrag", 1),
                    (4, "defrag", "never"), (4, "khugepaged/pages_to_scan", 8),
                    (4, "hugepages-32kB/enabled", "madvise")]
    with pytest.raises(EmuError, match="^--at-mark 2:khugepaged/max_ptes_none=600: max_ptes_"):
        _parse_marks(["2:max_ptes_none=600"], no_hw=False)
