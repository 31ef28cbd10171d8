"""The ``triton`` backend's serving kernel against the float64 serving reference.

Runs under triton's CPU interpreter, in a subprocess with ``TRITON_INTERPRET=1`` (set before triton
is imported), or directly when this process already is in interpreter mode; compiled-kernel tests
run where a CUDA device exists. Shapes are small: the interpreter is slow.
"""

from __future__ import annotations

import math

import pytest
import specsample
import torch
from serving_batches import check_one_launch_and_graph_replay, mixed_serving_batch
from specsample.reference_serving import reference_verify_serving, reference_verify_serving_flat
from specsample.serving_layout import padded_to_flat, padded_to_flat_drafts
from triton_interpreter import HAVE_TRITON, in_interpreter, run_interpreter_suite


def _interp() -> bool:
    return in_interpreter()


INNER = pytest.mark.skipif(
    not _interp(), reason="needs TRITON_INTERPRET=1 (run by test_serving_interpreter_suite)"
)


def _exact(ids, kwargs):
    """Status, tokens and counts equal the float64 reference's exactly (the kernel's weights and
    sums are float64: no float32-sensitive request needs excusing); returns the output."""
    out = specsample.get_backend("triton").verify_serving(ids, **kwargs)
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


# ----------------------------------------------------------------------------- subprocess driver


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
def test_serving_interpreter_suite():
    """The interpreter tests of this file, in a subprocess with TRITON_INTERPRET=1."""
    if _interp():
        pytest.skip("already in interpreter mode: the tests run directly")
    run_interpreter_suite(__file__, timeout=900)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
@pytest.mark.parametrize("V", [1, 5, 31, 100, 257, 1000, 2048, 32000, 128256])
def test_compiled_launch_constants_follow_the_vocabulary_not_the_batch(V):
    """The compiled kernel's constexprs (BLOCK, ROWS, warps, K_P2) are one set per vocabulary for
    every batch size and every draft count up to 7, so a server's changing batch never compiles a
    new variant (the GPU test below checks the kernel cache itself)."""
    from specsample.backends._triton_serving import MAX_ROWS, MIN_K_P2, serving_config

    configs = {
        serving_config(B, V, K, False) for B in (1, 2, 3, 7, 16, 64, 300, 4096) for K in range(8)
    }
    assert len(configs) == 1, configs
    block, rows, warps, k_p2 = configs.pop()
    assert block == max(32, min(2048, 1 << (V - 1).bit_length()))
    assert 1 <= rows <= MAX_ROWS and (rows == 1 or rows * block <= 2048)
    assert warps in (4, 8) and k_p2 == MIN_K_P2 == 8
    assert serving_config(5, V, 8, False)[3] == 16  # K = 8 needs 9 columns


# ----------------------------------------------------------------------------- interpreter (CPU)


@INNER
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
    ids=[
        "f32-logits",
        "bf16-logits",
        "f16-no-draft",
        "f32-probs",
        "bf16-probs-no-draft",
        "f16-probs-draft-logits",
    ],
)
def test_interp_serving_exact(dtype, probs, draft):
    """Mixed batches (greedy and sampling, K_b from 0..K, top-k / top-p) token for token."""
    ids, kwargs = mixed_serving_batch(24, 3, 50, seed=1, dtype=dtype, probs=probs, draft=draft)
    out = _exact(ids, kwargs)
    assert (out.status == 0).all()
    # both outcomes of the accept test occur in the batch
    assert 0 < int((out.num_emitted < kwargs["num_draft_tokens"] + 1).sum()) < 24


@INNER
def test_interp_serving_several_tiles():
    """A row of several tiles (V = 20000): thresholds, sums and the inverse CDF across tiles."""
    ids, kwargs = mixed_serving_batch(4, 2, 20000, seed=2)
    kwargs["temperature"] = torch.tensor([0.0, 1.0, 0.8, 1.2])
    kwargs["top_k"] = torch.tensor([0, 0, 9000, 50])
    kwargs["top_p"] = torch.tensor([1.0, 0.95, 0.9, 1.0])
    # greedy request 0: the maximum tied in three tiles; the argmax is the smallest index
    kwargs["target_logits"][0, :, [100, 9000, 15000]] = 50.0
    kwargs["num_draft_tokens"][0] = 2
    ids[0] = torch.tensor([100, 9000])
    out = _exact(ids, kwargs)
    assert out.token_ids[0].tolist() == [100, 100, -1]


@INNER
def test_interp_serving_seeds_are_the_philox_stream():
    """Seeded coins are the stream of ``philox_stream_uniforms``: the tokens equal the reference's
    (which draws them there), and a request's tokens follow its seed and offset, not its
    neighbours. With flat logits and K = 0 the token is ``floor(u * V)``, so the coin is seen."""
    V, B = 4096, 6
    seeds = torch.tensor([3, -7, 2**40 + 5, 3, 11, 12])
    offsets = torch.tensor([0, 5, 1, 0, 2**33 + 3, 1])
    logits = torch.zeros(B, 1, V)
    ids = torch.zeros(B, 0, dtype=torch.int64)
    be = specsample.get_backend("triton")
    out = be.verify_serving(ids, target_logits=logits, seeds=seeds, offsets=offsets)
    from specsample.philox import philox_stream_uniforms

    u = philox_stream_uniforms(seeds, offsets, 1)[:, 0].to(torch.float64)
    assert out.token_ids[:, 0].tolist() == torch.floor(u * V).to(torch.int64).tolist()
    assert out.token_ids[0, 0] == out.token_ids[3, 0]  # same seed and offset
    ids, kwargs = mixed_serving_batch(12, 3, 40, seed=3)
    del kwargs["uniforms"]
    kwargs["seeds"] = torch.arange(12) * 7919 + 1
    kwargs["offsets"] = torch.arange(12) * 4
    _exact(ids, kwargs)


@INNER
def test_interp_serving_generator():
    """Coins from a generator: the same seed gives the same tokens, other seeds others."""
    ids, kwargs = mixed_serving_batch(16, 3, 40, seed=4)
    del kwargs["uniforms"]
    kwargs["temperature"] = torch.ones(16)
    be = specsample.get_backend("triton")
    outs = [
        be.verify_serving(ids, generator=torch.Generator().manual_seed(s), **kwargs).token_ids
        for s in (5, 5, 6)
    ]
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


@INNER
def test_interp_serving_filter_ties():
    """Tie rules: every token tied with the k-th largest value is kept (``-0.0`` ties ``0.0``),
    every token tied with top-p's least probable kept one too; probabilities with zeros."""
    row = torch.tensor([2.0, 1.0, 1.0, 0.0, -0.0, 0.0, -1.0, -1.0, -5.0, -math.inf, 1.0, -2.0])
    logits = row.repeat(8, 2, 1)
    ids = torch.tensor([[1], [4], [3], [7], [2], [10], [9], [5]])
    kwargs = {
        "target_logits": logits,
        "temperature": torch.tensor([1.0, 1.0, 0.5, 2.0, 1.0, 1.0, 1.0, 1.0]),
        "top_k": torch.tensor([2, 5, 4, 7, 0, 3, 0, 6]),
        "top_p": torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.6, 0.999, 0.7]),
        "uniforms": torch.linspace(0.05, 0.95, 16).reshape(8, 2),
    }
    kwargs["uniforms"][1, 0] = 0.01  # accepts draft 4 (-0.0) only if it survived top-k = 5
    _exact(ids, kwargs)
    probs = torch.softmax(logits, -1)
    probs[:, :, 3:6] = 0.0
    probs[:, :, 5] = -0.0
    kwargs["target_probs"] = probs
    del kwargs["target_logits"]
    _exact(ids, kwargs)
    # top-p's boundary hit exactly (temperature 1 keeps probabilities as given): with p = 0.5 the
    # tokens of 0.125 have 0.5 above them, not < 0.5, so only token 0 survives and every coin
    # draws it; with p = 0.75 all four are kept (a tie group), not the first two of them.
    row = torch.tensor([0.5, 0.125, 0.125, 0.0, 0.125, 0.125, 0.0, 0.0])
    u = torch.linspace(0.0, 0.99, 12).reshape(12, 1)
    for p, allowed in ((0.5, {0}), (0.75, {0, 1, 2, 4, 5})):
        out = _exact(
            torch.zeros(12, 0, dtype=torch.int64),
            {"target_probs": row.repeat(12, 1, 1), "top_p": torch.full((12,), p), "uniforms": u},
        )
        assert set(out.token_ids[:, 0].tolist()) == allowed


@INNER
def test_interp_serving_without_filters_and_flat_layout():
    """No top_k / top_p given (the filter passes compiled out), and the flattened layout."""
    ids, kwargs = mixed_serving_batch(10, 3, 30, seed=5)
    del kwargs["top_k"], kwargs["top_p"]
    _exact(ids, kwargs)
    flat_ids, cu = padded_to_flat_drafts(ids, kwargs["num_draft_tokens"])
    T, B = flat_ids.shape[0], 10
    flat = {
        "target_logits": padded_to_flat(kwargs["target_logits"], cu, T + B, bonus=True),
        "draft_logits": padded_to_flat(kwargs["draft_logits"], cu, T, bonus=False),
        "uniforms": padded_to_flat(kwargs["uniforms"], cu, T + B, bonus=True),
        "temperature": kwargs["temperature"],
    }
    out = specsample.get_backend("triton").verify_serving_flat(flat_ids, cu, **flat)
    ref = reference_verify_serving_flat(flat_ids, cu, **flat)
    assert torch.equal(out.flat_token_ids, ref.flat_token_ids)


@INNER
def test_interp_serving_zero_residual_falls_back_to_q():
    """Draft logits equal to the target's under top-k = 3, drafts outside the top 3: p'(x) =
    q'(x) = 0, every coin rejects, the residual is all zero, so the token is drawn from q' (one
    of the top 3, by the last coin)."""
    g = torch.Generator().manual_seed(6)
    B, K, V = 12, 2, 30
    logits = torch.randn(B, K + 1, V, generator=g)
    ids = logits[:, :K].argmin(-1)
    kwargs = {
        "target_logits": logits,
        "draft_logits": logits[:, :K].clone(),
        "top_k": torch.full((B,), 3),
        "uniforms": torch.rand(B, K + 1, generator=g),
    }
    kwargs["uniforms"][:, K] = torch.linspace(0.0, 0.99, B)
    out = _exact(ids, kwargs)
    assert (out.num_emitted == 1).all()
    top3 = logits[:, 0].topk(3).indices
    assert (top3 == out.token_ids[:, :1]).any(dim=1).all()
    rank = (top3 == out.token_ids[:, :1]).int().argmax(dim=1)
    assert len(set(rank.tolist())) > 1  # drawn, not always the same rank


@INNER
def test_interp_serving_many_requests_per_program():
    """More requests than one program's ROWS (several programs, a ragged last one), int32 ids."""
    from specsample.backends import _triton_block as blk

    B, V = 2100, 8
    assert -(-B // blk.block_config(B, V, True)[1]) > 1
    ids, kwargs = mixed_serving_batch(B, 2, V, seed=7)
    _exact(ids.to(torch.int32), kwargs)


@INNER
def test_interp_serving_status():
    """Bad values flag exactly the reference's bits (every owned value read; greedy requests skip
    draft rows and coins); unowned rows are not read; bad parameters found on the device
    (``param_flags``) flag their request."""
    from specsample.serving import validate_serving

    ids, kwargs = mixed_serving_batch(11, 3, 20, seed=8)
    num = torch.tensor([3, 1, 3, 2, 3, 3, 3, 3, 2, 3, 3])
    kwargs["num_draft_tokens"] = num
    kwargs["temperature"] = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    tl, dl, u = kwargs["target_logits"], kwargs["draft_logits"], kwargs["uniforms"]
    ids[0, 2] = 20  # BAD_DRAFT_ID
    tl[1, 3, 4] = math.nan  # request 1 owns rows 0..1 only: not read
    tl[2, 3, 0] = math.inf  # the bonus row: BAD_TARGET_VALUE
    dl[3, 1, 1] = math.nan  # BAD_DRAFT_VALUE
    u[4, 3] = 1.0  # BAD_UNIFORM
    dl[5, 0, 0] = math.nan  # greedy: draft rows not read
    tl[6, 1] = -math.inf  # ZERO_ROW
    tl[7, 0, :5] = -math.inf  # masked tokens are fine
    tl[8, 2, 3] = math.nan  # greedy: every owned target row is read
    u[8, 0] = 2.0  # greedy: coins not read
    tl[10, 1] = -math.inf
    tl[10, 1, 7] = math.nan  # a NaN among -inf: a bad value, not a row without mass
    _exact(ids, kwargs)
    inputs = validate_serving(
        ids, **kwargs, extra_flags=torch.tensor([0] * 9 + [int(specsample.Status.BAD_PARAMETER), 0])
    )
    be = specsample.get_backend("triton")
    out = be._verify_serving(inputs)
    S = specsample.Status
    assert out.status.tolist() == [
        S.BAD_DRAFT_ID, 0, S.BAD_TARGET_VALUE, S.BAD_DRAFT_VALUE, S.BAD_UNIFORM, 0, S.ZERO_ROW,
        0, S.BAD_TARGET_VALUE, S.BAD_PARAMETER, S.BAD_TARGET_VALUE,
    ]  # fmt: skip
    flagged = out.status != 0
    assert (out.num_emitted[flagged] == 0).all() and (out.token_ids[flagged] == -1).all()


@INNER
@pytest.mark.parametrize("probs", [False, True], ids=["logits", "probs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_interp_serving_rows_first_is_the_one_program_walk(dtype, probs):
    """The two-launch path (every row's record first, then the walk) and the one-program walk give
    the same tokens, counts and statuses, bad values included; each is also the reference's."""
    from specsample.backends import _triton_serving
    from specsample.backends.triton_backend import _split32
    from specsample.serving import validate_serving

    ids, kwargs = mixed_serving_batch(13, 4, 300, seed=21, dtype=dtype, probs=probs, draft="logits")
    rows = kwargs["target_probs" if probs else "target_logits"]
    rows[2, 1, 7] = math.nan  # BAD_TARGET_VALUE, or nothing where request 2 does not own row 1
    kwargs["draft_logits"][4, 0, 3] = math.inf  # BAD_DRAFT_VALUE unless request 4 is greedy
    _exact(ids, kwargs)
    inputs = validate_serving(ids, **kwargs)
    dummy = torch.zeros(1, dtype=torch.int64)
    outs = [
        _triton_serving.launch_serving(inputs, dummy, _split32, rows_first=flag)
        for flag in (True, False)
    ]
    for name in ("token_ids", "num_emitted", "status"):
        assert torch.equal(getattr(outs[0], name), getattr(outs[1], name)), name


@pytest.mark.parametrize("dtype, shift", [(torch.bfloat16, 16), (torch.float16, 13)])
def test_shifted_keys_order_and_separate_every_16_bit_value(dtype, shift):
    """The kernel's bisection runs over the float32 key shifted right by ``key_shift(dtype)``: for
    every value of the 16-bit dtype (NaN aside) the shifted key is strictly increasing with the
    value, and +0.0 / -0.0 share one, as the unshifted keys do."""
    pytest.importorskip("triton")
    from specsample.backends._triton_serving import key_shift

    assert key_shift(dtype) == shift and key_shift(torch.float32) == 0
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).float()
    values = values[~values.isnan()]
    bits = values.view(torch.int32)
    key = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    key = torch.where(values == 0, torch.zeros_like(key), key) >> shift
    order = torch.argsort(values, stable=True)
    v, k = values[order], key[order]
    same = v[1:] == v[:-1]
    assert (same == (k[1:] == k[:-1])).all()
    assert (k[1:] >= k[:-1]).all()


# ----------------------------------------------------------------------------- compiled (CUDA)


@pytest.mark.gpu(needs=("triton",))
@pytest.mark.skipif(_interp(), reason="the compiled kernel (not under the interpreter)")
@pytest.mark.parametrize(
    "B, K, V, dtype",
    [(1, 8, 128256, torch.bfloat16), (64, 4, 32000, torch.float32), (300, 3, 50, torch.float16)],
)
def test_compiled_serving_exact(B, K, V, dtype):
    ids, kwargs = mixed_serving_batch(B, K, V, seed=B + K, dtype=dtype, device="cuda")
    _exact(ids, kwargs)
    ids, kwargs = mixed_serving_batch(
        B, K, V, seed=B + K, dtype=dtype, probs=True, draft="probs", device="cuda"
    )
    _exact(ids, kwargs)
    del kwargs["uniforms"]
    kwargs["seeds"] = torch.arange(B, device="cuda") + 17
    _exact(ids, kwargs)


@pytest.mark.gpu(needs=("triton",))
@pytest.mark.skipif(_interp(), reason="the compiled kernel (not under the interpreter)")
def test_compiled_serving_one_launch_and_graph_replay():
    """Logits in: one launch of the rows kernel and one of the serving kernel per call (seeds, or a
    generator); under CUDA graph capture with seeds the replay repeats the tokens, with the default
    generator it draws fresh coins."""
    check_one_launch_and_graph_replay("triton", ("serving_rows_kernel", "serving_kernel"))


@pytest.mark.gpu(needs=("triton",))
@pytest.mark.skipif(_interp(), reason="the compiled kernel (not under the interpreter)")
def test_compiled_serving_compiles_once_per_vocabulary_and_dtypes():
    """Batch size, draft count (up to 7) and coin source are runtime values of the compiled kernel:
    after the first call for a vocabulary and dtypes, calls that change only those compile
    nothing new (a server would otherwise stall a step on the compiler), and stay exact."""
    from specsample.backends import _triton_serving

    V = 1000
    backend = specsample.get_backend("triton")
    ids, kwargs = mixed_serving_batch(1, 1, V, seed=3, dtype=torch.bfloat16, device="cuda")
    _exact(ids, kwargs)
    caches = [
        kernel.device_caches[torch.cuda.current_device()][0]
        for kernel in (_triton_serving.serving_kernel, _triton_serving.serving_rows_kernel)
    ]
    variants = [len(cache) for cache in caches]
    assert min(variants) >= 1
    for B, K in [(2, 3), (5, 7), (16, 2), (33, 5), (300, 4)]:
        ids, kwargs = mixed_serving_batch(B, K, V, seed=B * K, dtype=torch.bfloat16, device="cuda")
        _exact(ids, kwargs)
        del kwargs["uniforms"]
        kwargs["seeds"] = torch.arange(B, device="cuda") * 7919 - 3
        kwargs["offsets"] = torch.arange(B, device="cuda") % 5
        _exact(ids, kwargs)
        del kwargs["seeds"], kwargs["offsets"]
        out = backend.verify_serving(
            ids, **kwargs, generator=torch.Generator("cuda").manual_seed(B)
        )
        assert int((out.status != 0).sum()) == 0
    now = [len(cache) for cache in caches]
    assert now == variants, f"compiled variants (walk, rows) went from {variants} to {now}"
