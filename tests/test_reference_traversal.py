"""Traversal verification's float64 reference: exact losslessness, chain = block, dominance,
mutants, and the torch-loop backend against the reference.

Setting of the exact checks: the target and the drafter are functions of the whole prefix (a
table ``prefix -> row`` over V tokens, rows with zeros), the tree's shape is fixed, and every node's
children are drawn independently from the drafter's row at their parent (with replacement, the
process traversal verification assumes). The draft trees are enumerated with their
probabilities and the coins integrated exactly with
:func:`specsample.reference_traversal.traversal_outcomes` (every node is tried at most once with
its own coin). One step emits the accepted path and one drawn token; completed to length
``depth + 1`` by draws from the target, a lossless step gives exactly the target's law of
sequences ``prod_j q(s_j | s_<j)``. The checks compare, in this order, the first token, the first
two tokens and the whole completed sequence. With :class:`fractions.Fraction` rows the laws are
compared with ``==`` (an exact proof for that instance); with float64 rows (at most 6 entries,
at most 6**5 draft trees) the rounding stays below 1e-13 and the tolerance is 1e-12.
"""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import pytest
import specsample
import torch
from mutants_traversal import MUTANTS
from specsample import trees
from specsample.backends._traversal_loop import _reject as _right_reject
from specsample.reference_block import (
    accepted_length,
    block_thresholds,
)
from specsample.reference_traversal import post_order, traversal_outcomes, traverse
from specsample.reference_tree import reference_verify_tree

TOL = 1e-12

#: tree shapes (parents), depth <= 3 and <= 5 nodes
SHAPES = {
    "chain3": [-1, 0, 1],
    "fork": [-1, 0, 0],
    "two roots": [-1, -1, 0],
    "y": [-1, 0, 0, 1],
    "mixed5": [-1, 0, -1, 1, 2],
    "deep5": [-1, 0, 1, 1, 0],
}


def random_row(rng: random.Random, V: int, exact: bool, zeros: bool = True):
    raw = [rng.randint(0, 6) if zeros else rng.randint(1, 6) for _ in range(V)]
    if sum(raw) == 0:
        raw[rng.randrange(V)] = 1
    if exact:
        total = sum(raw)
        return [Fraction(x, total) for x in raw]
    total = float(sum(raw))
    return [x / total for x in raw]


class Model:
    """Prefix-dependent target and draft rows, drawn lazily from one seed."""

    def __init__(self, V: int, seed: int, exact: bool, same: bool = False):
        self.V, self.exact, self.same = V, exact, same
        self.rng = random.Random(seed)
        self.q: dict[tuple, list] = {}
        self.p: dict[tuple, list] = {}

    def target(self, prefix: tuple) -> list:
        if prefix not in self.q:
            self.q[prefix] = random_row(self.rng, self.V, self.exact)
        return self.q[prefix]

    def draft(self, prefix: tuple) -> list:
        if self.same:
            return self.target(prefix)
        if prefix not in self.p:
            self.p[prefix] = random_row(self.rng, self.V, self.exact)
        return self.p[prefix]


def depths(parents):
    d = []
    for a in parents:
        d.append(1 if a == -1 else d[a] + 1)
    return d


def draft_trees(model: Model, parents):
    """Every token assignment of the shape with its probability under i.i.d. sibling draws."""
    n = len(parents)
    for toks in itertools.product(range(model.V), repeat=n):
        prefixes, prob = [], model.target(()) and (Fraction(1) if model.exact else 1.0)
        for i, a in enumerate(parents):
            up = () if a == -1 else prefixes[a]
            prob *= model.draft(up)[toks[i]]
            prefixes.append(up + (toks[i],))
        if prob > 0:
            yield list(toks), prefixes, prob


def step_law(model: Model, parents, rule=traverse, outcomes=traversal_outcomes):
    """``{(emitted tokens): probability}`` of one verification step, exactly."""
    children = trees.children(torch.tensor(parents, dtype=torch.int64)) if parents else [[]]
    law: dict[tuple, object] = {}
    accepted = 0
    for toks, prefixes, prob in draft_trees(model, parents):
        pos_prefix = [()] + prefixes
        p_rows = {a: model.draft(pos_prefix[a]) for a, kids in enumerate(children) if kids}
        q_rows = [model.target(pre) for pre in pos_prefix]
        for w, path, row in outcomes(children, toks, p_rows, q_rows, rule):
            if w == 0:
                continue
            accepted += prob * w * len(path)
            total = sum(row)
            head = tuple(toks[c] for c in path)
            for x, v in enumerate(row):
                if v > 0:
                    key = head + (x,)
                    law[key] = law.get(key, 0) + prob * w * v / total
    return law, accepted


def completed_law(model: Model, law: dict, length: int) -> dict:
    """Complete every emitted sequence to ``length`` tokens by target draws."""
    out: dict[tuple, object] = {}
    frontier = dict(law)
    while frontier:
        nxt = {}
        for s, w in frontier.items():
            if len(s) >= length:
                out[s[:length]] = out.get(s[:length], 0) + w
                continue
            for x, v in enumerate(model.target(s)):
                if v > 0:
                    nxt[s + (x,)] = nxt.get(s + (x,), 0) + w * v
        frontier = nxt
    return out


def target_law(model: Model, length: int) -> dict:
    out = {(): Fraction(1) if model.exact else 1.0}
    for _ in range(length):
        out = {
            s + (x,): w * v for s, w in out.items() for x, v in enumerate(model.target(s)) if v > 0
        }
    return out


def lossless_failure(model: Model, parents, rule=traverse) -> str | None:
    """None when the step is lossless; else a message naming the first property that fails."""
    law, _ = step_law(model, parents, rule)
    depth = max(depths(parents), default=0) + 1
    for k, name in ((1, "law of the first token"), (2, "law of the first two tokens"),
                    (depth, "law of the completed sequence")):  # fmt: skip
        if k > depth:
            continue
        got = completed_law(model, law, k)
        want = target_law(model, k)
        keys = set(got) | set(want)
        gap = max(abs(got.get(s, 0) - want.get(s, 0)) for s in keys)
        if (model.exact and gap != 0) or (not model.exact and gap > TOL):
            worst = max(keys, key=lambda s: abs(got.get(s, 0) - want.get(s, 0)))
            return (
                f"lossless: {name} differs from the target's (sequence {worst}: "
                f"{float(got.get(worst, 0)):.6g} vs {float(want.get(worst, 0)):.6g}, gap "
                f"{float(gap):.3g})"
            )
    return None


# ----------------------------------------------------------------------------------------------
# Exact losslessness
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("V", [2, 3])
def test_traversal_is_lossless_exactly_in_rationals(shape, V):
    for seed in range(2):
        model = Model(V, 100 * V + seed, exact=True)
        assert lossless_failure(model, SHAPES[shape]) is None


@pytest.mark.parametrize("shape,V", [("y", 4), ("fork", 6), ("mixed5", 4), ("two roots", 5)])
def test_traversal_is_lossless_in_float64(shape, V):
    model = Model(V, 7 + V, exact=False)
    assert lossless_failure(model, SHAPES[shape]) is None


def test_the_harness_rejects_a_lossy_rule():
    """Accepting every leaf outright (no test) must fail: the harness is not vacuous."""

    def greedy_leaf(children, ids, p_rows, q_rows, decide):
        return traverse(children, ids, p_rows, q_rows, lambda node, w: decide(node, 1))

    message = lossless_failure(Model(3, 5, exact=True), SHAPES["y"], greedy_leaf)
    assert message is not None and message.startswith("lossless: law of the first token")


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_mutant_fails_exact_losslessness(name):
    """Each wrong update rule fails on some small tree, with a message naming the property."""
    failures = []
    for shape in ("y", "mixed5", "deep5"):
        for seed in range(3):
            message = lossless_failure(
                Model(3, 40 + seed, exact=True), SHAPES[shape], MUTANTS[name]
            )
            if message is not None:
                failures.append(message)
    assert failures, f"mutant {name!r} passed every exact check"
    assert all(m.startswith("lossless: law of the") for m in failures)


# ----------------------------------------------------------------------------------------------
# Chains: traversal is block verification
# ----------------------------------------------------------------------------------------------


def test_traversal_on_a_chain_is_block_decision_for_decision():
    """With exact rows, every coin outcome of the chain gives block's path and last row."""
    rng = random.Random(3)
    for _ in range(40):
        K, V = rng.randint(1, 4), rng.randint(2, 5)
        p = [random_row(rng, V, True) for _ in range(K)]
        q = [random_row(rng, V, True) for _ in range(K + 1)]
        ids = [rng.randrange(V) for _ in range(K)]
        children = [[k] for k in range(K)] + [[]]
        h = block_thresholds(ids, p, q)
        for passed in itertools.product([False, True], repeat=K):
            coins = [Fraction(0) if ok else Fraction(1) for ok in passed]
            weights = {}

            def decide(node, w, coins=coins, weights=weights):
                weights[node] = w
                return coins[node] < w

            path, _ = traverse(children, ids, {a: p[a] for a in range(K)}, q, decide)
            tau = accepted_length(coins, h)
            assert len(path) == tau and path == list(range(tau))
            for node, w in weights.items():
                assert w == h[node]  # the weight each node is tried with is block's threshold


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chain_equals_reference_verify_block_token_for_token(dtype):
    g = torch.Generator().manual_seed(11)
    for K, V in [(1, 5), (3, 6), (4, 2), (6, 32)]:
        B = 300
        q = torch.rand(B, K + 1, V, generator=g) ** 3
        p = torch.rand(B, K, V, generator=g) ** 2
        q, p = (q / q.sum(-1, keepdim=True)).to(dtype), (p / p.sum(-1, keepdim=True)).to(dtype)
        ids = torch.multinomial(p.float().reshape(-1, V), 1, generator=g).reshape(B, K)
        u = torch.rand(B, K + 1, generator=g)
        parents = trees.chain(K).expand(B, K)
        tree = reference_verify_tree(ids, parents, p, q, uniforms=u, rule="traversal",
                                     draft_sampling="with_replacement")  # fmt: skip
        block = specsample.reference_verify(ids, p, q, uniforms=u, rule="block")
        assert torch.equal(tree.token_ids, block.token_ids)
        assert torch.equal(tree.num_emitted, block.num_emitted)
        assert torch.equal(tree.status, block.status)


# ----------------------------------------------------------------------------------------------
# Dominance over token-wise tree verification
# ----------------------------------------------------------------------------------------------


def token_outcomes(children, ids, p_rows, q_rows, rule=None):
    """Token-wise recursive rejection sampling with replacement as an exact law (the ``rule``
    argument is unused; the signature is :func:`traversal_outcomes`')."""
    out = []

    def walk(pos, prob, path):
        kids = children[pos]
        if not kids:
            out.append((prob, path, list(q_rows[pos])))
            return
        cur, p = list(q_rows[pos]), p_rows[pos]
        for c in kids:
            x = ids[c]
            a = min(1, cur[x] / p[x]) if p[x] > 0 else 1
            if a > 0:
                walk(c + 1, prob * a, path + [c])
            prob *= 1 - a
            r = [max(0, qv - pv) for qv, pv in zip(cur, p, strict=True)]
            total = sum(r)
            cur = [v / total for v in r] if total > 0 else cur
        if prob > 0:
            out.append((prob, path, cur))

    walk(0, Fraction(1) if isinstance(q_rows[0][0], Fraction) else 1.0, [])
    return out


def test_token_outcomes_model_is_lossless_too():
    """The token-wise model used for dominance passes the same harness (it is the right rule)."""
    model = Model(3, 9, exact=True)
    law, _ = step_law(model, SHAPES["mixed5"], outcomes=token_outcomes)
    assert completed_law(model, law, 3) == target_law(model, 3)


@pytest.mark.parametrize("shape", ["y", "mixed5", "deep5", "chain3", "fork"])
def test_traversal_accepts_at_least_as_many_as_token_wise(shape):
    for seed in range(3):
        model = Model(3, 70 + seed, exact=True)
        _, trav = step_law(model, SHAPES[shape])
        _, tok = step_law(model, SHAPES[shape], outcomes=token_outcomes)
        assert trav >= tok, (shape, seed, float(trav), float(tok))


def test_equal_on_stars_and_when_draft_equals_target():
    """A depth-one tree is recursive rejection sampling at the root under both rules; with the
    draft equal to the target both accept the whole first path."""
    model = Model(4, 3, exact=True)
    star = [-1, -1, -1]
    assert step_law(model, star)[1] == step_law(model, star, outcomes=token_outcomes)[1]
    same = Model(3, 4, exact=True, same=True)
    a = step_law(same, SHAPES["mixed5"])[1]
    assert a == step_law(same, SHAPES["mixed5"], outcomes=token_outcomes)[1]


def test_strictly_more_on_a_deep_tree():
    model = Model(3, 70, exact=True)
    _, trav = step_law(model, SHAPES["chain3"])
    _, tok = step_law(model, SHAPES["chain3"], outcomes=token_outcomes)
    assert trav > tok


# ----------------------------------------------------------------------------------------------
# The reference's call surface and status
# ----------------------------------------------------------------------------------------------


def test_post_order_tries_a_node_after_its_subtree():
    children = trees.children(torch.tensor(SHAPES["deep5"]))
    assert post_order(children) == [2, 3, 1, 4, 0]


def test_traversal_needs_drafts_with_replacement():
    ids = torch.zeros(1, 2, dtype=torch.int64)
    parents = torch.tensor([[-1, -1]])
    q = torch.full((1, 3, 4), 0.25)
    p = torch.full((1, 2, 4), 0.25)
    for kwargs in (
        dict(draft_probs=None),
        dict(draft_probs=p, draft_sampling="without_replacement"),
    ):
        probs = kwargs.pop("draft_probs")
        with pytest.raises(ValueError, match="rule='traversal'.*with_replacement"):
            reference_verify_tree(ids + torch.tensor([[0, 1]]), parents, probs, q,
                                  rule="traversal", **kwargs)  # fmt: skip


def test_greedy_is_the_token_rules_walk():
    g = torch.Generator().manual_seed(2)
    q = torch.rand(4, 6, 5, generator=g)
    ids = torch.randint(0, 5, (4, 5), generator=g)
    parents = torch.tensor(SHAPES["deep5"]).expand(4, 5)
    a = reference_verify_tree(ids, parents, None, q, mode="greedy", rule="traversal")
    b = reference_verify_tree(ids, parents, None, q, mode="greedy")
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.accepted_nodes, b.accepted_nodes)


def test_a_bad_value_anywhere_in_a_read_row_flags():
    """Whole rows of positions with children are read: a NaN in an entry no decision uses still
    flags the request (as the block rule does); a bad leaf row flags only when that leaf wins."""
    from specsample.status import Status

    ids = torch.tensor([[0, 1, 2]])
    parents = torch.tensor([[-1, 0, -1]])
    q = torch.full((1, 4, 4), 0.25)
    p = torch.full((1, 3, 4), 0.25)
    u = torch.tensor([[0.0, 0.0, 0.0, 0.5]])  # node 1 (a leaf) is tried first and accepted
    kw = dict(uniforms=u, rule="traversal", draft_sampling="with_replacement")
    assert int(reference_verify_tree(ids, parents, p, q, **kw).status[0]) == 0
    bad = q.clone()
    bad[0, 0, 3] = float("nan")  # root row, token 3: never drafted
    assert (
        int(reference_verify_tree(ids, parents, p, bad, **kw).status[0]) == Status.BAD_TARGET_VALUE
    )
    badp = p.clone()
    badp[0, 1, 3] = float("inf")  # draft row of node 0's children
    assert (
        int(reference_verify_tree(ids, parents, badp, q, **kw).status[0]) == Status.BAD_DRAFT_VALUE
    )
    leaf = q.clone()
    leaf[0, 3, 0] = float("nan")  # node 2's row: node 2 is never accepted here
    assert int(reference_verify_tree(ids, parents, p, leaf, **kw).status[0]) == 0
    leaf2 = q.clone()
    leaf2[0, 2, 0] = float("nan")  # node 1's row: accepted, its row draws the last token
    out = reference_verify_tree(ids, parents, p, leaf2, **kw)
    assert int(out.status[0]) == Status.BAD_TARGET_VALUE


# ----------------------------------------------------------------------------------------------
# torch-loop: the conformance check catches planted bugs in a backend's traversal
# ----------------------------------------------------------------------------------------------


def _token_residual(w, row, draft):
    r = torch.clamp(row - draft, min=0.0)  # the parent's weight left out
    z = float(r.sum())
    return (z / (z + 1.0 - w) if z + 1.0 - w > 0 else 1.0), r, (r / z if z > 0 else row)


def _stale_weight(w, row, draft):
    _, r, new_row = _right_reject(w, row, draft)
    return w, r, new_row  # the parent keeps its weight


def _unnormalized(w, row, draft):
    new_w, r, _ = _right_reject(w, row, draft)
    return new_w, r, r  # the next sibling sees the raw residual


def _path_free_weight(w, q, p):
    return min(1.0, q / p) if p > 0 else 1.0  # token-wise ratio, not the sequence weight


@pytest.mark.parametrize(
    "attr,bug",
    [
        ("_reject", _token_residual),
        ("_reject", _stale_weight),
        ("_reject", _unnormalized),
        ("_weight", _path_free_weight),
    ],
)
def test_planted_traversal_bugs_fail_the_exact_check(monkeypatch, attr, bug):
    from specsample.backends import _traversal_loop
    from specsample.conformance.check_traversal import tree_traversal_exact
    from specsample.conformance.checks import CheckFailed, Target

    monkeypatch.setattr(_traversal_loop, attr, bug)
    target = Target("torch-loop", specsample.get_backend("torch-loop"), "fast", torch.device("cpu"))
    with pytest.raises(CheckFailed, match=r"lossless \[rule=traversal, .*\]: the law of the"):
        tree_traversal_exact(target)
