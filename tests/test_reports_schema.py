"""The results schema: a real (tiny) run round-trips through JSON and validates."""

from __future__ import annotations

import json

import pytest
from specsample.reports.presets import get_preset
from specsample.reports.runner import BenchConfig, run_bench
from specsample.reports.schema import (
    BENCH_SCHEMA,
    SchemaError,
    _finite,
    cell_key,
    detect_kind,
    load_conformance,
    load_results,
    merge_conformance,
    validate_results,
    write_json,
)

CONFORMANCE_FIXTURE = {
    "schema": "specsample.conformance/1",
    "level": "fast",
    "created": "2026-11-26T12:00:00+00:00",
    "environment": {"torch": "2.13"},
    "backends": {
        "torch-vectorized": {
            "available": True,
            "reason": "",
            "checks": {
                "contract": {"outcome": "pass", "duration_s": 0.1, "details": ""},
                "exact": {"outcome": "pass", "duration_s": 0.2, "details": ""},
                "bf16": {"outcome": "not-claimed", "duration_s": 0.0, "details": "n/c"},
            },
            "summary": {"pass": 2, "not-claimed": 1},
        },
        "broken": {
            "available": True,
            "reason": "",
            "checks": {
                "contract": {"outcome": "fail", "duration_s": 0.1, "details": "shape"},
                "exact": {"outcome": "error", "duration_s": 0.1, "details": "boom <b>"},
            },
            "summary": {"fail": 1, "error": 1},
        },
        "cuda-cpp": {"available": False, "reason": "no CUDA device", "checks": {}, "summary": {}},
    },
}


@pytest.fixture(scope="module")
def tiny_doc(tmp_path_factory):
    p = get_preset("tiny")
    cfg = BenchConfig(
        backends=["torch-loop", "torch-vectorized"],
        batch=(1, 2),
        k=(2,),
        vocab=(32,),
        mode=("random", "greedy"),
        accept=("high",),
        device="cpu",
        policy=p.policy,
        preset="tiny",
    )
    path = tmp_path_factory.mktemp("bench") / "results.json"
    doc = run_bench(
        cfg, out_path=path, command=["specsample", "bench", "--preset", "tiny"], progress=False
    )
    return doc, path


def test_round_trip(tiny_doc):
    doc, path = tiny_doc
    loaded = load_results(path)
    assert loaded["schema"] == BENCH_SCHEMA
    assert json.loads(json.dumps(_finite(doc))) == loaded
    assert "NaN" not in path.read_text()  # strict JSON
    assert loaded["complete"] and not loaded["interrupted"]
    assert loaded["command"] == ["specsample", "bench", "--preset", "tiny"]
    assert len(loaded["cells"]) == 2 * 2 * 2
    for cell in loaded["cells"]:
        assert cell["status"] == "ok", cell.get("reason")
        t = cell["timing"]
        assert t["statistic"] == "median" and t["method"] == "perf_counter"
        assert len(t["samples"]) == t["n"] >= 3
        assert t["q1"] <= t["median"] <= t["q3"]
        acc = cell["acceptance"]
        assert 1.0 <= acc["measured_length"] <= cell["k"] + 1
        assert acc["requested_length"] > 1
        assert cell["bytes"]["must_read"] > 0
        assert cell["floor"]["ratio"] > 0 and cell["floor"]["bound"] in ("launch", "bytes")
        assert cell["launches"] is None  # no kernels to count on the CPU
    env = loaded["environment"]
    assert env["versions"]["torch"] and env["host"] and "git" in env
    dev = loaded["device"]
    assert dev["type"] == "cpu" and dev["copy_bandwidth_Bps"] > 0 and dev["launch_floor_s"] > 0
    keys = {cell_key(c) for c in loaded["cells"]}
    assert len(keys) == len(loaded["cells"])


def test_validation_errors(tmp_path):
    with pytest.raises(SchemaError, match="schema"):
        validate_results({"schema": "other/1"})
    with pytest.raises(SchemaError, match="created is missing"):
        validate_results({"schema": BENCH_SCHEMA})
    bad = {
        "schema": BENCH_SCHEMA,
        "created": "",
        "command": [],
        "config": {},
        "environment": {},
        "device": {},
        "cells": [
            {
                "backend": "x",
                "mode": "random",
                "dtype": "float32",
                "batch": 1,
                "k": 1,
                "vocab": 2,
                "accept": "high",
                "status": "ok",
            }
        ],
    }
    with pytest.raises(SchemaError, match="timing"):
        validate_results(bad)
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_results(p)
    with pytest.raises(SchemaError, match="no such file"):
        load_results(tmp_path / "missing.json")


def test_conformance_fixture_validates(tmp_path):
    path = write_json(CONFORMANCE_FIXTURE, tmp_path / "conformance.json")
    assert load_conformance(path)["level"] == "fast"
    assert detect_kind(CONFORMANCE_FIXTURE) == "conformance"
    with pytest.raises(SchemaError):
        detect_kind({"schema": "nope"})


def test_conformance_files_of_one_level_merge(tmp_path):
    backends = CONFORMANCE_FIXTURE["backends"]
    first = {**CONFORMANCE_FIXTURE, "backends": {"torch-vectorized": backends["torch-vectorized"]}}
    second = {**CONFORMANCE_FIXTURE, "backends": {"broken": backends["broken"]}}
    merged = merge_conformance([first, second])
    assert list(merged["backends"]) == ["torch-vectorized", "broken"]
    with pytest.raises(SchemaError, match="appears in two conformance files"):
        merge_conformance([first, first])
    with pytest.raises(SchemaError, match="different levels"):
        merge_conformance([first, {**second, "level": "full"}])
    # one backend's checks split over two runs (-k) unite; an overlapping check does not
    entry = backends["torch-vectorized"]
    names = sorted(entry["checks"])
    assert len(names) >= 2
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    parts = [
        {
            **CONFORMANCE_FIXTURE,
            "backends": {
                "torch-vectorized": {**entry, "checks": {n: entry["checks"][n] for n in half}}
            },
        }
        for half in halves
    ]
    united = merge_conformance(parts)["backends"]["torch-vectorized"]
    assert united["checks"] == entry["checks"]
    assert sum(united["summary"].values()) == len(names)
    with pytest.raises(SchemaError, match="same checks"):
        merge_conformance(
            [parts[0], {**CONFORMANCE_FIXTURE, "backends": {"torch-vectorized": entry}}]
        )
    # and through the CLI: two files, one matrix
    from specsample.cli import main

    paths = [str(write_json(d, tmp_path / f"c{i}.json")) for i, d in enumerate((first, second))]
    assert main(["report", *paths, "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "torch-vectorized" in report and "broken" in report


def test_skipped_cells_say_why(tmp_path):
    cfg = BenchConfig(
        backends=["torch-vectorized", "cuda-cpp"],
        batch=(1,),
        k=(1,),
        vocab=(8,),
        mode=("random",),
        accept=("high",),
        device="cpu",
        policy=get_preset("tiny").policy,
    )
    doc = run_bench(cfg, out_path=tmp_path / "r.json", progress=False)
    assert doc["backends"]["cuda-cpp"]["available"] is False
    assert doc["backends"]["cuda-cpp"]["reason"]
    assert [c["backend"] for c in doc["cells"]] == ["torch-vectorized"]
    with pytest.raises(ValueError, match="unknown backend"):
        run_bench(BenchConfig(backends=["nope"], device="cpu"), progress=False)


def test_skip_reasons_follow_capabilities():
    from specsample.contract import BackendInfo, Capabilities
    from specsample.reports.runner import _skip_reason

    caps = Capabilities(
        modes=("random",), dtypes=("float32",), devices=("cuda",), max_vocab=1000, max_k=8
    )
    info = BackendInfo("x", "", True, "", caps)
    assert "cpu" in _skip_reason(info, "cpu", "random", "float32", 4, 100)
    assert "greedy" in _skip_reason(info, "cuda", "greedy", "float32", 4, 100)
    assert "bfloat16" in _skip_reason(info, "cuda", "random", "bfloat16", 4, 100)
    assert "max_vocab" in _skip_reason(info, "cuda", "random", "float32", 4, 5000)
    assert "max_k" in _skip_reason(info, "cuda", "random", "float32", 16, 100)
    assert _skip_reason(info, "cuda", "random", "float32", 4, 100) is None


def test_nan_in_optional_statistics_reads_as_null(tiny_doc):
    """Results written before NaN became null (e.g. an eager wall-clock of no samples) still load;
    a NaN median of a cell's timing is still refused."""
    import copy
    import math

    from specsample.reports.schema import SchemaError, validate_results

    doc = copy.deepcopy(tiny_doc[0])
    ok = next(c for c in doc["cells"] if c["status"] == "ok")
    ok["timing"]["wall"] = {"statistic": "median", "n": 0, "median": math.nan, "q1": math.nan}
    validate_results(copy.deepcopy(doc))
    ok["timing"]["median"] = math.nan
    with pytest.raises(SchemaError, match=r"timing\.median must be a positive number"):
        validate_results(doc)
