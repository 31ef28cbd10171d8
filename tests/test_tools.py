"""The developer tools in tools/: each parses --help on a CPU, is listed in tools/README.md, and
the two that need no GPU compute what they claim."""

from __future__ import annotations

import csv
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
FILES = sorted(p for p in TOOLS.iterdir() if p.is_file() and p.name != "README.md")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"specsample_tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_tool_is_listed_in_the_readme():
    assert FILES, "tools/ holds no tools"
    readme = (TOOLS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in FILES if f"`{p.name}`" not in readme]
    assert not missing, f"tools/README.md does not list {missing}"


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".py"], ids=lambda p: p.name)
def test_python_tool_parses_help(path):
    r = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: tools/" + path.name), r.stdout


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".sh"], ids=lambda p: p.name)
def test_shell_tool_parses_and_prints_help(path):
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    r = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and path.name in r.stdout, r.stdout + r.stderr


def test_only_python_and_shell_tools():
    assert {p.suffix for p in FILES} <= {".py", ".sh"}


def _cell(backend: str, samples: list[float], host_syncs: int = 0) -> dict:
    return {
        "backend": backend,
        "mode": "random",
        "dtype": "float32",
        "batch": 1,
        "k": 4,
        "vocab": 32000,
        "accept": "high",
        "status": "ok",
        "launches": {"host_syncs": host_syncs},
        "timing": {"median": sorted(samples)[len(samples) // 2], "samples": samples},
        "graph": None,
    }


def test_disturbed_cells_flags_runs_of_slow_samples_only():
    tool = _load("disturbed_cells")
    clean = [8e-6 + 1e-7 * (i % 5) for i in range(100)]
    one_hiccup = clean[:50] + [300e-6] + clean[51:]
    burst = [400e-6, 300e-6, 200e-6, 100e-6] + clean[4:]
    lifted = [120e-6] * 60 + clean[:40]
    doc = {
        "cells": [
            _cell("clean", clean),
            _cell("hiccup", one_hiccup),
            _cell("burst", burst),
            _cell("lifted", lifted),
            _cell("syncs", burst, host_syncs=5),
            {"backend": "skipped", "status": "skipped"},
        ]
    }
    found, examined = tool.disturbed_cells(doc)
    assert examined == 4
    names = {d.cell.split()[0]: d for d in found}
    assert set(names) == {"burst", "lifted"}
    assert names["burst"].disturbed == 4 and not names["burst"].median_lifted
    assert names["lifted"].disturbed == 60 and names["lifted"].median_lifted


def test_disturbed_cells_needs_samples(tmp_path):
    tool = _load("disturbed_cells")
    cell = _cell("x", [1e-5] * 10)
    del cell["timing"]["samples"]
    path = tmp_path / "r.json"
    path.write_text(__import__("json").dumps({"cells": [cell]}))
    assert tool.main([str(path)]) == 2
    with pytest.raises(ValueError, match="samples"):
        tool.disturbed_cells({"cells": [cell]})


def test_ncu_hot_ranks_lines_by_stall_samples():
    tool = _load("ncu_hot")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["Address", "Source", "Warp Stall Sampling (All Samples)", "stall_long_sb", "stall_wait"]
    )
    w.writerow(["0x10", "LDG.E.128 R4, [R2]", "60", "50", "10"])
    w.writerow(["0x20", "FADD R1, R2, R3", "10", "0", "10"])
    w.writerow(["0x30", "BAR.SYNC 0", "30", "0", "30"])
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    top = tool.hot_lines(rows, 2)
    assert [t[1] for t in top] == ["LDG.E.128 R4, [R2]", "BAR.SYNC 0"]
    assert top[0][0] == pytest.approx(0.6) and top[0][2][0] == ("stall_long_sb", 50.0)
    with pytest.raises(ValueError, match="--set full"):
        tool.hot_lines([["Address", "Source"]], 5)
