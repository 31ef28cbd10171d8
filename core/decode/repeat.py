"""Repeated timed runs folded into one result: the median of every time, per phase.

``specsample e2e --repeat N`` decodes each case N times with the same seed (so every repeat
generates the same tokens, up to nondeterministic GPU kernels) and reports, for each phase, the
median of its N times. One run of a few hundred tokens is at the mercy of whatever else the machine
does meanwhile; the median of several is not.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

from .loop import GenerationResult


def repeat_runs(run: Callable[[], GenerationResult], repeat: int) -> list[GenerationResult]:
    """Call ``run()`` ``repeat`` times; only the last result keeps its ``last_verify`` tensors
    (the arguments of its last verify call, [B, K+1, V] float32 at the largest)."""
    if not (isinstance(repeat, int) and not isinstance(repeat, bool) and repeat >= 1):
        raise ValueError(f"repeat: expected an integer >= 1, got {repeat!r}")
    results = []
    for i in range(repeat):
        result = run()
        if i < repeat - 1:
            result.last_verify = None
        results.append(result)
    return results


def median_result(results: list[GenerationResult]) -> GenerationResult:
    """One result whose ``wall_s``, ``prefill_s`` and per-phase times are the medians of
    ``results``' (phase by phase, so the phases of the median need not add up to the median wall
    time); tokens, steps, histogram, backend and verify calls come from the first run, the last
    verify call's arguments from the last.

    Raises:
        ValueError: ``results`` is empty or its runs time different phases.
    """
    if not results:
        raise ValueError("results: expected at least one GenerationResult, got none")
    first = results[0]
    if len(results) == 1:
        return first
    phases = list(first.phases)
    for i, r in enumerate(results[1:], start=1):
        if list(r.phases) != phases:
            raise ValueError(
                f"results[{i}]: times phases {list(r.phases)}, but results[0] times {phases}"
            )
    return dataclasses.replace(
        first,
        wall_s=statistics.median(r.wall_s for r in results),
        prefill_s=statistics.median(r.prefill_s for r in results),
        phases={p: statistics.median(r.phases[p] for r in results) for p in phases},
        last_verify=results[-1].last_verify,
    )


@dataclasses.dataclass
class TimedRuns:
    """The timed runs of one case (or baseline) and their median (:func:`median_result`)."""

    runs: list[GenerationResult]

    @property
    def result(self) -> GenerationResult:
        return median_result(self.runs)

    def to_dict(self) -> dict[str, Any]:
        """The median's JSON record; with several runs, ``repeats`` lists each run's own times
        (``[{wall_s, tokens_per_s, phases_s}, ...]``)."""
        record = self.result.to_dict()
        if len(self.runs) > 1:
            record["repeats"] = [
                {"wall_s": r.wall_s, "tokens_per_s": r.tokens_per_s, "phases_s": dict(r.phases)}
                for r in self.runs
            ]
        return record


def timed_runs(run: Callable[[], GenerationResult], repeat: int) -> TimedRuns:
    """:func:`repeat_runs` wrapped as :class:`TimedRuns`."""
    return TimedRuns(repeat_runs(run, repeat))
