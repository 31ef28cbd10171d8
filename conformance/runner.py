"""Run the conformance suite programmatically: ``run_conformance`` runs pytest on the suite's
package (``pytest --pyargs specsample.conformance``), so the CLI, pytest and the project's tests
give the same verdict, and returns the results document."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .options import BACKEND_OPTION, CONFORMANCE_PACKAGE, LEVEL_OPTION, LEVELS
from .results import summarize


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
    jobs: int = 1,
    progress: bool | None = None,
) -> ConformanceRun:
    """Like :func:`run_conformance`, also returning pytest's exit code and the requested backends
    that could not run."""
    import pytest

    from .options import resolve_backends
    from .results import build, write

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    available, unavailable = resolve_backends(list(backends) if backends else None)
    order = list(available) + list(unavailable)
    tested: dict[str, dict[str, Any]] = {}
    code = 0
    if progress is None:
        progress = quiet and sys.stderr.isatty()
    if available and jobs > 1 and len(available) > 1:
        tested, code = _run_parallel(available, level, pytest_args, quiet, jobs, progress)
    elif available:
        # No ini file (-c devnull): the project in the current directory must not change the run
        # (its addopts, python_files...); -rfEs lists failures, errors and "not claimed" reasons.
        args = ["-c", os.devnull, "--pyargs", CONFORMANCE_PACKAGE, "-p", "no:cacheprovider"]
        # --no-header: the run's own header (rootdir, the devnull "configfile") says nothing useful.
        args += [LEVEL_OPTION, level, "-rfEs", "--no-header"]
        if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
            args += ["-p", "specsample.conformance.plugin"]
        for name in available:
            args += [BACKEND_OPTION, name]
        if quiet:
            args += ["-q"]
        args += list(pytest_args)
        capture = _Capture()
        plugins: list[Any] = [capture]
        if quiet:  # without -q, pytest's own output shows the progress
            from .progress import ConformanceProgress

            # A bar on a terminal; one line per backend otherwise (a log stays readable).
            plugins.append(ConformanceProgress(bar=progress))
        sink = io.StringIO()
        with contextlib.ExitStack() as stack:
            if quiet:
                stack.enter_context(contextlib.redirect_stdout(sink))
            code = int(pytest.main(args, plugins=plugins))
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


def _run_parallel(
    names: list[str],
    level: str,
    pytest_args: Sequence[str],
    quiet: bool,
    jobs: int,
    progress: bool = False,
) -> tuple[dict[str, dict[str, Any]], int]:
    """One ``specsample conform`` subprocess per backend, ``jobs`` at a time.

    Separate processes keep one backend's state (CUDA context, compile caches, a crash) away from
    the others; on a GPU the checks are latency-bound, so several backends share it well. Each
    child's output is printed as one block when it ends (unless ``quiet``), with a line per backend
    on stderr either way; with ``progress``, a bar over the backends (the running ones named).
    """
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(names),
        unit="backend",
        desc="specsample conform",
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not progress,
    )
    tested: dict[str, dict[str, Any]] = {}
    worst = 0
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen, str, Any, float]] = {}
    with tempfile.TemporaryDirectory(prefix="specsample-conform-") as tmp:
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    name = pending.pop(0)
                    path = os.path.join(tmp, f"backend-{names.index(name)}.json")
                    log = tempfile.TemporaryFile(mode="w+", dir=tmp)
                    cmd = [sys.executable, "-m", "specsample", "conform", "--backend", name]
                    cmd += ["--level", level, "--json", path, "-q", *_forward(pytest_args)]
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
                    running[name] = (proc, path, log, time.perf_counter())
                    bar.set_postfix_str("running: " + ", ".join(running), refresh=False)
                finished = [n for n, (p, *_rest) in running.items() if p.poll() is not None]
                if not finished:
                    time.sleep(0.2)
                    bar.refresh()
                    continue
                for name in finished:
                    proc, path, log, t0 = running.pop(name)
                    log.seek(0)
                    output = log.read()
                    log.close()
                    checks = _read_checks(path, name)
                    if proc.returncode in (2, 3, 4) or checks is None:
                        raise ConformanceRunError(
                            f"the conformance run of backend {name!r} ended with exit code "
                            f"{proc.returncode} and no results: {output[-3000:]}"
                        )
                    tested[name] = checks
                    worst = max(worst, proc.returncode)
                    counts = summarize(checks)
                    bar.write(
                        f"conformance {name}: {counts['pass']} pass, {counts['fail']} fail, "
                        f"{counts['not-claimed']} not claimed, {counts['error']} error "
                        f"({time.perf_counter() - t0:.0f} s)",
                        file=sys.stderr,
                    )
                    bar.update(1)
                    if not quiet:
                        print(f"===== {name} =====\n{output}", flush=True)
        finally:
            bar.close()
            for proc, *_rest in running.values():
                proc.terminate()
            for proc, *_rest in running.values():
                proc.wait()
    return {n: tested[n] for n in names}, worst


def _forward(pytest_args: Sequence[str]) -> list[str]:
    """``-k EXPR`` and ``-x`` go through the CLI; anything else cannot reach a child process."""
    out: list[str] = []
    args = list(pytest_args)
    while args:
        a = args.pop(0)
        if a == "-k" and args:
            out += ["-k", args.pop(0)]
        elif a == "-x":
            out.append("-x")
        else:
            raise ValueError(f"pytest argument {a!r} is not supported with jobs > 1 (only -k, -x)")
    return out


def _read_checks(path: str, name: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    entry = doc.get("backends", {}).get(name)
    if not entry or not entry.get("available"):
        return None
    return entry["checks"]


def run_conformance(
    backends: list[str] | None = None,
    level: str = "fast",
    json_path: str | None = None,
    pytest_args: Sequence[str] = (),
    quiet: bool = False,
    jobs: int = 1,
    progress: bool | None = None,
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
        jobs: check this many backends at once, each in its own process (``specsample conform``);
            1 (the default) runs every backend in this process. ``pytest_args`` may then hold only
            ``-k EXPR`` and ``-x``.
        progress: with ``quiet``, a progress bar on stderr (checks done, the one running, elapsed
            and estimated time left; with ``jobs`` > 1, backends done); False: one line per
            backend as it starts and ends instead. None (the default): a bar when stderr is a
            terminal. Without ``quiet`` pytest's own output shows the progress.

    Raises:
        ConformanceRunError: pytest could not run the suite.
    """
    return run(backends, level, json_path, pytest_args, quiet, jobs, progress).results
