"""The ``triton`` backend under ``rule="block"``: the block kernel against the float64 reference.

Runs under triton's CPU interpreter, in a subprocess with ``TRITON_INTERPRET=1`` (set before triton
is imported), or directly when this process already is in interpreter mode; a compiled-kernel test
runs where a CUDA device exists. Shapes are small: the interpreter is slow.
"""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample.conformance.block_common import compare_block_to_reference
from specsample.reference_block import reference_verify_block
from triton_interpreter import HAVE_TRITON, in_interpreter, run_interpreter_suite


def _interp() -> bool:
    return in_interpreter()


INNER = pytest.mark.skipif(
    not _interp(), reason="needs TRITON_INTERPRET=1 (run by test_block_interpreter_suite)"
)


def _case(B, K, V, *, seed, with_p=True, dtype=torch.float32, device="cpu"):
    """Random rows (peaked and flat mixed), drafts drawn from p, float32 coins."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K + 1, V, generator=g) * 3
    q = torch.softmax(logits, -1)
    noise = torch.rand(B, K, 1, generator=g) * 4
    p = torch.softmax(logits[:, :K] + noise * torch.randn(B, K, V, generator=g), -1)
    ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    u = torch.rand(B, K + 1, generator=g)
    p = p.to(dtype).to(device) if with_p else None
    return ids.to(device), p, q.to(dtype).to(device), u.to(device)


def _exact(ids, p, q, u, *, clean=True):
    """The kernel's decisions, status and last tokens equal the float64 reference's (no near-tie
    difference is used on these inputs). ``clean``: no request is flagged, and the conformance
    comparison (structure, then decisions and tokens with their tolerances) runs too."""
    out = specsample.get_backend("triton").verify(ids, p, q, uniforms=u, rule="block")
    ref = reference_verify_block(ids, p, q, uniforms=u)
    assert torch.equal(out.status.cpu(), ref.status.cpu()), (out.status, ref.status)
    if clean:
        assert compare_block_to_reference(None, ids, p, q, u, label="triton", out=out) == 0
    assert torch.equal(out.token_ids.cpu(), ref.token_ids.cpu())
    assert torch.equal(out.num_emitted.cpu(), ref.num_emitted.cpu())
    return out


# ----------------------------------------------------------------------------- subprocess driver


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
def test_block_interpreter_suite():
    """The interpreter tests of this file, in a subprocess with TRITON_INTERPRET=1."""
    if _interp():
        pytest.skip("already in interpreter mode: the tests run directly")
    run_interpreter_suite(__file__, timeout=900)


# ----------------------------------------------------------------------------- interpreter (CPU)


@INNER
@pytest.mark.parametrize(
    "B, K, V",
    [(6, 3, 37), (5, 4, 300), (3, 1, 16), (4, 2, 2), (2, 6, 129), (2, 3, 20000)],
)
@pytest.mark.parametrize("with_p", [True, False], ids=["p", "p=None"])
def test_interp_block_exact(B, K, V, with_p):
    """Random shapes (20000: several tiles per row) against the reference, token for token."""
    for seed in range(2):
        _exact(*_case(B, K, V, seed=seed, with_p=with_p))


@INNER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interp_block_half_precision(dtype):
    ids, p, q, u = _case(5, 3, 200, seed=3, dtype=dtype)
    _exact(ids, p, q, u)
    _exact(ids, None, q, u)


@INNER
def test_interp_block_many_requests_per_program():
    """A batch larger than one program's ROWS (several programs, a ragged last one), int32 ids."""
    from specsample.backends import _triton_block as blk

    B, V = 3000, 8
    plan = blk.block_split_config(B, 3, V, 4, True)
    assert plan.rows > 1 and plan.groups(B) > 1
    ids, p, q, u = _case(B, 3, V, seed=5)
    _exact(ids.to(torch.int32), p, q, u)


@INNER
@pytest.mark.parametrize(
    "B, K, V, block, tpc, group",
    [
        (1, 8, 300, 16, 1, 1),
        (3, 3, 301, 16, 3, 2),
        (5, 5, 1000, 32, 4, 4),
        (2, 1, 77, 16, 2, 1),
        (9, 2, 50, 16, 1, 1),
        (2, 4, 700, 16, 7, 2),
    ],
)
def test_interp_block_many_chunks(monkeypatch, B, K, V, block, tpc, group):
    """The combine across chunk programs (the GPU's layout): many chunks of a few small tiles, a
    ragged last chunk and tile, the final row's chunk read again ``group`` tiles at a time, several
    requests per program, against the reference; every counter is back to zero after the call."""
    import dataclasses

    from specsample.backends import _triton_block as blk
    from specsample.backends import triton_backend as tb

    tiles = -(-V // block)
    base = blk.block_split_config(B, K, V, 4, True)
    plan = dataclasses.replace(
        base,
        block=block,
        rows=2,
        chunks=-(-tiles // tpc),
        tiles_per_chunk=tpc,
        tile_group=group,
        c_p2=1 << (-(-tiles // tpc) - 1).bit_length(),
    )
    assert plan.chunks > 1
    monkeypatch.setattr(blk, "block_split_config", lambda *a: plan)
    monkeypatch.setattr(tb._state, "plans", {})
    for seed in range(3):
        for with_p in (True, False):
            _exact(*_case(B, K, V, seed=seed, with_p=with_p))
    for ws in tb._state.workspaces.values():
        assert int(ws.counters.abs().sum()) == 0


@INNER
def test_interp_block_coins_are_the_token_rules():
    """Generator-drawn coins use the token kernel's counters (coin k at position k, the final coin
    at K): with K = 1 both rules coincide, so the same generator seed gives the same tokens."""
    be = specsample.get_backend("triton")
    ids, p, q, _ = _case(64, 1, 50, seed=7)
    outs = [
        be.verify(ids, p, q, generator=torch.Generator().manual_seed(11), rule=rule)
        for rule in ("token", "block", "block")
    ]
    assert torch.equal(outs[0].token_ids, outs[1].token_ids)
    assert torch.equal(outs[1].token_ids, outs[2].token_ids)
    assert 0 < int((outs[0].num_emitted == 2).sum()) < 64  # both outcomes occur


@INNER
def test_interp_block_greedy_is_token_greedy():
    be = specsample.get_backend("triton")
    ids, p, q, _ = _case(6, 4, 100, seed=9)
    ids[::2] = q[::2, :4].argmax(-1)
    a = be.verify(ids, p, q, mode="greedy", rule="block")
    b = be.verify(ids, p, q, mode="greedy")
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.status, b.status)


@INNER
def test_interp_block_zero_residual_falls_back_to_q():
    """p == q and q(x) = p(x) = 0 at draft 0: w_1 = 0, every coin fails, and the residual at row
    0 is all zero, so the last token is drawn from q_0."""
    g = torch.Generator().manual_seed(1)
    B, K, V = 4, 3, 200
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1)
    ids = torch.randint(0, V, (B, K), generator=g)
    q[torch.arange(B), 0, ids[:, 0]] = 0
    p = q[:, :K].clone()
    u = torch.rand(B, K + 1, generator=g)
    out = _exact(ids, p, q, u)
    assert (out.num_emitted == 1).all() and (out.status == 0).all()


@INNER
def test_interp_block_status():
    """Bad values in the rows block verification reads flag their request (docs/rules.md,
    "Status"), exactly as the reference does; clean requests in the batch are unaffected."""
    ids, p, q, u = _case(8, 3, 40, seed=2)
    u[6, :3] = 0.0  # request 6 accepts every draft: its bonus row is read
    u[7, :3] = 0.999  # request 7 rejects: its bonus row is never read
    ids[0, 1] = 40  # BAD_DRAFT_ID
    q[1, 2, (ids[1, 2] + 1) % 40] = float("nan")  # a non-drafted entry of row 2: BAD_TARGET
    p[2, 0, (ids[2, 0] + 1) % 40] = -0.5  # BAD_DRAFT
    q[3, 1, 5] = float("inf")
    p[3, 2, 7] = float("nan")  # both bits
    u[4, 3] = 1.0  # BAD_UNIFORM
    q[5, 0, 3] = 0.0  # -0.0 and zeros are fine
    q[5, 0, 4] = -0.0
    q[6, 3, 0] = float("nan")  # bonus row of an accepting request
    q[7, 3, 0] = float("nan")  # bonus row of a rejecting request: not read
    out = _exact(ids, p, q, u, clean=False)
    st = out.status.tolist()
    assert st[0] == specsample.Status.BAD_DRAFT_ID
    assert st[1] == st[6] == specsample.Status.BAD_TARGET_VALUE
    assert st[2] == specsample.Status.BAD_DRAFT_VALUE
    assert st[3] == specsample.Status.BAD_TARGET_VALUE | specsample.Status.BAD_DRAFT_VALUE
    assert st[4] == specsample.Status.BAD_UNIFORM
    assert st[5] == 0 and st[7] == 0


# ----------------------------------------------------------------------------- compiled (CUDA)


@pytest.mark.gpu(needs=("triton",))
@pytest.mark.skipif(_interp(), reason="the compiled kernel (not under the interpreter)")
@pytest.mark.parametrize("B, K, V", [(1, 8, 128256), (64, 4, 32000), (300, 3, 50)])
def test_compiled_block_exact(B, K, V):
    ids, p, q, u = _case(B, K, V, seed=B + K, device="cuda")
    _exact(ids, p, q, u)
    _exact(ids, None, q, u)


@pytest.mark.gpu(needs=("triton",))
@pytest.mark.skipif(_interp(), reason="the compiled kernel (not under the interpreter)")
def test_compiled_block_one_launch_and_graph_replay():
    """One kernel launch per call; under CUDA graph capture each replay draws fresh coins; with
    K = 1 a CUDA generator's coins give the token rule's tokens."""
    from torch.profiler import ProfilerActivity, profile

    be = specsample.get_backend("triton")
    ids, p, q, _ = _case(64, 8, 32000, seed=1, device="cuda")
    for _ in range(2):
        be.verify(ids, p, q, rule="block")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            be.verify(ids, p, q, rule="block")
        torch.cuda.synchronize()
    ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(ops) == 5, sorted({e.name for e in ops})

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        be.verify(ids, p, q, rule="block")
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = be.verify(ids, p, q, rule="block")
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.token_ids.clone())
    torch.cuda.synchronize()
    assert len({tuple(d.flatten().tolist()) for d in draws}) == 3

    ids1, p1, q1, _ = _case(256, 1, 1000, seed=2, device="cuda")
    a, b = (
        be.verify(ids1, p1, q1, generator=torch.Generator("cuda").manual_seed(5), rule=rule)
        for rule in ("token", "block")
    )
    assert torch.equal(a.token_ids, b.token_ids)
