"""torch-vectorized and torch-loop serving calls agree with the float64 reference token for token.

torch-compile runs the same tensor code compiled; the conformance suite's serving checks cover it
(tests/test_conformance_builtin.py), so its compile time is paid once.
"""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample.reference_serving import reference_verify_serving, reference_verify_serving_flat
from specsample.serving_layout import padded_to_flat, padded_to_flat_drafts

BACKENDS = ("torch-vectorized", "torch-loop")


def _mixed(B=16, K=4, V=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, K), generator=g)
    logits = torch.randn(B, K + 1, V, generator=g) * 2
    draft = torch.randn(B, K, V, generator=g) * 2
    num = torch.randint(0, K + 1, (B,), generator=g)
    params = {
        "temperature": torch.tensor(
            [0, 1, 0.6, 0.8, 1, 0, 0.9, 0.7, 1e-3, 100.0, 1, 1, 0, 0.5, 1, 1]
        ),
        "top_k": torch.tensor([0, 1, 0, 5, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 50, 0]),
        "top_p": torch.tensor([1, 1, 0.9, 0.95, 1e-6, 1, 0.5, 1, 1, 1, 1, 0.3, 1, 0.92, 1, 1.0]),
    }
    u = torch.rand(B, K + 1, generator=g)
    return ids, num, logits, draft, params, u


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("draft_kind", ["logits", "probs", "none"])
@pytest.mark.parametrize("target_kind", ["logits", "probs"])
def test_mixed_batch_matches_reference(name, draft_kind, target_kind):
    ids, num, logits, draft, params, u = _mixed()
    kwargs = dict(num_draft_tokens=num, uniforms=u, **params)
    kwargs["target_" + target_kind] = logits if target_kind == "logits" else logits.softmax(-1)
    if draft_kind != "none":
        kwargs["draft_" + draft_kind] = draft if draft_kind == "logits" else draft.softmax(-1)
    ref = reference_verify_serving(ids, **kwargs)
    out = specsample.get_backend(name).verify_serving(ids, **kwargs)
    assert torch.equal(out.status, ref.status) and not ref.status.any()
    assert torch.equal(out.token_ids, ref.token_ids)
    assert torch.equal(out.num_emitted, ref.num_emitted)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_with_seeds_match_reference(name, dtype):
    ids, num, logits, draft, params, _ = _mixed(seed=2)
    seeds, offsets = torch.arange(16) * 7919, torch.arange(16) * 5
    kwargs = dict(num_draft_tokens=num, target_logits=logits.to(dtype),
                  draft_logits=draft.to(dtype), seeds=seeds, offsets=offsets, **params)  # fmt: skip
    ref = reference_verify_serving(ids, **kwargs)
    out = specsample.get_backend(name).verify_serving(ids, **kwargs)
    assert torch.equal(out.token_ids, ref.token_ids)


@pytest.mark.parametrize("name", BACKENDS)
def test_flat_layout_matches_reference(name):
    ids, num, logits, draft, params, u = _mixed(seed=3)
    flat_ids, cu = padded_to_flat_drafts(ids, num)
    T, B = flat_ids.shape[0], num.shape[0]
    kwargs = dict(
        target_logits=padded_to_flat(logits, cu, T + B, bonus=True),
        draft_logits=padded_to_flat(draft, cu, T, bonus=False),
        uniforms=padded_to_flat(u, cu, T + B, bonus=True),
        max_num_draft_tokens=4,
        **params,
    )
    ref = reference_verify_serving_flat(flat_ids, cu, **kwargs)
    out = specsample.get_backend(name).verify_serving_flat(flat_ids, cu, **kwargs)
    assert torch.equal(out.token_ids, ref.token_ids)
    assert torch.equal(out.flat_token_ids, ref.flat_token_ids)


@pytest.mark.parametrize("name", BACKENDS)
def test_status_matches_reference(name):
    V = 6
    ids = torch.tensor([[1, 99], [1, 99], [2, 3], [2, 3], [0, 0], [1, 1]])
    num = torch.tensor([1, 2, 2, 2, 2, 2])
    logits = torch.zeros(6, 3, V)
    logits[0, 2, 0] = float("nan")  # padding: never read
    logits[2, 1, 4] = float("nan")
    logits[3, 2] = float("-inf")
    logits[4, 0, 1] = float("-inf")
    draft = torch.zeros(6, 2, V)
    draft[5, 1, 2] = float("inf")
    u = torch.zeros(6, 3)
    u[4, 2] = 1.0
    kwargs = dict(num_draft_tokens=num, target_logits=logits, draft_logits=draft, uniforms=u,
                  temperature=torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]))  # fmt: skip
    ref = reference_verify_serving(ids, **kwargs)
    assert ref.status.tolist() == [0, 1, 2, 16, 8, 4]
    out = specsample.get_backend(name).verify_serving(ids, **kwargs)
    assert torch.equal(out.status, ref.status) and torch.equal(out.token_ids, ref.token_ids)


def test_backends_that_do_not_claim_serving_refuse_it():
    class Plain(specsample.Backend):
        name = "plain"

        def _verify(self, inputs):
            raise AssertionError("not called")

    with pytest.raises(ValueError, match="'plain' does not implement verify_serving"):
        Plain().verify_serving(
            torch.zeros(1, 1, dtype=torch.int64), target_logits=torch.zeros(1, 2, 3)
        )
