"""``specsample bench`` and ``specsample run`` end to end (tiny grids, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
from specsample.reports.schema import load_results
from test_reports_schema import CONFORMANCE_FIXTURE  # noqa: E402


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "specsample", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_cli_flags(tmp_path):
    out = tmp_path / "r.json"
    res = _cli(
        "bench",
        "--backends",
        "torch-loop,torch-vectorized",
        "--batch",
        "1,2",
        "--k",
        "1",
        "--vocab",
        "8",
        "--mode",
        "random",
        "--accept",
        "high,2.0",
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--no-progress",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr
    doc = load_results(out)
    assert doc["config"]["grid"]["accept"] == ["high", "2.0"]
    assert doc["command"][1:3] == ["bench", "--backends"]
    assert len(doc["cells"]) == 2 * 2 * 2
    assert "torch-vectorized" in res.stdout and "results:" in res.stdout
    bad = _cli("bench", "--backends", "nope", "--preset", "tiny", "--out", tmp_path / "x.json")
    assert bad.returncode == 2 and "unknown backend" in bad.stderr
    bad = _cli("bench", "--mode", "beam")
    assert bad.returncode == 2 and "beam" in bad.stderr


def test_run_end_to_end_without_conformance(tmp_path):
    out = tmp_path / "report"
    res = _cli(
        "run",
        "--preset",
        "tiny",
        "--no-conformance",
        "--no-progress",
        "--backends",
        "torch-loop,torch-vectorized,torch-compile",
        "--out",
        out,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("results.json", "report.md", "report.html", "results.csv"):
        assert (out / name).exists(), name
    assert list((out / "plots").glob("*.png"))
    assert "benchmark (tiny grid" in res.stdout and "report:" in res.stdout
    doc = load_results(out / "results.json")
    assert {c["backend"] for c in doc["cells"]} == {
        "torch-loop",
        "torch-vectorized",
        "torch-compile",
    }
    assert all(c["status"] == "ok" for c in doc["cells"])


def test_run_calls_the_conformance_runner(tmp_path, monkeypatch, capsys):
    """The run path with conformance, against a stand-in runner honouring the agreed signature."""
    calls = {}

    def run_conformance(
        backends=None, level="fast", json_path=None, pytest_args=(), quiet=False, jobs=1
    ):
        calls.update(backends=backends, level=level, json_path=json_path, quiet=quiet, jobs=jobs)
        doc = dict(CONFORMANCE_FIXTURE, level=level)
        with open(json_path, "w") as f:
            json.dump(doc, f)
        return doc

    fake = types.ModuleType("specsample.conformance.runner")
    fake.run_conformance = run_conformance
    monkeypatch.setitem(sys.modules, "specsample.conformance.runner", fake)
    from specsample.cli import main

    out = tmp_path / "rep"
    code = main(
        [
            "run",
            "--preset",
            "tiny",
            "--backends",
            "torch-vectorized",
            "--no-progress",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 1  # the fixture has a failing backend
    assert calls["level"] == "fast" and calls["backends"] == ["torch-vectorized"]
    assert calls["jobs"] == 1  # the CPU default: backends would compete for the same cores
    assert (out / "conformance.json").exists() and (out / "conformance.csv").exists()
    assert "conformance (fast)" in text and "broken" in text
    assert "FAIL" in (out / "report.md").read_text()


def test_interrupt_keeps_finished_cells(tmp_path, monkeypatch):
    from specsample.reports import runner
    from specsample.reports.presets import get_preset

    original = runner._Sweep.run_cell
    count = {"n": 0}

    def flaky(self, *a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(runner._Sweep, "run_cell", flaky)
    cfg = runner.BenchConfig(
        backends=["torch-vectorized"],
        batch=(1, 2, 3),
        k=(1,),
        vocab=(8,),
        mode=("random",),
        accept=("high",),
        device="cpu",
        policy=get_preset("tiny").policy,
    )
    doc = runner.run_bench(cfg, out_path=tmp_path / "r.json", progress=False)
    assert doc["interrupted"] and not doc["complete"]
    saved = load_results(tmp_path / "r.json")
    assert saved["interrupted"] and len(saved["cells"]) == 2


@pytest.mark.parametrize("level", ["fast"])
def test_real_conformance_runner_if_present(tmp_path, level):
    pytest.importorskip(
        "specsample.conformance.runner",
        reason="conformance runner not written yet (issue: conformance)",
    )
    res = _cli(
        "run",
        "--preset",
        "tiny",
        "--backends",
        "torch-vectorized",
        "--no-progress",
        "--no-plots",
        "--level",
        level,
        "--out",
        tmp_path / "rep",
        timeout=600,
    )
    assert res.returncode in (0, 1), res.stderr[-3000:]
    assert (tmp_path / "rep" / "conformance.json").exists()


def test_sigterm_keeps_finished_cells(tmp_path):
    import signal
    import time

    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "specsample",
            "bench",
            "--backends",
            "torch-loop",
            "--preset",
            "tiny",
            "--batch",
            ",".join(str(b) for b in range(1, 200)),
            "--k",
            "2",
            "--vocab",
            "16",
            "--mode",
            "random",
            "--accept",
            "high",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def saved() -> bool:  # the sweep saves under a hidden partial name after each workload
        return any(p.stat().st_size > 0 for p in tmp_path.glob(".r.json.*.partial"))

    deadline = time.time() + 120
    while not saved() and time.time() < deadline:
        time.sleep(0.2)
    assert not out.exists()  # the real name appears only when the run ends
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    doc = load_results(out)
    assert doc["interrupted"] and 1 <= len(doc["cells"]) < 199
    assert not list(tmp_path.glob(".*.partial"))


def test_a_failing_backend_is_dropped_after_repeated_errors(tmp_path, monkeypatch):
    from specsample.reports import runner
    from specsample.reports.presets import get_preset

    original = runner._Sweep.run_cell
    calls = []

    def failing(self, name, *a, **k):
        if name == "torch-loop":
            calls.append(name)
            raise RuntimeError("compile failed\nlong trace")
        return original(self, name, *a, **k)

    monkeypatch.setattr(runner._Sweep, "run_cell", failing)
    cfg = runner.BenchConfig(
        backends=["torch-loop", "torch-vectorized"],
        batch=(1, 2, 3, 4, 5),
        k=(1,),
        vocab=(8,),
        mode=("random",),
        accept=("high",),
        device="cpu",
        policy=get_preset("tiny").policy,
        max_errors=2,
    )
    doc = runner.run_bench(cfg, progress=False)
    loop = [c for c in doc["cells"] if c["backend"] == "torch-loop"]
    assert len(calls) == 2 and len(loop) == 5
    assert all(c["status"] == "error" for c in loop)
    assert loop[-1]["reason"].startswith("not run: the backend failed in its last 2 cells")
    assert all(c["status"] == "ok" for c in doc["cells"] if c["backend"] == "torch-vectorized")
