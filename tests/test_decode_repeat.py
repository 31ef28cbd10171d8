"""``specsample e2e --repeat N``: repeated timed runs folded into per-phase medians."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from specsample.cli import main
from specsample.decode.e2e import E2ESettings, check_document
from specsample.decode.loop import GenerationResult
from specsample.decode.repeat import TimedRuns, median_result, repeat_runs


def _result(wall: float, draft: float, verify: float, tag: int) -> GenerationResult:
    return GenerationResult(
        tokens=torch.full((1, 4), tag),
        steps=2,
        wall_s=wall,
        prefill_s=wall / 10,
        phases={"draft": draft, "verify": verify},
        accepted_histogram=[1, 1],
        backend="torch-loop",
        verify_calls=2,
        last_verify=(torch.zeros(1), None, torch.full((1,), float(tag))),
    )


def test_median_is_taken_phase_by_phase():
    runs = [_result(3.0, 0.9, 0.1, 0), _result(1.0, 0.5, 0.3, 1), _result(2.0, 0.1, 0.2, 2)]
    med = median_result(runs)
    assert med.wall_s == 2.0 and med.prefill_s == pytest.approx(0.2)
    assert med.phases == {"draft": 0.5, "verify": 0.2}  # not the phases of any one run
    assert med.tokens_per_s == 4 / 2.0
    assert torch.equal(med.tokens, runs[0].tokens)
    assert med.last_verify[2].item() == 2.0  # the last run's verify arguments
    assert runs[0].wall_s == 3.0  # the runs themselves are left as they were
    record = TimedRuns(runs).to_dict()
    assert [r["tokens_per_s"] for r in record["repeats"]] == [4 / 3.0, 4.0, 2.0]
    assert record["phases_s"] == {"draft": 0.5, "verify": 0.2}
    assert "repeats" not in TimedRuns(runs[:1]).to_dict()


def test_bad_repeats_are_refused():
    with pytest.raises(ValueError, match="results: expected at least one"):
        median_result([])
    odd = _result(1.0, 0.5, 0.3, 1)
    odd.phases = {"draft": 0.5}
    with pytest.raises(ValueError, match=r"results\[1\]: times phases \['draft'\]"):
        median_result([_result(1.0, 0.5, 0.3, 0), odd])
    with pytest.raises(ValueError, match="repeat: expected an integer >= 1, got 0"):
        repeat_runs(lambda: _result(1.0, 0.5, 0.3, 0), 0)
    with pytest.raises(ValueError, match="repeat: expected an integer >= 1, got 0"):
        E2ESettings(repeat=0)
    with pytest.raises(TypeError, match="repeat: expected an integer"):
        E2ESettings(repeat=2.0)


def test_only_the_last_run_keeps_its_verify_arguments():
    tags = iter(range(3))
    runs = repeat_runs(lambda: _result(1.0, 0.5, 0.3, next(tags)), 3)
    assert [r.last_verify is None for r in runs] == [True, True, False]


def test_cli_repeat_writes_medians_and_each_run(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    argv = ["e2e", "--demo", "--size", "tiny", "--vocab", "64", "--k", "2", "--tokens", "6"]
    argv += ["--threads", "1", "-q", "--backend", "torch-vectorized", "--batch", "2"]
    assert main([*argv, "--repeat", "3", "--json", str(out)]) == 0
    assert "(medians of 3 runs)" in capsys.readouterr().out
    doc = check_document(json.loads(out.read_text()))
    assert doc["settings"]["repeat"] == 3
    case = doc["cases"][0]
    for record in (case["speculative"], case["baseline"]):
        runs = record["repeats"]
        assert len(runs) == 3
        for phase, value in record["phases_s"].items():
            assert value == statistics.median(r["phases_s"][phase] for r in runs)
        assert record["wall_s"] == statistics.median(r["wall_s"] for r in runs)
    spec = case["speculative"]
    assert case["speedup"] == spec["tokens_per_s"] / case["baseline"]["tokens_per_s"]
    rep = tmp_path / "rep"
    assert main(["report", str(out), "--no-plots", "--out", str(rep)]) == 0
    assert "times: medians of 3 runs per case" in (rep / "report.md").read_text()


def test_cli_repeat_zero_is_a_usage_error(capsys):
    code = main(["e2e", "--demo", "--repeat", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "--repeat" in err, err
