"""README.md's install commands: CI runs them verbatim, and they install with the pip that a fresh
virtual environment comes with (no pip upgrade), offline.

The offline run: a fresh venv made by this interpreter (so its stock pip), which sees every
installed dependency of this environment (torch, pytest, ...) through a ``.pth`` file pointing at a
view of this site-packages without specsample and its plugin; README's pip commands then run with
``--no-index --no-build-isolation`` appended, so the resolver must find ``specsample`` (the
example plugin's dependency) as the user's environment would, without a download.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"


def setup_commands() -> list[str]:
    """The ``python -m pip install ...`` lines of README.md's "Set up" section, in order."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Set up\n(.*?)^## ", text, flags=re.S | re.M)
    assert match, "README.md has no '## Set up' section"
    blocks = re.findall(r"```bash\n(.*?)```", match.group(1), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("python -m pip install")]


def test_readme_names_the_commands():
    commands = setup_commands()
    assert 'python -m pip install -e ".[plots]"' in commands
    assert 'python -m pip install -e ".[dev,triton]"' in commands
    # The example plugin comes after specsample, in its own command (old pip cannot match its
    # dependency on specsample to a local editable path with extras given in the same command).
    plugin = [c for c in commands if "examples/specsample-numpy" in c]
    assert plugin and all(shlex.split(c)[-1] == "./examples/specsample-numpy" for c in plugin)
    assert commands.index(plugin[0]) > commands.index('python -m pip install -e ".[dev,triton]"')


def test_ci_runs_the_readme_test_commands_verbatim():
    ci_lines = {line.strip() for line in CI.read_text(encoding="utf-8").splitlines()}
    for command in setup_commands():
        if "[plots]" in command:  # the main job's install; the test install is a superset
            continue
        assert command in ci_lines, f".ci/run does not run README's command {command!r}"
    assert not any("install" in line and "--upgrade pip" in line for line in ci_lines), (
        ".ci/run upgrades pip, so it would not test the pip users have"
    )


def _site_packages_view(dest: Path) -> Path:
    """Symlinks to this environment's site-packages entries, less specsample and its plugin."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if "specsample" in name or name.endswith(".pth"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def _copy_tree(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (no build folders)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        src = ROOT / raw.decode()
        if not src.is_file():
            continue
        target = dest / raw.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the repository's files")
def test_readme_commands_install_offline_with_stock_pip(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, seen through the view
    repo = _copy_tree(tmp_path / "repo")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # no machine-wide index, find-links or constraints
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The venv's own (older) setuptools would shadow the view's; on Python >= 3.12 there is none.
    subprocess.run(
        [str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    view = _site_packages_view(tmp_path / "deps")
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(venv_site, "zz-deps.pth").write_text(f"{view}\n", encoding="utf-8")

    for command in setup_commands():
        argv = shlex.split(command)
        assert argv[:4] == ["python", "-m", "pip", "install"], command
        argv = [str(python), *argv[1:], "--no-index", "--no-build-isolation"]
        proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command!r} failed:\n{proc.stdout[-3000:]}{proc.stderr}"

    probe = (
        "import specsample, specsample_numpy; "
        "print(specsample.__file__); print(specsample.get_backend('numpy').name)"
    )
    proc = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    where, name = proc.stdout.split()
    assert Path(where).is_relative_to(repo), where  # the editable install of the copy
    assert name == "numpy"
