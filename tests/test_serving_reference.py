"""The float64 serving reference: definitions, layouts, seeds, validation and status."""

from __future__ import annotations

import math

import pytest
import torch
from specsample import Status, reference_verify
from specsample.backends._cuda_build import philox_uniform
from specsample.philox import philox_stream_uniforms
from specsample.reference_serving import (
    float32_sensitive_requests,
    reference_verify_serving,
    reference_verify_serving_flat,
    transform_row,
)
from specsample.serving_layout import (
    flat_to_padded,
    num_draft_from_cu,
    padded_to_flat,
    padded_to_flat_drafts,
)


def _batch(B=6, K=3, V=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, K), generator=g)
    logits = torch.randn(B, K + 1, V, generator=g) * 2
    draft = torch.randn(B, K, V, generator=g) * 2
    u = torch.rand(B, K + 1, generator=g)
    return ids, logits, draft, u


def test_transform_row_hand_examples():
    # top-k keeps every token tied with the k-th largest value
    got = transform_row(torch.tensor([1.0, 2.0, 2.0, 3.0]), False, 1.0, 2, 1.0)
    assert torch.allclose(got, torch.tensor([0, 2 / 7, 2 / 7, 3 / 7], dtype=torch.float64))
    # top-p keeps the smallest prefix reaching p, plus the ties of its last member
    got = transform_row(torch.tensor([0.1, 0.2, 0.2, 0.5]), False, 1.0, 0, 0.6)
    assert torch.allclose(got, torch.tensor([0, 0.2, 0.2, 0.5], dtype=torch.float64) / 0.9)
    # p reached exactly by the first token: mass above the second is 0.5, not < 0.5
    got = transform_row(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), False, 1.0, 0, 0.5)
    assert got.tolist() == [1.0, 0.0, 0.0]
    # temperature on probabilities is q^(1/T) renormalized = softmax(log q / T)
    q = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    for T in (0.25, 0.7, 3.0):
        a = transform_row(q, False, T, 0, 1.0)
        b = transform_row(q.log(), True, T, 0, 1.0)
        assert torch.allclose(a, b, rtol=1e-12) and torch.allclose(a, torch.softmax(q.log() / T, 0))
    # -inf logits are masked tokens; a row of only -inf has no mass
    got = transform_row(torch.tensor([-math.inf, 0.0, 0.0]), True, 1.0, 0, 1.0)
    assert got.tolist() == [0.0, 0.5, 0.5]
    assert transform_row(torch.full((3,), -math.inf), True, 1.0, 0, 1.0).sum() == 0


def test_equal_values_get_equal_weights_wherever_they_sit_in_the_row():
    """Top-p keeps every token tied with its last member, so equal values must get equal weights.
    torch's vectorized float64 pow on the CPU can round an element in a loop's tail one ulp away
    from an equal element of the vectorized body: in a row of 31, (0.8125 / 0.9375) ** (1 / 0.3)
    came out 0.6206407957288201 at index 5 and 0.62064079572882 at 21, 23 and 28, and top-p kept
    only index 5 of the four tied tokens."""
    T = float(torch.tensor(0.3, dtype=torch.float32))
    sixteenths = [10, 5, 9, 0, 5, 13, 11, 10, 0, 12, 3, 9, 5, 11, 0, 8, 10, 10, 15, 12, 6, 13, 14]
    row = torch.tensor(sixteenths + [13, 8, 2, 4, 4, 13, 14, 10], dtype=torch.float32) / 16
    got = transform_row(row, False, T, 0, T)
    assert got.nonzero().flatten().tolist() == [5, 18, 21, 22, 23, 28, 29]
    assert len(set(got[[5, 21, 23, 28]].tolist())) == 1
    g = torch.Generator().manual_seed(5)
    for V in (17, 31, 33, 47, 130):
        levels = torch.rand(6, generator=g, dtype=torch.float64)
        x = levels[torch.randint(0, 6, (V,), generator=g)]
        for is_logits in (False, True):
            for T in (0.3, 0.7, 1.6):
                pi = transform_row(x.log() if is_logits else x, is_logits, T, 0, 1.0)
                for level in levels:
                    assert len(set(pi[x == level].tolist())) <= 1, (V, is_logits, T)


def test_unfiltered_random_requests_equal_the_chain_reference():
    ids, logits, draft, u = _batch()
    q, p = logits.softmax(-1), draft.softmax(-1)
    for draft_probs in (p, None):
        out = reference_verify_serving(
            ids, target_probs=q, draft_probs=draft_probs, uniforms=u
        ).raise_for_status()
        ref = reference_verify(ids, draft_probs, q, uniforms=u)
        assert torch.equal(out.token_ids, ref.token_ids)
        assert torch.equal(out.num_emitted, ref.num_emitted)


def test_greedy_rows_and_ragged_rows_equal_the_chain_reference_on_their_slice():
    ids, logits, draft, u = _batch(B=8, K=4)
    num = torch.tensor([4, 0, 2, 1, 3, 0, 4, 2])
    temp = torch.tensor([0.0, 1.0, 0.0, 0.7, 1.3, 0.0, 0.9, 1.0])
    out = reference_verify_serving(
        ids, num_draft_tokens=num, target_logits=logits, draft_logits=draft,
        temperature=temp, uniforms=u,
    )  # fmt: skip
    for b in range(8):
        k = int(num[b])
        T = float(temp[b])
        if T == 0:
            ref = reference_verify(ids[b : b + 1, :k], None, logits[b : b + 1, : k + 1].softmax(-1),
                                   mode="greedy")  # fmt: skip
        else:
            q = (logits[b : b + 1, : k + 1] / T).softmax(-1)
            p = (draft[b : b + 1, :k] / T).softmax(-1)
            coins = torch.cat([u[b, :k], u[b, k : k + 1]]).unsqueeze(0)
            ref = reference_verify(ids[b : b + 1, :k], p, q, uniforms=coins)
        n = int(ref.num_emitted[0])
        assert out.token_ids[b, :n].tolist() == ref.token_ids[0, :n].tolist(), b
        assert out.token_ids[b, n:].eq(-1).all() and int(out.num_emitted[b]) == n


def test_flat_layout_equals_padded_layout_and_converters_round_trip():
    ids, logits, draft, u = _batch(B=5, K=3)
    num = torch.tensor([3, 0, 1, 2, 3])
    flat_ids, cu = padded_to_flat_drafts(ids, num)
    assert cu.tolist() == [3, 3, 4, 6, 9] and torch.equal(num_draft_from_cu(cu), num)
    T, B = int(cu[-1]), 5
    assert flat_ids.tolist() == ids[0].tolist() + [] + ids[2, :1].tolist() + ids[3, :2].tolist() + (
        ids[4].tolist()
    )
    flat_logits = padded_to_flat(logits, cu, T + B, bonus=True)
    flat_draft = padded_to_flat(draft, cu, T, bonus=False)
    flat_u = padded_to_flat(u, cu, T + B, bonus=True)
    assert flat_logits.shape == (T + B, 12) and flat_draft.shape == (T, 12)
    back = flat_to_padded(flat_logits, cu, 3, bonus=True)
    for b in range(B):
        assert torch.equal(back[b, : int(num[b]) + 1], logits[b, : int(num[b]) + 1])
        assert back[b, int(num[b]) + 1 :].eq(0).all()
    params = {"temperature": [0.0, 1.0, 0.6, 1.0, 0.9], "top_k": [0, 5, 0, 3, 0],
              "top_p": [1.0, 1.0, 0.9, 0.5, 0.95]}  # fmt: skip
    padded = reference_verify_serving(
        ids, num_draft_tokens=num, target_logits=logits, draft_logits=draft, uniforms=u, **params
    )
    flat = reference_verify_serving_flat(
        flat_ids, cu, target_logits=flat_logits, draft_logits=flat_draft, uniforms=flat_u, **params
    )
    assert torch.equal(padded.token_ids, flat.token_ids)
    assert torch.equal(flat.flat_token_ids, padded_to_flat(padded.token_ids, cu, T + B,
                                                           bonus=True, fill=-1))  # fmt: skip


def test_per_request_seeds_follow_the_kernels_philox_stream_and_ignore_the_batch():
    seeds = torch.tensor([0, 7, -3, 2**40 + 1])
    offsets = torch.tensor([0, 5, 2**33, 9])
    u = philox_stream_uniforms(seeds, offsets, 6)
    for b in range(4):
        for i in range(6):
            assert float(u[b, i]) == philox_uniform(int(seeds[b]), int(offsets[b]), 0, i)
    ids, logits, draft, _ = _batch(B=4, K=3)
    full = reference_verify_serving(ids, target_logits=logits, draft_logits=draft, seeds=seeds,
                                    offsets=offsets)  # fmt: skip
    alone = reference_verify_serving(ids[2:3], target_logits=logits[2:3],
                                     draft_logits=draft[2:3], seeds=seeds[2:3],
                                     offsets=offsets[2:3])  # fmt: skip
    assert torch.equal(full.token_ids[2], alone.token_ids[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": [1.0, -0.5]}, r"temperature\[1\] must be a finite value >= 0 .* got -0.5"),
        ({"top_p": [0.0, 1.0]}, r"top_p\[0\] must be a value in \(0, 1\] .* got 0.0"),
        ({"top_p": torch.tensor([1.0, 1.5])}, r"top_p\[1\] must be a value in \(0, 1\]"),
        ({"top_k": [-1, 0]}, r"top_k\[0\] must be an integer >= 0 .* got -1"),
        ({"num_draft_tokens": [3, 1]}, r"num_draft_tokens\[0\] must be a value in range"),
        ({"temperature": [1.0]}, r"temperature has 1 values; expected B=2"),
        ({"seeds": torch.tensor([1, 2]), "uniforms": torch.zeros(2, 3)}, "uniforms or seeds"),
        ({"target_probs": torch.ones(2, 3, 4)}, "target_probs or target_logits, not both"),
    ],
)
def test_bad_parameters_raise_naming_the_argument(kwargs, message):
    ids = torch.zeros(2, 2, dtype=torch.int64)
    base = {"target_logits": torch.zeros(2, 3, 4)}
    with pytest.raises((ValueError, TypeError), match=message):
        reference_verify_serving(ids, **base, **kwargs)


def test_inconsistent_cu_num_draft_tokens_raises():
    ids = torch.zeros(4, dtype=torch.int64)
    rows = torch.zeros(6, 5)
    with pytest.raises(ValueError, match=r"non-decreasing, got cu_num_draft_tokens\[1\]=1 after 3"):
        reference_verify_serving_flat(ids, torch.tensor([3, 1]), target_logits=rows)
    with pytest.raises(ValueError, match=r"cu_num_draft_tokens\[-1\] must equal T=4 .* got 3"):
        reference_verify_serving_flat(ids, torch.tensor([1, 3]), target_logits=rows)
    with pytest.raises(ValueError, match=r"expected \[T\+B, V\] with T=4, B=2"):
        reference_verify_serving_flat(ids, torch.tensor([1, 4]), target_logits=rows[:5])
    with pytest.raises(ValueError, match="request 1 has 3 draft tokens but max_num_draft_tokens=2"):
        reference_verify_serving_flat(ids, torch.tensor([1, 4]), target_logits=rows,
                                      max_num_draft_tokens=2)  # fmt: skip


def test_status_reads_only_what_a_request_owns():
    V = 6
    ids = torch.tensor([[1, 99], [1, 99], [2, 3], [2, 3], [0, 0]])
    num = torch.tensor([1, 2, 2, 2, 2])
    logits = torch.zeros(5, 3, V)
    logits[0, 2, 0] = math.nan  # padding row of request 0: never read
    logits[2, 1, 4] = math.nan
    logits[3, 2] = -math.inf  # a row with no mass
    logits[4, 0, 1] = -math.inf  # a masked token is fine
    temp = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    out = reference_verify_serving(ids, num_draft_tokens=num, target_logits=logits,
                                   temperature=temp, uniforms=torch.zeros(5, 3))  # fmt: skip
    assert out.status.tolist() == [0, Status.BAD_DRAFT_ID, Status.BAD_TARGET_VALUE,
                                   Status.ZERO_ROW, 0]  # fmt: skip
    with pytest.raises(ValueError, match=r"request 1: draft_token_ids holds an id"):
        out.raise_for_status()
    greedy = reference_verify_serving(ids[3:], num_draft_tokens=num[3:], target_logits=logits[3:],
                                      temperature=0.0)  # fmt: skip
    assert greedy.status.tolist() == [0, 0]  # a greedy argmax needs no mass
    with pytest.raises(ValueError, match=r"request 0: target_logits holds a NaN"):
        reference_verify_serving(ids[2:], num_draft_tokens=num[2:], target_logits=logits[2:],
                                 temperature=temp[2:], validate="full")  # fmt: skip


def test_serving_page_example_runs():
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "serving.md"
    code = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)[0]
    namespace: dict = {}
    exec(code, namespace)
    out = namespace["out"]
    assert out.flat_token_ids.shape == (6,) and out.token_ids.shape == (3, 3)
    assert out.status.tolist() == [0, 0, 0]


def test_float32_sensitive_requests_flag_a_residual_below_float32():
    """T = 1e-3 makes target and draft one-hot on the same token but the target keeps 1e-245 on
    a second one: a rejected draft's residual is that token in float64 and empty in float32."""
    V = 8
    target = torch.full((2, 2, V), -10.0)
    target[:, 0, 3] = 0.0
    target[:, 0, 5] = -0.5625  # exp(-562.5) = 1.6e-245 relative to token 3
    target[:, 1, 2] = 0.0
    draft = torch.full((2, 1, V), -10.0)
    draft[:, 0, 3] = 0.0
    kwargs = {
        "target_logits": target,
        "draft_logits": draft,
        "num_draft_tokens": torch.tensor([1, 1]),
        "temperature": torch.tensor([1e-3, 1.0]),
        "top_k": torch.tensor([0, 0]),
        "top_p": torch.tensor([1.0, 1.0]),
        "uniforms": torch.tensor([[0.5, 0.5], [0.5, 0.5]]),
    }
    ids = torch.tensor([[6], [6]])  # a draft both rows reject
    exact = reference_verify_serving(ids, **kwargs).token_ids
    assert exact[0, 0] == 5  # the 1e-245 residual, all of it on token 5
    assert float32_sensitive_requests(ids, **kwargs).tolist() == [True, False]
