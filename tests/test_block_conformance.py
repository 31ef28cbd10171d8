"""The block-verification checks: they pass on a correct backend and fail on every mutant,
naming the property that breaks; backends that do not claim the rule are 'not claimed'."""

from __future__ import annotations

import pytest
import torch
from mutants_block import BUGS, make_block_mutant
from specsample.conformance.checks import CheckFailed, NotClaimed, Target, get_check


def _target(bug: str) -> Target:
    return Target(f"block-mutant-{bug}", make_block_mutant(bug), "fast", torch.device("cpu"))


@pytest.mark.parametrize(
    "name", ["block.lossless-exact", "block.exact", "block.dominance", "block.repeated-calls"]
)
def test_a_correct_block_backend_passes(name):
    get_check(name).func(_target("correct"))


@pytest.mark.parametrize("bug", [b for b in BUGS if b != "correct"])
def test_each_mutant_fails_exact_losslessness_naming_it(bug):
    with pytest.raises(CheckFailed, match=r"not lossless \(exact losslessness\)"):
        get_check("block.lossless-exact").func(_target(bug))


@pytest.mark.parametrize("bug", [b for b in BUGS if b != "correct"])
def test_each_mutant_fails_coupled_exactness(bug):
    with pytest.raises(CheckFailed, match="block (accept decision|inverse CDF|last token)"):
        get_check("block.exact").func(_target(bug))


def test_stop_at_first_failure_also_fails_dominance():
    with pytest.raises(CheckFailed, match="dominance"):
        get_check("block.dominance").func(_target("stop-at-first-failure"))


def test_checks_are_not_claimed_without_the_rule():
    from specsample.contract import Capabilities

    backend = make_block_mutant("correct")
    backend.capabilities = Capabilities(devices=("cpu",))  # claims only "token"
    target = Target(backend.name, backend, "fast", torch.device("cpu"))
    with pytest.raises(NotClaimed, match="rule 'block' not claimed"):
        get_check("block.lossless-exact").func(target)
    assert "refused" in get_check("block.unclaimed").func(target)


def _torch_vectorized_target(name: str, verify) -> Target:
    import specsample

    base = type(specsample.get_backend("torch-vectorized"))
    backend = type(name, (base,), {"name": name, "verify": verify})()
    return Target(name, backend, "fast", torch.device("cpu"))


def test_emitted_law_of_thresholds_rounded_past_one():
    """A threshold a few ulps above 1 (float64 rounding of Z / (Z + 1 - w)) is a sure pass: the
    law stays a distribution, as the full level's shape (3, 8, 4099) needs."""
    from specsample.conformance.check_block import emitted_law

    law = emitted_law([1.0000000000000002, 0.5, 1.0000000000000002, 0.25])
    assert min(law) >= 0 and abs(sum(law) - 1) < 1e-12
    assert law[:2] == [0.0, 0.0] and law[2] == 0.0 and law[3] == 0.75 and law[4] == 0.25


def test_repeated_calls_pass_on_a_correct_backend():
    import specsample

    backend = specsample.get_backend("torch-vectorized")
    target = Target(backend.name, backend, "fast", torch.device("cpu"))
    assert "500 calls" in get_check("block.repeated-calls").func(target)


def test_repeated_calls_catch_coins_that_repeat_from_call_to_call():
    """A backend that reseeds its coins on every call (the generator never advances) emits the
    same tokens each call: one outcome, where the law is spread."""
    import specsample

    base = type(specsample.get_backend("torch-vectorized"))

    def stale(self, *args, generator=None, **kwargs):
        fresh = torch.Generator(device="cpu").manual_seed(5)
        return base.verify(self, *args, generator=fresh, **kwargs)

    with pytest.raises(CheckFailed, match="block repeated calls .*emitted counts"):
        get_check("block.repeated-calls").func(_torch_vectorized_target("stale-coins", stale))


def test_repeated_calls_catch_a_rule_that_stops_at_the_first_failed_coin():
    """The token rule's stopping under block thresholds (a published mistake) shifts the law
    towards short outputs; the test sees it from the backend's own randomness."""
    with pytest.raises(CheckFailed, match="block repeated calls"):
        get_check("block.repeated-calls").func(_target("stop-at-first-failure"))
