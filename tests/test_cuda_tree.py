"""The tree kernel of ``cuda-cpp`` and ``cupy`` (``csrc/kernel_tree.cuh``) against the float64 tree
reference, on a CUDA device (every test is marked ``gpu``).

Every comparison is exact: status, ``num_emitted``, ``accepted_nodes`` and all tokens. The rows
are random, so the last draw's threshold lies within float rounding (~1e-7 relative) of a token
boundary with negligible probability; the conformance suite's exactness check is the one that
tolerates proven near-ties.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import specsample
import torch
from specsample import trees
from specsample.backends import _cuda_build, _cuda_tree
from specsample.reference_tree import reference_verify_tree
from specsample.status import Status
from specsample.validation_tree import validate_tree_inputs
from traversal_batches import traversal_batch

BACKENDS = [
    pytest.param("cuda-cpp", marks=pytest.mark.gpu),
    pytest.param("cupy", marks=pytest.mark.gpu(needs=("cupy",))),
]
DEV = "cuda"


@pytest.fixture(params=BACKENDS)
def backend(request):
    if not _available(request.param):
        pytest.skip(f"{request.param} unavailable: {_reason(request.param)}")
    return specsample.get_backend(request.param)


def _reason(name: str) -> str:
    info = {i.name: i for i in specsample.list_backends()}[name]
    return info.reason


def _available(name: str) -> bool:
    return {i.name: i for i in specsample.list_backends()}[name].available


def _tree_batch(B: int, N: int, V: int, seed: int):
    """``ids, parents, num_nodes, q, u`` (CPU): padded random, EAGLE-2-shaped, star and chain
    trees with distinct sibling tokens, target rows that put extra mass on the children's tokens
    (deep walks, and rejections), padding filled with garbage that must not be read."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, N), -7, dtype=torch.int64)
    parents = torch.full((B, N), 1000, dtype=torch.int64)
    counts = torch.zeros(B, dtype=torch.int64)
    q = torch.rand(B, N + 1, V, generator=g, dtype=torch.float64) ** 3
    for b in range(B):
        n = int(torch.randint(0, N + 1, (1,), generator=g))
        kind = b % 4
        if kind == 0 and n:
            tree = trees.eagle2_shaped(4, 8, min(n, 4 + 16 * 7), generator=g)
        elif kind == 1:
            tree = trees.star(n)
        elif kind == 2:
            tree = trees.chain(n)
        else:
            tree = trees.random_tree(n, generator=g)
        n = int(tree.numel())
        counts[b] = n
        parents[b, :n] = tree
        for a, kids in enumerate(trees.children(tree) if n else [[]]):
            toks = torch.randperm(V, generator=g)[: len(kids)]
            ids[b, kids] = toks
            q[b, a, toks] += 0.4 * V * torch.rand(len(kids), generator=g, dtype=torch.float64)
    q = (q / q.sum(-1, keepdim=True)).to(torch.float32)
    u = torch.rand(B, N + 1, generator=g)
    return ids, parents, counts, q, u


def _launch(be, cluster, ids, parents, q, p=None, **kw):
    """``be.verify_tree`` (``cluster`` 0), or its kernel with ``cluster`` blocks per request."""
    if not cluster:
        return be.verify_tree(ids, parents, p, q, **kw)
    from specsample.backends import _cupy_tree

    inputs = validate_tree_inputs(
        ids, parents, p, q, capabilities=be.capabilities, backend_name=be.name, **kw
    )
    run = _cuda_tree.verify_tree_cuda_cpp if be.name == "cuda-cpp" else _cupy_tree.verify_tree_cupy
    return run(inputs, cluster=cluster)


def _check(be, ids, parents, q, what, *, mode="random", cluster=0, p=None, **kw):
    """Run ``be`` on the device and the reference on the CPU; assert every output is equal."""
    dev = {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    pd = None if p is None else p.to(DEV)
    out = _launch(be, cluster, ids.to(DEV), parents.to(DEV), q.to(DEV), pd, mode=mode, **dev)
    ref = reference_verify_tree(ids, parents, p, q, mode=mode, **kw)
    for name in ("status", "num_emitted", "accepted_nodes", "token_ids"):
        a, b = getattr(out, name), getattr(ref, name)
        assert a.device.type == torch.device(DEV).type, (what, name)
        a = a.cpu()
        assert a.dtype == b.dtype and a.shape == b.shape, (what, name, a.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{what}: {name} {a.tolist()} != reference {b.tolist()}"
    return ref


@pytest.mark.parametrize("cluster", [0, 1, 2, 16])
@pytest.mark.parametrize("mode", ["random", "greedy"])
@pytest.mark.parametrize(
    ("B", "N", "V", "seed"),
    [(24, 9, 37, 1), (16, 6, 2500, 2), (8, 64, 32000, 3), (12, 128, 1000, 4), (4, 64, 128256, 6)],
)
def test_random_trees_exact(backend, cluster, mode, B, N, V, seed):
    """Every tree shape, padded; V from one partial vector to a full vocabulary (V = 37 and
    V = 2500 take the element-wise load path, the others the 16-byte path); the automatic launch
    and 1, 2 and 16 blocks per request (V = 37: most blocks of a cluster get no part of the row)."""
    ids, parents, counts, q, u = _tree_batch(B, N, V, seed)
    kw = dict(num_nodes=counts, uniforms=u if mode == "random" else None, cluster=cluster)
    ref = _check(backend, ids, parents, q, f"{mode} N={N} V={V} CL={cluster}", mode=mode, **kw)
    assert int(ref.num_emitted.max()) >= 3  # some walks go deep
    if mode == "random":  # some walks stop at a rejection, others accept
        assert bool((ref.num_emitted > 1).any()) and bool((ref.num_emitted == 1).any())
    _check(backend, ids, parents, q, f"{mode} max_depth=N", mode=mode, max_depth=N, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["random", "greedy"])
def test_half_dtypes_and_int32_ids(backend, dtype, mode):
    """16-bit rows (widened to float32 as the reference reads them) and int32 token ids."""
    for V in (1000, 1003):  # aligned and element-wise load paths
        ids, parents, counts, q, u = _tree_batch(16, 12, V, 6)
        kw = dict(num_nodes=counts, uniforms=u if mode == "random" else None)
        _check(
            backend, ids.to(torch.int32), parents, q.to(dtype), f"{dtype} V={V}", mode=mode, **kw
        )


def test_large_batch(backend):
    """B = 96 requests (more than one block per SM on some GPUs), both modes."""
    ids, parents, counts, q, u = _tree_batch(96, 8, 32000, 7)
    _check(backend, ids, parents, q, "B=96 random", num_nodes=counts, uniforms=u)
    _check(backend, ids, parents, q, "B=96 greedy", mode="greedy", num_nodes=counts)


@pytest.mark.parametrize("cluster", [1, 16])
def test_boundaries_and_status(backend, cluster):
    """The field's boundary cases and every structural and up-front status bit, one request each."""
    V, N = 8, 4
    flat = [1.0 / V] * V
    onehot = [0.0] * V
    onehot[3] = 1.0
    zero_kid = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    half = [0.5, 0.5, 0.5, 0.5, 0.5]
    rows = [  # (ids, parents, num_nodes, root row, coins, mode)
        # a zero-probability child at coin 0 is never accepted: the next child's bucket takes it
        ([0, 1, 2, 5], [-1, -1, -1, 0], 4, zero_kid, [0.0, 0.9, 0.9, 0.9, 0.3], "random"),
        ([5, 6, 7, 1], [-1, -1, -1, 2], 4, flat, [1 - 2**-24] * 5, "random"),  # the top coin
        ([3, 6, 7, 1], [-1, -1, 1, 2], 4, flat, [0.25, 0.5, 0.5, 0.5, 0.5], "random"),  # edge
        ([3, 4, 0, 0], [-1, 0, -1, -1], 2, onehot, [0.99] * 5, "random"),  # one-hot root row
        ([1, 2, 3, 4], [-1, -1, -1, -1], 0, flat, half, "random"),  # num_nodes = 0
        ([1, 2, 3, 4], [-1, 1, 0, 0], 4, flat, half, "random"),  # not topological
        ([1, 2, 3, 4], [-1, 0, 3, 0], 3, flat, half, "random"),  # a real child of padding
        ([1, 2, 3, 4], [-1, -1, -1, -1], 5, flat, half, "random"),  # num_nodes > N
        ([1, 2, 3, 4], [-1, -1, -1, -1], -1, flat, half, "random"),  # num_nodes < 0
        ([1, 2, 1, 4], [-1, -1, -1, 0], 4, flat, half, "random"),  # repeated sibling
        ([1, 2, 1, 4], [-1, -1, -1, 0], 4, flat, half, "greedy"),  # allowed in greedy mode
        ([1, 9, 3, 4], [-1, -1, -1, 0], 4, flat, half, "random"),  # id >= V
        ([1, -2, 3, 4], [-1, -1, -1, 0], 4, flat, half, "greedy"),  # id < 0
        ([1, 2, 3, 4], [-1, -1, -1, 0], 4, flat, [0.5, 0.5, 1.0, 0.5, 0.5], "random"),  # u = 1
        ([1, 2, 3, 4], [-1, -1, -1, 0], 3, flat, [0.5, 0.5, 0.5, 2.0, 0.5], "random"),  # unread
        ([1, 2, 3, 4], [-1, -1, -1, 0], 4, flat, [0.5, 0.5, 0.5, 0.5, float("nan")], "random"),
        ([1, 2, 3, 4], [-1, 0, 1, 2], 4, flat, half, "random"),  # depth 4 > max_depth 3
        ([1, 2, 3, 4], [-1, 0, 1, 2], 4, flat, half, "greedy"),
    ]
    seen = set()
    for mode in ("random", "greedy"):
        sel = [r for r in rows if r[5] == mode]
        ids = torch.tensor([r[0] for r in sel])
        parents = torch.tensor([r[1] for r in sel])
        counts = torch.tensor([r[2] for r in sel])
        q = torch.tensor([[r[3]] + [flat] * N for r in sel], dtype=torch.float32)
        u = torch.tensor([r[4] for r in sel], dtype=torch.float32)
        kw = dict(num_nodes=counts, max_depth=3, uniforms=u if mode == "random" else None)
        ref = _check(
            backend, ids, parents, q, f"boundary cases, {mode}", mode=mode, cluster=cluster, **kw
        )
        seen |= set(ref.status.tolist())
    want = {0, Status.BAD_TREE, Status.REPEATED_SIBLING, Status.BAD_DRAFT_ID, Status.BAD_UNIFORM}
    assert {int(x) for x in want} <= seen, seen


@pytest.mark.parametrize("cluster", [1, 4, 16])
def test_bad_rows_zero_rows_and_fallback(backend, cluster):
    """A bad value in a row the walk reads flags the request, one the walk skips does not; a row
    that sums to zero, one whose mass is all on the children (drawn from the row itself), and one
    whose sum overflows float32."""
    V, N = 6, 3
    ids = torch.tensor([[2, 4, 5]] * 6)
    parents = torch.tensor([[-1, -1, 0]] * 6)
    q = torch.full((6, N + 1, V), 1.0 / V)
    q[:, 0, 2] = 0.5
    q[0, 3, 1] = float("nan")  # the leaf row request 0's walk reaches
    q[1, 2, 1] = float("inf")  # node 1's row: never reached
    q[2, 0, 2] = -1.0  # a drafted entry: read up front
    q[3, 0, :] = 0.0  # the root's row sums to zero
    q[4, 0, :] = 0.0  # all of the root's mass on its children, missed by the coin (u >= sum)
    q[4, 0, 2], q[4, 0, 4] = 0.25, 0.25
    q[5, 0, :] = 3.0e38  # past float32 after the children (never accepted: zero) are removed
    q[5, 0, 2], q[5, 0, 4] = 0.0, 0.0
    u = torch.tensor([[0.1, 0.0, 0.1, 0.5]] + [[0.9, 0.0, 0.1, 0.5]] * 5)
    ref = _check(backend, ids, parents, q, "bad rows, random", uniforms=u, cluster=cluster)
    bad, zero, over = (int(s) for s in (Status.BAD_TARGET_VALUE, Status.ZERO_ROW,
                                        Status.ROW_SUM_OVERFLOW))  # fmt: skip
    assert ref.status.tolist() == [bad, 0, bad, zero, 0, over]
    assert int(ref.token_ids[4, 0]) in (2, 4)  # drawn from the row itself
    _check(backend, ids, parents, q, "bad rows, greedy", mode="greedy", cluster=cluster)


@pytest.mark.parametrize("mode", ["random", "greedy"])
def test_max_depth_beyond_and_zero(backend, mode):
    """max_depth > N (columns no path reaches are -1) and max_depth = 0 (only an empty tree is
    valid: the others are BAD_TREE)."""
    ids, parents, counts, q, u = _tree_batch(6, 5, 20, 8)
    counts[0] = 0
    kw = dict(num_nodes=counts, uniforms=u if mode == "random" else None)
    for depth in (0, 11):
        ref = _check(backend, ids, parents, q, f"{mode}, max_depth={depth}", mode=mode,
                     max_depth=depth, **kw)  # fmt: skip
    assert int(ref.num_emitted[0]) == 1


def test_generator_coins_are_the_chain_kernels(backend):
    """Without uniforms, node i's coin is the i-th Philox uniform of request b (the chain
    kernel's stream): the reference with those coins gives the same output, and a chain gives
    verify()'s tokens for the same generator state; the generator advances by 4 * ceil((N+1)/4)."""
    ids, parents, counts, q, _ = _tree_batch(16, 10, 3000, 9)
    g = torch.Generator(device=DEV).manual_seed(11)
    seed, offset = g.initial_seed(), g.get_offset()
    out = backend.verify_tree(ids.to(DEV), parents.to(DEV), None, q.to(DEV),
                              num_nodes=counts.to(DEV), generator=g)  # fmt: skip
    assert g.get_offset() == offset + _cuda_build.philox_increment(10)
    coins = _cuda_build.philox_uniforms(seed, offset, 16, 10)
    ref = reference_verify_tree(ids, parents, None, q, num_nodes=counts, uniforms=coins)
    for name in ("status", "num_emitted", "accepted_nodes", "token_ids"):
        assert torch.equal(getattr(out, name).cpu(), getattr(ref, name)), name

    B, K, V = 32, 6, 500
    gq = torch.Generator().manual_seed(12)
    qc = torch.softmax(torch.randn(B, K + 1, V, generator=gq) * 3, -1).to(DEV)
    idc = qc[:, :K].argmax(-1)
    chain = trees.chain(K).expand(B, K).contiguous().to(DEV)
    want = backend.verify(idc, None, qc, generator=torch.Generator(device=DEV).manual_seed(5))
    got = backend.verify_tree(idc, chain, None, qc,
                              generator=torch.Generator(device=DEV).manual_seed(5))  # fmt: skip
    assert torch.equal(got.token_ids, want.token_ids)
    assert torch.equal(got.num_emitted, want.num_emitted)


def test_cuda_graph_replay(backend):
    """Captured in a CUDA graph (coins from the generator): each replay draws fresh coins and every
    request stays valid; greedy replays equal the eager call."""
    ids, parents, counts, q, _ = _tree_batch(8, 16, 4096, 10)
    ids, parents, counts, q = (t.to(DEV) for t in (ids, parents, counts, q))
    eager = backend.verify_tree(ids, parents, None, q, mode="greedy", num_nodes=counts)
    backend.verify_tree(ids, parents, None, q, num_nodes=counts)  # build / compile first
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        rnd = backend.verify_tree(ids, parents, None, q, num_nodes=counts)
        grd = backend.verify_tree(ids, parents, None, q, mode="greedy", num_nodes=counts)
    torch.cuda.current_stream().wait_stream(stream)
    seen = []
    for _ in range(4):
        graph.replay()
        torch.cuda.synchronize()
        assert int(rnd.status.abs().sum()) == 0
        assert torch.equal(grd.token_ids, eager.token_ids)
        seen.append(rnd.token_ids.clone())
    assert any(not torch.equal(seen[0], s) for s in seen[1:])  # fresh coins per replay


def test_backends_agree(backend):
    """cuda-cpp and cupy launch the same kernel: one generator state gives one output."""
    other_name = "cupy" if backend.name == "cuda-cpp" else "cuda-cpp"
    if not _available(other_name):
        pytest.skip(f"{other_name} unavailable: {_reason(other_name)}")
    other = specsample.get_backend(other_name)
    ids, parents, counts, q, _ = _tree_batch(16, 20, 5000, 13)
    ids, parents, counts, q = (t.to(DEV) for t in (ids, parents, counts, q))
    a = backend.verify_tree(ids, parents, None, q, num_nodes=counts,
                            generator=torch.Generator(device=DEV).manual_seed(3))  # fmt: skip
    b = other.verify_tree(ids, parents, None, q, num_nodes=counts,
                          generator=torch.Generator(device=DEV).manual_seed(3))  # fmt: skip
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.status, b.status)


def _draft_trees(B: int, N: int, V: int, seed: int, kind: str):
    """``ids, parents, p, q, u`` (CPU): stars or random trees whose draft rows put extra mass on
    the children's distinct tokens and whose target rows mostly do not, so first children are
    often rejected and later siblings, all-rejected positions and the residual draws all occur."""
    g = torch.Generator().manual_seed(seed)
    shape = trees.star if kind == "star" else (lambda n: trees.random_tree(n, generator=g))
    parents = torch.stack([shape(N) for _ in range(B)])
    ids = torch.zeros(B, N, dtype=torch.int64)
    p = torch.rand(B, N, V, generator=g, dtype=torch.float64) ** 4
    q = torch.rand(B, N + 1, V, generator=g, dtype=torch.float64) ** 4
    for b in range(B):
        for a, kids in enumerate(trees.children(parents[b])):
            if not kids:
                continue
            toks = torch.randperm(V, generator=g)[: len(kids)]
            ids[b, kids] = toks
            p[b, kids[0], toks] += 0.4 * p[b, kids[0]].sum() / len(kids)
            q[b, a, toks] += 0.1 * q[b, a].sum() * torch.rand(len(kids), generator=g)
    p = (p / p.sum(-1, keepdim=True)).to(torch.float32)
    q = (q / q.sum(-1, keepdim=True)).to(torch.float32)
    return ids, parents, p, q, torch.rand(B, N + 1, generator=g)


@pytest.mark.parametrize("cluster", [0, 1, 16])
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
@pytest.mark.parametrize(
    ("B", "N", "V", "kind", "seed"),
    [(24, 5, 11, "star", 12), (24, 8, 20, "random", 15), (8, 6, 2100, "star", 14),
     (8, 12, 32000, "random", 16)],
)  # fmt: skip
def test_draft_probs_trees_exact(backend, cluster, sampling, B, N, V, kind, seed):
    """Recursive rejection sampling over siblings, exactly the reference: stars (up to N
    siblings tried in turn) and random trees, V from one partial vector to a vocabulary."""
    ids, parents, p, q, u = _draft_trees(B, N, V, seed, kind)
    what = f"{sampling} {kind} N={N} V={V} CL={cluster}"
    kw = dict(uniforms=u, draft_sampling=sampling, cluster=cluster)
    ref = _check(backend, ids, parents, q, what, p=p, **kw)
    if kind == "star":  # later siblings accepted and every sibling rejected both occur
        first = ref.accepted_nodes[:, 0]
        assert bool((first > 0).any()) and bool((first < 0).any()), first.tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_draft_probs_half_dtypes(backend, dtype):
    """float16 and bfloat16 rows (widened to float32 as the reference reads them)."""
    for V in (1000, 1003):  # aligned and element-wise load paths
        ids, parents, p, q, u = _draft_trees(16, 6, V, 17, "star")
        for sampling in ("with_replacement", "without_replacement"):
            _check(backend, ids, parents, q.to(dtype), f"{sampling} {dtype} V={V}",
                   p=p.to(dtype), uniforms=u, draft_sampling=sampling)  # fmt: skip


@pytest.mark.parametrize("cluster", [1, 16])
def test_draft_probs_status_and_fallbacks(backend, cluster):
    """Bad draft values up front and in a row read after a rejection, a target row that sums to
    zero, a first child whose target entry is zero, repeated siblings (flagged without
    replacement only), a chain, an empty tree: status and tokens exactly the reference's."""
    V, N = 6, 3
    ids = torch.tensor([[2, 4, 5]] * 8)
    parents = torch.tensor([[-1, -1, -1]] * 8)
    p = torch.full((8, N, V), 1.0 / V)
    p[:, 0, 2] = 0.5
    p[:, 0] /= p[:, 0].sum(-1, keepdim=True)
    q = torch.full((8, N + 1, V), 1.0 / V)
    u = torch.full((8, N + 1), 0.9)
    p[0, 0, 4] = float("nan")  # node 1's drafted entry (the first sibling's row): read up front
    p[1, 0, 0] = -1.0  # read only after the first child is rejected
    q[2, 0] = p[2, 0]  # p = q: the first child is never rejected
    q[3, 0, :] = 0.0  # the root's target row is zero: ZERO_ROW
    q[4, 0, 2] = 0.0  # the first child's target entry is zero: rejected at any coin
    ids[5] = torch.tensor([2, 4, 2])  # a repeated sibling
    parents[6] = torch.tensor([-1, 0, 1])  # a chain: each rejection draws from max(0, q - p)
    counts = torch.tensor([3, 3, 3, 3, 3, 3, 3, 0])
    for sampling in ("with_replacement", "without_replacement"):
        kw = dict(uniforms=u, num_nodes=counts, draft_sampling=sampling, cluster=cluster)
        ref = _check(backend, ids, parents, q, f"status, {sampling}", p=p, **kw)
        bits = ref.status.tolist()
        assert bits[0] == Status.BAD_DRAFT_VALUE and bits[1] == Status.BAD_DRAFT_VALUE, bits
        assert bits[3] == Status.ZERO_ROW, bits
        repeated = Status.REPEATED_SIBLING if sampling == "without_replacement" else 0
        assert bits[5] == repeated and bits[2] == bits[4] == bits[6] == bits[7] == 0, bits


@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_draft_probs_chain_equals_verify(backend, sampling):
    """A chain with draft probabilities, coins from the generator: verify()'s tokens exactly."""
    B, K, V = 32, 4, 300
    g = torch.Generator().manual_seed(4)
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1)
    p = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1)
    ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    ids, p, q = ids.to(DEV), p.to(DEV), q.to(DEV)
    parents = trees.chain(K).expand(B, K).contiguous().to(DEV)
    want = backend.verify(ids, p, q, generator=torch.Generator(device=DEV).manual_seed(9))
    got = backend.verify_tree(ids, parents, p, q, draft_sampling=sampling,
                              generator=torch.Generator(device=DEV).manual_seed(9))  # fmt: skip
    assert torch.equal(got.token_ids, want.token_ids)
    assert torch.equal(got.num_emitted, want.num_emitted)
    assert bool((want.num_emitted <= K).any())  # some drafts rejected


# ---- traversal verification (csrc/kernel_traversal.cuh) -----------------------------------------
TRAVERSAL = dict(draft_sampling="with_replacement", rule="traversal")


@pytest.mark.parametrize(
    ("B", "N", "V", "dtype", "seed"),
    [(48, 6, 3, torch.float32, 21), (32, 9, 8, torch.bfloat16, 22), (24, 12, 300, torch.float16, 23),
     (16, 20, 4099, torch.float32, 24), (8, 64, 32000, torch.bfloat16, 25),
     (4, 24, 128256, torch.float32, 26), (2, 128, 1000, torch.float32, 27)],
)  # fmt: skip
def test_traversal_trees_exact(backend, B, N, V, dtype, seed):
    """Traversal verification, exactly the float64 reference: every tree shape, padded; V from a
    partial vector to a full vocabulary (odd V: the element-wise load path), 128 nodes."""
    ids, parents, counts, p, q, u = traversal_batch(B, N, V, seed, dtype=dtype)
    what = f"traversal N={N} V={V} {dtype}"
    ref = _check(backend, ids, parents, q, what, p=p, num_nodes=counts, uniforms=u, **TRAVERSAL)
    assert (ref.status == 0).all() and int(ref.num_emitted.max()) >= 2


def test_traversal_status(backend):
    """Every status bit as the traversal reference sets it: a bad tree, a bad id with a bad coin,
    bad values in an inner target row and a first child's draft row (both bits, read up front),
    a bad root row, a bad accepted leaf row and a bad leaf row never read, a zero row, row sums
    past float32 (a residual, a leaf row), an empty tree."""
    V, N = 4, 3
    ids = torch.tensor([[1, 2, 3]] * 10)
    parents = torch.tensor([[-1, 0, 0]] * 10)
    p = torch.full((10, N, V), 0.25)
    q = torch.full((10, N + 1, V), 0.25)
    u = torch.full((10, N + 1), 0.5)
    u[:, 1] = 0.0
    parents[0, 2] = 2
    ids[1, 0] = 4
    u[1, 3] = 1.0
    q[2, 1, 0] = float("nan")
    p[2, 1, 0] = float("inf")
    q[3, 0, 3] = -1.0
    q[4, 2, 0] = float("inf")
    q[5, 2, 0] = float("nan")
    q[5, 1, 2] = 0.05
    u[5, 1] = 0.99
    q[6] = 0.0
    parents[7] = torch.tensor([-1, 0, 1])
    q[7, 0] = 3e38
    q[7, 0, 1] = 0.0
    q[8, 2] = 2e38
    counts = torch.tensor([3, 3, 3, 3, 3, 3, 3, 3, 3, 0])
    S = Status
    want = [S.BAD_TREE, S.BAD_DRAFT_ID | S.BAD_UNIFORM, S.BAD_TARGET_VALUE | S.BAD_DRAFT_VALUE,
            S.BAD_TARGET_VALUE, S.BAD_TARGET_VALUE, 0, S.ZERO_ROW, S.ROW_SUM_OVERFLOW,
            S.ROW_SUM_OVERFLOW, 0]  # fmt: skip
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        qd = q.to(dtype) if dtype != torch.float16 else q.clamp(max=6e4).to(dtype)
        ref = _check(backend, ids, parents, qd, f"traversal status {dtype}", p=p.to(dtype),
                     num_nodes=counts, uniforms=u, **TRAVERSAL)  # fmt: skip
        if dtype != torch.float16:  # float16 cannot hold the rows past float32
            assert ref.status.tolist() == [int(x) for x in want], ref.status.tolist()


def test_traversal_generator_coins_and_chain_is_block(backend):
    """Without uniforms node i's coin is the i-th Philox uniform of request b and the generator
    advances by 4 * ceil((N+1)/4); on a chain, one generator state gives verify(rule="block")'s
    tokens."""
    ids, parents, counts, p, q, _ = traversal_batch(16, 10, 3000, 28)
    g = torch.Generator(device=DEV).manual_seed(11)
    seed, offset = g.initial_seed(), g.get_offset()
    out = backend.verify_tree(ids.to(DEV), parents.to(DEV), p.to(DEV), q.to(DEV),
                              num_nodes=counts.to(DEV), generator=g, **TRAVERSAL)  # fmt: skip
    assert g.get_offset() == offset + _cuda_build.philox_increment(10)
    coins = _cuda_build.philox_uniforms(seed, offset, 16, 10)
    ref = reference_verify_tree(ids, parents, p, q, num_nodes=counts, uniforms=coins, **TRAVERSAL)
    for name in ("status", "num_emitted", "accepted_nodes", "token_ids"):
        assert torch.equal(getattr(out, name).cpu(), getattr(ref, name)), name

    B, K, V = 64, 5, 500
    gq = torch.Generator().manual_seed(13)
    logits = torch.randn(B, K + 1, V, generator=gq) * 2
    qc = torch.softmax(logits, -1)
    pc = torch.softmax(logits[:, :K] + torch.randn(B, K, V, generator=gq), -1)
    idc = torch.multinomial(pc.reshape(B * K, V), 1, generator=gq).reshape(B, K)
    qc, pc, idc = qc.to(DEV), pc.to(DEV), idc.to(DEV)
    chain = trees.chain(K).expand(B, K).contiguous().to(DEV)
    want = backend.verify(idc, pc, qc, rule="block",
                          generator=torch.Generator(device=DEV).manual_seed(5))  # fmt: skip
    got = backend.verify_tree(idc, chain, pc, qc, generator=torch.Generator(device=DEV).manual_seed(5),
                              **TRAVERSAL)  # fmt: skip
    assert torch.equal(got.token_ids, want.token_ids)
    assert torch.equal(got.num_emitted, want.num_emitted)
    assert int(want.num_emitted.min()) == 1 and int(want.num_emitted.max()) == K + 1


def test_traversal_cuda_graph_replay(backend):
    """Captured in a CUDA graph (coins from the generator): each replay draws fresh coins and
    every request stays valid."""
    ids, parents, counts, p, q, _ = traversal_batch(8, 16, 4096, 29)
    ids, parents, counts, p, q = (t.to(DEV) for t in (ids, parents, counts, p, q))
    backend.verify_tree(ids, parents, p, q, num_nodes=counts, **TRAVERSAL)  # build first
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        out = backend.verify_tree(ids, parents, p, q, num_nodes=counts, **TRAVERSAL)
    torch.cuda.current_stream().wait_stream(stream)
    seen = []
    for _ in range(4):
        graph.replay()
        torch.cuda.synchronize()
        assert int(out.status.abs().sum()) == 0
        seen.append(out.token_ids.clone())
    assert any(not torch.equal(seen[0], s) for s in seen[1:])  # fresh coins per replay


def test_traversal_backends_agree_and_one_block(backend):
    """cuda-cpp and cupy launch the same traversal kernel: one generator state gives one output;
    the kernel runs one block per request (cluster 1 accepted, 2 refused)."""
    ids, parents, counts, p, q, u = traversal_batch(16, 12, 2000, 30)
    ids, parents, counts, p, q, u = (t.to(DEV) for t in (ids, parents, counts, p, q, u))
    one = _launch(backend, 1, ids, parents, q, p, num_nodes=counts, uniforms=u, **TRAVERSAL)
    auto = backend.verify_tree(ids, parents, p, q, num_nodes=counts, uniforms=u, **TRAVERSAL)
    assert torch.equal(one.token_ids, auto.token_ids)
    with pytest.raises((ValueError, RuntimeError), match="one block per request"):
        _launch(backend, 2, ids, parents, q, p, num_nodes=counts, uniforms=u, **TRAVERSAL)
    other_name = "cupy" if backend.name == "cuda-cpp" else "cuda-cpp"
    if not _available(other_name):
        pytest.skip(f"{other_name} unavailable: {_reason(other_name)}")
    other = specsample.get_backend(other_name)
    a = backend.verify_tree(ids, parents, p, q, num_nodes=counts,
                            generator=torch.Generator(device=DEV).manual_seed(3), **TRAVERSAL)  # fmt: skip
    b = other.verify_tree(ids, parents, p, q, num_nodes=counts,
                          generator=torch.Generator(device=DEV).manual_seed(3), **TRAVERSAL)  # fmt: skip
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.status, b.status)


_OP_ERROR_SETUP = """
import torch
from specsample.backends import _cuda_block, _cuda_tree
tree = _cuda_tree.load_tree_op()
block = _cuda_block.load_block_op()
B, N, V = 2, 3, 64
ids = torch.zeros(B, N, dtype=torch.int64, device="cuda")
parents = torch.tensor([[-1, 0, 0]] * B, device="cuda")
counts = torch.full((B,), N, device="cuda")
p = torch.full((B, N, V), 1.0 / V, device="cuda")
q = torch.full((B, N + 1, V), 1.0 / V, device="cuda")
u = torch.rand(B, N + 1, device="cuda")
try:
    {call}
except RuntimeError as exc:
    print("RuntimeError:", str(exc).splitlines()[0])
else:
    print("no error")
"""

_OP_ERRORS = [
    pytest.param(
        "tree(ids, parents, counts, p, q, u, None, False, False, False, N, 2, True)",
        "one block per request (cluster 0 or 1), got 2",
        id="tree-traversal-cluster-formatted",
    ),
    pytest.param(
        "tree(ids, parents, counts, p, q, u, None, False, False, False, N, 3, False)",
        "cluster must be",
        id="tree-cluster-size",
    ),
    pytest.param(
        "torch.ops.specsample.verify(ids, None, q, None, None, True, 3)",
        "cluster must be",
        id="verify-cluster-size",
    ),
    pytest.param(
        "block(ids, p, q, None, None, 3, 64)",
        "cluster must be 1, 2, 4, 8 or 16, got 3",
        id="block-cluster-size-formatted",
    ),
]


def test_binding_checks_pass_torch_check_one_message_string():
    """TORCH_CHECK with more than one message argument builds the message with c10::str, the path
    that crashed instead of raising; numbers go through SPECSAMPLE_CHECK's snprintf instead."""
    import re

    csrc = Path(__file__).resolve().parents[1] / "csrc"
    offenders = []
    for path in sorted(csrc.glob("*.cu*")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"TORCH_CHECK\((.*?)\);", text, re.S):
            args = _top_level_arguments(match.group(1))
            if len(args) > 2:
                line = text[: match.start()].count("\n") + 1
                offenders.append(f"{path.name}:{line}: {' '.join(match.group(0).split())[:100]}")
    assert not offenders, "\n".join(offenders)


def _top_level_arguments(text: str) -> list[str]:
    """Split a macro's argument list at the commas outside brackets and string literals."""
    args, depth, in_string, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            in_string = not in_string
        elif not in_string and ch in "([{":
            depth += 1
        elif not in_string and ch in ")]}":
            depth -= 1
        elif not in_string and ch == "," and depth == 0:
            args.append(text[start:i])
            start = i + 1
    return [*args, text[start:]]


@pytest.mark.gpu
@pytest.mark.parametrize("call, message", _OP_ERRORS)
def test_op_argument_errors_raise_and_do_not_crash(call, message):
    """The ops' own checks (C++ exceptions) reach Python as RuntimeError. Each runs in a child
    process: a TORCH_CHECK that formatted a number crashed the process (SIGSEGV) on Hopper hosts,
    which would take pytest down. The checks with numbers now format them with SPECSAMPLE_CHECK
    (csrc/torch_common.cuh); the two "formatted" cases cover that path, the others literal ones."""
    import subprocess
    import sys

    if not _available("cuda-cpp"):
        pytest.skip(f"cuda-cpp unavailable: {_reason('cuda-cpp')}")
    program = _OP_ERROR_SETUP.replace("{call}", call)
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    lines = out.stdout.splitlines()
    assert lines and lines[-1].startswith("RuntimeError:") and message in lines[-1], lines
