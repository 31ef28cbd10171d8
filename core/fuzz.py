"""Differential fuzzing: a backend against the float64 reference on adversarial valid inputs.

:func:`run_fuzz` generates cases deterministically from a seed (:mod:`specsample.fuzz_cases`), runs
each on the backend and on :func:`specsample.reference_verify` with the same explicit uniforms, and
compares them with the conformance suite's own comparison
(``specsample.conformance.check_common.compare_to_reference``): accept decisions and greedy tokens
must match exactly; a last token may differ only where the reference's inverse-CDF threshold lies
within float32 rounding (``cdf_epsilon(V)`` of the row's sum) of a cumulative breakpoint. Such a
difference is counted as a *rounding tie*, not a divergence. Any other difference, a flagged status
on valid input, a malformed output or an exception is a divergence; each is shrunk to a minimal
reproducer (:mod:`specsample.fuzz_shrink`). See docs/fuzz.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .contract import Backend, VerifyOutput
from .fuzz_cases import FuzzCase, case_claims, make_case
from .fuzz_shrink import shrink, snippet
from .reference import reference_verify

if TYPE_CHECKING:
    from .serving import ServingOutput


@dataclass
class Divergence:
    """One failing case: what differs, the shrunk case and a program that reproduces it."""

    index: int
    message: str
    shrunk: FuzzCase
    reproducer: str

    def to_dict(self) -> dict[str, Any]:
        B, K, V = self.shrunk.shape
        return {
            "case": self.index,
            "message": self.message,
            "shrunk_shape": {"B": B, "K": K, "V": V},
            "tags": list(self.shrunk.tags),
            "reproducer": self.reproducer,
        }


@dataclass
class FuzzResult:
    """Counts of a campaign. ``stopped`` says why it ended before ``cases`` (else ``""``)."""

    backend: str
    seed: int
    cases: int = 0
    requests: int = 0
    rounding_ties: int = 0
    elapsed_s: float = 0.0
    stopped: str = ""
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.backend}: {self.cases} cases ({self.requests} requests), "
            f"{len(self.divergences)} divergence(s), {self.rounding_ties} rounding tie(s), "
            f"{self.elapsed_s:.1f} s, {self.cases_per_s:.0f} cases/s, seed {self.seed}"
            + (f" (stopped: {self.stopped})" if self.stopped else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "seed": self.seed,
            "cases": self.cases,
            "requests": self.requests,
            "divergences": [d.to_dict() for d in self.divergences],
            "rounding_ties": self.rounding_ties,
            "elapsed_s": self.elapsed_s,
            "cases_per_s": self.cases_per_s,
            "stopped": self.stopped or None,
        }


def check_case(
    backend: Backend,
    case: FuzzCase,
    device: torch.device,
    reference: VerifyOutput | ServingOutput | None = None,
) -> tuple[str | None, int]:
    """Run ``case`` on ``backend`` and compare with the reference (``reference``: its output for
    ``case``, when already computed).

    Returns:
        ``(message, rounding_ties)``: ``message`` is None when the backend agrees (up to rounding
        ties, counted in the second value), else what differs.
    """
    from specsample.conformance.check_common import compare_to_reference
    from specsample.conformance.checks import CheckFailed, Target

    if case.tree is not None:
        from .fuzz_tree import check_tree_case

        return check_tree_case(backend, case, device)
    if case.serving is not None:
        from .fuzz_serving import check_serving_case

        return check_serving_case(backend, case, device, reference)
    if case.rule != "token":
        from .fuzz_cases import check_block_case

        return check_block_case(backend, case, device)
    on_device = case.to(device)
    args = (on_device.draft_token_ids, on_device.draft_probs, on_device.target_probs)
    try:
        out = backend.verify(*args, mode=case.mode, uniforms=on_device.uniforms)
    except Exception as exc:  # a valid input must never raise
        return f"raised {type(exc).__name__}: {exc}", 0
    target = Target(backend.name, backend, "fast", device)
    try:
        ties = compare_to_reference(
            target,
            on_device.draft_token_ids,
            on_device.draft_probs,
            on_device.target_probs,
            mode=case.mode,
            u=on_device.uniforms,
            label=f"case {case.index}",
            out=out,
            ref=reference,
        )
    except CheckFailed as exc:
        return str(exc), 0
    return None, ties


def _device_for(backend: Backend, device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    devices = backend.capabilities.devices
    if "cuda" in devices and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu" if "cpu" in devices else devices[0])


def run_fuzz(
    backend: str | Backend,
    *,
    cases: int = 1000,
    start: int = 0,
    seed: int = 0,
    time_budget: float | None = None,
    device: str | None = None,
    max_divergences: int = 5,
    progress: Callable[[int], None] | None = None,
) -> FuzzResult:
    """Fuzz ``backend`` against the float64 reference.

    Args:
        backend: a registered name or a :class:`specsample.Backend` instance.
        cases: how many cases to run (cases ``start..start+cases-1`` of ``seed``).
        start: the first case index (a worker of a parallel campaign runs one slice).
        seed: the campaign; the same seed and backend claims give the same cases.
        time_budget: stop after this many seconds (``stopped`` says so).
        device: where to run (default: CUDA when claimed and present, else the CPU).
        max_divergences: stop after this many divergences (each is shrunk, which takes time).
        progress: called with the number of cases just finished (for a progress bar).

    Returns:
        A :class:`FuzzResult`; ``divergences`` hold shrunk reproducers.
    """
    (result,) = run_fuzz_many(
        [backend],
        cases=cases,
        start=start,
        seed=seed,
        time_budget=time_budget,
        device=device,
        max_divergences=max_divergences,
        progress=progress,
    )
    return result


def run_fuzz_many(
    backends: Sequence[str | Backend],
    *,
    cases: int = 1000,
    start: int = 0,
    seed: int = 0,
    time_budget: float | None = None,
    device: str | None = None,
    max_divergences: int = 5,
    progress: Callable[[int], None] | None = None,
) -> list[FuzzResult]:
    """Fuzz several backends in one campaign: each case is generated, and the reference run, once
    for all backends whose claims give the same cases (:func:`specsample.fuzz_cases.case_claims`),
    so fuzzing three GPU backends costs little more host time than fuzzing one.

    Arguments are those of :func:`run_fuzz`; ``time_budget`` bounds the whole campaign, and a
    backend that reaches ``max_divergences`` leaves it while the others go on.

    Returns:
        One :class:`FuzzResult` per backend, in the order given.
    """
    from .registry import get_backend

    resolved = [get_backend(b) if isinstance(b, str) else b for b in backends]
    devices = [_device_for(b, device) for b in resolved]
    results = [FuzzResult(b.name, seed) for b in resolved]
    active = list(range(len(resolved)))
    began = time.perf_counter()
    stopped = ""
    for index in range(start, start + cases):
        if time_budget is not None and time.perf_counter() - began > time_budget:
            stopped = f"time budget of {time_budget:g} s"
            break
        shared: dict[tuple, tuple[FuzzCase, VerifyOutput | ServingOutput | None]] = {}
        for i in active:
            backend, dev, result = resolved[i], devices[i], results[i]
            key = case_claims(backend.capabilities)
            if key not in shared:
                case = make_case(seed, index, backend.capabilities)
                reference = None
                if case.serving is not None:
                    from .fuzz_serving import serving_reference

                    reference = serving_reference(case)
                # tree and block cases have checks of their own
                elif case.tree is None and case.rule == "token":
                    reference = reference_verify(
                        case.draft_token_ids,
                        case.draft_probs,
                        case.target_probs,
                        mode=case.mode,
                        uniforms=case.uniforms if case.mode == "random" else None,
                    )
                shared[key] = (case, reference)
            case, reference = shared[key]
            message, ties = check_case(backend, case, dev, reference)
            result.cases += 1
            result.requests += case.shape[0]
            result.rounding_ties += ties
            if message is not None:
                shrunk = shrink(
                    case,
                    lambda c, b=backend, d=dev: check_case(b, c, d)[0] is not None,
                )
                final = check_case(backend, shrunk, dev)[0] or message
                result.divergences.append(
                    Divergence(index, final, shrunk, snippet(shrunk, backend.name, seed))
                )
                if len(result.divergences) >= max_divergences and index + 1 < start + cases:
                    result.stopped = f"{max_divergences} divergence(s)"
        active = [i for i in active if not results[i].stopped]
        if progress is not None:
            progress(1)
        if not active:
            break
    elapsed = time.perf_counter() - began
    for result in results:
        result.elapsed_s = elapsed
        result.stopped = result.stopped or stopped
    return results
