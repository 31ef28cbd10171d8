"""The float64 tree reference: chains equal reference_verify, worked examples, validation, status,
and exact losslessness of every random rule for small vocabularies."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from specsample import Status
from specsample.reference import reference_verify
from specsample.reference_tree import reference_verify_tree

# -- chains are verify() -------------------------------------------------------------------------


def _random_chain_case(g: torch.Generator, B: int, K: int, V: int, id_dtype: torch.dtype):
    q = torch.rand(B, K + 1, V, generator=g) ** 3
    q = q / q.sum(-1, keepdim=True)
    p = torch.rand(B, K, V, generator=g) ** 3
    p = p / p.sum(-1, keepdim=True)
    ids = torch.randint(0, V, (B, K), generator=g)
    # make acceptance likely for some drafts (argmax of the target) so walks go deep
    take = torch.rand(B, K, generator=g) < 0.5
    ids = torch.where(take, q[:, :K].argmax(-1), ids)
    u = torch.rand(B, K + 1, generator=g)
    if B > 2 and K > 0:  # a bad value, an out-of-range id, an extreme coin
        q[0, K, 0] = float("nan")
        ids[1, K - 1] = V + 3
        u[2, 0] = 1.0 - 2.0**-24
    return ids.to(id_dtype), p, q, u


@pytest.mark.parametrize(
    ("id_dtype", "prob_dtype"),
    [
        (torch.int32, torch.float32),
        (torch.int64, torch.float32),
        (torch.int64, torch.float16),
        (torch.int32, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("K", [0, 1, 2, 5])
def test_chain_equals_reference_verify(id_dtype, prob_dtype, K):
    g = torch.Generator().manual_seed(1000 + K)
    parents = torch.arange(-1, K - 1, dtype=torch.int64).expand(40, K)
    for trial in range(3):
        ids, p, q, u = _random_chain_case(g, 40, K, 6, id_dtype)
        p, q = p.to(prob_dtype), q.to(prob_dtype)
        cases = [("greedy", None, None), ("random", None, None)]
        cases += [("random", p, s) for s in ("with_replacement", "without_replacement")]
        for mode, probs, sampling in cases:
            want = reference_verify(ids, probs, q, mode=mode, uniforms=u)
            got = reference_verify_tree(
                ids, parents, probs, q, mode=mode, draft_sampling=sampling, uniforms=u
            )
            where = f"K={K} trial={trial} mode={mode} p={'yes' if probs is not None else 'no'}"
            assert torch.equal(got.token_ids, want.token_ids), where
            assert torch.equal(got.num_emitted, want.num_emitted), where
            assert torch.equal(got.status, want.status), where
            # the accepted path of a chain is nodes 0..num_emitted-2
            for b in range(40):
                n = max(int(want.num_emitted[b]) - 1, 0)
                expect = list(range(n)) + [-1] * (K - n)
                assert got.accepted_nodes[b].tolist() == expect, where


def test_chain_consumes_the_generator_like_reference_verify():
    g = torch.Generator().manual_seed(7)
    ids, p, q, _ = _random_chain_case(g, 16, 3, 5, torch.int64)
    parents = torch.tensor([[-1, 0, 1]] * 16)
    want = reference_verify(ids, p, q, generator=torch.Generator().manual_seed(3))
    got = reference_verify_tree(
        ids,
        parents,
        p,
        q,
        draft_sampling="with_replacement",
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(got.token_ids, want.token_ids)


def _random_tree(g: torch.Generator, N: int, V: int, distinct: bool):
    """Random parents in topological order and tokens (distinct among siblings if asked)."""
    parents: list[int] = []
    ids: list[int] = []
    for i in range(N):
        taken = {a: {ids[j] for j in range(i) if parents[j] == a} for a in range(-1, i)}
        # with distinct siblings a position holds at most V children; node i-1 has none yet
        open_ = [a for a in range(-1, i) if not distinct or len(taken[a]) < V]
        a = open_[int(torch.randint(0, len(open_), (1,), generator=g))]
        free = [x for x in range(V) if not distinct or x not in taken[a]]
        parents.append(a)
        ids.append(free[int(torch.randint(0, len(free), (1,), generator=g))])
    return parents, ids


@pytest.mark.parametrize(
    "rule", ["greedy", "target-only", "with_replacement", "without_replacement"]
)
def test_random_trees_walk_a_real_path(rule):
    """On random trees: the accepted nodes form a root-to-node path whose tokens are emitted, the
    last token has positive weight where it was drawn, and greedy follows the argmaxes."""
    g = torch.Generator().manual_seed(99)
    V, N, B = 5, 9, 60
    trees = [_random_tree(g, N, V, distinct=rule != "with_replacement") for _ in range(B)]
    parents = torch.tensor([t[0] for t in trees])
    ids = torch.tensor([t[1] for t in trees])
    q = torch.rand(B, N + 1, V, generator=g) ** 4
    q = q / q.sum(-1, keepdim=True)
    p = torch.rand(B, N, V, generator=g)
    p = p / p.sum(-1, keepdim=True)
    mode = "greedy" if rule == "greedy" else "random"
    probs = p if rule.endswith("replacement") else None
    sampling = rule if probs is not None else None
    out = reference_verify_tree(
        ids, parents, probs, q, mode=mode, draft_sampling=sampling, generator=g
    )
    assert out.status.eq(0).all()
    depths_seen = set()
    for b in range(B):
        n = int(out.num_emitted[b])
        path = out.accepted_nodes[b, : n - 1].tolist()
        assert out.accepted_nodes[b, n - 1 :].eq(-1).all() and out.token_ids[b, n:].eq(-1).all()
        pos = 0
        for node in path:
            assert int(parents[b, node]) + 1 == pos, (b, path)
            if mode == "greedy":
                assert int(ids[b, node]) == int(q[b, pos].argmax())
            pos = node + 1
        assert out.token_ids[b, : n - 1].tolist() == [int(ids[b, c]) for c in path]
        last = int(out.token_ids[b, n - 1])
        assert q[b, pos, last] > 0
        if mode == "greedy":
            assert last == int(q[b, pos].argmax())
        depths_seen.add(len(path))
    assert len(depths_seen) >= 3, depths_seen  # the walks are not all trivial


# -- worked examples ---------------------------------------------------------------------------
# Tree: node 0 (token 2) and node 1 (token 1) are children of the root; node 2 (token 3) is a
# child of node 0. Positions: 0 root, 1 node 0, 2 node 1, 3 node 2. V = 4.

IDS = torch.tensor([[2, 1, 3]])
PARENTS = torch.tensor([[-1, -1, 0]])


def _q(row0):
    return torch.tensor(
        [[row0, [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]
    )


def _run(q, u, p=None, sampling=None, mode="random"):
    out = reference_verify_tree(
        IDS,
        PARENTS,
        p,
        q,
        mode=mode,
        draft_sampling=sampling,
        uniforms=torch.tensor([u]),
        max_depth=2,  # the tree's depth (the default is N = 3)
    )
    return out.token_ids[0].tolist(), out.accepted_nodes[0].tolist(), int(out.status[0])


@pytest.mark.parametrize(
    ("u", "tokens", "nodes"),
    [
        # coin 0.1 in node 0's bucket [0, 0.3): accept node 0; node 2's coin 0.2 < 0.25: accept;
        # leaf row [0, 0, 0, 1] gives 3
        ([0.1, 0.9, 0.2, 0.6], [2, 3, 3], [0, 2]),
        # coin 0.35 in node 1's bucket [0.3, 0.5): accept node 1 (a leaf); row [.5, .5, 0, 0]
        # with coin 0.6 gives token 1
        ([0.35, 0.0, 0.0, 0.6], [1, 1, -1], [1, -1]),
        # node 0 accepted, node 2's coin 0.25 is not < 0.25: emit from row 1 without token 3:
        # [1/3, 1/3, 1/3, 0] with coin 0.7 gives token 2
        ([0.0, 0.0, 0.25, 0.7], [2, 2, -1], [0, -1]),
        # coin 0.6 past both buckets: emit from [0.1, 0, 0, 0.4] (tokens 2 and 1 removed); coin
        # 0.1 -> 0.05 < 0.1: token 0; coin 0.3 -> 0.15 >= 0.1: token 3
        ([0.6, 0.0, 0.0, 0.1], [0, -1, -1], [-1, -1]),
        ([0.6, 0.0, 0.0, 0.3], [3, -1, -1], [-1, -1]),
    ],
)
def test_worked_example_target_only(u, tokens, nodes):
    assert _run(_q([0.1, 0.2, 0.3, 0.4]), u) == (tokens, nodes, 0)


def test_worked_example_with_draft_probs():
    # root children drawn from p = uniform (draft_probs[0, 0]; node 1's row is not read: NaN).
    # node 0 (token 2): accept iff u0 * 0.25 < 0.1, i.e. u0 < 0.4; u0 = 0.5 rejects.
    # residual max(0, q - p) = [0, .05, 0, .25] -> q' = [0, 1/6, 0, 5/6].
    # with replacement: node 1 (token 1) accepted iff u1 * 0.25 < 1/6 (u1 < 2/3): 0.6 accepts.
    # without replacement: p' = [1/3, 1/3, 0, 1/3]: u1 / 3 < 1/6 iff u1 < 0.5: 0.6 rejects, and the
    # last token comes from max(0, q' - p') = [0, 0, 0, 1/2]: token 3.
    q = _q([0.1, 0.3, 0.1, 0.5])
    p = torch.full((1, 3, 4), 0.25)
    p[0, 1] = float("nan")
    u = [0.5, 0.6, 0.0, 0.3]
    assert _run(q, u, p, "with_replacement") == ([1, 0, -1], [1, -1], 0)
    assert _run(q, u, p, "without_replacement") == ([3, -1, -1], [-1, -1], 0)
    # u0 = 0.3 accepts node 0, then node 2 against row 1 with p = draft_probs[0, 2]
    assert _run(q, [0.3, 0.6, 0.0, 0.3], p, "with_replacement") == ([2, 3, 3], [0, 2], 0)


def test_worked_example_greedy():
    q = _q([0.1, 0.4, 0.4, 0.1])  # tie between 1 and 2 -> 1: node 1 (a leaf), then argmax of row 2
    assert _run(q, [0.0] * 4, mode="greedy") == ([1, 0, -1], [1, -1], 0)
    q = _q([0.1, 0.2, 0.6, 0.1])  # node 0, then row 1 is flat: argmax 0 != 3
    assert _run(q, [0.0] * 4, mode="greedy") == ([2, 0, -1], [0, -1], 0)


def test_greedy_takes_the_first_matching_sibling_and_tolerates_repeats():
    ids = torch.tensor([[1, 1, 0]])
    parents = torch.tensor([[-1, -1, 1]])
    q = torch.tensor([[[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.5, 0.5]]])
    out = reference_verify_tree(ids, parents, None, q, mode="greedy")
    assert out.accepted_nodes.tolist() == [[0, -1, -1]]  # D defaults to N = 3
    assert out.token_ids.tolist() == [[1, 0, -1, -1]]


def test_padding_nodes_are_ignored_and_max_depth_pads_the_output():
    ids = torch.tensor([[2, 1, 3], [2, 7, 7]])
    parents = torch.tensor([[-1, -1, 0], [-1, 5, 9]])  # request 1: nodes 1, 2 are padding
    q = torch.cat([_q([0.1, 0.2, 0.3, 0.4])] * 2)
    u = torch.tensor([[0.1, 0.9, 0.2, 0.6], [0.1, 2.0, 2.0, 0.6]])  # padding coins not read
    out = reference_verify_tree(
        ids, parents, None, q, num_nodes=torch.tensor([3, 1]), uniforms=u, max_depth=4
    )
    assert out.status.tolist() == [0, 0]
    assert out.token_ids.tolist() == [[2, 3, 3, -1, -1], [2, 2, -1, -1, -1]]  # flat row 1
    assert out.accepted_nodes.tolist() == [[0, 2, -1, -1], [0, -1, -1, -1]]
    assert out.num_emitted.tolist() == [3, 2]


def test_empty_trees():
    q = torch.tensor([[[0.5, 0.5]], [[0.0, 1.0]]])
    empty = torch.zeros(2, 0, dtype=torch.int64)
    out = reference_verify_tree(empty, empty, None, q, uniforms=torch.tensor([[0.7], [0.1]]))
    assert out.token_ids.tolist() == [[1], [1]]
    assert out.status.tolist() == [0, 0]
    assert out.accepted_nodes.shape == (2, 0)
    ids = torch.tensor([[0, 1]])
    out = reference_verify_tree(
        ids,
        torch.tensor([[-1, 0]]),
        None,
        torch.full((1, 3, 2), 0.5),
        num_nodes=torch.tensor([0]),
        uniforms=torch.tensor([[0.9, 0.9, 0.7]]),
        max_depth=0,
    )
    assert out.token_ids.tolist() == [[1]] and out.num_emitted.tolist() == [1]


# -- status ------------------------------------------------------------------------------------


def test_status_reads_where_the_walk_goes():
    q = _q([0.1, 0.2, 0.3, 0.4])
    q[0, 3, 0] = float("nan")  # node 2's row: read only when the walk reaches node 2's leaf
    ok = [0.35, 0.0, 0.0, 0.6]  # accepts node 1 and never reads row 3
    assert _run(q, ok)[2] == 0
    assert _run(q, [0.1, 0.9, 0.2, 0.6]) == ([-1, -1, -1], [-1, -1], int(Status.BAD_TARGET_VALUE))
    q = _q([0.1, 0.2, 0.3, 0.4])
    q[0, 0, 1] = -1.0  # a drafted entry (node 1's token in the root row): always read
    assert _run(q, ok)[2] == int(Status.BAD_TARGET_VALUE)
    assert _run(_q([0.1, 0.2, 0.3, 0.4]), [0.35, 1.0, 0.0, 0.6])[2] == int(Status.BAD_UNIFORM)
    ids = torch.tensor([[2, 9, 3]])
    out = reference_verify_tree(
        ids, PARENTS, None, _q([0.1, 0.2, 0.3, 0.4]), mode="greedy", max_depth=2
    )
    assert out.status.tolist() == [int(Status.BAD_DRAFT_ID)]
    assert out.token_ids.tolist() == [[-1, -1, -1]] and out.num_emitted.tolist() == [0]
    zero = _q([0.0, 0.0, 0.0, 0.0])
    assert _run(zero, [0.5, 0.0, 0.0, 0.6])[2] == int(Status.ZERO_ROW)
    p = torch.full((1, 3, 4), 0.25)
    assert _run(zero, [0.5, 0.0, 0.0, 0.6], p, "with_replacement")[2] == int(Status.ZERO_ROW)
    p[0, 0, 0] = float("inf")  # the root's draft row, read in full after node 0 is rejected
    assert _run(_q([0.1, 0.3, 0.1, 0.5]), [0.5, 0.6, 0.0, 0.3], p, "with_replacement")[2] == int(
        Status.BAD_DRAFT_VALUE
    )


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parents", "kwargs", "match"),
    [
        ([[-1, 2, 0]], {}, r"request 0, node 1 has parent 2; expected -1 \(the root\) or a node"),
        ([[-1, -2, 0]], {}, r"request 0, node 1 has parent -2"),
        ([[-1, 0, 0]], {"num_nodes": torch.tensor([1])}, None),
        ([[-1, 0, 1]], {"max_depth": 2}, r"request 0, node 2 is at depth 3, beyond max_depth=2"),
        ([[-1, -1, -1]], {}, r"request 0, node 1 repeats token 1 of its sibling node 0"),
    ],
)
def test_structure_errors_name_request_and_node(parents, kwargs, match):
    ids = torch.tensor([[1, 1, 2]])
    q = torch.full((1, 4, 3), 1 / 3)
    call = lambda validate: reference_verify_tree(  # noqa: E731
        ids, torch.tensor(parents), None, q, uniforms=torch.zeros(1, 4), validate=validate, **kwargs
    )
    if match is None:
        call("full")  # node 0 alone is real; padding parents are not read
        assert call("status").status.tolist() == [0]
    else:
        with pytest.raises(ValueError, match=match):
            call("full")
        out = call("status")  # the default: the request is flagged, nothing raises
        bit = Status.REPEATED_SIBLING if "repeats" in match else Status.BAD_TREE
        assert out.status.tolist() == [int(bit)]
        assert out.num_emitted.tolist() == [0] and out.token_ids.eq(-1).all()
        assert out.accepted_nodes.eq(-1).all()


def test_num_nodes_out_of_range():
    ids = torch.tensor([[1, 2], [1, 2], [0, 1]])
    q = torch.full((3, 3, 3), 1 / 3)
    parents = torch.tensor([[-1, 0]] * 3)
    nodes = torch.tensor([3, -1, 2])
    out = reference_verify_tree(ids, parents, None, q, num_nodes=nodes, uniforms=torch.zeros(3, 3))
    assert out.status.tolist() == [int(Status.BAD_TREE)] * 2 + [0]
    with pytest.raises(ValueError, match=r"num_nodes: request 0 has 3 nodes; expected 0..N=2"):
        reference_verify_tree(
            ids, parents, None, q, num_nodes=nodes, uniforms=torch.zeros(3, 3), validate="full"
        )


def test_padding_parent_of_a_real_node_is_named():
    ids = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"request 0, node 1 has parent 2, a padding node"):
        reference_verify_tree(
            ids,
            torch.tensor([[-1, 2, -1]]),
            None,
            torch.full((1, 4, 3), 1 / 3),
            num_nodes=torch.tensor([2]),
            uniforms=torch.zeros(1, 4),
            validate="full",
        )


def test_repeated_siblings_by_rule():
    ids = torch.tensor([[1, 1]])
    parents = torch.tensor([[-1, -1]])
    q = torch.full((1, 3, 3), 1 / 3)
    p = torch.full((1, 2, 3), 1 / 3)
    u = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="without-replacement rule needs distinct sibling"):
        reference_verify_tree(
            ids, parents, p, q, draft_sampling="without_replacement", uniforms=u, validate="full"
        )
    with pytest.raises(ValueError, match="target-only rule needs distinct sibling"):
        reference_verify_tree(ids, parents, None, q, uniforms=u, validate="full")
    flagged = reference_verify_tree(ids, parents, None, q, uniforms=u)
    assert flagged.status.tolist() == [int(Status.REPEATED_SIBLING)]
    reference_verify_tree(ids, parents, p, q, draft_sampling="with_replacement", uniforms=u)
    reference_verify_tree(ids, parents, None, q, mode="greedy")
    with pytest.raises(ValueError, match="draft_sampling must be one of"):
        reference_verify_tree(ids, parents, p, q, uniforms=u)
    with pytest.raises(ValueError, match=r"parents has shape \(1, 3\); expected \[B, N\]"):
        reference_verify_tree(ids, torch.tensor([[-1, 0, 1]]), None, q, uniforms=u)


# -- exact losslessness --------------------------------------------------------------------------
# Dyadic rows sum to exactly one in float32 and float64. For fixed drafted tokens, the first emitted
# token is a function of the root's coins that is constant on a grid of cells whose edges are the
# decision thresholds (computed here independently). Each cell's outcome is read from the
# reference at its midpoint and just inside each of its faces (so a threshold of the reference
# that sat elsewhere would show as an outcome changing inside a cell); the cells' volumes then give
# the exact probability of each first token.

Q0 = [6 / 16, 1 / 16, 0.0, 9 / 16]
P0 = [3 / 16, 7 / 16, 4 / 16, 2 / 16]
EPS = 2e-6  # well above float32 rounding of a coin near 1 (6e-8)


def _cells(points):
    edges = [0.0]
    for x in sorted(min(max(x, 0.0), 1.0) for x in [*points, 1.0]):
        if x - edges[-1] > 1e-12:  # a breakpoint that rounding put next to another is the same
            edges.append(x)
    edges[-1] = 1.0
    return list(zip(edges[:-1], edges[1:], strict=True))


def _rrs_thresholds(tokens, sampling):
    """Accept thresholds of each root child's coin and the last draw's CDF breakpoints."""
    q = torch.tensor(Q0, dtype=torch.float64)
    p = torch.tensor(P0, dtype=torch.float64)
    thresholds, tried = [], []
    for x in tokens:
        pp = p.clone()
        if sampling == "without_replacement":
            pp[tried] = 0.0
            pp = pp / pp.sum()
        thresholds.append([float(q[x] / pp[x]) if pp[x] > 0 else 2.0])
        r = torch.clamp(q - pp, min=0.0)
        q = r / r.sum() if r.sum() > 0 else q
        tried.append(x)
    return thresholds, torch.cumsum(q, 0).tolist()


def _exact_first_token(tokens_list, weights, coin_cells_of, p_rows):
    """Exact law of the first emitted token over drafted token tuples and the root's coins."""
    m = len(tokens_list[0])
    V = len(Q0)
    requests, meta = [], []
    for t_idx, tokens in enumerate(tokens_list):
        cells_per_coin = coin_cells_of(tokens)
        for cell in itertools.product(*cells_per_coin):
            mid = [(a + b) / 2 for a, b in cell]
            probes = [mid]
            for j, (a, b) in enumerate(cell):
                assert b - a > 4 * EPS, "a cell too narrow for float32 coins"
                for edge in (a + EPS, b - EPS):
                    probes.append(mid[:j] + [edge] + mid[j + 1 :])
            for probe in probes:
                requests.append((tokens, probe))
            vol = math.prod(b - a for a, b in cell)
            meta.append((t_idx, vol, len(probes)))
    B = len(requests)
    # star of m children, plus one grandchild under node 0 (fixed token, fixed coin)
    ids = torch.tensor([list(t) + [0] for t, _ in requests])
    parents = torch.tensor([[-1] * m + [0]] * B)
    n = m + 1
    q = torch.tensor([Q0] + [[0.25] * V] * n, dtype=torch.float32).expand(B, n + 1, V)
    u = torch.zeros(B, n + 1)
    for b, (_, probe) in enumerate(requests):
        coins = probe[:-1]
        u[b, : len(coins)] = torch.tensor(coins)
        u[b, m] = 0.5
        u[b, n] = probe[-1]
    return ids, parents, q, u, meta, weights, p_rows


def _law(ids, parents, q, u, meta, weights, p_rows, sampling=None):
    probs = None
    if p_rows is not None:
        probs = torch.tensor(p_rows, dtype=torch.float32).expand(ids.shape[0], -1, -1)
    out = reference_verify_tree(ids, parents, probs, q, draft_sampling=sampling, uniforms=u)
    assert out.status.eq(0).all()
    first = out.token_ids[:, 0].tolist()
    law = [0.0] * len(Q0)
    at = 0
    for t_idx, vol, k in meta:
        outcomes = set(first[at : at + k])
        assert len(outcomes) == 1, f"outcome changes inside a cell: {first[at : at + k]}"
        law[first[at]] += weights[t_idx] * vol
        at += k
    return law


@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_multi_draft_rules_are_exactly_lossless(sampling, m):
    V = len(Q0)
    if sampling == "with_replacement":
        tuples = list(itertools.product(range(V), repeat=m))
        weights = [math.prod(P0[x] for x in t) for t in tuples]
    else:
        tuples, weights = [], []
        for t in itertools.permutations(range(V), m):
            w, left = 1.0, 1.0
            for x in t:
                w *= P0[x] / left
                left -= P0[x]
            tuples.append(t)
            weights.append(w)
    assert abs(sum(weights) - 1.0) < 1e-15

    def coin_cells(tokens):
        thresholds, final = _rrs_thresholds(tokens, sampling)
        return [_cells(t) for t in thresholds] + [_cells(final)]

    p_rows = [P0] * m + [[0.25] * V]
    case = _exact_first_token(tuples, weights, coin_cells, p_rows)
    law = _law(*case, sampling=sampling)
    assert max(abs(a - b) for a, b in zip(law, Q0, strict=True)) < 1e-12, (law, Q0)


@pytest.mark.parametrize("children", [(3,), (2,), (0, 3), (3, 0, 1), (2, 1, 0), (1, 2, 3, 0)])
def test_target_only_is_exactly_lossless_for_any_fixed_distinct_children(children):
    # only the first child's coin and the last draw's coin matter: the others get one cell
    def coin_cells(tokens):
        cdf = list(itertools.accumulate(Q0[x] for x in tokens))
        rest = [0.0 if i in tokens else Q0[i] for i in range(len(Q0))]
        total = sum(rest)
        final = [c / total for c in itertools.accumulate(rest)] if total > 0 else []
        return [_cells(cdf)] + [[(0.0, 1.0)]] * (len(tokens) - 1) + [_cells(final)]

    case = _exact_first_token([children], [1.0], coin_cells, None)
    law = _law(*case)
    assert max(abs(a - b) for a, b in zip(law, Q0, strict=True)) < 1e-12, (law, Q0)


def test_losslessness_check_catches_a_wrong_rule():
    # the same integration applied to a tree whose root children were not drawn from P0 under
    # with-replacement weights (weights of a different draft) is not lossless: the check can fail
    tuples = list(itertools.product(range(len(Q0)), repeat=1))
    weights = [0.25] * 4

    def coin_cells(tokens):
        thresholds, final = _rrs_thresholds(tokens, "with_replacement")
        return [_cells(t) for t in thresholds] + [_cells(final)]

    case = _exact_first_token(tuples, weights, coin_cells, [P0, [0.25] * 4])
    law = _law(*case, sampling="with_replacement")
    assert max(abs(a - b) for a, b in zip(law, Q0, strict=True)) > 1e-3


def test_boundary_coins_target_only():
    # the root's first child has probability zero: coin 0 must not accept it, but the next one
    q = _q([0.5, 0.5, 0.0, 0.0])
    assert _run(q, [0.0, 0.0, 0.0, 0.0])[:2] == ([1, 0, -1], [1, -1])
    # the largest float32 coin below one walks past every bucket; the last draw ends on the
    # last positive token of what is left ([0.5, 0, 0, 0]: token 0), never past it
    top = 1.0 - 2.0**-24
    assert _run(q, [top, 0.0, 0.0, top])[:2] == ([0, -1, -1], [-1, -1])
    # a bucket's upper edge is outside it: node 0's bucket is empty, node 1's is [0, 0.5), so the
    # coin 0.5 goes to the last draw
    assert _run(q, [0.5, 0.0, 0.0, 0.0])[:2] == ([0, -1, -1], [-1, -1])


def _exact_law(ids, parents, q, probs, sampling, cells_per_coin, outcome):
    """Exact law of ``outcome(token_ids_row)`` over the coins of one request, integrated on the
    product of ``cells_per_coin`` ([N+1] lists of cells), probing each cell inside its faces."""
    probes, vols = [], []
    for cell in itertools.product(*cells_per_coin):
        mid = [(a + b) / 2 for a, b in cell]
        group = [mid]
        for j, (a, b) in enumerate(cell):  # an unused coin's faces too: it must not matter
            assert b - a > 4 * EPS, "a cell too narrow for float32 coins"
            group += [mid[:j] + [e] + mid[j + 1 :] for e in (a + EPS, b - EPS)]
        probes.append(group)
        vols.append(math.prod(b - a for a, b in cell))
    u = torch.tensor([c for group in probes for c in group], dtype=torch.float32)
    B = u.shape[0]
    expand = lambda t: None if t is None else t.expand(B, *t.shape[1:])  # noqa: E731
    out = reference_verify_tree(
        expand(ids), expand(parents), expand(probs), expand(q), draft_sampling=sampling, uniforms=u
    )
    assert out.status.eq(0).all()
    law: dict = {}
    at = 0
    for group, vol in zip(probes, vols, strict=True):
        seen = {outcome(out.token_ids[at + k].tolist()) for k in range(len(group))}
        assert len(seen) == 1, f"outcome changes inside a cell: {seen}"
        key = seen.pop()
        law[key] = law.get(key, 0.0) + vol
        at += len(group)
    return law


def test_target_only_two_levels_is_exactly_the_target_sequence_law():
    # node 0 (token 3) and node 1 (token 0) under the root; node 2 (1) and node 3 (3) under node 0;
    # node 4 (2) under node 1. The law of the first two emitted tokens must be q0(x) * q_x(y) when
    # x is a child's token (y drawn after it), and q0(x) alone (nothing after it) otherwise.
    Q1 = [2 / 16, 5 / 16, 1 / 16, 8 / 16]
    Q2 = [4 / 16, 4 / 16, 7 / 16, 1 / 16]
    flat = [0.25] * 4
    ids = torch.tensor([[3, 0, 1, 3, 2]])
    parents = torch.tensor([[-1, -1, 0, 0, 1]])
    q = torch.tensor([[Q0, Q1, Q2, flat, flat, flat]])

    def cdf(row, tokens):
        return list(itertools.accumulate(row[x] for x in tokens))

    def rest(row, tokens):
        r = [0.0 if i in tokens else row[i] for i in range(4)]
        return [c / sum(r) for c in itertools.accumulate(r)]

    one = [(0.0, 1.0)]
    cells = [
        _cells(cdf(Q0, [3, 0])),  # node 0's coin: the root's walk
        one,  # node 1's coin: unused
        _cells(cdf(Q1, [1, 3])),  # node 2's coin: node 0's walk
        one,  # node 3's coin: unused
        _cells(cdf(Q2, [2])),  # node 4's coin: node 1's walk
        _cells(rest(Q0, [3, 0]) + rest(Q1, [1, 3]) + rest(Q2, [2])),  # the last draw
    ]
    law = _exact_law(ids, parents, q, None, None, cells, lambda row: (row[0], row[1]))
    expected = {(x, -1): Q0[x] for x in (1, 2) if Q0[x] > 0}
    expected |= {(3, y): Q0[3] * Q1[y] for y in range(4) if Q1[y] > 0}
    expected |= {(0, y): Q0[0] * Q2[y] for y in range(4) if Q2[y] > 0}
    assert law.keys() == expected.keys()
    assert max(abs(law[k] - expected[k]) for k in law) < 1e-12, law
