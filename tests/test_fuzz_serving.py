"""Serving cases of the differential fuzzer: valid, varied, compared with the float64 serving
reference, and able to catch a planted serving bug."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import specsample
import torch
from specsample.backends.torch_vectorized import TorchVectorizedBackend
from specsample.contract import Capabilities
from specsample.fuzz import run_fuzz
from specsample.fuzz_cases import make_case
from specsample.fuzz_serving import SERVING_EVERY, check_serving_case, make_serving_case
from specsample.reference_serving import reference_verify_serving


class TopPIgnored(TorchVectorizedBackend):
    """Serving without the top-p filter: a plausible kernel bug (a flag read from the wrong
    request, a filter skipped on one path)."""

    name = "mutant-serving-top-p-ignored"

    def _verify_serving(self, inputs):
        fields = dict(inputs.__dict__)
        fields["top_p"] = torch.ones_like(inputs.top_p)
        return super()._verify_serving(dataclasses.replace(inputs, **fields))


def _caps() -> Capabilities:
    return specsample.get_backend("torch-loop").capabilities


def test_serving_cases_come_one_in_eight_and_only_for_serving_backends():
    caps = _caps()
    cases = [make_case(0, i, caps) for i in range(4 * SERVING_EVERY)]
    assert sum(c.serving is not None for c in cases) == 4
    assert not any(c.serving is not None and c.tree is not None for c in cases)
    plain = dataclasses.replace(caps, serving=False)
    assert all(make_case(0, i, plain).serving is None for i in range(4 * SERVING_EVERY))


def test_serving_cases_are_deterministic_valid_and_varied():
    caps = _caps()
    tags: Counter[str] = Counter()
    for i in range(300):
        index = SERVING_EVERY * i + 5
        case = make_serving_case(3, index, caps)
        again = make_serving_case(3, index, caps)
        assert case.tags == again.tags and torch.equal(case.target_probs, again.target_probs)
        tags.update(case.tags)
        kwargs = case.serving["kwargs"]
        # valid input: the reference flags nothing, and the full host check raises nothing
        ref = reference_verify_serving(case.draft_token_ids, **kwargs, validate="full")
        assert int(ref.status.abs().sum()) == 0, (index, ref.status.tolist())
    for feature in (
        "logits", "probs", "draft_logits", "draft_probs", "no draft", "greedy", "sampling",
        "top-k", "top-p", "K_b=0", "uniforms", "seeds", "padded", "flat", "masked", "ties",
        "wide", "float32", "float16", "bfloat16",
    ):  # fmt: skip
        assert tags[feature] > 0, feature


@pytest.mark.parametrize("name", ["torch-loop", "torch-vectorized"])
def test_cpu_backends_agree_on_serving_cases(name):
    backend = specsample.get_backend(name)
    ties = 0
    for i in range(150):
        case = make_serving_case(4, SERVING_EVERY * i + 5, backend.capabilities)
        message, tied = check_serving_case(backend, case, torch.device("cpu"))
        assert message is None, message
        ties += tied
    assert ties < 30  # float32-sensitive requests are rare; a broken excuse would hide bugs


def test_a_planted_serving_bug_is_found_with_a_runnable_reproducer():
    backend = TopPIgnored()
    result = run_fuzz(backend, cases=800, seed=0, max_divergences=1, device="cpu")
    assert len(result.divergences) == 1, result.summary()
    d = result.divergences[0]
    assert d.shrunk.serving is not None and "serving case" in d.message
    printed: list[tuple] = []
    program = d.reproducer.replace(f"specsample.get_backend({backend.name!r})", "_backend")
    exec(program, {"print": lambda *a: printed.append(a), "_backend": backend})
    (_, got_tokens, got_status), (_, want_tokens, want_status) = printed
    assert (got_tokens, got_status) != (want_tokens, want_status)


def test_a_last_token_at_a_cdf_boundary_is_a_rounding_tie_not_a_divergence():
    """Case 4989 of seed 9: coin 1 - 2**-24 at temperature 0.3 lands 1.5e-8 * sum below the end of
    the CDF; torch-loop's float32 scan draws token 998 where the float64 reference draws 996, within
    the chain contract's cdf_epsilon. The fuzzer counts it as a rounding tie."""
    backend = specsample.get_backend("torch-loop")
    case = make_serving_case(9, 4989, backend.capabilities)
    out = backend.verify_serving(case.draft_token_ids, **case.serving["kwargs"])
    ref = reference_verify_serving(case.draft_token_ids, **case.serving["kwargs"])
    assert not torch.equal(out.token_ids, ref.token_ids)  # the case still holds the tie
    assert check_serving_case(backend, case, torch.device("cpu")) == (None, 1)


@pytest.mark.parametrize(
    "index, mass",
    [(48269, "noise"), (53773, "zero")],
    ids=["residual-of-float32-noise", "residual-all-zero"],
)
def test_a_residual_below_float32_resolution_is_a_rounding_tie(index, mass):
    """Seed 100: the rejected position's target and draft distributions agree to float32 precision
    (temperature 1.6 and a peaked row: residual mass 6e-8; temperature 1000 and draft logits equal
    to the target's in float16: residual exactly 0 in float64, so the reference falls back to q').
    A float32 backend's residual is then rounding noise, and any token of q' is a legitimate draw."""
    from specsample.reference_serving import last_draws

    backend = specsample.get_backend("torch-vectorized")
    case = make_serving_case(100, index, backend.capabilities)
    kwargs = case.serving["kwargs"]
    out = backend.verify_serving(case.draft_token_ids, **kwargs)
    ref = reference_verify_serving(case.draft_token_ids, **kwargs)
    differs = (out.token_ids != ref.token_ids).any(dim=1).nonzero().flatten().tolist()
    assert len(differs) == 1  # the case still holds the tie
    draw = last_draws(case.draft_token_ids, **kwargs)[differs[0]]
    assert draw.residual_mass is not None and draw.residual_mass <= 2.0**-20
    assert (draw.residual_mass == 0.0) == (mass == "zero")
    assert check_serving_case(backend, case, torch.device("cpu")) == (None, 1)


def test_tokens_tied_at_the_top_p_boundary_are_all_kept():
    """Case 892597 of seed 748 (a GPU campaign): temperature 0.3 and top-p 0.3 on a row where four
    tokens share the probability at the top-p boundary. Every backend kept all four and drew token
    28; the reference kept one (its float64 pow rounded equal values apart by their position) and
    drew 29. tests/test_serving_reference.py pins the rule; here the case passes the fuzzer."""
    backend = specsample.get_backend("torch-loop")
    case = make_serving_case(748, 892597, backend.capabilities)
    ref = reference_verify_serving(case.draft_token_ids, **case.serving["kwargs"])
    assert ref.token_ids[7, 0].item() == 28
    assert check_serving_case(backend, case, torch.device("cpu")) == (None, 0)
