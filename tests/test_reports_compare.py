"""``specsample compare``: per-cell ratios, regressions flagged only beyond the runs' own noise."""

from __future__ import annotations

import copy
import subprocess
import sys

from specsample.reports.compare import compare_results, format_comparison
from specsample.reports.schema import BENCH_SCHEMA, write_json


def _cell(backend, batch, median, iqr):
    return {
        "backend": backend,
        "mode": "random",
        "dtype": "float32",
        "batch": batch,
        "k": 4,
        "vocab": 32000,
        "accept": "high",
        "status": "ok",
        "timing": {
            "statistic": "median",
            "median": median,
            "iqr": iqr,
            "q1": median - iqr / 2,
            "q3": median + iqr / 2,
            "n": 10,
            "samples": [median] * 10,
        },
        "acceptance": {"measured_length": 3.0, "expected_length": 3.0},
        "bandwidth": {"achieved_Bps": 1e9, "fraction_of_copy": 0.5},
        "floor": {"launch_s": 2e-6, "bytes_s": 1e-6, "floor_s": 2e-6, "ratio": median / 2e-6},
    }


def _doc(cells):
    return {
        "schema": BENCH_SCHEMA,
        "created": "",
        "command": [],
        "config": {},
        "environment": {"host": "a", "versions": {"torch": "2.11"}},
        "device": {},
        "cells": cells,
    }


OLD = _doc(
    [
        _cell("a", 1, 10e-6, 0.2e-6),  # will regress clearly
        _cell("a", 8, 20e-6, 4e-6),  # +10%, but inside a noisy run's IQR: same
        _cell("b", 1, 50e-6, 0.5e-6),  # will improve
        _cell("b", 8, 30e-6, 0.01e-6),  # +1%: beyond a tiny IQR but under min_change: same
        _cell("c", 1, 5e-6, 0.1e-6),  # only in old
    ]
)
NEW = _doc(
    [
        _cell("a", 1, 13e-6, 0.3e-6),
        _cell("a", 8, 22e-6, 4e-6),
        _cell("b", 1, 40e-6, 0.5e-6),
        _cell("b", 8, 30.3e-6, 0.01e-6),
        _cell("d", 1, 5e-6, 0.1e-6),  # only in new
    ]
)


def test_verdicts():
    result = compare_results(OLD, NEW)
    verdicts = {(c.backend, c.key[3]): c.verdict for c in result["changes"]}
    assert verdicts == {
        ("a", 1): "regression",
        ("a", 8): "same",
        ("b", 1): "improvement",
        ("b", 8): "same",
    }
    ratio = {(c.backend, c.key[3]): c.ratio for c in result["changes"]}
    assert abs(ratio[("a", 1)] - 1.3) < 1e-9
    assert len(result["only_old"]) == 1 and len(result["only_new"]) == 1
    text = format_comparison(result)
    assert "REGRESSION" in text and "1 regression(s), 1 improvement(s)" in text
    flagged = format_comparison(result, show="flagged")
    assert "B=8" not in flagged


def test_noise_factor_and_env_diff():
    new = copy.deepcopy(NEW)
    new["environment"]["versions"]["torch"] = "2.12"
    result = compare_results(OLD, new, noise_factor=20.0)
    assert {c.verdict for c in result["changes"]} == {"same"}
    assert any("torch" in d for d in result["env_diff"])
    assert "differ" in format_comparison(result)


def test_cli_exit_codes(tmp_path):
    old = write_json(OLD, tmp_path / "old.json")
    new = write_json(NEW, tmp_path / "new.json")

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "specsample", "compare", *map(str, args)],
            capture_output=True,
            text=True,
        )

    out = run(old, new)
    assert out.returncode == 1 and "REGRESSION" in out.stdout
    assert run(old, new, "--no-fail").returncode == 0
    assert run(old, old).returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "x"}')
    out = run(old, bad)
    assert out.returncode == 2 and "schema" in out.stderr


def test_compare_results_refuses_garbage_medians():
    import math

    import pytest
    from specsample.reports.schema import SchemaError

    for value in (math.nan, -1e-6, 0.0, "1e-6", None, math.inf):
        bad = copy.deepcopy(NEW)
        bad["cells"][0]["timing"]["median"] = value
        with pytest.raises(
            SchemaError, match=r"new: cells\[0\]\.timing\.median must be a positive"
        ):
            compare_results(OLD, bad)
