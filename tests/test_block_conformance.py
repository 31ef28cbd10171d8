"""The block-verification checks: they pass on a correct backend and fail on every mutant,
naming the property that breaks; backends that do not claim the rule are 'not claimed'."""

from __future__ import annotations

import pytest
import torch
from mutants_block import BUGS, make_block_mutant
from specsample.conformance.checks import CheckFailed, NotClaimed, Target, get_check


def _target(bug: str) -> Target:
    return Target(f"block-mutant-{bug}", make_block_mutant(bug), "fast", torch.device("cpu"))


@pytest.mark.parametrize("name", ["block.lossless-exact", "block.exact", "block.dominance"])
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
