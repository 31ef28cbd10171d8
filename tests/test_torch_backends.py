"""The three PyTorch backends against the float64 reference, token for token and in distribution."""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample.rng import draw_uniforms
from specsample.workloads import make_workload

TORCH_BACKENDS = ["torch-loop", "torch-vectorized", "torch-compile"]
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def random_cases(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        B = int(torch.randint(1, 7, (), generator=g))
        K = int(torch.randint(1, 17, (), generator=g))
        V = int(torch.randint(2, 400, (), generator=g)) | 1  # odd, never a power of two
        yield i, B, K, V


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", TORCH_BACKENDS)
def test_matches_reference_token_for_token(name, device):
    backend = specsample.get_backend(name)
    for i, B, K, V in random_cases(12, seed=hash(name) % 1000):
        w = make_workload(
            B,
            K,
            V,
            acceptance=["high", "low", 1.5][i % 3],
            with_draft_probs=i % 3 != 1,
            seed=i,
            device=device,
        )
        u = draw_uniforms(B, K, torch.Generator(device=device).manual_seed(i), device)
        for mode in ("random", "greedy"):
            ref = specsample.reference_verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, uniforms=u
            )
            out = backend.verify(
                w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode, uniforms=u
            )
            assert out.token_ids.device == w.target_probs.device
            assert torch.equal(out.num_emitted.cpu(), ref.num_emitted.cpu()), (name, mode, B, K, V)
            assert torch.equal(out.token_ids.cpu(), ref.token_ids.cpu()), (name, mode, B, K, V)


@pytest.mark.parametrize("name", TORCH_BACKENDS)
def test_greedy_ties_take_the_smallest_index(name):
    V = 6
    q = torch.tensor([[[0.1, 0.3, 0.3, 0.1, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5, 0.0, 0.0]]])
    ids = torch.tensor([[2]])  # ties with token 1, which is smaller: rejected
    out = specsample.get_backend(name).verify(ids, None, q, mode="greedy")
    assert out.token_ids.tolist() == [[1, -1]]
    ids = torch.tensor([[1]])
    out = specsample.get_backend(name).verify(ids, None, q.clone(), mode="greedy")
    assert out.token_ids.tolist() == [[1, 2]]
    assert V == q.shape[-1]


@pytest.mark.parametrize("name", TORCH_BACKENDS)
def test_inputs_are_not_modified_and_generator_reproduces(name):
    w = make_workload(5, 4, 97, acceptance="low", seed=3)
    before = [t.clone() for t in (w.draft_token_ids, w.draft_probs, w.target_probs)]
    backend = specsample.get_backend(name)
    a = backend.verify(
        w.draft_token_ids, w.draft_probs, w.target_probs, generator=torch.Generator().manual_seed(7)
    )
    b = backend.verify(
        w.draft_token_ids, w.draft_probs, w.target_probs, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(a.token_ids, b.token_ids)
    for t, t0 in zip((w.draft_token_ids, w.draft_probs, w.target_probs), before, strict=True):
        assert torch.equal(t, t0)


def test_loop_and_vectorized_consume_the_generator_alike():
    w = make_workload(16, 6, 50, acceptance="medium", seed=1)
    outs = [
        specsample.get_backend(n).verify(
            w.draft_token_ids,
            w.draft_probs,
            w.target_probs,
            generator=torch.Generator().manual_seed(11),
        )
        for n in TORCH_BACKENDS
    ]
    for o in outs[1:]:
        assert torch.equal(o.token_ids, outs[0].token_ids)


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    from scipy import stats

    expected = probs / probs.sum() * counts.sum()
    keep = expected >= 5
    obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)]).double()
    exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)]).double()
    if exp[-1] < 5:  # fold a small remainder bin into the largest one
        obs, exp = obs[:-1].clone(), exp[:-1].clone()
        obs[exp.argmax()] += counts[~keep].sum()
        exp[exp.argmax()] += expected[~keep].sum()
    return float(stats.chisquare(obs.numpy(), exp.numpy()).pvalue)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["torch-vectorized", "torch-compile"])
def test_losslessness_chi_square(name, device):
    """Drafts drawn from p: the first emitted token is distributed as q[0] (Leviathan et al. Thm 1).

    False-alarm rate 1e-4 per test; with N=40000 samples over V=12 the test detects a total-variation
    shift of about 0.02 with high probability.
    """
    V, K, N = 12, 2, 40_000
    g = torch.Generator().manual_seed(123)
    p_row = torch.softmax(torch.randn(V, generator=g) * 1.5, 0)
    q_row = torch.softmax(torch.randn(V, generator=g) * 1.5, 0)
    draft_probs = p_row.expand(N, K, V).contiguous().to(device)
    target = q_row.expand(N, K + 1, V).contiguous().to(device)
    ids = torch.multinomial(p_row, N * K, replacement=True, generator=g).reshape(N, K).to(device)
    gen = torch.Generator(device=device).manual_seed(321)
    out = specsample.get_backend(name).verify(ids, draft_probs, target, generator=gen)
    counts = torch.bincount(out.token_ids[:, 0].cpu(), minlength=V)
    assert chi_square_pvalue(counts, q_row.double()) > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vectorized_never_syncs_the_host():
    w = make_workload(8, 4, 1000, device="cuda", seed=0)
    backend = specsample.get_backend("torch-vectorized")
    backend.verify(w.draft_token_ids, w.draft_probs, w.target_probs)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for mode in ("random", "greedy"):
            backend.verify(w.draft_token_ids, w.draft_probs, w.target_probs, mode=mode)
    finally:
        torch.cuda.set_sync_debug_mode("default")
