"""`specsample conform`, `run_conformance` and `pytest --pyargs specsample.conformance` agree, and
write the documented JSON schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from specsample.conformance.results import OUTCOMES, SCHEMA
from specsample.conformance.runner import run, run_conformance

SUBSET = ["-k", "contract or badinput or bfloat16 or cuda-graph"]


def _check_schema(doc: dict) -> None:
    assert doc["schema"] == SCHEMA
    assert doc["level"] in ("fast", "full")
    assert set(doc["environment"]) >= {"python", "torch", "platform", "cuda_device", "specsample"}
    for entry in doc["backends"].values():
        assert set(entry) == {"available", "reason", "checks", "summary"}
        assert set(entry["summary"]) == set(OUTCOMES)
        assert sum(entry["summary"].values()) == len(entry["checks"])
        for result in entry["checks"].values():
            assert set(result) == {"outcome", "duration_s", "details"}
            assert result["outcome"] in OUTCOMES
            assert isinstance(result["duration_s"], float)


def test_run_conformance_returns_and_writes_the_schema(tmp_path):
    path = tmp_path / "out.json"
    doc = run_conformance(["torch-vectorized"], "fast", str(path), SUBSET, quiet=True)
    assert json.loads(path.read_text())["backends"] == doc["backends"]
    _check_schema(doc)
    checks = doc["backends"]["torch-vectorized"]["checks"]
    assert checks["contract.padding"]["outcome"] == "pass"
    assert checks["edge.bfloat16"]["outcome"] == "pass"
    # Claimed, but this run has no CUDA device: reported, not silently skipped.
    import torch

    if not torch.cuda.is_available():
        assert checks["repro.cuda-graph"]["outcome"] == "not-claimed"
        assert "CUDA" in checks["repro.cuda-graph"]["details"]


def test_parallel_jobs_give_the_same_verdicts_as_one_process(tmp_path, capsys):
    """jobs > 1: one child process per backend, merged into one document with the same outcomes."""
    names = ["torch-vectorized", "torch-loop", "no-such-backend"]
    serial = run_conformance(names, "fast", None, SUBSET, quiet=True)
    path = tmp_path / "parallel.json"
    parallel = run_conformance(names, "fast", str(path), SUBSET, quiet=True, jobs=2)
    _check_schema(parallel)
    assert json.loads(path.read_text())["backends"] == parallel["backends"]
    assert list(parallel["backends"]) == names
    for name in names:
        a, b = serial["backends"][name], parallel["backends"][name]
        assert a["available"] == b["available"] and a["summary"] == b["summary"], name
        assert {c: r["outcome"] for c, r in a["checks"].items()} == {
            c: r["outcome"] for c, r in b["checks"].items()
        }
    assert parallel["backends"]["torch-loop"]["summary"]["pass"] > 5
    err = capsys.readouterr().err
    assert "conformance torch-loop:" in err and "conformance torch-vectorized:" in err
    with pytest.raises(ValueError, match="not supported with jobs > 1"):
        run_conformance(names[:2], "fast", None, ["--lf"], quiet=True, jobs=2)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_conformance(names[:2], "fast", None, quiet=True, jobs=0)


def test_more_jobs_than_backends_split_the_checks(tmp_path, capsys):
    """jobs > backends: each backend's selected checks split over processes (long checks alone,
    the rest by family); the merged document equals one process's, in report order."""
    names = ["torch-vectorized"]
    args = [
        "-k",
        "contract or greedy or block.edge",
        "--specsample-checks",
        "contract.padding,contract.num-emitted,greedy.ties,block.edge,block.exact",
    ]
    serial = run_conformance(names, "fast", None, args, quiet=True)
    split = run_conformance(names, "fast", None, args, quiet=True, jobs=3)
    a, b = serial["backends"]["torch-vectorized"], split["backends"]["torch-vectorized"]
    assert list(a["checks"]) == list(b["checks"])  # report order, whatever finished first
    assert set(b["checks"]) == {
        "contract.padding",
        "contract.num-emitted",
        "greedy.ties",
        "block.edge",
    }
    assert {c: r["outcome"] for c, r in a["checks"].items()} == {
        c: r["outcome"] for c, r in b["checks"].items()
    }
    err = capsys.readouterr().err
    # one process per family of the selection; block.exact is not selected by -k: no process
    assert "torch-vectorized [contract.*]" in err and "torch-vectorized [greedy.ties]" in err
    assert "block.exact" not in err


def test_check_units_put_long_checks_alone():
    from specsample.conformance.runner import LONG_CHECKS, check_units

    units = check_units(["edge.k-0", "block.exact", "edge.k-1", "block.edge", "tree.chain"])
    assert units == [["block.exact"], ["tree.chain"], ["edge.k-0", "edge.k-1"], ["block.edge"]]
    assert all(c.count(".") == 1 for c in LONG_CHECKS)


def test_checks_option_names_exact_checks(tmp_path):
    """--checks selects by exact name; an unknown name is refused before anything runs."""
    env = {**os.environ, "SPECSAMPLE_PLUGINS": ""}
    run_cli = [sys.executable, "-m", "specsample", "conform", "--backend", "torch-vectorized"]
    bad = subprocess.run(
        [*run_cli, "--checks", "contract.padding,no.such"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "--checks: no check named 'no.such'" in bad.stderr
    assert "Traceback" not in bad.stderr
    path = tmp_path / "one.json"
    ok = subprocess.run(
        [*run_cli, "--checks", "contract.padding", "--json", str(path), "-q", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert list(json.loads(path.read_text())["backends"]["torch-vectorized"]["checks"]) == [
        "contract.padding"
    ]


def test_time_budget_stops_what_runs_late_and_keeps_what_finished(tmp_path):
    """A quick unit finishes and keeps its verdict; the long one is stopped and reported as an
    error that names the budget; the run fails."""
    env = {**os.environ, "SPECSAMPLE_PLUGINS": ""}
    path = tmp_path / "budget.json"
    cmd = [sys.executable, "-m", "specsample", "conform", "--backend", "torch-vectorized"]
    cmd += ["--level", "full", "--checks", "contract.padding,block.exact", "-j", "2"]
    cmd += ["--time-budget", "20", "--json", str(path), "-q", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr
    checks = json.loads(path.read_text())["backends"]["torch-vectorized"]["checks"]
    assert checks["contract.padding"]["outcome"] == "pass"
    assert checks["block.exact"]["outcome"] == "error"
    assert "not finished within --time-budget 20 s" in checks["block.exact"]["details"]
    assert "--time-budget of 20 s spent" in out.stderr


def test_unknown_backend_is_reported_and_fails_the_cli(tmp_path, capsys):
    outcome = run(["no-such-backend"], "fast", None, (), quiet=True)
    assert not outcome.ok
    entry = outcome.results["backends"]["no-such-backend"]
    assert entry["available"] is False and "no backend named" in entry["reason"]

    from specsample.cli import main

    assert main(["conform", "--backend", "no-such-backend", "-q"]) == 1
    assert "could not be checked" in capsys.readouterr().err


def _env():
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    return env


def test_cli_and_pytest_give_identical_verdicts(tmp_path):
    cli_json, py_json = tmp_path / "cli.json", tmp_path / "py.json"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "specsample",
            "conform",
            "--backend",
            "torch-loop",
            "-k",
            "contract or greedy.ties",
            "--json",
            str(cli_json),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=300,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "torch-loop" in cli.stdout
    py = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "specsample.conformance",
            "-p",
            "no:cacheprovider",
            "--specsample-backend",
            "torch-loop",
            "-k",
            "contract or greedy.ties",
            "--specsample-json",
            str(py_json),
            "-rs",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=300,
    )
    assert py.returncode == 0, py.stdout + py.stderr
    assert "specsample conformance" in py.stdout  # the terminal summary section
    a, b = json.loads(cli_json.read_text()), json.loads(py_json.read_text())
    _check_schema(a)
    _check_schema(b)
    outcomes = lambda d: {c: r["outcome"] for c, r in d["backends"]["torch-loop"]["checks"].items()}  # noqa: E731
    assert outcomes(a) == outcomes(b)
    assert len(outcomes(a)) == 8


def test_pytest_mode_refuses_an_unavailable_backend(tmp_path):
    py = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "specsample.conformance",
            "-p",
            "no:cacheprovider",
            "--specsample-backend",
            "no-such-backend",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=300,
    )
    assert py.returncode != 0
    assert "no-such-backend" in py.stdout + py.stderr


def test_conform_help_is_cheap_and_lists_the_options():
    code = (
        "import sys; from specsample.cli import build_parser; build_parser();"
        "import specsample.conformance.plugin;"
        "print(sorted(m for m in ('torch', 'triton', 'cupy', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    helptext = subprocess.run(
        [sys.executable, "-m", "specsample", "conform", "--help"], capture_output=True, text=True
    ).stdout
    for word in ("--backend", "--level", "--json"):
        assert word in helptext


def test_level_validation():
    with pytest.raises(ValueError, match="level"):
        run_conformance(["torch-loop"], level="medium")


def test_parallel_children_share_out_the_cpu_threads(monkeypatch):
    from specsample.conformance.runner import child_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert child_env(4)["OMP_NUM_THREADS"] == "4"
    assert child_env(32)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert child_env(4)["OMP_NUM_THREADS"] == "3"  # the user's choice wins


def test_parallel_run_ends_with_the_whole_table(tmp_path):
    """Without -q, -j prints each process's block and then one table for the whole run; the
    children's temporary result files are not shown."""
    env = {**os.environ, "SPECSAMPLE_PLUGINS": ""}
    cmd = [sys.executable, "-m", "specsample", "conform", "--backend", "torch-vectorized"]
    cmd += ["--checks", "contract.padding,block.exact", "-j", "2", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "specsample-conform-" not in out.stdout
    whole = out.stdout.split("===== all =====")[-1].splitlines()
    row = next(line.split() for line in whole if line.startswith("torch-vectorized"))
    assert row[1:5] == ["2", "0", "0", "0"]
