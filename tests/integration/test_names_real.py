"""Names on real dynamic programs under real QEMU: file mappings by the path the guest
opened, the program and its interpreter placed where QEMU loaded them and named by
path (no `[implicit]` areas); a replay of the recording names them the same."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from bundled import REPO, run_emu

pytestmark = pytest.mark.integration

SRC = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 1;
    volatile const char *p = mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    printf("%d\n", p[0]);
    return 0;
}
"""
CC = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
INTERP = {"x86_64": "/lib64/ld-linux-x86-64.so.2", "arm64": "/lib/ld-linux-aarch64.so.1"}


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_dynamic_program_names(arch: str, tmp_path: Path) -> None:
    if shutil.which(CC[arch]) is None or not (REPO / "build" / "libemu.so").exists():
        pytest.skip(f"{CC[arch]} or the plugin missing (bash setup.sh)")
    prog = tmp_path / "dyn"
    subprocess.run([CC[arch], "-O1", "-fPIE", "-pie", "-o", str(prog), "-x", "c", "-"],
                   input=SRC, text=True, check=True)
    data = tmp_path / "data.txt"
    data.write_text("x" * 5000)
    js, rec, js2 = tmp_path / "r.json", tmp_path / "r.emu", tmp_path / "r2.json"
    p = run_emu("run", "-v", "--json", str(js), "--record", str(rec), "--", str(prog), str(data))
    res = json.loads(js.read_text())
    names = {v["name"] for v in res["vmas"]}
    files = {s["path"] for s in res["syscalls"] if "path" in s}
    assert str(data) in files and str(data) in names
    assert "[implicit]" not in names and all(v["kind"] != "implicit" for v in res["vmas"])
    assert any(n.endswith("libc.so.6") for n in names)
    snap = next(s for s in res["thpmaps"] if s["at"] == "exit")
    objects = {v["name"] for v in snap["vmas"]}
    assert {str(prog), INTERP[arch], str(data)} <= objects
    assert f'"{data}"' in p.stderr and f" {INTERP[arch]}" in p.stderr
    anon = sum(v for k, v in snap["rollup"].items() if k.startswith("anon-") and "-cont-" not in k)
    file = sum(v for k, v in snap["rollup"].items() if k.startswith("file-") and "-cont-" not in k)
    assert anon + file == snap["rss_kB"]
    run_emu("replay", "-q", "--json", str(js2), str(rec))
    again = json.loads(js2.read_text())
    assert [(v["start"], v["name"]) for v in again["vmas"]] == \
        [(v["start"], v["name"]) for v in res["vmas"]]
