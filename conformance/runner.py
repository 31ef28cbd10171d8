"""Run the conformance suite programmatically: ``run_conformance`` runs pytest on the suite's
package (``pytest --pyargs specsample.conformance``), so the CLI, pytest and the project's tests
give the same verdict, and returns the results document."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .options import BACKEND_OPTION, CONFORMANCE_PACKAGE, LEVEL_OPTION, LEVELS


class ConformanceRunError(RuntimeError):
    """pytest could not run the suite (usage error, collection error, internal error)."""


@dataclass
class ConformanceRun:
    results: dict[str, Any]
    exit_code: int  # pytest's exit code (0 when no backend could run)
    unavailable_requested: dict[str, str]

    @property
    def ok(self) -> bool:
        from .results import failed

        return (
            self.exit_code in (0, 5) and not failed(self.results) and not self.unavailable_requested
        )


class _Capture:
    """Reads the plugin's results at the end of the pytest session."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None

    def pytest_sessionfinish(self, session: Any) -> None:
        collector = session.config.pluginmanager.get_plugin("specsample-results")
        if collector is not None:
            self.document = collector.document()


def run(
    backends: Sequence[str] | None = None,
    level: str = "fast",
    json_path: str | None = None,
    pytest_args: Sequence[str] = (),
    quiet: bool = False,
) -> ConformanceRun:
    """Like :func:`run_conformance`, also returning pytest's exit code and the requested backends
    that could not run."""
    import pytest

    from .options import resolve_backends
    from .results import build, write

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    available, unavailable = resolve_backends(list(backends) if backends else None)
    order = list(available) + list(unavailable)
    tested: dict[str, dict[str, Any]] = {}
    code = 0
    if available:
        # No ini file (-c devnull): the project in the current directory must not change the run
        # (its addopts, python_files...); -rfEs lists failures, errors and "not claimed" reasons.
        args = ["-c", os.devnull, "--pyargs", CONFORMANCE_PACKAGE, "-p", "no:cacheprovider"]
        args += [LEVEL_OPTION, level, "-rfEs"]
        if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            args += ["-p", "specsample.conformance.plugin"]
        for name in available:
            args += [BACKEND_OPTION, name]
        if quiet:
            args += ["-q", "--no-header"]
        args += list(pytest_args)
        capture = _Capture()
        sink = io.StringIO()
        with contextlib.ExitStack() as stack:
            if quiet:
                stack.enter_context(contextlib.redirect_stdout(sink))
            code = int(pytest.main(args, plugins=[capture]))
        if code in (2, 3, 4):
            tail = sink.getvalue()[-3000:] if quiet else ""
            raise ConformanceRunError(
                f"pytest could not run the conformance suite (exit code {code}){tail and ': ' + tail}"
            )
        if capture.document is not None:
            tested = {
                name: b["checks"]
                for name, b in capture.document["backends"].items()
                if b["available"]
            }
        for name in available:
            tested.setdefault(name, {})
    results = build(level, tested, unavailable, order)
    if json_path:
        write(json_path, results)
    requested_missing = unavailable if backends else {}
    return ConformanceRun(results, code, requested_missing)


def run_conformance(
    backends: list[str] | None = None,
    level: str = "fast",
    json_path: str | None = None,
    pytest_args: Sequence[str] = (),
    quiet: bool = False,
) -> dict:
    """Run the conformance suite and return the results document (schema
    ``specsample.conformance/1``, see docs/conformance.md).

    Args:
        backends: backend names; None for every registered backend (the unavailable ones are
            listed with ``available: false`` and their reason).
        level: ``"fast"`` (CPU-friendly) or ``"full"`` (more samples and shapes, GPU-only cases).
        json_path: also write the document there.
        pytest_args: extra pytest arguments (``["-k", "stats"]``, ``["-x"]``...).
        quiet: suppress pytest's output.

    Raises:
        ConformanceRunError: pytest could not run the suite.
    """
    return run(backends, level, json_path, pytest_args, quiet).results
