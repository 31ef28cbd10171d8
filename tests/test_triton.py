"""The ``triton`` backend: exactness against the float64 reference (under triton's CPU interpreter,
in a subprocess, so ``TRITON_INTERPRET=1`` is set before triton is imported), availability reasons,
and, where a CUDA device exists, the compiled kernel.

The interpreter tests run directly when this process already is in interpreter mode (``pytest``
started with ``TRITON_INTERPRET=1``), else through one subprocess that runs them that way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import specsample
import torch
from specsample.reference import residual
from triton_interpreter import HAVE_TRITON, in_interpreter, run_interpreter_suite

HAVE_CUDA = torch.cuda.is_available()


def _interp() -> bool:
    return in_interpreter()


INNER = pytest.mark.skipif(
    not _interp(), reason="needs TRITON_INTERPRET=1 (run by test_interpreter_suite)"
)


# ----------------------------------------------------------------------------- checking helpers


def random_case(
    B,
    K,
    V,
    *,
    dtype=torch.float32,
    device="cpu",
    seed=0,
    with_p=True,
    ids_dtype=torch.int64,
    acceptance=None,
    peak=3.0,
):
    """Random inputs; ``acceptance`` None mixes regimes row by row (peaked and flat rows, drafts
    from p, some p == q rows) so that every path is hit."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K + 1, V, generator=g) * peak
    q = torch.softmax(logits, -1)
    noise = torch.rand(B, K, 1, generator=g) * 4 if acceptance is None else acceptance
    p = torch.softmax(logits[:, :K] + noise * torch.randn(B, K, V, generator=g), -1)
    if K > 0 and B > 0:
        ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    else:
        ids = torch.zeros(B, K, dtype=torch.int64)
    q, p = q.to(dtype), p.to(dtype)
    return (ids.to(ids_dtype).to(device), p.to(device) if with_p else None, q.to(device))


def check(backend, ids, p, q, *, mode="random", uniforms=None, validate="status", tol=1e-5):
    """Run ``backend`` and the reference with the same uniforms; decisions must match exactly, the
    final token too unless the reference's float64 threshold lies within ``tol * total`` of a CDF
    boundary (float32 rounding) and the backend's token is still a positive-probability one there.
    Returns the number of such boundary differences."""
    B, K = ids.shape
    if mode == "random" and uniforms is None:
        uniforms = torch.rand(B, K + 1, generator=torch.Generator().manual_seed(B * 7 + K))
        uniforms = uniforms.to(q.device)
    out = backend.verify(ids, p, q, mode=mode, uniforms=uniforms, validate=validate)
    ref = specsample.reference_verify(ids, p, q, mode=mode, uniforms=uniforms, validate=validate)
    assert torch.equal(out.status.cpu(), ref.status.cpu())
    tok, num = out.token_ids.cpu(), out.num_emitted.cpu()
    rtok, rnum = ref.token_ids.cpu(), ref.num_emitted.cpu()
    assert tok.dtype == torch.int64 and num.dtype == torch.int64
    assert tok.shape == (B, K + 1) and num.shape == (B,)
    assert torch.equal(num, rnum), f"num_emitted {num.tolist()} != reference {rnum.tolist()}"
    boundary = 0
    for b in range(B):
        n = int(num[b])
        assert torch.equal(tok[b, : n - 1], rtok[b, : n - 1])
        assert (tok[b, n:] == -1).all()
        if tok[b, n - 1] == rtok[b, n - 1]:
            continue
        assert mode == "random", f"greedy token differs at row {b}: {tok[b]} vs {rtok[b]}"
        k = n - 1
        j = int(tok[b, k])
        V = q.shape[-1]
        assert 0 <= j < V
        qc = q.cpu()
        if k < K:
            pr = None if p is None else p.cpu()[b, k]
            r = residual(pr, qc[b, k], int(ids[b, k]))
        else:
            r = qc[b, K].to(torch.float64)
        assert r[j] > 0, f"row {b}: picked a zero-probability token {j}"
        cdf = torch.cumsum(r, 0)
        total = float(cdf[-1])
        thr = float(uniforms[b, K]) * total
        lo = float(cdf[j - 1]) if j > 0 else 0.0
        hi = float(cdf[j])
        assert lo - tol * total <= thr < hi + tol * total, (
            f"row {b}: token {j} covers [{lo}, {hi}) but the threshold is {thr} (total {total});"
            f" reference picked {int(rtok[b, k])}"
        )
        boundary += 1
    return boundary


# ----------------------------------------------------------------------------- availability


def _run_py(code: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    e.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300
    )


def test_import_and_list_do_not_import_triton():
    r = _run_py(
        "import sys, specsample\n"
        "infos = {i.name: i for i in specsample.list_backends()}\n"
        "assert 'triton' in infos\n"
        "print('TRITON_IMPORTED' if 'triton' in sys.modules else 'CLEAN')\n"
    )
    assert r.returncode == 0, r.stderr
    assert "CLEAN" in r.stdout


def test_unavailable_without_triton(monkeypatch):
    from specsample.backends import triton_backend as tb

    real = importlib.util.find_spec
    monkeypatch.setattr(
        tb.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "triton" else real(name, *a),
    )
    ok, reason = tb.TritonBackend.is_available()
    assert not ok
    assert reason == "triton not installed (pip install specsample[triton])"


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
@pytest.mark.skipif(HAVE_CUDA, reason="has a CUDA device")
def test_reason_without_cuda_names_the_interpreter():
    code = (
        "import json, specsample\n"
        "i = [x for x in specsample.list_backends() if x.name == 'triton'][0]\n"
        "print(json.dumps(i.to_dict()))\n"
    )
    info = json.loads(_run_py(code).stdout.strip().splitlines()[-1])
    assert not info["available"]
    assert "TRITON_INTERPRET=1" in info["reason"]
    info = json.loads(_run_py(code, TRITON_INTERPRET="1").stdout.strip().splitlines()[-1])
    assert info["available"], info["reason"]
    assert "cpu" in info["capabilities"]["devices"]
    assert info["capabilities"]["needs_gpu"] is False
    assert info["capabilities"]["fused"] is True
    assert info["capabilities"]["launches_per_call"] == 1


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
@pytest.mark.skipif(_interp(), reason="already in interpreter mode: the tests run directly")
def test_interpreter_suite():
    """The interpreter tests of this file, in a subprocess with TRITON_INTERPRET=1."""
    run_interpreter_suite(__file__, "interp_ and not interpreter_suite", timeout=1800)


# ----------------------------------------------------------------------------- interpreter (CPU)


def _backend():
    return specsample.get_backend("triton")


@pytest.fixture
def forced():
    """Force a launch configuration for one test (the split and single-program paths)."""
    from specsample.backends import triton_backend as tb

    yield lambda block, warps, chunks, prefetch=False: tb.force_config(
        tb.LaunchConfig(block, warps, chunks, prefetch)
    )
    tb.force_config(None)


SHAPES = [  # B, K, V
    (4, 3, 37),
    (5, 4, 1000),
    (6, 0, 300),
    (2, 16, 257),
    (3, 32, 64),
    (2, 1, 1),
    (3, 2, 2),
    (1, 8, 4099),
    (9, 5, 3001),
]


@INNER
@pytest.mark.parametrize("B, K, V", SHAPES)
@pytest.mark.parametrize("with_p", [True, False], ids=["p", "p=None"])
def test_interp_exact(B, K, V, with_p):
    be = _backend()
    for seed in range(3):
        ids, p, q = random_case(
            B, K, V, seed=seed, with_p=with_p, ids_dtype=torch.int32 if seed == 1 else torch.int64
        )
        check(be, ids, p, q)
        check(be, ids, p, q, mode="greedy")


@INNER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interp_half_precision(dtype):
    be = _backend()
    for seed in range(3):
        ids, p, q = random_case(4, 4, 1500, dtype=dtype, seed=seed)
        check(be, ids, p, q)
        check(be, ids, None, q)
        check(be, ids, p, q, mode="greedy")


@INNER
@pytest.mark.parametrize(
    "block, chunks, prefetch",
    [
        (64, 1, False),
        (64, 7, False),
        (32, 64, False),
        (256, 3, False),
        (64, 1, True),
        (32, 9, True),
    ],
)
def test_interp_split_and_single_program(forced, block, chunks, prefetch):
    forced(block, 4, chunks, prefetch)
    be = _backend()
    for seed in range(3):
        ids, p, q = random_case(5, 4, 2000, seed=seed)
        check(be, ids, p, q)
        check(be, ids, None, q)
        check(be, ids, p, q, mode="greedy")


@INNER
def test_interp_long_rows_are_split(forced):
    """More tiles than one program may keep (256): the row is spread over several programs even
    when one was asked for."""
    from specsample.backends import triton_backend as tb

    forced(32, 4, 1)
    plan = tb._plan(tb.LaunchConfig(32, 4, 1), 2, 2, 20000, False)
    assert plan.chunks == 3 and plan.tiles_per_chunk <= plan.nt_p2 == 256
    ids, p, q = random_case(2, 2, 20000, seed=8)
    check(_backend(), ids, p, q)
    check(_backend(), ids, p, q, mode="greedy")


@INNER
@pytest.mark.parametrize("chunks", [1, 9])
def test_interp_greedy_ties_smallest_index(forced, chunks):
    forced(16, 4, chunks)
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 3, (8, 5, 100), generator=g).float()
    q /= q.sum(-1, keepdim=True)
    ids = q[:, :4].argmax(-1)
    ids[::2, 2] = 99
    assert check(_backend(), ids, None, q, mode="greedy") == 0


@INNER
@pytest.mark.parametrize("chunks", [1, 5])
def test_interp_zero_residual_falls_back_to_q(forced, chunks):
    forced(32, 4, chunks)
    g = torch.Generator().manual_seed(1)
    B, K, V = 4, 3, 200
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1)
    p = q[:, :K].clone()
    ids = torch.randint(0, V, (B, K), generator=g)
    for b in range(B):  # p == q, and q(x) = p(x) = 0 at draft 1: rejected with an all-zero residual
        q[b, 1, ids[b, 1]] = 0
        p[b, 1, ids[b, 1]] = 0
    u = torch.rand(B, K + 1, generator=g)
    u[:, 0] = 0.0
    out = _backend().verify(ids, p, q, uniforms=u)
    assert (out.num_emitted == 2).all()
    check(_backend(), ids, p, q, uniforms=u)


@INNER
def test_interp_out_of_range_ids_are_flagged():
    """Out-of-range ids are never read: their requests are flagged BAD_DRAFT_ID (all -1, 0
    emitted) and the clean request matches the reference."""
    ids, p, q = random_case(4, 4, 500, seed=3)
    ids[0, 0] = 500
    ids[1, 2] = -3
    ids[2, 1] = 10**6
    u = torch.rand(4, 5, generator=torch.Generator().manual_seed(4))
    for pp, mode in ((p, "random"), (None, "random"), (p, "greedy")):
        kw = {"uniforms": u} if mode == "random" else {}
        out = _backend().verify(ids, pp, q, mode=mode, **kw)
        ref = specsample.reference_verify(ids, pp, q, mode=mode, **kw)
        assert out.status.tolist() == [1, 1, 1, 0] == ref.status.tolist()
        assert (out.token_ids[:3] == -1).all() and out.num_emitted[:3].tolist() == [0, 0, 0]
        assert torch.equal(out.token_ids[3], ref.token_ids[3])


@INNER
def test_interp_bfloat16_subnormals():
    """bfloat16 subnormal probabilities are widened exactly (the interpreter's own bf16 cast
    garbles them): tokens equal the reference's in both modes."""
    g = torch.Generator().manual_seed(11)
    B, K, V = 3, 2, 64
    q = torch.rand(B, K + 1, V, generator=g) * 1e-38  # below bfloat16's smallest normal
    q[:, :, ::3] = (
        torch.rand(B, K + 1, V // 3 + 1, generator=g)[:, :, : q[:, :, ::3].shape[2]] * 3e-39
    )
    p = torch.rand(B, K, V, generator=g) * 1e-39
    ids = torch.randint(0, V, (B, K), generator=g)
    u = torch.rand(B, K + 1, generator=g)
    args = (ids, p.bfloat16(), q.bfloat16())
    for mode, kw in (("random", {"uniforms": u}), ("greedy", {})):
        out = _backend().verify(*args, mode=mode, **kw)
        ref = specsample.reference_verify(*args, mode=mode, **kw)
        assert torch.equal(out.token_ids, ref.token_ids), mode
        assert out.status.tolist() == [0, 0, 0]


@INNER
def test_interp_large_vocab():
    """One V = 262144 call of each kind (the fast conformance level's large-vocabulary case)."""
    ids, p, q = random_case(2, 2, 262144, seed=5)
    be = _backend()
    check(be, ids, p, q)
    check(be, ids, None, q)
    check(be, ids, p, q, mode="greedy")


@INNER
def test_interp_generator_reproducible():
    ids, p, q = random_case(16, 4, 100, seed=6)
    be = _backend()
    g = torch.Generator().manual_seed(1)
    a = be.verify(ids, p, q, generator=g)
    b = be.verify(ids, p, q, generator=g)
    g.manual_seed(1)
    c = be.verify(ids, p, q, generator=g)
    assert torch.equal(a.token_ids, c.token_ids) and torch.equal(a.num_emitted, c.num_emitted)
    assert not torch.equal(a.token_ids, b.token_ids)


@INNER
def test_interp_acceptance_rate_without_uniforms():
    """In-kernel randomness: draft 0 is accepted with probability sum(min(p, q))."""
    V, N = 12, 2000
    g = torch.Generator().manual_seed(2)
    q1 = torch.softmax(torch.randn(V, generator=g), 0)
    p1 = torch.softmax(torch.randn(V, generator=g), 0)
    ids = torch.multinomial(p1, N, replacement=True, generator=g).view(N, 1)
    out = _backend().verify(
        ids,
        p1.expand(N, 1, V).contiguous(),
        q1.expand(N, 2, V).contiguous(),
        generator=torch.Generator().manual_seed(3),
    )
    acc = float((out.num_emitted > 1).double().mean())
    want = float(torch.minimum(p1, q1).sum())
    assert abs(acc - want) < 5 * (want * (1 - want) / N) ** 0.5


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu(needs=("triton",))
@pytest.mark.parametrize("B, K, V", [(1, 8, 128256), (64, 4, 32000), (7, 1, 32003), (3, 0, 5000)])
def test_gpu_exact(B, K, V):
    be = _backend()
    for dtype in (torch.float32, torch.bfloat16):
        ids, p, q = random_case(B, K, V, dtype=dtype, device="cuda", seed=B + K)
        check(be, ids, p, q)
        check(be, ids, None, q)
        check(be, ids, p, q, mode="greedy")


@pytest.mark.gpu(needs=("triton",))
def test_gpu_one_launch_per_call():
    from torch.profiler import ProfilerActivity, profile

    be = _backend()
    ids, p, q = random_case(8, 4, 32000, device="cuda")
    for _ in range(2):
        be.verify(ids, p, q)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            be.verify(ids, p, q)
        torch.cuda.synchronize()
    ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(ops) == 5, sorted({e.name for e in ops})


@pytest.mark.gpu(needs=("triton",))
def test_gpu_graph_replay_draws_fresh_numbers():
    be = _backend()
    ids, p, q = random_case(64, 8, 32000, device="cuda", acceptance=4.0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        be.verify(ids, p, q)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = be.verify(ids, p, q)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.token_ids.clone())
    torch.cuda.synchronize()
    assert len({tuple(d.flatten().tolist()) for d in draws}) == 3
