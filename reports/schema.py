"""The benchmark results file: a versioned JSON document (schema ``specsample.bench/1``).

Top level::

    {
      "schema": "specsample.bench/1",
      "created": ISO-8601 UTC time,
      "command": the exact command line (list of strings),
      "config": the sweep's settings (grid, timing method, budgets),
      "environment": see specsample.reports.environment,
      "device": {"type": "cuda"|"cpu", "name", "l2_bytes", "copy_bandwidth_Bps", "launch_floor_s"},
      "backends": {NAME: {"available", "reason", "capabilities", "plugin",
                          "peer" (the library it wraps, "" for none; docs/peers.md)}},
      "cells": [CELL, ...],
      "interrupted": bool (Ctrl-C: the cells done so far), "complete": bool
    }

A CELL is one (backend, mode, dtype, batch, k, vocab, accept) point; see docs/benchmarks.md for
every field. ``status`` is ``"ok"``, ``"skipped"`` (the backend does not claim it; ``reason`` says
why) or ``"error"`` (``reason`` holds the error). Times are in seconds; ``timing.statistic`` names
the headline statistic (always ``"median"``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from specsample.cli_options import UsageError

BENCH_SCHEMA = "specsample.bench/1"
CONFORMANCE_SCHEMA = "specsample.conformance/1"
E2E_SCHEMA = "specsample.e2e/1"  # specsample.decode.e2e.SCHEMA; validated in .e2e_schema

CELL_KEY_FIELDS = ("backend", "mode", "dtype", "batch", "k", "vocab", "accept")
_STATUSES = ("ok", "skipped", "error")


class SchemaError(UsageError, ValueError):
    """A results or conformance file cannot be read or does not follow its schema (the message
    is one line; the command line prints it and exits 2)."""


def cell_key(cell: dict[str, Any]) -> tuple:
    """The identity of a cell across runs: (backend, mode, dtype, batch, k, vocab, accept)."""
    return tuple(cell[f] for f in CELL_KEY_FIELDS)


def cell_label(cell: dict[str, Any]) -> str:
    """A short human label, e.g. ``random f32 B=8 K=4 V=32000 high``."""
    dtype = str(cell["dtype"]).replace("float", "f").replace("bf16", "bf16")
    return (
        f"{cell['mode']} {dtype} B={cell['batch']} K={cell['k']} V={cell['vocab']} {cell['accept']}"
    )


_OUTCOMES = ("pass", "fail", "not-claimed", "error")  # specsample.conformance.results.OUTCOMES


def _show(value: Any) -> str:
    """A value as it appears in the file (JSON), shortened for a one-line message."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Fields:
    """Checks on one JSON object, each naming the field by its path (``cells[3].timing.median``)."""

    def __init__(self, obj: Any, where: str, what: str = "an object") -> None:
        if not isinstance(obj, dict):
            raise SchemaError(f"{where} must be {what}, got {_show(obj)}")
        self.obj = obj
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, expected: str) -> SchemaError:
        return SchemaError(f"{self.path(key)} must be {expected}, got {_show(self.obj[key])}")

    def present(self, key: str, required: bool) -> bool:
        if key in self.obj:
            return True
        if required:
            raise SchemaError(f"{self.path(key)} is missing")
        return False

    def number(
        self,
        key: str,
        *,
        low: float = 0.0,
        strict: bool = False,
        null: bool = True,
        required: bool = False,
    ) -> None:
        """A finite number ``> low`` (``strict``) or ``>= low``; None allowed with ``null``."""
        if not self.present(key, required):
            return
        value = self.obj[key]
        if null and _is_nan(value):
            # a statistic of no samples: earlier versions wrote NaN where null is written now
            self.obj[key] = value = None
        if value is None and null:
            return
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > low if strict else value >= low)
        )
        if not ok:
            expected = "a positive number" if strict and low == 0 else f"a number >= {low:g}"
            raise self.fail(key, expected + (" or null" if null else ""))

    def integer(self, key: str, *, low: int = 0, required: bool = False) -> None:
        if not self.present(key, required):
            return
        value = self.obj[key]
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise self.fail(key, f"an integer >= {low}")

    def string(self, key: str, *, null: bool = False, required: bool = False) -> None:
        if not self.present(key, required):
            return
        value = self.obj[key]
        if not (isinstance(value, str) or (null and value is None)):
            raise self.fail(key, "a string" + (" or null" if null else ""))

    def boolean(self, key: str, *, required: bool = False) -> None:
        if self.present(key, required) and not isinstance(self.obj[key], bool):
            raise self.fail(key, "true or false")

    def sub(self, key: str, *, null: bool = True, required: bool = False) -> _Fields | None:
        """The nested object ``key`` (None when absent, or null and allowed)."""
        if not self.present(key, required):
            return None
        value = self.obj[key]
        if value is None and null:
            return None
        return _Fields(value, self.path(key), "an object" + (" or null" if null else ""))

    def array(self, key: str, *, required: bool = False) -> list | None:
        if not self.present(key, required):
            return None
        if not isinstance(self.obj[key], list):
            raise self.fail(key, "a list")
        return self.obj[key]


def _validate_timing(t: _Fields, median_required: bool) -> None:
    t.number("median", strict=True, null=not median_required, required=median_required)
    for key in (
        "q1",
        "q3",
        "iqr",
        "mean",
        "min",
        "max",
        "first_call_s",
        "host_enqueue_s",
        "gpu_delay_s",
    ):
        t.number(key)
    t.integer("n")
    t.string("statistic", null=True)
    samples = t.array("samples", required=median_required)
    for j, value in enumerate(samples or []):
        if not (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= 0
        ):
            raise SchemaError(f"{t.path('samples')}[{j}] must be a number >= 0, got {_show(value)}")


def _validate_cell(cell: Any, where: str) -> None:
    c = _Fields(cell, where)
    for key in ("backend", "mode", "dtype"):
        c.string(key, required=True)
        if not cell[key]:
            raise c.fail(key, "a non-empty string")
    c.integer("batch", required=True)
    c.integer("k", required=True)
    c.integer("vocab", low=1, required=True)
    c.present("accept", required=True)
    accept = cell["accept"]
    if not (
        (isinstance(accept, str) and accept)
        or (
            isinstance(accept, (int, float))
            and not isinstance(accept, bool)
            and math.isfinite(accept)
        )
    ):
        raise c.fail("accept", "a regime name or a number")
    c.present("status", required=True)
    if cell["status"] not in _STATUSES:
        raise c.fail("status", "one of " + ", ".join(f'"{s}"' for s in _STATUSES))
    c.string("reason", null=True)
    c.boolean("capped")
    c.number("wall_s")
    ok = cell["status"] == "ok"
    timing = c.sub("timing", null=not ok, required=ok)
    if timing is not None:
        _validate_timing(timing, median_required=ok)
        wall = timing.sub("wall")
        if wall is not None:
            _validate_timing(wall, median_required=False)
    graph = c.sub("graph")
    if graph is not None and graph.obj.get("status") == "ok":
        _validate_timing(graph, median_required=False)
    # An "ok" cell carries what the report derives from it (see docs/benchmarks.md).
    floor = c.sub("floor", null=not ok, required=ok)
    if floor is not None:
        for key in ("launch_s", "bytes_s", "floor_s"):
            floor.number(key)
        floor.number("ratio", required=ok)
        floor.string("bound", null=True)
    bandwidth = c.sub("bandwidth", null=not ok, required=ok)
    if bandwidth is not None:
        bandwidth.number("achieved_Bps")
        bandwidth.number("fraction_of_copy", required=ok)
    acceptance = c.sub("acceptance", null=not ok, required=ok)
    if acceptance is not None:
        for key in ("measured_length", "expected_length"):
            acceptance.number(key, null=not ok, required=ok)
        for key, value in acceptance.obj.items():
            if not isinstance(value, (str, dict, list)):
                acceptance.number(key)
    bytes_ = c.sub("bytes")
    if bytes_ is not None:
        for key in bytes_.obj:
            bytes_.number(key)
    launches = c.sub("launches")
    if launches is not None:
        for key, value in launches.obj.items():
            if not isinstance(value, str):
                launches.number(key)


def validate_results(doc: Any) -> dict[str, Any]:
    """Check ``doc`` against ``specsample.bench/1``; return it.

    Raises:
        SchemaError: the first problem, naming the field by its path, e.g.
            ``cells[3].timing.median must be a positive number, got "abc"``.
    """
    if not isinstance(doc, dict):
        raise SchemaError(f"results must be a JSON object, got {_show(doc)}")
    top = _Fields(doc, "")
    if doc.get("schema") != BENCH_SCHEMA:
        raise SchemaError(f'schema must be "{BENCH_SCHEMA}", got {_show(doc.get("schema"))}')
    top.string("created", required=True)
    command = top.array("command", required=True)
    if command is not None and not all(isinstance(a, str) for a in command):
        raise top.fail("command", "a list of strings")
    config = top.sub("config", null=False, required=True)
    grid = config.sub("grid") if config is not None else None
    if grid is not None:
        for key in grid.obj:
            grid.array(key)
    top.sub("environment", null=False, required=True)
    device = top.sub("device", null=False, required=True)
    if device is not None:
        device.string("type", null=True)
        device.number("copy_bandwidth_Bps")
        device.number("launch_floor_s")
        if device.obj.get("l2_bytes") is not None:
            device.integer("l2_bytes")
    backends = top.sub("backends", null=False)
    if backends is not None:
        for name in backends.obj:
            entry = backends.sub(name, null=False)
            if entry is not None:
                entry.boolean("available")
                entry.string("reason", null=True)
    top.boolean("interrupted")
    top.boolean("complete")
    top.number("elapsed_s")
    cells = top.array("cells", required=True)
    for i, cell in enumerate(cells or []):
        _validate_cell(cell, f"cells[{i}]")
    return doc


def validate_conformance(doc: Any) -> dict[str, Any]:
    """Check ``doc`` against ``specsample.conformance/1``; return it.

    Raises:
        SchemaError: the first problem, naming the field by its path.
    """
    if not isinstance(doc, dict):
        raise SchemaError(f"conformance results must be a JSON object, got {_show(doc)}")
    top = _Fields(doc, "")
    if doc.get("schema") != CONFORMANCE_SCHEMA:
        raise SchemaError(f'schema must be "{CONFORMANCE_SCHEMA}", got {_show(doc.get("schema"))}')
    top.string("level", null=True)
    top.sub("environment")
    backends = top.sub("backends", null=False, required=True)
    assert backends is not None
    for name in backends.obj:
        entry = backends.sub(name, null=False)
        assert entry is not None
        entry.boolean("available")
        entry.string("reason", null=True)
        checks = entry.sub("checks", null=False)
        for check in checks.obj if checks is not None else ():
            result = checks.sub(check, null=False)
            assert result is not None
            result.present("outcome", required=True)
            if result.obj["outcome"] not in _OUTCOMES:
                raise result.fail("outcome", "one of " + ", ".join(f'"{o}"' for o in _OUTCOMES))
            result.number("duration_s")
            result.string("details", null=True)
        summary = entry.sub("summary")
        for outcome in summary.obj if summary is not None else ():
            summary.integer(outcome)
    return doc


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file (results or conformance); any problem is a :class:`SchemaError` whose
    one-line message starts with the path.

    ``NaN`` and ``Infinity`` (not JSON, but Python's json writes them) are read as floats; the
    validators refuse them wherever a number is expected, naming the field.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise SchemaError(f"{path}: is a folder, expected a JSON file")
        text = path.read_bytes()
    except FileNotFoundError:
        raise SchemaError(f"{path}: no such file") from None
    except PermissionError:
        raise SchemaError(f"{path}: cannot read it (permission denied)") from None
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(
            f"{path}: not a UTF-8 text file (byte {exc.start} is 0x{text[exc.start]:02x})"
        ) from None
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise SchemaError(f"{path}: not usable JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        detail = " ".join(str(exc).split())
        if "digits" in detail:
            detail = (
                f"an integer has more digits than Python reads ({sys.get_int_max_str_digits()})"
            )
        raise SchemaError(f"{path}: not usable JSON ({detail})") from None


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a benchmark results file (errors start with the path)."""
    doc = load_json(path)
    try:
        return validate_results(doc)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def load_conformance(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a conformance results file (errors start with the path)."""
    doc = load_json(path)
    try:
        return validate_conformance(doc)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def detect_kind(doc: Any) -> str:
    """``"bench"``, ``"conformance"`` or ``"e2e"`` from a document's ``schema`` field."""
    if not isinstance(doc, dict):
        raise SchemaError(f"must be a JSON object with a 'schema' field, got {_show(doc)}")
    schema = doc.get("schema")
    if schema == BENCH_SCHEMA:
        return "bench"
    if schema == CONFORMANCE_SCHEMA:
        return "conformance"
    if schema == E2E_SCHEMA:
        return "e2e"
    raise SchemaError(
        f'schema must be "{BENCH_SCHEMA}", "{CONFORMANCE_SCHEMA}" or "{E2E_SCHEMA}", '
        f"got {_show(schema)}"
    )


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _finite(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by None (strict JSON, readable by jq and JS)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``doc`` atomically (temp file + rename), so an interrupted write never truncates.

    Non-finite numbers are written as null, so the file is strict JSON.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_finite(doc), f, indent=1, allow_nan=False)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def merge_results(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge results files of one machine (e.g. a grid split over several runs) into one document.

    The first document gives the environment and device measurements; cells are concatenated, a
    later cell replacing an earlier one with the same identity; the grid is the union; the
    sources are listed under ``merged_from``.
    """
    if not docs:
        raise SchemaError("nothing to merge")
    if len(docs) == 1:
        return docs[0]
    base = dict(docs[0])
    cells: dict[tuple, dict[str, Any]] = {}
    for doc in docs:
        for cell in doc.get("cells", []):
            cells[cell_key(cell)] = cell
    base["cells"] = list(cells.values())
    grid: dict[str, list] = {}
    for doc in docs:
        for key, values in (doc.get("config", {}).get("grid") or {}).items():
            grid.setdefault(key, [])
            grid[key] += [v for v in values if v not in grid[key]]
    base["config"] = {**base.get("config", {}), "grid": grid}
    base["backends"] = {}
    for doc in docs:
        base["backends"].update(doc.get("backends", {}))
    base["complete"] = all(d.get("complete") for d in docs)
    base["interrupted"] = any(d.get("interrupted") for d in docs)
    base["merged_from"] = [
        {
            "command": d.get("command"),
            "created": d.get("created"),
            "gpu": ((d.get("environment") or {}).get("gpu") or {}).get("name"),
            "host": (d.get("environment") or {}).get("host"),
        }
        for d in docs
    ]
    return base


def merge_conformance(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge conformance files of one level (one run per backend, or a backend's checks split
    over runs with ``-k``) into one document.

    The first document gives the environment; backends are united. A backend in several files
    gets the union of its checks when their check sets are disjoint (a ``-k`` split); a check in
    two files is an error (which verdict would be the right one?), and so is a backend available in
    one file and unavailable in another. Files of different levels are an error too: a matrix
    mixing fast and full verdicts would mislead.
    """
    from specsample.conformance.results import summarize

    if not docs:
        raise SchemaError("nothing to merge")
    if len(docs) == 1:
        return docs[0]
    levels = {d.get("level") for d in docs}
    if len(levels) > 1:
        raise SchemaError(f"conformance files of different levels: {sorted(map(str, levels))}")
    base = dict(docs[0])
    base["backends"] = {}
    for doc in docs:
        for name, entry in doc.get("backends", {}).items():
            have = base["backends"].get(name)
            if have is None:
                base["backends"][name] = entry
                continue
            if bool(have.get("available")) != bool(entry.get("available")):
                raise SchemaError(
                    f"backend {name!r} is available in one conformance file and not in another"
                )
            both = sorted(set(have.get("checks", {})) & set(entry.get("checks", {})))
            if both or not entry.get("available"):
                shown = ", ".join(both[:3]) or "its availability"
                raise SchemaError(
                    f"backend {name!r} appears in two conformance files with the same checks "
                    f"({shown})"
                )
            checks = {**have["checks"], **entry["checks"]}
            base["backends"][name] = {**have, "checks": checks, "summary": summarize(checks)}
    return base
