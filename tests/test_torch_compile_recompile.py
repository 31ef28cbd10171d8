"""torch-compile in a long-running process: any number of distinct calls keeps working.

Every combination of dtype, mode, draft_probs given/None, uniforms given/drawn, id dtype, size-1
and size-0 dimensions and non-contiguous inputs, in one process, token for token against the
float64 reference. The compiled path must serve all of them (no eager fallback), in a bounded
number of graphs.

torch.compile on a CPU is slow (seconds per graph), so the default run covers float32 (every other
axis in full); ``SPECSAMPLE_TEST_COMPILE_ALL_DTYPES=1`` adds float16 and bfloat16 (3x the graphs).
"""

from __future__ import annotations

import itertools
import os
import warnings

import pytest
import specsample
import torch
from specsample.backends import torch_compile

DTYPES = (
    (torch.float32, torch.float16, torch.bfloat16)
    if os.environ.get("SPECSAMPLE_TEST_COMPILE_ALL_DTYPES") == "1"
    else (torch.float32,)
)


def _case(i: int, dtype, with_draft: bool, B: int, K: int, V: int, strided: bool):
    """Random valid inputs; ``strided`` gives non-contiguous views (the validator copies them)."""
    g = torch.Generator().manual_seed(i)
    q = torch.rand((B, K + 1, V), generator=g) + 0.01
    p = torch.rand((B, K, V), generator=g) + 0.01 if with_draft else None
    ids = torch.randint(0, V, (B, K), generator=g)
    if i % 5 == 0:  # sometimes draft the target's argmax, so greedy accepts
        ids = q[:, :K].argmax(-1)
    if strided:
        q = q.transpose(0, 1).contiguous().transpose(0, 1)
        p = None if p is None else torch.cat([p, p], dim=-1)[..., :V]
        ids = torch.cat([ids, ids], dim=0)[::2]
    if i % 2:
        ids = ids.to(torch.int32)
    q = q.to(dtype)
    p = None if p is None else p.to(dtype)
    return ids, p, q


def _generator(n: int, uniforms_given: bool) -> torch.Generator | None:
    return None if uniforms_given else torch.Generator().manual_seed(1000 + n)


def _combinations():
    sizes = itertools.product((1, 2, 3), (0, 1, 2, 4), (1, 2, 5))
    for n, (dtype, with_draft, mode, (B, K, V)) in enumerate(
        itertools.product(DTYPES, (True, False), ("random", "greedy"), sizes)
    ):
        yield n, dtype, with_draft, mode, B, K, V


@pytest.mark.slow
def test_every_combination_in_one_process_matches_the_reference():
    # Before the variants were bounded this loop hit dynamo's recompile limit part way (every later
    # new combination raised FailOnRecompileLimitHit).
    backend = torch_compile.TorchCompileBackend()  # its own fallback record
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    calls = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n, dtype, with_draft, mode, B, K, V in _combinations():
            ids, p, q = _case(n, dtype, with_draft, B, K, V, strided=n % 3 == 0)
            given = n % 4 != 1  # uniforms given, or drawn from identically seeded generators
            u = (
                torch.rand((B, K + 1), generator=torch.Generator().manual_seed(n))
                if given
                else None
            )
            kwargs = {"mode": mode, "uniforms": u}
            out = backend.verify(ids, p, q, generator=_generator(n, given), **kwargs)
            ref = specsample.reference_verify(ids, p, q, generator=_generator(n, given), **kwargs)
            calls += 1
            where = f"call {calls}: {dtype}, {mode}, draft_probs {'given' if with_draft else 'None'}, B={B}, K={K}, V={V}"
            assert torch.equal(out.token_ids, ref.token_ids), where
            assert torch.equal(out.num_emitted, ref.num_emitted), where
            assert int(out.status.abs().sum()) == 0, where
    fallbacks = [w for w in caught if "torch-compile" in str(w.message)]
    assert not fallbacks, f"the compiled path fell back to eager: {fallbacks[0].message}"
    assert not backend._eager_variants
    assert calls == len(DTYPES) * 2 * 2 * 36
    # Per dtype 3 variants (greedy, random with / without p), each one graph per pattern of size-1
    # dimensions (B, K, V: at most 8), and assemble's few: bounded, whatever the sizes.
    assert counters["stats"]["unique_graphs"] - graphs_before <= len(DTYPES) * 3 * 8 + 4


def test_a_refused_variant_runs_eagerly_with_one_warning(monkeypatch):
    backend = torch_compile.TorchCompileBackend()
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(1)
        raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile limit hit")

    monkeypatch.setattr(torch_compile, "_compiled_verify", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(6):
            ids, p, q = _case(n, torch.float32, True, 2, 3, 7, strided=False)
            u = torch.rand((2, 4), generator=torch.Generator().manual_seed(n))
            out = backend.verify(ids, p, q, uniforms=u)
            ref = specsample.reference_verify(ids, p, q, uniforms=u)
            assert torch.equal(out.token_ids, ref.token_ids)
    messages = [str(w.message) for w in caught if "torch-compile" in str(w.message)]
    assert len(messages) == 1, messages
    assert "FailOnRecompileLimitHit" in messages[0] and "eagerly" in messages[0]
    assert len(attempts) == 1  # the refused variant is not compiled again
