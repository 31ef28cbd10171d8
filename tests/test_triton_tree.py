"""The ``triton`` backend's tree kernel (``backends/_triton_tree.py``) against the float64 tree
reference, under triton's CPU interpreter.

The interpreter tests run directly when this process already is in interpreter mode (``pytest``
started with ``TRITON_INTERPRET=1``), else through one subprocess that runs them that way. Every
comparison is exact: status, ``num_emitted``, ``accepted_nodes`` and all tokens (the cases keep
the last draw away from inverse-CDF near-ties, which the conformance check tolerates).
"""

from __future__ import annotations

import pytest
import specsample
import torch
from specsample import trees
from specsample.reference_tree import reference_verify_tree
from specsample.status import Status
from triton_interpreter import HAVE_TRITON, in_interpreter, run_interpreter_suite


def _interp() -> bool:
    return in_interpreter()


INNER = pytest.mark.skipif(
    not _interp(), reason="needs TRITON_INTERPRET=1 (run by test_tree_interpreter_suite)"
)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
@pytest.mark.skipif(_interp(), reason="already in interpreter mode: the tests run directly")
def test_tree_interpreter_suite():
    """The interpreter tests of this file, in a subprocess with TRITON_INTERPRET=1."""
    run_interpreter_suite(__file__)


def _both(ids, parents, q, *, mode="random", **kw):
    be = specsample.get_backend("triton")
    out = be.verify_tree(ids, parents, None, q, mode=mode, **kw)
    ref = reference_verify_tree(ids, parents, None, q, mode=mode, **kw)
    return out, ref


def _assert_same(out, ref, what: str) -> None:
    for name in ("status", "num_emitted", "accepted_nodes", "token_ids"):
        a, b = getattr(out, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, (what, name, a.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{what}: {name} {a.tolist()} != reference {b.tolist()}"


def _random_trees(B: int, N: int, V: int, seed: int, kinds=("random", "eagle2", "star", "chain")):
    """Padded trees with distinct sibling tokens; rows that favour the children (deep walks)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, N), -1, dtype=torch.int64)
    parents = torch.full((B, N), 99, dtype=torch.int64)  # padding: garbage that is never read
    counts = torch.zeros(B, dtype=torch.int64)
    q = torch.rand(B, N + 1, V, generator=g, dtype=torch.float64) ** 3
    for b in range(B):
        n = int(torch.randint(0, N + 1, (1,), generator=g))
        kind = kinds[b % len(kinds)]
        if kind == "eagle2":
            tree = trees.eagle2_shaped(3, 3, n, generator=g) if n else trees.chain(0)
        elif kind == "star":
            tree = trees.star(n)
        elif kind == "chain":
            tree = trees.chain(n)
        else:
            tree = trees.random_tree(n, generator=g)
        n = int(tree.numel())
        counts[b] = n
        parents[b, :n] = tree
        for a, kids in enumerate(trees.children(tree) if n else [[]]):
            toks = torch.randperm(V, generator=g)[: len(kids)].tolist()
            for c, t in zip(kids, toks, strict=False):
                ids[b, c] = t
                q[b, a, t] += 0.3 * V * float(torch.rand(1, generator=g))
    q = (q / q.sum(-1, keepdim=True)).to(torch.float32)
    u = torch.rand(B, N + 1, generator=g)
    return ids, parents, counts, q, u


@INNER
@pytest.mark.parametrize("mode", ["random", "greedy"])
@pytest.mark.parametrize(("N", "V", "seed"), [(9, 37, 1), (6, 2500, 2)])
def test_interp_random_trees(mode, N, V, seed):
    """Padded random, EAGLE-2-shaped, star and chain trees; V = 2500 spans three tiles."""
    ids, parents, counts, q, u = _random_trees(12, N, V, seed)
    kw = dict(num_nodes=counts, uniforms=u if mode == "random" else None)
    out, ref = _both(ids, parents, q, mode=mode, **kw)
    assert int(ref.num_emitted.max()) >= 3  # some walks go deep
    _assert_same(out, ref, f"{mode}, N={N}, V={V}")
    out, ref = _both(ids, parents, q, mode=mode, max_depth=N, **kw)
    _assert_same(out, ref, f"{mode}, N={N}, V={V}, max_depth=N")


@INNER
def test_interp_boundaries_and_status():
    """The field's boundary cases and every status bit the tree kernel sets, one request each."""
    V, N = 8, 4
    rows = []  # (ids, parents, num_nodes, root row, coins, mode)
    flat = [1.0 / V] * V
    onehot = [0.0] * V
    onehot[3] = 1.0
    zero_kid = [0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]
    # a zero-probability child at coin 0 is never accepted; the next child's bucket starts at 0
    rows.append(([0, 1, 2, 5], [-1, -1, -1, 0], 4, zero_kid, [0.0, 0.9, 0.9, 0.9, 0.3], "random"))
    rows.append(([5, 6, 7, 1], [-1, -1, -1, 2], 4, flat, [1 - 2**-24] * 5, "random"))  # top coin
    rows.append(([3, 6, 7, 1], [-1, -1, 1, 2], 4, flat, [0.25, 0.5, 0.5, 0.5, 0.5], "random"))
    rows.append(([3, 4, 0, 0], [-1, 0, -1, -1], 2, onehot, [0.99] * 5, "random"))  # one-hot root
    rows.append(([1, 2, 3, 4], [-1, -1, -1, -1], 0, flat, [0.5] * 5, "random"))  # num_nodes 0
    rows.append(([1, 2, 3, 4], [-1, 1, 0, 0], 4, flat, [0.5] * 5, "random"))  # not topological
    rows.append(([1, 2, 3, 4], [-1, 0, 3, 0], 3, flat, [0.5] * 5, "random"))  # padding parent
    rows.append(([1, 2, 3, 4], [-1, -1, -1, -1], 5, flat, [0.5] * 5, "random"))  # too many
    rows.append(([1, 2, 1, 4], [-1, -1, -1, 0], 4, flat, [0.5] * 5, "random"))  # repeated
    rows.append(([1, 2, 1, 4], [-1, -1, -1, 0], 4, flat, [0.5] * 5, "greedy"))  # allowed
    rows.append(([1, 9, 3, 4], [-1, -1, -1, 0], 4, flat, [0.5] * 5, "random"))  # bad id
    rows.append(([1, 2, 3, 4], [-1, -1, -1, 0], 4, flat, [0.5, 0.5, 1.0, 0.5, 0.5], "random"))
    rows.append(([1, 2, 3, 4], [-1, -1, -1, 0], 3, flat, [0.5, 0.5, 0.5, 2.0, 0.5], "random"))
    rows.append(([1, 2, 3, 4], [-1, 0, 1, 2], 4, flat, [0.5] * 5, "random"))  # depth 4 > 3
    seen = set()
    for mode in ("random", "greedy"):
        sel = [r for r in rows if r[5] == mode]
        ids = torch.tensor([r[0] for r in sel])
        parents = torch.tensor([r[1] for r in sel])
        counts = torch.tensor([r[2] for r in sel])
        q = torch.tensor([[r[3]] + [flat] * N for r in sel], dtype=torch.float32)
        u = torch.tensor([r[4] for r in sel], dtype=torch.float32)
        kw = dict(num_nodes=counts, max_depth=3, uniforms=u if mode == "random" else None)
        out, ref = _both(ids, parents, q, mode=mode, **kw)
        _assert_same(out, ref, f"boundary cases, {mode}")
        seen |= set(ref.status.tolist())
    want = {0, Status.BAD_TREE, Status.REPEATED_SIBLING, Status.BAD_DRAFT_ID, Status.BAD_UNIFORM}
    assert {int(x) for x in want} <= seen, seen


@INNER
def test_interp_bad_rows():
    """A bad value in a row the walk reads flags the request; one the walk skips does not."""
    V, N = 6, 3
    ids = torch.tensor([[2, 4, 5]] * 4)
    parents = torch.tensor([[-1, -1, 0]] * 4)
    q = torch.full((4, N + 1, V), 1.0 / V)
    q[:, 0, 2] = 0.5
    q[0, 3, 1] = float("nan")  # the leaf row reached by request 0's walk
    q[1, 2, 1] = float("inf")  # node 1's row: never reached
    q[2, 0, 2] = -1.0  # a drafted entry: read up front
    q[3, 0, :] = 0.0  # the root's row sums to zero after the coin misses every child
    u = torch.tensor([[0.1, 0.0, 0.1, 0.5]] * 4)
    for mode in ("random", "greedy"):
        kw = dict(uniforms=u if mode == "random" else None)
        out, ref = _both(ids, parents, q, mode=mode, **kw)
        _assert_same(out, ref, f"bad rows, {mode}")
        if mode == "random":
            bad, zero = int(Status.BAD_TARGET_VALUE), int(Status.ZERO_ROW)
            assert out.status.tolist() == [bad, 0, bad, zero]


@INNER
@pytest.mark.parametrize("chunks", [2, 3, 5])
def test_interp_target_only_split_draw(monkeypatch, chunks):
    """Target-only with the last row shared by several programs per request (their tile sums
    combined by the last to finish) gives the one-program kernel's outputs, which are the
    reference's: children dropped in any chunk, the fallback to the whole row when the children
    hold all of it, a bad value or no mass in a chunk the crossing is not in."""
    import functools

    from specsample.backends import _triton_tree

    V, N = 4500, 6  # five tiles of 1024 under the interpreter
    ids, parents, counts, q, u = _random_trees(7, N, V, seed=chunks, kinds=("star", "eagle2"))
    ids[0, :3], parents[0, :3], counts[0] = torch.tensor([10, 2100, 4400]), -1, 3
    q[0, 0] = 0.0
    q[0, 0, [10, 2100, 4400]] = torch.tensor([0.25, 0.5, 0.25])  # the children hold the root row
    u[0, :4] = torch.tensor([0.999, 0.999, 0.999, 0.6])  # every child rejected: fallback to q
    ids[1, :1], parents[1, :1], counts[1] = 7, -1, 1
    q[1, 0, 4300] = float("nan")  # the last tile of the row the walk stops in
    u[1, 0] = 0.999
    ids[2, :1], parents[2, :1], counts[2] = 7, -1, 1
    q[2, 0] = 0.0  # no mass: the child is never accepted, and the draw finds ZERO_ROW
    kw = dict(num_nodes=counts, uniforms=u)
    whole, ref = _both(ids, parents, q, **kw)
    _assert_same(whole, ref, "one program per request")
    S = Status
    assert ref.status.tolist()[:3] == [0, S.BAD_TARGET_VALUE, S.ZERO_ROW]
    assert int(ref.token_ids[0, 0]) in (10, 2100, 4400)
    orig = _triton_tree.launch_tree
    monkeypatch.setattr(_triton_tree, "launch_tree", functools.partial(orig, chunks=chunks))
    out, _ = _both(ids, parents, q, **kw)
    _assert_same(out, ref, f"{chunks} programs per request")


@INNER
@pytest.mark.parametrize("chunks", [2, 3, 5])
def test_interp_greedy_split_walk(monkeypatch, chunks):
    """Greedy with every row along the path shared by several programs per request (each stops
    where its tiles refute the child that can be the argmax; the walk stops at the first such
    stop) gives the one-program kernel's outputs, which are the reference's: deep walks, a
    maximum tied across chunks (the smallest id wins, child or not), a child beaten by a value in
    another chunk, bad values on the path and past its end, repeated sibling tokens."""
    import functools

    from specsample.backends import _triton_tree

    V, N = 4500, 7
    ids, parents, counts, q, _ = _random_trees(8, N, V, seed=10 + chunks)
    ids[0, :3], parents[0, :3], counts[0] = torch.tensor([4400, 100, 7]), -1, 3
    q[0, 0, [100, 4400]] = 0.9  # tied maximum in two chunks: id 100, child node 1
    ids[1, :2], parents[1, :2], counts[1] = torch.tensor([5, 9]), torch.tensor([-1, 0]), 2
    q[1, 0, 5] = 0.9
    q[1, 1, 9] = 0.5
    q[1, 1, 4000] = 0.6  # node 0's row: the child 9 is beaten in the last chunk
    ids[2, :2], parents[2, :2], counts[2] = torch.tensor([5, 5]), -1, 2  # repeated tokens
    q[2, 0, 5] = 0.9
    q[2, 1, 2222] = float("nan")  # on the path (node 0's row): BAD_TARGET_VALUE
    ids[3, :1], parents[3, :1], counts[3] = 5, -1, 1
    q[3, 0, 6] = 0.9  # the root's argmax is no child: the walk stops at the root
    q[3, 1, 3333] = float("inf")  # never read
    ids[4, :2], parents[4, :2], counts[4] = torch.tensor([4400, 9]), -1, 2
    q[4, 0, [100, 4400]] = 0.9  # a tie with a smaller id that is no child: the walk stops, 100
    kw = dict(num_nodes=counts)
    whole, ref = _both(ids, parents, q, mode="greedy", **kw)
    _assert_same(whole, ref, "one program per request")
    S = Status
    assert ref.status.tolist()[:5] == [0, 0, S.BAD_TARGET_VALUE, 0, 0]
    assert ref.token_ids[0, 0] == 100 and ref.num_emitted[1] == 2 and ref.token_ids[1, 1] == 4000
    assert ref.num_emitted[4] == 1 and ref.token_ids[4, 0] == 100
    assert int(ref.num_emitted.max()) >= 3
    orig = _triton_tree.launch_tree
    monkeypatch.setattr(_triton_tree, "launch_tree", functools.partial(orig, chunks=chunks))
    out, _ = _both(ids, parents, q, mode="greedy", **kw)
    _assert_same(out, ref, f"{chunks} programs per request")
    out, ref = _both(ids, parents, q, mode="greedy", max_depth=2, **kw)
    _assert_same(out, ref, f"{chunks} programs per request, max_depth 2")


@INNER
def test_interp_chain_generator_equals_verify():
    """A chain drawn with the generator gives verify()'s tokens (the same Philox coins)."""
    B, K, V = 16, 5, 30
    g = torch.Generator().manual_seed(3)
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 3, -1)
    ids = q[:, :K].argmax(-1)
    be = specsample.get_backend("triton")
    parents = trees.chain(K).expand(B, K).contiguous()
    want = be.verify(ids, None, q, generator=torch.Generator().manual_seed(9))
    got = be.verify_tree(ids, parents, None, q, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got.token_ids, want.token_ids)
    assert torch.equal(got.num_emitted, want.num_emitted)


def _draft_trees(B: int, N: int, V: int, seed: int, kind: str):
    """Trees whose draft rows put their mass on the children's (distinct) tokens and whose target
    rows mostly do not: first children are often rejected, so later siblings, all-rejected
    positions and the residual draws are exercised. Returns ``ids, parents, p, q, u``."""
    g = torch.Generator().manual_seed(seed)
    shape = trees.star if kind == "star" else (lambda n: trees.random_tree(n, generator=g))
    parents = torch.stack([shape(N) for _ in range(B)])
    ids = torch.zeros(B, N, dtype=torch.int64)
    p = torch.rand(B, N, V, generator=g) ** 4
    q = torch.rand(B, N + 1, V, generator=g) ** 4
    for b in range(B):
        for a, kids in enumerate(trees.children(parents[b])):
            toks = torch.randperm(V, generator=g)[: len(kids)]
            ids[b, kids] = toks
            if kids:
                p[b, kids[0], toks] += 0.3
                q[b, a, toks] += 0.1 * torch.rand(len(kids), generator=g)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    return ids, parents, p, q, torch.rand(B, N + 1, generator=g)


def _both_p(ids, parents, p, q, sampling, **kw):
    be = specsample.get_backend("triton")
    out = be.verify_tree(ids, parents, p, q, draft_sampling=sampling, **kw)
    ref = reference_verify_tree(ids, parents, p, q, draft_sampling=sampling, **kw)
    return out, ref


@INNER
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
@pytest.mark.parametrize(
    ("B", "N", "V", "kind", "seed"),
    [(16, 5, 11, "star", 12), (16, 8, 20, "random", 15), (4, 5, 2100, "star", 14)],
)
def test_interp_draft_probs_trees(sampling, B, N, V, kind, seed):
    """Recursive rejection sampling over siblings, exactly the reference: stars (up to five
    siblings tried in turn) and random trees; V = 2100 spans three tiles."""
    ids, parents, p, q, u = _draft_trees(B, N, V, seed, kind)
    out, ref = _both_p(ids, parents, p, q, sampling, uniforms=u)
    _assert_same(out, ref, f"{sampling}, {kind}, N={N}, V={V}")
    if kind == "star":  # later siblings accepted and every sibling rejected both occur
        first = ref.accepted_nodes[:, 0]
        assert bool((first > 0).any()) and bool((first < 0).any()), first.tolist()


@INNER
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interp_draft_probs_half_dtypes(dtype):
    """float16 and bfloat16 rows (widened to float32 on load, as the reference reads them)."""
    ids, parents, p, q, u = _draft_trees(16, 5, 11, 12, "star")
    for sampling in ("with_replacement", "without_replacement"):
        out, ref = _both_p(ids, parents, p.to(dtype), q.to(dtype), sampling, uniforms=u)
        _assert_same(out, ref, f"{sampling}, {dtype}")


@INNER
def test_interp_draft_probs_status_and_fallbacks():
    """Bad draft values up front and in a row read after a rejection, a residual that is all
    zero (p = q), a target row that is all zero, repeated siblings (flagged without replacement
    only), a leaf and an empty tree: status and tokens exactly the reference's."""
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
    q[2, 0] = p[2, 0]  # accepted at once; q[3, 0] = p: never rejected either...
    q[3, 0] = p[3, 0]
    u[3, 0] = 0.99
    q[3, 0, 2] = 0.0  # ...unless the first child's target entry is zero: residual = 0 -> q
    q[3, 0] /= q[3, 0].sum()
    p[3, 0] = q[3, 0]
    p[3, 0, 2] = 0.5
    q[4, 0] = 0.0  # all zero: ZERO_ROW after the first rejection
    ids[5] = torch.tensor([2, 4, 2])  # a repeated sibling
    parents[6] = torch.tensor([-1, 0, 1])  # a chain: each rejection draws from max(0, q - p)
    counts = torch.tensor([3, 3, 3, 3, 3, 3, 3, 0])
    for sampling in ("with_replacement", "without_replacement"):
        out, ref = _both_p(ids, parents, p, q, sampling, uniforms=u, num_nodes=counts)
        _assert_same(out, ref, f"status and fallbacks, {sampling}")
        bits = ref.status.tolist()
        assert bits[0] == Status.BAD_DRAFT_VALUE and bits[1] == Status.BAD_DRAFT_VALUE, bits
        assert bits[4] == Status.ZERO_ROW, bits
        repeated = Status.REPEATED_SIBLING if sampling == "without_replacement" else 0
        assert bits[5] == repeated and bits[2] == bits[3] == bits[6] == bits[7] == 0, bits


@INNER
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_interp_draft_probs_chain_equals_verify(sampling):
    """A chain with draft probabilities, coins from the generator: verify()'s tokens exactly."""
    B, K, V = 16, 4, 30
    g = torch.Generator().manual_seed(4)
    q = torch.softmax(torch.randn(B, K + 1, V, generator=g) * 2, -1)
    p = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1)
    ids = torch.multinomial(p.reshape(B * K, V), 1, generator=g).reshape(B, K)
    be = specsample.get_backend("triton")
    parents = trees.chain(K).expand(B, K).contiguous()
    want = be.verify(ids, p, q, generator=torch.Generator().manual_seed(9))
    got = be.verify_tree(
        ids, parents, p, q, draft_sampling=sampling, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(got.token_ids, want.token_ids)
    assert torch.equal(got.num_emitted, want.num_emitted)
    assert bool((want.num_emitted <= K).any())  # some drafts rejected


@INNER
@pytest.mark.parametrize("mode", ["random", "greedy"])
def test_interp_max_depth_beyond_and_zero(mode):
    """max_depth > N (columns no path reaches are -1) and max_depth = 0 (only an empty tree is
    valid: the others are BAD_TREE)."""
    ids, parents, counts, q, u = _random_trees(6, 5, 20, 4)
    counts[0] = 0
    kw = dict(num_nodes=counts, uniforms=u if mode == "random" else None)
    for depth in (0, 11):
        out, ref = _both(ids, parents, q, mode=mode, max_depth=depth, **kw)
        _assert_same(out, ref, f"{mode}, max_depth={depth}")
    assert int(ref.num_emitted[0]) == 1


# ----------------------------------------------------------------------------- compiled (GPU)

GPU = pytest.mark.skipif(
    not (HAVE_TRITON and torch.cuda.is_available()) or _interp(),
    reason="needs a CUDA device and the compiled kernel",
)


@GPU
@pytest.mark.parametrize("mode", ["random", "greedy"])
@pytest.mark.parametrize(("N", "V"), [(9, 37), (64, 128256)])
def test_gpu_random_trees(mode, N, V):
    """The compiled kernel on padded random trees, one and many tiles, against the reference."""
    ids, parents, counts, q, u = _random_trees(8, N, V, 5)
    kw = dict(num_nodes=counts.cuda(), uniforms=u.cuda() if mode == "random" else None)
    be = specsample.get_backend("triton")
    out = be.verify_tree(ids.cuda(), parents.cuda(), None, q.cuda(), mode=mode, **kw)
    kw = dict(num_nodes=counts, uniforms=u if mode == "random" else None)
    ref = reference_verify_tree(ids, parents, None, q, mode=mode, **kw)
    for name in ("status", "num_emitted", "accepted_nodes", "token_ids"):
        assert torch.equal(getattr(out, name).cpu(), getattr(ref, name)), name


@GPU
@pytest.mark.parametrize("mode", ["random", "greedy"])
@pytest.mark.parametrize(
    ("B", "V", "chunks"), [(2, 128256, None), (2, 128256, 3), (64, 32000, None)]
)
def test_gpu_split_walks(monkeypatch, mode, B, V, chunks):
    """Target-only and greedy walks shared by several programs per request on the device (the
    launch's own choice, 32 or 4 per request here, or 3 forced), their atomics and the workspace
    included, against the reference."""
    import functools

    from specsample.backends import _triton_tree

    if chunks is not None:
        orig = _triton_tree.launch_tree
        monkeypatch.setattr(_triton_tree, "launch_tree", functools.partial(orig, chunks=chunks))
    ids, parents, counts, q, u = _random_trees(B, 16, V, 7 + B)
    be = specsample.get_backend("triton")
    for _ in range(2):  # the second call reuses the workspace and its reset counters
        kw = dict(num_nodes=counts.cuda(), uniforms=u.cuda() if mode == "random" else None)
        out = be.verify_tree(ids.cuda(), parents.cuda(), None, q.cuda(), mode=mode, **kw)
        kw = dict(num_nodes=counts, uniforms=u if mode == "random" else None)
        ref = reference_verify_tree(ids, parents, None, q, mode=mode, **kw)
        for name in ("status", "num_emitted", "accepted_nodes", "token_ids"):
            assert torch.equal(getattr(out, name).cpu(), getattr(ref, name)), name


@GPU
def test_gpu_graph_replays_draw_fresh_coins():
    """Under CUDA graph capture the Philox key is drawn by a replayed op: replays differ."""
    B, N, V = 64, 8, 16
    ids, parents, counts, q, _ = _random_trees(B, N, V, 6)
    ids, parents, q = ids.cuda(), parents.cuda(), q.cuda()
    counts = counts.cuda()
    be = specsample.get_backend("triton")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # compile outside the capture
        be.verify_tree(ids, parents, None, q, num_nodes=counts)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = be.verify_tree(ids, parents, None, q, num_nodes=counts)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.token_ids.clone())
    torch.cuda.synchronize()
    assert bool((out.status == 0).all())
    assert len({tuple(d.flatten().tolist()) for d in draws}) == 3


@GPU
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
@pytest.mark.parametrize(("B", "N", "V", "kind"), [(16, 8, 37, "star"), (8, 64, 128256, "random")])
def test_gpu_draft_probs_trees(sampling, B, N, V, kind):
    """The compiled kernel with draft probabilities (siblings tried in turn, one and many tiles)
    against the reference: status and path exactly, the last token up to proven near-ties (the
    conformance comparison: at V = 128256 float32 tile sums can move a CDF boundary)."""
    from specsample.conformance.checks import Target
    from specsample.conformance.tree_common import TreeCase, compare_tree

    ids, parents, p, q, u = _draft_trees(B, N, V, 11, kind)
    counts = torch.full((B,), N, dtype=torch.int64)
    case = TreeCase(ids, parents, counts, p, q, u, f"{kind} trees, N={N}, V={V}")
    target = Target("triton", specsample.get_backend("triton"), "full", torch.device("cuda"))
    compare_tree(target, case, "random", sampling, "token")
