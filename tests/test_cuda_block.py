"""``cuda-cpp`` and ``cupy`` under ``rule="block"``: the block kernel (csrc/kernel_block.cuh)
against the float64 reference, token for token (GPU).

Every test runs on both backends (they launch the same kernel source, compiled by nvcc and by
NVRTC). Shapes cover every cluster size, the 16-byte and the element-by-element load paths, long
rows split over many blocks, all three dtypes and ``draft_probs=None``. The launch-shape rule
itself is checked without a GPU at the end.
"""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample.backends import _cuda_block, _cuda_build
from specsample.conformance.block_common import compare_block_to_reference
from specsample.reference_block import reference_verify_block

BACKENDS = [
    pytest.param("cuda-cpp", marks=pytest.mark.gpu),
    pytest.param("cupy", marks=pytest.mark.gpu(needs=("cupy",))),
]


def _case(B, K, V, *, seed, with_p=True, dtype=torch.float32):
    """Random rows (peaked and flat mixed) on the GPU, drafts drawn from p, float32 coins."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K + 1, V, generator=g) * 3
    q = torch.softmax(logits, -1)
    noise = torch.rand(B, K, 1, generator=g) * 4
    p = torch.softmax(logits[:, :K] + noise * torch.randn(B, K, V, generator=g), -1)
    ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    u = torch.rand(B, K + 1, generator=g)
    p = p.to(dtype).cuda() if with_p else None
    return ids.cuda(), p, q.to(dtype).cuda(), u.cuda()


def _launch(name, ids, p, q, *, uniforms=None, generator=None, cluster=0, threads=0, split=-1):
    """The backend's block path directly (no validation), with an explicit launch shape (the
    cluster kernel's ``cluster``/``threads``, or ``split`` blocks per request)."""
    if name == "cuda-cpp":
        launch = _cuda_block.verify_block_op
    else:
        from specsample.backends import _cupy_block

        launch = _cupy_block.verify_block_torch
    tok, num, st = launch(
        ids,
        p,
        q,
        uniforms=uniforms,
        generator=generator,
        cluster=cluster,
        threads=threads,
        split=split,
    )
    return specsample.VerifyOutput(tok, num, st)


def _exact(out, ids, p, q, u, *, label, clean=True):
    """``out`` equals the float64 reference: status, emitted counts and every token."""
    ref = reference_verify_block(ids, p, q, uniforms=u)
    assert torch.equal(out.status.cpu(), ref.status.cpu()), (label, out.status, ref.status)
    if clean:
        assert int(ref.status.abs().sum()) == 0
        assert compare_block_to_reference(None, ids, p, q, u, label=label, out=out) == 0
    assert torch.equal(out.num_emitted.cpu(), ref.num_emitted.cpu()), label
    assert torch.equal(out.token_ids.cpu(), ref.token_ids.cpu()), label


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "B, K, V",
    [
        (1, 8, 128256),
        (3, 4, 32000),
        (64, 8, 4096),
        (300, 3, 50),
        (5, 2, 2),
        (2, 1, 1000),
        (4, 40, 77),
    ],
)
@pytest.mark.parametrize("with_p", [True, False], ids=["p", "p=None"])
def test_block_exact(name, B, K, V, with_p):
    """Through ``verify(..., rule="block")`` with explicit coins, automatic launch shape."""
    be = specsample.get_backend(name)
    for seed in range(2):
        ids, p, q, u = _case(B, K, V, seed=seed + 10 * B, with_p=with_p)
        out = be.verify(ids, p, q, uniforms=u, rule="block")
        _exact(out, ids, p, q, u, label=f"{name} B={B} K={K} V={V}")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("cluster", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("threads", [64, 256, 512])
def test_block_every_launch_shape(name, cluster, threads):
    """Every cluster size and block size gives the reference's tokens, on a row that does not
    fill whole vectors (V = 32003: the element-by-element path) and one that does."""
    for V, seed in ((32003, 1), (32000, 2)):
        ids, p, q, u = _case(6, 5, V, seed=seed + cluster)
        out = _launch(name, ids, p, q, uniforms=u, cluster=cluster, threads=threads)
        _exact(out, ids, p, q, u, label=f"{name} cl={cluster} t={threads} V={V}")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("split", [2, 7, 40, 300])
@pytest.mark.parametrize("with_p", [True, False], ids=["p", "p=None"])
def test_block_split_kernel_exact(name, split, with_p):
    """The split kernel (``split`` blocks per request, the last one to finish decides) gives the
    reference's tokens: a row that does not fill whole vectors (V = 32003), K beyond one group of
    rows read at once (K = 11), several requests, and more chunks than a warp scans at once (40,
    300: the crossing search walks them 32 at a time; at V = 1500 some chunks are empty)."""
    for B, K, V, seed in ((1, 8, 32003, 1), (3, 11, 32000, 2), (2, 3, 1500, 3)):
        ids, p, q, u = _case(B, K, V, seed=seed + split, with_p=with_p)
        out = _launch(name, ids, p, q, uniforms=u, split=split)
        _exact(out, ids, p, q, u, label=f"{name} split={split} B={B} K={K} V={V}")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_block_split_kernel_half_precision_and_generator(name, dtype):
    """16-bit rows through the split kernel, coins explicit and from the generator (the same
    Philox stream as the cluster kernel: both give the same tokens for the same generator
    state)."""
    ids, p, q, u = _case(2, 6, 50000, seed=5, dtype=dtype)
    out = _launch(name, ids, p, q, uniforms=u, split=33)
    _exact(out, ids, p, q, u, label=f"{name} {dtype} split")
    a, b = (
        _launch(name, ids, p, q, generator=torch.Generator("cuda").manual_seed(11), split=s)
        for s in (33, 0)
    )
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.status, b.status)


@pytest.mark.parametrize("name", BACKENDS)
def test_block_split_kernel_repeated_calls(name):
    """Each call's last block resets its request's counter: calls of different batch sizes and
    chunk counts one after another on one stream all give the reference's tokens (a counter
    left behind would make the next call finish early or never, leaving outputs unwritten)."""
    cases = [_case(B, 5, 20000, seed=20 + B) for B in (1, 4, 2)]
    for round_ in range(3):
        for (ids, p, q, u), split in zip(cases, (60, 9, 31), strict=True):
            out = _launch(name, ids, p, q, uniforms=u, split=split)
            _exact(out, ids, p, q, u, label=f"{name} round {round_} split={split}")


@pytest.mark.parametrize(
    "batch, vocab, sms, clusters, want",
    [
        (1, 128256, 132, True, 132),
        (4, 128256, 132, True, 33),
        (8, 128256, 132, True, 0),  # 16 chunks: no more than a cluster of 16
        (64, 128256, 132, True, 0),
        (1, 4000, 132, True, 0),  # 7 chunks of at least 512 elements
        (1, 32000, 132, True, 62),
        (1, 128256, 132, False, 132),
        (64, 128256, 132, False, 2),
        (200, 128256, 132, False, 0),
    ],
)
def test_block_split_chunks(batch, vocab, sms, clusters, want):
    """When the split kernel is chosen, and its chunks per request (no GPU needed)."""
    assert _cuda_block.block_split_chunks(batch, vocab, sms, clusters) == want


def test_block_split_chunks_rejects_nonsense():
    with pytest.raises(ValueError, match="batch, vocab and num_sms"):
        _cuda_block.block_split_chunks(1, 0, 132, True)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_block_half_precision_and_int32_ids(name, dtype, ids_dtype):
    be = specsample.get_backend(name)
    ids, p, q, u = _case(16, 6, 5000, seed=3, dtype=dtype)
    ids = ids.to(ids_dtype)
    for pp in (p, None):
        out = be.verify(ids, pp, q, uniforms=u, rule="block")
        _exact(out, ids, pp, q, u, label=f"{name} {dtype}")


@pytest.mark.parametrize("name", BACKENDS)
def test_block_generator_coins(name):
    """Without uniforms the kernel draws the token kernel's Philox stream (coin k of request b at
    subsequence b, position k; the final coin at K) and advances the generator as the token rule
    does: the reference given those coins emits the same tokens."""
    be = specsample.get_backend(name)
    B, K, V = 33, 6, 3000
    ids, p, q, _ = _case(B, K, V, seed=4)
    g = torch.Generator("cuda").manual_seed(2024)
    seed, offset = g.initial_seed(), g.get_offset()
    out = be.verify(ids, p, q, generator=g, rule="block")
    assert g.get_offset() - offset == _cuda_build.philox_increment(K)
    u = _cuda_build.philox_uniforms(seed, offset, B, K).cuda()
    _exact(out, ids, p, q, u, label=name)


@pytest.mark.parametrize("name", BACKENDS)
def test_block_k1_equals_token_rule(name):
    """With K = 1 both rules are the same rule: the same generator gives the same tokens."""
    be = specsample.get_backend(name)
    ids, p, q, _ = _case(256, 1, 1000, seed=2)
    a, b = (
        be.verify(ids, p, q, generator=torch.Generator("cuda").manual_seed(5), rule=rule)
        for rule in ("token", "block")
    )
    assert torch.equal(a.token_ids, b.token_ids)
    assert 0 < int((a.num_emitted == 2).sum()) < 256


@pytest.mark.parametrize("name", BACKENDS)
def test_block_greedy_is_token_greedy(name):
    be = specsample.get_backend(name)
    ids, p, q, _ = _case(6, 4, 100, seed=9)
    ids[::2] = q[::2, :4].argmax(-1)
    a = be.verify(ids, p, q, mode="greedy", rule="block")
    b = be.verify(ids, p, q, mode="greedy")
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.status, b.status)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("cluster, split", [(1, 0), (4, 0), (0, 24)], ids=["cl1", "cl4", "split"])
def test_block_zero_residual_falls_back_to_q(name, cluster, split):
    """p == q and q(x) = p(x) = 0 at draft 0: w_1 = 0, every coin fails and the residual of row 0
    is all zero, so the last token is drawn from q_0 (the cluster kernel's second exchange; the
    split kernel's last block streams that row whole)."""
    g = torch.Generator().manual_seed(1)
    B, K, V = 4, 3, 2000
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1)
    ids = torch.randint(0, V, (B, K), generator=g)
    q[torch.arange(B), 0, ids[:, 0]] = 0
    p = q[:, :K].clone()
    u = torch.rand(B, K + 1, generator=g)
    ids, p, q, u = ids.cuda(), p.cuda(), q.cuda(), u.cuda()
    if split:
        out = _launch(name, ids, p, q, uniforms=u, split=split)
    else:
        out = _launch(name, ids, p, q, uniforms=u, cluster=cluster, threads=128, split=0)
    _exact(out, ids, p, q, u, label=name)
    assert (out.num_emitted == 1).all() and (out.status == 0).all()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("cluster, split", [(1, 0), (8, 0), (0, 5)], ids=["cl1", "cl8", "split"])
def test_block_status(name, cluster, split):
    """Bad values in the rows block verification reads flag their request exactly as the
    reference does (docs/rules.md, "Status"); ids outside [0, V) are never dereferenced; clean
    requests in the batch are unaffected."""
    V = 4000
    ids, p, q, u = _case(10, 3, V, seed=2)
    u[6, :3] = 0.0  # request 6 accepts every draft: its bonus row is read
    u[7, :3] = 0.999  # request 7 rejects: its bonus row is never read
    ids[0, 1] = V  # BAD_DRAFT_ID
    ids[8, 0] = -(2**40)  # far outside: must not be dereferenced
    q[1, 2, (ids[1, 2] + 1) % V] = float("nan")  # a non-drafted entry of row 2: BAD_TARGET
    p[2, 0, (ids[2, 0] + 1) % V] = -0.5  # BAD_DRAFT
    q[3, 1, 5] = float("inf")
    p[3, 2, 7] = float("nan")  # both bits
    u[4, 3] = 1.0  # BAD_UNIFORM
    q[5, 0, 3] = 0.0  # zeros and -0.0 are fine
    q[5, 0, 4] = -0.0
    q[6, 3, 0] = float("nan")  # bonus row of an accepting request
    q[7, 3, 0] = float("nan")  # bonus row of a rejecting request: not read
    u[9, :3] = 0.0  # request 9 accepts every draft, and its bonus row sums past float32
    q[9, 3] = 1e38
    if split:
        out = _launch(name, ids, p, q, uniforms=u, split=split)
    else:
        out = _launch(name, ids, p, q, uniforms=u, cluster=cluster, threads=256, split=0)
    _exact(out, ids, p, q, u, label=name, clean=False)
    st = out.status.tolist()
    S = specsample.Status
    assert st[0] == st[8] == S.BAD_DRAFT_ID
    assert st[1] == st[6] == S.BAD_TARGET_VALUE
    assert st[2] == S.BAD_DRAFT_VALUE
    assert st[3] == S.BAD_TARGET_VALUE | S.BAD_DRAFT_VALUE
    assert st[4] == S.BAD_UNIFORM
    assert st[5] == 0 and st[7] == 0
    assert st[9] == S.ROW_SUM_OVERFLOW
    flagged = out.status != 0
    assert (out.num_emitted[flagged] == 0).all() and (out.token_ids[flagged] == -1).all()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("B", [64, 1], ids=["cluster", "split"])
def test_block_one_launch_and_graph_replay(name, B):
    """One kernel launch per call; under CUDA graph capture each replay draws fresh coins, and
    each replay's tokens are the reference's for the coins that replay drew (cuda-cpp: the
    generator's offset as torch advances it). At B = 1 the automatic choice is the split kernel
    outside capture and the cluster kernel under it."""
    from torch.profiler import ProfilerActivity, profile

    be = specsample.get_backend(name)
    K, V = 8, 32000
    ids, p, q, _ = _case(B, K, V, seed=1)
    for _ in range(2):
        be.verify(ids, p, q, rule="block")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            be.verify(ids, p, q, rule="block")
        torch.cuda.synchronize()
    ops = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(ops) == 5, sorted({e.name for e in ops})

    g = torch.cuda.default_generators[torch.cuda.current_device()]  # registered with every graph
    g.manual_seed(7)
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
        offset = g.get_offset()
        graph.replay()
        torch.cuda.synchronize()
        if name == "cuda-cpp":
            u = _cuda_build.philox_uniforms(g.initial_seed(), offset, B, K).cuda()
            _exact(out, ids, p, q, u, label="replay")
        draws.append(tuple(out.token_ids.flatten().tolist()))
    # (one request of 9 tokens may repeat a draw by chance; 64 requests do not)
    assert len(set(draws)) >= (3 if B > 1 else 2)


@pytest.mark.gpu(needs=("cupy",))
@pytest.mark.parametrize(
    "options",
    [
        ("-DSPECSAMPLE_BLOCK_PREFETCH_BYTES=0",),
        ("-DSPECSAMPLE_BLOCK_WAVE=1",),
        ("-DSPECSAMPLE_BLOCK_SPLIT_ROWS=3",),
        ("-DSPECSAMPLE_BLOCK_PICK_VECS=1",),
    ],
    ids=["no-prefetch", "wave-1", "split-rows-3", "pick-vecs-1"],
)
def test_block_knobs(options):
    """Every non-default value of the kernel's compile-time knobs gives the reference's tokens,
    in the cluster kernel and in the split kernel (K = 7: rows read 3 at a time leave a partial
    last group)."""
    from specsample.backends import _cupy_block

    mod = _cupy_block._BlockModule(torch.cuda.current_device(), options)
    for cluster, threads, split in ((1, 256, 0), (16, 512, 0), (0, 0, 19)):
        ids, p, q, u = _case(3, 7, 32000, seed=cluster + split)
        tok, num, st = _cupy_block.verify_block_torch(
            ids, p, q, uniforms=u, cluster=cluster, threads=threads, split=split, module=mod
        )
        out = specsample.VerifyOutput(tok, num, st)
        _exact(out, ids, p, q, u, label=f"{options} cl={cluster} split={split}")


@pytest.mark.parametrize(
    "batch, sms, clusters, want",
    [
        (1, 132, True, (16, 512)),
        (8, 132, True, (16, 512)),
        (9, 132, True, (16, 256)),
        (64, 132, True, (8, 256)),
        (256, 132, True, (2, 256)),
        (300, 132, True, (1, 256)),
        (1, 132, False, (1, 512)),
        (200, 132, False, (1, 256)),
    ],
)
def test_block_launch_config(batch, sms, clusters, want):
    """The launch shape: each request on as many SMs as the batch leaves free (no GPU needed)."""
    assert _cuda_block.block_launch_config(batch, sms, clusters) == want


def test_block_launch_config_rejects_nonsense():
    with pytest.raises(ValueError, match="batch and num_sms"):
        _cuda_block.block_launch_config(0, 132, True)


def test_block_rule_is_claimed():
    """Both CUDA backends claim the rule (they launch the same kernel)."""
    from specsample.backends.cuda_cpp import CudaCppBackend
    from specsample.backends.cupy_backend import CupyBackend

    for cls in (CudaCppBackend, CupyBackend):
        assert "block" in cls.capabilities.rules
