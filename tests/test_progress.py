"""Progress of the conformance run: a bar (or one line per backend) on stderr, first-use notes for
backends that compile, and no raw pytest header."""

from __future__ import annotations

import io
import subprocess
import sys
import time

from specsample.conformance.progress import (
    TRITON_INTERPRETER_NOTE,
    ConformanceProgress,
    first_use_note,
)
from specsample.conformance.runner import run

SUBSET = ["-k", "contract"]


def test_bar_counts_every_check_and_names_the_running_one(capsys):
    outcome = run(
        ["torch-loop", "torch-vectorized"], "fast", None, SUBSET, quiet=True, progress=True
    )
    err = capsys.readouterr().err
    n = sum(len(b["checks"]) for b in outcome.results["backends"].values())
    assert n > 0
    assert "specsample conform" in err and f"{n}/{n}" in err
    assert "check/s" in err or "s/check" in err  # the rate, from which tqdm estimates time left
    assert "torch-vectorized contract" in err


def test_without_a_terminal_one_line_per_backend(capsys):
    outcome = run(
        ["torch-loop", "torch-vectorized"], "fast", None, SUBSET, quiet=True, progress=False
    )
    err = capsys.readouterr().err
    n = len(outcome.results["backends"]["torch-loop"]["checks"])
    assert "conformance torch-loop: started" in err
    assert f"conformance torch-loop: {n} checks in" in err
    assert f"({2 * n}/{2 * n} in all)" in err
    assert "%|" not in err  # no bar


def test_first_use_notes(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "about a minute" in first_use_note("cuda-cpp")
    assert first_use_note("torch-loop") is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert first_use_note("triton") == TRITON_INTERPRETER_NOTE


def test_ticker_refreshes_a_long_check():
    class _Session:
        items: list = [object()]

    out = io.StringIO()
    progress = ConformanceProgress(file=out, tick_s=0.05)
    progress.pytest_collection_finish(_Session())
    time.sleep(0.3)  # one long check: the clock must move without an update
    refreshed = out.getvalue().count("\r")
    progress.close()
    assert refreshed >= 3, out.getvalue()


def test_conform_hides_the_raw_pytest_header():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "specsample",
            "conform",
            "--backend",
            "torch-loop",
            "-k",
            "contract",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "configfile" not in proc.stdout and "rootdir" not in proc.stdout
    assert "passed" in proc.stdout
