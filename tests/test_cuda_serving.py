"""The serving kernels of ``cuda-cpp`` and ``cupy`` against the float64 serving reference, token
for token (GPU only; every test is marked ``gpu``). Every test runs with each kernel:
``csrc/kernel_serving_split.cuh`` (the default), the same with three blocks for every counted row
(``SPECSAMPLE_SERVING_CHUNKS=3``) and ``csrc/kernel_serving.cuh`` (``SPECSAMPLE_SERVING_SPLIT=0``).

The kernel's weights and sums are float64, so no request needs the float32 excuse of the
conformance checks: status, tokens and counts must equal the reference's exactly.
"""

from __future__ import annotations

import math

import pytest
import specsample
import torch
from serving_batches import check_one_launch_and_graph_replay, mixed_serving_batch
from specsample.reference_serving import reference_verify_serving, reference_verify_serving_flat
from specsample.serving_layout import padded_to_flat, padded_to_flat_drafts

BACKENDS = [
    pytest.param("cuda-cpp", marks=pytest.mark.gpu),
    pytest.param("cupy", marks=pytest.mark.gpu(needs=("cupy",))),
]


@pytest.fixture(params=["one-block", "split", "split-chunks"], autouse=True)
def serving_kernel(request, monkeypatch):
    """Which serving kernel the backends launch outside graph capture (SPECSAMPLE_SERVING_SPLIT):
    the split kernel with its own choice of blocks per row, or with three blocks for every counted
    row whatever the batch (SPECSAMPLE_SERVING_CHUNKS=3), or the one-block kernel."""
    monkeypatch.delenv("SPECSAMPLE_SERVING_CHUNKS", raising=False)
    if request.param == "one-block":
        monkeypatch.setenv("SPECSAMPLE_SERVING_SPLIT", "0")
    else:
        monkeypatch.delenv("SPECSAMPLE_SERVING_SPLIT", raising=False)
        if request.param == "split-chunks":
            monkeypatch.setenv("SPECSAMPLE_SERVING_CHUNKS", "3")
    return request.param


def _cuda_batch(*args, **kwargs):
    """:func:`serving_batches.mixed_serving_batch` on the GPU."""
    return mixed_serving_batch(*args, device="cuda", **kwargs)


def _exact(name, ids, kwargs):
    """Status, tokens and counts equal the float64 reference's; returns the output."""
    out = specsample.get_backend(name).verify_serving(ids, **kwargs)
    host = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    ref = reference_verify_serving(ids.cpu(), **host)
    assert torch.equal(out.status.cpu(), ref.status.cpu()), (out.status, ref.status)
    differ = torch.nonzero((out.token_ids.cpu() != ref.token_ids.cpu()).any(dim=1)).flatten()
    assert len(differ) == 0, (
        differ.tolist(),
        out.token_ids.cpu()[differ].tolist(),
        ref.token_ids.cpu()[differ].tolist(),
    )
    assert torch.equal(out.num_emitted.cpu(), ref.num_emitted.cpu())
    return out


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "dtype, probs, draft",
    [
        (torch.float32, False, "logits"),
        (torch.bfloat16, False, "logits"),
        (torch.float16, False, "none"),
        (torch.float32, True, "probs"),
        (torch.bfloat16, True, "none"),
        (torch.float16, True, "logits"),
    ],
    ids=["f32-logits", "bf16-logits", "f16-no-draft", "f32-probs", "bf16-probs", "f16-probs-dl"],
)
def test_mixed_batch_exact(name, dtype, probs, draft):
    """Mixed batches (greedy and sampling, K_b from 0..K, top-k / top-p) token for token; both
    outcomes of the accept test occur."""
    ids, kwargs = _cuda_batch(48, 3, 50, seed=1, dtype=dtype, probs=probs, draft=draft)
    out = _exact(name, ids, kwargs)
    assert (out.status == 0).all()
    assert 0 < int((out.num_emitted < kwargs["num_draft_tokens"] + 1).sum()) < 48


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "B, K, V, dtype",
    [
        (1, 8, 128256, torch.bfloat16),
        (8, 4, 151936, torch.bfloat16),
        (64, 4, 32000, torch.float32),
        (300, 3, 50, torch.float16),
        (5, 2, 1001, torch.bfloat16),  # rows not on 16 bytes: the element-by-element path
    ],
)
def test_shapes_exact(name, B, K, V, dtype):
    """Large vocabularies (many vectors per thread), many requests, unaligned rows; logits and
    probabilities, explicit coins and seeds."""
    ids, kwargs = _cuda_batch(B, K, V, seed=B + K, dtype=dtype)
    _exact(name, ids, kwargs)
    ids, kwargs = _cuda_batch(B, K, V, seed=B + K, dtype=dtype, probs=True, draft="probs")
    _exact(name, ids, kwargs)
    del kwargs["uniforms"]
    kwargs["seeds"] = torch.arange(B, device="cuda") + 17
    _exact(name, ids, kwargs)


@pytest.mark.parametrize("name", BACKENDS)
def test_several_thresholds_in_a_large_row(name):
    """Top-k in the thousands and top-p on a row of 20000, a greedy maximum tied in three places
    (the smallest index wins)."""
    ids, kwargs = _cuda_batch(4, 2, 20000, seed=2)
    kwargs["temperature"] = torch.tensor([0.0, 1.0, 0.8, 1.2], device="cuda")
    kwargs["top_k"] = torch.tensor([0, 0, 9000, 50], device="cuda")
    kwargs["top_p"] = torch.tensor([1.0, 0.95, 0.9, 1.0], device="cuda")
    kwargs["target_logits"][0, :, [100, 9000, 15000]] = 50.0
    kwargs["num_draft_tokens"][0] = 2
    ids[0] = torch.tensor([100, 9000])
    out = _exact(name, ids, kwargs)
    assert out.token_ids[0].tolist() == [100, 100, -1]


@pytest.mark.parametrize("name", BACKENDS)
def test_seeds_are_the_philox_stream(name):
    """Seeded coins are ``philox_stream_uniforms``: with flat logits and K = 0 the token is
    ``floor(u * V)``; requests with the same seed and offset agree."""
    from specsample.philox import philox_stream_uniforms

    V, B = 4096, 6
    seeds = torch.tensor([3, -7, 2**40 + 5, 3, 11, 12], device="cuda")
    offsets = torch.tensor([0, 5, 1, 0, 2**33 + 3, 1], device="cuda")
    logits = torch.zeros(B, 1, V, device="cuda")
    ids = torch.zeros(B, 0, dtype=torch.int64, device="cuda")
    be = specsample.get_backend(name)
    out = be.verify_serving(ids, target_logits=logits, seeds=seeds, offsets=offsets)
    u = philox_stream_uniforms(seeds.cpu(), offsets.cpu(), 1)[:, 0].to(torch.float64)
    assert out.token_ids[:, 0].cpu().tolist() == torch.floor(u * V).to(torch.int64).tolist()
    ids, kwargs = _cuda_batch(12, 3, 40, seed=3)
    del kwargs["uniforms"]
    kwargs["seeds"] = torch.arange(12, device="cuda") * 7919 + 1
    kwargs["offsets"] = torch.arange(12, device="cuda") * 4
    _exact(name, ids, kwargs)


@pytest.mark.parametrize("name", BACKENDS)
def test_generator_reproducible(name):
    """Coins from a generator: the same seed gives the same tokens, another seed others."""
    ids, kwargs = _cuda_batch(64, 3, 400, seed=4)
    del kwargs["uniforms"]
    kwargs["temperature"] = torch.ones(64, device="cuda")
    be = specsample.get_backend(name)
    outs = [
        be.verify_serving(
            ids, generator=torch.Generator("cuda").manual_seed(s), **kwargs
        ).token_ids.cpu()
        for s in (5, 5, 6)
    ]
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("name", BACKENDS)
def test_filter_ties(name):
    """Tie rules at the top-k and top-p boundaries (``-0.0`` ties ``0.0``; whole tie groups are
    kept), probabilities with zeros, and top-p's boundary hit exactly."""
    row = torch.tensor([2.0, 1.0, 1.0, 0.0, -0.0, 0.0, -1.0, -1.0, -5.0, -math.inf, 1.0, -2.0])
    logits = row.repeat(8, 2, 1).cuda()
    ids = torch.tensor([[1], [4], [3], [7], [2], [10], [9], [5]]).cuda()
    kwargs = {
        "target_logits": logits,
        "temperature": torch.tensor([1.0, 1.0, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0]).cuda(),
        "top_k": torch.tensor([2, 5, 4, 7, 0, 3, 0, 6]).cuda(),
        "top_p": torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.999, 0.7]).cuda(),
        "uniforms": torch.linspace(0.05, 0.95, 16).reshape(8, 2).cuda(),
    }
    kwargs["uniforms"][1, 0] = 0.01
    _exact(name, ids, kwargs)
    probs = torch.softmax(logits, -1)
    probs[:, :, 3:6] = 0.0
    probs[:, :, 5] = -0.0
    kwargs["target_probs"] = probs
    del kwargs["target_logits"]
    _exact(name, ids, kwargs)
    row = torch.tensor([0.5, 0.125, 0.125, 0.0, 0.125, 0.125, 0.0, 0.0])
    u = torch.linspace(0.0, 0.99, 12).reshape(12, 1).cuda()
    for p, allowed in ((0.5, {0}), (0.75, {0, 1, 2, 4, 5})):
        out = _exact(
            name,
            torch.zeros(12, 0, dtype=torch.int64, device="cuda"),
            {
                "target_probs": row.repeat(12, 1, 1).cuda(),
                "top_p": torch.full((12,), p, device="cuda"),
                "uniforms": u,
            },
        )
        assert set(out.token_ids[:, 0].cpu().tolist()) == allowed


@pytest.mark.parametrize("name", BACKENDS)
def test_without_filters_and_flat_layout(name):
    """No top_k / top_p, int32 ids, and the flattened layout."""
    ids, kwargs = _cuda_batch(10, 3, 30, seed=5)
    del kwargs["top_k"], kwargs["top_p"]
    _exact(name, ids.to(torch.int32), kwargs)
    flat_ids, cu = padded_to_flat_drafts(ids, kwargs["num_draft_tokens"])
    T, B = flat_ids.shape[0], 10
    flat = {
        "target_logits": padded_to_flat(kwargs["target_logits"], cu, T + B, bonus=True),
        "draft_logits": padded_to_flat(kwargs["draft_logits"], cu, T, bonus=False),
        "uniforms": padded_to_flat(kwargs["uniforms"], cu, T + B, bonus=True),
        "temperature": kwargs["temperature"],
    }
    out = specsample.get_backend(name).verify_serving_flat(
        flat_ids, cu, max_num_draft_tokens=3, **flat
    )
    host = {k: v.cpu() for k, v in flat.items()}
    ref = reference_verify_serving_flat(flat_ids.cpu(), cu.cpu(), **host)
    assert torch.equal(out.flat_token_ids.cpu(), ref.flat_token_ids.cpu())


@pytest.mark.parametrize("name", BACKENDS)
def test_zero_residual_falls_back_to_q(name):
    """Draft logits equal to the target's under top-k = 3, drafts outside the top 3: every coin
    rejects, the residual is all zero, so the token is drawn from q' (one of the top 3)."""
    g = torch.Generator().manual_seed(6)
    B, K, V = 12, 2, 30
    logits = torch.randn(B, K + 1, V, generator=g)
    ids = logits[:, :K].argmin(-1)
    kwargs = {
        "target_logits": logits.cuda(),
        "draft_logits": logits[:, :K].clone().cuda(),
        "top_k": torch.full((B,), 3).cuda(),
        "uniforms": torch.rand(B, K + 1, generator=g),
    }
    kwargs["uniforms"][:, K] = torch.linspace(0.0, 0.99, B)
    kwargs["uniforms"] = kwargs["uniforms"].cuda()
    out = _exact(name, ids.cuda(), kwargs)
    assert (out.num_emitted == 1).all()
    top3 = logits[:, 0].topk(3).indices
    rank = (top3 == out.token_ids[:, :1].cpu()).int()
    assert rank.any(dim=1).all() and len(set(rank.argmax(dim=1).tolist())) > 1


@pytest.mark.parametrize("name", BACKENDS)
def test_status(name):
    """Bad values flag exactly the reference's bits; unowned rows are not read; device-found bad
    parameters (``param_flags``) flag their request; flagged requests emit -1 and 0."""
    from specsample.serving import validate_serving

    ids, kwargs = _cuda_batch(11, 3, 20, seed=8)
    kwargs["num_draft_tokens"] = torch.tensor([3, 1, 3, 2, 3, 3, 3, 3, 2, 3, 3]).cuda()
    kwargs["temperature"] = torch.tensor(
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    ).cuda()
    tl, dl, u = kwargs["target_logits"], kwargs["draft_logits"], kwargs["uniforms"]
    ids[0, 2] = 20
    tl[1, 3, 4] = math.nan
    tl[2, 3, 0] = math.inf
    dl[3, 1, 1] = math.nan
    u[4, 3] = 1.0
    dl[5, 0, 0] = math.nan
    tl[6, 1] = -math.inf
    tl[7, 0, :5] = -math.inf
    tl[8, 2, 3] = math.nan
    u[8, 0] = 2.0
    tl[10, 1] = -math.inf
    tl[10, 1, 7] = math.nan
    _exact(name, ids, kwargs)
    S = specsample.Status
    extra = torch.tensor([0] * 9 + [int(S.BAD_PARAMETER), 0])
    inputs = validate_serving(ids, **kwargs, extra_flags=extra)
    out = specsample.get_backend(name)._verify_serving(inputs)
    assert out.status.cpu().tolist() == [
        S.BAD_DRAFT_ID, 0, S.BAD_TARGET_VALUE, S.BAD_DRAFT_VALUE, S.BAD_UNIFORM, 0, S.ZERO_ROW,
        0, S.BAD_TARGET_VALUE, S.BAD_PARAMETER, S.BAD_TARGET_VALUE,
    ]  # fmt: skip
    flagged = out.status != 0
    assert (out.num_emitted[flagged] == 0).all() and (out.token_ids[flagged] == -1).all()


@pytest.mark.parametrize("name", BACKENDS)
def test_one_launch_and_graph_replay(name, serving_kernel):
    """One kernel per call (the split kernel when asked for, outside capture); under CUDA-graph
    capture (the one-block kernel) seeded calls repeat their tokens on replay, generator calls
    draw fresh coins on every replay."""
    split = serving_kernel != "one-block"
    kernel = "verify_serving_split_kernel" if split else "verify_serving_kernel"
    check_one_launch_and_graph_replay(name, kernel, temperature=0.9)


@pytest.mark.parametrize("name", BACKENDS)
def test_top_k_keeps_exactly_k_and_cdf_boundary(name):
    """Distinct logits, K = 0: coins spread over [0, 1) draw exactly the top-k tokens; a coin
    landing exactly on a cumulative boundary takes the next token (``cumsum > u * sum``)."""
    V, B = 300, 32
    logits = torch.randperm(V, generator=torch.Generator().manual_seed(9)).float() * 1e-3
    ids = torch.zeros(B, 0, dtype=torch.int64, device="cuda")
    u = torch.linspace(0.0, 0.999, B).reshape(B, 1).cuda()
    for k in (1, 5, 12):
        out = _exact(
            name, ids,
            {"target_logits": logits.repeat(B, 1, 1).cuda(), "top_k": torch.full((B,), k).cuda(),
             "uniforms": u},
        )  # fmt: skip
        assert set(out.token_ids[:, 0].cpu().tolist()) == set(logits.topk(k).indices.tolist())
    probs = torch.tensor([0.5, 0.25, 0.25, 0.0]).repeat(3, 1, 1).cuda()
    out = _exact(
        name, torch.zeros(3, 0, dtype=torch.int64, device="cuda"),
        {"target_probs": probs, "uniforms": torch.tensor([[0.5], [0.75], [0.0]]).cuda()},
    )  # fmt: skip
    assert out.token_ids[:, 0].cpu().tolist() == [1, 2, 0]
