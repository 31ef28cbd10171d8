"""The registry against hostile or sloppy plugins: reserved names, atomic per-plugin loading,
BaseException containment, hook-name validation, the allow-list, error kinds, the instance lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import specsample
from specsample import registry
from specsample.cli import main

BUILTINS = ["torch-loop", "torch-vectorized", "torch-compile", "cuda-cpp", "triton", "cupy"]

# A backend returning the wrong tokens, as a hijacker would.
WRONG = """
import torch
from specsample import Backend, VerifyOutput
from specsample.hookspecs import hookimpl

class Wrong(Backend):
    name = {name!r}
    description = "returns zeros"

    def _verify(self, inputs):
        b, k = inputs.batch_size, inputs.num_draft
        return VerifyOutput(
            torch.zeros(b, k + 1, dtype=torch.int64), torch.ones(b, dtype=torch.int64)
        )
"""


def install(tmp_path: Path, plugins: dict[str, str]) -> Path:
    """Fake-install plugin modules ``{entry-point name: module source}`` on a sys.path folder."""
    lines = ["[specsample.backends]"]
    for name, source in plugins.items():
        # A module name unique to this test: sys.modules keeps what an earlier test imported.
        module = re.sub(r"\W", "_", f"plug_{name}_{tmp_path.name}")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        lines.append(f"{name} = {module}")
    dist = tmp_path / "hostile_plugins-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def good(name: str) -> str:
    return f"""
from specsample.hookspecs import hookimpl
from specsample.backends.torch_loop import TorchLoopBackend

class Good(TorchLoopBackend):
    name = {name!r}
    description = "a well-behaved plugin"

@hookimpl
def register_backends(register):
    register(Good)
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch, fresh_registry):
    """Install plugins for this test: ``plugins({name: source})`` then list/get as usual."""
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)

    def _install(sources: dict[str, str]) -> dict[str, specsample.BackendInfo]:
        install(tmp_path, sources)
        monkeypatch.syspath_prepend(str(tmp_path))
        registry.reset()
        return {i.name: i for i in specsample.list_backends()}

    return _install


def _broken(name: str) -> registry.BrokenPlugin:
    return next(b for b in registry.broken_plugins() if b.name == name)


def test_trylast_plugin_cannot_take_a_builtin_name(plugins):
    """The reported hijack: @hookimpl(trylast=True) registering "torch-vectorized"."""
    source = WRONG.format(name="torch-vectorized") + textwrap.dedent(
        """
        @hookimpl(trylast=True)
        def register_backends(register):
            register(Wrong)
        """
    )
    infos = plugins({"hijack": source, "after": good("after-backend")})
    for name in BUILTINS:  # all built-ins still there, from specsample
        assert infos[name].plugin == "specsample", name
    assert registry.backend_class("torch-vectorized").__module__.startswith("specsample.backends")
    assert "reserved built-in backend name" in _broken("hijack").error
    assert "'torch-vectorized'" in _broken("hijack").error
    assert infos["after-backend"].available  # the next plugin loaded normally
    assert "specsample" not in {b.name for b in registry.broken_plugins()}
    ids = specsample.get_backend("torch-vectorized").verify(
        __import__("torch").tensor([[1]]),
        None,
        __import__("torch").tensor([[[0.0, 1.0], [0.0, 1.0]]]),
        mode="greedy",
    )
    assert ids.token_ids.tolist() == [[1, 1]]


@pytest.mark.parametrize("order", ["tryfirst=True", "trylast=True", ""])
def test_plugin_taking_a_builtin_name_loses_whatever_its_ordering(plugins, order):
    source = WRONG.format(name="torch-loop") + textwrap.dedent(
        f"""
        @hookimpl({order})
        def register_backends(register):
            register(Wrong)
        """
    )
    infos = plugins({"hijack": source})
    assert infos["torch-loop"].plugin == "specsample"
    assert not infos["hijack"].available and "'torch-loop'" in infos["hijack"].reason


def test_a_plugin_loads_completely_or_not_at_all(plugins):
    source = """
from specsample.hookspecs import hookimpl
from specsample.backends.torch_loop import TorchLoopBackend

class Fine(TorchLoopBackend):
    name = "half-one"

class Dup(TorchLoopBackend):
    name = "torch-compile"

@hookimpl
def register_backends(register):
    register(Fine)
    register(Dup)
"""
    infos = plugins({"half": source})
    assert "half-one" not in infos  # its first registration is not kept
    assert not infos["half"].available and "'torch-compile'" in infos["half"].reason


def test_two_plugins_same_backend_name_first_wins(plugins):
    infos = plugins({"first": good("shared-name"), "second": good("shared-name")})
    assert infos["shared-name"].plugin == "first"
    assert "already registered by plugin 'first'" in infos["second"].reason


@pytest.mark.parametrize(
    "statement, kind",
    [
        ("raise SystemExit(3)", "SystemExit"),
        ("raise GeneratorExit()", "GeneratorExit"),
        ("raise RuntimeError('boom')", "RuntimeError"),
    ],
)
def test_base_exceptions_at_import_are_contained(plugins, statement, kind):
    infos = plugins({"bad": statement + "\n", "fine": good("fine-backend")})
    assert not infos["bad"].available and infos["bad"].reason.startswith(kind)
    assert infos["fine-backend"].available
    assert set(BUILTINS) <= set(infos)


@pytest.mark.parametrize("statement", ["raise SystemExit(4)", "raise GeneratorExit()"])
def test_base_exceptions_in_the_hook_are_contained(plugins, statement):
    source = f"""
from specsample.hookspecs import hookimpl

@hookimpl
def register_backends(register):
    {statement}
"""
    infos = plugins({"bad": source, "fine": good("fine-backend")})
    assert not infos["bad"].available and infos["fine-backend"].available


def test_keyboard_interrupt_is_not_swallowed(plugins):
    with pytest.raises(KeyboardInterrupt):
        plugins({"ctrl-c": "raise KeyboardInterrupt\n"})


def test_misspelled_hook_is_a_broken_plugin(plugins):
    source = good("never-registered").replace("def register_backends", "def register_backend")
    infos = plugins({"typo": source})
    assert "never-registered" not in infos
    reason = infos["typo"].reason
    assert "'register_backend' matches no specsample hookspec" in reason
    assert "did you mean 'register_backends'" in reason


def test_plugin_without_a_hookimpl_is_broken(plugins):
    source = good("undecorated").replace("@hookimpl\n", "")
    infos = plugins({"plain": source})
    assert "defines no @hookimpl register_backends" in infos["plain"].reason


def test_wrapper_hook_is_broken(plugins):
    source = good("wrapped").replace("@hookimpl\n", "@hookimpl(wrapper=True)\n")
    source = source.replace("    register(Good)", "    register(Good)\n    yield")
    infos = plugins({"wrap": source})
    assert "not a wrapper" in infos["wrap"].reason and "wrapped" not in infos


def test_get_backend_names_the_load_error_of_a_broken_plugin(plugins):
    plugins({"broken": "import module_that_does_not_exist_xyz\n"})
    with pytest.raises(specsample.BackendUnavailable) as info:
        specsample.get_backend("broken")
    assert not isinstance(info.value, specsample.UnknownBackend)
    assert "failed to load" in str(info.value)
    assert "module_that_does_not_exist_xyz" in str(info.value)
    with pytest.raises(specsample.UnknownBackend) as info:  # a backend it may have provided
        specsample.get_backend("numpy-like")
    assert "broken (ModuleNotFoundError" in str(info.value)


def test_unknown_and_unavailable_are_distinct(fresh_registry, monkeypatch):
    with pytest.raises(specsample.UnknownBackend, match="unknown backend 'nope'"):
        specsample.get_backend("nope")
    cls = registry.backend_class("torch-loop")
    monkeypatch.setattr(cls, "is_available", classmethod(lambda c: (False, "no CUDA device")))
    with pytest.raises(specsample.BackendUnavailable) as info:
        specsample.get_backend("torch-loop")
    assert not isinstance(info.value, specsample.UnknownBackend)


def test_allow_list(plugins, monkeypatch):
    sources = {"alpha": good("alpha-backend"), "beta": good("beta-backend")}
    assert {"alpha-backend", "beta-backend"} <= set(plugins(sources))  # unset: all
    monkeypatch.setenv(registry.PLUGINS_ENV, "beta")
    infos = plugins(sources)
    assert "beta-backend" in infos and "alpha-backend" not in infos
    assert "alpha" in registry.disabled_plugins()
    with pytest.raises(specsample.UnknownBackend, match="left out by SPECSAMPLE_PLUGINS: .*alpha"):
        specsample.get_backend("alpha-backend")
    monkeypatch.setenv(registry.PLUGINS_ENV, "")
    infos = plugins(sources)
    assert not {"alpha-backend", "beta-backend", "numpy"} & set(infos)
    assert set(BUILTINS) <= set(infos)  # built-ins always load
    monkeypatch.setenv(registry.PLUGINS_ENV, "gamma,beta")
    infos = plugins(sources)
    assert "beta-backend" in infos
    assert "named in SPECSAMPLE_PLUGINS but not installed" in infos["gamma"].reason


def test_cli_plugins_option(plugins, capsys, monkeypatch):
    plugins({"alpha": good("alpha-backend"), "beta": good("beta-backend")})
    assert main(["--plugins", "alpha", "list", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert "alpha-backend" in names and "beta-backend" not in names
    assert registry.PLUGINS_ENV not in os.environ  # restored after the command
    assert main(["--plugins", "", "list", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)}
    assert not {"alpha-backend", "beta-backend"} & names and set(BUILTINS) <= names


def test_concurrent_cold_get_backend_builds_one_instance(fresh_registry, monkeypatch):
    cls = registry.backend_class("torch-loop")
    built = []
    original = cls.__init__

    def slow_init(self, *a, **k):
        built.append(self)
        time.sleep(0.05)  # widen the window two unlocked callers would both fall into
        original(self, *a, **k)

    monkeypatch.setattr(cls, "__init__", slow_init)
    got: list = []
    threads = [
        threading.Thread(target=lambda: got.append(specsample.get_backend("torch-loop")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len({id(g) for g in got}) == 1 and len(got) == 8


def test_system_exit_at_import_cli_list_still_works(tmp_path):
    """The reported reproducer: a plugin raising SystemExit at import made `list` exit 3."""
    install(tmp_path, {"exiter": "raise SystemExit(3)\n"})
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop(registry.PLUGINS_ENV, None)
    run = subprocess.run(
        [sys.executable, "-m", "specsample", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert rows["exiter"]["available"] is False
    assert rows["exiter"]["reason"] == "SystemExit: 3"
    assert rows["torch-loop"]["available"] is True
