"""Console/markdown tables of a ``specsample.e2e/1`` document: one table per vocabulary and batch
size, one row per backend."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

HEADERS = [
    "backend",
    "tok/s spec",
    "tok/s plain",
    "speedup",
    "accepted",
    "draft ms",
    "target ms",
    "verify ms",
    "other ms",
    "verify share",
    "tok/s verify 2x",
    "tok/s verify free",
]


def _per_step_ms(case: dict[str, Any], phase: str) -> float:
    spec = case["speculative"]
    return spec["phases_s"].get(phase, 0.0) / spec["steps"] * 1e3


def _projected(case: dict[str, Any], factor: float | str) -> float:
    for row in case["projection"]:
        if row["factor"] == factor:
            return row["tokens_per_s"]
    return float("nan")


def case_row(case: dict[str, Any]) -> list[Any]:
    """One table row; a case that did not run shows its status and reason."""
    if case["status"] != "ok":
        return [case["backend"], f"{case['status']}: {case['reason']}"] + [""] * (len(HEADERS) - 2)
    spec = case["speculative"]
    return [
        case["backend"],
        spec["tokens_per_s"],
        case["baseline"]["tokens_per_s"],
        f"{case['speedup']:.2f}x",
        f"{spec['mean_accepted']:.2f}" if spec["mean_accepted"] is not None else "-",
        _per_step_ms(case, "draft"),
        _per_step_ms(case, "target"),
        _per_step_ms(case, "verify"),
        _per_step_ms(case, "bookkeeping"),
        f"{100 * case['verify_share']:.1f}%",
        _projected(case, 2.0),
        _projected(case, "inf"),
    ]


def render_tables(doc: dict[str, Any], tablefmt: str = "github") -> str:
    """Every (vocabulary, batch) table of ``doc``, each under a one-line heading."""
    settings = doc["settings"]
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for case in doc["cases"]:
        groups.setdefault((case["vocab"], case["batch"]), []).append(case)
    parts = []
    for (vocab, batch), cases in groups.items():
        heading = (
            f"V={vocab} B={batch} K={settings['k']} mode={settings['mode']} "
            f"tokens={settings['tokens']} device={settings['device']}"
        )
        if settings.get("repeat", 1) > 1:
            heading += f" (medians of {settings['repeat']} runs)"
        table = tabulate([case_row(c) for c in cases], HEADERS, tablefmt=tablefmt, floatfmt=".2f")
        parts.append(f"{heading}\n\n{table}")
    return "\n\n".join(parts)


def notes(doc: dict[str, Any]) -> list[str]:
    """Lines worth a reader's attention: greedy outputs that differ from the baseline."""
    out = []
    for case in doc["cases"]:
        if case.get("matches_baseline") is False:
            out.append(
                f"note: {case['backend']} B={case['batch']} V={case['vocab']}: greedy output "
                "differs from target-only greedy decoding (see docs/e2e.md, 'Greedy equality')"
            )
    return out
