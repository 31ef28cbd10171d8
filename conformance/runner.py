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

from .options import BACKEND_OPTION, CHECKS_OPTION, CONFORMANCE_PACKAGE, LEVEL_OPTION, LEVELS
from .results import summarize


class ConformanceRunError(RuntimeError):
    """pytest could not run the suite (usage error, collection error, internal error)."""


@dataclass
class ConformanceRun:
    results: dict[str, Any]
    exit_code: int  # pytest's exit code (0 when no backend could run)
    unavailable_requested: dict[str, str]
    in_processes: bool = False  # each process printed its own part (jobs > 1 or a time budget)

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
    time_budget: float | None = None,
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
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be > 0 seconds, got {time_budget}")
    available, unavailable = resolve_backends(list(backends) if backends else None)
    order = list(available) + list(unavailable)
    tested: dict[str, dict[str, Any]] = {}
    code = 0
    if progress is None:
        progress = quiet and sys.stderr.isatty()
    in_processes = bool(available) and (jobs > 1 or time_budget is not None)
    if in_processes:
        tested, code = _run_parallel(
            available, level, pytest_args, quiet, jobs, progress, time_budget
        )
    elif available:
        # -rfEs lists failures, errors and "not claimed" reasons; --no-header: the run's own
        # header (rootdir, the devnull "configfile") says nothing useful.
        args = _suite_args(available, level) + ["-rfEs", "--no-header"]
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
    return ConformanceRun(results, code, requested_missing, in_processes)


#: Checks that take minutes at the full level: each runs in a process of its own when a
#: backend's checks are split (a scheduling hint only; every check runs either way).
LONG_CHECKS = ("block.exact", "tree.chain", "tree.acceptance-length", "tree.exact", "serving.exact")


def check_units(checks: Sequence[str]) -> list[list[str]]:
    """Split check names into the units of one process each: every long check alone (first, the
    longest start first), the others by family (the part of the name before the dot)."""
    units = [[c] for c in LONG_CHECKS if c in checks]
    families: dict[str, list[str]] = {}
    for c in checks:
        if c not in LONG_CHECKS:
            families.setdefault(c.split(".")[0], []).append(c)
    return units + list(families.values())


def _suite_args(names: Sequence[str], level: str) -> list[str]:
    """pytest arguments that run the suite on ``names`` at ``level``. No ini file (-c devnull):
    the project in the current directory must not change the run (its addopts, python_files...)."""
    args = ["-c", os.devnull, "--pyargs", CONFORMANCE_PACKAGE, "-p", "no:cacheprovider"]
    args += [LEVEL_OPTION, level]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        args += ["-p", "specsample.conformance.plugin"]
    for name in names:
        args += [BACKEND_OPTION, name]
    return args


class _Collected:
    """Records the (backend, check) pairs a pytest run selects (used with ``--collect-only``)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def pytest_collection_finish(self, session: Any) -> None:
        for item in session.items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            if "specsample_backend" in params and "specsample_check" in params:
                self.pairs.append((params["specsample_backend"], params["specsample_check"]))


def _selected_checks(
    names: list[str], level: str, pytest_args: Sequence[str]
) -> dict[str, list[str]]:
    """Per backend, the checks ``pytest_args`` (``-k``, ``--specsample-checks``) select, found by
    collecting the suite in this process (no check runs)."""
    import pytest

    args = _suite_args(names, level) + ["--collect-only", "-q"]
    args += [a for a in pytest_args if a != "-x"]
    collected = _Collected()
    with contextlib.redirect_stdout(io.StringIO()):
        code = int(pytest.main(args, plugins=[collected]))
    if code not in (0, 5):  # 5: nothing selected
        raise ConformanceRunError(
            f"pytest could not collect the conformance suite (exit code {code})"
        )
    selected: dict[str, list[str]] = {name: [] for name in names}
    for backend, check in collected.pairs:
        selected.setdefault(backend, []).append(check)
    return selected


def _units(
    names: list[str], level: str, pytest_args: Sequence[str], jobs: int
) -> list[tuple[str, list[str] | None]]:
    """``(backend, checks)`` per process: one per backend (checks None: all that the arguments
    select), or, with more processes than backends, each backend's selected checks split by
    :func:`check_units`, the long checks of every backend first."""
    if jobs <= len(names):
        return [(name, None) for name in names]
    selected = _selected_checks(names, level, pytest_args)
    per_backend = {name: check_units(selected[name]) for name in names}
    units: list[tuple[str, list[str] | None]] = []
    for rank in range(max((len(u) for u in per_backend.values()), default=0)):
        units += [(name, u[rank]) for name, u in per_backend.items() if rank < len(u)]
    return units


_WRITTEN = "results written to "  # the line conformance/cli.py prints after --json


def _run_parallel(
    names: list[str],
    level: str,
    pytest_args: Sequence[str],
    quiet: bool,
    jobs: int,
    progress: bool = False,
    time_budget: float | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """``specsample conform`` subprocesses, ``jobs`` at a time: one per backend, or, with more
    jobs than backends, one per backend and unit of checks (:func:`check_units`).

    With ``time_budget`` (seconds), the processes still running when it is spent are stopped and
    their checks, with those of the processes never started, are reported as errors that say so;
    every finished process's verdicts are kept.

    Separate processes keep one backend's state (CUDA context, compile caches, a crash) away from
    the others; on a GPU the checks are latency-bound, so several processes share it well. Each
    child's output is printed as one block when it ends (unless ``quiet``), with a line per
    process on stderr either way; with ``progress``, a bar over the processes (the running ones
    named). A backend's results are the union of its units', in report order.
    """
    from tqdm.auto import tqdm

    from .checks import check_names

    units = _units(names, level, pytest_args, jobs)
    env = child_env(jobs)
    split = any(checks is not None for _, checks in units)
    forwarded = _forward(pytest_args)
    bar = tqdm(
        total=len(units),
        unit="process" if split else "backend",
        desc="specsample conform",
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not progress,
    )
    tested: dict[str, dict[str, Any]] = {}
    worst = 0
    pending = list(enumerate(units))
    running: dict[int, tuple[subprocess.Popen, str, Any, float]] = {}
    start = time.perf_counter()
    deadline = None if time_budget is None else start + time_budget

    def label(index: int) -> str:
        name, checks = units[index]
        if checks is None:
            return name
        shown = checks[0] if len(checks) == 1 else checks[0].split(".")[0] + ".*"
        return f"{name} [{shown}]"

    with tempfile.TemporaryDirectory(prefix="specsample-conform-") as tmp:
        try:
            while pending or running:
                late = deadline is not None and time.perf_counter() > deadline
                while pending and len(running) < jobs and not late:
                    index, (name, checks) = pending.pop(0)
                    path = os.path.join(tmp, f"unit-{index}.json")
                    log = tempfile.TemporaryFile(mode="w+", dir=tmp)
                    cmd = [sys.executable, "-m", "specsample", "conform", "--backend", name]
                    cmd += ["--level", level, "--json", path, "-q", *forwarded]
                    if checks is not None:
                        cmd += ["--checks", ",".join(checks)]
                    proc = subprocess.Popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env
                    )
                    running[index] = (proc, path, log, time.perf_counter())
                    bar.set_postfix_str(
                        "running: " + ", ".join(label(i) for i in running), refresh=False
                    )
                finished = [i for i, (p, *_rest) in running.items() if p.poll() is not None]
                if not finished and late:
                    # what finished before the deadline has been read; the rest is stopped
                    stopped = _stop_at_deadline(
                        units, running, pending, names, level, pytest_args, time_budget
                    )
                    for name, checks in stopped.items():
                        tested.setdefault(name, {}).update(checks)
                    worst = max(worst, 1)
                    bar.write(
                        f"conformance: --time-budget of {time_budget:g} s spent: "
                        f"{sum(map(len, stopped.values()))} checks reported as errors",
                        file=sys.stderr,
                    )
                    break
                if not finished:
                    time.sleep(0.2)
                    bar.refresh()
                    continue
                for index in finished:
                    name = units[index][0]
                    proc, path, log, t0 = running.pop(index)
                    log.seek(0)
                    # (the child's own "results written to" line names a file of this run's
                    # temporary folder: not the user's)
                    output = "".join(
                        line for line in log.readlines() if not line.startswith(_WRITTEN + tmp)
                    )
                    log.close()
                    checks = _read_checks(path, name)
                    if proc.returncode in (2, 3, 4) or checks is None:
                        raise ConformanceRunError(
                            f"the conformance run of {label(index)} ended with exit code "
                            f"{proc.returncode} and no results: {output[-3000:]}"
                        )
                    tested.setdefault(name, {}).update(checks)
                    worst = max(worst, proc.returncode)
                    counts = summarize(checks)
                    bar.write(
                        f"conformance {label(index)}: {counts['pass']} pass, {counts['fail']} "
                        f"fail, {counts['not-claimed']} not claimed, {counts['error']} error "
                        f"({time.perf_counter() - t0:.0f} s)",
                        file=sys.stderr,
                    )
                    bar.update(1)
                    if not quiet:
                        print(f"===== {label(index)} =====\n{output}", flush=True)
        finally:
            bar.close()
            for proc, *_rest in running.values():
                proc.terminate()
            for proc, *_rest in running.values():
                proc.wait()
    order = check_names(level)
    return {n: {c: tested[n][c] for c in order if c in tested.get(n, {})} for n in names}, worst


def _stop_at_deadline(
    units: list[tuple[str, list[str] | None]],
    running: dict[int, tuple[subprocess.Popen, str, Any, float]],
    pending: list[tuple[int, tuple[str, list[str] | None]]],
    names: list[str],
    level: str,
    pytest_args: Sequence[str],
    time_budget: float | None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Stop the running processes; the checks of theirs and of the pending units, per backend,
    as ``error`` results (a process's own JSON is written only when it ends, so a stopped
    process's finished checks are lost with it)."""
    for proc, *_rest in running.values():
        proc.terminate()
    whole = [units[i][0] for i in running if units[i][1] is None]
    whole += [u[0] for _, u in pending if u[1] is None]
    selected = _selected_checks(sorted(set(whole)), level, pytest_args) if whole else {}
    stopped: dict[str, dict[str, dict[str, Any]]] = {}
    now = time.perf_counter()
    for index, (_proc, _path, _log, t0) in running.items():
        name, checks = units[index]
        details = (
            f"not finished within --time-budget {time_budget:g} s (stopped after {now - t0:.0f} s)"
        )
        for check in checks if checks is not None else selected.get(name, []):
            stopped.setdefault(name, {})[check] = _error(details)
    for _, (name, checks) in pending:
        for check in checks if checks is not None else selected.get(name, []):
            stopped.setdefault(name, {})[check] = _error(
                f"not started within --time-budget {time_budget:g} s"
            )
    pending.clear()
    return stopped


def _error(details: str) -> dict[str, Any]:
    return {"outcome": "error", "duration_s": 0.0, "details": details}


def child_env(jobs: int) -> dict[str, str]:
    """The environment of ``jobs`` concurrent children: the CPU cores shared out among them.

    torch's default (one intra-op thread per core in every process) oversubscribes the machine
    ``jobs`` times over, which slows the float64 references of the long checks several-fold; an
    ``OMP_NUM_THREADS`` the user set is kept.
    """
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        getaffinity = getattr(os, "sched_getaffinity", None)
        cores = len(getaffinity(0)) if getaffinity else (os.cpu_count() or 1)
        env["OMP_NUM_THREADS"] = str(max(1, cores // max(1, jobs)))
    return env


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
        elif a == CHECKS_OPTION and args:
            out += ["--checks", args.pop(0)]
        else:
            raise ValueError(
                f"pytest argument {a!r} is not supported with jobs > 1 (only -k, -x, --checks)"
            )
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
    time_budget: float | None = None,
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
        jobs: run this many ``specsample conform`` processes at once: one per backend, and with
            more jobs than backends each backend's checks split over processes
            (:func:`check_units`); 1 (the default) runs everything in this process.
            ``pytest_args`` may then hold only ``-k EXPR``, ``-x`` and ``--specsample-checks``.
        progress: with ``quiet``, a progress bar on stderr (checks done, the one running, elapsed
            and estimated time left; with ``jobs`` > 1, backends done); False: one line per
            backend as it starts and ends instead. None (the default): a bar when stderr is a
            terminal. Without ``quiet`` pytest's own output shows the progress.
        time_budget: seconds; the checks still running (or not started) when it is spent are
            reported as ``error`` with a message that says so. Runs the suite in child processes
            (as ``jobs`` > 1 does).

    Raises:
        ConformanceRunError: pytest could not run the suite.
    """
    return run(backends, level, json_path, pytest_args, quiet, jobs, progress, time_budget).results
