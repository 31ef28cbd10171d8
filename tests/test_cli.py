"""The command line: --version, --help, list."""

from __future__ import annotations

import json
import subprocess
import sys

import specsample


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "specsample", *args], capture_output=True, text=True
    )


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"specsample {specsample.__version__}"


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("list", "build"):
        assert command in out.stdout


def test_list_table_and_json():
    out = run("list")
    assert out.returncode == 0
    for name in ("torch-loop", "torch-vectorized", "torch-compile", "cuda-cpp", "triton", "cupy"):
        assert name in out.stdout
    rows = json.loads(run("list", "--json").stdout)
    assert {r["name"] for r in rows} >= {"torch-loop", "cupy"}
    assert all({"name", "available", "reason", "capabilities"} <= set(r) for r in rows)


def test_one_backend_vocabulary_across_commands():
    """--backend a --backend b, --backend a,b and --backends a,b mean the same everywhere."""
    from specsample.cli import build_parser
    from specsample.cli_options import selected_backends

    parser = build_parser()
    forms = [
        ["--backend", "a", "--backend", "b"],
        ["--backend", "a,b"],
        ["--backends", "a,b"],
        ["--backends", "a", "--backend", "b,a"],
    ]
    for command in ("conform", "bench", "run"):
        assert selected_backends(parser.parse_args([command])) is None
        for form in forms:
            args = parser.parse_args([command, *form])
            assert selected_backends(args) == ["a", "b"], (command, form)


def test_build_rejects_an_unknown_backend():
    out = run("build", "--backend", "triton")
    assert out.returncode == 2
    assert "--backend: expected some of cuda-cpp, cupy, got 'triton'" in out.stdout
