"""The JSON results of a conformance run (schema ``specsample.conformance/1``).

::

    {"schema": "specsample.conformance/1", "level": "fast", "created": "2026-...Z",
     "environment": {"python": ..., "torch": ..., "platform": ..., "cuda_device": ... | null,
                     "specsample": ...},
     "backends": {NAME: {"available": bool, "reason": str,
                         "checks": {CHECK: {"outcome": "pass"|"fail"|"not-claimed"|"error",
                                            "duration_s": float, "details": str}},
                         "summary": {"pass": n, "fail": n, "not-claimed": n, "error": n}}}}
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from typing import Any

SCHEMA = "specsample.conformance/1"
OUTCOMES = ("pass", "fail", "not-claimed", "error")


def environment() -> dict[str, Any]:
    """Python, torch, platform, CUDA device name (or None) and specsample versions."""
    import torch
    from specsample import __version__

    cuda = None
    if torch.cuda.is_available():
        cuda = torch.cuda.get_device_name(torch.cuda.current_device())
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda_device": cuda,
        "specsample": __version__,
    }


def summarize(checks: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for result in checks.values():
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    return counts


def backend_entry(
    available: bool, reason: str, checks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    return {
        "available": available,
        "reason": reason,
        "checks": checks,
        "summary": summarize(checks),
    }


def build(
    level: str,
    tested: dict[str, dict[str, dict[str, Any]]],
    unavailable: dict[str, str] | None = None,
    order: list[str] | None = None,
) -> dict[str, Any]:
    """The results document: ``tested`` maps backend -> check -> result; ``unavailable`` maps
    backend -> reason; ``order`` lists backends in the order to write them."""
    unavailable = unavailable or {}
    names = list(dict.fromkeys((order or []) + list(tested) + list(unavailable)))
    backends = {}
    for name in names:
        if name in tested:
            backends[name] = backend_entry(True, "", tested[name])
        else:
            backends[name] = backend_entry(False, unavailable.get(name, ""), {})
    return {
        "schema": SCHEMA,
        "level": level,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
        "backends": backends,
    }


def write(path: str | os.PathLike, results: dict[str, Any]) -> None:
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


def failed(results: dict[str, Any]) -> bool:
    """True when any check failed or errored."""
    return any(
        b["summary"].get("fail", 0) or b["summary"].get("error", 0)
        for b in results["backends"].values()
    )


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A plain-text table (backend x outcome counts) and the failing checks with their details."""
    from tabulate import tabulate

    rows = []
    problems = []
    for name, b in results["backends"].items():
        if not b["available"]:
            rows.append([name, "unavailable", "", "", "", b["reason"]])
            continue
        s = b["summary"]
        rows.append([name, s["pass"], s["fail"], s["not-claimed"], s["error"], ""])
        for check, r in b["checks"].items():
            if r["outcome"] in ("fail", "error"):
                problems.append(f"  {name} {check} {r['outcome'].upper()}: {r['details']}")
    table = tabulate(
        rows, headers=["backend", "pass", "fail", "not claimed", "error", "note"], tablefmt="simple"
    )
    lines = [f"specsample conformance, level {results['level']}:"] + table.splitlines()
    if problems:
        lines += ["failed checks:"] + problems
    return lines
