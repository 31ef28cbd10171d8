"""The pytest11 plugin loads in every pytest run where specsample is installed: it must not break
an unrelated project (its own ``--backend`` option, no torch import, no extra tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _env():
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def test_unrelated_project_with_its_own_backend_option(tmp_path):
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import sys

            def pytest_addoption(parser):
                parser.addoption("--backend", action="store", default="fa2")
                parser.addoption("--level", action="store", default="x")

            def pytest_configure(config):
                # the specsample plugin is loaded, yet imported nothing heavy
                assert config.pluginmanager.has_plugin("specsample"), "plugin not loaded"
                heavy = [m for m in ("torch", "triton", "cupy") if m in sys.modules]
                assert not heavy, heavy
            """
        )
    )
    (tmp_path / "test_mine.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_backend_option(request):
                assert request.config.getoption("--backend") == "flashinfer"

            def test_nothing_heavy_imported():
                assert "torch" not in sys.modules
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--backend", "flashinfer", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout
    assert "specsample conformance" not in out.stdout  # no summary when no check ran


def test_plugin_import_is_cheap():
    code = (
        "import sys, specsample.conformance.plugin, specsample.conformance.options;"
        "print([m for m in ('torch', 'triton', 'cupy', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
