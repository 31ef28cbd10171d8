"""The Amdahl projection: what a faster (or slower) verify step buys end to end.

If the verify step takes the share ``s`` of a speculative run's decoding time, making it ``f``
times faster (every other phase unchanged) speeds the whole run up by ``1 / ((1 - s) + s / f)``;
no sampler, however fast, can beat ``1 / (1 - s)``. ``f < 1`` is a slower sampler.
"""

from __future__ import annotations

import math
from typing import Any

# verify-step speed-up factors the projection reports: half as fast, 2x, 10x, infinitely fast
DEFAULT_FACTORS: tuple[float, ...] = (0.5, 2.0, 10.0, math.inf)


def amdahl_speedup(share: float, factor: float) -> float:
    """End-to-end speed-up when a phase taking ``share`` (0..1) of the time runs ``factor``
    times faster (``math.inf`` for a phase that takes no time at all).

    Raises:
        ValueError: ``share`` outside [0, 1] or ``factor`` not positive, naming the argument.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share: expected a fraction in [0, 1], got {share!r}")
    if not factor > 0:
        raise ValueError(f"factor: expected a number > 0 (or math.inf), got {factor!r}")
    rest = (1.0 - share) + (0.0 if math.isinf(factor) else share / factor)
    return math.inf if rest == 0 else 1.0 / rest


def project(
    tokens_per_s: float, verify_share: float, factors: tuple[float, ...] = DEFAULT_FACTORS
) -> list[dict[str, Any]]:
    """One row per factor: ``{"factor", "speedup", "tokens_per_s"}`` (``factor`` is the string
    ``"inf"`` for an infinitely fast verify step, so the row stays valid JSON)."""
    rows = []
    for f in factors:
        speedup = amdahl_speedup(verify_share, f)
        rows.append(
            {
                "factor": "inf" if math.isinf(f) else f,
                "speedup": speedup,
                "tokens_per_s": tokens_per_s * speedup,
            }
        )
    return rows
