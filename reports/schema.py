"""The benchmark results file: a versioned JSON document (schema ``specsample.bench/1``).

Top level::

    {
      "schema": "specsample.bench/1",
      "created": ISO-8601 UTC time,
      "command": the exact command line (list of strings),
      "config": the sweep's settings (grid, timing method, budgets),
      "environment": see specsample.reports.environment,
      "device": {"type": "cuda"|"cpu", "name", "l2_bytes", "copy_bandwidth_Bps", "launch_floor_s"},
      "backends": {NAME: {"available", "reason", "capabilities"}},
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
import tempfile
from pathlib import Path
from typing import Any

BENCH_SCHEMA = "specsample.bench/1"
CONFORMANCE_SCHEMA = "specsample.conformance/1"

CELL_KEY_FIELDS = ("backend", "mode", "dtype", "batch", "k", "vocab", "accept")
_REQUIRED_TOP = ("schema", "created", "command", "config", "environment", "device", "cells")
_REQUIRED_CELL = CELL_KEY_FIELDS + ("status",)
_STATUSES = ("ok", "skipped", "error")


class SchemaError(ValueError):
    """A results or conformance file does not follow its schema."""


def cell_key(cell: dict[str, Any]) -> tuple:
    """The identity of a cell across runs: (backend, mode, dtype, batch, k, vocab, accept)."""
    return tuple(cell[f] for f in CELL_KEY_FIELDS)


def cell_label(cell: dict[str, Any]) -> str:
    """A short human label, e.g. ``random f32 B=8 K=4 V=32000 high``."""
    dtype = str(cell["dtype"]).replace("float", "f").replace("bf16", "bf16")
    return (
        f"{cell['mode']} {dtype} B={cell['batch']} K={cell['k']} V={cell['vocab']} {cell['accept']}"
    )


def validate_results(doc: Any) -> dict[str, Any]:
    """Check ``doc`` against ``specsample.bench/1``; return it. Raises :class:`SchemaError`."""
    if not isinstance(doc, dict):
        raise SchemaError(f"results must be a JSON object, got {type(doc).__name__}")
    schema = doc.get("schema")
    if schema != BENCH_SCHEMA:
        raise SchemaError(f"results schema must be {BENCH_SCHEMA!r}, got {schema!r}")
    missing = [k for k in _REQUIRED_TOP if k not in doc]
    if missing:
        raise SchemaError(f"results lack the fields {missing}")
    if not isinstance(doc["cells"], list):
        raise SchemaError("results 'cells' must be a list")
    for i, cell in enumerate(doc["cells"]):
        if not isinstance(cell, dict):
            raise SchemaError(f"cell {i} must be an object")
        lacking = [k for k in _REQUIRED_CELL if k not in cell]
        if lacking:
            raise SchemaError(f"cell {i} lacks the fields {lacking}")
        if cell["status"] not in _STATUSES:
            raise SchemaError(
                f"cell {i} has status {cell['status']!r}, expected one of {_STATUSES}"
            )
        if cell["status"] == "ok":
            timing = cell.get("timing")
            if not isinstance(timing, dict) or "median" not in timing or "samples" not in timing:
                raise SchemaError(f"cell {i} is 'ok' but has no timing with median and samples")
    return doc


def validate_conformance(doc: Any) -> dict[str, Any]:
    """Check ``doc`` against ``specsample.conformance/1``; return it. Raises :class:`SchemaError`."""
    if not isinstance(doc, dict):
        raise SchemaError(f"conformance must be a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != CONFORMANCE_SCHEMA:
        raise SchemaError(
            f"conformance schema must be {CONFORMANCE_SCHEMA!r}, got {doc.get('schema')!r}"
        )
    backends = doc.get("backends")
    if not isinstance(backends, dict):
        raise SchemaError("conformance 'backends' must be an object")
    for name, entry in backends.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("checks", {}), dict):
            raise SchemaError(f"conformance backend {name!r} must be an object with 'checks'")
    return doc


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file (results or conformance), with the path in any error."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SchemaError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON ({exc})") from None


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a benchmark results file."""
    doc = load_json(path)
    try:
        return validate_results(doc)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def load_conformance(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a conformance results file."""
    doc = load_json(path)
    try:
        return validate_conformance(doc)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None


def detect_kind(doc: dict[str, Any]) -> str:
    """``"bench"`` or ``"conformance"`` from a document's ``schema`` field."""
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema == BENCH_SCHEMA:
        return "bench"
    if schema == CONFORMANCE_SCHEMA:
        return "conformance"
    raise SchemaError(
        f"unknown schema {schema!r}; expected {BENCH_SCHEMA!r} or {CONFORMANCE_SCHEMA!r}"
    )


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
    """Merge conformance files of one level (e.g. one run per backend) into one document.

    The first document gives the environment; backends are united, and a backend present in two
    files is an error (which verdict would be the right one?). Files of different levels are an
    error too: a matrix mixing fast and full verdicts would mislead.
    """
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
            if name in base["backends"]:
                raise SchemaError(f"backend {name!r} appears in two conformance files")
            base["backends"][name] = entry
    return base
