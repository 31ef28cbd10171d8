"""Robust summary statistics of timing samples: median and inter-quartile range first."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, "linear") of already sorted values."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles, IQR, mean, min, max and count of ``samples`` (seconds).

    The headline statistic is the median (named in the result as ``"statistic": "median"``); the
    IQR (q3 - q1) is the noise measure used by ``specsample compare``.
    """
    values = sorted(float(s) for s in samples)
    n = len(values)
    if n == 0:
        nan = math.nan
        return {
            "statistic": "median",
            "n": 0,
            "median": nan,
            "q1": nan,
            "q3": nan,
            "iqr": nan,
            "mean": nan,
            "min": nan,
            "max": nan,
        }
    q1, med, q3 = quantile(values, 0.25), quantile(values, 0.5), quantile(values, 0.75)
    return {
        "statistic": "median",
        "n": n,
        "median": med,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "mean": sum(values) / n,
        "min": values[0],
        "max": values[-1],
    }


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive values (nan when there are none)."""
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return math.nan
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
