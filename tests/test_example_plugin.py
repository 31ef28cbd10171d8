"""The example third-party plugin (examples/specsample-numpy) and the page that walks through it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest (a dependency of specsample) depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "specsample-numpy"
DOC = ROOT / "docs" / "writing-a-backend-plugin.md"


def _doc_files() -> dict[str, str]:
    text = DOC.read_text()
    pattern = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.S)
    return {m.group(1): m.group(2) for m in pattern.finditer(text)}


def test_the_page_shows_the_example_package_verbatim():
    files = _doc_files()
    assert set(files) == {
        "pyproject.toml",
        "src/specsample_numpy/__init__.py",
        "src/specsample_numpy/backend.py",
    }
    for rel, text in files.items():
        assert (EXAMPLE / rel).read_text() == text, f"{rel} differs from the page"


def test_registered_only_through_the_entry_point():
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["specsample.backends"] == {"numpy": "specsample_numpy"}
    for path in (ROOT / "core", ROOT / "backends"):
        for source in path.rglob("*.py"):
            text = source.read_text()
            assert "import specsample_numpy" not in text and "from specsample_numpy" not in text


def _env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return env


def test_page_steps_install_list_and_conform(tmp_path):
    """Steps 3 and 4 of the page: install the package, list it, run the conformance suite."""
    pytest.importorskip("numpy")
    pytest.importorskip("setuptools")
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pip.returncode != 0:
        pytest.skip(f"cannot build the example here: {pip.stderr[-500:]}")
    env = _env(site)
    listed = subprocess.run(
        [sys.executable, "-m", "specsample", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    numpy_row = [b for b in json.loads(listed.stdout) if b["name"] == "numpy"]
    assert numpy_row and numpy_row[0]["available"], listed.stdout
    assert numpy_row[0]["plugin"] == "numpy"
    out = tmp_path / "numpy.json"
    conform = subprocess.run(
        [
            sys.executable,
            "-m",
            "specsample",
            "conform",
            "--backend",
            "numpy",
            "--json",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert conform.returncode == 0, conform.stdout[-3000:] + conform.stderr[-3000:]
    doc = json.loads(out.read_text())
    checks = doc["backends"]["numpy"]["checks"]
    assert checks["edge.bfloat16"]["outcome"] == "not-claimed"
    bad = {c: r for c, r in checks.items() if r["outcome"] in ("fail", "error")}
    assert not bad
    assert doc["backends"]["numpy"]["summary"]["pass"] >= 35
