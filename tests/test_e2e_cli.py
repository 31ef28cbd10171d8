"""``specsample e2e``: a small demo run end to end, its JSON document, and its usage errors."""

from __future__ import annotations

import json

import pytest
import torch
from specsample.cli import main
from specsample.decode.e2e import check_document
from specsample.decode.projection import amdahl_speedup, project

SMALL = [
    "e2e",
    "--demo",
    "--size",
    "tiny",
    "--vocab",
    "64",
    "--k",
    "2",
    "--tokens",
    "6",
    "--threads",
    "1",
    "-q",
]


def test_demo_run_prints_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    rc = main(
        [*SMALL, "--backend", "torch-loop,torch-vectorized", "--batch", "1,3", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "V=64 B=1 K=2" in printed and "V=64 B=3 K=2" in printed
    assert "verify share" in printed and printed.count("torch-loop") == 2
    doc = check_document(json.loads(out.read_text()))
    assert [(c["backend"], c["batch"]) for c in doc["cases"]] == [
        ("torch-loop", 1),
        ("torch-vectorized", 1),
        ("torch-loop", 3),
        ("torch-vectorized", 3),
    ]
    assert doc["settings"]["timer"] == "perf_counter"
    assert doc["models"]["64"]["kind"] == "demo"
    for case in doc["cases"]:
        spec = case["speculative"]
        assert case["status"] == "ok" and spec["backend"] == case["backend"]
        assert spec["new_tokens"] == 6 * case["batch"] == case["baseline"]["new_tokens"]
        assert spec["verify_calls"] == spec["steps"]
        assert sum(spec["accepted_histogram"]) >= spec["steps"]
        assert 0 <= spec["mean_accepted"] <= 2
        assert case["speedup"] == pytest.approx(
            spec["tokens_per_s"] / case["baseline"]["tokens_per_s"]
        )
        phases = spec["phases_s"]
        assert case["verify_share"] == pytest.approx(phases["verify"] / sum(phases.values()))
        inf = [r for r in case["projection"] if r["factor"] == "inf"][0]
        assert inf["speedup"] == pytest.approx(1 / (1 - case["verify_share"]))
        assert case["matches_baseline"] is None  # random mode
        assert case["verify_launches"] is None  # counted on a GPU only


def test_greedy_run_matches_the_baseline(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    rc = main([*SMALL, "--backend", "torch-vectorized", "--mode", "greedy", "--json", str(out)])
    assert rc == 0, capsys.readouterr()
    doc = json.loads(out.read_text())
    assert [c["matches_baseline"] for c in doc["cases"]] == [True]


def test_unavailable_backend_is_reported(capsys):
    if torch.cuda.is_available():
        pytest.skip("cuda-cpp may be available on a machine with a GPU")
    rc = main([*SMALL, "--backend", "cuda-cpp"])
    assert rc == 1
    assert "cuda-cpp: unavailable:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["e2e"], "give --demo (seeded demo models) or --target PATH and --draft PATH"),
        (["e2e", "--demo", "--target", "x", "--draft", "y"], "--demo: give either --demo or"),
        (["e2e", "--target", "x"], "--target: needs --draft PATH too"),
        (["e2e", "--draft", "y"], "--draft: needs --target PATH too"),
        (["e2e", "--target", "x", "--draft", "y", "--vocab", "64"], "--vocab: only for --demo"),
        (["e2e", "--demo", "--k", "-1"], "argument --k: expected an integer >= 0, got '-1'"),
        (["e2e", "--demo", "--batch", "0"], "argument --batch: expected comma-separated integers"),
        (["e2e", "--demo", "--vocab", "1"], "argument --vocab: expected comma-separated integers"),
        (["e2e", "--demo", "--tokens", "0"], "argument --tokens: expected an integer >= 1"),
        (["e2e", "--demo", "--device", "tpu"], "argument --device: expected auto, cpu, cuda"),
        (["e2e", "--demo", "--backend", "trtion"], "--backend: unknown backend 'trtion'"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_json_is_not_replaced_without_force(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    out.write_text("{}")
    assert main([*SMALL, "--json", str(out)]) == 2
    assert "pass --force to replace it" in capsys.readouterr().err
    assert out.read_text() == "{}"


def test_cuda_device_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main([*SMALL, "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is visible to torch" in capsys.readouterr().err


def test_target_folders_need_transformers(tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import transformers  # noqa: F401
    except ImportError:
        assert main(["e2e", "--target", str(tmp_path), "--draft", str(tmp_path)]) == 2
        assert "needs the transformers package" in capsys.readouterr().err
    else:
        assert main(["e2e", "--target", str(tmp_path / "nope"), "--draft", str(tmp_path)]) == 2
        assert "not a folder" in capsys.readouterr().err


def test_amdahl_projection():
    assert amdahl_speedup(0.0, 10.0) == 1.0
    assert amdahl_speedup(0.5, 2.0) == pytest.approx(1 / 0.75)
    assert amdahl_speedup(0.2, float("inf")) == pytest.approx(1.25)
    assert amdahl_speedup(0.5, 0.5) == pytest.approx(1 / 1.5)  # a slower sampler
    rows = project(100.0, 0.2)
    assert [r["factor"] for r in rows] == [0.5, 2.0, 10.0, "inf"]
    assert rows[-1]["tokens_per_s"] == pytest.approx(125.0)
    with pytest.raises(ValueError, match=r"share: expected a fraction in \[0, 1\], got 1.5"):
        amdahl_speedup(1.5, 2.0)
    with pytest.raises(ValueError, match="factor: expected a number > 0"):
        amdahl_speedup(0.5, 0.0)


def test_check_document_names_the_missing_field(tmp_path):
    with pytest.raises(ValueError, match="schema: missing"):
        check_document({})
