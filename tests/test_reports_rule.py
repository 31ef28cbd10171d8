"""The benchmark runner's ``--rule`` axis on the tiny preset (CPU): cells record their rule and
measured tokens per call, block cells their gain over token, and the report shows it."""

from __future__ import annotations

import pytest
from specsample.reports.runner import must_read_bytes


def test_bench_with_both_rules_records_the_gain(tmp_path):
    from specsample.cli import main
    from specsample.reports.schema import load_results

    out = tmp_path / "r.json"
    args = ["bench", "--preset", "tiny", "--backends", "torch-vectorized,numpy", "--mode",
            "random", "--accept", "low", "--rule", "token,block", "--no-progress", "--out",
            str(out)]  # fmt: skip
    assert main(args) == 0
    doc = load_results(out)
    assert doc["config"]["grid"]["rule"] == ["token", "block"]
    token = [c for c in doc["cells"] if c["backend"] == "torch-vectorized"]
    block = [c for c in doc["rule_cells"] if c["backend"] == "torch-vectorized"]
    assert token and len(block) == len(token)
    assert {c["rule"] for c in token} == {"token"} and {c["rule"] for c in block} == {"block"}
    for t, b in zip(token, block, strict=True):
        assert (t["batch"], t["k"], t["vocab"]) == (b["batch"], b["k"], b["vocab"])
        assert t["status"] == b["status"] == "ok"
        gain = b["acceptance"]["gain_over_token"]
        diff = b["acceptance"]["measured_length"] - t["acceptance"]["measured_length"]
        assert gain == pytest.approx(diff)
        assert "gain_over_token" not in t["acceptance"]
    numpy_block = [c for c in doc["rule_cells"] if c["backend"] == "numpy"]
    assert numpy_block and all(
        c["status"] == "skipped" and "not claimed" in c["reason"] for c in numpy_block
    )

    from specsample.reports.render import render_report

    written = render_report(doc, None, tmp_path / "rep", plots=False)
    text = written["markdown"].read_text()
    assert "Verification rules: tokens per call" in text and "gain (tokens/call)" in text


def test_default_grid_runs_token_only(tmp_path):
    import argparse

    from specsample.reports.cli_bench import config_from_args, configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--preset", "tiny"])
    assert list(config_from_args(args).rule) == ["token"]
    args = parser.parse_args(["--preset", "tiny", "--rule", "block,token"])
    assert list(config_from_args(args).rule) == ["block", "token"]


def test_block_floor_reads_every_drafted_row():
    token = must_read_bytes("random", 1, 4, 1000, "float32", 3.0, 0.5)
    block = must_read_bytes("random", 1, 4, 1000, "float32", 3.0, 0.5, rule="block")
    assert block == 4 * 8 + 2 * 4 * 1000 * 4 + 0.5 * 1000 * 4
    assert block > token
