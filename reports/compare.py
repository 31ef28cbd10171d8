"""Compare two results files cell by cell; flag changes beyond the runs' own noise.

For a cell in both files with medians ``m_old`` and ``m_new`` and inter-quartile ranges ``iqr_old``
and ``iqr_new``, the noise is ``max(iqr_old, iqr_new)``. The change is flagged as a regression when
``m_new - m_old > noise_factor * noise`` and ``m_new / m_old > 1 + min_change`` (an improvement
symmetrically); anything else is "same".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import SchemaError, cell_key, cell_label, validate_results


@dataclass(frozen=True)
class CellChange:
    key: tuple
    label: str
    backend: str
    old_s: float
    new_s: float
    ratio: float
    noise_s: float
    verdict: str  # "regression", "improvement" or "same"


def compare_results(
    old: dict[str, Any],
    new: dict[str, Any],
    noise_factor: float = 1.0,
    min_change: float = 0.03,
) -> dict[str, Any]:
    """``{"changes": [CellChange...], "only_old": [...], "only_new": [...], "env_diff": [...]}``.

    Raises:
        SchemaError: either document does not follow ``specsample.bench/1`` (for example a median
            that is NaN, zero, negative or not a number), naming ``old``/``new`` and the field.
    """
    for which, doc in (("old", old), ("new", new)):
        try:
            validate_results(doc)
        except SchemaError as exc:
            raise SchemaError(f"{which}: {exc}") from None
    a = {cell_key(c): c for c in old.get("cells", []) if c.get("status") == "ok"}
    b = {cell_key(c): c for c in new.get("cells", []) if c.get("status") == "ok"}
    changes = []
    for key in [k for k in b if k in a]:
        ta, tb = a[key]["timing"], b[key]["timing"]
        m_old, m_new = ta["median"], tb["median"]
        noise = max(ta.get("iqr") or 0.0, tb.get("iqr") or 0.0)
        ratio = m_new / m_old  # both positive and finite (validated)
        delta = m_new - m_old
        if delta > noise_factor * noise and ratio > 1 + min_change:
            verdict = "regression"
        elif -delta > noise_factor * noise and ratio < 1 / (1 + min_change):
            verdict = "improvement"
        else:
            verdict = "same"
        changes.append(
            CellChange(key, cell_label(b[key]), key[0], m_old, m_new, ratio, noise, verdict)
        )
    env_diff = []
    ea, eb = old.get("environment", {}), new.get("environment", {})
    for label, get in (
        ("gpu", lambda e: (e.get("gpu") or {}).get("name")),
        ("driver", lambda e: (e.get("gpu") or {}).get("driver")),
        ("torch", lambda e: (e.get("versions") or {}).get("torch")),
        ("host", lambda e: e.get("host")),
    ):
        if get(ea) != get(eb):
            env_diff.append(f"{label}: {get(ea)} -> {get(eb)}")
    return {
        "changes": changes,
        "only_old": [cell_label(a[k]) + f" [{k[0]}]" for k in a if k not in b],
        "only_new": [cell_label(b[k]) + f" [{k[0]}]" for k in b if k not in a],
        "env_diff": env_diff,
    }


def format_comparison(result: dict[str, Any], show: str = "all") -> str:
    """A table of per-cell ratios (``show``: ``all`` or ``flagged``) and a one-line verdict."""
    from tabulate import tabulate

    from .tables import fmt_time

    rows = []
    for c in sorted(result["changes"], key=lambda c: (c.backend, c.key)):
        if show == "flagged" and c.verdict == "same":
            continue
        mark = {"regression": "REGRESSION", "improvement": "faster", "same": ""}[c.verdict]
        rows.append(
            [
                c.backend,
                c.label,
                fmt_time(c.old_s),
                fmt_time(c.new_s),
                f"{c.ratio:.3f}",
                fmt_time(c.noise_s),
                mark,
            ]
        )
    lines = []
    if result["env_diff"]:
        lines.append("note: the runs differ in " + "; ".join(result["env_diff"]))
    if rows:
        lines.append(
            tabulate(
                rows,
                headers=["backend", "cell", "old", "new", "new/old", "noise (IQR)", "flag"],
                tablefmt="simple",
                disable_numparse=True,
            )
        )
    n_reg = sum(c.verdict == "regression" for c in result["changes"])
    n_imp = sum(c.verdict == "improvement" for c in result["changes"])
    lines.append(
        f"{len(result['changes'])} cells compared: {n_reg} regression(s), {n_imp} improvement(s), "
        f"{len(result['changes']) - n_reg - n_imp} within noise; "
        f"{len(result['only_old'])} only in old, {len(result['only_new'])} only in new"
    )
    return "\n".join(lines)
