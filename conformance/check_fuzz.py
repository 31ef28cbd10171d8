"""fuzz.*: a bounded differential fuzz campaign (docs/fuzz.md) inside the conformance suite.

Full level only: a compiled backend builds a graph for many of the campaign's shapes, which would
dominate the fast level's time. ``specsample fuzz`` runs the same campaign at any length.
"""

from __future__ import annotations

from .checks import CheckFailed, NotClaimed, Target, check

#: cases of the check's campaign; ``specsample fuzz --cases N`` runs longer ones
FUZZ_CASES = 2000
#: the suite's campaign (``specsample fuzz --seed 20240`` reruns it)
FUZZ_SEED = 20240


@check("fuzz.differential", levels=("full",))
def fuzz_differential(target: Target) -> str:
    """Adversarial valid inputs (chain, block, tree and serving cases within the backend's claims,
    specsample.fuzz) agree with the float64 reference token for token, up to counted rounding ties;
    a divergence is reported with its shrunk reproducer."""
    from specsample.fuzz import run_fuzz

    if not getattr(target.capabilities, "uniforms", True):
        raise NotClaimed(
            "explicit uniforms not claimed: the fuzzer compares coupled tokens, and this backend "
            "draws its own random numbers"
        )
    result = run_fuzz(
        target.backend,
        cases=FUZZ_CASES,
        seed=FUZZ_SEED,
        device=str(target.device),
        max_divergences=1,
    )
    if result.divergences:
        first = result.divergences[0]
        raise CheckFailed(
            f"case {first.index} of seed {FUZZ_SEED} diverges: {first.message}\n"
            f"reproducer:\n{first.reproducer}"
        )
    return (
        f"{result.cases} cases ({result.requests} requests) of seed {FUZZ_SEED}, "
        f"{result.rounding_ties} rounding tie(s)"
    )
