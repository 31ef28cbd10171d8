"""``specsample fuzz`` runs rule="block" cases for backends that claim the rule."""

from __future__ import annotations

import pytest
from mutants_block import make_block_mutant
from specsample.contract import Capabilities
from specsample.fuzz import run_fuzz
from specsample.fuzz_cases import make_case


def test_block_cases_only_for_claiming_backends_and_token_cases_unchanged():
    token_only = Capabilities()
    both = Capabilities(rules=("token", "block"))
    rules = []
    for i in range(200):
        a, b = make_case(5, i, token_only), make_case(5, i, both)
        assert a.rule == "token"
        assert (a.mode, a.target_probs.shape, a.tags) == (
            b.mode,
            b.target_probs.shape,
            b.tags[: len(a.tags)],
        )
        if b.mode == "random":
            rules.append(b.rule)
        if b.rule == "block":
            assert b.mode == "random" and "rule=block" in b.tags
    assert 0.3 < rules.count("block") / len(rules) < 0.7  # half of the random-mode cases


@pytest.mark.parametrize("name", ["torch-loop", "torch-vectorized"])
def test_block_cases_agree_with_the_reference(name):
    result = run_fuzz(name, cases=120, seed=9)
    assert result.divergences == [], result.divergences[0].message


def test_a_block_mutant_is_found_and_shrunk():
    result = run_fuzz(make_block_mutant("ordinary-residual"), cases=300, seed=2, max_divergences=1)
    assert result.divergences, "the fuzzer missed the mutant"
    d = result.divergences[0]
    assert d.shrunk.rule == "block" and "rule='block'" in d.reproducer
    assert "block" in d.message
