"""The registry: built-ins through the hook, entry points one at a time, broken plugins reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import specsample
from specsample import registry

BUILTINS = ["torch-loop", "torch-vectorized", "torch-compile", "cuda-cpp", "triton", "cupy"]


def test_six_builtins_listed(fresh_registry):
    infos = {i.name: i for i in specsample.list_backends()}
    assert set(BUILTINS) <= set(infos)
    for name in ["torch-loop", "torch-vectorized", "torch-compile"]:
        assert infos[name].available, infos[name].reason
    for info in infos.values():
        assert info.available or info.reason, f"{info.name} is unavailable without a reason"


def test_unknown_backend_lists_known_names(fresh_registry):
    with pytest.raises(specsample.BackendUnavailable) as info:
        specsample.get_backend("nope")
    assert "torch-vectorized" in str(info.value) and "nope" in str(info.value)
    assert isinstance(info.value, specsample.UnknownBackend)


def test_reserved_names_are_the_builtins(fresh_registry):
    builtin = {i.name for i in specsample.list_backends() if i.plugin == "specsample"}
    assert builtin == set(registry.RESERVED_NAMES) == set(BUILTINS)


def test_unavailable_backend_says_why(fresh_registry, monkeypatch):
    cls = registry.backend_class("torch-loop")
    monkeypatch.setattr(cls, "is_available", classmethod(lambda c: (False, "no CUDA device")))
    with pytest.raises(specsample.BackendUnavailable, match="no CUDA device"):
        specsample.get_backend("torch-loop")


def make_plugin_dist(tmp_path):
    """Two entry-point plugins on a fake sys.path entry: one good, one that fails to import."""
    (tmp_path / "good_plugin.py").write_text(
        textwrap.dedent(
            """
            from specsample import Backend
            from specsample.hookspecs import hookimpl
            from specsample.backends.torch_vectorized import TorchVectorizedBackend

            class Good(TorchVectorizedBackend):
                name = "good-test-backend"
                description = "a test plugin"

            @hookimpl
            def register_backends(register):
                register(Good)
            """
        )
    )
    dist = tmp_path / "fake_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[specsample.backends]\nbroken = module_that_does_not_exist_xyz\ngood = good_plugin\n"
    )


def test_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch, fresh_registry):
    make_plugin_dist(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    infos = {i.name: i for i in specsample.list_backends()}
    assert infos["good-test-backend"].available and infos["good-test-backend"].plugin == "good"
    assert not infos["broken"].available
    assert "module_that_does_not_exist_xyz" in infos["broken"].reason
    assert [b.name for b in registry.broken_plugins()] == ["broken"]
    assert "torch-vectorized" in infos


def test_cli_list_survives_a_broken_plugin(tmp_path):
    make_plugin_dist(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "-m", "specsample", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert (
        rows["broken"]["available"] is False and "ModuleNotFoundError" in rows["broken"]["reason"]
    )
    assert rows["good-test-backend"]["available"] is True
    text = subprocess.run(
        [sys.executable, "-m", "specsample", "list"], capture_output=True, text=True, env=env
    )
    assert text.returncode == 0 and "broken" in text.stdout and "torch-loop" in text.stdout


def test_import_is_cheap():
    code = (
        "import sys, specsample, specsample.conformance, specsample.reports, specsample.hookspecs;"
        "heavy = [m for m in ('torch', 'triton', 'cupy', 'matplotlib') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_listing_imports_no_optional_backend_library():
    code = (
        "import sys, specsample; specsample.list_backends();"
        "print(','.join(m for m in ('cupy', 'torch.utils.cpp_extension') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
