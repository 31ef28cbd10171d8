"""`pip install .` and `pip install -e .` both give the whole namespace and the CUDA sources."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["core", "backends", "csrc", "conformance", "reports"]
CHECK = (
    "import importlib.resources as r, specsample, specsample.backends, specsample.conformance, "
    "specsample.decode.loop, "
    "specsample.reports, specsample.csrc\n"
    "names = sorted(p.name for p in r.files('specsample.csrc').iterdir())\n"
    "print(specsample.__file__); print(' '.join(names))\n"
)


def source_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    return src


def expected_csrc() -> set[str]:
    return {p.name for p in (ROOT / "csrc").iterdir() if p.suffix in {".cu", ".cuh", ".cpp", ".h"}}


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow
def test_wheel_install(tmp_path):
    src = source_copy(tmp_path)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ]
    )
    wheel = next((tmp_path / "dist").glob("specsample-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in (
        "specsample",
        "specsample/backends",
        "specsample/csrc",
        "specsample/conformance",
        "specsample/reports",
    ):
        assert f"{pkg}/__init__.py" in names
    assert any("entry_points.txt" in n for n in names)
    target = tmp_path / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ]
    )
    out = run(
        [sys.executable, "-c", CHECK],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    path, files = out.splitlines()
    assert path.startswith(str(target))
    assert expected_csrc() <= set(files.split())


@pytest.mark.slow
def test_editable_install(tmp_path):
    src = source_copy(tmp_path)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])  # pip, setuptools: from outside
    py = venv / "bin" / "python"
    # Let the fresh venv see this environment's packages (torch, setuptools) without reinstalling.
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(src)]
    )
    out = run([str(py), "-c", CHECK], cwd=tmp_path)
    path, files = out.splitlines()
    assert Path(path).resolve() == (src / "core" / "__init__.py").resolve()
    assert expected_csrc() <= set(files.split())
    run([str(venv / "bin" / "specsample"), "--version"])
