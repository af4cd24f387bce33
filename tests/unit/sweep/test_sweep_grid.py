"""GRID.toml parsing: the cells it describes, and one clear error for each mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emu.errors import EmuError
from emu.sweep.grid import flags_for, load_grid
from emu.sweep.plan import cell_key

EMU = [sys.executable, "-m", "emu.cli"]


def write_grid(tmp_path: Path, text: str) -> Path:
    for arch in ("x86_64", "arm64"):
        (tmp_path / f"rand-{arch}.trace").write_bytes(b"x")
    g = tmp_path / "grid.toml"
    g.write_text(text)
    return g


BASIC = """
[[workload]]
name = "rand"
recording = "rand-{arch}.trace"

[grid]
thp = ["always", "never"]
collapse_algo = ["v19", "v5"]
ns_per_insn = 0.25
"""


def test_product_of_grid_lists_on_every_arch(tmp_path):
    g = load_grid(write_grid(tmp_path, BASIC))
    assert [(w.name, w.arch) for w in g.workloads] == [("rand", "x86_64"), ("rand", "arm64")]
    assert g.workloads[0].recording == tmp_path / "rand-x86_64.trace"
    assert [c.label for c in g.configs] == [
        "collapse_algo=v19 ns_per_insn=0.25 thp=always",
        "collapse_algo=v5 ns_per_insn=0.25 thp=always",
        "collapse_algo=v19 ns_per_insn=0.25 thp=never",
        "collapse_algo=v5 ns_per_insn=0.25 thp=never"]
    assert g.output == tmp_path / "grid-sweep" and g.table.name == "results.parquet"
    assert g.retries == 2


def test_explicit_configs_times_grid_and_per_arch_values(tmp_path):
    g = load_grid(write_grid(tmp_path, """
[sweep]
arch = "arm64"
table = "out.csv"
[[workload]]
recording = "rand-{arch}.trace"
[[config]]
name = "base"
[[config]]
name = "khugepaged"
khugepaged = "fast"
at_mark = ["1:max_ptes_none=0", "2:thp=always"]
profile = { x86_64 = "zen4", arm64 = "neoverse_v2" }
[grid]
thp = ["always", "never"]
"""))
    assert [(w.name, w.arch) for w in g.workloads] == [("rand", "arm64")]
    assert g.table.name == "out.csv"
    assert [c.label for c in g.configs] == ["base thp=always", "base thp=never",
                                            "khugepaged thp=always", "khugepaged thp=never"]
    values = g.configs[2].resolved("arm64")
    assert values["profile"] == "neoverse_v2"
    assert flags_for(values) == ["--at-mark", "1:max_ptes_none=0", "--at-mark", "2:thp=always",
                                 "--khugepaged", "fast", "--profile", "neoverse_v2",
                                 "--thp", "always"]


def test_flags_for_every_key():
    assert flags_for({"no_hw": True, "memory": "512M", "fragment": 0.5, "mthp": "64K=always",
                      "ns_per_insn": 1}) == [
        "--fragment", "0.5", "--memory", "512M", "--mthp", "64K=always", "--no-hw",
        "--ns-per-insn", "1"]
    assert flags_for({"no_hw": False, "at_mark": "2:thp=always"}) == ["--at-mark", "2:thp=always"]


@pytest.mark.parametrize("text, message", [
    ("[[workload]]\nrecording = 'rand-{arch}.trace'\n[grid]\nthp = ['sometimes']",
     "[grid]: thp = 'sometimes' is not a valid value (one of always, madvise, never)"),
    ("[[workload]]\nrecording = 'rand-{arch}.trace'\n[grid]\nmax_ptes = [0]",
     "[grid]: unknown key 'max_ptes'"),
    ("[[workload]]\nrecording = 'missing-{arch}.trace'",
     "missing-x86_64.trace: no such file"),
    ("[[workload]]\nrecording = 'rand-{arch}.trace'\nbinary = 'x'",
     "[[workload]] #1: give either recording or binary"),
    ("[sweep]\nthreads = 4\n[[workload]]\nrecording = 'rand-{arch}.trace'",
     "[sweep]: unknown key 'threads'"),
    ("[sweep]\narch = ['riscv']\n[[workload]]\nrecording = 'rand-{arch}.trace'",
     "[sweep] arch ['riscv']: give x86_64, arm64 or a list of them"),
    ("[[workload]]\nrecording = 'rand-{arch}.trace'\n[grid]\nkhugepaged = ['slow']",
     "khugepaged = 'slow' is not a valid value"),
    ("[[workload]]\nrecording = 'rand-{arch}.trace'\n[grid]\nthp = []", "[grid] thp: empty list"),
    ("[[workload]]\nrecording = 'rand-{arch}.trace'\n[[config]]\nthp='never'\n[grid]\nthp='always'",
     "thp is set both in [[config]] and [grid]"),
    ("[[workload]]\nrecording = 'rand-{arch}.trace'\n[grid]\nprofile = [{sparc = 'x'}]",
     "a per-architecture value is a table"),
    ("", "no [[workload]]"),
    ("[[workload]\n", "not TOML"),
])
def test_bad_grids_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(EmuError) as e:
        load_grid(write_grid(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_key_follows_content_not_paths():
    a = cell_key("abc", ["--thp", "never"], None)
    assert a == cell_key("abc", ["--thp", "never"], None)
    assert a != cell_key("abd", ["--thp", "never"], None)
    assert a != cell_key("abc", ["--thp", "always"], None)
    t1 = cell_key("abc", ["--config", "/a/x.toml"], "enabled = 'never'")
    assert t1 == cell_key("abc", ["--config", "/b/y.toml"], "enabled = 'never'")
    assert t1 != cell_key("abc", ["--config", "/a/x.toml"], "enabled = 'always'")


def test_command_reports_a_bad_grid_on_one_line(tmp_path):
    g = write_grid(tmp_path, "[[workload]]\nrecording = 'rand-{arch}.trace'\n[grid]\nthp = 1")
    p = subprocess.run([*EMU, "sweep", str(g)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.splitlines() == ["emu: [grid]: thp = 1 is not a valid value "
                                     "(one of always, madvise, never)"]


def test_command_reports_a_file_that_is_no_recording(tmp_path):
    g = write_grid(tmp_path, "[[workload]]\nrecording = 'rand-{arch}.trace'")
    p = subprocess.run([*EMU, "sweep", str(g)], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1 and "not an emu recording" in p.stderr
