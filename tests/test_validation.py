"""Every bad input of the contract (docs/contract.md) raises an error that names the argument."""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample.validation import validate_inputs


def good(B=4, K=3, V=11, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (B, K), generator=g)
    p = torch.softmax(torch.randn(B, K, V, generator=g), -1).to(dtype)
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1).to(dtype)
    return ids, p, q


def call(ids, p, q, **kw):
    return specsample.get_backend("torch-vectorized").verify(ids, p, q, **kw)


@pytest.mark.parametrize(
    "mutate, exc, message",
    [
        (lambda i, p, q: (i.tolist(), p, q), TypeError, "draft_token_ids must be a torch.Tensor"),
        (lambda i, p, q: (i.float(), p, q), TypeError, "draft_token_ids must be int32 or int64"),
        (lambda i, p, q: (i[0], p, q), ValueError, "draft_token_ids must be 2-D"),
        (lambda i, p, q: (i, p, q.double()), TypeError, "target_probs must be float32"),
        (lambda i, p, q: (i, p, q[0]), ValueError, "target_probs must be 3-D"),
        (lambda i, p, q: (i, p, q[:, :3]), ValueError, "expected K+1=4"),
        (lambda i, p, q: (i, p, q[:2]), ValueError, "B=4 rows"),
        (lambda i, p, q: (i, p[:, :2], q), ValueError, "draft_probs has shape (4, 2, 11)"),
        (lambda i, p, q: (i, p.half(), q), TypeError, "draft_probs has dtype torch.float16"),
        (lambda i, p, q: (i, p, q[..., :0]), ValueError, "V >= 1"),
    ],
)
def test_bad_input_is_named(mutate, exc, message):
    ids, p, q = mutate(*good())
    with pytest.raises(exc) as info:
        call(ids, p, q)
    assert message in str(info.value)


BAD_VALUES = [
    (lambda i, p, q: (i, p[..., :5], q[..., :5]), "draft_token_ids holds an id outside [0, V=5)"),
    (lambda i, p, q: (i - 20, p, q), "draft_token_ids holds an id outside [0, V=11) in request 0"),
    (
        lambda i, p, q: (i, p, torch.where(q > 0.2, float("nan"), q)),
        "target_probs holds a NaN, infinite or negative value",
    ),
    (lambda i, p, q: (i, p, -q), "target_probs holds a NaN, infinite or negative value"),
    (lambda i, p, q: (i, p * float("inf"), q), "draft_probs holds a NaN, infinite or negative"),
    (lambda i, p, q: (i, -p, q), "draft_probs holds a NaN, infinite or negative value"),
]


@pytest.mark.parametrize("mutate, message", BAD_VALUES)
def test_bad_values_raise_with_validate_full(mutate, message):
    ids, p, q = mutate(*good())
    with pytest.raises(ValueError) as info:
        call(ids, p, q, validate="full")
    assert message in str(info.value)


@pytest.mark.parametrize("mutate, message", BAD_VALUES)
def test_bad_values_are_flagged_by_default(mutate, message):
    """The default call never raises on values: it flags the requests the reference flags."""
    ids, p, q = mutate(*good())
    u = torch.rand(ids.shape[0], ids.shape[1] + 1, generator=torch.Generator().manual_seed(1))
    out = call(ids, p, q, uniforms=u)
    ref = specsample.reference_verify(ids, p, q, uniforms=u)
    assert torch.equal(out.status, ref.status)
    assert bool((ref.status != 0).any())
    with pytest.raises(ValueError, match=r"request \d+: "):
        out.raise_for_status()


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"mode": "sample"}, ValueError, "mode must be one of"),
        ({"uniforms": torch.rand(4, 4).double()}, TypeError, "uniforms must be float32"),
        (
            {"uniforms": torch.rand(4, 3)},
            ValueError,
            "uniforms has shape (4, 3); expected [B, K+1]=(4, 4)",
        ),
        (
            {"uniforms": torch.rand(4, 4) + 1, "validate": "full"},
            ValueError,
            "uniforms holds a value outside [0, 1) in request 0",
        ),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
    ],
)
def test_bad_keyword_is_named(kwargs, exc, message):
    with pytest.raises(exc) as info:
        call(*good(), **kwargs)
    assert message in str(info.value)


def test_error_message_example_from_the_style_guide():
    ids, p, q = good(B=4, K=3, V=11)
    q5 = torch.cat([q, q[:, :1]], dim=1)
    with pytest.raises(
        ValueError, match=r"draft_token_ids has shape \(4, 3\) but target_probs has 5 rows"
    ):
        call(ids, p, q5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch():
    ids, p, q = good()
    with pytest.raises(ValueError, match="draft_token_ids is on cpu but target_probs is on cuda"):
        call(ids, p.cuda(), q.cuda())


def test_generator_device_mismatch_is_named():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to build a generator on another device")
    ids, p, q = good()
    with pytest.raises(ValueError, match="generator is on cuda"):
        call(ids, p, q, generator=torch.Generator(device="cuda"))


def test_capabilities_are_enforced():
    from specsample.contract import Capabilities

    caps = Capabilities(
        modes=("greedy",), dtypes=("float32",), devices=("cpu",), max_vocab=8, max_k=2
    )
    ids, p, q = good()
    with pytest.raises(ValueError, match="does not support mode='random'"):
        validate_inputs(ids, p, q, capabilities=caps, backend_name="x")
    with pytest.raises(TypeError, match="does not support bfloat16"):
        validate_inputs(ids, p.bfloat16(), q.bfloat16(), mode="greedy", capabilities=caps)
    with pytest.raises(ValueError, match="supports V <= 8"):
        validate_inputs(ids, p, q, mode="greedy", capabilities=caps)


def test_check_finite_is_a_deprecated_alias():
    ids, p, q = good()
    bad_q = torch.where(q > 0.2, float("nan"), q)
    with pytest.warns(DeprecationWarning, match="check_finite= is deprecated"):
        with pytest.raises(ValueError, match="target_probs holds a NaN"):
            call(ids, p, bad_q, check_finite=True)
    with pytest.warns(DeprecationWarning):
        out = call(ids, p, bad_q, check_finite=False, mode="greedy")
    assert out.status.shape == (4,) and bool((out.status != 0).any())
    with pytest.warns(DeprecationWarning):
        specsample.verify(ids, p, q, check_finite=False)


def test_validate_level_is_checked():
    ids, p, q = good()
    with pytest.raises(ValueError, match="validate must be one of"):
        call(ids, p, q, validate="none")


def test_sparse_meta_and_grad_inputs():
    ids, p, q = good()
    with pytest.raises(TypeError, match="target_probs must be a dense"):
        call(ids, p, q.to_sparse())
    with pytest.raises(ValueError, match="draft_probs is a meta tensor"):
        call(ids, p.to("meta"), q)
    out = call(ids, p.requires_grad_(), q.requires_grad_())
    assert out.status.tolist() == [0, 0, 0, 0]


def test_empty_batch_and_zero_drafts():
    ids, p, q = good(B=0)
    out = call(ids, p, q)
    assert out.token_ids.shape == (0, 4) and out.num_emitted.shape == (0,)
    ids, p, q = good(B=3, K=0)
    out = call(ids, p, q)
    assert out.token_ids.shape == (3, 1) and out.num_emitted.tolist() == [1, 1, 1]


def test_the_numpy_plugin_reads_inputs_that_require_grad():
    """The example plugin detaches its inputs (NumPy refuses tensors that require grad)."""
    names = {i.name for i in specsample.list_backends() if i.available}
    if "numpy" not in names:
        pytest.skip("the example plugin specsample-numpy is not installed")
    ids, p, q = good()
    u = torch.rand(4, 4, generator=torch.Generator().manual_seed(3))
    out = specsample.get_backend("numpy").verify(
        ids, p.requires_grad_(), q.requires_grad_(), uniforms=u
    )
    ref = specsample.reference_verify(ids, p.detach(), q.detach(), uniforms=u)
    assert torch.equal(out.token_ids, ref.token_ids)
